//! `majordomo-bench NAME`: one benchmark per subsystem, each comparing majordomo with a baseline
//! or a peer measured in the same run. Each prints a readable table and ends with one JSON line
//! holding its figures, and finishes within 5 minutes.
//!
//! Build everything first: `cargo build --release --workspace`, then
//! `./target/release/majordomo-bench control`.
#![forbid(unsafe_code)]

#[cfg(unix)]
mod bus;
#[cfg(unix)]
mod control;
#[cfg(unix)]
mod fleet;
#[cfg(unix)]
mod guest;
#[cfg(unix)]
mod http;
#[cfg(unix)]
mod monitor;
#[cfg(unix)]
mod pipeline;
#[cfg(unix)]
mod scheduler;
#[cfg(unix)]
mod supervisor;
#[cfg(unix)]
mod util;

#[cfg(not(unix))]
fn main() {
    eprintln!(
        "majordomo-bench runs on Unix: the peers it measures against (nats-server, supervisord, node_exporter) are Unix programs"
    );
    std::process::exit(1);
}

#[cfg(unix)]
use clap::{Parser, Subcommand};

#[cfg(unix)]
#[derive(Parser)]
#[command(name = "majordomo-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[cfg(unix)]
#[derive(Subcommand)]
enum Bench {
    /// Control-socket request/reply round trip against a raw Unix-socket ping-pong.
    Control(control::Args),
    /// Program crash → restarted (backoff 0) against supervisord.
    Supervisor(supervisor::Args),
    /// Message bus: round trip vs raw Unix-socket ping-pong, 1→1 and fan-out throughput vs
    /// nats-server, memory per idle connection.
    Bus(bus::Args),
    /// Health monitor: one collection cycle's CPU, the idle daemon, node_exporter per scrape.
    Monitor(monitor::Args),
    /// Drop-folder pipeline: files/s from drop to upload to a local HTTP sink, with latency.
    Pipeline(pipeline::Args),
    /// Two instances bridged through nats-server: cross-instance publish throughput and request
    /// round trip, against a direct NATS client.
    Fleet(fleet::Args),
    /// Scheduler: N jobs (every 1-60 s) on one daemon: start lateness, CPU %, bytes per job.
    Scheduler(scheduler::Args),
    /// VM guest agent: majordomo and qemu-ga each in the harness's VM: ping round trip,
    /// fsinfo/interfaces time, RSS, idle CPU with and without a host.
    Guest(guest::Args),
    /// HTTP: `status` req/s and p50/p99 over keep-alive, `/metrics` CPU per scrape vs
    /// node_exporter, SSE fan-out of hub events to 100 clients.
    Http(http::Args),
}

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.bench {
            Bench::Control(a) => control::run(a).await,
            Bench::Supervisor(a) => supervisor::run(a).await,
            Bench::Bus(a) => bus::run(a).await,
            Bench::Monitor(a) => monitor::run(a).await,
            Bench::Pipeline(a) => pipeline::run(a).await,
            Bench::Fleet(a) => fleet::run(a).await,
            Bench::Scheduler(a) => scheduler::run(a).await,
            Bench::Guest(a) => guest::run(a).await,
            Bench::Http(a) => http::run(a).await,
        }
    })
}
