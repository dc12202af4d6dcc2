//! The guest-agent subsystem: majordomo inside a VM answers the QEMU Guest Agent protocol on
//! the virtio-serial port `org.qemu.guest_agent.0`, so libvirt (`virsh domfsinfo`, `domifaddr
//! --source agent`, `guestinfo`, `domtime`, ...) and Proxmox (agent checks, fsfreeze for
//! backups, `qm guest exec`) drive it unchanged.
//!
//! `frame` splits the host's byte stream (0xFF resync), `qmp` is the envelope and the command
//! table with the allow/block policy, `agent` answers (one request at a time, like qemu-ga),
//! `sys` reads the facts, `port` finds the port and `io` waits on it without polling.
#![deny(unsafe_code)]

pub mod agent;
pub mod apps;
pub mod audit;
pub mod config;
pub mod control;
pub mod diagnose;
pub mod frame;
pub mod io;
pub mod manage;
pub mod metrics;
pub mod port;
pub mod qmp;
pub mod sys;

use std::sync::Arc;
use std::time::Duration;

use majordomo_core::lifecycle::{BoxFuture, Ctx, Off, Subsystem};
use tokio_util::sync::CancellationToken;

pub use config::{GuestConfig, validate};

use crate::agent::{Agent, Outcome};
use crate::frame::{Frame, Framer};

/// The `guest` subsystem; the router is the bus the control port's sessions join.
pub struct Guest {
    router: Arc<majordomo_bus::Router>,
}

impl Guest {
    pub fn new(router: Arc<majordomo_bus::Router>) -> Self {
        Self { router }
    }
}

/// The control port (`org.majordomo.0`) `[guest]` would use on this machine, if any.
pub fn control_port(c: &GuestConfig) -> Option<std::path::PathBuf> {
    if c.control_port == Some(false) {
        return None;
    }
    port::resolve(c.control_port_path.as_deref(), control::CONTROL_PORT, None)
}

/// The port `[guest]` would use on this machine, if any.
pub fn agent_port(c: &GuestConfig) -> Option<std::path::PathBuf> {
    port::resolve(
        c.port.as_deref(),
        port::AGENT_PORT,
        c.serial_fallback.as_deref(),
    )
}

impl Subsystem for Guest {
    type Config = GuestConfig;

    fn name(&self) -> &'static str {
        "guest"
    }

    fn enabled(&self, c: &GuestConfig) -> bool {
        // Default: on exactly when the agent port exists (inside a VM whose host asked for an
        // agent); elsewhere one stat() and nothing runs.
        c.enabled
            .unwrap_or_else(|| agent_port(c).is_some() || control_port(c).is_some())
    }

    /// Off: the management commands say that `[guest]` is off here and how to turn it on.
    fn off(&self, off: &Off<'_>) {
        manage::register_off(off);
    }

    fn run(&self, ctx: Ctx<GuestConfig>) -> BoxFuture {
        let router = self.router.clone();
        Box::pin(async move {
            let cfg = (**ctx.config.borrow()).clone();
            let audit = Arc::new(audit::Audit::new(Some(
                ctx.state_dir().join("guest-audit.jsonl"),
            )));
            manage::register(&ctx, &cfg, audit.clone());
            let agent = Arc::new(Agent::new(cfg.clone(), agent::QGA_ORIGIN).with_audit(audit));
            if cfg.control_port != Some(false) {
                let (_tx, rx) =
                    tokio::sync::watch::channel(Arc::new(majordomo_bus::SessionConfig::default()));
                let control = control::Control {
                    session: majordomo_bus::Session {
                        commands: ctx.commands.clone(),
                        daemon: ctx.daemon.clone(),
                        router: router.clone(),
                        instance: ctx.layout().instance.as_str().into(),
                        config: rx,
                        token: ctx.token.clone(),
                        tracker: ctx.tracker.clone(),
                    },
                    router,
                    gate: control::Gate::new(&cfg.control_commands),
                    metrics_every: cfg.metrics_interval.get(),
                };
                let (c, conf) = (ctx.clone(), cfg.clone());
                ctx.tracker.spawn(async move {
                    // Keep the sender: a closed config channel would end nothing, but the
                    // session reads it for every connection.
                    let _keep = _tx;
                    serve_control(&c, &conf, control).await
                });
            }
            ctx.ready();
            if agent_port(&cfg).is_some() || control_port(&cfg).is_none() {
                serve_port(&ctx, &cfg, agent).await;
            } else {
                // Only the control port exists (a host that wants the protocol, not QGA).
                ctx.token.cancelled().await;
            }
            Ok(())
        })
    }
}

