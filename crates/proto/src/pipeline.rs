//! Wire types of the drop-folder pipeline: the item states and the `queue.*` commands.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where an item is in its life. The first seven are work-folder states (the last part of the
/// item's file name); `dead` and `failed` are the dead-letter and error folders.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
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
    /// Refused by the server for good: in the dead-letter folder, with its reason.
    Dead,
    /// Its conversion failed: the input is in the error folder, with its reason.
    Failed,
}

impl ItemState {
    /// Every state, in life order.
    pub const ALL: [ItemState; 9] = [
        ItemState::Input,
        ItemState::Converting,
        ItemState::Queued,
        ItemState::Processing,
        ItemState::Error,
        ItemState::Done,
        ItemState::Kept,
        ItemState::Dead,
        ItemState::Failed,
    ];

    /// The states an item file in the work folder can have (its name's last part).
    pub const WORK: [ItemState; 7] = [
        ItemState::Input,
        ItemState::Converting,
        ItemState::Queued,
        ItemState::Processing,
        ItemState::Error,
        ItemState::Done,
        ItemState::Kept,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Input => "input",
            ItemState::Converting => "converting",
            ItemState::Queued => "queued",
            ItemState::Processing => "processing",
            ItemState::Error => "error",
            ItemState::Done => "done",
            ItemState::Kept => "kept",
            ItemState::Dead => "dead",
            ItemState::Failed => "failed",
        }
    }

    /// Whether an item file in the work folder can be in this state.
    pub fn in_work_folder(self) -> bool {
        !matches!(self, ItemState::Dead | ItemState::Failed)
    }

    /// Whether `queue.purge` may delete items in this state (nothing still owed to the server).
    pub fn purgeable(self) -> bool {
        matches!(
            self,
            ItemState::Done | ItemState::Kept | ItemState::Dead | ItemState::Failed
        )
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown item state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown item state {0:?}; states: input, converting, queued, processing, error, done, kept, dead, failed"
)]
pub struct UnknownState(pub String);

impl FromStr for ItemState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        ItemState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// Arguments of `queue.ls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueLsArgs {
    /// Only this pipeline (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Only items in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ItemState>,
    /// At most this many rows (default 1000); `total` still counts them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One row of `queue.ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueItem {
    pub pipeline: String,
    /// The item's ULID, also its `Idempotency-Key`; none for the input of a failed conversion.
    pub id: Option<String>,
    /// The input's file name, as dropped.
    pub file: String,
    pub state: ItemState,
    /// Failed upload attempts so far (not for failed conversions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Seconds since the input was claimed (not for failed conversions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u64>,
    /// Where the item's file is.
    pub path: PathBuf,
    /// Why it is dead or failed, from its `.reason` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Reply of `queue.ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueList {
    /// Rows that matched, before `limit`.
    pub total: usize,
    /// Sorted by id (failed conversions, without one, first).
    pub items: Vec<QueueItem>,
}

/// Arguments of `queue.stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueStatsArgs {
    /// Only this pipeline (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

/// Items per state, now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ItemCounts {
    pub dead: u64,
    pub done: u64,
    pub error: u64,
    pub failed: u64,
    pub input: u64,
    pub kept: u64,
    pub processing: u64,
    pub queued: u64,
}

impl ItemCounts {
    /// Items not uploaded yet: input, queued, processing and waiting to retry (error).
    pub fn pending(&self) -> u64 {
        self.input + self.queued + self.processing + self.error
    }

    /// The counter of `state`, if it is counted (`converting` is not).
    pub fn get_mut(&mut self, state: ItemState) -> Option<&mut u64> {
        Some(match state {
            ItemState::Dead => &mut self.dead,
            ItemState::Done => &mut self.done,
            ItemState::Error => &mut self.error,
            ItemState::Failed => &mut self.failed,
            ItemState::Input => &mut self.input,
            ItemState::Kept => &mut self.kept,
            ItemState::Processing => &mut self.processing,
            ItemState::Queued => &mut self.queued,
            ItemState::Converting => return None,
        })
    }

    /// Every counted state with its count, in name order.
    pub fn pairs(&self) -> [(ItemState, u64); 8] {
        [
            (ItemState::Dead, self.dead),
            (ItemState::Done, self.done),
            (ItemState::Error, self.error),
            (ItemState::Failed, self.failed),
            (ItemState::Input, self.input),
            (ItemState::Kept, self.kept),
            (ItemState::Processing, self.processing),
            (ItemState::Queued, self.queued),
        ]
    }
}

/// A pipeline's counters since the daemon (or the pipeline) started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SinceStart {
    pub claimed: u64,
    pub converted: u64,
    pub convert_failed: u64,
    pub convert_ms_avg: f64,
    pub uploaded: u64,
    pub upload_ms_avg: f64,
    pub upload_ms_max: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub rescans: u64,
}

/// One pipeline in `queue.stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineStats {
    pub pipeline: String,
    pub work_dir: PathBuf,
    pub counts: ItemCounts,
    /// Age of the oldest item not uploaded yet (input, queued, processing or error).
    pub oldest_pending_age_s: Option<u64>,
    /// Why intake is paused (high-water mark or free-disk floor), if it is.
    pub paused: Option<String>,
    /// Whether the last upload attempt reached the server (uploaded, or refused for good):
    /// `false` while uploads fail in transit or with retryable statuses, unset before the first.
    #[serde(default)]
    pub uploads_reach_server: Option<bool>,
    pub since_start: SinceStart,
}

/// Reply of `queue.stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueStats {
    pub pipelines: Vec<PipelineStats>,
}

/// Arguments of `queue.retry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueRetryArgs {
    /// Only this pipeline (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Only these dead letters, by id (default: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// Reply of `queue.retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Requeued {
    /// Dead letters put back in the queue.
    pub requeued: u64,
}

/// Arguments of `queue.purge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePurgeArgs {
    /// Only this pipeline (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Which items: `done`, `kept`, `dead` or `failed` (queued ones are still owed to the server).
    pub state: ItemState,
}

/// Reply of `queue.purge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Purged {
    pub purged: u64,
}

crate::commands! { COMMANDS:
    /// Lists items: in the work folder (input, queued, processing, error, done, kept), dead letters and failed conversions.
    QueueLs "queue.ls" (Read) QueueLsArgs => QueueList;
    /// Per pipeline: items per state, the oldest pending item, intake pause, counters since start.
    QueueStatsCmd "queue.stats" (Read) QueueStatsArgs => QueueStats;
    /// Retries waiting items now and puts dead letters back in the queue (same id, attempts 0).
    QueueRetry "queue.retry" (Action) QueueRetryArgs => Requeued;
    /// Deletes done, kept, dead or failed items.
    QueuePurge "queue.purge" (Action) QueuePurgeArgs => Purged;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in ItemState::ALL {
            assert_eq!(s.as_str().parse::<ItemState>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(s.as_str())
            );
        }
        assert!("bogus".parse::<ItemState>().is_err());
    }
}
