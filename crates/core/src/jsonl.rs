//! Append-only JSON-lines files (alerts, notifications, history): one record per line. A crash or
//! a full disk can leave a torn last line; appending must never glue a new record onto it, and
//! reading skips what does not parse, counting it so the caller can say so. [`repair`] is what a
//! store runs when it opens a file: it ends or cuts a torn tail and counts the corrupt lines,
//! so the store can log both once.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Appends one record (`line`, without its newline) to `path`, creating it. When the file does
/// not end with a newline (a torn tail), one is written first: the torn fragment stays a line
/// of its own, skipped when read, and the new record is whole. Returns whether it repaired.
pub fn append_line(path: &Path, line: &[u8]) -> io::Result<bool> {
    let (mut f, torn) = open_append(path)?;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line);
    buf.push(b'\n');
    f.write_all(&buf)?;
    Ok(torn)
}

/// Opens `path` for appending (creating it) and ends a torn tail with a newline, so whatever
/// is written next starts a line of its own. For stores that keep the file open between
/// records (or write several at once). Returns the file and whether the tail was torn.
pub fn open_append(path: &Path) -> io::Result<(File, bool)> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let torn = tail_is_torn(&mut f)?;
    if torn {
        f.write_all(b"\n")?;
    }
    Ok((f, torn))
}

/// What [`repair`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repaired {
    /// The last line had no newline but was a whole record: the newline was added.
    pub ended: bool,
    /// The last line was a torn fragment (no newline, not a record): this many bytes were cut.
    pub cut: u64,
    /// Non-empty lines before the tail that are not JSON: left in place, skipped when read.
    pub corrupt: usize,
}

impl Repaired {
    /// Whether there is anything to say.
    pub fn is_clean(&self) -> bool {
        !self.ended && self.cut == 0 && self.corrupt == 0
    }
}

/// Checks a JSON-lines file when its store opens it: a torn tail (a crash or a full disk
/// mid-write) is cut when it is not a whole record, or ended with a newline when it is; the
/// other lines that are not JSON are counted. A missing file is clean.
pub fn repair(path: &Path) -> io::Result<Repaired> {
    let mut out = Repaired::default();
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let body_end = match text.last() {
        None | Some(b'\n') => text.len(),
        Some(_) => {
            let start = text
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            let f = std::fs::OpenOptions::new().append(true).open(path)?;
            if serde_json::from_slice::<serde::de::IgnoredAny>(&text[start..]).is_ok() {
                (&f).write_all(b"\n")?;
                out.ended = true;
            } else {
                f.set_len(start as u64)?;
                out.cut = (text.len() - start) as u64;
            }
            f.sync_data()?;
            start
        }
    };
    out.corrupt = text[..body_end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_err())
        .count();
    Ok(out)
}

/// Whether a non-empty file's last byte is not a newline.
pub fn tail_is_torn(f: &mut File) -> io::Result<bool> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// The records of JSON-lines `text` that parse, and how many non-empty lines did not.
pub fn parse_lines<T: serde::de::DeserializeOwned>(text: &str) -> (Vec<T>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(v) => out.push(v),
            Err(_) => skipped += 1,
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_never_swallows_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, b"{\"n\":1}\n{\"n\":2").unwrap();
        assert!(append_line(&p, b"{\"n\":3}").unwrap());
        assert!(!append_line(&p, b"{\"n\":4}").unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        let (v, skipped) = parse_lines::<serde_json::Value>(&text);
        let ns: Vec<i64> = v.iter().map(|v| v["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [1, 3, 4]);
        assert_eq!(skipped, 1);
    }

    #[test]
    fn repair_cuts_a_torn_fragment_ends_a_whole_record_and_counts_corrupt_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        assert!(repair(&p).unwrap().is_clean(), "a missing file is clean");
        std::fs::write(&p, b"{\"n\":1}\nnot json\n\n{\"n\":2}\n{\"n\":").unwrap();
        let r = repair(&p).unwrap();
        assert_eq!((r.ended, r.cut, r.corrupt), (false, 5, 1), "{r:?}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"{\"n\":1}\nnot json\n\n{\"n\":2}\n"
        );
        // A whole record without its newline is kept.
        std::fs::write(&p, b"{\"n\":1}\n{\"n\":2}").unwrap();
        let r = repair(&p).unwrap();
        assert_eq!((r.ended, r.cut, r.corrupt), (true, 0, 0), "{r:?}");
        assert!(
            repair(&p).unwrap().is_clean(),
            "a second look finds nothing"
        );
        // Appending after a repair never glues.
        let (mut f, torn) = open_append(&p).unwrap();
        assert!(!torn);
        f.write_all(b"{\"n\":3}\n").unwrap();
        let (v, skipped) = parse_lines::<serde_json::Value>(&std::fs::read_to_string(&p).unwrap());
        assert_eq!((v.len(), skipped), (3, 0));
    }
}
