//! HTTP: `status` requests per second and latency over one keep-alive connection (against the
//! same command over the control socket, in the same run), the daemon's CPU per `/metrics`
//! scrape against prometheus-node-exporter's per scrape (bar: ours less), and the fan-out of hub
//! events over SSE to many clients (events delivered per second, lateness from the emitting
//! request to each client's receipt).
//!
//! The client is a minimal HTTP/1.1 reader written here (status line, headers, a
//! `Content-Length` or chunked body), so the figures are the server's, not a client library's.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use majordomo_client::{Client, ConnectOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::monitor::{node_exporter, proc_cpu};
use crate::util::{Daemon, percentile, table, us};

const TOKEN: &str = "bench-token-0123456789abcdef0123";

#[derive(clap::Args)]
pub struct Args {
    /// `status` requests timed over one keep-alive connection.
    #[arg(long, default_value_t = 20_000)]
    pub n: usize,
    /// `/metrics` scrapes (each on a new connection, for ours and node_exporter's alike).
    #[arg(long, default_value_t = 200)]
    pub scrapes: usize,
    /// SSE clients listening at once.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Hub events emitted for the fan-out.
    #[arg(long, default_value_t = 5_000)]
    pub events: usize,
    /// A short run for CI: few requests, scrapes and events (100 clients still).
    #[arg(long)]
    pub smoke: bool,
}

/// One HTTP/1.1 keep-alive connection.
struct Conn {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Conn {
    async fn open(port: u16) -> anyhow::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            rd: BufReader::new(r),
            wr: w,
            line: String::new(),
        })
    }

    async fn send(&mut self, path: &str) -> anyhow::Result<()> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        );
        self.wr.write_all(req.as_bytes()).await?;
        Ok(())
    }

    /// Reads the status line and headers: the status and whether the body is chunked (else
    /// its length).
    async fn head(&mut self) -> anyhow::Result<(u16, Option<usize>)> {
        self.line.clear();
        if self.rd.read_line(&mut self.line).await? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {:?}", self.line))?;
        let mut len = Some(0);
        loop {
            self.line.clear();
            self.rd.read_line(&mut self.line).await?;
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse()?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                len = None;
            }
        }
        Ok((status, len))
    }

    /// One chunk of a chunked body into `buf` (replacing it); `false` at the last chunk.
    async fn chunk(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
        self.line.clear();
        if self.rd.read_line(&mut self.line).await? == 0 {
            bail!("the server closed the stream");
        }
        let size = usize::from_str_radix(self.line.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {:?}", self.line))?;
        buf.resize(size + 2, 0);
        self.rd.read_exact(buf).await?;
        buf.truncate(size);
        Ok(size > 0)
    }

    async fn get(&mut self, path: &str, body: &mut Vec<u8>) -> anyhow::Result<u16> {
        self.send(path).await?;
        let (status, len) = self.head().await?;
        body.clear();
        match len {
            Some(n) => {
                body.resize(n, 0);
                self.rd.read_exact(body).await?;
            }
            None => {
                let mut c = Vec::new();
                while self.chunk(&mut c).await? {
                    body.extend_from_slice(&c);
                }
            }
        }
        Ok(status)
    }
}

/// `/metrics` on a new connection (`Connection: close`), as the node_exporter figure is taken.
fn scrape_once(port: u16) -> anyhow::Result<usize> {
    let mut s = StdTcp::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "/metrics answered {:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    Ok(body.len())
}

/// What one SSE client saw: lateness of each event (µs), lagged-notice misses, the last receipt.
struct Seen {
    late_us: Vec<u64>,
    missed: u64,
    last: Instant,
}

