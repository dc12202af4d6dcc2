//! One program's task: the state machine of `docs/supervisor.md`, driven by its process, its
//! checks, its timers and the commands it receives. The task owns the program's process; nothing
//! else signals or waits for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use majordomo_core::hub::{Event, Hub};
use majordomo_platform::process::{self, Group, SpawnOpts};
use majordomo_proto::supervisor::ProgramState;

use super::checks;
use super::config::{HealthConfig, Probe, ProgramConfig};
use super::machine::{ExitKind, StartLimit, restart_delay, wants_restart};
use super::output::Output;
use super::spawn::{Procs, Spawned, find_executable};

/// What a program task is asked to do.
pub enum Cmd {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
    Signal(String, oneshot::Sender<Result<(), String>>),
    /// Stop (by this deadline) and end the task: daemon stop, or the program was removed or
    /// changed by a reload.
    Shutdown(Instant),
}

/// What `ps` shows of a program (its row, `ProgramRow`, adds the live figures).
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub state: ProgramState,
    pub pid: Option<u32>,
    pub started: Option<Instant>,
    pub restarts: u64,
    pub last_exit_code: Option<i32>,
    pub last_signal: Option<i32>,
    pub detail: Option<String>,
    pub log_file: String,
    /// The delay cap of the current/last backoff, in ms (grows with each failure in a row).
    pub backoff_cap_ms: Option<u64>,
}

/// What every program task shares with the supervisor.
pub struct Env {
    pub hub: Hub,
    pub procs: Arc<Procs>,
    /// Every program's current state, for `depends_on` gates and for commands that wait.
    pub states: watch::Sender<BTreeMap<String, ProgramState>>,
    pub log_dir: PathBuf,
    /// Variables every program gets (MAJORDOMO_INSTANCE, MAJORDOMO_SOCKET, ...).
    pub base_env: Vec<(String, String)>,
}

pub struct Program {
    cfg: Arc<ProgramConfig>,
    env: Arc<Env>,
    pub info: Arc<Mutex<Info>>,
    output: Option<Arc<Output>>,
    limit: StartLimit,
    failures: u32,
    events: Option<broadcast::Receiver<Arc<Event>>>,
    endpoint_up: bool,
    /// Acknowledged at the next state change (a command's effect is visible when it is acked).
    acks: Vec<oneshot::Sender<()>>,
}

/// How one run ended.
enum End {
    /// The process ended (or never started because `pre_start` failed); what is left of its
    /// group is cleaned up after `exited` is published.
    Exit(ExitKind, Duration, Option<String>),
    Ended(ExitKind, Duration, Group),
    /// It cannot be started at all: stays `failed` until started again.
    Failed(String),
    Stopped,
    Restart,
    Shutdown,
}

/// One run of the main process, as `supervise` watches it.
struct Run {
    spawned: Spawned,
    pid: Option<u32>,
    started: Instant,
    /// The readiness gate passed.
    ready: bool,
}

/// The periodic health check of one run.
struct HealthCheck {
    cfg: Option<HealthConfig>,
    tick: tokio::time::Interval,
    /// The attempt under way.
    pending: Option<BoxFut>,
    /// Failed attempts in a row.
    failures: u32,
}

impl HealthCheck {
    fn new(cfg: Option<HealthConfig>) -> Self {
        let every = cfg
            .as_ref()
            .map(|h| h.interval.get())
            .unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        Self {
            cfg,
            tick,
            pending: None,
            failures: 0,
        }
    }

    /// Whether a new attempt may start (there is a check and none is under way).
    fn due(&self) -> bool {
        self.cfg.is_some() && self.pending.is_none()
    }

    /// Counts an attempt's result; says why to restart when the failures in a row reach the limit.
    fn failed(&mut self, program: &str, result: Result<(), String>) -> Option<String> {
        let e = match result {
            Ok(()) => {
                self.failures = 0;
                return None;
            }
            Err(e) => e,
        };
        self.failures += 1;
        let limit = self.cfg.as_ref().map(|h| h.failures).unwrap_or(1);
        tracing::warn!(program, failures = self.failures, limit, error = %e, "health check failed");
        (self.failures >= limit)
            .then(|| format!("health check failed {} times in a row: {e}", self.failures))
    }
}

