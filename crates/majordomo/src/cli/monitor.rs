//! CLI verbs of the health monitor: `metrics`, `alerts`, `report`, `notify log|test`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_monitor::metrics::{lookup, split_key};
use majordomo_proto::monitor::{
    Alert, AlertsCmd, Delivery, MetricsCmd, MetricsReply, NotifyLogArgs, NotifyLogCmd,
    NotifyTestArgs, NotifyTestCmd, Outcome, ReportCmd,
};
use majordomo_proto::{Cmd, ErrorBody, ErrorCode, NoArgs};
use serde::Serialize;

/// The monitor's verbs, flattened into the top-level commands (`#[command(flatten)]`).
#[derive(Debug, Subcommand)]
pub enum MonitorCmd {
    /// Show the health monitor's metrics: current values, or their history with --since.
    Metrics(MetricsArgs),
    /// List the active and recently ended alerts.
    Alerts,
    /// Write a JSON health report: current values, min/avg/max over the history, alerts, programs.
    Report(ReportArgs),
    /// Notifications: the delivery log, test sends.
    #[command(subcommand)]
    Notify(NotifyCmd),
}

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
    /// Raise a notification of your own through the notifiers (quiet hours, dedup, rate limit
    /// and the delivery record apply).
    Send(super::scheduler::NotifySendArgs),
}

/// Runs one monitor verb against the instance at `conn`. Errors go back to the CLI's common
/// error printing (exit 1, or 64 for an invalid config).
pub async fn run(cmd: &MonitorCmd, conn: &ConnectOptions, json: bool) -> Result<u8, ClientError> {
    if let MonitorCmd::Notify(NotifyCmd::Send(a)) = cmd {
        return super::scheduler::notify_send(a, conn, json).await;
    }
    let mut client = Client::connect(conn).await?;
    match cmd {
        MonitorCmd::Metrics(a) => metrics(&mut client, a, json).await,
        MonitorCmd::Alerts => alerts(&mut client, json).await,
        MonitorCmd::Report(a) => report(&mut client, a).await,
        MonitorCmd::Notify(c) => notify(&mut client, c, json).await,
    }
}

/// Calls a monitor command, turning "unknown command" into what is actually off.
pub(super) async fn call<K: Cmd>(
    client: &mut Client,
    args: &K::Args,
) -> Result<K::Reply, ClientError> {
    client.call_cmd::<K>(args).await.map_err(|e| match e {
        ClientError::Remote(body) if body.code == ErrorCode::UnknownCommand => {
            let msg = if K::NAME.starts_with("notify.") {
                "this instance has no [[notifier]]; add one to its config (see `majordomo config default`) and reload"
            } else {
                "the health monitor is off in this instance ([monitor] enabled = false)"
            };
            ClientError::Remote(ErrorBody::new(ErrorCode::UnknownCommand, msg))
        }
        other => other,
    })
}

/// Prints a reply as one JSON line.
fn print_json<T: Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => outln!("{s}"),
        Err(e) => eprintln!("majordomo: the reply could not be printed as JSON: {e}"),
    }
}

fn human_value(key: &str, v: f64) -> String {
    let name = split_key(key).0;
    let unit = lookup(name).map(|d| d.unit).unwrap_or("");
    match unit {
        "B" => bytesize::ByteSize(v.max(0.0) as u64).to_string(),
        "B/s" => format!("{}/s", bytesize::ByteSize(v.max(0.0) as u64)),
        "%" => format!("{v:.1} %"),
        "s" => humantime::format_duration(std::time::Duration::from_secs(v.max(0.0) as u64))
            .to_string(),
        _ => format!("{v}"),
    }
}

async fn metrics(client: &mut Client, a: &MetricsArgs, json_out: bool) -> Result<u8, ClientError> {
    let args = majordomo_proto::monitor::MetricsArgs {
        name: a.name.clone(),
        since: a.since.clone(),
    };
    let reply = call::<MetricsCmd>(client, &args).await?;
    if json_out {
        print_json(&reply);
        return Ok(exit::OK);
    }
    match reply {
        MetricsReply::History(h) => {
            if h.series.is_empty() {
                outln!(
                    "no history for {:?} in that window",
                    a.name.as_deref().unwrap_or("any metric")
                );
            }
            outln!(
                "{:<40} {:>12} {:>12} {:>12} {:>12} {:>7}",
                "SERIES",
                "MIN",
                "AVG",
                "MAX",
                "LAST",
                "POINTS"
            );
            for (k, s) in &h.series {
                let Some(st) = s.stats else {
                    outln!(
                        "{k:<40} {:>12} {:>12} {:>12} {:>12} {:>7}",
                        "-",
                        "-",
                        "-",
                        "-",
                        0
                    );
                    continue;
                };
                let f = |v: f64| human_value(k, v);
                outln!(
                    "{k:<40} {:>12} {:>12} {:>12} {:>12} {:>7}",
                    f(st.min),
                    f(st.avg),
                    f(st.max),
                    f(st.last),
                    st.count
                );
            }
        }
        MetricsReply::Now(now) => {
            for (k, x) in &now.values {
                outln!("{k:<44} {}", human_value(k, *x));
            }
            if a.name.is_none() {
                for (title, list) in [
                    ("top by CPU", &now.top_cpu),
                    ("top by memory", &now.top_mem),
                ] {
                    if list.is_empty() {
                        continue;
                    }
                    outln!("\n{title}:");
                    for p in list {
                        outln!(
                            "  {:>7}  {:<20} {:>6.1} %  {}",
                            p.pid,
                            p.name,
                            p.cpu_pct,
                            bytesize::ByteSize(p.rss_bytes)
                        );
                    }
                }
            }
        }
    }
    Ok(exit::OK)
}

