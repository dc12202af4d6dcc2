//! `majordomo-bench fleet`: two instances bridged through nats-server, against a direct NATS
//! client in the same run.
//!
//! - **cross-instance publish throughput, 64-byte payloads**: an SDK publisher (binary framing)
//!   on instance A, whose `[nats]` exports the topic, an SDK subscriber on instance B, whose
//!   `[nats]` imports it; from the first publish to the last delivery. Peer: the same 1→1 run
//!   with two async-nats clients straight on the server (`majordomo-bench bus`'s helper).
//! - **request round trip**: a requester on A, a responder on B (local request → A's bridge →
//!   NATS → B's bridge → local responder, and back), sequential; against an async-nats
//!   requester and responder on the same server.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use majordomo_client::bus::{Bus, BusOptions};
use majordomo_client::{Client, ConnectOptions};
use serde_json::{Value, json};

use crate::bus::{Nats, nats_1to1, nats_server_bin, payload};
use crate::util::{Daemon, percentile, table, us};

#[derive(clap::Args)]
pub struct Args {
    /// Messages per throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub n: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 2_000)]
    pub rtt: usize,
}

fn config(url: &str, node: &str, nats: &str) -> String {
    format!(
        "[daemon]\nwatch_config = false\n[log]\nfile = false\nlevel = \"warn\"\n[bus]\nqueue_messages = 1000000\nqueue_bytes = \"256MiB\"\n[nats]\nservers = [\"{url}\"]\nnode = \"{node}\"\nprefix = \"x.\"\nbuffer = 1000000\nimport_buffer = 1000000\n{nats}\n"
    )
}