/// What to do after waiting (dependencies, backoff).
enum Flow {
    Go,
    Stop,
    End,
}

impl Program {
    pub fn new(cfg: Arc<ProgramConfig>, env: Arc<Env>) -> Program {
        let log_file = super::output::log_path(&env.log_dir, &cfg.name)
            .display()
            .to_string();
        let info = Info {
            name: cfg.name.clone(),
            state: ProgramState::Stopped,
            pid: None,
            started: None,
            restarts: 0,
            last_exit_code: None,
            last_signal: None,
            detail: None,
            log_file,
            backoff_cap_ms: None,
        };
        let uses_bus =
            cfg.ready == Probe::Bus || cfg.health.as_ref().is_some_and(|h| h.check == Probe::Bus);
        let events = uses_bus.then(|| env.hub.subscribe());
        Program {
            cfg,
            env,
            info: Arc::new(Mutex::new(info)),
            output: None,
            limit: StartLimit::default(),
            failures: 0,
            events,
            endpoint_up: false,
            acks: Vec::new(),
        }
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Every transition goes through here: `ps` info, the shared state map, the hub event.
    fn set(&mut self, state: ProgramState, pid: Option<u32>, detail: Option<String>) {
        self.set_exit(state, pid, detail, None);
    }

    fn set_exit(
        &mut self,
        state: ProgramState,
        pid: Option<u32>,
        detail: Option<String>,
        exit: Option<ExitKind>,
    ) {
        let (code, signal) = match exit {
            Some(ExitKind::Code(c)) => (Some(c), None),
            Some(ExitKind::Signal(s)) => (None, Some(s)),
            _ => (None, None),
        };
        let restarts = {
            let mut info = match self.info.lock() {
                Ok(i) => i,
                Err(p) => p.into_inner(),
            };
            info.state = state;
            info.pid = pid;
            if !state.has_process() {
                info.started = None;
            }
            if exit.is_some() {
                info.last_exit_code = code;
                info.last_signal = signal;
            }
            info.detail = detail.clone();
            info.restarts
        };
        let name = self.cfg.name.clone();
        log_transition(&name, state, pid, code, signal, restarts, detail.as_deref());
        // The event goes out before the shared state map changes: what the new state sets off
        // (a dependent starting once this one is `ready`, a command's reply) comes after it,
        // so `$sys.program.state` subscribers see transitions in the order they happened.
        self.env.hub.emit(Event::ProgramState {
            name: name.clone(),
            state,
            pid,
            exit_code: code,
            signal,
            restarts,
            detail,
        });
        self.env.states.send_modify(|m| {
            m.insert(name, state);
        });
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }

    fn ack_now(&mut self, ack: oneshot::Sender<()>) {
        let _ = ack.send(());
    }

    fn set_started_now(&self) {
        if let Ok(mut i) = self.info.lock() {
            i.started = Some(Instant::now());
        }
    }

    /// The task: runs until `Shutdown` (or the command channel closes).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut wanted = self.cfg.autostart;
        let mut resting = ProgramState::Stopped;
        self.set(ProgramState::Stopped, None, None);
        if wanted {
            self.limit.allow(
                Instant::now(),
                self.cfg.start_limit.burst,
                self.cfg.start_limit.interval.get(),
            );
        }
        loop {
            if !wanted {
                match rx.recv().await {
                    None | Some(Cmd::Shutdown(_)) => {
                        if resting != ProgramState::Stopped {
                            self.set(ProgramState::Stopped, None, None);
                        }
                        return;
                    }
                    Some(Cmd::Start(ack)) | Some(Cmd::Restart(ack)) => {
                        self.acks.push(ack);
                        self.fresh_start();
                        wanted = true;
                    }
                    Some(Cmd::Stop(ack)) => {
                        if resting == ProgramState::Stopped {
                            self.ack_now(ack);
                        } else {
                            self.acks.push(ack);
                            let detail = self.info.lock().ok().and_then(|i| i.detail.clone());
                            self.set(ProgramState::Stopped, None, detail);
                            resting = ProgramState::Stopped;
                        }
                    }
                    Some(Cmd::Signal(_, reply)) => {
                        let _ = reply.send(Err(format!(
                            "program {:?} is not running (state: {})",
                            self.name(),
                            resting.as_str()
                        )));
                    }
                }
                continue;
            }
            match self.wait_dependencies(&mut rx).await {
                Flow::Go => {}
                Flow::Stop => {
                    wanted = false;
                    resting = ProgramState::Stopped;
                    continue;
                }
                Flow::End => return,
            }
            match self.run_once(&mut rx).await {
                End::Shutdown => return,
                End::Stopped => {
                    wanted = false;
                    resting = ProgramState::Stopped;
                }
                End::Restart => self.fresh_start(),
                End::Failed(reason) => {
                    if let Some(out) = &self.output {
                        out.note(&format!("cannot start: {reason}"));
                    }
                    self.set(ProgramState::Failed, None, Some(reason));
                    wanted = false;
                    resting = ProgramState::Failed;
                }
                End::Exit(kind, uptime, detail) => {
                    let next = self.after_exit(kind, uptime, detail, None, &mut rx).await;
                    if self.settle(next, &mut wanted, &mut resting) {
                        return;
                    }
                }
                End::Ended(kind, uptime, group) => {
                    let next = self
                        .after_exit(kind, uptime, None, Some(group), &mut rx)
                        .await;
                    if self.settle(next, &mut wanted, &mut resting) {
                        return;
                    }
                }
            }
        }
    }

