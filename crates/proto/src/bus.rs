//! The message bus on the instance socket: its requests, the frames it pushes, topic patterns,
//! and the length-prefixed binary framing a client may negotiate in `hello`.
//!
//! Every bus request is a JSON line like any control request, with a `cmd` starting `bus.`:
//!
//! ```json
//! {"id":1,"cmd":"bus.register","endpoint":"worker-1"}
//! {"cmd":"bus.send","to":"worker-2","event":"job.done","data":{"n":1}}
//! {"id":2,"cmd":"bus.sub","pattern":"orders.*.new","queue":"billing"}
//! {"cmd":"bus.pub","topic":"orders.7.new","data":{"sku":"x"}}
//! {"id":3,"cmd":"bus.request","topic":"price.get","data":{"sku":"x"},"timeout_ms":1000}
//! {"cmd":"bus.reply","to":"_INBOX.42","data":{"price":3}}
//! ```
//!
//! The daemon pushes, besides replies (`{"id":..,"ok":..}` / `{"id":..,"error":..}`):
//!
//! ```json
//! {"msg":{"sid":2,"topic":"orders.7.new","data":{"sku":"x"},"reply_to":"_INBOX.42"}}
//! {"event":{"name":"job.done","from":"worker-1","data":{"n":1},"ts":"2026-01-01T00:00:00.000Z"}}
//! {"notice":{"kind":"dropped","count":17,"message":"..."}}
//! ```
//!
//! Seed-004 clients speak `{"Type":"Register","Payload":{"MachineId":..}}` and
//! `{"Type":"SendEvent","Payload":{..}}`; an endpoint registered that way receives events in that
//! same shape.
//!
//! Parsing borrows from the line and keeps `data` as raw JSON text ([`RawValue`]): the router
//! forwards payloads without re-serializing them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The fields any bus line may carry; unknown fields are ignored. Borrowed from the line.
#[derive(Debug, Default, Deserialize)]
pub struct BusLine<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub cmd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub pattern: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub queue: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub endpoint: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(default)]
    pub sid: Option<u64>,
    #[serde(default)]
    pub takeover: Option<bool>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Seed-004: `Register` or `SendEvent`.
    #[serde(rename = "Type", borrow, default)]
    pub compat_type: Option<Cow<'a, str>>,
    #[serde(rename = "Payload", borrow, default)]
    pub compat_payload: Option<&'a RawValue>,
}

/// Seed-004 `Register` payload.
#[derive(Debug, Deserialize)]
pub struct CompatRegister<'a> {
    #[serde(rename = "MachineId", borrow)]
    pub machine_id: Cow<'a, str>,
}

/// Seed-004 `SendEvent` payload.
#[derive(Debug, Deserialize)]
pub struct CompatSendEvent<'a> {
    #[serde(rename = "SourceMachineId", borrow, default)]
    pub source: Option<Cow<'a, str>>,
    #[serde(rename = "TargetMachineId", borrow)]
    pub target: Cow<'a, str>,
    #[serde(rename = "EventName", borrow)]
    pub event: Cow<'a, str>,
    #[serde(rename = "Payload", borrow, default)]
    pub payload: Option<&'a RawValue>,
}

impl<'a> BusLine<'a> {
    /// Parses a line as a bus line. `None` when it is not JSON, not an object, or neither a
    /// `bus.*` command nor a seed-004 message: the caller then treats it as a control line.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let parsed: BusLine<'a> = serde_json::from_slice(line).ok()?;
        let is_bus = parsed.cmd.as_deref().is_some_and(|c| c.starts_with("bus."))
            || (parsed.cmd.is_none() && parsed.compat_type.is_some());
        is_bus.then_some(parsed)
    }
}

/// The common publish line, `{"cmd":"bus.pub","topic":"T","data":D}` exactly (compact, in this
/// order, no `id`, a topic without escapes), read without building a [`BusLine`]: the topic
/// and the raw data, already checked to be one JSON value. `None` for any other line, which
/// then takes [`BusLine::parse`]; both read this shape alike.
pub fn fast_pub(line: &[u8]) -> Option<(&str, &[u8])> {
    fast_pub_checked(line).map(|(t, d, _)| (t, d))
}

/// [`fast_pub`], with the data's strict-JSON verdict from the same pass
/// ([`validate_json`]'s [`JsonFault::Strict`] as `Err`), so the data is read once.
#[allow(clippy::type_complexity)]
pub fn fast_pub_checked(line: &[u8]) -> Option<(&str, &[u8], Result<(), &'static str>)> {
    const HEAD: &[u8] = br#"{"cmd":"bus.pub","topic":""#;
    const MID: &[u8] = br#"","data":"#;
    let rest = line.strip_prefix(HEAD)?;
    let q = memchr::memchr2(b'"', b'\\', rest)?;
    let (topic, rest) = rest.split_at(q);
    if topic.iter().any(|b| *b < 0x20) {
        // Raw control characters: not JSON; the full parse says so.
        return None;
    }
    let data = rest.strip_prefix(MID)?.strip_suffix(b"}")?.trim_ascii();
    let topic = std::str::from_utf8(topic).ok()?;
    // One whole JSON value and nothing else (structure, strings and UTF-8 checked).
    let verdict = match validate_json(data) {
        Ok(()) => Ok(()),
        Err(JsonFault::Strict(e)) => Err(e),
        Err(JsonFault::NotJson) => return None,
    };
    Some((topic, data, verdict))
}

/// Prefix of the daemon's system events (`$sys.<kind>`): only the daemon publishes there.
pub const SYS_PREFIX: &str = "$sys.";
/// Prefix of reply subjects (`_INBOX.<token>`): answered with `bus.reply`, never published.
pub const INBOX_PREFIX: &str = "_INBOX.";

/// Whether `topic` is the daemon's own: its system events or request replies.
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with(SYS_PREFIX) || topic.starts_with(INBOX_PREFIX)
}

/// Why a topic or pattern is refused.
pub fn check_topic(topic: &str, wildcards: bool) -> Result<(), String> {
    if topic.is_empty() {
        return Err("is empty".into());
    }
    if topic.len() > 256 {
        return Err(format!("is {} bytes long; the limit is 256", topic.len()));
    }
    let mut tokens = topic.split('.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() {
            return Err("has an empty token (two dots, or a leading or trailing dot)".into());
        }
        if t.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'"' || b == b'\\')
        {
            return Err("contains whitespace, a quote, a backslash or a control character".into());
        }
        let wild = t == "*" || t == ">";
        if !wild && (t.contains('*') || t.contains('>')) {
            return Err(format!(
                "token {t:?} mixes a wildcard with other characters; use `*` or `>` alone"
            ));
        }
        if wild && !wildcards {
            return Err("contains a wildcard (`*`, `>`), which only subscriptions may use".into());
        }
        if t == ">" && tokens.peek().is_some() {
            return Err("has `>` before the last token".into());
        }
    }
    Ok(())
}

