//! Drop-folder pipeline: small files per second from drop to upload, and drop-to-upload
//! latency, with durability on (fsync of every file and folder), the passthrough converter and
//! a local HTTP sink (axum, in this process) that records each request's idempotency key.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::json;

use crate::util::{majordomo_bin, percentile, table};

#[derive(clap::Args)]
pub struct Args {
    /// Files to drop.
    #[arg(long, default_value_t = 20_000)]
    pub n: usize,
    /// Drop rate in files/s; 0 drops them all as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The pipeline's `settle` (how long a file must stay unchanged before it is taken).
    #[arg(long, default_value = "100ms")]
    pub settle: String,
    /// The uploader's concurrency.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Chaos mode: SIGKILL the daemon this many times at random moments while dropping (and
    /// once more after the last drop), restarting it each time; then account for every input.
    #[arg(long, default_value_t = 0)]
    pub kills: usize,
    /// Seed of the random kill moments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The daemon under test, restartable in the same home (unlike `util::Daemon`).
struct Proc {
    home: PathBuf,
    child: Child,
}

impl Proc {
    fn start(home: &Path) -> anyhow::Result<Proc> {
        let socket = home.join("bench").join("majordomo.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(majordomo_bin()?)
            .arg("--home")
            .arg(home)
            .args(["--instance", "bench", "run"])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(home.join("daemon.stderr"))?,
            )
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "daemon did not start; see {}",
                    home.join("daemon.stderr").display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Proc {
            home: home.to_path_buf(),
            child,
        })
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        let _ = &self.home;
    }
}

