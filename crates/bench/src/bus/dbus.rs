//! The D-Bus peers of `majordomo-bench bus`: dbus-broker and dbus-daemon (Debian packages,
//! installed if missing), each started privately on its own socket in a temporary folder with a
//! minimal session-bus config, and driven through zbus (the D-Bus crate already in the tree).
//!
//! - **method-call round trip**: a requester connection calls `Echo` (a 64-byte array) on a
//!   responder connection that answers with the same bytes.
//! - **signal throughput 1→1**: one connection emits 64-byte signals, another one, with a match
//!   rule on them, counts what arrives.
//!
//! dbus-daemon listens on the address it is given. dbus-broker is started the way systemd starts
//! it: `dbus-broker-launch` gets the listening socket by socket activation (`LISTEN_FDS`), and
//! reaches its own bus through `DBUS_SESSION_BUS_ADDRESS`. Its launcher only logs to the journal's
//! socket; on a machine without journald the bench binds that socket itself for the run (and
//! removes it afterwards), or skips dbus-broker with the reason when it may not.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use zbus::message::Type;
use zbus::{Connection, MatchRule, MessageStream};

/// Which D-Bus implementation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Broker,
    Daemon,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Broker => "dbus-broker",
            Kind::Daemon => "dbus-daemon",
        }
    }
}

/// What one peer measured.
pub(crate) struct Figures {
    pub(crate) rtt: Vec<Duration>,
    pub(crate) msgs_per_s: f64,
}

const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

const JOURNAL: &str = "/run/systemd/journal/socket";
const IFACE: &str = "org.majordomo.Bench";

/// A private bus, stopped on drop.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
    _journal: Option<Journal>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        // The launcher's broker exits when its controller socket closes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The journal socket the bench bound for dbus-broker-launch, drained and removed on drop.
struct Journal {
    stop: Arc<AtomicBool>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// `None` when a journal already listens there.
    fn ensure() -> anyhow::Result<Option<Journal>> {
        let probe = UnixDatagram::unbound()?;
        if probe.connect(JOURNAL).is_ok() {
            return Ok(None);
        }
        let _ = std::fs::remove_file(JOURNAL);
        std::fs::create_dir_all("/run/systemd/journal")
            .and_then(|_| UnixDatagram::bind(JOURNAL))
            .map_err(|e| anyhow::anyhow!(
                "dbus-broker-launch logs only to {JOURNAL}, which is absent, and the bench cannot bind it ({e}); run as root or on a machine with journald"
            ))
            .and_then(|sock| {
                sock.set_read_timeout(Some(Duration::from_millis(200)))?;
                let stop = Arc::new(AtomicBool::new(false));
                let flag = stop.clone();
                let drain = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while !flag.load(Ordering::Relaxed) {
                        let _ = sock.recv(&mut buf);
                    }
                });
                Ok(Some(Journal {
                    stop,
                    drain: Some(drain),
                }))
            })
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.drain.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(JOURNAL);
    }
}

/// The program's path, installing its Debian package if it is missing.
fn program(kind: Kind) -> anyhow::Result<PathBuf> {
    let (bin, package) = match kind {
        Kind::Broker => ("dbus-broker-launch", "dbus-broker"),
        Kind::Daemon => ("dbus-daemon", "dbus-daemon"),
    };
    super::installed(bin, package)
}