    /// Applies what `after_exit` decided; true when the task must end.
    fn settle(&self, next: Option<Flow>, wanted: &mut bool, resting: &mut ProgramState) -> bool {
        match next {
            Some(Flow::Go) => false,
            Some(Flow::Stop) => {
                *wanted = false;
                *resting = ProgramState::Stopped;
                false
            }
            Some(Flow::End) => true,
            None => {
                *wanted = false;
                *resting = self.resting_state();
                false
            }
        }
    }

    fn resting_state(&self) -> ProgramState {
        match self.info.lock() {
            Ok(i) if i.state == ProgramState::Failed => ProgramState::Failed,
            _ => ProgramState::Exited,
        }
    }

    /// A start asked for by a person (or a restart): the counters start over.
    fn fresh_start(&mut self) {
        self.failures = 0;
        self.limit.reset();
        self.limit.allow(
            Instant::now(),
            self.cfg.start_limit.burst,
            self.cfg.start_limit.interval.get(),
        );
        if let Ok(mut i) = self.info.lock() {
            i.backoff_cap_ms = None;
        }
    }

    /// `exited` → `backoff` → (start again) | `exited` (policy) | `failed` (start limit).
    /// `None` means: rest in the state that was set.
    async fn after_exit(
        &mut self,
        kind: ExitKind,
        uptime: Duration,
        detail: Option<String>,
        leftovers: Option<Group>,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> Option<Flow> {
        let cfg = self.cfg.clone();
        let describe = match kind {
            ExitKind::Code(c) => format!("exited with code {c}"),
            ExitKind::Signal(s) => format!("killed by signal {s}"),
            ExitKind::Killed => "stopped by the supervisor".to_string(),
            ExitKind::StartFailed => "did not start".to_string(),
        };
        let detail = match detail {
            Some(d) => format!("{describe}: {d}"),
            None => format!("{describe} after {}", fmt_dur(uptime)),
        };
        if let Some(out) = &self.output {
            out.note(&detail);
        }
        self.set_exit(ProgramState::Exited, None, Some(detail.clone()), Some(kind));
        if let Some(group) = leftovers {
            self.clean_group(&group, Instant::now() + cfg.stop_timeout.get())
                .await;
        }
        if !wants_restart(&cfg, kind) {
            return None;
        }
        if uptime >= cfg.healthy_after.get() {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let sl = &cfg.start_limit;
        let (delay, cap, note) = if self
            .limit
            .allow(Instant::now(), sl.burst, sl.interval.get())
        {
            let (delay, cap) = restart_delay(&cfg, self.failures, fastrand::f64());
            (delay, cap, None)
        } else if sl.retry_forever {
            let max = cfg.backoff_max.get();
            (
                max,
                max,
                Some(format!(
                    "start limit reached ({} starts within {}); retrying every {}",
                    sl.burst, sl.interval, cfg.backoff_max
                )),
            )
        } else {
            let reason = format!(
                "start limit reached: {} starts within {} ({detail}); `majordomo start {}` to try again",
                sl.burst, sl.interval, cfg.name
            );
            if let Some(out) = &self.output {
                out.note(&reason);
            }
            self.set(ProgramState::Failed, None, Some(reason));
            return None;
        };
        if let Ok(mut i) = self.info.lock() {
            i.backoff_cap_ms = Some(cap.as_millis() as u64);
        }
        let next = self.info.lock().map(|i| i.restarts + 1).unwrap_or(1);
        let text = note.unwrap_or_else(|| {
            format!(
                "restart {next} in {} (cap {}); last run {detail}",
                fmt_dur(delay),
                fmt_dur(cap)
            )
        });
        if !delay.is_zero() {
            self.set(ProgramState::Backoff, None, Some(text));
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = rx.recv() => match cmd {
                    None | Some(Cmd::Shutdown(_)) => {
                        self.set(ProgramState::Stopped, None, None);
                        return Some(Flow::End);
                    }
                    Some(Cmd::Stop(ack)) => {
                        self.acks.push(ack);
                        self.set(ProgramState::Stopped, None, None);
                        return Some(Flow::Stop);
                    }
                    Some(Cmd::Start(ack)) | Some(Cmd::Restart(ack)) => {
                        self.acks.push(ack);
                        self.fresh_start();
                        return Some(Flow::Go);
                    }
                    Some(Cmd::Signal(_, reply)) => {
                        let _ = reply.send(Err(format!("program {:?} is not running (backoff)", cfg.name)));
                    }
                },
            }
        }
        if let Ok(mut i) = self.info.lock() {
            i.restarts += 1;
        }
        Some(Flow::Go)
    }

    /// `waiting` until every `depends_on` program is `ready`.
    async fn wait_dependencies(&mut self, rx: &mut mpsc::Receiver<Cmd>) -> Flow {
        if self.cfg.depends_on.is_empty() {
            return Flow::Go;
        }
        let deps = self.cfg.depends_on.clone();
        let all_ready = move |m: &BTreeMap<String, ProgramState>| {
            deps.iter().all(|d| m.get(d) == Some(&ProgramState::Ready))
        };
        let mut states = self.env.states.subscribe();
        if all_ready(&states.borrow()) {
            return Flow::Go;
        }
        let pending: Vec<String> = {
            let m = states.borrow();
            self.cfg
                .depends_on
                .iter()
                .filter(|d| m.get(*d) != Some(&ProgramState::Ready))
                .map(|d| {
                    format!(
                        "{d} ({})",
                        m.get(d).map(|s| s.as_str()).unwrap_or("unknown")
                    )
                })
                .collect()
        };
        self.set(
            ProgramState::Waiting,
            None,
            Some(format!("waiting for {}", pending.join(", "))),
        );
        loop {
            tokio::select! {
                r = states.wait_for(&all_ready) => {
                    return if r.is_ok() { Flow::Go } else { Flow::End };
                }
                cmd = rx.recv() => match cmd {
                    None | Some(Cmd::Shutdown(_)) => {
                        self.set(ProgramState::Stopped, None, None);
                        return Flow::End;
                    }
                    Some(Cmd::Stop(ack)) => {
                        self.acks.push(ack);
                        self.set(ProgramState::Stopped, None, None);
                        return Flow::Stop;
                    }
                    Some(Cmd::Start(ack)) | Some(Cmd::Restart(ack)) => self.ack_now(ack),
                    Some(Cmd::Signal(_, reply)) => {
                        let _ = reply.send(Err(format!("program {:?} is not running (waiting for its dependencies)", self.cfg.name)));
                    }
                },
            }
        }
    }

    fn child_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.base_env.clone();
        env.push(("MAJORDOMO_PROGRAM".into(), self.cfg.name.clone()));
        env.extend(self.cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Checks what would make the start impossible, with a reason a person can act on.
    fn preflight(&self) -> Result<SpawnOpts, String> {
        let cfg = &self.cfg;
        if let Some(cwd) = &cfg.cwd
            && !cwd.is_dir()
        {
            return Err(format!(
                "working folder cwd = {} does not exist or is not a folder",
                cwd.display()
            ));
        }
        let path_var = cfg.env.get("PATH").map(String::as_str);
        find_executable(&cfg.command, cfg.cwd.as_deref(), path_var)?;
        let creds = match &cfg.user {
            Some(u) => Some(process::lookup_creds(u, cfg.group.as_deref())?),
            None => None,
        };
        Ok(SpawnOpts {
            creds,
            umask: cfg.umask.as_deref().and_then(super::config::parse_umask),
            announce_fd: None,
            cgroup_fd: None,
        })
    }

    fn command(&self, argv0: &str, args: &[String], opts_out: bool) -> std::process::Command {
        let mut cmd = std::process::Command::new(argv0);
        majordomo_platform::process::scrub_daemon_env(&mut cmd);
        cmd.args(args).stdin(Stdio::null());
        if opts_out {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        for (k, v) in self.child_env() {
            cmd.env(k, v);
        }
        if let Some(cwd) = &self.cfg.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }

    fn pump_output(&self, spawned: &mut Spawned) {
        let Some(out) = &self.output else { return };
        if let Some(o) = spawned.child.stdout.take() {
            tokio::spawn(out.clone().pump(o, "stdout"));
        }
        if let Some(e) = spawned.child.stderr.take() {
            tokio::spawn(out.clone().pump(e, "stderr"));
        }
    }

    /// `starting` → (`pre_start`) → `running` → `ready` → ... until the process ends or a
    /// command ends the run.
    async fn run_once(&mut self, rx: &mut mpsc::Receiver<Cmd>) -> End {
        let (opts, start_deadline) = match self.prepare(rx).await {
            Ok(ready) => ready,
            Err(end) => return end,
        };
        match self.spawn_main(&opts) {
            Ok(run) => self.supervise(run, start_deadline, rx).await,
            Err(end) => end,
        }
    }

    /// `starting`: the output file, the preflight checks, `pre_start`. Returns how to spawn
    /// the program and by when it must be ready.
    async fn prepare(&mut self, rx: &mut mpsc::Receiver<Cmd>) -> Result<(SpawnOpts, Instant), End> {
        let cfg = self.cfg.clone();
        self.set(ProgramState::Starting, None, None);
        if self.output.is_none() {
            let output = Output::open(
                &self.env.log_dir,
                &cfg.name,
                cfg.log_max_size.bytes(),
                cfg.log_max_files,
                cfg.log_to_daemon,
            );
            self.output = Some(output.map_err(End::Failed)?);
        }
        let opts = self.preflight().map_err(End::Failed)?;
        let start_deadline = Instant::now() + cfg.start_timeout.get();
        if let Some((argv0, args)) = cfg.pre_start.split_first() {
            self.pre_start(argv0, args, &opts, start_deadline, rx)
                .await?;
        }
        Ok((opts, start_deadline))
    }

    /// Creates the main process, its output pumps, and the run that watches it.
    fn spawn_main(&mut self, opts: &SpawnOpts) -> Result<Run, End> {
        let cfg = self.cfg.clone();
        // Endpoint events queued so far are about an earlier process: only the new one counts.
        if let Some(events) = self.events.as_mut() {
            while !matches!(
                events.try_recv(),
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
            ) {}
        }
        self.endpoint_up = false;
        let cmd = self.command(&cfg.command, &cfg.args, true);
        let mut spawned = self.env.procs.spawn(cmd, opts).map_err(|e| {
            let reason = format!("cannot start {}: {e}", cfg.command);
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    End::Failed(reason)
                }
                _ => End::Exit(ExitKind::StartFailed, Duration::ZERO, Some(reason)),
            }
        })?;
        self.pump_output(&mut spawned);
        self.set_started_now();
        Ok(Run {
            pid: spawned.child.id(),
            spawned,
            started: Instant::now(),
            ready: false,
        })
    }

    /// `running` → `ready` → ...: watches the process, the readiness gate, the health check,
    /// the memory limit and the commands, until one of them ends the run.
    async fn supervise(
        &mut self,
        mut run: Run,
        start_deadline: Instant,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> End {
        let cfg = self.cfg.clone();
        if cfg.ready == Probe::Started {
            self.set(ProgramState::Running, run.pid, None);
            self.set(ProgramState::Ready, run.pid, None);
            run.ready = true;
        } else {
            let waiting = format!("waiting for readiness: {}", cfg.ready);
            self.set(ProgramState::Running, run.pid, Some(waiting));
        }
        let mut ready_probe = self.readiness_probe(&run, start_deadline);
        let bus_gate = !run.ready && cfg.ready == Probe::Bus;
        let ready_timer = tokio::time::sleep_until(start_deadline.into());
        tokio::pin!(ready_timer);
        let mut health = HealthCheck::new(cfg.health.clone());
        let mut mem_tick = tokio::time::interval(Duration::from_secs(1));
        mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = run.spawned.child.wait() => {
                    let kind = status.map(|s| exit_kind(&s)).unwrap_or(ExitKind::Killed);
                    return End::Ended(kind, run.started.elapsed(), run.spawned.group);
                }
                r = maybe(&mut ready_probe), if !run.ready => {
                    ready_probe = None;
                    match r {
                        Ok(()) => self.mark_ready(&mut run, &mut health),
                        Err(e) => {
                            let why = format!("not ready within start_timeout ({}): {e}", cfg.start_timeout);
                            return self.kill_run(&mut run, why).await;
                        }
                    }
                }
                _ = &mut ready_timer, if bus_gate && !run.ready => {
                    let why = format!("not ready within start_timeout ({}): no bus endpoint {:?} registered", cfg.start_timeout, cfg.name);
                    return self.kill_run(&mut run, why).await;
                }
                ev = recv_event(&mut self.events) => {
                    if let Some(ev) = ev {
                        self.on_hub_event(&ev, &mut run, &mut health);
                    }
                }
                _ = health.tick.tick(), if run.ready && health.due() => {
                    health.pending = Some(self.health_attempt());
                }
                r = maybe(&mut health.pending) => {
                    health.pending = None;
                    if let Some(why) = health.failed(&cfg.name, r) {
                        return self.kill_run(&mut run, why).await;
                    }
                }
                _ = mem_tick.tick(), if cfg.max_memory.is_some() => {
                    if let Some(why) = self.over_memory(&run) {
                        return self.kill_run(&mut run, why).await;
                    }
                }
                cmd = rx.recv() => {
                    if let Some(end) = self.on_command(cmd, &mut run).await {
                        return end;
                    }
                }
            }
        }
    }

