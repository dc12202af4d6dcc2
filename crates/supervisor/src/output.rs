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
