//! `majordomo-bench bus`: the message bus against a raw Unix-socket ping-pong and nats-server.
//!
//! Everything runs on loopback in one process tree:
//!
//! - **raw UDS ping-pong (baseline)**: two OS threads of this process, blocking std sockets,
//!   one connected `UnixStream` pair, newline-terminated JSON lines of the same size as the bus
//!   request (`{"id":N,"cmd":"bus.request",...}`), echoed back. No async runtime on either side.
//! - **raw UDS relay (the floor of a broker)**: the baseline's echo behind a third blocking
//!   thread that forwards each line and its answer: four socket hops, as on the bus, and no
//!   routing. No broker's round trip can be shorter on the same machine.
//! - **bus round trip**: requester → daemon → responder → daemon → requester, measured with the
//!   same kind of clients as the baseline (two blocking threads speaking JSON lines on their own
//!   connections), so the ratio isolates what the daemon adds: the responder finds `reply_to`
//!   and `data` where the daemon writes them, with no JSON parser, as the baseline's echo
//!   parses nothing. Four socket hops against the baseline's two. The SDK's figure (tokio,
//!   typed API) is printed beside it.
//! - **1→1 throughput, 64-byte payloads**: one publisher connection, one subscriber connection;
//!   time from the first publish to the last delivery. JSON lines (blocking threads writing
//!   pre-encoded lines, the subscriber counting lines) and the SDK with the binary framing.
//! - **nats-server**: the Debian package (installed if missing), on 127.0.0.1, the same 1→1 run
//!   with async-nats clients in this process.
//! - **1→N fan-out**: one publisher, N subscribers (SDK, binary framing); deliveries per second.
//!   The 1→1 binary and fan-out runs are also made with `publish_json_batch` (64 per call).
//!   SDK subscribers take their messages batch by batch ([`majordomo_client::bus::Subscription::next_batch`]).
//! - **D-Bus peers**: dbus-broker and dbus-daemon, each started privately on its own socket,
//!   driven through zbus: method-call round trip and 1→1 signal throughput, 64-byte payloads
//!   (see [`dbus`]). `--smoke` runs them with small counts; a peer that cannot run is skipped
//!   with its reason on stderr and `null` in the JSON line.
//! - **10,000 idle connections**: the daemon's RSS before and after, per connection; each
//!   connection then answers a ping.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use majordomo_client::ConnectOptions;
use majordomo_client::bus::{Bus, BusOptions};
use serde_json::json;

use crate::util::{Daemon, percentile, table, us};

mod dbus;

