//! `majordomo run`: load the config without binding anything, assemble the subsystems, run,
//! wait for a signal or a request, drain within the grace period.
//!
//! The main loop is the only place that reloads or stops: subsystems ask it through
//! [`Request`]s, signals arrive in the same `select!`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use majordomo_proto::{PROTOCOL_VERSION, ReloadOutcome, Status};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, Loaded, Override, Source};
use crate::hub::{Event, Hub};
use crate::lifecycle::{Registry, StatusBoard, Subsystem};
use crate::lock::InstanceLock;
use crate::logging::{self, LogHandle};
use crate::paths::Layout;
use crate::platform::{Notifier, Signal, Signals};

/// Exit codes (sysexits-style where one fits).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 64;
}

/// What subsystems may ask of the main loop.
pub enum Request {
    Reload {
        trigger: &'static str,
        reply: Option<oneshot::Sender<Result<ReloadOutcome, ReloadOutcome>>>,
    },
    /// Restart every subsystem on a freshly loaded config (seed-001 `restart`).
    Restart {
        reply: oneshot::Sender<Result<ReloadOutcome, ReloadOutcome>>,
    },
    Shutdown {
        reason: String,
    },
}

/// State every subsystem can read.
pub struct Shared {
    /// The instance's places before `[paths]` overrides.
    pub layout: Layout,
    pub config_path: PathBuf,
    pub hub: Hub,
    pub board: StatusBoard,
    /// Socket commands that subsystems registered.
    pub commands: crate::commands::Commands,
    pub requests: mpsc::Sender<Request>,
    /// The health monitor's active alerts, for `status`.
    pub alerts: crate::monitor::AlertBoard,
    started: Instant,
    started_at: SystemTime,
    state: Mutex<State>,
}

struct State {
    config: Arc<Config>,
    generation: u64,
    source: Source,
    digest: u64,
    last_reload: Option<ReloadOutcome>,
}

