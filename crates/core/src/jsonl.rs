//! Append-only JSON-lines files (alerts, notifications, history): one record per line. A crash or
//! a full disk can leave a torn last line; appending must never glue a new record onto it, and
//! reading skips what does not parse, counting it so the caller can say so.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Appends one record (`line`, without its newline) to `path`, creating it. When the file does
/// not end with a newline (a torn tail), one is written first: the torn fragment stays a line
/// of its own, skipped when read, and the new record is whole. Returns whether it repaired.
pub fn append_line(path: &Path, line: &[u8]) -> io::Result<bool> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let torn = tail_is_torn(&mut f)?;
    let mut buf = Vec::with_capacity(line.len() + 2);
    if torn {
        buf.push(b'\n');
    }
    buf.extend_from_slice(line);
    buf.push(b'\n');
    f.write_all(&buf)?;
    Ok(torn)
}

/// Whether a non-empty file's last byte is not a newline.
pub fn tail_is_torn(f: &mut std::fs::File) -> io::Result<bool> {
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
}