/// One SSE client: subscribes to `endpoint.up`, records each `fan-<nanos>` event's lateness
/// against `t0`, and stops at `fan-end` (or after `limit`).
async fn sse_client(
    port: u16,
    t0: Instant,
    ready: Arc<tokio::sync::Barrier>,
    limit: Duration,
) -> anyhow::Result<Seen> {
    let mut c = Conn::open(port).await?;
    c.send("/api/v1/events?topics=endpoint.up").await?;
    let (status, len) = c.head().await?;
    if status != 200 || len.is_some() {
        bail!("/api/v1/events answered {status} without a stream");
    }
    ready.wait().await;
    let mut seen = Seen {
        late_us: Vec::new(),
        missed: 0,
        last: Instant::now(),
    };
    let mut buf = Vec::new();
    let mut text = String::new();
    let end = Instant::now() + limit;
    loop {
        let more = tokio::time::timeout_at(end.into(), c.chunk(&mut buf))
            .await
            .context("the fan-out did not finish in time")??;
        let now = Instant::now();
        if !more {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf));
        // Whole events end with a blank line.
        while let Some(pos) = text.find("\n\n") {
            let ev: String = text.drain(..pos + 2).collect();
            let data = ev.lines().find_map(|l| l.strip_prefix("data:"));
            let Some(data) = data.map(str::trim) else {
                continue;
            };
            if ev.lines().any(|l| l.trim() == "event: lagged") {
                let v: Value = serde_json::from_str(data).unwrap_or_default();
                seen.missed += v["missed"].as_u64().unwrap_or(0);
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap_or_default();
            let Some(id) = v["id"].as_str() else { continue };
            if id == "fan-end" {
                seen.last = now;
                return Ok(seen);
            }
            if let Some(ns) = id.strip_prefix("fan-").and_then(|n| n.parse::<u64>().ok()) {
                let sent = t0 + Duration::from_nanos(ns);
                seen.late_us
                    .push(now.saturating_duration_since(sent).as_micros() as u64);
                seen.last = now;
            }
        }
    }
    Ok(seen)
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        args.n = args.n.min(500);
        args.scrapes = args.scrapes.min(10);
        args.events = args.events.min(300);
    }
    let daemon = Daemon::start(&format!(
        "[daemon]\nwatch_config = false\n[log]\nfile = false\nlevel = \"warn\"\n\
         [http]\nlisten = [\"127.0.0.1:0\"]\n\
         [[http.tokens]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\nrole = \"admin\"\n"
    ))?;
    let pid = daemon.pid();
    let opts = ConnectOptions::new(&daemon.socket).wait(Duration::from_secs(5));
    let mut client = Client::connect(&opts).await?;
    // The http subsystem registers `http.info` once it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        match client.call_named("http.info", json!({})).await {
            Ok(v) => break v,
            Err(e) if Instant::now() > deadline => bail!("the http subsystem did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let port: u16 = info["listen"][0]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("http.info has no listen address: {info}"))?;

    // 1. `status` over keep-alive, and over the socket as the reference.
    let mut conn = Conn::open(port).await?;
    let mut body = Vec::new();
    let warm = (args.n / 10).clamp(10, 1000);
    for _ in 0..warm {
        let s = conn.get("/api/v1/status", &mut body).await?;
        if s != 200 {
            bail!(
                "GET /api/v1/status answered {s}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let mut http = Vec::with_capacity(args.n);
    let t = Instant::now();
    for _ in 0..args.n {
        let s = Instant::now();
        conn.get("/api/v1/status", &mut body).await?;
        http.push(s.elapsed());
    }
    let http_rps = args.n as f64 / t.elapsed().as_secs_f64();
    http.sort_unstable();
    for _ in 0..warm {
        client.status().await?;
    }
    let mut sock = Vec::with_capacity(args.n);
    let t = Instant::now();
    for _ in 0..args.n {
        let s = Instant::now();
        client.status().await?;
        sock.push(s.elapsed());
    }
    let sock_rps = args.n as f64 / t.elapsed().as_secs_f64();
    sock.sort_unstable();

    // 2. CPU per `/metrics` scrape, ours then node_exporter's.
    let scrapes = args.scrapes.max(1);
    let metrics_bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut n = 0;
        for _ in 0..3 {
            n = scrape_once(port)?;
        }
        Ok(n)
    })
    .await??;
    let before = proc_cpu(pid)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for _ in 0..scrapes {
            scrape_once(port)?;
        }
        Ok(())
    })
    .await??;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ours = (proc_cpu(pid)?.saturating_sub(before)) / scrapes as u32;

    // 3. SSE fan-out: `clients` streams of `endpoint.up`; one bus connection registers and
    // unregisters an endpoint per event, its id carrying the time it was sent.
    let clients = args.clients.max(1);
    let t0 = Instant::now();
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let limit = Duration::from_secs(60);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        tasks.push(tokio::spawn(sse_client(port, t0, ready.clone(), limit)));
    }
    ready.wait().await;
    let mut emitter = Client::connect(&opts).await?;
    let start = Instant::now();
    for _ in 0..args.events {
        let id = format!("fan-{}", t0.elapsed().as_nanos());
        emitter
            .call_named("bus.register", json!({ "endpoint": id }))
            .await?;
        emitter.call_named("bus.unregister", json!({})).await?;
    }
    emitter
        .call_named("bus.register", json!({ "endpoint": "fan-end" }))
        .await?;
    let emit_secs = start.elapsed().as_secs_f64();
    let mut late = Vec::new();
    let mut missed = 0;
    let mut last = start;
    for t in tasks {
        let s = t.await??;
        late.extend(s.late_us);
        missed += s.missed;
        last = last.max(s.last);
    }
    let delivered = late.len();
    let fan_secs = last.duration_since(start).as_secs_f64();
    let delivered_per_s = delivered as f64 / fan_secs.max(1e-9);
    late.sort_unstable();
    let late_d: Vec<Duration> = late.iter().map(|u| Duration::from_micros(*u)).collect();
    let (l50, l99) = (percentile(&late_d, 50.0), percentile(&late_d, 99.0));
    let rss_kb = crate::monitor::proc_rss_kb(pid)?;
    drop(emitter);
    drop(client);
    drop(daemon);

    let ne = tokio::task::spawn_blocking(move || node_exporter(scrapes)).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (h50, h99) = (percentile(&http, 50.0), percentile(&http, 99.0));
    let (s50, s99) = (percentile(&sock, 50.0), percentile(&sock, 99.0));
    table(
        &format!(
            "http: {} status requests, {scrapes} scrapes, {clients} SSE clients × {} events",
            args.n, args.events
        ),
        &[
            (
                "GET /api/v1/status, keep-alive: req/s, p50 / p99",
                format!("{http_rps:.0}/s, {:.1} / {:.1} µs", us(h50), us(h99)),
            ),
            (
                "status over the control socket: req/s, p50 / p99",
                format!("{sock_rps:.0}/s, {:.1} / {:.1} µs", us(s50), us(s99)),
            ),
            ("HTTP / socket p50", format!("{:.2} ×", us(h50) / us(s50))),
            (
                "/metrics, daemon CPU per scrape",
                format!("{:.3} ms ({metrics_bytes} bytes)", ms(ours)),
            ),
            (
                "node_exporter, CPU per scrape",
                ne.map(|d| format!("{:.3} ms", ms(d)))
                    .unwrap_or_else(|| "n/a".into()),
            ),
            (
                "ours / node_exporter",
                ne.map(|d| format!("{:.3} ×", ms(ours) / ms(d)))
                    .unwrap_or_else(|| "n/a".into()),
            ),
            (
                "SSE fan-out: deliveries/s (emitted/s)",
                format!(
                    "{delivered_per_s:.0}/s ({:.0}/s)",
                    args.events as f64 / emit_secs.max(1e-9)
                ),
            ),
            (
                "SSE delivered / expected, missed (lagged)",
                format!("{delivered} / {}, {missed}", clients * args.events),
            ),
            (
                "SSE lateness p50 / p99",
                format!("{:.0} / {:.0} µs", us(l50), us(l99)),
            ),
            ("daemon RSS after the run", format!("{rss_kb} KB")),
        ],
    );
    println!(
        "{}",
        json!({
            "bench": "http",
            "status_rps": http_rps,
            "status_p50_us": us(h50),
            "status_p99_us": us(h99),
            "socket_status_rps": sock_rps,
            "socket_status_p50_us": us(s50),
            "socket_status_p99_us": us(s99),
            "metrics_scrape_cpu_ms": ms(ours),
            "metrics_bytes": metrics_bytes,
            "node_exporter_scrape_cpu_ms": ne.map(ms),
            "metrics_vs_node_exporter": ne.map(|d| ms(ours) / ms(d)),
            "sse_clients": clients,
            "sse_events": args.events,
            "sse_delivered": delivered,
            "sse_missed": missed,
            "sse_deliveries_per_s": delivered_per_s,
            "sse_lateness_p50_us": us(l50),
            "sse_lateness_p99_us": us(l99),
            "rss_kb_after": rss_kb,
            "requests": args.n,
            "scrapes": scrapes,
        })
    );
    Ok(())
}
