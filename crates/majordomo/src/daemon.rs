//! `majordomo run`: load the config without binding anything, assemble the subsystems, run,
//! wait for a signal or a request, drain within the grace period.
//!
//! The main loop is the only place that reloads or stops: subsystems ask it through
//! [`Request`]s (a [`DaemonHandle`]), signals arrive in the same `select!`. It owns the config
//! in force and answers the core commands `status`, `config` and `reload`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use majordomo_core::commands::Commands;
use majordomo_core::exit;
use majordomo_core::hub::{Event, Hub};
use majordomo_core::lifecycle::{Registry, Shared, StatusBoard};
use majordomo_core::lock::InstanceLock;
use majordomo_core::{DaemonHandle, Layout, Loaded, Override, Request, Source};
use majordomo_platform::{Notifier, Signal, Signals};
use majordomo_proto::control::{ConfigCmd, ReloadCmd, StatusCmd};
use majordomo_proto::{
    AlertSummary, ErrorBody, ErrorCode, PROTOCOL_VERSION, ReloadOutcome, Status, bus::BusCounters,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{self, Config};
use crate::logging::{self, LogHandle};

/// Everything `run` needs from the command line.
pub struct RunArgs {
    pub layout: Layout,
    pub overrides: Vec<Override>,
    pub notifier: Notifier,
}

/// The config in force and its history: one copy, owned by the main loop, read by `status`
/// and `config`. Subsystems get their sections through the registry, published in the same step.
struct State {
    config: Arc<Config>,
    generation: u64,
    source: Source,
    digest: u64,
    last_reload: Option<ReloadOutcome>,
}

/// What the core commands read.
struct Core {
    layout: Layout,
    hub: Hub,
    board: Arc<StatusBoard>,
    started: Instant,
    started_at: SystemTime,
    state: Mutex<State>,
}

impl Core {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn status(&self) -> Status {
        let (cfg, generation, source, last_reload) = {
            let s = self.state();
            (
                s.config.clone(),
                s.generation,
                s.source.clone(),
                s.last_reload.clone(),
            )
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
            config_path: self.layout.config_file.display().to_string(),
            config_source: source.as_str().to_string(),
            config_generation: generation,
            last_reload,
            state_dir: eff.state_dir.display().to_string(),
            log_dir: eff.log_dir.display().to_string(),
            subsystems: self.board.snapshot(),
            events: self.hub.counts(),
            alerts: self
                .board
                .info::<AlertSummary>("monitor")
                .unwrap_or_default(),
            bus: self.board.info::<BusCounters>("bus"),
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs the daemon in the foreground until it is stopped. Returns the process exit code.
pub fn run(args: RunArgs) -> std::process::ExitCode {
    std::process::ExitCode::from(run_code(args))
}

/// [`run`], returning the exit code as a number (the Windows SCM reports it).
pub fn run_code(args: RunArgs) -> u8 {
    // 1. Config, without binding or creating anything.
    let mut loaded =
        match majordomo_core::load::load::<Config>(&args.layout.config_file, &args.overrides) {
            Ok(l) => l,
            Err(problems) => {
                eprint!("majordomo: cannot start: {problems}");
                return exit::USAGE;
            }
        };
    // What the parse freed goes back to the OS (large configs).
    loaded.config.release_parse_garbage();
    if loaded.config.daemon.threads <= 1 {
        // One thread, one arena: the smallest daemon (`[daemon] threads`); before the log
        // writer's thread starts.
        majordomo_platform::limit_malloc_arenas(1);
    }
    let log = Arc::new(logging::init(&loaded.config.log.level));
    // Enough file descriptors for [control] max_connections bus clients.
    let _ = majordomo_platform::raise_nofile();
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
    let threads = loaded.config.daemon.threads;
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().thread_name("majordomo").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("majordomo: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let code = runtime.block_on(main_loop(args, loaded, log.clone()));
    // Nothing a program or converter started outlives the daemon (its cgroups, where it has them).
    majordomo_core::procs::release();
    // Let the log writer flush before the process ends.
    log.close();
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(lock);
    code
}

struct Daemon {
    core: Arc<Core>,
    registry: Registry<Config>,
    overrides: Vec<Override>,
    notifier: Notifier,
}

async fn main_loop(args: RunArgs, loaded: Loaded<Config>, log: Arc<LogHandle>) -> u8 {
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
    let board = Arc::new(StatusBoard::new(hub.clone()));
    let commands = Arc::new(Commands::default());
    let handle = DaemonHandle::new(req_tx, &layout.instance);
    let core = Arc::new(Core {
        layout: layout.clone(),
        hub: hub.clone(),
        board: board.clone(),
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
    core_commands(&commands, &core, &handle);
    let root = CancellationToken::new();
    let tracker = TaskTracker::new();
    let shared = Shared {
        hub: hub.clone(),
        commands,
        daemon: handle,
        board,
    };
    let mut registry = Registry::new(shared, root.clone(), tracker.clone());
    let router = Arc::new(majordomo_bus::Router::new(hub.clone(), &config.bus));
    app::subsystems(&mut registry, log, router);
    let mut daemon = Daemon {
        core: core.clone(),
        registry,
        overrides,
        notifier,
    };

    // Start-up is an apply from nothing.
    let grace = config.daemon.grace_period.get();
    daemon
        .registry
        .apply(None, &config, eff, grace, false)
        .await;
    daemon.registry.wait_started(grace).await;
    if let Some(failed) = core.board.failed() {
        eprintln!("majordomo: cannot start: {failed}");
        root.cancel();
        tracker.close();
        let _ = tokio::time::timeout(grace, tracker.wait()).await;
        return exit::FAILURE;
    }
    banner(&core, &loaded);
    tracing::info!(instance = %layout.instance, pid = std::process::id(), "daemon started");
    hub.emit(Event::DaemonStarted {
        instance: layout.instance.clone(),
        pid: std::process::id(),
    });
    daemon.notifier.ready("running");
    release_startup_code();
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
                Request::Reload { trigger, force, reply } => {
                    let outcome = daemon.reload(trigger, force).await;
                    if let Some(reply) = reply { let _ = reply.send(outcome); }
                }
                Request::Shutdown { reason } => break reason,
            },
        }
    };

    // Drain.
    let grace = daemon.core.state().config.daemon.grace_period.get();
    tracing::info!(%reason, "daemon stopping");
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

/// The commands the daemon itself answers through the registry: `status`, `config`, `reload`.
/// (`hello`, `ping` and `shutdown` are answered by the protocol session.)
fn core_commands(commands: &Commands, core: &Arc<Core>, handle: &DaemonHandle) {
    let c = core.clone();
    commands.register_typed::<StatusCmd, _, _>("daemon", move |_| {
        let status = c.status();
        async move { Ok(status) }
    });
    let c = core.clone();
    commands.register_typed::<ConfigCmd, _, _>("daemon", move |_| {
        let config = c.state().config.clone();
        async move {
            serde_json::to_value(&*config).map_err(|e| {
                ErrorBody::new(ErrorCode::Internal, format!("config not serializable: {e}"))
            })
        }
    });
    let h = handle.clone();
    commands.register_typed::<ReloadCmd, _, _>("daemon", move |_| {
        let h = h.clone();
        async move { h.reload("socket", false).await.map_err(|o| refused(&o)) }
    });
}

/// The error reply of a refused reload: every problem in `details`.
fn refused(outcome: &ReloadOutcome) -> ErrorBody {
    let n = outcome.errors.len();
    let mut body = ErrorBody::new(
        ErrorCode::InvalidConfig,
        format!(
            "new config refused ({n} problem{}); generation {} stays in force: {}",
            if n == 1 { "" } else { "s" },
            outcome.generation,
            outcome.errors.first().map(String::as_str).unwrap_or("")
        ),
    );
    body.details = Some(json!(outcome.errors));
    body
}

/// Tells a person in the foreground where everything is.
fn banner(core: &Core, loaded: &Loaded<Config>) {
    let s = core.status();
    let source = match loaded.source {
        Source::File => "",
        Source::Embedded => " (not found: using the embedded default)",
    };
    tracing::info!(
        instance = %s.instance, pid = s.pid, socket = %s.socket, config = %s.config_path,
        state = %s.state_dir, logs = %s.log_dir, "majordomo {} running", s.version
    );
    if !stderr_is_journal() {
        eprintln!(
            "majordomo {} · instance '{}' · pid {}\n  config  {}{source}\n  socket  {}\n  state   {}\n  logs    {}",
            s.version, s.instance, s.pid, s.config_path, s.socket, s.state_dir, s.log_dir
        );
        // The dashboard link carries the login token: on a terminal only, never into a file
        // or a log (`majordomo http url` prints it again).
        if let Some(link) = majordomo_http::console_link(&s) {
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                eprintln!("  web     {link}");
            } else if let Some((base, _)) = link.split_once("?token=") {
                eprintln!("  web     {base} (the link with the login token: `majordomo http url`)");
            }
        }
        eprintln!("Ctrl+C to stop.");
    }
}

fn stderr_is_journal() -> bool {
    #[cfg(target_os = "linux")]
    {
        majordomo_platform::stderr_is_journal()
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
        let mut result =
            majordomo_core::load::load::<Config>(&self.core.layout.config_file, &self.overrides);
        match &mut result {
            Ok(l) => l.config.release_parse_garbage(),
            Err(_) => majordomo_platform::release_free_heap(),
        }
        let (old, generation, digest) = {
            let s = self.core.state();
            (s.config.clone(), s.generation, s.digest)
        };
        let refuse = |errors: Vec<String>| {
            tracing::error!(%trigger, problems = errors.len(), "new config refused; the running config stays in force");
            for e in &errors {
                tracing::error!("  {e}");
            }
            self.core.hub.emit(Event::ConfigRejected {
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
        };
        // What can be checked before anything is applied (folders, the socket's place).
        let old_eff = self.core.layout.clone().with_overrides(&old.paths);
        let result = result.map_err(|p| p.lines()).and_then(|loaded| {
            let eff = self
                .core
                .layout
                .clone()
                .with_overrides(&loaded.config.paths);
            let problems = eff.preflight(&old_eff);
            if problems.is_empty() {
                Ok(loaded)
            } else {
                Err(problems)
            }
        });
        let outcome = match result {
            Err(errors) => refuse(errors),
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
                let generation = generation + 1;
                // The config in force changes in one step, before the subsystems get their
                // sections: `config` and `status` never show an older config than a subsystem runs.
                let previous = {
                    let mut s = self.core.state();
                    let previous = (s.source.clone(), s.digest);
                    s.config = new.clone();
                    s.generation = generation;
                    s.source = loaded.source;
                    s.digest = loaded.digest;
                    previous
                };
                let eff = self.core.layout.clone().with_overrides(&new.paths);
                let grace = new.daemon.grace_period.get();
                let applied = match self
                    .registry
                    .apply_or_roll_back(&old, &new, (old_eff, eff), grace, force)
                    .await
                {
                    Ok(a) => a,
                    Err(why) => {
                        // The previous config is in force again, as if this one never came.
                        {
                            let mut s = self.core.state();
                            s.config = old.clone();
                            s.generation = generation - 1;
                            (s.source, s.digest) = previous;
                        }
                        let r = refuse(vec![why]);
                        self.core.state().last_reload = r.clone().err();
                        self.notifier.ready("running");
                        return r;
                    }
                };
                let mut restarted = applied.restarted;
                restarted.extend(applied.started);
                restarted.extend(applied.stopped);
                tracing::info!(generation, %trigger, ?restarted, "config reloaded");
                self.core.hub.emit(Event::ConfigReloaded {
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
        if !(last.ok && last.generation == generation && trigger == "file-change") {
            self.core.state().last_reload = Some(last);
        }
        self.notifier.ready("running");
        release_startup_code();
        outcome
    }
}

/// Start-up (and a reload) runs code the idle daemon never runs again: config parsing,
/// validation, every subsystem's start. Its pages of the executable stay resident (and count in
/// RSS) until the kernel needs memory; this hands them back now. See
/// `majordomo_platform::memory::page_out_own_code`. The heap the subsystems' start freed goes
/// back too (with 10,000 jobs, about 5 MB that glibc would keep).
fn release_startup_code() {
    tokio::task::spawn_blocking(|| {
        majordomo_platform::release_free_heap();
        match majordomo_platform::memory::page_out_own_code() {
            Ok(bytes) => tracing::debug!(bytes, "start-up code paged out"),
            Err(e) => tracing::debug!(error = %e, "start-up code not paged out"),
        }
    });
}