    /// The readiness gate to poll, unless the program is ready already or its gate is `bus`
    /// (answered by hub events).
    fn readiness_probe(&self, run: &Run, deadline: Instant) -> Option<BoxFut> {
        if run.ready || self.cfg.ready == Probe::Bus {
            return None;
        }
        let env = self.child_env();
        let procs = self.env.procs.clone();
        let probe = self.cfg.ready.clone();
        Some(Box::pin(async move {
            poll_until(&probe, deadline, &env, &procs).await
        }))
    }

    fn mark_ready(&mut self, run: &mut Run, health: &mut HealthCheck) {
        run.ready = true;
        self.set(ProgramState::Ready, run.pid, None);
        health.tick.reset();
    }

    /// Endpoint events about this program's bus endpoint: they open the `bus` readiness gate
    /// and answer the `bus` health check.
    fn on_hub_event(&mut self, ev: &Event, run: &mut Run, health: &mut HealthCheck) {
        match ev {
            Event::EndpointUp { id } if *id == self.cfg.name => self.endpoint_up = true,
            Event::EndpointDown { id, .. } if *id == self.cfg.name => self.endpoint_up = false,
            _ => {}
        }
        if !run.ready && self.cfg.ready == Probe::Bus && self.endpoint_up {
            self.mark_ready(run, health);
        }
    }