/// Opens the agent port and serves it until cancelled; a port that disappears or refuses to
/// open (device hot-unplugged, the Windows driver restarting) is reopened with a backoff.
async fn serve_port(ctx: &Ctx<GuestConfig>, cfg: &GuestConfig, agent: Arc<Agent>) {
    let mut delay = Duration::from_millis(250);
    loop {
        let Some(path) = agent_port(cfg) else {
            ctx.detail("waiting for the agent port to appear");
            if sleep_or_cancel(&ctx.token, delay).await {
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(30));
            continue;
        };
        match io::Port::open(&path) {
            Ok(p) => {
                delay = Duration::from_millis(250);
                tracing::info!(port = %path.display(), "guest agent listening");
                ctx.detail(format!("port {}", path.display()));
                let r = serve(p, &agent, &ctx.token).await;
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(port = %path.display(), error = %e, "the agent port failed; reopening it");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(port = %path.display(), error = %e, retry_in = ?delay, "cannot open the agent port; retrying");
                ctx.detail(format!("cannot open {}: {e}", path.display()));
            }
        }
        if sleep_or_cancel(&ctx.token, delay).await {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// How long after start an absent control port is looked for again (the boot race in
/// [`serve_control`]).
const CONTROL_PORT_GRACE: Duration = Duration::from_secs(60);
/// How often an absent control port is looked for during [`CONTROL_PORT_GRACE`].
const CONTROL_PORT_POLL: Duration = Duration::from_millis(250);

/// Serves the control port (`org.majordomo.0`) while it exists, reopening it like the agent port.
async fn serve_control(ctx: &Ctx<GuestConfig>, cfg: &GuestConfig, control: control::Control) {
    let mut delay = Duration::from_millis(250);
    let started = tokio::time::Instant::now();
    loop {
        let Some(path) = control_port(cfg) else {
            // No such port. At boot the agent can start before the port has its name (the
            // host names it in a message after the device appears, then udev makes the link),
            // so look again every CONTROL_PORT_POLL for CONTROL_PORT_GRACE (a stat each: the
            // port is served within a moment of its link appearing). After that the host did
            // not opt in: unset (the default), nothing runs for it (no timer: a port
            // hot-plugged later is served after a restart); `true` says it must be there, so
            // look again now and then.
            let wait = if started.elapsed() < CONTROL_PORT_GRACE {
                CONTROL_PORT_POLL
            } else if cfg.control_port == Some(true) {
                Duration::from_secs(60)
            } else {
                ctx.token.cancelled().await;
                return;
            };
            if sleep_or_cancel(&ctx.token, wait).await {
                return;
            }
            continue;
        };
        match io::Port::open(&path) {
            Ok(p) => {
                delay = Duration::from_millis(250);
                tracing::info!(port = %path.display(), "guest control port listening");
                if let Err(e) = control.serve(p, &ctx.token).await {
                    tracing::warn!(port = %path.display(), error = %e, "the control port failed; reopening it");
                } else {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(port = %path.display(), error = %e, retry_in = ?delay, "cannot open the control port; retrying");
            }
        }
        if sleep_or_cancel(&ctx.token, delay).await {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn sleep_or_cancel(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Serves one open port: frames in, replies out, one request at a time. `Ok` when cancelled.
pub async fn serve(
    mut port: io::Port,
    agent: &Agent,
    token: &CancellationToken,
) -> std::io::Result<()> {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    loop {
        let n = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            r = port.read(&mut buf) => r?,
        };
        framer.push(&buf[..n], &mut frames);
        for f in frames.drain(..) {
            let line = match f {
                Frame::Value(v) => match agent.handle_bytes(&v).await {
                    Outcome::Reply(l) => l,
                    Outcome::Silent => continue,
                },
                // A deliberate resync: the host discards whatever it gets until its sync
                // reply, so there is nothing useful to say (libvirt and Proxmox never send it).
                Frame::Resync => continue,
                Frame::Stray(b) => qmp::reply_line(
                    &Err(qmp::QmpError::generic(format!(
                        "JSON parse error, stray '\\x{b:02x}'"
                    ))),
                    None,
                ),
                Frame::TooLarge => qmp::reply_line(
                    &Err(qmp::QmpError::generic(
                        "JSON parse error, request too large or too deeply nested",
                    )),
                    None,
                ),
            };
            if let Err(e) = port.write_all(&line).await {
                // The host left mid-reply; the next one resyncs.
                tracing::debug!(error = %e, "reply dropped");
            }
        }
    }
}