/// Whether `pattern` (with `*` for one token and a final `>` for one or more) matches `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a pattern has wildcards.
pub fn is_literal(pattern: &str) -> bool {
    !pattern.split('.').any(|t| t == "*" || t == ">")
}

/// How deep arrays and objects in `data` may nest: what `serde_json` (and so the SDK) parses.
pub const MAX_DATA_DEPTH: usize = 128;

/// Refuses JSON text that strict parsers reject although it is well-formed: a number a 64-bit
/// float cannot hold (`1e999999`), a lone UTF-16 surrogate escape (`"\ud800"`), nesting deeper
/// than [`MAX_DATA_DEPTH`]. `data` has already been read as JSON (structure and UTF-8 checked);
/// this is one pass over its bytes, with no allocation, so it stays on the publish path.
pub fn check_strict_json(data: &[u8]) -> Result<(), &'static str> {
    let n = data.len();
    let mut depth = 0usize;
    let mut i = 0;
    while i < n {
        match data[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(k) = memchr::memchr2(b'"', b'\\', &data[i..]) else {
                        return Ok(());
                    };
                    i += k;
                    if data[i] == b'"' {
                        i += 1;
                        break;
                    }
                    if data.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let cp = hex4(data, i + 2);
                    i += 6;
                    match cp {
                        Some(0xD800..=0xDBFF) => {
                            let low =
                                if data.get(i) == Some(&b'\\') && data.get(i + 1) == Some(&b'u') {
                                    hex4(data, i + 2)
                                } else {
                                    None
                                };
                            if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                return Err(LONE_SURROGATE);
                            }
                            i += 6;
                        }
                        Some(0xDC00..=0xDFFF) => return Err(LONE_SURROGATE),
                        _ => {}
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(TOO_DEEP);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut integer = true;
                while i < n {
                    match data[i] {
                        b'0'..=b'9' | b'-' => {}
                        b'.' | b'e' | b'E' | b'+' => integer = false,
                        _ => break,
                    }
                    i += 1;
                }
                // Integers under 300 digits always fit a float; anything else is converted.
                if !integer || i - start > 300 {
                    let finite = std::str::from_utf8(&data[start..i])
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .is_some_and(f64::is_finite);
                    if !finite {
                        return Err(OUT_OF_RANGE);
                    }
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Why [`validate_json`] refuses a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonFault {
    /// Not one JSON value (structure, string, escape, number syntax or UTF-8).
    NotJson,
    /// Well-formed, but holding what [`check_strict_json`] refuses (the reason).
    Strict(&'static str),
}

/// Checks a payload in one pass, with no allocation: one JSON value and nothing else
/// (whitespace around it allowed), as `serde_json` reads it (structure, escapes, number
/// syntax, no raw control characters in strings, UTF-8), and then what
/// [`check_strict_json`] refuses (numbers a 64-bit float cannot hold, lone surrogate escapes,
/// nesting deeper than [`MAX_DATA_DEPTH`]). Its verdict is the same as
/// `serde_json::from_slice::<&RawValue>` followed by [`check_strict_json`], the not-JSON
/// verdict first; a property test holds it to that.
pub fn validate_json(d: &[u8]) -> Result<(), JsonFault> {
    use JsonFault::NotJson;
    let n = d.len();
    let mut i = 0;
    // Bit `k`: level `k` is an object (else an array).
    let mut objects: u128 = 0;
    let mut depth = 0usize;
    // The first strict fault, by position (structure is still checked after it).
    let mut strict: Option<&'static str> = None;
    'value: loop {
        i = skip_ws(d, i);
        let Some(&c) = d.get(i) else {
            return Err(NotJson);
        };
        match c {
            b'{' | b'[' => {
                if depth == MAX_DATA_DEPTH {
                    // Deeper than strict parsers go: rare, so the structure is left to serde.
                    return Err(match serde_json::from_slice::<&RawValue>(d) {
                        Err(_) => NotJson,
                        Ok(_) => JsonFault::Strict(strict.unwrap_or(TOO_DEEP)),
                    });
                }
                let object = c == b'{';
                if object {
                    objects |= 1 << depth;
                } else {
                    objects &= !(1 << depth);
                }
                depth += 1;
                i = skip_ws(d, i + 1);
                if d.get(i) == Some(&closer(object)) {
                    i += 1;
                    depth -= 1;
                } else {
                    if object {
                        i = json_key(d, i, &mut strict)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = json_string(d, i + 1, &mut strict)?,
            b'-' | b'0'..=b'9' => i = json_number(d, i, &mut strict)?,
            b't' => i = json_literal(d, i, b"true")?,
            b'f' => i = json_literal(d, i, b"false")?,
            b'n' => i = json_literal(d, i, b"null")?,
            _ => return Err(NotJson),
        }
        // After a value: the end, or a separator or closer of the enclosing level.
        loop {
            i = skip_ws(d, i);
            if depth == 0 {
                return match (i == n, strict) {
                    (false, _) => Err(NotJson),
                    (true, Some(e)) => Err(JsonFault::Strict(e)),
                    (true, None) => Ok(()),
                };
            }
            let object = (objects >> (depth - 1)) & 1 == 1;
            match d.get(i) {
                Some(b',') => {
                    if object {
                        i = json_key(d, i + 1, &mut strict)?;
                    } else {
                        i += 1;
                    }
                    continue 'value;
                }
                Some(&c) if c == closer(object) => {
                    i += 1;
                    depth -= 1;
                }
                _ => return Err(NotJson),
            }
        }
    }
}

/// The byte that closes an object (`true`) or an array.
#[inline]
fn closer(object: bool) -> u8 {
    if object { b'}' } else { b']' }
}

const TOO_DEEP: &str = "arrays and objects nested deeper than 128 levels";

#[inline]
fn skip_ws(d: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = d.get(i) {
        i += 1;
    }
    i
}

/// An object key and its colon, from `i` (whitespace first); returns where its value starts.
fn json_key(d: &[u8], i: usize, strict: &mut Option<&'static str>) -> Result<usize, JsonFault> {
    let i = skip_ws(d, i);
    if d.get(i) != Some(&b'"') {
        return Err(JsonFault::NotJson);
    }
    let i = skip_ws(d, json_string(d, i + 1, strict)?);
    if d.get(i) != Some(&b':') {
        return Err(JsonFault::NotJson);
    }
    Ok(i + 1)
}

fn json_literal(d: &[u8], i: usize, word: &[u8]) -> Result<usize, JsonFault> {
    match d.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        _ => Err(JsonFault::NotJson),
    }
}

/// Four hex digits at `at`, strictly (no sign, no fewer digits).
fn hex4_strict(d: &[u8], at: usize) -> Option<u32> {
    let h = d.get(at..at + 4)?;
    h.iter().try_fold(0u32, |acc, b| {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(v))
    })
}

/// A string's body from `i` (after its opening quote); returns the index after its closing quote.
fn json_string(
    d: &[u8],
    mut i: usize,
    strict: &mut Option<&'static str>,
) -> Result<usize, JsonFault> {
    use JsonFault::NotJson;
    let start = i;
    let mut ascii = true;
    loop {
        // The next quote or backslash (memchr's vector search); the bytes before it may hold
        // no control character, and tell whether UTF-8 must be checked.
        let rest = d.get(i..).unwrap_or_default();
        let Some(k) = memchr::memchr2(b'"', b'\\', rest) else {
            return Err(NotJson);
        };
        // One pass for both: bit 0 a control character, bit 7 a byte that is not ASCII.
        let seen = rest[..k]
            .iter()
            .fold(0u8, |seen, &b| seen | u8::from(b < 0x20) | (b & 0x80));
        if seen & 1 != 0 {
            return Err(NotJson);
        }
        ascii = ascii && seen & 0x80 == 0;
        i += k;
        if d[i] == b'"' {
            break;
        }
        // A backslash.
        match d.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
            Some(b'u') => {
                let cp = hex4_strict(d, i + 2).ok_or(NotJson)?;
                i += 6;
                match cp {
                    0xD800..=0xDBFF => {
                        let low = if d.get(i) == Some(&b'\\') && d.get(i + 1) == Some(&b'u') {
                            hex4_strict(d, i + 2)
                        } else {
                            None
                        };
                        if matches!(low, Some(0xDC00..=0xDFFF)) {
                            i += 6;
                        } else {
                            strict.get_or_insert(LONE_SURROGATE);
                        }
                    }
                    0xDC00..=0xDFFF => {
                        strict.get_or_insert(LONE_SURROGATE);
                    }
                    _ => {}
                }
            }
            _ => return Err(NotJson),
        }
    }
    if !ascii && std::str::from_utf8(&d[start..i]).is_err() {
        return Err(NotJson);
    }
    Ok(i + 1)
}

/// A number from `i`; returns the index after it. One a 64-bit float cannot hold is a strict
/// fault (integers under 300 characters always fit; anything else is converted, as
/// [`check_strict_json`] does).
fn json_number(
    d: &[u8],
    mut i: usize,
    strict: &mut Option<&'static str>,
) -> Result<usize, JsonFault> {
    use JsonFault::NotJson;
    let start = i;
    let digits = |i: &mut usize| {
        let from = *i;
        while let Some(b'0'..=b'9') = d.get(*i) {
            *i += 1;
        }
        *i > from
    };
    if d.get(i) == Some(&b'-') {
        i += 1;
    }
    match d.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return Err(NotJson),
    }
    let mut integer = true;
    if d.get(i) == Some(&b'.') {
        i += 1;
        integer = false;
        if !digits(&mut i) {
            return Err(NotJson);
        }
    }
    if let Some(b'e' | b'E') = d.get(i) {
        i += 1;
        integer = false;
        if let Some(b'+' | b'-') = d.get(i) {
            i += 1;
        }
        if !digits(&mut i) {
            return Err(NotJson);
        }
    }
    if (!integer || i - start > 300) && strict.is_none() {
        let finite = std::str::from_utf8(&d[start..i])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if !finite {
            *strict = Some(OUT_OF_RANGE);
        }
    }
    Ok(i)
}

const OUT_OF_RANGE: &str = "a number out of the range of a 64-bit float (e.g. 1e999999)";

const LONE_SURROGATE: &str =
    "a lone UTF-16 surrogate escape in a string (\\ud800-\\udfff without its pair)";

fn hex4(data: &[u8], at: usize) -> Option<u32> {
    let h = data.get(at..at + 4)?;
    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
}

/// Appends `s` as a JSON string.
pub fn put_json_str(buf: &mut BytesMut, s: &str) {
    // Writing to a BytesMut cannot fail.
    let _ = serde_json::to_writer(buf.writer(), s);
}

/// `{"msg":{"sid":..,"topic":..,"data":..,"reply_to":..}}\n`. `data` is JSON text.
pub fn put_msg_json(
    buf: &mut BytesMut,
    sid: u64,
    topic: &str,
    reply_to: Option<&str>,
    data: &[u8],
) {
    buf.reserve(48 + topic.len() + data.len());
    buf.put_slice(b"{\"msg\":{\"sid\":");
    put_u64(buf, sid);
    buf.put_slice(b",\"topic\":");
    put_json_str(buf, topic);
    if let Some(r) = reply_to {
        buf.put_slice(b",\"reply_to\":");
        put_json_str(buf, r);
    }
    buf.put_slice(b",\"data\":");
    buf.put_slice(if data.is_empty() { b"null" } else { data });
    buf.put_slice(b"}}\n");
}

/// The part of a delivered message frame before its payload, the same for every message of one
/// subscription on one topic: written once per run of messages, then copied before each
/// payload with [`put_msg_after_prefix`]. `None` when the topic needs escaping or is longer
/// than a checked topic may be (then encode each message whole).
pub fn msg_prefix(
    binary: bool,
    sid: u64,
    topic: &str,
    out: &mut [u8; MSG_PREFIX_MAX],
) -> Option<usize> {
    if topic.len() > 256 || topic.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return None;
    }
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        out[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    if binary {
        put(&[KIND_MSG]);
        put(&sid.to_le_bytes());
        put(&(topic.len() as u16).to_le_bytes());
        put(topic.as_bytes());
        put(&0u16.to_le_bytes());
    } else {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = sid;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(b"{\"msg\":{\"sid\":");
        put(&digits[i..]);
        put(b",\"topic\":\"");
        put(topic.as_bytes());
        put(b"\",\"data\":");
    }
    Some(n)
}

/// The longest prefix [`msg_prefix`] writes.
pub const MSG_PREFIX_MAX: usize = 320;

/// Appends one delivered message from its [`msg_prefix`] and its payload: the same bytes as
/// [`put_msg_bin`] or [`put_msg_json`] without a reply subject.
pub fn put_msg_after_prefix(buf: &mut BytesMut, binary: bool, prefix: &[u8], data: &[u8]) {
    if binary {
        buf.reserve(4 + prefix.len() + data.len());
        buf.put_u32_le((prefix.len() + data.len()) as u32);
        buf.put_slice(prefix);
        buf.put_slice(data);
    } else {
        buf.reserve(prefix.len() + data.len() + 3);
        buf.put_slice(prefix);
        buf.put_slice(if data.is_empty() { b"null" } else { data });
        buf.put_slice(b"}}\n");
    }
}

/// Reads a delivered-message line as the daemon writes it ([`put_msg_json`]): sid, topic,
/// reply subject and the raw payload, without a JSON parser. `None` for any other shape (a
/// reader then parses the line in full).
pub fn read_msg_line(line: &[u8]) -> Option<(u64, &str, Option<&str>, &[u8])> {
    let rest = line.strip_prefix(b"{\"msg\":{\"sid\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let sid: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"topic\":\"")?;
    let q = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[q] != b'"' {
        return None;
    }
    let topic = std::str::from_utf8(&rest[..q]).ok()?;
    let mut rest = &rest[q + 1..];
    let mut reply = None;
    if let Some(r) = rest.strip_prefix(b",\"reply_to\":\"") {
        let q = memchr::memchr2(b'"', b'\\', r)?;
        if r[q] != b'"' {
            return None;
        }
        reply = Some(std::str::from_utf8(&r[..q]).ok()?);
        rest = &r[q + 1..];
    }
    let data = rest.strip_prefix(b",\"data\":")?.strip_suffix(b"}}")?;
    Some((sid, topic, reply, data))
}

/// `{"event":{"name":..,"from":..,"data":..,"ts":..}}\n`.
pub fn put_event_json(buf: &mut BytesMut, name: &str, from: Option<&str>, data: &[u8], ts: &str) {
    buf.put_slice(b"{\"event\":{\"name\":");
    put_json_str(buf, name);
    buf.put_slice(b",\"from\":");
    match from {
        Some(f) => put_json_str(buf, f),
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(b",\"data\":");
    buf.put_slice(if data.is_empty() { b"null" } else { data });
    buf.put_slice(b",\"ts\":");
    put_json_str(buf, ts);
    buf.put_slice(b"}}\n");
}

/// The seed-004 shape of a delivered event.
pub fn put_event_compat(
    buf: &mut BytesMut,
    name: &str,
    from: Option<&str>,
    target: &str,
    data: &[u8],
    ts: &str,
) {
    buf.put_slice(b"{\"Type\":\"SendEvent\",\"Payload\":{\"SourceMachineId\":");
    match from {
        Some(f) => put_json_str(buf, f),
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(b",\"TargetMachineId\":");
    put_json_str(buf, target);
    buf.put_slice(b",\"EventName\":");
    put_json_str(buf, name);
    buf.put_slice(b",\"Payload\":");
    buf.put_slice(if data.is_empty() { b"null" } else { data });
    buf.put_slice(b",\"Timestamp\":");
    put_json_str(buf, ts);
    buf.put_slice(b"}}\n");
}

fn put_u64(buf: &mut BytesMut, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&tmp[i..]);
}

// ---------------------------------------------------------------------------------------------
// Binary framing
// ---------------------------------------------------------------------------------------------

/// The value of `framing` in `hello` that switches a connection to [`BinFrame`]s after the reply.
pub const BINARY_FRAMING: &str = "binary-v1";

/// One frame of the binary framing: `u32` little-endian length of what follows, a kind byte,
/// then the body. Every JSON line can travel as a [`BinFrame::Json`]; publishing and delivery
/// have compact forms. Topic and reply strings are `u16`-length-prefixed UTF-8; `data` is JSON
/// text, so that JSON-line subscribers receive it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinFrame {
    /// Kind 1: one JSON line (without its newline): any request, reply or pushed message.
    Json(Bytes),
    /// Kind 2: publish `data` on `topic` (no reply, like `bus.pub` without an id).
    Pub { topic: Bytes, data: Bytes },
    /// Kind 3: a delivered message.
    Msg {
        sid: u64,
        topic: Bytes,
        reply_to: Bytes,
        data: Bytes,
    },
}

const KIND_JSON: u8 = 1;
const KIND_PUB: u8 = 2;
const KIND_MSG: u8 = 3;

/// Errors of the binary framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Appends a publish frame.
pub fn put_pub_bin(buf: &mut BytesMut, topic: &str, data: &[u8]) {
    let len = 1 + 2 + topic.len() + data.len();
    buf.reserve(4 + len);
    let mut head = [0u8; 7];
    head[..4].copy_from_slice(&(len as u32).to_le_bytes());
    head[4] = KIND_PUB;
    head[5..].copy_from_slice(&(topic.len() as u16).to_le_bytes());
    buf.put_slice(&head);
    buf.put_slice(topic.as_bytes());
    buf.put_slice(data);
}

/// Appends a delivered-message frame.
pub fn put_msg_bin(buf: &mut BytesMut, sid: u64, topic: &str, reply_to: Option<&str>, data: &[u8]) {
    let reply = reply_to.unwrap_or("");
    let len = 1 + 8 + 2 + topic.len() + 2 + reply.len() + data.len();
    buf.reserve(4 + len);
    let mut head = [0u8; 15];
    head[..4].copy_from_slice(&(len as u32).to_le_bytes());
    head[4] = KIND_MSG;
    head[5..13].copy_from_slice(&sid.to_le_bytes());
    head[13..].copy_from_slice(&(topic.len() as u16).to_le_bytes());
    buf.put_slice(&head);
    buf.put_slice(topic.as_bytes());
    buf.put_u16_le(reply.len() as u16);
    buf.put_slice(reply.as_bytes());
    buf.put_slice(data);
}

/// Appends a JSON frame (`line` without newline).
pub fn put_json_bin(buf: &mut BytesMut, line: &[u8]) {
    buf.reserve(5 + line.len());
    buf.put_u32_le((1 + line.len()) as u32);
    buf.put_u8(KIND_JSON);
    buf.put_slice(line);
}

/// One frame of the binary framing borrowed from the read buffer: what [`decode_bin_ref`] hands
/// out, so a reader walks a whole read batch without a reference count or a copy per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinRef<'a> {
    Json(&'a [u8]),
    Pub {
        topic: &'a str,
        data: &'a [u8],
    },
    Msg {
        sid: u64,
        topic: &'a str,
        reply_to: &'a str,
        data: &'a [u8],
    },
}

/// The body of the frame at the front of `buf` (its kind byte first, never empty) and its
/// length, `None` while it is incomplete. Total: never panics on any input.
fn frame_at(buf: &[u8], limit: usize) -> Result<Option<(&[u8], usize)>, BinError> {
    let Some(head) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*head) as usize;
    if len > limit {
        return Err(BinError::TooLong { len, limit });
    }
    if len == 0 {
        return Err(BinError::Malformed("empty frame"));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((body, len)))
}

/// Reads one frame at the front of `buf` without consuming it: the frame and how many bytes it
/// took, `None` when it is not complete yet. Total: never panics on any input.
pub fn decode_bin_ref(buf: &[u8], limit: usize) -> Result<Option<(BinRef<'_>, usize)>, BinError> {
    decode_bin_ref_after(buf, limit, "")
}

/// [`decode_bin_ref`] for a reader that goes through frames in order: `last_topic` is the topic
/// of the frame before (from the same buffer), and a topic with the same bytes is that string
/// again, not checked as UTF-8 a second time (a run of messages on one topic is the usual case).
pub fn decode_bin_ref_after<'a>(
    buf: &'a [u8],
    limit: usize,
    last_topic: &'a str,
) -> Result<Option<(BinRef<'a>, usize)>, BinError> {
    let Some((body, len)) = frame_at(buf, limit)? else {
        return Ok(None);
    };
    let (kind, mut body) = (body[0], &body[1..]);
    fn take_str<'a>(body: &mut &'a [u8], known: &'a str) -> Result<&'a str, BinError> {
        let Some((n, rest)) = body.split_first_chunk::<2>() else {
            return Err(BinError::Malformed("truncated string length"));
        };
        let n = u16::from_le_bytes(*n) as usize;
        if rest.len() < n {
            return Err(BinError::Malformed("string longer than its frame"));
        }
        let (s, rest) = rest.split_at(n);
        *body = rest;
        if !known.is_empty() && s == known.as_bytes() {
            return Ok(known);
        }
        std::str::from_utf8(s).map_err(|_| BinError::Malformed("string is not UTF-8"))
    }
    let frame = match kind {
        KIND_JSON => BinRef::Json(body),
        KIND_PUB => {
            let topic = take_str(&mut body, last_topic)?;
            BinRef::Pub { topic, data: body }
        }
        KIND_MSG => {
            let Some((sid, rest)) = body.split_first_chunk::<8>() else {
                return Err(BinError::Malformed("truncated sid"));
            };
            body = rest;
            let sid = u64::from_le_bytes(*sid);
            let topic = take_str(&mut body, last_topic)?;
            let reply_to = take_str(&mut body, "")?;
            BinRef::Msg {
                sid,
                topic,
                reply_to,
                data: body,
            }
        }
        _ => return Err(BinError::Malformed("unknown frame kind")),
    };
    Ok(Some((frame, 4 + len)))
}

