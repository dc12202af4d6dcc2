//! `majordomo queue ls|stats|retry|purge`: the pipelines' upload queues, through the typed
//! `queue.*` commands of the contract (`majordomo_proto::pipeline`).

use clap::Subcommand;
use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_proto::pipeline::{
    ItemState, QueueItem, QueueList, QueueLs, QueueLsArgs, QueuePurge, QueuePurgeArgs, QueueRetry,
    QueueRetryArgs, QueueStats, QueueStatsArgs, QueueStatsCmd,
};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// List items: queued, processing, error (waiting to retry), done, dead (refused by the
    /// server) and failed (conversion failed).
    Ls {
        /// Only this pipeline.
        #[arg(long, short)]
        pipeline: Option<String>,
        /// Only items in this state: input, converting, queued, processing, error, done, kept,
        /// dead or failed.
        #[arg(long, short)]
        state: Option<ItemState>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Counts per state, oldest pending item, latencies, retries, dead letters, rescans.
    Stats {
        #[arg(long, short)]
        pipeline: Option<String>,
    },
    /// Retry waiting items now and put dead letters back in the queue (same id).
    Retry {
        #[arg(long, short)]
        pipeline: Option<String>,
        /// Only these item ids (default: all dead letters).
        ids: Vec<String>,
    },
    /// Delete done, kept, dead or failed items.
    Purge {
        #[arg(long, short)]
        pipeline: Option<String>,
        /// done, kept, dead or failed.
        #[arg(long, short)]
        state: ItemState,
    },
}

/// Runs one `queue` verb against the daemon and prints the answer (`--json`: the reply as the
/// daemon sent it). Errors go back to the CLI's common error printing.
pub async fn run(cmd: &QueueCmd, opts: &ConnectOptions, as_json: bool) -> Result<u8, ClientError> {
    let mut client = Client::connect(opts).await?;
    match cmd {
        QueueCmd::Ls {
            pipeline,
            state,
            limit,
        } => {
            let args = QueueLsArgs {
                pipeline: pipeline.clone(),
                state: *state,
                limit: Some(*limit),
            };
            let list = client.call_cmd::<QueueLs>(&args).await?;
            print(as_json, &list, print_ls);
        }
        QueueCmd::Stats { pipeline } => {
            let args = QueueStatsArgs {
                pipeline: pipeline.clone(),
            };
            let stats = client.call_cmd::<QueueStatsCmd>(&args).await?;
            print(as_json, &stats, print_stats);
        }
        QueueCmd::Retry { pipeline, ids } => {
            let args = QueueRetryArgs {
                pipeline: pipeline.clone(),
                ids: ids.clone(),
            };
            let r = client.call_cmd::<QueueRetry>(&args).await?;
            print(as_json, &r, |r| outln!("requeued {}", r.requeued));
        }
        QueueCmd::Purge { pipeline, state } => {
            let args = QueuePurgeArgs {
                pipeline: pipeline.clone(),
                state: *state,
            };
            let r = client.call_cmd::<QueuePurge>(&args).await?;
            print(as_json, &r, |r| outln!("purged {}", r.purged));
        }
    }
    Ok(exit::OK)
}

/// Prints `reply` as one line of JSON, or for people with `human`.
fn print<T: Serialize>(as_json: bool, reply: &T, human: impl FnOnce(&T)) {
    if as_json {
        match serde_json::to_string(reply) {
            Ok(line) => outln!("{line}"),
            Err(e) => eprintln!("majordomo: the reply cannot be shown as JSON: {e}"),
        }
    } else {
        human(reply);
    }
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_ls(list: &QueueList) {
    outln!(
        "{:<10} {:<26} {:<10} {:>4} {:>8}  FILE",
        "PIPELINE",
        "ID",
        "STATE",
        "TRY",
        "AGE"
    );
    for QueueItem {
        pipeline,
        id,
        file,
        state,
        attempts,
        age_s,
        reason,
        ..
    } in &list.items
    {
        let reason = reason
            .as_deref()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default();
        outln!(
            "{:<10} {:<26} {:<10} {:>4} {:>7}s  {file}{reason}",
            pipeline,
            or_dash(id.as_deref()),
            state.as_str(),
            or_dash(*attempts),
            or_dash(*age_s),
        );
    }
    if list.total > list.items.len() {
        outln!("... {} more (use --limit)", list.total - list.items.len());
    }
}

fn print_stats(stats: &QueueStats) {
    for p in &stats.pipelines {
        outln!("pipeline {}  ({})", p.pipeline, p.work_dir.display());
        if let Some(reason) = &p.paused {
            outln!("  PAUSED: {reason}");
        }
        let parts: Vec<String> = p
            .counts
            .pairs()
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        outln!("  now          {}", parts.join(" · "));
        outln!(
            "  oldest pending  {}",
            p.oldest_pending_age_s
                .map(|a| format!("{a} s"))
                .unwrap_or_else(|| "-".into())
        );
        let m = &p.since_start;
        outln!(
            "  since start  claimed {} · converted {} (avg {:.1} ms) · conversion failures {}",
            m.claimed,
            m.converted,
            m.convert_ms_avg,
            m.convert_failed
        );
        outln!(
            "               uploaded {} (avg {:.1} ms, max {} ms) · retries {} · dead letters {} · rescans {}",
            m.uploaded,
            m.upload_ms_avg,
            m.upload_ms_max,
            m.retries,
            m.dead_letters,
            m.rescans
        );
    }
}