fn start(kind: Kind) -> anyhow::Result<Bus> {
    let bin = program(kind)?;
    let dir = tempfile::Builder::new().prefix("mjb-dbus").tempdir()?;
    let socket = dir.path().join("bus");
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        CONFIG.replace("@SOCKET@", &socket.to_string_lossy()),
    )?;
    let address = format!("unix:path={}", socket.display());
    let log = std::fs::File::create(dir.path().join("stderr"))?;
    let (child, journal) = match kind {
        Kind::Daemon => {
            let child = Command::new(&bin)
                .arg(format!("--config-file={}", config.display()))
                .args(["--nofork", "--nopidfile"])
                .arg(format!("--address={address}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            (child, None)
        }
        Kind::Broker => {
            let journal = Journal::ensure()?;
            // Socket activation without unsafe code: the listener is the shell's stdin, which
            // moves it to fd 3 and becomes the launcher (same pid, so LISTEN_PID=$$ holds).
            let listener = UnixListener::bind(&socket)?;
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 DBUS_SESSION_BUS_ADDRESS="$2" exec "$1" --scope user --config-file "$3" 3<&0 0</dev/null"#)
                .arg("sh")
                .arg(&bin)
                .arg(&address)
                .arg(&config)
                .stdin(Stdio::from(OwnedFd::from(listener)))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            (child, journal)
        }
    };
    let mut bus = Bus {
        child,
        address,
        _dir: dir,
        _journal: journal,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = bus.child.try_wait() {
            bail!(
                "{} exited at start ({status}): {}",
                kind.name(),
                std::fs::read_to_string(bus._dir.path().join("stderr")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {} within 10 s",
                kind.name(),
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(bus)
}

async fn connect(address: &str) -> anyhow::Result<Connection> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match zbus::connection::Builder::address(address)
            .max_queued(NonZeroUsize::new(1 << 16).unwrap_or(NonZeroUsize::MIN))
            .build()
            .await
        {
            Ok(c) => return Ok(c),
            // dbus-broker's launcher finishes its set-up after the socket accepts.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => bail!("cannot connect to {address}: {e}"),
        }
    }
}

/// Method-call round trips, `warmup` untimed first.
async fn rtt(address: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let responder = connect(address).await?;
    let name = responder
        .unique_name()
        .context("the responder has no unique name")?
        .to_string();
    let mut calls = MessageStream::from(&responder);
    let echo = tokio::spawn(async move {
        while let Some(Ok(m)) = calls.next().await {
            if m.message_type() != Type::MethodCall {
                continue;
            }
            let data: Vec<u8> = m.body().deserialize().unwrap_or_default();
            if responder.reply(&m.header(), &data).await.is_err() {
                break;
            }
        }
    });
    let requester = connect(address).await?;
    let data = super::payload();
    let warmup = (n / 10).min(1000);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + warmup {
        let t = Instant::now();
        requester
            .call_method(Some(name.as_str()), "/bench", Some(IFACE), "Echo", &data)
            .await
            .context("method call")?;
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    echo.abort();
    samples.sort_unstable();
    Ok(samples)
}

/// Signals one way: what arrives per second, from the first emit to the last arrival.
async fn signals(address: &str, n: u64) -> anyhow::Result<f64> {
    let sub = connect(address).await?;
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .interface(IFACE)
        .member("Tick")
        .build()?;
    let mut stream = MessageStream::for_match_rule(rule, &sub, NonZeroUsize::new(1 << 16)).await?;
    let publisher = connect(address).await?;
    let counter = tokio::spawn(async move {
        let mut k = 0u64;
        let mut last = Instant::now();
        while k < n {
            // Stop waiting 2 s after the last signal: one the bus dropped never comes.
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(Ok(_))) => {
                    k += 1;
                    last = Instant::now();
                }
                _ => break,
            }
        }
        (k, last)
    });
    let data = super::payload();
    let start = Instant::now();
    for _ in 0..n {
        publisher
            .emit_signal(None::<&str>, "/bench", IFACE, "Tick", &data)
            .await?;
    }
    let (got, end) = counter.await?;
    if got < n {
        eprintln!("D-Bus: the subscriber got {got} of {n} signals (the bus dropped the rest)");
    }
    Ok(got as f64 / (end - start).as_secs_f64())
}

/// Runs one peer: round trips, then 1→1 signals.
pub(crate) async fn measure(kind: Kind, rtt_n: usize, n: u64) -> anyhow::Result<Figures> {
    let bus = start(kind)?;
    let rtt = rtt(&bus.address, rtt_n)
        .await
        .with_context(|| format!("{} round trips", kind.name()))?;
    let msgs_per_s = signals(&bus.address, n)
        .await
        .with_context(|| format!("{} signals", kind.name()))?;
    drop(bus);
    Ok(Figures { rtt, msgs_per_s })
}
