//! `majordomo bus pub|sub|send|request|ls`: the bus from the command line.

use std::time::Duration;

use clap::Subcommand;
use futures_util::StreamExt;
use majordomo_client::bus::{Bus, BusOptions};
use majordomo_client::{ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_proto::Cmd;
use majordomo_proto::bus::{BusList, BusLs};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum BusCmd {
    /// Publish JSON data on a topic.
    Pub {
        topic: String,
        /// The data, as JSON (`'{"sku":"x"}'`, `42`, `'"text"'`).
        #[arg(default_value = "null", value_name = "JSON")]
        data: String,
    },
    /// Print every message on topics matching PATTERN, one JSON line each (`*` matches one
    /// token, a final `>` the rest).
    Sub {
        pattern: String,
        /// Join this queue group: each message goes to one member of the group.
        #[arg(long)]
        queue: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Send an event to an endpoint.
    Send {
        endpoint: String,
        event: String,
        #[arg(default_value = "null", value_name = "JSON")]
        data: String,
        /// Register as this endpoint first, so the receiver sees who sent it.
        #[arg(long = "as", value_name = "ID")]
        from: Option<String>,
        /// Wait up to this long for the endpoint to register (e.g. `5s`).
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Send a request and print the reply; exits 1 when nobody answers or on timeout.
    Request {
        topic: String,
        #[arg(default_value = "null", value_name = "JSON")]
        data: String,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Endpoints, connections (subscriptions, queue depth, dropped) and counters.
    Ls,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 500ms, 2s, 1m"))
}

fn parse_json(what: &str, s: &str) -> Result<Value, ClientError> {
    serde_json::from_str(s).map_err(|e| {
        ClientError::Protocol(format!(
            "{what} must be JSON ({e}); quote strings: '\"text\"'"
        ))
    })
}

/// Runs one `bus` verb and returns its exit code; errors go back to the CLI's common error
/// printing (exit 1).
pub async fn run(cmd: &BusCmd, opts: &ConnectOptions, as_json: bool) -> Result<u8, ClientError> {
    let bus = Bus::connect(opts, BusOptions::default()).await?;
    match cmd {
        BusCmd::Pub { topic, data } => {
            let data = parse_json("the data", data)?;
            let n = bus.publish_acked(topic, &data).await?;
            if as_json {
                outln!("{}", json!({"ok": true, "delivered": n}));
            } else {
                outln!(
                    "published on {topic} to {n} subscriber{}",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
        BusCmd::Sub {
            pattern,
            queue,
            count,
        } => {
            let mut sub = match queue {
                Some(q) => bus.subscribe_queue(pattern, q).await?,
                None => bus.subscribe(pattern).await?,
            };
            let mut seen = 0u64;
            if count == &Some(0) {
                return Ok(exit::OK);
            }
            while let Some(m) = sub.next().await {
                let data: Value = m.json().unwrap_or(Value::Null);
                outln!(
                    "{}",
                    json!({"topic": m.topic, "data": data, "reply_to": m.reply_to})
                );
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            if count.is_some_and(|c| seen < c) {
                eprintln!("majordomo: the daemon closed the connection");
                return Ok(exit::FAILURE);
            }
        }
        BusCmd::Send {
            endpoint,
            event,
            data,
            from,
            wait,
        } => {
            let data = parse_json("the data", data)?;
            if let Some(id) = from {
                bus.register(id).await?;
            }
            match wait {
                Some(w) => bus.send_wait(endpoint, event, &data, *w).await?,
                None => bus.send(endpoint, event, &data).await?,
            }
            if as_json {
                outln!("{}", json!({"ok": true}));
            } else {
                outln!("sent {event} to {endpoint}");
            }
        }
        BusCmd::Request {
            topic,
            data,
            timeout,
        } => {
            let data = parse_json("the data", data)?;
            let v = bus.request(topic, &data, *timeout).await?;
            if as_json {
                outln!("{v}");
            } else {
                outln!("{v:#}");
            }
        }
        BusCmd::Ls => {
            let v = bus.call(BusLs::NAME, Value::Null).await?;
            if as_json {
                outln!("{v}");
            } else {
                let list: BusList = serde_json::from_value(v).map_err(|e| {
                    ClientError::Protocol(format!("unexpected reply to {:?}: {e}", BusLs::NAME))
                })?;
                print_ls(&list);
            }
        }
    }
    Ok(exit::OK)
}

fn print_ls(v: &BusList) {
    let opt = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "null".into());
    outln!("endpoints ({})", v.endpoints.len());
    for e in &v.endpoints {
        outln!(
            "  {:<24} conn {:<6} pid {}",
            e.id,
            e.conn,
            opt(e.pid.map(i64::from))
        );
    }
    outln!("connections ({})", v.connections.len());
    outln!(
        "  {:<6} {:<20} {:>8} {:>10} {:>10} {:>8}  subscriptions",
        "conn",
        "endpoint",
        "pid",
        "queued",
        "sent",
        "dropped"
    );
    for c in &v.connections {
        let subs: Vec<String> = c
            .subscriptions
            .iter()
            .map(|s| match &s.queue {
                Some(q) => format!("{} [{q}]", s.pattern),
                None => s.pattern.clone(),
            })
            .collect();
        outln!(
            "  {:<6} {:<20} {:>8} {:>10} {:>10} {:>8}  {}",
            c.conn.to_string(),
            c.endpoint.as_deref().unwrap_or("-"),
            opt(c.pid.map(i64::from)),
            c.queued_msgs.to_string(),
            c.sent.to_string(),
            c.dropped.to_string(),
            subs.join(", ")
        );
    }
    outln!("counters");
    // By name, as the daemon sends them.
    if let Ok(Value::Object(m)) = serde_json::to_value(&v.counters) {
        for (k, n) in m {
            outln!("  {k:<16} {n}");
        }
    }
}
