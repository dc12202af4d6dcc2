//! An item's whole state is its file name in the work folder:
//! `{ULID}.a{ATTEMPTS}.{ORIGINAL NAME}.{STATE}`, e.g. `01J9Z3....a0.report.csv.queued`.
//!
//! The ULID is fixed when the input is claimed, so it is known before the first upload attempt
//! and survives restarts: it is sent as the `Idempotency-Key`. The attempt count grows with each
//! failed upload. A state change is one rename.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use majordomo_proto::pipeline::ItemState as State;
use ulid::Ulid;

/// A new item id: the claim time in milliseconds and 80 random bits (`fastrand`, the
/// workspace's one random-number crate).
pub fn new_id() -> Ulid {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ulid::from_parts(ms, fastrand::u128(..))
}

/// When the item with this id was claimed.
pub fn claimed_at(id: Ulid) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(id.timestamp_ms())
}

/// How long ago the item with this id was claimed (zero if the clock went back).
pub fn age(id: Ulid, now: SystemTime) -> Duration {
    now.duration_since(claimed_at(id)).unwrap_or_default()
}

/// The work-folder state named `ext` (`dead` and `failed` are folders, not file names).
fn work_state(ext: &str) -> Option<State> {
    State::WORK.into_iter().find(|s| s.as_str() == ext)
}

/// A parsed work-folder file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemName {
    pub id: Ulid,
    pub attempts: u32,
    /// The input's file name, as dropped.
    pub orig: String,
    pub state: State,
}

impl ItemName {
    pub fn new(orig: &str, state: State) -> Self {
        Self {
            id: new_id(),
            attempts: 0,
            orig: orig.to_string(),
            state,
        }
    }

    /// The file name without the state: also the name used in the dead-letter folder.
    pub fn stem(&self) -> String {
        format!("{}.a{}.{}", self.id, self.attempts, self.orig)
    }

    pub fn file_name(&self) -> String {
        format!("{}.{}", self.stem(), self.state.as_str())
    }

    pub fn with_state(&self, state: State) -> Self {
        Self {
            state,
            ..self.clone()
        }
    }

    /// Parses a work-folder file name; `None` for anything else (left alone).
    pub fn parse(name: &str) -> Option<ItemName> {
        let (stem, state) = name.rsplit_once('.')?;
        let state = work_state(state)?;
        let (id, rest) = parse_stem(stem)?;
        Some(ItemName {
            id: id.0,
            attempts: id.1,
            orig: rest.to_string(),
            state,
        })
    }

    /// Parses a stem `{ULID}.a{N}.{orig}` (dead-letter file names).
    pub fn parse_stem(stem: &str, state: State) -> Option<ItemName> {
        let ((id, attempts), orig) = parse_stem(stem)?;
        Some(ItemName {
            id,
            attempts,
            orig: orig.to_string(),
            state,
        })
    }
}

/// The longest input name (bytes) the pipeline takes: its longest work-folder name
/// (`{ULID}.a{u32}.{name}.{longest state}`, 50 bytes around it) must fit the 255-byte limit of
/// common file systems.
pub const MAX_ORIG_LEN: usize = 255 - 50;

/// The longest name (bytes) given to a refused input in the error folder: room is left for a
/// `-N` suffix, `.reason` and the temporary names of durable writes.
const MAX_REFUSED_LEN: usize = 180;

/// The name an input keeps as an item, or why it cannot be taken (then it goes to the error
/// folder under [`refused_name`]).
pub fn intake_name(raw: &std::ffi::OsStr) -> Result<&str, String> {
    let Some(name) = raw.to_str() else {
        return Err(format!(
            "its name {raw:?} is not valid UTF-8, which the pipeline cannot carry into item \
             names, upload headers and listings; rename it to UTF-8 and drop it again"
        ));
    };
    if name.len() > MAX_ORIG_LEN {
        return Err(format!(
            "its name is {} bytes long; the pipeline takes names of up to {MAX_ORIG_LEN} bytes \
             (its work-folder names add 50 bytes and must stay within the file system's 255): \
             rename it shorter and drop it again",
            name.len()
        ));
    }
    Ok(name)
}

/// A printable, short enough name for an input refused by [`intake_name`]: invalid UTF-8
/// replaced by `_`, cut at a character boundary (keeping a short extension).
pub fn refused_name(raw: &std::ffi::OsStr) -> String {
    let lossy = raw.to_string_lossy().replace('\u{FFFD}', "_");
    if lossy.len() <= MAX_REFUSED_LEN {
        return lossy;
    }
    let ext = lossy
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| !e.is_empty() && e.len() <= 16)
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let mut cut = MAX_REFUSED_LEN - ext.len() - 1;
    while !lossy.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{ext}", &lossy[..cut])
}

fn parse_stem(stem: &str) -> Option<((Ulid, u32), &str)> {
    let (id, rest) = stem.split_once('.')?;
    if id.len() != 26 {
        return None;
    }
    let id = Ulid::from_string(id).ok()?;
    let (attempts, orig) = rest.split_once('.')?;
    let attempts = attempts.strip_prefix('a')?.parse().ok()?;
    if orig.is_empty() {
        return None;
    }
    Some(((id, attempts), orig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = ItemName::new("report.v2.csv", State::Queued);
        let parsed = ItemName::parse(&n.file_name()).unwrap();
        assert_eq!(parsed, n);
        assert!(n.file_name().ends_with(".report.v2.csv.queued"));
        assert_eq!(ItemName::parse("report.csv"), None);
        assert_eq!(ItemName::parse("x.a1.y.queued"), None);
        // Dead and failed are folders, never a work-folder name.
        let dead = format!("{}.dead", n.stem());
        assert_eq!(ItemName::parse(&dead), None);
        let age = age(n.id, SystemTime::now());
        assert!(age < Duration::from_secs(5), "{age:?}");
    }

    #[test]
    fn long_and_non_utf8_names_are_refused_with_a_usable_name() {
        use std::ffi::OsStr;
        let ok = "a".repeat(MAX_ORIG_LEN);
        assert_eq!(intake_name(OsStr::new(&ok)), Ok(ok.as_str()));
        // Its longest work-folder name still fits in 255 bytes.
        let mut n = ItemName::new(&ok, State::Processing);
        n.attempts = u32::MAX;
        assert!(n.file_name().len() <= 255, "{}", n.file_name().len());
        let long = format!("{}.csv", "é".repeat(126));
        assert_eq!(long.len(), 256);
        let why = intake_name(OsStr::new(&long)).unwrap_err();
        assert!(why.contains("256 bytes"), "{why}");
        let short = refused_name(OsStr::new(&long));
        assert!(
            short.len() <= MAX_REFUSED_LEN && short.ends_with("~.csv"),
            "{short}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let raw = OsStr::from_bytes(b"caf\xe9.csv");
            let why = intake_name(raw).unwrap_err();
            assert!(
                why.contains("not valid UTF-8") && why.contains("\\xE9"),
                "{why}"
            );
            assert_eq!(refused_name(raw), "caf_.csv");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in ".*", orig in "[^/\\x00]{1,40}", attempts in 0u32..1000) {
            let _ = ItemName::parse(&s);
            let mut n = ItemName::new(&orig, State::Error);
            n.attempts = attempts;
            let back = ItemName::parse(&n.file_name());
            proptest::prop_assert_eq!(back, Some(n));
        }
    }
}
