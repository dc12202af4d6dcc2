//! Health monitor: CPU time of one collection cycle (measured in this process with the same
//! collector the daemon runs, on the default settings), the daemon's idle RSS and CPU on the
//! default config, and prometheus-node-exporter's CPU time per scrape, measured in the same run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use majordomo_monitor::collect::{Collector, Programs};
use majordomo_monitor::metrics::Snapshot;
use serde_json::json;

use crate::util::{Daemon, table};

#[derive(clap::Args)]
pub struct Args {
    /// Collection cycles to time (the median is reported).
    #[arg(long, default_value_t = 500)]
    pub cycles: usize,
    /// Seconds the idle daemon is watched (60 for the figure; a few for a smoke run).
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// node_exporter scrapes to average over.
    #[arg(long, default_value_t = 50)]
    pub scrapes: usize,
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// user+system CPU time of a process (the one `/proc/PID/stat` parser, in platform).
pub(crate) fn proc_cpu(pid: u32) -> anyhow::Result<Duration> {
    let secs =
        majordomo_platform::process::cpu_seconds(pid).context("no CPU time for the daemon")?;
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) fn proc_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn cycle_cpu(cycles: usize, top: usize) -> Duration {
    let mut c = Collector::new(top);
    let mut snap = Snapshot::default();
    let programs = Programs::default();
    c.collect(&programs, &mut snap);
    let mut samples = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let t = thread_cpu();
        c.collect(&programs, &mut snap);
        samples.push(thread_cpu().saturating_sub(t));
    }
    median(samples)
}

fn node_exporter_bin() -> Option<String> {
    for p in [
        "/usr/bin/prometheus-node-exporter",
        "/usr/sbin/prometheus-node-exporter",
    ] {
        if std::path::Path::new(p).exists() {
            return Some(p.to_string());
        }
    }
    None
}

fn ensure_node_exporter() -> Option<String> {
    if let Some(b) = node_exporter_bin() {
        return Some(b);
    }
    eprintln!("installing prometheus-node-exporter (Debian package)...");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "prometheus-node-exporter",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "prometheus-node-exporter",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    node_exporter_bin()
}

fn scrape(port: u16) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "node_exporter answered {:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
    }
    Ok(body.len())
}

/// CPU per scrape, or `None` (with the reason printed) when node_exporter cannot run here.
pub(crate) fn node_exporter(scrapes: usize) -> Option<Duration> {
    let Some(bin) = ensure_node_exporter() else {
        eprintln!("node_exporter is not available: its figure is left out");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mut child = Command::new(&bin)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let result = (|| -> anyhow::Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while scrape(port).is_err() {
            if Instant::now() > deadline {
                bail!("node_exporter did not answer on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..3 {
            scrape(port)?;
        }
        let before = proc_cpu(pid)?;
        for _ in 0..scrapes {
            scrape(port)?;
        }
        // Let the last responses' work be accounted.
        std::thread::sleep(Duration::from_millis(100));
        let spent = proc_cpu(pid)?.saturating_sub(before);
        Ok(spent / scrapes.max(1) as u32)
    })();
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("node_exporter: {e}");
            None
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cycles = args.cycles.max(1);
    let full = tokio::task::spawn_blocking(move || cycle_cpu(cycles, 5)).await?;
    let bare = tokio::task::spawn_blocking(move || cycle_cpu(cycles, 0)).await?;
    // The daemon on the default config (an empty config file: every default, checks included).
    let daemon = Daemon::start("")?;
    let pid = daemon.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = proc_cpu(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle_cpu = proc_cpu(pid)?.saturating_sub(cpu0);
    let window = t0.elapsed();
    let rss_kb = proc_rss_kb(pid)?;
    drop(daemon);
    let idle_pct = idle_cpu.as_secs_f64() / window.as_secs_f64() * 100.0;
    let scrapes = args.scrapes.max(1);
    let ne = tokio::task::spawn_blocking(move || node_exporter(scrapes)).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    table(
        "health monitor",
        &[
            (
                "one collection cycle, CPU (median, default settings)",
                format!("{:.3} ms", ms(full)),
            ),
            (
                "  without the top-process lists (top = 0)",
                format!("{:.3} ms", ms(bare)),
            ),
            (
                "node_exporter, CPU per scrape",
                ne.map(|d| format!("{:.2} ms", ms(d)))
                    .unwrap_or_else(|| "n/a".into()),
            ),
            ("idle daemon RSS (default config)", format!("{rss_kb} KB")),
            (
                "idle daemon CPU",
                format!(
                    "{idle_pct:.3} % over {:.0} s ({:.0} ms of CPU)",
                    window.as_secs_f64(),
                    ms(idle_cpu)
                ),
            ),
            ("cycles timed / scrapes", format!("{cycles} / {scrapes}")),
        ],
    );
    println!(
        "{}",
        json!({
            "bench": "monitor",
            "cycle_cpu_ms": ms(full),
            "cycle_cpu_ms_no_top": ms(bare),
            "cycle_measured": "in-process, thread CPU time of Collector::collect, default settings (top = 5)",
            "idle_rss_kb": rss_kb,
            "idle_cpu_pct": idle_pct,
            "idle_window_s": window.as_secs_f64(),
            "node_exporter_scrape_cpu_ms": ne.map(ms),
            "cycles": cycles,
            "scrapes": scrapes,
        })
    );
    Ok(())
}
