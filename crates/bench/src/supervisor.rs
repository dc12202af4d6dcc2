//! Program crash → restarted (backoff 0): a program that exits at once, restarted by majordomo,
//! then by supervisord (Debian's `supervisor`, installed if missing) from a temporary config,
//! measured by the same code.
//!
//! The program is `/bin/sh -c 'echo $$ > FIFO'`: each run writes one line into a FIFO that this
//! process reads, and exits. The time between two consecutive lines is one exit → restart →
//! new process running cycle (it includes the program's own start and exit, about a millisecond
//! of `sh`). The same loop run by this process itself (spawn, wait, spawn) is the floor: what a
//! supervisor with zero overhead would achieve.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::util::{Daemon, percentile, table};

#[derive(clap::Args)]
pub struct Args {
    /// Restarts measured under majordomo (and under the floor loop).
    #[arg(long, default_value_t = 300)]
    pub n: usize,
    /// Restarts measured under supervisord (it is much slower; capped by --supervisord-secs).
    #[arg(long, default_value_t = 200)]
    pub supervisord_n: usize,
    /// Longest time spent measuring supervisord.
    #[arg(long, default_value_t = 60)]
    pub supervisord_secs: u64,
    /// Do not try to install supervisord when it is missing.
    #[arg(long)]
    pub no_install: bool,
}

/// Restarts skipped before measuring (start-up effects); supervisord's take a second each.
const WARMUP: usize = 10;
const SUPERVISORD_WARMUP: usize = 2;

fn program(fifo: &Path) -> String {
    format!("echo $$ > {}", fifo.display())
}

/// Reads `n` lines (after the warm-up) from the FIFO; the gaps between their arrival times.
fn intervals(
    fifo: &Path,
    n: usize,
    warmup: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Duration>> {
    // Read and write: the FIFO never reports end-of-file between two writers.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .with_context(|| format!("open {}", fifo.display()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut times = Vec::with_capacity(n + warmup + 1);
    while times.len() < n + warmup + 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(t) => times.push(t),
            Err(_) => break,
        }
    }
    let mut gaps: Vec<Duration> = times.windows(2).skip(warmup).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    Ok(gaps)
}

fn mkfifo(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    let ok = Command::new("mkfifo").arg(&p).status()?.success();
    if !ok {
        bail!("mkfifo {} failed", p.display());
    }
    Ok(p)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("mjbsup").tempdir()?;

    // Floor: this process restarts the program itself.
    let fifo = mkfifo(tmp.path(), "floor.fifo")?;
    let script = program(&fifo);
    let n = a.n;
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || intervals(&fifo, n, WARMUP, Duration::from_secs(60)))
    };
    let stop = Instant::now() + Duration::from_secs(60);
    let floor_runner = std::thread::spawn(move || {
        for _ in 0..n + WARMUP + 1 {
            if Instant::now() > stop {
                break;
            }
            let _ = Command::new("/bin/sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .status();
        }
    });
    let floor = reader
        .join()
        .map_err(|_| anyhow::anyhow!("floor reader panicked"))??;
    let _ = floor_runner.join();

    // majordomo.
    let fifo = mkfifo(tmp.path(), "majordomo.fifo")?;
    let config = format!(
        "[daemon]\nwatch_config = false\n[log]\nfile = false\nlevel = \"error\"\n\n\
         [[program]]\nname = \"flap\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n\
         restart = \"always\"\nbackoff_initial = \"0s\"\nbackoff_max = \"0s\"\nstart_limit = {{ burst = 0 }}\n",
        script = program(&fifo)
    );
    let mj = {
        let fifo = fifo.clone();
        let reader =
            std::thread::spawn(move || intervals(&fifo, n, WARMUP, Duration::from_secs(60)));
        let daemon = Daemon::start(&config)?;
        let r = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        drop(daemon);
        r
    };
    if mj.len() < n {
        bail!(
            "majordomo restarted the program only {} times within 60 s",
            mj.len()
        );
    }

    // supervisord.
    let sup = match supervisord(tmp.path(), &a) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("supervisord not measured: {e:#}");
            None
        }
    };

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let row = |s: &[Duration]| {
        format!(
            "p50 {:.2} ms · p99 {:.2} ms · n {}",
            ms(percentile(s, 50.0)),
            ms(percentile(s, 99.0)),
            s.len()
        )
    };
    let mut rows = vec![
        ("floor (this process: spawn, wait, spawn)", row(&floor)),
        ("majordomo", row(&mj)),
    ];
    let sup_p50 = sup.as_ref().map(|s| ms(percentile(s, 50.0)));
    match &sup {
        Some(s) => {
            rows.push(("supervisord", row(s)));
            rows.push((
                "majordomo vs supervisord (p50)",
                format!(
                    "{:.1} × faster",
                    ms(percentile(s, 50.0)) / ms(percentile(&mj, 50.0))
                ),
            ));
        }
        None => rows.push(("supervisord", "not available".into())),
    }
    table(
        "program exits at once (backoff 0) → next process running",
        &rows,
    );
    println!(
        "{}",
        json!({
            "bench": "supervisor",
            "restart_p50_ms": ms(percentile(&mj, 50.0)),
            "restart_p99_ms": ms(percentile(&mj, 99.0)),
            "restarts": mj.len(),
            "floor_p50_ms": ms(percentile(&floor, 50.0)),
            "supervisord_restart_p50_ms": sup_p50,
            "supervisord_restart_p99_ms": sup.as_ref().map(|s| ms(percentile(s, 99.0))),
            "supervisord_restarts": sup.as_ref().map(|s| s.len()),
            "ratio_p50": sup_p50.map(|s| s / ms(percentile(&mj, 50.0))),
        })
    );
    Ok(())
}

/// `supervisord` on PATH, else installed with apt-get (Debian's `supervisor`).
fn find_supervisord(a: &Args) -> anyhow::Result<PathBuf> {
    let found = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin")])
            .map(|d| d.join("supervisord"))
            .find(|p| p.exists())
    };
    if let Some(p) = found() {
        return Ok(p);
    }
    if a.no_install {
        bail!("supervisord is not installed (apt-get install supervisor)");
    }
    eprintln!("installing supervisord (Debian package `supervisor`)...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "supervisor"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        install();
    }
    found().context("supervisord is still missing after apt-get install supervisor")
}

struct Supd(Child);

impl Drop for Supd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn supervisord(dir: &Path, a: &Args) -> anyhow::Result<Vec<Duration>> {
    let bin = find_supervisord(a)?;
    let fifo = mkfifo(dir, "supervisord.fifo")?;
    let conf = dir.join("supervisord.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
             childlogdir={d}\nloglevel=info\n\n\
             [program:flap]\ncommand=/bin/sh -c '{script}'\nautostart=true\nautorestart=true\n\
             startsecs=0\nstartretries=1000000\nstdout_logfile={d}/flap.log\nredirect_stderr=true\n",
            script = program(&fifo)
        ),
    )?;
    let n = a.supervisord_n;
    let limit = Duration::from_secs(a.supervisord_secs);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || intervals(&fifo, n, SUPERVISORD_WARMUP, limit))
    };
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let guard = Supd(child);
    let r = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    drop(guard);
    if r.len() < n.min(20) {
        let log = std::fs::read_to_string(dir.join("supervisord.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "supervisord restarted the program only {} times in {} s; its log ends with:\n{}",
            r.len(),
            a.supervisord_secs,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(r)
}
