//! A program's stdout and stderr: copied into one size-rotated file per program
//! (`<log folder>/programs/NAME.log`), and optionally line by line into the daemon's log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The output file of one program; shared by its stdout and stderr pumps and kept across
/// restarts of the program.
pub struct Output {
    name: String,
    path: PathBuf,
    file: Mutex<FileRotate<AppendCount>>,
    to_daemon: bool,
}

/// Where a program's output file lives.
pub fn log_path(log_dir: &Path, name: &str) -> PathBuf {
    log_dir.join("programs").join(format!("{name}.log"))
}

/// How far back from the end of each file [`last_lines`] reads.
const TAIL_WINDOW: u64 = 4 << 20;

/// The end of a file: at most its last [`TAIL_WINDOW`] bytes, or nothing.
fn tail_bytes(path: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_WINDOW);
    let mut data = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f.take(TAIL_WINDOW).read_to_end(&mut data);
    }
    data
}

/// The last `n` lines of a program's output file, reaching into the previous rotated file
/// (`.1`) when the current one holds fewer (each file read from at most its last 4 MiB). Used
/// by the `logs` command and `majordomo logs`.
pub fn last_lines(path: &Path, n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let mut data = tail_bytes(path);
    let count = |d: &[u8]| d.iter().filter(|b| **b == b'\n').count();
    if count(&data) < n {
        let mut rotated = PathBuf::from(path);
        rotated.as_mut_os_string().push(".1");
        let mut older = tail_bytes(&rotated);
        if !older.is_empty() {
            older.extend_from_slice(&data);
            data = older;
        }
    }
    // Skip a trailing newline, then find the start of the nth line from the end.
    let end = if data.last() == Some(&b'\n') {
        data.len() - 1
    } else {
        data.len()
    };
    let mut seen = 0;
    let mut start = 0;
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                start = i + 1;
                break;
            }
        }
    }
    data.split_off(start)
}

impl Output {
    pub fn open(
        log_dir: &Path,
        name: &str,
        max_size: u64,
        max_files: usize,
        to_daemon: bool,
    ) -> Result<Arc<Output>, String> {
        let path = log_path(log_dir, name);
        let dir = path.parent().unwrap_or(log_dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the log folder {}: {e}", dir.display()))?;
        // Opened once here so that a permission problem is reported, not a panic inside the
        // rotation crate.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open the output file {}: {e}", path.display()))?;
        let file = FileRotate::new(
            &path,
            AppendCount::new(max_files),
            ContentLimit::BytesSurpassed(usize::try_from(max_size).unwrap_or(usize::MAX).max(1)),
            Compression::None,
            None,
        );
        Ok(Arc::new(Output {
            name: name.to_string(),
            path,
            file: Mutex::new(file),
            to_daemon,
        }))
    }

    /// Writes a line of the supervisor's own (e.g. why a start failed) into the file.
    pub fn note(&self, line: &str) {
        self.write(format!("[majordomo] {line}\n").as_bytes());
    }

    fn write(&self, bytes: &[u8]) {
        if let Ok(mut f) = self.file.lock()
            && let Err(e) = f.write_all(bytes).and_then(|_| f.flush())
        {
            tracing::warn!(program = %self.name, error = %e, path = %self.path.display(), "cannot write program output");
        }
    }

    /// Copies `reader` (a pipe from the program) into the file until EOF.
    pub async fn pump<R: AsyncRead + Unpin>(self: Arc<Self>, mut reader: R, stream: &'static str) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut partial: Vec<u8> = Vec::new();
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            self.write(chunk);
            if self.to_daemon {
                partial.extend_from_slice(chunk);
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                    tracing::info!(target: "majordomo::program", program = %self.name, stream, "{}", text.trim_end_matches('\r'));
                }
                if partial.len() > 64 * 1024 {
                    let text = String::from_utf8_lossy(&partial).into_owned();
                    tracing::info!(target: "majordomo::program", program = %self.name, stream, "{text}");
                    partial.clear();
                }
            }
        }
        if self.to_daemon && !partial.is_empty() {
            let text = String::from_utf8_lossy(&partial).into_owned();
            tracing::info!(target: "majordomo::program", program = %self.name, stream, "{text}");
        }
    }
}

#[cfg(test)]
mod tail_tests {
    use super::last_lines;

    #[test]
    fn last_lines_takes_the_tail_and_reaches_into_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(dir.path().join("x.log.1"), "a\nb\n").unwrap();
        std::fs::write(&p, "c\nd\n").unwrap();
        assert_eq!(last_lines(&p, 1), b"d\n");
        assert_eq!(last_lines(&p, 2), b"c\nd\n");
        assert_eq!(last_lines(&p, 3), b"b\nc\nd\n");
        assert_eq!(last_lines(&p, 10), b"a\nb\nc\nd\n");
        assert_eq!(last_lines(&p, 0), b"");
        assert_eq!(last_lines(&dir.path().join("none.log"), 5), b"");
    }
}
