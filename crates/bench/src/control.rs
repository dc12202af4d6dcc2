//! Control-socket round trip (`ping` through the daemon) against a raw Unix-socket ping-pong
//! between two tasks of this process, measured in the same run.

use std::time::{Duration, Instant};

use majordomo_client::{Client, ConnectOptions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::{Daemon, percentile, table, us};

#[derive(clap::Args)]
pub struct Args {
    /// Round trips per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub n: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let raw = raw_uds_pingpong(args.n).await?;
    let daemon =
        Daemon::start("[daemon]\nwatch_config = false\n[log]\nfile = false\nlevel = \"warn\"\n")?;
    let mut client =
        Client::connect(&ConnectOptions::new(&daemon.socket).wait(Duration::from_secs(5))).await?;
    for _ in 0..1000 {
        client.ping().await?;
    }
    let mut samples = Vec::with_capacity(args.n);
    for _ in 0..args.n {
        let t = Instant::now();
        client.ping().await?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let (raw50, raw99) = (percentile(&raw, 50.0), percentile(&raw, 99.0));
    let (c50, c99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
    table(
        &format!("control round trip, {} samples each", args.n),
        &[
            (
                "raw UDS ping-pong p50 / p99",
                format!("{:.1} / {:.1} µs", us(raw50), us(raw99)),
            ),
            (
                "control ping p50 / p99",
                format!("{:.1} / {:.1} µs", us(c50), us(c99)),
            ),
            ("ratio p50", format!("{:.2} ×", us(c50) / us(raw50))),
        ],
    );
    println!(
        "{}",
        json!({
            "bench": "control",
            "raw_uds_rtt_p50_us": us(raw50),
            "raw_uds_rtt_p99_us": us(raw99),
            "control_rtt_p50_us": us(c50),
            "control_rtt_p99_us": us(c99),
        })
    );
    Ok(())
}

/// The baseline: a line-based echo over a Unix socket pair in this process (same runtime, same
/// framing style), i.e. the floor any local socket protocol pays.
pub async fn raw_uds_pingpong(n: usize) -> anyhow::Result<Vec<Duration>> {
    let (a, b) = tokio::net::UnixStream::pair()?;
    tokio::spawn(async move {
        let (r, mut w) = b.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        while r.read_line(&mut line).await.unwrap_or(0) > 0 {
            if w.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            line.clear();
        }
    });
    let (r, mut w) = a.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let msg = b"{\"id\":1,\"cmd\":\"ping\"}\n";
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 1000 {
        let t = Instant::now();
        w.write_all(msg).await?;
        line.clear();
        r.read_line(&mut line).await?;
        if i >= 1000 {
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    Ok(samples)
}