    /// One attempt of the health check, as a future (it runs beside the other arms).
    fn health_attempt(&self) -> BoxFut {
        let Some(h) = &self.cfg.health else {
            return Box::pin(async { Ok(()) });
        };
        let check = h.check.clone();
        let timeout = h.timeout.get();
        let env = self.child_env();
        let procs = self.env.procs.clone();
        let up = self.endpoint_up;
        let name = self.cfg.name.clone();
        Box::pin(async move {
            if check == Probe::Bus {
                return if up {
                    Ok(())
                } else {
                    Err(format!("bus endpoint {name:?} is not registered"))
                };
            }
            checks::attempt(&check, timeout, &env, &procs).await
        })
    }

    /// Why the main process must be restarted for its memory, if it must.
    fn over_memory(&self, run: &Run) -> Option<String> {
        let max = self.cfg.max_memory?;
        let rss = process::rss_bytes(run.pid?)?;
        (rss > max.bytes()).then(|| {
            format!(
                "memory {} above max_memory {max}",
                majordomo_core::Size(rss)
            )
        })
    }

    /// Stops the run's process for `why` (readiness timeout, failed health check, memory).
    async fn kill_run(&mut self, run: &mut Run, why: String) -> End {
        let deadline = Instant::now() + self.cfg.stop_timeout.get();
        self.stop_process(&mut run.spawned, deadline, run.pid).await;
        End::Exit(ExitKind::Killed, run.started.elapsed(), Some(why))
    }