impl Shared {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.state
            .lock()
            .map(|s| s.config.clone())
            .unwrap_or_default()
    }

    pub fn status(&self) -> Status {
        let (cfg, generation, source, last_reload) = match self.state.lock() {
            Ok(s) => (
                s.config.clone(),
                s.generation,
                s.source.clone(),
                s.last_reload.clone(),
            ),
            Err(_) => (Arc::default(), 0, Source::Embedded, None),
        };
        let eff = self.layout.clone().with_overrides(&cfg.paths);
        Status {
            pid: std::process::id(),
            instance: self.layout.instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            mode: self.layout.mode.label().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            socket: eff.socket.display().to_string(),
            config_path: self.config_path.display().to_string(),
            config_source: source.as_str().to_string(),
            config_generation: generation,
            last_reload,
            state_dir: eff.state_dir.display().to_string(),
            log_dir: eff.log_dir.display().to_string(),
            subsystems: self.board.snapshot(),
            events: self.hub.counts(),
            alerts: self.alerts.summary(),
        }
    }

    /// Asks the main loop for a reload and waits for its outcome.
    pub async fn reload(
        &self,
        trigger: &'static str,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadOutcome> {
        let (tx, rx) = oneshot::channel();
        let req = if force {
            Request::Restart { reply: tx }
        } else {
            Request::Reload {
                trigger,
                reply: Some(tx),
            }
        };
        let stopping = || ReloadOutcome {
            ok: false,
            trigger: trigger.to_string(),
            at: now_rfc3339(),
            generation: 0,
            restarted: vec![],
            updated: vec![],
            errors: vec!["the daemon is shutting down".into()],
        };
        if self.requests.send(req).await.is_err() {
            return Err(stopping());
        }
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The subsystems, in start order.
fn subsystems(log: Arc<LogHandle>) -> Vec<Arc<dyn Subsystem>> {
    vec![
        Arc::new(logging::Log(log)),
        Arc::new(crate::control::Control),
        Arc::new(crate::watch::ConfigWatch),
        Arc::new(crate::supervisor::Supervisor),
        Arc::new(crate::monitor::Monitor),
        Arc::new(crate::monitor::Notify),
        Arc::new(crate::pipeline::Pipeline),
    ]
}

/// Everything `run` needs from the command line.
pub struct RunArgs {
    pub layout: Layout,
    pub overrides: Vec<Override>,
    pub notifier: Notifier,
}

/// Runs the daemon in the foreground until it is stopped. Returns the process exit code.
pub fn run(args: RunArgs) -> ExitCode {
    ExitCode::from(run_code(args))
}

/// [`run`], returning the exit code as a number (the Windows SCM reports it).
pub fn run_code(args: RunArgs) -> u8 {
    // 1. Config, without binding or creating anything.
    let loaded = match config::load(&args.layout.config_file, &args.overrides) {
        Ok(l) => l,
        Err(problems) => {
            eprint!("majordomo: cannot start: {problems}");
            return exit::USAGE;
        }
    };
    let log = Arc::new(logging::init(&loaded.config.log.level));
    // Enough file descriptors for [control] max_connections bus clients.
    let _ = crate::platform::raise_nofile();
    // 2. One owner per instance.
    let lock = match InstanceLock::acquire(
        &args.layout.instance,
        &args.layout.lock_file,
        &args.layout.pid_file,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("majordomo: {e}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("majordomo")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("majordomo: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let code = runtime.block_on(main_loop(args, loaded, log.clone()));
    // Let the log writer flush before the process ends.
    log.close();
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(lock);
    code
}

struct Daemon {
    shared: Arc<Shared>,
    registry: Registry,
    overrides: Vec<Override>,
    notifier: Notifier,
}

async fn main_loop(args: RunArgs, loaded: Loaded, log: Arc<LogHandle>) -> u8 {
    let RunArgs {
        layout,
        overrides,
        notifier,
    } = args;
    let eff = layout.clone().with_overrides(&loaded.config.paths);
    for dir in [&eff.state_dir, &eff.log_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!(
                "majordomo: cannot create {}: {e}; check permissions or use --home DIR",
                dir.display()
            );
            return exit::FAILURE;
        }
    }
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("majordomo: cannot install signal handlers: {e}");
            return exit::FAILURE;
        }
    };
    let hub = Hub::new();
    let (req_tx, mut req_rx) = mpsc::channel(64);
    let config = Arc::new(loaded.config.clone());
    let shared = Arc::new(Shared {
        config_path: layout.config_file.clone(),
        layout: layout.clone(),
        board: StatusBoard::new(hub.clone()),
        hub: hub.clone(),
        commands: Default::default(),
        requests: req_tx,
        alerts: Default::default(),
        started: Instant::now(),
        started_at: SystemTime::now(),
        state: Mutex::new(State {
            config: config.clone(),
            generation: 1,
            source: loaded.source.clone(),
            digest: loaded.digest,
            last_reload: None,
        }),
    });
    let root = CancellationToken::new();
    let tracker = TaskTracker::new();
    let registry = Registry::new(
        subsystems(log),
        config.clone(),
        root.clone(),
        tracker.clone(),
        shared.clone(),
    );
    let mut daemon = Daemon {
        shared: shared.clone(),
        registry,
        overrides,
        notifier,
    };

    // Start-up is an apply from nothing.
    daemon.registry.apply(None, config.clone(), false).await;
    daemon
        .registry
        .wait_started(config.daemon.grace_period.get())
        .await;
    if let Some(failed) = failed_subsystem(&shared) {
        eprintln!("majordomo: cannot start: {failed}");
        root.cancel();
        tracker.close();
        let _ = tokio::time::timeout(config.daemon.grace_period.get(), tracker.wait()).await;
        return exit::FAILURE;
    }
    banner(&shared, &loaded);
    hub.emit(Event::DaemonStarted {
        instance: layout.instance.clone(),
        pid: std::process::id(),
    });
    daemon.notifier.ready("running");
    if let Some(every) = daemon.notifier.watchdog_interval() {
        let n = daemon.notifier.clone();
        let token = root.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => n.watchdog(),
                }
            }
        });
    }

    let reason = loop {
        tokio::select! {
            sig = signals.recv() => match sig {
                Signal::Interrupt => break "interrupted (SIGINT / Ctrl+C)".to_string(),
                Signal::Terminate => break "terminated (SIGTERM)".to_string(),
                Signal::Hangup => { let _ = daemon.reload("signal", false).await; }
            },
            Some(req) = req_rx.recv() => match req {
                Request::Reload { trigger, reply } => {
                    let outcome = daemon.reload(trigger, false).await;
                    if let Some(reply) = reply { let _ = reply.send(outcome); }
                }
                Request::Restart { reply } => {
                    let _ = reply.send(daemon.reload("restart", true).await);
                }
                Request::Shutdown { reason } => break reason,
            },
        }
    };

    // Drain.
    let grace = daemon.shared.config().daemon.grace_period.get();
    hub.emit(Event::DaemonStopping { reason });
    daemon.notifier.stopping_within(grace);
    root.cancel();
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {
            tracing::info!("stopped cleanly");
            exit::OK
        }
        _ = tokio::time::sleep(grace) => {
            tracing::error!(?grace, "the grace period ran out before everything stopped; exiting anyway");
            exit::FAILURE
        }
        _ = async { loop { if signals.recv().await == Signal::Interrupt { break } } } => {
            tracing::warn!("second interrupt: exiting without waiting");
            exit::FAILURE
        }
    }
}