fn alert_line(a: &Alert) -> String {
    format!(
        "{:<9} {:<9} {:<32} since {}  {}",
        a.state.as_str(),
        a.severity.as_str(),
        a.id,
        a.since,
        a.summary
    )
}

async fn alerts(client: &mut Client, json_out: bool) -> Result<u8, ClientError> {
    let v = call::<AlertsCmd>(client, &NoArgs {}).await?;
    if json_out {
        print_json(&v);
        return Ok(exit::OK);
    }
    if v.active.is_empty() {
        outln!("no active alerts");
    } else {
        outln!("active:");
        for a in &v.active {
            outln!("  {}", alert_line(a));
        }
    }
    if !v.recent.is_empty() {
        outln!("recently ended:");
        for a in v.recent.iter().take(10) {
            outln!("  {}", alert_line(a));
        }
    }
    Ok(exit::OK)
}

async fn report(client: &mut Client, a: &ReportArgs) -> Result<u8, ClientError> {
    let v = call::<ReportCmd>(client, &NoArgs {}).await?;
    let text = serde_json::to_string_pretty(&v)
        .map_err(|e| ClientError::Protocol(format!("the report could not be printed: {e}")))?;
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
        None => outln!("{text}"),
    }
    Ok(exit::OK)
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Failed => "failed",
        Outcome::Suppressed => "suppressed",
    }
}

fn delivery_line(d: &Delivery) -> String {
    format!(
        "{}  {:<12} {:<10} {:<28} {:<9} attempts {}{}",
        d.at,
        d.notifier,
        outcome_str(d.outcome),
        d.alert,
        d.state.as_str(),
        d.attempts.len(),
        d.reason
            .as_deref()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default()
    )
}

async fn notify(client: &mut Client, cmd: &NotifyCmd, json_out: bool) -> Result<u8, ClientError> {
    match cmd {
        NotifyCmd::Send(_) => Ok(exit::USAGE),
        NotifyCmd::Log { notifier, limit } => {
            let args = NotifyLogArgs {
                notifier: notifier.clone(),
                limit: Some(*limit),
            };
            let v = call::<NotifyLogCmd>(client, &args).await?;
            if json_out {
                print_json(&v);
                return Ok(exit::OK);
            }
            outln!(
                "{:<16} {:>9} {:>7} {:>10} {:>8} {:>9}",
                "NOTIFIER",
                "DELIVERED",
                "FAILED",
                "SUPPRESSED",
                "ATTEMPTS",
                "RATE"
            );
            for (k, c) in &v.counts {
                let rate = c
                    .delivery_rate_pct
                    .map(|r| format!("{r:.1} %"))
                    .unwrap_or_else(|| "-".into());
                outln!(
                    "{k:<16} {:>9} {:>7} {:>10} {:>8} {:>9}",
                    c.delivered,
                    c.failed,
                    c.suppressed,
                    c.attempts,
                    rate
                );
            }
            outln!();
            for d in &v.deliveries {
                outln!("{}", delivery_line(d));
            }
            Ok(exit::OK)
        }
        NotifyCmd::Test { name } => {
            let args = NotifyTestArgs { name: name.clone() };
            let d = client.call_cmd::<NotifyTestCmd>(&args).await?;
            let ok = d.outcome == Outcome::Delivered;
            if json_out {
                print_json(&d);
            } else if ok {
                outln!(
                    "test notification delivered through {name:?} ({} attempt(s))",
                    d.attempts.len()
                );
            } else {
                eprintln!(
                    "test notification through {name:?} failed after {} attempt(s): {}",
                    d.attempts.len(),
                    d.reason.as_deref().unwrap_or("unknown error")
                );
            }
            Ok(if ok { exit::OK } else { exit::FAILURE })
        }
    }
}
