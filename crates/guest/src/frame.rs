//! The input framer: splits the host's byte stream into top-level JSON texts the way qemu's
//! JSON streamer does (brace/bracket counting that respects strings, single-quoted strings
//! included), and resynchronises on bytes that cannot occur in JSON (0xFF, 0xFE, control
//! characters): the partial input is dropped. Pure, total, never panics (property-tested).

/// The longest single request accepted (qemu's limit is 64 MiB per token); a longer one is
/// dropped with an error and the framer resynchronises at the next top-level value.
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Deepest nesting accepted (qemu's limit).
pub const MAX_DEPTH: usize = 1024;

/// What the framer found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete top-level value (an object, array, or a bare token such as `42`/`hello`).
    Value(Vec<u8>),
    /// 0xFF/0xFE: the host asks for a resync; the partial input (if any) was dropped.
    Resync,
    /// A byte that cannot occur in JSON; the partial input was dropped.
    Stray(u8),
    /// The request grew past [`MAX_REQUEST`] or [`MAX_DEPTH`]; it was dropped.
    TooLarge,
}

#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    depth: usize,
    /// Inside a string: its quote character.
    quote: Option<u8>,
    escape: bool,
    /// Discarding an oversized value until the top level.
    skipping: bool,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a partial value is pending.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty() || self.skipping
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.quote = None;
        self.escape = false;
        self.skipping = false;
    }

    /// Feeds bytes; complete frames are appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<Frame>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn keep(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.skipping {
            return;
        }
        if self.buf.len() >= MAX_REQUEST {
            self.buf = Vec::new();
            self.skipping = true;
            out.push(Frame::TooLarge);
            return;
        }
        self.buf.push(b);
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        if !self.skipping && !self.buf.is_empty() {
            out.push(Frame::Value(std::mem::take(&mut self.buf)));
        }
        self.reset();
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        if b == 0xFF || b == 0xFE {
            self.reset();
            out.push(Frame::Resync);
            return;
        }
        if let Some(q) = self.quote {
            if b < 0x20 {
                // Raw control characters are invalid inside JSON strings: qemu's lexer errors.
                self.reset();
                out.push(Frame::Stray(b));
                return;
            }
            self.keep(b, out);
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == q {
                self.quote = None;
                if self.depth == 0 {
                    // A bare top-level string is a complete (non-object) value.
                    self.finish(out);
                }
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.depth == 0 && !self.buf.is_empty() {
                    // End of a bare top-level token.
                    self.finish(out);
                } else if self.depth > 0 {
                    self.keep(b, out);
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 && !self.buf.is_empty() {
                    self.finish(out);
                }
                self.depth += 1;
                if self.depth > MAX_DEPTH && !self.skipping {
                    // Drop the value; keep counting so the skip ends at its top level.
                    self.buf = Vec::new();
                    self.skipping = true;
                    out.push(Frame::TooLarge);
                }
                self.keep(b, out);
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    // A closer with nothing open: a one-byte bad value.
                    if !self.buf.is_empty() {
                        self.finish(out);
                    }
                    out.push(Frame::Value(vec![b]));
                    return;
                }
                self.keep(b, out);
                self.depth -= 1;
                if self.depth == 0 {
                    self.finish(out);
                }
            }
            b'"' | b'\'' => {
                if self.depth == 0 && !self.buf.is_empty() {
                    self.finish(out);
                }
                self.quote = Some(b);
                self.keep(b, out);
            }
            0..=0x1F | 0x7F => {
                self.reset();
                out.push(Frame::Stray(b));
            }
            _ => self.keep(b, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        f.push(input, &mut out);
        out
    }

    fn v(s: &str) -> Frame {
        Frame::Value(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_objects_strings_and_tokens() {
        assert_eq!(
            frames(br#"{"a":"}{"}{"b":[1,{}]}"#),
            vec![v(r#"{"a":"}{"}"#), v(r#"{"b":[1,{}]}"#)]
        );
        assert_eq!(frames(b"hello {}"), vec![v("hello"), v("{}")]);
        assert_eq!(frames(br#"{'a':'}\''}"#), vec![v(r#"{'a':'}\''}"#)]);
        assert_eq!(frames(b"{\"a\":\n1}\n"), vec![v("{\"a\":\n1}")]);
        assert_eq!(frames(b"}"), vec![v("}")]);
    }

    #[test]
    fn ff_drops_the_partial_request() {
        assert_eq!(
            frames(b"{\"execute\":\"gue\xff{\"execute\":\"guest-ping\"}"),
            vec![Frame::Resync, v(r#"{"execute":"guest-ping"}"#)]
        );
        // Also inside a string, and a lone 0xFF.
        assert_eq!(frames(b"\xff"), vec![Frame::Resync]);
        assert_eq!(frames(b"{\"a\":\"x\x01"), vec![Frame::Stray(1)]);
    }

    #[test]
    fn split_anywhere_gives_the_same_frames() {
        let input = br#"{"execute":"guest-sync","arguments":{"id":12}}{"execute":"guest-ping"}"#;
        let whole = frames(input);
        for cut in 0..input.len() {
            let mut f = Framer::new();
            let mut out = Vec::new();
            f.push(&input[..cut], &mut out);
            f.push(&input[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = vec![b'['; MAX_DEPTH + 5];
        let out = frames(&deep);
        assert_eq!(out, vec![Frame::TooLarge]);
    }

    proptest! {
        #[test]
        fn never_panics_and_values_are_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut f = Framer::new();
            let mut out = Vec::new();
            for c in &chunks {
                f.push(c, &mut out);
            }
            for fr in &out {
                if let Frame::Value(b) = fr {
                    prop_assert!(!b.is_empty());
                    prop_assert!(b.len() <= MAX_REQUEST);
                }
            }
        }

        #[test]
        fn a_resync_then_a_request_always_gets_through(garbage in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut f = Framer::new();
            let mut out = Vec::new();
            f.push(&garbage, &mut out);
            out.clear();
            f.push(b"\xff{\"execute\":\"guest-ping\"}", &mut out);
            prop_assert_eq!(out.last(), Some(&v(r#"{"execute":"guest-ping"}"#)));
        }
    }
}
