//! The guest agent in a real VM, side by side with Debian's qemu-ga, each booted by the harness
//! in `shared/tools/vm` in the same kind of guest (a disk and a NIC, no second port): first
//! answer, guest-ping round trip p50/p99, guest-get-fsinfo and guest-network-get-interfaces
//! time, agent RSS (the harness's `agent-mem` console line, smaps_rollup), idle CPU with a
//! silent host connected and with none (`agent-cpu-total` ticks, 1/100 s). majordomo runs
//! in the guest-only mode README documents ([`GUEST_ONLY`]: one thread, monitor and HTTP
//! off). Bars: round trip ≤ qemu-ga's; idle CPU 0.00 % with no host; RSS ≤ 2 × qemu-ga's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::util::{majordomo_bin, percentile, table, us};

#[derive(clap::Args)]
pub struct Args {
    /// guest-ping round trips per agent.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Seconds of each idle-CPU window (host connected, then none).
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// A short run for CI: 100 pings, 6 s windows.
    #[arg(long)]
    pub smoke: bool,
}

/// The guest-only mode README documents: the agent, the control socket, the bus; one thread,
/// no monitor, no HTTP, no config watcher.
const GUEST_ONLY: &str = "[daemon]\nthreads = 1\nwatch_config = false\n[guest]\n[monitor]\nenabled = false\n[http]\nenabled = false\n";

fn harness() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("MAJORDOMO_VM_HARNESS") {
        return Ok(PathBuf::from(d));
    }
    let me = std::env::current_exe()?;
    me.ancestors()
        .map(|a| a.join("shared/tools/vm"))
        .find(|d| d.join("vm-env.sh").is_file())
        .context("the VM harness (shared/tools/vm) is not beside the repository; set MAJORDOMO_VM_HARNESS")
}

struct Vm {
    env_sh: PathBuf,
    sock: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = Command::new(&self.env_sh)
            .arg("stop")
            .arg(&self.sock)
            .output();
    }
}