fn failed_subsystem(shared: &Shared) -> Option<String> {
    shared
        .board
        .snapshot()
        .into_iter()
        .find(|(_, s)| s.state == "failed")
        .map(|(name, s)| format!("{name}: {}", s.detail.unwrap_or_default()))
}

/// Tells a person in the foreground where everything is.
fn banner(shared: &Shared, loaded: &Loaded) {
    let s = shared.status();
    let source = match loaded.source {
        Source::File => "",
        Source::Embedded => " (not found: using the embedded default)",
    };
    tracing::info!(
        instance = %s.instance, pid = s.pid, socket = %s.socket, config = %s.config_path,
        state = %s.state_dir, logs = %s.log_dir, "majordomo {} running", s.version
    );
    if !cfg!(target_os = "linux") || !crate_journal() {
        eprintln!(
            "majordomo {} · instance '{}' · pid {}\n  config  {}{source}\n  socket  {}\n  state   {}\n  logs    {}\nCtrl+C to stop.",
            s.version, s.instance, s.pid, s.config_path, s.socket, s.state_dir, s.log_dir
        );
    }
}

fn crate_journal() -> bool {
    #[cfg(target_os = "linux")]
    {
        crate::platform::stderr_is_journal()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

impl Daemon {
    async fn reload(
        &mut self,
        trigger: &'static str,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadOutcome> {
        self.notifier.reloading();
        let result = config::load(&self.shared.config_path, &self.overrides);
        let (old, generation, digest) = match self.shared.state.lock() {
            Ok(s) => (s.config.clone(), s.generation, s.digest),
            Err(_) => (Arc::default(), 0, 0),
        };
        let outcome = match result {
            Err(problems) => {
                let errors = problems.lines();
                self.shared.hub.emit(Event::ConfigRejected {
                    trigger: trigger.to_string(),
                    errors: errors.clone(),
                });
                Err(ReloadOutcome {
                    ok: false,
                    trigger: trigger.to_string(),
                    at: now_rfc3339(),
                    generation,
                    restarted: vec![],
                    updated: vec![],
                    errors,
                })
            }
            Ok(loaded) if loaded.digest == digest && !force => Ok(ReloadOutcome {
                ok: true,
                trigger: trigger.to_string(),
                at: now_rfc3339(),
                generation,
                restarted: vec![],
                updated: vec![],
                errors: vec![],
            }),
            Ok(loaded) => {
                let new = Arc::new(loaded.config);
                let applied = self.registry.apply(Some(&old), new.clone(), force).await;
                let generation = generation + 1;
                if let Ok(mut s) = self.shared.state.lock() {
                    s.config = new;
                    s.generation = generation;
                    s.source = loaded.source;
                    s.digest = loaded.digest;
                }
                let mut restarted = applied.restarted;
                restarted.extend(applied.started);
                restarted.extend(applied.stopped);
                self.shared.hub.emit(Event::ConfigReloaded {
                    generation,
                    trigger: trigger.to_string(),
                    restarted: restarted.clone(),
                });
                Ok(ReloadOutcome {
                    ok: true,
                    trigger: trigger.to_string(),
                    at: now_rfc3339(),
                    generation,
                    restarted,
                    updated: applied.updated,
                    errors: vec![],
                })
            }
        };
        let last = match &outcome {
            Ok(o) | Err(o) => o.clone(),
        };
        // A no-op file-change reload (same text) is not worth recording.
        if !(last.ok && last.generation == generation && trigger == "file-change")
            && let Ok(mut s) = self.shared.state.lock()
        {
            s.last_reload = Some(last);
        }
        self.notifier.ready("running");
        outcome
    }
}