/// What a reader needs to route the frame at the front of `buf` without reading its strings:
/// a JSON frame's text, a message frame's subscription id. With how many bytes it took; `None`
/// when it is not complete yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinPeek<'a> {
    Json(&'a [u8]),
    Msg { sid: u64 },
    Pub,
}

/// See [`BinPeek`]. Total: never panics on any input.
pub fn peek_bin(buf: &[u8], limit: usize) -> Result<Option<(BinPeek<'_>, usize)>, BinError> {
    let Some((body, len)) = frame_at(buf, limit)? else {
        return Ok(None);
    };
    let peek = match body[0] {
        KIND_JSON => BinPeek::Json(&body[1..]),
        KIND_PUB => BinPeek::Pub,
        KIND_MSG => match body[1..].first_chunk::<8>() {
            Some(sid) => BinPeek::Msg {
                sid: u64::from_le_bytes(*sid),
            },
            None => return Err(BinError::Malformed("truncated sid")),
        },
        _ => return Err(BinError::Malformed("unknown frame kind")),
    };
    Ok(Some((peek, 4 + len)))
}

/// Takes one frame off the front of `buf`, if complete. Total: never panics on any input.
pub fn decode_bin(buf: &mut BytesMut, limit: usize) -> Result<Option<BinFrame>, BinError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > limit {
        return Err(BinError::TooLong { len, limit });
    }
    if len == 0 {
        return Err(BinError::Malformed("empty frame"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(len).freeze();
    let kind = body.get_u8();
    let take_str = |body: &mut Bytes| -> Result<Bytes, BinError> {
        if body.len() < 2 {
            return Err(BinError::Malformed("truncated string length"));
        }
        let n = body.get_u16_le() as usize;
        if body.len() < n {
            return Err(BinError::Malformed("string longer than its frame"));
        }
        let s = body.split_to(n);
        if std::str::from_utf8(&s).is_err() {
            return Err(BinError::Malformed("string is not UTF-8"));
        }
        Ok(s)
    };
    match kind {
        KIND_JSON => Ok(Some(BinFrame::Json(body))),
        KIND_PUB => {
            let topic = take_str(&mut body)?;
            Ok(Some(BinFrame::Pub { topic, data: body }))
        }
        KIND_MSG => {
            if body.len() < 8 {
                return Err(BinError::Malformed("truncated sid"));
            }
            let sid = body.get_u64_le();
            let topic = take_str(&mut body)?;
            let reply_to = take_str(&mut body)?;
            Ok(Some(BinFrame::Msg {
                sid,
                topic,
                reply_to,
                data: body,
            }))
        }
        _ => Err(BinError::Malformed("unknown frame kind")),
    }
}

/// Appends `frame` in the binary framing.
pub fn encode_bin(frame: &BinFrame, buf: &mut BytesMut) {
    let s = |b: &Bytes| std::str::from_utf8(b).unwrap_or("").to_string();
    match frame {
        BinFrame::Json(line) => put_json_bin(buf, line),
        BinFrame::Pub { topic, data } => put_pub_bin(buf, &s(topic), data),
        BinFrame::Msg {
            sid,
            topic,
            reply_to,
            data,
        } => {
            let r = s(reply_to);
            put_msg_bin(
                buf,
                *sid,
                &s(topic),
                (!r.is_empty()).then_some(r.as_str()),
                data,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_json_refuses_what_strict_parsers_reject() {
        for ok in [
            &b"null"[..],
            br#"{"a":[1,2.5,-3e10,"x\ud83d\ude00\"y",{"b":"\u0041"}]}"#,
            b"123456789012345678901234567890",
            b"1e-999999",
            b"\"e1e999999 [[[[\"",
        ] {
            assert_eq!(
                check_strict_json(ok),
                Ok(()),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"1e999999"[..],
            b"[1,-1E400]",
            br#""\ud800""#,
            br#""\udc00x""#,
            br#"{"k":"\ud800\u0041"}"#,
        ] {
            assert!(
                check_strict_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(check_strict_json(deep.as_bytes()).is_err());
        let fine = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert_eq!(check_strict_json(fine.as_bytes()), Ok(()));
        let big = "9".repeat(400);
        assert!(check_strict_json(big.as_bytes()).is_err());
    }

    #[test]
    fn the_fast_publish_line_reads_like_the_full_parse() {
        let lines: &[&[u8]] = &[
            br#"{"cmd":"bus.pub","topic":"a.b","data":{"x":[1,"}"]}}"#,
            br#"{"cmd":"bus.pub","topic":"a","data":"x" }"#,
            br#"{"cmd":"bus.pub","topic":"a","data":1} {"x":1}"#,
            br#"{"cmd":"bus.pub","topic":"a"b","data":1}"#,
            br#"{"cmd":"bus.pub","topic":"a","data":1,"id":2}"#,
            br#"{"cmd":"bus.pub","topic":"a","data":}"#,
            br#"{"cmd":"bus.pub","topic":"a","data":{"#,
        ];
        for line in lines {
            let full = BusLine::parse(line);
            if let Some((topic, data)) = fast_pub(line) {
                let full = full.expect("the full parse reads it too");
                assert_eq!(full.topic.as_deref(), Some(topic));
                assert_eq!(full.data.map(|d| d.get().as_bytes()), Some(data));
                assert!(full.id.is_none());
            }
        }
        assert!(fast_pub(lines[0]).is_some());
        assert!(fast_pub(lines[1]).is_some());
        assert!(fast_pub(lines[2]).is_none());
        assert!(fast_pub(lines[3]).is_none());
    }

    #[test]
    fn prefixed_messages_are_the_whole_encoding() {
        for binary in [false, true] {
            for (sid, topic) in [(0u64, "a"), (7, "orders.7.new"), (u64::MAX, "x.y")] {
                let mut pre = [0u8; MSG_PREFIX_MAX];
                let n = msg_prefix(binary, sid, topic, &mut pre).unwrap();
                for data in [&b"{\"k\":1}"[..], b"", b"\"x\""] {
                    let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                    put_msg_after_prefix(&mut a, binary, &pre[..n], data);
                    if binary {
                        put_msg_bin(&mut b, sid, topic, None, data);
                    } else {
                        put_msg_json(&mut b, sid, topic, None, data);
                    }
                    assert_eq!(a, b);
                }
            }
        }
        let mut pre = [0u8; MSG_PREFIX_MAX];
        assert!(msg_prefix(false, 1, "a\"b", &mut pre).is_none());
        assert!(msg_prefix(true, 1, &"a".repeat(300), &mut pre).is_none());
    }

    #[test]
    fn message_lines_read_back() {
        for reply in [None, Some("_INBOX.00ff")] {
            let mut b = BytesMut::new();
            put_msg_json(&mut b, 42, "a.b", reply, br#"{"x":"}}"}"#);
            let line = b.strip_suffix(b"\n").unwrap();
            let (sid, topic, r, data) = read_msg_line(line).unwrap();
            assert_eq!((sid, topic, r), (42, "a.b", reply));
            assert_eq!(data, br#"{"x":"}}"}"#);
        }
        assert!(read_msg_line(br#"{"msg":{"sid":1,"topic":"a\"b","data":1}}"#).is_none());
        assert!(read_msg_line(br#"{"id":1,"ok":true}"#).is_none());
    }

    #[test]
    fn wildcards() {
        assert!(matches("orders.*.new", "orders.7.new"));
        assert!(!matches("orders.*.new", "orders.7.old"));
        assert!(!matches("orders.*.new", "orders.7.new.x"));
        assert!(matches("orders.>", "orders.7.new"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches(">", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a"));
    }

    #[test]
    fn topic_checks() {
        assert!(check_topic("a.b.c", false).is_ok());
        assert!(check_topic("a.*.>", true).is_ok());
        assert!(check_topic("a.*", false).is_err());
        assert!(check_topic("a..b", true).is_err());
        assert!(check_topic("a.>.b", true).is_err());
        assert!(check_topic("a.b*", true).is_err());
        assert!(check_topic("a b", true).is_err());
        assert!(check_topic("", true).is_err());
    }

    #[test]
    fn parses_bus_and_compat_lines() {
        let l =
            BusLine::parse(br#"{"id":1,"cmd":"bus.pub","topic":"a","data":{"x":[1,2]}}"#).unwrap();
        assert_eq!(l.data.unwrap().get(), r#"{"x":[1,2]}"#);
        assert_eq!(l.id.unwrap().get(), "1");
        let c = BusLine::parse(br#"{"Type":"Register","Payload":{"MachineId":"m1"}}"#).unwrap();
        let r: CompatRegister = serde_json::from_str(c.compat_payload.unwrap().get()).unwrap();
        assert_eq!(r.machine_id, "m1");
        assert!(BusLine::parse(br#"{"cmd":"ping"}"#).is_none());
        assert!(BusLine::parse(br#"{"command":"ping"}"#).is_none());
        assert!(BusLine::parse(b"nope").is_none());
    }

    #[test]
    fn delivered_shapes_are_json() {
        let mut b = BytesMut::new();
        put_msg_json(&mut b, 3, "a.\"b", Some("_INBOX.1"), br#"{"k":1}"#);
        put_event_json(&mut b, "e", Some("w1"), b"", "t");
        put_event_compat(&mut b, "e", None, "m2", b"[1]", "t");
        for line in b[..].split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert!(v.is_object());
        }
    }

    fn arb_frame() -> impl Strategy<Value = BinFrame> {
        let s = "[a-z.>*]{0,20}".prop_map(|s| Bytes::from(s.into_bytes()));
        let d = proptest::collection::vec(any::<u8>(), 0..100).prop_map(Bytes::from);
        prop_oneof![
            d.clone().prop_map(|b| BinFrame::Json(if b.is_empty() {
                Bytes::from_static(b"{}")
            } else {
                b
            })),
            (s.clone(), d.clone()).prop_map(|(topic, data)| BinFrame::Pub { topic, data }),
            (any::<u64>(), s.clone(), s, d).prop_map(|(sid, topic, reply_to, data)| {
                BinFrame::Msg {
                    sid,
                    topic,
                    reply_to,
                    data,
                }
            }),
        ]
    }

    /// What [`validate_json`] must say: serde_json's reading, then the strict check.
    fn json_reference(d: &[u8]) -> Result<(), JsonFault> {
        if serde_json::from_slice::<&RawValue>(d).is_err() {
            return Err(JsonFault::NotJson);
        }
        check_strict_json(d).map_err(JsonFault::Strict)
    }

    #[test]
    fn validate_json_reads_like_serde_and_the_strict_check() {
        let deep_ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let deep_bad = format!("{}{}", "[".repeat(129), "]".repeat(128));
        let big = "9".repeat(400);
        let cases: &[&[u8]] = &[
            b"null",
            b" true ",
            b"false",
            b"nul",
            b"",
            b" ",
            b"0",
            b"-0",
            b"01",
            b"-",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"1E-5",
            b"+1",
            b"1 2",
            br#""""#,
            br#""\u00e9\/""#,
            br#""\x""#,
            b"\"\x01\"",
            b"\"\xc3\xa9\"",
            b"\"\xff\"",
            b"[1,]",
            b"[,1]",
            b"{}",
            br#"{"a":1,}"#,
            br#"{"a" : [ 1 , {"b":null} ] }"#,
            b"{1:2}",
            br#"{"a"}"#,
            b"[1e999999]",
            br#""\ud800""#,
            br#""\ud800\u0041""#,
            br#""\ud83d\ude00""#,
            br#"["\udc00", 1e999]"#,
            b"[1e999, x]",
            br#""\u12G4""#,
            br#""\u+123""#,
            deep_ok.as_bytes(),
            deep.as_bytes(),
            deep_bad.as_bytes(),
            big.as_bytes(),
            br#"{"cmd":"bus.pub"}}"#,
            b"[1e400",
            b"1e-999999",
            br#""abc"#,
        ];
        for d in cases {
            assert_eq!(
                validate_json(d),
                json_reference(d),
                "{}",
                String::from_utf8_lossy(d)
            );
        }
    }

    /// Pieces whose concatenations are JSON often enough, and wrong in every way otherwise.
    fn json_pieces() -> impl Strategy<Value = Vec<u8>> {
        const PIECES: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b" ",
            b"\n",
            b"\"a\"",
            b"\"k\":",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud83d\\ude00\"",
            b"\"\\n\\u00e9\"",
            b"\"\\q\"",
            b"\"\x01\"",
            b"\"\xc3\xa9\"",
            b"\"\xe9\"",
            b"1",
            b"-0.5e-3",
            b"01",
            b"1e999",
            b"-",
            b"2.",
            b"true",
            b"nul",
            b"null",
            b"\"",
            b"\\",
        ];
        let piece = proptest::sample::select(PIECES);
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        /// The one-pass payload check says what serde_json and the strict check say together.
        #[test]
        fn validate_json_agrees_with_serde_and_the_strict_check(d in json_pieces()) {
            prop_assert_eq!(validate_json(&d), json_reference(&d), "{}", String::from_utf8_lossy(&d));
        }

        #[test]
        fn validate_json_agrees_on_any_bytes(d in proptest::collection::vec(any::<u8>(), 0..48)) {
            prop_assert_eq!(validate_json(&d), json_reference(&d));
        }

        /// Valid documents of any shape (serde_json's own output, pretty or not) pass.
        #[test]
        fn validate_json_accepts_what_serde_writes(d in json_pieces(), pretty in any::<bool>()) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&d) {
                let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) };
                let text = text.unwrap();
                prop_assert_eq!(validate_json(&text), json_reference(&text));
            }
        }
        /// Frames survive encode → decode, however the byte stream is cut.
        #[test]
        fn binary_round_trip(frames in proptest::collection::vec(arb_frame(), 0..20), cut in 1usize..64) {
            let mut wire = BytesMut::new();
            for f in &frames { encode_bin(f, &mut wire); }
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(f) = decode_bin(&mut buf, 1 << 20).unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, frames);
        }

        /// The borrowed decoder reads the same frames as the owned one, and fails alike, also
        /// when it is given the topic before (each frame is sent twice, so topics repeat).
        #[test]
        fn borrowed_decoder_agrees(frames in proptest::collection::vec(arb_frame(), 0..8), junk in proptest::collection::vec(any::<u8>(), 0..64), after in any::<bool>()) {
            let mut wire = BytesMut::new();
            for f in &frames { encode_bin(f, &mut wire); encode_bin(f, &mut wire); }
            wire.extend_from_slice(&junk);
            let mut owned = wire.clone();
            let mut at = 0;
            let mut last = "";
            loop {
                let a = if after {
                    decode_bin_ref_after(&wire[at..], 1 << 16, last)
                } else {
                    decode_bin_ref(&wire[at..], 1 << 16)
                };
                if let Ok(Some((BinRef::Pub { topic, .. } | BinRef::Msg { topic, .. }, _))) = a {
                    last = topic;
                }
                let b = decode_bin(&mut owned, 1 << 16);
                match (a, b) {
                    (Ok(Some((r, used))), Ok(Some(f))) => {
                        let same = match (r, &f) {
                            (BinRef::Json(a), BinFrame::Json(b)) => a == &b[..],
                            (BinRef::Pub { topic, data }, BinFrame::Pub { topic: t, data: d }) => topic.as_bytes() == &t[..] && data == &d[..],
                            (BinRef::Msg { sid, topic, reply_to, data }, BinFrame::Msg { sid: s, topic: t, reply_to: r, data: d }) =>
                                sid == *s && topic.as_bytes() == &t[..] && reply_to.as_bytes() == &r[..] && data == &d[..],
                            _ => false,
                        };
                        prop_assert!(same, "{:?} / {:?}", r, f);
                        at += used;
                    }
                    (Ok(None), Ok(None)) | (Err(_), Err(_)) => break,
                    (a, b) => prop_assert!(false, "{:?} / {:?}", a, b),
                }
            }
        }

        /// No byte sequence makes the binary decoder panic or loop.
        #[test]
        fn binary_decoder_is_total(data in proptest::collection::vec(any::<u8>(), 0..512), limit in 0usize..256) {
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..600 {
                match decode_bin(&mut buf, limit) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Whenever the fast publish read accepts a line, the full parse reads the same.
        #[test]
        fn fast_pub_agrees_with_the_full_parse(topic in "[a-z.\"\\\\]{0,8}", data in "[\\[\\]{}:,\" 0-9a-z\\\\]{0,24}", tail in "[ }]{0,3}") {
            let line = format!(r#"{{"cmd":"bus.pub","topic":"{topic}","data":{data}{tail}"#);
            if let Some((t, d)) = fast_pub(line.as_bytes()) {
                let full = BusLine::parse(line.as_bytes());
                prop_assert!(full.is_some(), "{}", line);
                let full = full.unwrap();
                prop_assert_eq!(full.topic.as_deref(), Some(t));
                prop_assert_eq!(full.data.map(|d| d.get().as_bytes()), Some(d));
            }
        }

        #[test]
        fn bus_line_parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = BusLine::parse(&data);
        }

        #[test]
        fn matching_agrees_with_a_reference(
            p in proptest::collection::vec(prop_oneof!["a", "b", "\\*"], 1..5),
            tail in any::<bool>(),
            t in proptest::collection::vec(prop_oneof!["a", "b"], 1..6),
        ) {
            let mut pat = p.clone();
            if tail { pat.push(">".into()); }
            let (pattern, topic) = (pat.join("."), t.join("."));
            let reference = if tail {
                t.len() > p.len() && p.iter().zip(&t).all(|(a, b)| a == "*" || a == b)
            } else {
                t.len() == p.len() && p.iter().zip(&t).all(|(a, b)| a == "*" || a == b)
            };
            prop_assert_eq!(matches(&pattern, &topic), reference);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The typed contract of the bus commands
// ---------------------------------------------------------------------------------------------
//
// The daemon's hot path reads bus lines with the borrowed [`BusLine`] (payloads stay raw JSON
// text); these types document the same requests for `schema/`, the SDKs and the HTTP API, and
// type the replies. Like the hot path, they ignore fields they do not know.

/// The arguments of `bus.register`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterArgs {
    /// The endpoint id: 1-128 letters, digits, `-`, `_`, `.`, `:` or `@`.
    pub endpoint: String,
    /// The endpoint's token, when `[bus.endpoints.<id>] token` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Replace the connection that holds the id now (it is told and closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<bool>,
}

/// The reply to `bus.register` and `bus.unregister`: the endpoint id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointReply {
    pub endpoint: String,
}

/// The arguments of `bus.send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SendArgs {
    /// The target endpoint.
    pub to: String,
    /// The event name.
    pub event: String,
    /// Any JSON value; `null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Wait up to this long (bounded by `[bus] max_wait`) for the target to register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The reply to `bus.send` and `bus.reply` (sent only when the request had an `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delivered {
    pub delivered: bool,
}

/// The arguments of `bus.pub`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PubArgs {
    /// A topic without wildcards; `_INBOX.<n>` answers a request like `bus.reply`.
    pub topic: String,
    /// Any JSON value; `null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The reply to `bus.pub` (sent only when the request had an `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PubReply {
    /// How many subscribers got it (a count), or `true` for a reply published on `_INBOX.<n>`.
    pub delivered: PubDelivered,
}

/// How many subscribers a publish reached, or `true` when it answered a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PubDelivered {
    Subscribers(u64),
    Reply(bool),
}

/// The arguments of `bus.sub`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubArgs {
    /// A topic pattern: `*` for one token, a final `>` for the rest.
    pub pattern: String,
    /// Join this queue group: each message goes to one member of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The subscription id to use on this connection; chosen by the daemon when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<u64>,
}

/// The arguments of `bus.unsub`, and the reply to `bus.sub` and `bus.unsub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sid {
    pub sid: u64,
}

/// The arguments of `bus.request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequestArgs {
    /// A topic without wildcards; one subscriber (or one per queue group) gets the request.
    pub topic: String,
    /// Any JSON value; `null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// The deadline; `[bus] request_timeout` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The arguments of `bus.reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyArgs {
    /// The request's `reply_to` (`_INBOX.<n>`).
    pub to: String,
    /// Any JSON value; `null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The reply to `bus.ls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusList {
    pub connections: Vec<BusConn>,
    pub counters: BusCounters,
    pub endpoints: Vec<BusEndpoint>,
}

/// One connection of `bus.ls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusConn {
    pub conn: u64,
    /// Frames dropped for this slow consumer.
    pub dropped: u64,
    pub endpoint: Option<String>,
    pub pid: Option<i32>,
    pub queued_bytes: u64,
    pub queued_msgs: u64,
    /// Real memory its outbound queue holds now (buffers, bookkeeping, the batch being written).
    #[serde(default)]
    pub memory_bytes: u64,
    /// Frames written to it (messages, events, replies, notices).
    pub sent: u64,
    /// Bytes of those frames.
    #[serde(default)]
    pub bytes_out: u64,
    /// Frames (lines, or binary frames) it sent.
    #[serde(default)]
    pub msgs_in: u64,
    /// Bytes of those frames.
    #[serde(default)]
    pub bytes_in: u64,
    /// RFC 3339: when it connected.
    pub since: String,
    pub subscriptions: Vec<BusSubscription>,
    pub uid: Option<u32>,
}

/// One subscription of `bus.ls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusSubscription {
    pub pattern: String,
    pub queue: Option<String>,
    pub sid: u64,
}

/// One registered endpoint of `bus.ls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusEndpoint {
    pub conn: u64,
    pub id: String,
    pub pid: Option<i32>,
    /// Frames its connection sent, and their bytes.
    #[serde(default)]
    pub msgs_in: u64,
    #[serde(default)]
    pub bytes_in: u64,
    /// Frames written to its connection, and their bytes.
    #[serde(default)]
    pub msgs_out: u64,
    #[serde(default)]
    pub bytes_out: u64,
    /// Frames dropped for its connection (slow consumer).
    #[serde(default)]
    pub dropped: u64,
}

/// The bus's counters since start and its health (`bus.ls`, and `status` under `bus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusCounters {
    /// Connections open now.
    pub connections: u64,
    /// Most connections open at once since start, and when that was first reached (RFC 3339).
    #[serde(default)]
    pub peak_connections: u64,
    #[serde(default)]
    pub peak_at: Option<String>,
    /// When a connection last sent a frame (RFC 3339); none yet: null.
    #[serde(default)]
    pub last_activity: Option<String>,
    /// Real memory all outbound queues hold now, and their bound (`[bus] total_queue_bytes`).
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub total_queue_bytes: u64,
    /// Frames dropped (or held by connections closed) because all outbound queues together
    /// passed `[bus] total_queue_bytes`; also counted in `dropped`.
    #[serde(default)]
    pub overflows: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub errors: u64,
    pub events: u64,
    pub no_responders: u64,
    pub published: u64,
    pub replies: u64,
    pub requests: u64,
    pub subscriptions: u64,
    pub timeouts: u64,
}

crate::commands! { COMMANDS:
    /// Registers this connection as an endpoint (`$sys.endpoint.up`); events sent to it arrive as `{"event":{..}}` lines.
    BusRegister "bus.register" (Action) RegisterArgs => EndpointReply;
    /// Gives up this connection's endpoint id (`$sys.endpoint.down`).
    BusUnregister "bus.unregister" (Action) crate::contract::NoArgs => EndpointReply;
    /// Sends an event to an endpoint, optionally waiting for it to register.
    BusSend "bus.send" (Action) SendArgs => Delivered;
    /// Publishes on a topic; every matching subscriber (one per queue group) gets a `{"msg":{..}}` line.
    BusPub "bus.pub" (Action) PubArgs => PubReply;
    /// Subscribes this connection to a topic pattern.
    BusSub "bus.sub" (Action) SubArgs => Sid;
    /// Ends one of this connection's subscriptions.
    BusUnsub "bus.unsub" (Action) Sid => Sid;
    /// Sends a request to one subscriber of a topic; the reply is the responder's `data`.
    BusRequest "bus.request" (Action) RequestArgs => serde_json::Value;
    /// Answers a request received with a `reply_to`.
    BusReply "bus.reply" (Action) ReplyArgs => Delivered;
    /// Endpoints, connections (subscriptions, queue depth, dropped) and counters.
    BusLs "bus.ls" (Read) crate::contract::NoArgs => BusList;
}
