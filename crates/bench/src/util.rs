//! What every benchmark needs: the majordomo binary, a daemon in a temporary home, percentiles,
//! and the table + JSON-line report.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The `majordomo` binary: `$MAJORDOMO_BIN`, else the one beside this executable (built by
/// `cargo build --release` if it is missing).
pub fn majordomo_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MAJORDOMO_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("bench executable has no folder")?;
    let bin = dir.join(format!("majordomo{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "majordomo", "--bin", "majordomo"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        eprintln!("building the majordomo binary ({profile})...");
        if !cmd.status()?.success() || !bin.exists() {
            bail!(
                "{} not found; run `cargo build --release --workspace` first",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// A daemon running in a temporary home, stopped on drop.
pub struct Daemon {
    pub home: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Daemon {
    /// Starts `majordomo run` with `config` as its config file and waits until it answers.
    pub fn start(config: &str) -> anyhow::Result<Daemon> {
        let home = tempfile::Builder::new().prefix("mjb").tempdir()?;
        let dir = home.path().join("bench");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.toml"), config)?;
        let child = Command::new(majordomo_bin()?)
            .arg("--home")
            .arg(home.path())
            .args(["--instance", "bench", "run"])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path().join("daemon.stderr"))?)
            .spawn()?;
        let socket = dir.join("majordomo.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "daemon did not start; see {}",
                    home.path().join("daemon.stderr").display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Daemon {
            home,
            socket,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints rows as an aligned table.
pub fn table(title: &str, rows: &[(&str, String)]) {
    println!("\n{title}");
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}