impl Vm {
    fn console(&self) -> String {
        let mut p = self.sock.clone().into_os_string();
        p.push(".d/console.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// The latest `agent-cpu-total` sample after `after` samples: (guest uptime s, ticks).
    fn cpu_sample(&self, after: usize) -> anyhow::Result<(usize, f64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.console();
            let samples: Vec<(f64, u64)> = text
                .lines()
                .filter(|l| l.contains("agent-cpu-total"))
                .filter_map(|l| {
                    let t = l
                        .split("t=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()?;
                    let k = l.split("ticks=").nth(1)?.trim().parse().ok()?;
                    Some((t, k))
                })
                .collect();
            if samples.len() > after {
                let (t, k) = samples[samples.len() - 1];
                return Ok((samples.len(), t, k));
            }
            if Instant::now() > deadline {
                bail!("no agent-cpu-total line on the console");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn rss_kb(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(kb) = self
                .console()
                .lines()
                .filter(|l| l.contains("agent-mem"))
                .filter_map(|l| {
                    l.split("Rss:")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .next_back()
            {
                return Ok(kb);
            }
            if Instant::now() > deadline {
                bail!("no agent-mem line on the console");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

struct Qga {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Qga {
    fn connect(path: &Path) -> anyhow::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    return Ok(Qga { s, buf: Vec::new() });
                }
                Err(e) if Instant::now() > deadline => bail!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn fill(&mut self) -> anyhow::Result<()> {
        let mut b = [0u8; 65536];
        match self.s.read(&mut b) {
            Ok(0) => bail!("the host socket closed"),
            Ok(n) => self.buf.extend_from_slice(&b[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn sync(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut id = 7_000_000u64;
        let mut next_send = Instant::now();
        loop {
            if Instant::now() > deadline {
                bail!("the agent never answered guest-sync-delimited");
            }
            if Instant::now() >= next_send {
                id += 1;
                let mut req = vec![0xFF];
                req.extend(
                    json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                        .to_string()
                        .bytes(),
                );
                req.push(b'\n');
                self.s.write_all(&req)?;
                next_send = Instant::now() + Duration::from_secs(1);
            }
            self.fill()?;
            let want = format!("{{\"return\":{id}}}");
            let want2 = format!("{{\"return\": {id}}}");
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if let Some(i) = text.find(&want).or_else(|| text.find(&want2)) {
                let end = text[i..]
                    .find('\n')
                    .map(|e| i + e + 1)
                    .unwrap_or(text.len());
                self.buf.drain(..end.min(self.buf.len()));
                return Ok(());
            }
        }
    }

    fn ask(&mut self, cmd: &str) -> anyhow::Result<Value> {
        self.s
            .write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(serde_json::from_slice(&line)?);
            }
            if Instant::now() > deadline {
                bail!("no reply to {cmd}");
            }
            self.fill()?;
        }
    }
}

struct Figures {
    first_answer_s: f64,
    p50: Duration,
    p99: Duration,
    fsinfo: Duration,
    network: Duration,
    rss_kb: u64,
    idle_connected: f64,
    idle_none: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    percentile(&v, 50.0)
}

/// Boots one agent and measures it; the VM is stopped before this returns.
#[allow(clippy::too_many_arguments)] // one call per agent, every argument differs
fn measure(
    env_sh: &Path,
    dir: &Path,
    label: &str,
    agent: &Path,
    agent_args: &[&str],
    extra_files: Option<&str>,
    n: usize,
    idle: Duration,
) -> anyhow::Result<Figures> {
    let sock = dir.join(format!("{label}.sock"));
    let mut boot = Command::new(env_sh);
    boot.arg("boot")
        .arg(agent)
        .arg(&sock)
        .arg("--")
        .args(agent_args);
    boot.env("QGA_DISK", "8")
        .env("QGA_NIC", "1")
        .env("QGA_STATS_PERIOD", "1")
        .env("QGA_MEM", "384M")
        .env_remove("QGA_EXTRA_PORTS");
    if let Some(f) = extra_files {
        boot.env("QGA_EXTRA_FILES", f);
    }
    let t0 = Instant::now();
    let out = boot.output()?;
    if !out.status.success() {
        bail!("boot {label}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let vm = Vm {
        env_sh: env_sh.to_path_buf(),
        sock: sock.clone(),
    };
    let mut q = Qga::connect(&sock)?;
    q.sync(Duration::from_secs(240))?;
    let first_answer_s = t0.elapsed().as_secs_f64();
    for _ in 0..20 {
        q.ask("guest-ping")?;
    }
    let mut rtt = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let v = q.ask("guest-ping")?;
        rtt.push(t.elapsed());
        if v.get("return").is_none() {
            bail!("{label}: guest-ping: {v}");
        }
    }
    rtt.sort_unstable();
    let mut timed = |cmd: &str| -> anyhow::Result<Duration> {
        let mut v = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let r = q.ask(cmd)?;
            v.push(t.elapsed());
            if r.get("return").is_none() {
                bail!("{label}: {cmd}: {r}");
            }
        }
        Ok(median(v))
    };
    let fsinfo = timed("guest-get-fsinfo")?;
    let network = timed("guest-network-get-interfaces")?;
    let rss_kb = vm.rss_kb()?;
    // Idle with a silent host connected, then with none.
    let window = |vm: &Vm| -> anyhow::Result<f64> {
        // Start at a fresh sample, taken after whatever ran before the window.
        let (now, _, _) = vm.cpu_sample(0)?;
        let (seen, ta, ka) = vm.cpu_sample(now)?;
        std::thread::sleep(idle);
        let (_, tb, kb) = vm.cpu_sample(seen)?;
        Ok(if tb > ta {
            (kb.saturating_sub(ka)) as f64 / 100.0 / (tb - ta) * 100.0
        } else {
            0.0
        })
    };
    let idle_connected = window(&vm)?;
    drop(q);
    std::thread::sleep(Duration::from_secs(1));
    let idle_none = window(&vm)?;
    drop(vm);
    Ok(Figures {
        first_answer_s,
        p50: rtt
            .first()
            .map(|_| percentile(&rtt, 50.0))
            .unwrap_or_default(),
        p99: percentile(&rtt, 99.0),
        fsinfo,
        network,
        rss_kb,
        idle_connected,
        idle_none,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (n, idle) = if args.smoke {
        (100, Duration::from_secs(6))
    } else {
        (args.n, Duration::from_secs(args.idle_secs))
    };
    let h = harness()?;
    let env_sh = h.join("vm-env.sh");
    let check = Command::new(&env_sh).arg("check").output()?;
    if !check.status.success() {
        bail!(
            "the VM harness is not ready (run `{} setup`):\n{}",
            env_sh.display(),
            String::from_utf8_lossy(&check.stdout)
        );
    }
    let qga_ref = String::from_utf8(
        Command::new(&env_sh)
            .args(["path", "qemu-ga"])
            .output()?
            .stdout,
    )?
    .trim()
    .to_string();
    let dir = tempfile::Builder::new().prefix("mjbg").tempdir()?;
    let bin = majordomo_bin()?;
    let agent = dir.path().join("majordomo");
    std::fs::copy(&bin, &agent)?;
    // The guest holds the agent in its RAM disk: strip the copy (the figures are the code's).
    let _ = Command::new("strip").arg(&agent).status();
    let config = dir.path().join("guest.toml");
    std::fs::write(&config, GUEST_ONLY)?;
    let files = format!("{}:/etc/majordomo.toml", config.display());
    let md = tokio::task::block_in_place(|| {
        measure(
            &env_sh,
            dir.path(),
            "md",
            &agent,
            &[
                "--home",
                "/tmp/md",
                "--config",
                "/etc/majordomo.toml",
                "run",
            ],
            Some(&files),
            n,
            idle,
        )
    })?;
    let qg = tokio::task::block_in_place(|| {
        measure(
            &env_sh,
            dir.path(),
            "qga",
            Path::new(&qga_ref),
            &[],
            None,
            n,
            idle,
        )
    })?;
    let ms = |d: Duration| format!("{:.2} ms", us(d) / 1000.0);
    let row = |a: String, b: String| format!("{a:>12}   {b:>12}");
    table(
        &format!(
            "guest agent in a VM (TCG), majordomo vs qemu-ga: {n} pings, {}s idle windows",
            idle.as_secs()
        ),
        &[
            ("", row("majordomo".into(), "qemu-ga".into())),
            (
                "first answer after boot",
                row(
                    format!("{:.1} s", md.first_answer_s),
                    format!("{:.1} s", qg.first_answer_s),
                ),
            ),
            ("guest-ping p50", row(ms(md.p50), ms(qg.p50))),
            ("guest-ping p99", row(ms(md.p99), ms(qg.p99))),
            (
                "guest-get-fsinfo (median)",
                row(ms(md.fsinfo), ms(qg.fsinfo)),
            ),
            (
                "network-get-interfaces (median)",
                row(ms(md.network), ms(qg.network)),
            ),
            (
                "agent RSS",
                row(format!("{} kB", md.rss_kb), format!("{} kB", qg.rss_kb)),
            ),
            (
                "idle CPU, silent host connected",
                row(
                    format!("{:.2} %", md.idle_connected),
                    format!("{:.2} %", qg.idle_connected),
                ),
            ),
            (
                "idle CPU, no host",
                row(
                    format!("{:.2} %", md.idle_none),
                    format!("{:.2} %", qg.idle_none),
                ),
            ),
        ],
    );
    let bars = [
        ("round trip p50 <= qemu-ga's", md.p50 <= qg.p50),
        ("idle CPU 0.00 % with no host", md.idle_none < 0.005),
        ("RSS <= 2 x qemu-ga's", md.rss_kb <= 2 * qg.rss_kb),
    ];
    for (b, ok) in bars {
        println!("  bar: {b}: {}", if ok { "met" } else { "NOT met" });
    }
    let f = |x: &Figures| {
        json!({
            "first_answer_s": x.first_answer_s,
            "ping_p50_us": us(x.p50), "ping_p99_us": us(x.p99),
            "fsinfo_us": us(x.fsinfo), "network_us": us(x.network),
            "rss_kb": x.rss_kb,
            "idle_cpu_connected_pct": x.idle_connected, "idle_cpu_no_host_pct": x.idle_none,
        })
    };
    println!(
        "{}",
        json!({"bench": "guest", "n": n, "idle_secs": idle.as_secs(), "majordomo": f(&md), "qemu_ga": f(&qg),
               "bars_met": bars.iter().all(|(_, ok)| *ok)})
    );
    Ok(())
}