    /// A command while the process runs; `Some` when it ends the run.
    async fn on_command(&mut self, cmd: Option<Cmd>, run: &mut Run) -> Option<End> {
        let stop_by = Instant::now() + self.cfg.stop_timeout.get();
        match cmd {
            None => {
                self.stop_process(&mut run.spawned, stop_by, run.pid).await;
                self.set(ProgramState::Stopped, None, None);
                Some(End::Shutdown)
            }
            Some(Cmd::Shutdown(deadline)) => {
                self.stop_process(&mut run.spawned, deadline.min(stop_by), run.pid)
                    .await;
                self.set(ProgramState::Stopped, None, None);
                Some(End::Shutdown)
            }
            Some(Cmd::Stop(ack)) => {
                self.acks.push(ack);
                self.stop_process(&mut run.spawned, stop_by, run.pid).await;
                self.set(
                    ProgramState::Stopped,
                    None,
                    Some("stopped on request".into()),
                );
                Some(End::Stopped)
            }
            Some(Cmd::Restart(ack)) => {
                self.acks.push(ack);
                self.stop_process(&mut run.spawned, stop_by, run.pid).await;
                Some(End::Restart)
            }
            Some(Cmd::Start(ack)) => {
                self.ack_now(ack);
                None
            }
            Some(Cmd::Signal(sig, reply)) => {
                let r = match run.pid {
                    Some(p) => process::signal_pid(p, &sig)
                        .map_err(|e| format!("cannot signal pid {p}: {e}")),
                    None => Err("the process has no pid".to_string()),
                };
                let _ = reply.send(r);
                None
            }
        }
    }

