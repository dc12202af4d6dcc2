//! An item's whole state is its file name in the work folder:
//! `{ULID}.a{ATTEMPTS}.{ORIGINAL NAME}.{STATE}`, e.g. `01J9Z3....a0.report.csv.queued`.
//!
//! The ULID is fixed when the input is claimed, so it is known before the first upload attempt
//! and survives restarts: it is sent as the `Idempotency-Key`. The attempt count grows with each
//! failed upload. A state change is one rename.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// A claimed input waiting for conversion.
    Input,
    /// A converter is writing this output (removed at start-up: conversions are redone).
    Converting,
    /// Converted and waiting for upload.
    Queued,
    /// Being uploaded (returns to queued at start-up).
    Processing,
    /// The last upload failed transiently; retried after a backoff.
    Error,
    /// Uploaded.
    Done,
    /// The input of an item whose post_action is `keep`.
    Kept,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Input,
        State::Converting,
        State::Queued,
        State::Processing,
        State::Error,
        State::Done,
        State::Kept,
    ];

    pub fn ext(self) -> &'static str {
        match self {
            State::Input => "input",
            State::Converting => "converting",
            State::Queued => "queued",
            State::Processing => "processing",
            State::Error => "error",
            State::Done => "done",
            State::Kept => "kept",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ext())
    }
}

impl FromStr for State {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        State::ALL.into_iter().find(|st| st.ext() == s).ok_or(())
    }
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
            id: Ulid::new(),
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
        format!("{}.{}", self.stem(), self.state.ext())
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
        let state = state.parse().ok()?;
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
