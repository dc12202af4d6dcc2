//! CLI verbs of the health monitor: `metrics`, `alerts`, `report`, `notify log|test`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use majordomo_client::{Client, ClientError};
use majordomo_proto::{ErrorBody, ErrorCode};
use serde_json::{Value, json};

use crate::daemon::exit;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// A metric name or prefix, e.g. `disk.used_pct` or `cpu.` (default: all).
    pub name: Option<String>,
    /// Show the history over this window (e.g. `1h`, `30m`, `7d`) instead of the current values.
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the JSON report to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCmd {
    /// Every notification's attempts and outcome, newest first, and the totals per notifier.
    Log {
        /// Only this notifier.
        #[arg(long)]
        notifier: Option<String>,
        /// How many deliveries to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Sends a test notification through one notifier (bypassing routing, quiet hours and
    /// rate limits) and prints the outcome.
    Test {
        /// The notifier's name.
        name: String,
    },
}

/// Calls a monitor command, turning "unknown command" into what is actually off.
async fn call(client: &mut Client, cmd: &str, args: Value) -> Result<Value, ClientError> {
    client.call_named(cmd, args).await.map_err(|e| match e {
        ClientError::Remote(body) if body.code == ErrorCode::UnknownCommand => {
            let msg = if cmd.starts_with("notify.") {
                "this instance has no [[notifier]]; add one to its config (see `majordomo config default`) and reload"
            } else {
                "the health monitor is off in this instance ([monitor] enabled = false)"
            };
            ClientError::Remote(ErrorBody::new(ErrorCode::UnknownCommand, msg))
        }
        other => other,
    })
}

fn human_value(key: &str, v: f64) -> String {
    let name = super::metrics::split_key(key).0;
    let unit = super::metrics::lookup(name).map(|d| d.unit).unwrap_or("");
    match unit {
        "B" => bytesize::ByteSize(v.max(0.0) as u64).to_string(),
        "B/s" => format!("{}/s", bytesize::ByteSize(v.max(0.0) as u64)),
        "%" => format!("{v:.1} %"),
        "s" => humantime::format_duration(std::time::Duration::from_secs(v.max(0.0) as u64))
            .to_string(),
        _ => format!("{v}"),
    }
}

pub async fn metrics(
    client: &mut Client,
    a: &MetricsArgs,
    json_out: bool,
) -> Result<u8, ClientError> {
    let v = call(client, "metrics", json!({"name": a.name, "since": a.since})).await?;
    if json_out {
        println!("{v}");
        return Ok(exit::OK);
    }
    if a.since.is_some() {
        let series = v["series"].as_object().cloned().unwrap_or_default();
        if series.is_empty() {
            println!(
                "no history for {:?} in that window",
                a.name.as_deref().unwrap_or("any metric")
            );
        }
        println!(
            "{:<40} {:>12} {:>12} {:>12} {:>12} {:>7}",
            "SERIES", "MIN", "AVG", "MAX", "LAST", "POINTS"
        );
        for (k, s) in series {
            let st = &s["stats"];
            let f = |f: &str| human_value(&k, st[f].as_f64().unwrap_or(0.0));
            println!(
                "{k:<40} {:>12} {:>12} {:>12} {:>12} {:>7}",
                f("min"),
                f("avg"),
                f("max"),
                f("last"),
                st["count"]
            );
        }
        return Ok(exit::OK);
    }
    if let Some(values) = v["values"].as_object() {
        for (k, x) in values {
            println!("{k:<44} {}", human_value(k, x.as_f64().unwrap_or(0.0)));
        }
    }
    if a.name.is_none() {
        for (title, list) in [
            ("top by CPU", &v["top_cpu"]),
            ("top by memory", &v["top_mem"]),
        ] {
            if let Some(list) = list.as_array().filter(|l| !l.is_empty()) {
                println!("\n{title}:");
                for p in list {
                    println!(
                        "  {:>7}  {:<20} {:>6.1} %  {}",
                        p["pid"],
                        p["name"].as_str().unwrap_or(""),
                        p["cpu_pct"].as_f64().unwrap_or(0.0),
                        bytesize::ByteSize(p["rss_bytes"].as_u64().unwrap_or(0))
                    );
                }
            }
        }
    }
    Ok(exit::OK)
}

fn alert_line(a: &Value) -> String {
    format!(
        "{:<9} {:<9} {:<32} since {}  {}",
        a["state"].as_str().unwrap_or(""),
        a["severity"].as_str().unwrap_or(""),
        a["id"].as_str().unwrap_or(""),
        a["since"].as_str().unwrap_or(""),
        a["summary"].as_str().unwrap_or("")
    )
}

pub async fn alerts(client: &mut Client, json_out: bool) -> Result<u8, ClientError> {
    let v = call(client, "alerts", json!({})).await?;
    if json_out {
        println!("{v}");
        return Ok(exit::OK);
    }
    let active = v["active"].as_array().cloned().unwrap_or_default();
    if active.is_empty() {
        println!("no active alerts");
    } else {
        println!("active:");
        for a in &active {
            println!("  {}", alert_line(a));
        }
    }
    let recent = v["recent"].as_array().cloned().unwrap_or_default();
    if !recent.is_empty() {
        println!("recently ended:");
        for a in recent.iter().take(10) {
            println!("  {}", alert_line(a));
        }
    }
    Ok(exit::OK)
}

pub async fn report(client: &mut Client, a: &ReportArgs) -> Result<u8, ClientError> {
    let v = call(client, "report", json!({})).await?;
    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
    match &a.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, format!("{text}\n")) {
                eprintln!(
                    "majordomo: cannot write the report to {}: {e}",
                    path.display()
                );
                return Ok(exit::FAILURE);
            }
            eprintln!("report written to {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(exit::OK)
}

pub async fn notify(
    client: &mut Client,
    cmd: &NotifyCmd,
    json_out: bool,
) -> Result<u8, ClientError> {
    match cmd {
        NotifyCmd::Log { notifier, limit } => {
            let v = call(
                client,
                "notify.log",
                json!({"notifier": notifier, "limit": limit}),
            )
            .await?;
            if json_out {
                println!("{v}");
                return Ok(exit::OK);
            }
            if let Some(counts) = v["counts"].as_object() {
                println!(
                    "{:<16} {:>9} {:>7} {:>10} {:>8} {:>9}",
                    "NOTIFIER", "DELIVERED", "FAILED", "SUPPRESSED", "ATTEMPTS", "RATE"
                );
                for (k, c) in counts {
                    let rate = c["delivery_rate_pct"]
                        .as_f64()
                        .map(|r| format!("{r:.1} %"))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{k:<16} {:>9} {:>7} {:>10} {:>8} {:>9}",
                        c["delivered"], c["failed"], c["suppressed"], c["attempts"], rate
                    );
                }
            }
            println!();
            for d in v["deliveries"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}  {:<12} {:<10} {:<28} {:<9} attempts {}{}",
                    d["at"].as_str().unwrap_or(""),
                    d["notifier"].as_str().unwrap_or(""),
                    d["outcome"].as_str().unwrap_or(""),
                    d["alert"].as_str().unwrap_or(""),
                    d["state"].as_str().unwrap_or(""),
                    d["attempts"].as_array().map(|a| a.len()).unwrap_or(0),
                    d["reason"]
                        .as_str()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default()
                );
            }
            Ok(exit::OK)
        }
        NotifyCmd::Test { name } => {
            let v = client
                .call_named("notify.test", json!({"name": name}))
                .await?;
            let ok = v["outcome"] == "delivered";
            if json_out {
                println!("{v}");
            } else if ok {
                println!(
                    "test notification delivered through {name:?} ({} attempt(s))",
                    v["attempts"].as_array().map(|a| a.len()).unwrap_or(0)
                );
            } else {
                eprintln!(
                    "test notification through {name:?} failed after {} attempt(s): {}",
                    v["attempts"].as_array().map(|a| a.len()).unwrap_or(0),
                    v["reason"].as_str().unwrap_or("unknown error")
                );
            }
            Ok(if ok { exit::OK } else { exit::FAILURE })
        }
    }
}