#[derive(clap::Args)]
pub struct Args {
    /// Messages per throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    pub n: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 20_000)]
    pub rtt: usize,
    /// Subscribers in the fan-out run.
    #[arg(long, default_value_t = 4)]
    pub fanout: usize,
    /// Idle connections held in the memory run.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Skip the nats-server comparison.
    #[arg(long)]
    pub no_nats: bool,
    /// Signals per D-Bus peer in its 1→1 run (D-Bus is about 30 times slower than the bus).
    #[arg(long, default_value_t = 200_000)]
    pub dbus_n: u64,
    /// Skip the D-Bus peers (dbus-broker, dbus-daemon).
    #[arg(long)]
    pub no_dbus: bool,
    /// A short run for CI: every part and every peer, with small counts (overrides the counts).
    #[arg(long)]
    pub smoke: bool,
    /// Only these parts (comma-separated), for profiling one of them or quick A/B pairs:
    /// `rtt` (the three round trips), `lines` (1→1 JSON-line clients), `sdk` (the three SDK 1→1
    /// runs), `fanout` (both fan-out runs), `nats`, `dbus`, `conns` (idle connections). What was
    /// skipped shows as `null` in the JSON line.
    #[arg(long, value_delimiter = ',', value_parser = ["rtt", "lines", "sdk", "fanout", "nats", "dbus", "conns"])]
    pub only: Vec<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// A 64-byte JSON payload (a string of 62 characters and its quotes).
pub(crate) fn payload() -> Vec<u8> {
    let mut p = b"\"".to_vec();
    p.extend(std::iter::repeat_n(b'x', 62));
    p.push(b'"');
    p
}

const CONFIG: &str = "[daemon]\nwatch_config = false\n[log]\nfile = false\nlevel = \"warn\"\n[control]\nmax_connections = 30000\n[bus]\nqueue_messages = 1000000\nqueue_bytes = \"256MiB\"\n";

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        args.n = 20_000;
        args.rtt = 2_000;
        args.conns = 1_000;
        args.dbus_n = 5_000;
    }
    raise_nofile();
    let daemon = Daemon::start(CONFIG)?;
    let socket = daemon.socket.clone();

    // Latency.
    let (raw, relay, bus_raw, bus_sdk) = if args.runs("rtt") {
        let n = args.rtt;
        let raw = tokio::task::spawn_blocking(move || raw_pingpong(n)).await??;
        let relay = tokio::task::spawn_blocking(move || raw_relay_pingpong(n)).await??;
        let bus_raw = tokio::task::spawn_blocking({
            let (n, s) = (args.rtt, socket.clone());
            move || bus_rtt_lines(&s, n)
        })
        .await??;
        (raw, relay, bus_raw, bus_rtt_sdk(&socket, args.rtt).await?)
    } else {
        Default::default()
    };

    // Throughput (NaN: not run).
    const SKIPPED: f64 = f64::NAN;
    let json_1to1 = if args.runs("lines") {
        tokio::task::spawn_blocking({
            let (n, s) = (args.n, socket.clone());
            move || pub_json_lines(&s, n)
        })
        .await??
    } else {
        SKIPPED
    };
    let (sdk_1to1, sdk_batch_1to1, sdk_json_1to1) = if args.runs("sdk") {
        (
            pub_sdk(&socket, args.n, 1, true, 1).await?,
            pub_sdk(&socket, args.n, 1, true, BATCH).await?,
            pub_sdk(&socket, args.n / 2, 1, false, 1).await?,
        )
    } else {
        (SKIPPED, SKIPPED, SKIPPED)
    };
    let fanout_n = args.n / args.fanout.max(1) as u64;
    let (fanout, fanout_batch) = if args.runs("fanout") {
        (
            pub_sdk(&socket, fanout_n, args.fanout, true, 1).await?,
            pub_sdk(&socket, fanout_n, args.fanout, true, BATCH).await?,
        )
    } else {
        (SKIPPED, SKIPPED)
    };
    let nats = if args.no_nats || !args.runs("nats") {
        None
    } else {
        match nats_1to1(args.n).await {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("nats-server comparison skipped: {e:#}");
                None
            }
        }
    };

    // The D-Bus peers, one after the other, each on its own private bus.
    let mut dbus_peers: Vec<(dbus::Kind, Option<dbus::Figures>)> = Vec::new();
    for kind in [dbus::Kind::Broker, dbus::Kind::Daemon] {
        if args.no_dbus || !args.runs("dbus") {
            break;
        }
        let figures = match dbus::measure(kind, args.rtt, args.dbus_n).await {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("{} comparison skipped: {e:#}", kind.name());
                None
            }
        };
        dbus_peers.push((kind, figures));
    }

    // Memory per idle connection, on a fresh daemon (the one above holds the allocator's
    // memory from the throughput runs, which new connections would reuse unseen).
    drop(daemon);
    let (per_conn, answered) = if args.runs("conns") {
        let fresh = Daemon::start(CONFIG)?;
        tokio::task::spawn_blocking({
            let (n, s, pid) = (args.conns, fresh.socket.clone(), fresh.pid());
            move || idle_connections(&s, n, pid)
        })
        .await??
    } else {
        (SKIPPED, 0)
    };

    // Round trips in µs (NaN: not run).
    let rtt_us = |d: Duration| if args.runs("rtt") { us(d) } else { SKIPPED };
    let (raw50, raw99) = (percentile(&raw, 50.0), percentile(&raw, 99.0));
    let (relay50, relay99) = (percentile(&relay, 50.0), percentile(&relay, 99.0));
    let (b50, b99) = (percentile(&bus_raw, 50.0), percentile(&bus_raw, 99.0));
    let (s50, s99) = (percentile(&bus_sdk, 50.0), percentile(&bus_sdk, 99.0));
    let rate = |r: f64| format!("{:.0} msg/s", r);
    // (name, rtt p50 µs, rtt p99 µs, msgs/s) of each D-Bus peer that ran.
    let peers: Vec<(&str, f64, f64, f64)> = dbus_peers
        .iter()
        .filter_map(|(k, f)| {
            f.as_ref().map(|f| {
                (
                    k.name(),
                    us(percentile(&f.rtt, 50.0)),
                    us(percentile(&f.rtt, 99.0)),
                    f.msgs_per_s,
                )
            })
        })
        .collect();
    let broker = peers.iter().find(|p| p.0 == "dbus-broker").copied();
    let daemon = peers.iter().find(|p| p.0 == "dbus-daemon").copied();
    let mut latency = vec![
        (
            "raw UDS ping-pong p50 / p99 (baseline)".to_string(),
            format!("{:.1} / {:.1} µs", rtt_us(raw50), rtt_us(raw99)),
        ),
        (
            "raw UDS through a relay thread p50 / p99 (4 hops)".to_string(),
            format!("{:.1} / {:.1} µs", rtt_us(relay50), rtt_us(relay99)),
        ),
        (
            "bus request/reply p50 / p99 (line clients)".to_string(),
            format!("{:.1} / {:.1} µs", rtt_us(b50), rtt_us(b99)),
        ),
        (
            "bus request/reply p50 / p99 (SDK)".to_string(),
            format!("{:.1} / {:.1} µs", rtt_us(s50), rtt_us(s99)),
        ),
    ];
    for (name, p50, p99, _) in &peers {
        latency.push((
            format!("{name} method call p50 / p99 (zbus)"),
            format!("{p50:.1} / {p99:.1} µs"),
        ));
    }
    latency.push((
        "ratio p50 (line clients / baseline)".to_string(),
        format!("{:.2} × (bar ≤ 1.6 ×)", rtt_us(b50) / rtt_us(raw50)),
    ));
    latency.push((
        "ratio p50 (relay / baseline: the floor of a broker)".to_string(),
        format!("{:.2} ×", rtt_us(relay50) / rtt_us(raw50)),
    ));
    latency.push((
        "ratio p50 (line clients / relay)".to_string(),
        format!("{:.2} ×", rtt_us(b50) / rtt_us(relay50)),
    ));
    if let Some((_, p50, _, _)) = broker {
        latency.push((
            "ratio p50 (line clients / dbus-broker)".to_string(),
            format!("{:.2} × (bar ≤ 0.8 ×)", rtt_us(b50) / p50),
        ));
    }
    let latency: Vec<(&str, String)> = latency
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    table(
        &format!("bus latency, {} round trips each", args.rtt),
        &latency,
    );
    let mut rows = vec![
        ("1→1 SDK, binary framing".to_string(), rate(sdk_1to1)),
        (
            format!("1→1 SDK, binary framing, publish_json_batch of {BATCH}"),
            rate(sdk_batch_1to1),
        ),
        ("1→1 SDK, JSON lines".to_string(), rate(sdk_json_1to1)),
        ("1→1 raw JSON lines".to_string(), rate(json_1to1)),
        (
            "1→N fan-out deliveries".to_string(),
            format!("{} ({} subscribers)", rate(fanout), args.fanout),
        ),
        (
            format!("1→N fan-out deliveries, publish_json_batch of {BATCH}"),
            format!("{} ({} subscribers)", rate(fanout_batch), args.fanout),
        ),
    ];
    if let Some(n) = nats {
        rows.push(("1→1 nats-server (async-nats)".to_string(), rate(n)));
        rows.push((
            "ratio 1→1 SDK / nats-server".to_string(),
            format!("{:.2} × (bar ≥ 3 ×)", sdk_1to1 / n),
        ));
    }
    for (name, _, _, r) in &peers {
        rows.push((
            format!("1→1 {name} signals (zbus, {} signals)", args.dbus_n),
            rate(*r),
        ));
    }
    if let Some((_, _, _, r)) = broker {
        rows.push((
            "ratio 1→1 SDK / dbus-broker".to_string(),
            format!("{:.1} × (bar ≥ 30 ×)", sdk_1to1 / r),
        ));
    }
    let rows: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    table(
        &format!("bus throughput, 64-byte payloads, {} messages", args.n),
        &rows,
    );
    table(
        &format!("{} idle connections", args.conns),
        &[
            (
                "daemon memory per connection",
                format!("{per_conn:.0} bytes (bar ≤ 4096)"),
            ),
            ("connections answering a ping", format!("{answered}")),
        ],
    );
    let ratio = |a: f64, b: Option<f64>| b.filter(|b| *b > 0.0).map(|b| a / b);
    println!(
        "{}",
        json!({
            "bench": "bus",
            "raw_uds_rtt_p50_us": rtt_us(raw50),
            "raw_uds_rtt_p99_us": rtt_us(raw99),
            "raw_uds_relay_rtt_p50_us": rtt_us(relay50),
            "raw_uds_relay_rtt_p99_us": rtt_us(relay99),
            "bus_rtt_p50_us": rtt_us(b50),
            "bus_rtt_p99_us": rtt_us(b99),
            "bus_sdk_rtt_p50_us": rtt_us(s50),
            "bus_sdk_rtt_p99_us": rtt_us(s99),
            "pub_1to1_msgs_per_s": sdk_1to1,
            "pub_1to1_sdk_batch_msgs_per_s": sdk_batch_1to1,
            "pub_1to1_sdk_json_msgs_per_s": sdk_json_1to1,
            "pub_1to1_json_lines_msgs_per_s": json_1to1,
            "nats_1to1_msgs_per_s": nats,
            "dbus_broker_rtt_p50_us": broker.map(|p| p.1),
            "dbus_broker_1to1_msgs_per_s": broker.map(|p| p.3),
            "dbus_daemon_rtt_p50_us": daemon.map(|p| p.1),
            "dbus_daemon_1to1_msgs_per_s": daemon.map(|p| p.3),
            "ratio_rtt_vs_raw_uds": rtt_us(b50) / rtt_us(raw50),
            "ratio_rtt_vs_raw_relay": rtt_us(b50) / rtt_us(relay50),
            "ratio_raw_relay_vs_raw_uds": rtt_us(relay50) / rtt_us(raw50),
            "ratio_rtt_vs_dbus_broker": ratio(rtt_us(b50), broker.map(|p| p.1)),
            "ratio_rtt_vs_dbus_daemon": ratio(rtt_us(b50), daemon.map(|p| p.1)),
            "ratio_1to1_vs_nats": ratio(sdk_1to1, nats),
            "ratio_1to1_json_lines_vs_nats": ratio(json_1to1, nats),
            "ratio_1to1_vs_dbus_broker": ratio(sdk_1to1, broker.map(|p| p.3)),
            "ratio_1to1_vs_dbus_daemon": ratio(sdk_1to1, daemon.map(|p| p.3)),
            "fanout_msgs_per_s": fanout,
            "fanout_batch_msgs_per_s": fanout_batch,
            "fanout_subscribers": args.fanout,
            "conn_10k_bytes_per_conn": per_conn,
            "conns": args.conns,
            "conns_answered": answered,
        })
    );
    Ok(())
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn line_conn(socket: &Path) -> anyhow::Result<(BufReader<UnixStream>, UnixStream)> {
    let s = UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok((BufReader::new(s.try_clone()?), s))
}