    async fn pre_start(
        &mut self,
        argv0: &str,
        args: &[String],
        opts: &SpawnOpts,
        deadline: Instant,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> Result<(), End> {
        let cmd = self.command(argv0, args, true);
        let mut spawned = match self.env.procs.spawn(cmd, opts) {
            Ok(s) => s,
            Err(e) => return Err(End::Failed(format!("cannot run pre_start {argv0}: {e}"))),
        };
        self.pump_output(&mut spawned);
        let stop_timeout = self.cfg.stop_timeout.get();
        let timer = tokio::time::sleep_until(deadline.into());
        tokio::pin!(timer);
        loop {
            tokio::select! {
                status = spawned.child.wait() => {
                    self.clean_group(&spawned.group, Instant::now() + stop_timeout).await;
                    return match status {
                        Ok(s) if s.success() => Ok(()),
                        Ok(s) => Err(End::Exit(ExitKind::StartFailed, Duration::ZERO, Some(format!("pre_start {argv0} {}", describe_status(&s))))),
                        Err(e) => Err(End::Exit(ExitKind::StartFailed, Duration::ZERO, Some(format!("pre_start {argv0}: {e}")))),
                    };
                }
                _ = &mut timer => {
                    kill_and_wait(&mut spawned).await;
                    return Err(End::Exit(ExitKind::StartFailed, Duration::ZERO, Some(format!("pre_start {argv0} did not finish within start_timeout ({})", self.cfg.start_timeout))));
                }
                cmd = rx.recv() => match cmd {
                    None | Some(Cmd::Shutdown(_)) => {
                        kill_and_wait(&mut spawned).await;
                        self.set(ProgramState::Stopped, None, None);
                        return Err(End::Shutdown);
                    }
                    Some(Cmd::Stop(ack)) => {
                        self.acks.push(ack);
                        kill_and_wait(&mut spawned).await;
                        self.set(ProgramState::Stopped, None, None);
                        return Err(End::Stopped);
                    }
                    Some(Cmd::Restart(ack)) => {
                        self.acks.push(ack);
                        kill_and_wait(&mut spawned).await;
                        return Err(End::Restart);
                    }
                    Some(Cmd::Start(ack)) => self.ack_now(ack),
                    Some(Cmd::Signal(_, reply)) => {
                        let _ = reply.send(Err("the program is still running pre_start".to_string()));
                    }
                },
            }
        }
    }

    /// `stopping`: the stop signal to the whole group, then SIGKILL to the group at `deadline`.
    async fn stop_process(&mut self, spawned: &mut Spawned, deadline: Instant, pid: Option<u32>) {
        self.set(ProgramState::Stopping, pid, None);
        if let Err(e) = spawned
            .group
            .signal(super::config::signal_name(&self.cfg.stop_signal).unwrap_or("TERM"))
        {
            tracing::warn!(program = %self.cfg.name, error = %e, "cannot send the stop signal");
        }
        let in_time = tokio::time::timeout_at(deadline.into(), async {
            let _ = spawned.child.wait().await;
            while !spawned.group.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.env.procs.reap();
            }
        })
        .await
        .is_ok();
        if !in_time {
            tracing::warn!(program = %self.cfg.name, "did not stop within stop_timeout; killing its process group");
            if let Some(out) = &self.output {
                out.note("did not stop within stop_timeout; killed its process group (SIGKILL)");
            }
            kill_and_wait(spawned).await;
        }
        self.env.procs.sweep();
    }

