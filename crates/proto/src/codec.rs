//! Newline-delimited framing.
//!
//! A frame is every byte up to (not including) `\n`; a trailing `\r` is stripped so that clients
//! writing CRLF work too. Empty lines are skipped. A line longer than the limit is reported once
//! as [`FrameError::TooLong`]; the codec then refuses further input, because the peer is
//! misbehaving and the caller closes the connection after replying with the error.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Errors of the line framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent a line longer than the configured limit.
    #[error("line exceeds the limit of {limit} bytes")]
    TooLong { limit: usize },
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into lines of at most `max_line` bytes.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_line: usize,
    /// How far the buffer has already been searched for a newline, so a long line arriving in
    /// many small reads is scanned once, not once per read.
    scanned: usize,
    failed: bool,
}

impl LineCodec {
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            scanned: 0,
            failed: false,
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The next line at the front of `buf`, without consuming it: the line's range in `buf`
    /// (without its newline and a trailing `\r`) and how many bytes of `buf` the caller may drop
    /// (the line, its newline and any blank lines before it). With no complete line, the range is
    /// `None`. At `eof`, a final line without its newline is still a line. The same rules as
    /// [`Decoder::decode`], for a reader that walks a whole read batch in place and drops what
    /// it read once.
    pub fn next_line(
        &mut self,
        buf: &[u8],
        eof: bool,
    ) -> Result<(Option<std::ops::Range<usize>>, usize), FrameError> {
        let mut start = 0;
        loop {
            if self.failed {
                return Ok((None, buf.len()));
            }
            let from = (start + self.scanned).min(buf.len());
            match memchr::memchr(b'\n', &buf[from..]) {
                Some(rel) => {
                    let end = from + rel;
                    self.scanned = 0;
                    if end - start > self.max_line {
                        self.failed = true;
                        return Err(FrameError::TooLong {
                            limit: self.max_line,
                        });
                    }
                    let mut line_end = end;
                    if line_end > start && buf[line_end - 1] == b'\r' {
                        line_end -= 1;
                    }
                    if buf[start..line_end].iter().all(u8::is_ascii_whitespace) {
                        start = end + 1;
                        continue;
                    }
                    return Ok((Some(start..line_end), end + 1));
                }
                None => {
                    let rest = buf.len() - start;
                    if rest > self.max_line {
                        self.failed = true;
                        return Err(FrameError::TooLong {
                            limit: self.max_line,
                        });
                    }
                    if eof {
                        self.scanned = 0;
                        let mut line_end = buf.len();
                        if line_end > start && buf[line_end - 1] == b'\r' {
                            line_end -= 1;
                        }
                        if buf[start..line_end].iter().all(u8::is_ascii_whitespace) {
                            return Ok((None, buf.len()));
                        }
                        return Ok((Some(start..line_end), buf.len()));
                    }
                    self.scanned = rest;
                    return Ok((None, start));
                }
            }
        }
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new(crate::DEFAULT_MAX_LINE)
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.failed {
                // Discard: the connection is being closed.
                buf.clear();
                return Ok(None);
            }
            match memchr::memchr(b'\n', &buf[self.scanned..]) {
                Some(rel) => {
                    let end = self.scanned + rel;
                    self.scanned = 0;
                    if end > self.max_line {
                        self.failed = true;
                        return Err(FrameError::TooLong {
                            limit: self.max_line,
                        });
                    }
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Ok(Some(line.freeze()));
                }
                None => {
                    self.scanned = buf.len();
                    if buf.len() > self.max_line {
                        self.failed = true;
                        return Err(FrameError::TooLong {
                            limit: self.max_line,
                        });
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None => {
                // A final line without its newline is still a line.
                self.scanned = 0;
                if buf.is_empty() || self.failed || buf.iter().all(u8::is_ascii_whitespace) {
                    buf.clear();
                    return Ok(None);
                }
                let mut line = buf.split();
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                Ok(Some(line.freeze()))
            }
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for LineCodec {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let item = item.as_ref();
        dst.reserve(item.len() + 1);
        dst.put_slice(item);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut LineCodec, chunks: &[Vec<u8>]) -> (Vec<Vec<u8>>, bool) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(line)) => out.push(line.to_vec()),
                    Ok(None) => break,
                    Err(_) => return (out, true),
                }
            }
        }
        match codec.decode_eof(&mut buf) {
            Ok(Some(line)) => out.push(line.to_vec()),
            Ok(None) => {}
            Err(_) => return (out, true),
        }
        (out, false)
    }

    /// What a reader walking each read batch in place with [`LineCodec::next_line`] gets.
    fn next_all(codec: &mut LineCodec, chunks: &[Vec<u8>]) -> (Vec<Vec<u8>>, bool) {
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match codec.next_line(&buf[pos..], i == last) {
                    Ok((Some(r), used)) => {
                        out.push(buf[pos..][r].to_vec());
                        pos += used;
                    }
                    Ok((None, used)) => {
                        pos += used;
                        break;
                    }
                    Err(_) => return (out, true),
                }
            }
            buf.drain(..pos);
        }
        (out, false)
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut c = LineCodec::new(100);
        let (lines, err) = decode_all(&mut c, &[b"a\r\n\nbc\nd".to_vec()]);
        assert!(!err);
        assert_eq!(lines, vec![b"a".to_vec(), b"bc".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn too_long_line_is_an_error_even_before_its_newline() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"12345"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(FrameError::TooLong { limit: 4 })
        ));
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"1234\n12345\n"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), &b"1234"[..]);
        assert!(c.decode(&mut buf).is_err());
    }

    proptest! {
        /// No input, split anywhere, makes the codec panic; and when no line exceeds the limit,
        /// the lines that come out are exactly the non-blank lines that went in.
        #[test]
        fn never_panics_and_reassembles(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(0usize..2048, 0..16),
            limit in 1usize..512,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(data[prev..c].to_vec()); prev = c; }
            chunks.push(data[prev..].to_vec());

            let mut codec = LineCodec::new(limit);
            let (lines, failed) = decode_all(&mut codec, &chunks);
            // Walking the batches in place reads exactly the same lines.
            let mut walker = LineCodec::new(limit);
            prop_assert_eq!(next_all(&mut walker, &chunks), (lines.clone(), failed));

            let expected: Vec<Vec<u8>> = data
                .split(|b| *b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .collect();
            let any_too_long = data.split(|b| *b == b'\n').any(|l| l.len() > limit);
            if any_too_long {
                prop_assert!(failed);
                prop_assert!(lines.len() <= expected.len());
                prop_assert_eq!(&lines[..], &expected[..lines.len()]);
            } else {
                prop_assert!(!failed);
                prop_assert_eq!(lines, expected);
            }
        }
    }
}