fn call(r: &mut BufReader<UnixStream>, w: &mut UnixStream, line: &str) -> anyhow::Result<String> {
    w.write_all(line.as_bytes())?;
    w.write_all(b"\n")?;
    let mut out = String::new();
    r.read_line(&mut out)?;
    Ok(out)
}

/// A thread that echoes each line it reads on `s` back on `s`, until `s` closes.
fn echo_thread(s: UnixStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut w) = s.try_clone() else { return };
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if w.write_all(line.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    })
}

/// A thread that carries each line read on `front` to `back`, then the answer read on `back`
/// to `front`: a broker that does nothing but forward, for strict request/answer traffic.
fn relay_thread(front: UnixStream, back: UnixStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (Ok(mut fw), Ok(mut bw)) = (front.try_clone(), back.try_clone()) else {
            return;
        };
        let (mut fr, mut br) = (BufReader::new(front), BufReader::new(back));
        let mut line = String::new();
        loop {
            line.clear();
            if fr.read_line(&mut line).unwrap_or(0) == 0 || bw.write_all(line.as_bytes()).is_err() {
                break;
            }
            line.clear();
            if br.read_line(&mut line).unwrap_or(0) == 0 || fw.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    })
}

/// Round trips of bus-request-sized JSON lines written on `a` and answered on it.
fn pingpong_samples(a: UnixStream, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut w = a.try_clone()?;
    let mut r = BufReader::new(a);
    let data = String::from_utf8(payload())?;
    let mut samples = Vec::with_capacity(n);
    let mut line = String::new();
    for i in 0..n + 1000 {
        let msg = format!(
            "{{\"id\":{i},\"cmd\":\"bus.request\",\"topic\":\"bench.rtt\",\"data\":{data}}}\n"
        );
        let t = Instant::now();
        w.write_all(msg.as_bytes())?;
        line.clear();
        r.read_line(&mut line)?;
        if i >= 1000 {
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// The baseline: a JSON-line echo between two blocking threads over a Unix socket pair.
fn raw_pingpong(n: usize) -> anyhow::Result<Vec<Duration>> {
    let (a, b) = UnixStream::pair()?;
    let echo = echo_thread(b);
    let samples = pingpong_samples(a, n)?;
    let _ = echo.join();
    Ok(samples)
}

/// The floor of any broker's round trip: the baseline's echo behind a relay thread, so four
/// socket hops (requester → relay → echo → relay → requester) as on the bus, with no routing.
fn raw_relay_pingpong(n: usize) -> anyhow::Result<Vec<Duration>> {
    let (a, front) = UnixStream::pair()?;
    let (back, b) = UnixStream::pair()?;
    let echo = echo_thread(b);
    let relay = relay_thread(front, back);
    let samples = pingpong_samples(a, n)?;
    let _ = relay.join();
    let _ = echo.join();
    Ok(samples)
}

/// `reply_to` and `data` of a message line as the daemon writes it
/// (`{"msg":{"sid":..,"topic":"..","reply_to":"..","data":..}}`).
fn reply_fields(line: &str) -> Option<(&str, &str)> {
    let rest = &line[line.find("\"reply_to\":\"")? + 12..];
    let to = &rest[..rest.find('"')?];
    let data = &rest[rest.find("\"data\":")? + 7..];
    let data = data.trim_end().strip_suffix("}}")?;
    Some((to, data))
}

/// Bus round trips with blocking JSON-line clients: a responder thread and this thread.
fn bus_rtt_lines(socket: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let (mut rr, mut rw) = line_conn(socket)?;
    let reply = call(
        &mut rr,
        &mut rw,
        r#"{"id":1,"cmd":"bus.sub","pattern":"bench.rtt"}"#,
    )?;
    if !reply.contains("\"ok\"") {
        bail!("subscribe failed: {reply}");
    }
    let responder = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut line = String::new();
        let mut out = String::new();
        loop {
            line.clear();
            if rr.read_line(&mut line)? == 0 {
                return Ok(());
            }
            // The daemon's message line has one shape; the responder reads its two fields
            // where they are (as the baseline's echo does no parsing either), so the ratio
            // counts what the daemon adds, not a JSON parser in the bench.
            let Some((to, data)) = reply_fields(&line) else {
                continue;
            };
            out.clear();
            out.push_str("{\"cmd\":\"bus.reply\",\"to\":\"");
            out.push_str(to);
            out.push_str("\",\"data\":");
            out.push_str(data);
            out.push_str("}\n");
            rw.write_all(out.as_bytes())?;
        }
    });
    let (mut r, mut w) = line_conn(socket)?;
    let data = String::from_utf8(payload())?;
    let mut samples = Vec::with_capacity(n);
    let mut line = String::new();
    for i in 0..n + 1000 {
        let msg = format!(
            "{{\"id\":{i},\"cmd\":\"bus.request\",\"topic\":\"bench.rtt\",\"data\":{data}}}\n"
        );
        let t = Instant::now();
        w.write_all(msg.as_bytes())?;
        line.clear();
        r.read_line(&mut line)?;
        if i >= 1000 {
            samples.push(t.elapsed());
        }
        if !line.contains("\"ok\"") {
            bail!("request failed: {line}");
        }
    }
    drop(w);
    drop(r);
    // The responder ends when its connection does; it holds the other half.
    drop(responder);
    samples.sort_unstable();
    Ok(samples)
}

async fn sdk(socket: &Path, binary: bool) -> anyhow::Result<Bus> {
    Ok(Bus::connect(
        &ConnectOptions::new(socket).wait(Duration::from_secs(5)),
        BusOptions {
            binary,
            ..Default::default()
        },
    )
    .await?)
}

async fn bus_rtt_sdk(socket: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let responder = sdk(socket, true).await?;
    let mut sub = responder.subscribe("bench.sdk").await?;
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(to) = &m.reply_to {
                let _ = responder
                    .reply(
                        to,
                        &serde_json::value::RawValue::from_string(
                            String::from_utf8_lossy(&m.data).into_owned(),
                        )
                        .ok(),
                    )
                    .await;
            }
        }
    });
    let req = sdk(socket, true).await?;
    let data: serde_json::Value = serde_json::from_slice(&payload())?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 1000 {
        let t = Instant::now();
        req.request("bench.sdk", &data, Duration::from_secs(10))
            .await?;
        if i >= 1000 {
            samples.push(t.elapsed());
        }
    }
    task.abort();
    samples.sort_unstable();
    Ok(samples)
}