    /// After the main process ended: what is left of its group gets the stop sequence too.
    async fn clean_group(&self, group: &Group, deadline: Instant) {
        if group.is_empty() {
            self.env.procs.sweep();
            return;
        }
        let sig = super::config::signal_name(&self.cfg.stop_signal).unwrap_or("TERM");
        let _ = group.signal(sig);
        let done = tokio::time::timeout_at(deadline.into(), async {
            while !group.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.env.procs.reap();
            }
        })
        .await
        .is_ok();
        if !done {
            let _ = group.kill();
        }
        self.env.procs.sweep();
    }
}

/// Logs a transition (the words the daemon's log has always used for program events).
fn log_transition(
    name: &str,
    state: ProgramState,
    pid: Option<u32>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    restarts: u64,
    detail: Option<&str>,
) {
    match state {
        ProgramState::Failed => {
            tracing::error!(program = %name, exit_code, signal, restarts, detail = detail.unwrap_or(""), "program failed")
        }
        ProgramState::Exited | ProgramState::Backoff => {
            tracing::warn!(program = %name, pid, exit_code, signal, restarts, "program {state}")
        }
        _ => tracing::info!(program = %name, pid, restarts, "program {state}"),
    }
}

async fn kill_and_wait(spawned: &mut Spawned) {
    let _ = spawned.group.kill();
    let _ = spawned.child.wait().await;
}

type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

async fn maybe(f: &mut Option<BoxFut>) -> Result<(), String> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn recv_event(rx: &mut Option<broadcast::Receiver<Arc<Event>>>) -> Option<Arc<Event>> {
    match rx {
        Some(rx) => match rx.recv().await {
            Ok(ev) => Some(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Tries `probe` until it passes or `deadline`, every 50 ms at first, then up to every second.
async fn poll_until(
    probe: &Probe,
    deadline: Instant,
    env: &[(String, String)],
    procs: &Arc<Procs>,
) -> Result<(), String> {
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err =
            match checks::attempt(probe, left.max(Duration::from_millis(10)), env, procs).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
        if Instant::now() + pause >= deadline {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn exit_kind(s: &std::process::ExitStatus) -> ExitKind {
    if let Some(c) = s.code() {
        return ExitKind::Code(c);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return ExitKind::Signal(sig);
        }
    }
    ExitKind::Killed
}

fn describe_status(s: &std::process::ExitStatus) -> String {
    match exit_kind(s) {
        ExitKind::Code(c) => format!("exited with code {c}"),
        ExitKind::Signal(sig) => format!("was killed by signal {sig}"),
        _ => format!("ended ({s})"),
    }
}

pub fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
    }
}
