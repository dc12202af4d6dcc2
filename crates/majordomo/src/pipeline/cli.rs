//! `majordomo queue ls|stats|retry|purge`: the socket commands (`queue.*`) and their CLI verbs.

use clap::Subcommand;
use majordomo_client::{Client, ClientError};
use serde_json::{Value, json};

use super::Pipes;
use crate::lifecycle::Ctx;

/// Registers `queue.ls`, `queue.stats`, `queue.retry` and `queue.purge`.
pub(super) fn register(ctx: &Ctx, pipes: Pipes) {
    for cmd in ["queue.ls", "queue.stats", "queue.retry", "queue.purge"] {
        let pipes = pipes.clone();
        ctx.command(cmd, move |args| {
            let pipes = pipes.clone();
            async move {
                tokio::task::spawn_blocking(move || super::handle(&pipes, cmd, args))
                    .await
                    .unwrap_or_else(|e| {
                        Err(majordomo_proto::ErrorBody::new(
                            majordomo_proto::ErrorCode::Internal,
                            format!("{cmd} failed: {e}"),
                        ))
                    })
            }
        });
    }
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// List items: queued, processing, error (waiting to retry), done, dead (refused by the
    /// server) and failed (conversion failed).
    Ls {
        /// Only this pipeline.
        #[arg(long, short)]
        pipeline: Option<String>,
        /// Only items in this state.
        #[arg(long, short)]
        state: Option<String>,
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
        state: String,
    },
}

/// Runs a `queue` verb against the daemon and prints the answer.
pub async fn run(client: &mut Client, cmd: &QueueCmd, as_json: bool) -> Result<(), ClientError> {
    let (name, args) = match cmd {
        QueueCmd::Ls {
            pipeline,
            state,
            limit,
        } => (
            "queue.ls",
            json!({"pipeline": pipeline, "state": state, "limit": limit}),
        ),
        QueueCmd::Stats { pipeline } => ("queue.stats", json!({"pipeline": pipeline})),
        QueueCmd::Retry { pipeline, ids } => {
            ("queue.retry", json!({"pipeline": pipeline, "ids": ids}))
        }
        QueueCmd::Purge { pipeline, state } => {
            ("queue.purge", json!({"pipeline": pipeline, "state": state}))
        }
    };
    let v = client.call_named(name, args).await?;
    if as_json {
        println!("{v}");
        return Ok(());
    }
    match cmd {
        QueueCmd::Ls { .. } => print_ls(&v),
        QueueCmd::Stats { .. } => print_stats(&v),
        QueueCmd::Retry { .. } => println!("requeued {}", v["requeued"]),
        QueueCmd::Purge { .. } => println!("purged {}", v["purged"]),
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_ls(v: &Value) {
    let items = v["items"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<10} {:<26} {:<10} {:>4} {:>8}  FILE",
        "PIPELINE", "ID", "STATE", "TRY", "AGE"
    );
    for it in &items {
        let reason = it["reason"]
            .as_str()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default();
        println!(
            "{:<10} {:<26} {:<10} {:>4} {:>7}s  {}{reason}",
            s(&it["pipeline"]),
            s(&it["id"]),
            s(&it["state"]),
            s(&it["attempts"]),
            s(&it["age_s"]),
            s(&it["file"])
        );
    }
    let total = v["total"].as_u64().unwrap_or(0);
    if total as usize > items.len() {
        println!("... {} more (use --limit)", total as usize - items.len());
    }
}

fn print_stats(v: &Value) {
    for p in v["pipelines"].as_array().cloned().unwrap_or_default() {
        println!("pipeline {}  ({})", s(&p["pipeline"]), s(&p["work_dir"]));
        if let Some(reason) = p["paused"].as_str() {
            println!("  PAUSED: {reason}");
        }
        if let Some(c) = p["counts"].as_object() {
            let parts: Vec<String> = c.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("  now          {}", parts.join(" · "));
        }
        println!(
            "  oldest pending  {}",
            p["oldest_pending_age_s"]
                .as_u64()
                .map(|a| format!("{a} s"))
                .unwrap_or_else(|| "-".into())
        );
        let m = &p["since_start"];
        println!(
            "  since start  claimed {} · converted {} (avg {:.1} ms) · conversion failures {}",
            m["claimed"],
            m["converted"],
            m["convert_ms_avg"].as_f64().unwrap_or(0.0),
            m["convert_failed"]
        );
        println!(
            "               uploaded {} (avg {:.1} ms, max {} ms) · retries {} · dead letters {} · rescans {}",
            m["uploaded"],
            m["upload_ms_avg"].as_f64().unwrap_or(0.0),
            m["upload_ms_max"],
            m["retries"],
            m["dead_letters"],
            m["rescans"]
        );
    }
}