/// 1→1 with blocking JSON-line clients: pre-encoded publish lines, a subscriber counting lines.
fn pub_json_lines(socket: &Path, n: u64) -> anyhow::Result<f64> {
    let (mut sr, mut sw) = line_conn(socket)?;
    let reply = call(
        &mut sr,
        &mut sw,
        r#"{"id":1,"cmd":"bus.sub","pattern":"bench.json"}"#,
    )?;
    if !reply.contains("\"ok\"") {
        bail!("subscribe failed: {reply}");
    }
    let counter = std::thread::spawn(move || -> anyhow::Result<Instant> {
        let mut inner = sr.into_inner();
        let mut buf = vec![0u8; 1 << 20];
        let mut seen = 0u64;
        while seen < n {
            let k = inner.read(&mut buf)?;
            if k == 0 {
                bail!("subscriber connection closed after {seen} messages");
            }
            seen += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
        }
        Ok(Instant::now())
    });
    let (_pr, mut pw) = line_conn(socket)?;
    let mut line = b"{\"cmd\":\"bus.pub\",\"topic\":\"bench.json\",\"data\":".to_vec();
    line.extend(payload());
    line.extend(b"}\n");
    let batch: Vec<u8> = line.repeat(1000);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(1000);
        pw.write_all(&batch[..line.len() * k as usize])?;
        sent += k;
    }
    let end = counter
        .join()
        .map_err(|_| anyhow::anyhow!("subscriber thread panicked"))??;
    Ok(n as f64 / (end - start).as_secs_f64())
}

