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
