//! `majordomo-bench scheduler`: N jobs (`every` between 1 s and 60 s, publishing a bus message)
//! on one daemon for a while: lateness of job starts against their planned time (as each run
//! record has it), daemon CPU %, and resident memory per job (against the same daemon with no
//! jobs, measured in the same run). The lateness is split by planned instant: how late its first
//! start was (the timer's wake-up) and how much later its last (the burst of starts due at that
//! instant, up to thousands when many periods divide it). Beside it, this machine's floor in the
//! same window: how late a plain thread's sleep to each next 100 ms boundary wakes (a VM's timer
//! wake-ups alone can be late by milliseconds; the scheduler cannot start a run earlier than the
//! OS wakes it).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::util::{Daemon, table};

#[derive(clap::Args)]
pub struct Args {
    /// How many jobs.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 120)]
    pub secs: u64,
}

fn proc_cpu(pid: u32) -> anyhow::Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s.rsplit_once(')').context("odd stat line")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

fn proc_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The same daemon without jobs, for the memory per job.
    let base = Daemon::start("[monitor]\nenabled = false\n")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base_rss = proc_rss_kb(base.pid())?;
    drop(base);

    let mut cfg = String::from(
        "[monitor]\nenabled = false\n[scheduler]\nmax_concurrent = 64\nhistory = 10\n",
    );
    for i in 0..args.jobs {
        let every = 1 + (i * 7919) % 60;
        cfg.push_str(&format!(
            "[[job]]\nname = \"j{i}\"\nevery = \"{every}s\"\npublish = {{ topic = \"bench.j{i}\", data = {{ n = {i} }} }}\n"
        ));
    }
    let d = Daemon::start(&cfg)?;
    // Settle: start-up work (records of 10,000 jobs) is not the steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = d.pid();
    let from_ms = jiff_now_ms();
    let cpu0 = proc_cpu(pid)?;
    let t0 = Instant::now();
    let floor = std::thread::spawn({
        let until = t0 + Duration::from_secs(args.secs);
        move || os_sleep_lateness_us(until)
    });
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let cpu = proc_cpu(pid)?.saturating_sub(cpu0);
    let window = t0.elapsed();
    let rss = proc_rss_kb(pid)?;
    let to_ms = jiff_now_ms();
    // Lateness from every job's history, through the socket (`job.history`).
    let mut late = Vec::new();
    // Per planned instant: the lateness of its first start (when the timer woke) and of its last
    // (after the burst of starts due at that instant).
    let mut instants: std::collections::BTreeMap<i64, (i64, i64, usize)> = Default::default();
    {
        use std::io::{BufRead, BufReader, Write};
        let s = std::os::unix::net::UnixStream::connect(&d.socket)?;
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        for i in 0..args.jobs {
            writeln!(w, r#"{{"cmd":"job.history","name":"j{i}","limit":1000}}"#)?;
            line.clear();
            r.read_line(&mut line)?;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            for run in v["ok"].as_array().into_iter().flatten() {
                let p = run["planned_ms"].as_i64().unwrap_or(0);
                if p >= from_ms && p < to_ms && run["trigger"] == "schedule" {
                    let l = run["late_ms"].as_i64().unwrap_or(0);
                    late.push(l);
                    let e = instants.entry(p).or_insert((l, l, 0));
                    *e = (e.0.min(l), e.1.max(l), e.2 + 1);
                }
            }
        }
    }
    drop(d);
    late.sort_unstable();
    let mut os = floor.join().unwrap_or_default();
    os.sort_unstable();
    let os_ms = |p: f64| pct(&os, p) as f64 / 1000.0;
    let (os50, os99, osmax) = (
        os_ms(50.0),
        os_ms(99.0),
        os.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    let mut first: Vec<i64> = instants.values().map(|v| v.0).collect();
    let mut spread: Vec<i64> = instants.values().map(|v| v.1 - v.0).collect();
    first.sort_unstable();
    spread.sort_unstable();
    let biggest = instants.values().map(|v| v.2).max().unwrap_or(0);
    let cpu_pct = cpu.as_secs_f64() / window.as_secs_f64() * 100.0;
    let bytes_per_job = (rss.saturating_sub(base_rss) * 1024) as f64 / args.jobs.max(1) as f64;
    let (p50, p99, max) = (
        pct(&late, 50.0),
        pct(&late, 99.0),
        late.last().copied().unwrap_or(0),
    );
    table(
        &format!(
            "scheduler: {} jobs (every 1-60 s, publish) for {} s",
            args.jobs, args.secs
        ),
        &[
            (
                "runs measured (history keeps the last 10 per job)",
                late.len().to_string(),
            ),
            (
                "lateness p50 / p99 / max",
                format!("{p50} / {p99} / {max} ms  (bar: p99 <= 5 ms)"),
            ),
            (
                "first start of each instant: lateness p50 / p99 (the wake-up)",
                format!("{} / {} ms", pct(&first, 50.0), pct(&first, 99.0)),
            ),
            (
                "last minus first start of each instant: p99 / max (the burst)",
                format!(
                    "{} / {} ms  (the largest instant: {biggest} starts)",
                    pct(&spread, 99.0),
                    spread.last().copied().unwrap_or(0)
                ),
            ),
            (
                "this machine's floor: a plain sleep's lateness p50 / p99 / max",
                format!(
                    "{os50:.2} / {os99:.2} / {osmax:.2} ms  ({} wake-ups)",
                    os.len()
                ),
            ),
            ("daemon CPU", format!("{cpu_pct:.2} %  (bar: <= 0.5 %)")),
            (
                "RSS with jobs / without",
                format!("{rss} KB / {base_rss} KB"),
            ),
            (
                "memory per job",
                format!("{bytes_per_job:.0} bytes  (bar: <= 2048)"),
            ),
        ],
    );
    println!(
        "{}",
        json!({
            "bench": "scheduler",
            "jobs": args.jobs,
            "secs": args.secs,
            "runs": late.len(),
            "lateness_p50_ms": p50,
            "lateness_p99_ms": p99,
            "lateness_max_ms": max,
            "wake_p50_ms": pct(&first, 50.0),
            "wake_p99_ms": pct(&first, 99.0),
            "burst_spread_p99_ms": pct(&spread, 99.0),
            "burst_spread_max_ms": spread.last().copied().unwrap_or(0),
            "largest_instant_starts": biggest,
            "os_sleep_p50_ms": os50,
            "os_sleep_p99_ms": os99,
            "os_sleep_max_ms": osmax,
            "cpu_pct": cpu_pct,
            "rss_kb": rss,
            "base_rss_kb": base_rss,
            "bytes_per_job": bytes_per_job,
        })
    );
    Ok(())
}

/// How late (µs) a plain thread wakes from a sleep to each next 100 ms boundary of the wall
/// clock, until `until`.
fn os_sleep_lateness_us(until: Instant) -> Vec<i64> {
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    };
    let mut late = Vec::new();
    while Instant::now() < until {
        let next = (now_us() / 100_000 + 1) * 100_000;
        std::thread::sleep(Duration::from_micros((next - now_us()).max(0) as u64));
        late.push((now_us() - next).max(0));
    }
    late
}

fn jiff_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