/// Messages per `publish_json_batch` call in the batched runs.
const BATCH: usize = 64;

/// 1→`subs` with the SDK, publishing one message per call (`batch` 1) or `batch` per
/// `publish_json_batch` call; returns deliveries per second.
async fn pub_sdk(
    socket: &Path,
    n: u64,
    subs: usize,
    binary: bool,
    batch: usize,
) -> anyhow::Result<f64> {
    let topic = format!("bench.sdk.{subs}.{binary}.{batch}");
    let mut tasks = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..subs {
        let b = sdk(socket, binary).await?;
        let mut s = b.subscribe(&topic).await?;
        keep.push(b);
        tasks.push(tokio::spawn(async move {
            let mut seen = 0u64;
            // Batch by batch, the messages borrowed from the read buffer (no copy, no
            // allocation per message); each one is looked at.
            while seen < n {
                match tokio::time::timeout(Duration::from_secs(30), s.next_batch()).await {
                    Ok(Some(b)) => seen += b.iter().filter(|m| !m.data.is_empty()).count() as u64,
                    _ => break,
                }
            }
            (seen, Instant::now())
        }));
    }
    let p = sdk(socket, binary).await?;
    let data = payload();
    let datas = vec![&data[..]; batch.max(1)];
    let start = Instant::now();
    if batch <= 1 {
        for _ in 0..n {
            p.publish_json(&topic, &data).await?;
        }
    } else {
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(batch as u64) as usize;
            p.publish_json_batch(&topic, &datas[..k]).await?;
            sent += k as u64;
        }
    }
    p.flush().await?;
    let mut total = 0;
    let mut end = start;
    for t in tasks {
        let (seen, at) = t.await?;
        if seen < n {
            bail!("a subscriber got {seen} of {n} messages");
        }
        total += seen;
        end = end.max(at);
    }
    Ok(total as f64 / (end - start).as_secs_f64())
}