async fn connected(d: &Daemon) -> anyhow::Result<()> {
    let opts = ConnectOptions::new(&d.socket).wait(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = Client::connect(&opts).await?;
        if let Ok(s) = c.call_named("nats.status", Value::Null).await
            && s["connected"] == true
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the instance's NATS bridge did not connect; see {}",
                d.home().join("daemon.stderr").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance's reply to `cmd` (`nats.status`, `bus.ls`), or `null` when it cannot be read.
async fn ask(d: &Daemon, cmd: &str) -> Value {
    let opts = ConnectOptions::new(&d.socket).wait(Duration::from_secs(5));
    match Client::connect(&opts).await {
        Ok(mut c) => c.call_named(cmd, Value::Null).await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Where the messages of a throughput run went: every loss the instances count, and whether
/// they account for every message sent.
struct Accounts {
    /// B's NATS client dropped them (B's bridge behind NATS): `import_overflows`.
    b_import_overflows: u64,
    /// A's bus dropped them for A's bridge, or B's bus for B's subscriber (slow consumers).
    a_bus_dropped: u64,
    b_bus_dropped: u64,
    /// A's export buffer dropped or could not confirm them.
    a_export_lost: u64,
    b_connects: u64,
}

impl Accounts {
    async fn of(a: &Daemon, b: &Daemon) -> Self {
        let (sa, sb) = (ask(a, "nats.status").await, ask(b, "nats.status").await);
        let (ba, bb) = (ask(a, "bus.ls").await, ask(b, "bus.ls").await);
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        Self {
            b_import_overflows: n(&sb["import_overflows"]),
            a_bus_dropped: n(&ba["counters"]["dropped"]),
            b_bus_dropped: n(&bb["counters"]["dropped"]),
            a_export_lost: n(&sa["dropped"]) + n(&sa["unconfirmed"]),
            b_connects: n(&sb["connects"]),
        }
    }

    fn lost(&self) -> u64 {
        self.b_import_overflows + self.a_bus_dropped + self.b_bus_dropped + self.a_export_lost
    }
}

async fn bus(d: &Daemon) -> anyhow::Result<Bus> {
    Ok(Bus::connect(
        &ConnectOptions::new(&d.socket).wait(Duration::from_secs(10)),
        BusOptions {
            binary: true,
            ..Default::default()
        },
    )
    .await?)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin = nats_server_bin()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _server = Nats(
        Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    let a = Daemon::start(&config(&url, "a", "export = [\"bench.>\"]"))?;
    let b = Daemon::start(&config(&url, "b", "import = [\"x.bench.>\"]"))?;
    connected(&a).await?;
    connected(&b).await?;

    // Cross-instance throughput.
    let pubs = bus(&a).await?;
    let subs = bus(&b).await?;
    let mut sub = subs.subscribe("x.bench.t").await?;
    // Warm-up: one message through, so the import subscription is live end to end.
    let mut warm = subs.subscribe("x.bench.warm").await?;
    let t0 = Instant::now();
    loop {
        pubs.publish("bench.warm", &json!(1)).await?;
        if tokio::time::timeout(Duration::from_millis(100), warm.next())
            .await
            .is_ok()
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("nothing crossed the bridge within 10 s");
        }
    }
    let n = args.n;
    let counter = tokio::spawn(async move {
        let mut k = 0u64;
        let mut last = Instant::now();
        while k < n {
            match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                Ok(Some(_)) => {
                    k += 1;
                    last = Instant::now();
                }
                _ => break,
            }
        }
        (k, last)
    });
    let data = payload();
    let start = Instant::now();
    for _ in 0..n {
        pubs.publish_json("bench.t", &data).await?;
    }
    pubs.flush().await?;
    let (got, end) = counter.await?;
    // What the instances counted as lost (B's importer has caught up: its count is exact).
    let acc = Accounts::of(&a, &b).await;
    let accounted = got + acc.lost() == n;
    if got < n {
        eprintln!(
            "fleet: instance B got {got} of {n} messages; counted lost: {} by B's NATS client (import_overflows), {} by A's bus, {} by B's bus, {} by A's export buffer; B's bridge connected {} time(s); {}",
            acc.b_import_overflows,
            acc.a_bus_dropped,
            acc.b_bus_dropped,
            acc.a_export_lost,
            acc.b_connects,
            if accounted {
                "every message is accounted for"
            } else {
                "NOT every message is accounted for"
            }
        );
    }
    let bridged_rate = got as f64 / (end - start).as_secs_f64();
    let direct_rate = nats_1to1(n).await.context("direct NATS run")?;

    // Request round trip across the bridge.
    let responder = bus(&b).await?;
    let mut rq = responder.subscribe("x.bench.rq").await?;
    let answering = tokio::spawn(async move {
        while let Some(m) = rq.next().await {
            if let Some(to) = &m.reply_to {
                let _ = responder.reply(to, &json!("pong")).await;
            }
        }
    });
    let requester = bus(&a).await?;
    // Warm-up: until B's bridge has subscribed on the server, a request finds no responders.
    let t0 = Instant::now();
    loop {
        let first: Result<Value, _> = requester
            .request("bench.rq", &json!("ping"), Duration::from_secs(2))
            .await;
        match first {
            Ok(_) => break,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("no request crossed the bridge within 10 s"),
        }
    }
    let mut bridged = Vec::with_capacity(args.rtt);
    for i in 0..args.rtt {
        let t = Instant::now();
        let r: Result<Value, _> = requester
            .request("bench.rq", &json!("ping"), Duration::from_secs(10))
            .await;
        if let Err(e) = r {
            // Say where the path broke: each side's bridge and bus as they are now.
            bail!(
                "request {i} of {} across the bridge failed: {e}\nA nats.status: {}\nB nats.status: {}\nA bus.ls counters: {}\nB bus.ls counters: {}\nlogs: {} and {}",
                args.rtt,
                ask(&a, "nats.status").await,
                ask(&b, "nats.status").await,
                ask(&a, "bus.ls").await["counters"],
                ask(&b, "bus.ls").await["counters"],
                a.home().join("daemon.stderr").display(),
                b.home().join("daemon.stderr").display(),
            );
        }
        bridged.push(t.elapsed());
    }
    answering.abort();
    bridged.sort();

    // Direct: async-nats requester and responder on the same server.
    let rc = async_nats::connect(url.as_str()).await?;
    let qc = async_nats::connect(url.as_str()).await?;
    let mut rsub = rc.subscribe("direct.rq").await?;
    rc.flush().await?;
    let rc2 = rc.clone();
    let direct_responder = tokio::spawn(async move {
        while let Some(m) = rsub.next().await {
            if let Some(r) = m.reply {
                let _ = rc2.publish(r, "\"pong\"".into()).await;
            }
        }
    });
    // `flush` sends the subscription but does not wait for the server to have read it: until
    // it has, a request on the other connection finds no responders.
    let t0 = Instant::now();
    while let Err(e) = qc.request("direct.rq", "\"ping\"".into()).await {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(e).context("the direct NATS responder never answered within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut direct = Vec::with_capacity(args.rtt);
    for _ in 0..args.rtt {
        let t = Instant::now();
        qc.request("direct.rq", "\"ping\"".into()).await?;
        direct.push(t.elapsed());
    }
    direct_responder.abort();
    direct.sort();

    let (b50, b99) = (
        us(percentile(&bridged, 50.0)),
        us(percentile(&bridged, 99.0)),
    );
    let (d50, d99) = (us(percentile(&direct, 50.0)), us(percentile(&direct, 99.0)));
    table(
        &format!(
            "fleet: two instances through nats-server ({n} × 64 B, {} round trips)",
            args.rtt
        ),
        &[
            (
                "publish A→NATS→B (msg/s)",
                format!("{bridged_rate:>12.0}  ({got} of {n} delivered)"),
            ),
            (
                "lost, counted (B import_overflows)",
                format!(
                    "{:>12}  ({}; delivered + counted {} sent)",
                    acc.lost(),
                    acc.b_import_overflows,
                    if accounted { "==" } else { "!=" }
                ),
            ),
            (
                "publish direct async-nats (msg/s)",
                format!("{direct_rate:>12.0}"),
            ),
            (
                "throughput ratio bridged/direct",
                format!("{:>12.2}", bridged_rate / direct_rate),
            ),
            (
                "request A→B p50 / p99 (µs)",
                format!("{b50:>12.0} / {b99:.0}"),
            ),
            (
                "request direct p50 / p99 (µs)",
                format!("{d50:>12.0} / {d99:.0}"),
            ),
            (
                "round-trip ratio bridged/direct (p50)",
                format!("{:>12.2}", b50 / d50),
            ),
        ],
    );
    println!(
        "{}",
        json!({
            "bench": "fleet",
            "n": n,
            "delivered": got,
            "sent": n,
            "b_import_overflows": acc.b_import_overflows,
            "a_bus_dropped": acc.a_bus_dropped,
            "b_bus_dropped": acc.b_bus_dropped,
            "a_export_lost": acc.a_export_lost,
            "accounted": accounted,
            "bridged_msgs_per_s": bridged_rate.round(),
            "direct_msgs_per_s": direct_rate.round(),
            "throughput_ratio": (bridged_rate / direct_rate * 100.0).round() / 100.0,
            "rtt": args.rtt,
            "bridged_rtt_p50_us": b50.round(),
            "bridged_rtt_p99_us": b99.round(),
            "direct_rtt_p50_us": d50.round(),
            "direct_rtt_p99_us": d99.round(),
        })
    );
    Ok(())
}