#[derive(Default)]
struct Received {
    /// file index → (first receipt, keys seen)
    files: HashMap<usize, (Instant, HashSet<String>)>,
    requests: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let recv: Arc<Mutex<Received>> = Arc::default();
    let r = recv.clone();
    let app = axum::Router::new().route(
        "/upload",
        axum::routing::post(move |headers: HeaderMap, _body: Bytes| {
            let r = r.clone();
            async move {
                let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
                let key = get("idempotency-key").to_string();
                let idx = get("x-file-name")
                    .strip_prefix('f')
                    .and_then(|s| s.strip_suffix(".dat"))
                    .and_then(|s| s.parse::<usize>().ok());
                if let (Some(idx), Ok(mut r)) = (idx, r.lock()) {
                    r.requests += 1;
                    r.files
                        .entry(idx)
                        .or_insert_with(|| (Instant::now(), HashSet::new()))
                        .1
                        .insert(key);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let area = tempfile::Builder::new().prefix("mjpipe").tempdir()?;
    let inbox = area.path().join("in");
    let staging = area.path().join("staging");
    std::fs::create_dir_all(&inbox)?;
    std::fs::create_dir_all(&staging)?;
    let config = format!(
        "[daemon]\nwatch_config = false\n[log]\nfile = false\nlevel = \"warn\"\n\n\
         [[pipeline]]\nname = \"bench\"\nwatch = [\"{}\"]\nsettle = \"{}\"\nupload = \"sink\"\n\
         work_dir = \"{}\"\nhigh_water = {}\n\n\
         [[uploader]]\nname = \"sink\"\nurl = \"http://{addr}/upload\"\nconcurrency = {}\ntimeout = \"30s\"\n",
        inbox.display(),
        args.settle,
        area.path().join("work").display(),
        args.n.max(10_000),
        args.concurrency,
    );
    let home = area.path().join("home");
    std::fs::create_dir_all(home.join("bench"))?;
    std::fs::write(home.join("bench").join("config.toml"), &config)?;
    let mut daemon = Proc::start(&home)?;
    // Kill moments: file indices at which the daemon is SIGKILLed and restarted.
    let mut seed = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut kill_at: Vec<usize> = (0..args.kills)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % args.n.max(1)
        })
        .collect();
    kill_at.sort_unstable();
    let mut kills = 0;
    // Let the pipeline subsystem come up (its start-up scan would find early files anyway).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Producer contract: write under a temp name elsewhere on the same file system, rename in.
    let mut dropped: Vec<Instant> = Vec::with_capacity(args.n);
    let t0 = Instant::now();
    for i in 0..args.n {
        if args.rate > 0 {
            let due = t0 + Duration::from_secs_f64(i as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let name = format!("f{i:07}.dat");
        let tmp: PathBuf = staging.join(&name);
        std::fs::write(&tmp, format!("report {i}: a small file of test results\n"))?;
        std::fs::rename(&tmp, inbox.join(&name))?;
        dropped.push(Instant::now());
        while kill_at.first() == Some(&i) {
            kill_at.remove(0);
            daemon.kill9();
            kills += 1;
            daemon = Proc::start(&home)?;
        }
    }
    if args.kills > 0 {
        // And once while it drains the queue.
        tokio::time::sleep(Duration::from_millis(200)).await;
        daemon.kill9();
        kills += 1;
        daemon = Proc::start(&home)?;
    }
    let drop_s = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let n = recv.lock().map(|r| r.files.len()).unwrap_or(0);
        if n >= args.n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} of {} files uploaded within 240 s; see {}",
                args.n,
                home.join("daemon.stderr").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let daemon_cpu_s = majordomo_platform::process::cpu_seconds(daemon.child.id());
    let r = recv.lock().ok().context("sink state poisoned")?;
    let last = r.files.values().map(|(t, _)| *t).max().unwrap_or(t0);
    let total_s = last.duration_since(t0).as_secs_f64();
    let files_per_s = args.n as f64 / total_s;
    let mut lat: Vec<Duration> = r
        .files
        .iter()
        .map(|(i, (t, _))| t.saturating_duration_since(dropped[*i]))
        .collect();
    lat.sort_unstable();
    let two_keys = r.files.values().filter(|(_, k)| k.len() > 1).count();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99) = (ms(percentile(&lat, 50.0)), ms(percentile(&lat, 99.0)));
    table(
        &format!(
            "pipeline: {} files dropped → settled ({}) → claimed (fsync) → queued → uploaded, passthrough, uploader concurrency {}",
            args.n, args.settle, args.concurrency
        ),
        &[
            (
                "drop rate",
                if args.rate == 0 {
                    format!(
                        "burst ({:.0} files/s by the producer)",
                        args.n as f64 / drop_s
                    )
                } else {
                    format!("{} files/s", args.rate)
                },
            ),
            ("first drop → last upload", format!("{total_s:.2} s")),
            ("throughput", format!("{files_per_s:.0} files/s")),
            ("drop → upload p50 / p99", format!("{p50:.1} / {p99:.1} ms")),
            (
                if args.kills > 0 {
                    "daemon CPU per file (last process only)"
                } else {
                    "daemon CPU per file (user+sys)"
                },
                daemon_cpu_s
                    .map(|c| format!("{:.0} µs", c * 1e6 / args.n as f64))
                    .unwrap_or_else(|| "n/a".into()),
            ),
            (
                "requests / files / under 2+ keys",
                format!("{} / {} / {two_keys}", r.requests, r.files.len()),
            ),
        ],
    );
    println!(
        "{}",
        json!({
            "bench": "pipeline",
            "kills": kills,
            "n": args.n,
            "rate": args.rate,
            "settle": args.settle,
            "files_per_s": files_per_s,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "requests": r.requests,
            "daemon_cpu_us_per_file": daemon_cpu_s.map(|c| c * 1e6 / args.n as f64),
            "files_under_two_keys": two_keys,
        })
    );
    if args.kills > 0 {
        let lost = args.n - r.files.len();
        let repeats = r.requests - r.files.values().map(|(_, k)| k.len()).sum::<usize>();
        println!(
            "chaos: dropped {} · kill -9 {kills} · uploaded {} · lost {lost} · under two keys {two_keys} · repeats under the same key {repeats} (the server drops these)",
            args.n,
            r.files.len()
        );
        if lost > 0 || two_keys > 0 {
            bail!("chaos check failed: {lost} lost, {two_keys} under two keys");
        }
    }
    drop(daemon);
    Ok(())
}