pub(crate) struct Nats(pub(crate) Child);
impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn nats_server_bin() -> anyhow::Result<String> {
    Ok(installed("nats-server", "nats-server")?
        .to_string_lossy()
        .into_owned())
}

/// Where program `bin` is (`/usr/sbin` or `/usr/bin`), installing Debian package `package` with
/// apt-get when it is missing.
pub(crate) fn installed(bin: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    let find = || {
        ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(bin))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("installing {package} (Debian package)...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ok = install()
        || (Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status()
            .is_ok()
            && install());
    match find() {
        Some(p) if ok => Ok(p),
        _ => bail!(
            "{bin} is not installed and apt-get could not install {package}; run scripts/install-test-deps.sh as root"
        ),
    }
}

pub(crate) async fn nats_1to1(n: u64) -> anyhow::Result<f64> {
    let bin = nats_server_bin()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let _server = Nats(
        Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let opts = || async_nats::ConnectOptions::new().subscription_capacity(1 << 22);
    let sub_client = loop {
        match opts().connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("cannot connect to nats-server at {url}: {e}"),
        }
    };
    let pub_client = opts().connect(&url).await?;
    let mut sub = sub_client.subscribe("bench.nats").await?;
    sub_client.flush().await?;
    // `flush` does not wait for the server to have read the subscription: publish a probe
    // until one arrives, so that no message of the run is published before there is interest.
    let data = bytes::Bytes::from(payload());
    loop {
        pub_client.publish("bench.nats", data.clone()).await?;
        pub_client.flush().await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("nats-server never delivered a probe message to the subscriber");
        }
    }
    let seen = Arc::new(AtomicU64::new(0));
    let counter = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut k = 0;
            let mut last = Instant::now();
            while k < n {
                // Stop waiting 2 s after the last message: what nats-server dropped never comes.
                match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                    Ok(Some(_)) => {
                        k += 1;
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            seen.store(k, Ordering::Relaxed);
            last
        }
    });
    let start = Instant::now();
    for _ in 0..n {
        pub_client.publish("bench.nats", data.clone()).await?;
    }
    pub_client.flush().await?;
    let end = counter.await?;
    let got = seen.load(Ordering::Relaxed);
    if got < n {
        // nats-server drops for slow consumers too; report what arrived.
        eprintln!("nats: the subscriber got {got} of {n} messages (slow-consumer drops)");
    }
    Ok(got as f64 / (end - start).as_secs_f64())
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// Opens `n` connections, each answering a ping, and measures the daemon's RSS growth.
fn idle_connections(socket: &Path, n: usize, pid: u32) -> anyhow::Result<(f64, usize)> {
    // Warm-up: one connection's worth of lazily allocated structures.
    {
        let (mut r, mut w) = line_conn(socket)?;
        call(&mut r, &mut w, r#"{"id":0,"cmd":"ping"}"#)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid)?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let s = UnixStream::connect(socket).with_context(|| format!("connection {i}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        conns.push(s);
    }
    // Each connection is answered.
    let mut answered = 0;
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(format!("{{\"id\":{i},\"cmd\":\"ping\"}}\n").as_bytes())?;
    }
    for s in conns.iter_mut() {
        let mut buf = [0u8; 64];
        let k = s.read(&mut buf)?;
        if buf[..k].windows(4).any(|w| w == b"pong") {
            answered += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_bytes(pid)?;
    drop(conns);
    Ok((after.saturating_sub(before) as f64 / n as f64, answered))
}
