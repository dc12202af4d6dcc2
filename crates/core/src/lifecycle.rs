//! The one lifecycle contract every subsystem follows, and the registry that applies configs.
//!
//! A subsystem is a long-running task with a config section of its own type. It starts from
//! that section and a shutdown token, reports readiness with [`Ctx::ready`], sees newer
//! sections on [`Ctx::config`], and returns when its token is cancelled, within the grace
//! period. Start-up and reload are the same operation, [`Registry::apply`]: diff the previous
//! config (none, at start-up) against the new one and, for each subsystem, start it, restart it,
//! hand it the new section live, or leave it alone.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use majordomo_proto::{Cmd, ErrorBody, Event, ReloadOutcome, SubsystemStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::commands::Commands;
use crate::hub::Hub;
use crate::layout::Layout;

/// What a config change means for one subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing it uses changed.
    None,
    /// It takes the new section from [`Ctx::config`] without stopping.
    Live,
    /// It must be stopped and started again.
    Restart,
}

pub type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A long-running part of the daemon, with its own config section type.
pub trait Subsystem: Send + Sync + 'static {
    /// The part of the config it reads (one section, or a few that belong together).
    type Config: PartialEq + Send + Sync + 'static;

    fn name(&self) -> &'static str;
    /// Whether it runs at all under this config (e.g. only when a section is present).
    fn enabled(&self, _config: &Self::Config) -> bool {
        true
    }
    /// What a change from `old` to `new` means for it. By default any change restarts it.
    fn change(&self, old: &Self::Config, new: &Self::Config) -> Change {
        if old == new {
            Change::None
        } else {
            Change::Restart
        }
    }
    /// Runs until `ctx.token` is cancelled. An `Err` marks it failed, with that reason.
    fn run(&self, ctx: Ctx<Self::Config>) -> BoxFuture;
    /// What its commands answer while the config leaves it off ([`Subsystem::enabled`] false):
    /// registered through `off` so that a client hears "off on this instance, this section turns
    /// it on" rather than "unknown command". They give way to the real ones when it starts.
    /// Default: none (its commands are unknown while it is off).
    fn off(&self, _off: &Off<'_>) {}
}

/// Where a subsystem that is off registers what its commands answer ([`Subsystem::off`]).
pub struct Off<'a> {
    name: &'static str,
    commands: &'a Commands,
}

impl Off<'_> {
    /// Registers the typed command `K`'s answer while the subsystem is off.
    pub fn handle<K, F, Fut>(&self, f: F)
    where
        K: Cmd,
        F: Fn(K::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<K::Reply, ErrorBody>> + Send + 'static,
    {
        self.commands.register_typed::<K, F, Fut>(self.name, f);
    }
}

/// What subsystems may ask of the daemon's main loop.
pub enum Request {
    /// Re-read the config file and apply it; `force` restarts every subsystem (seed-001 `restart`).
    Reload {
        trigger: &'static str,
        force: bool,
        reply: Option<oneshot::Sender<Result<ReloadOutcome, ReloadOutcome>>>,
    },
    Shutdown {
        reason: String,
    },
}

/// A handle to the main loop: ask for a reload or a shutdown. Cheap to clone.
#[derive(Clone)]
pub struct DaemonHandle {
    requests: mpsc::Sender<Request>,
    instance: Arc<str>,
}

impl DaemonHandle {
    pub fn new(requests: mpsc::Sender<Request>, instance: &str) -> Self {
        Self {
            requests,
            instance: instance.into(),
        }
    }

    /// The instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Asks for a reload and waits for its outcome (`Err` when the new config was refused).
    pub async fn reload(
        &self,
        trigger: &'static str,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadOutcome> {
        let (tx, rx) = oneshot::channel();
        let stopping = || ReloadOutcome {
            ok: false,
            trigger: trigger.to_string(),
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            generation: 0,
            restarted: vec![],
            updated: vec![],
            errors: vec!["the daemon is shutting down".into()],
        };
        let req = Request::Reload {
            trigger,
            force,
            reply: Some(tx),
        };
        if self.requests.send(req).await.is_err() {
            return Err(stopping());
        }
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Asks for a reload without waiting for it (a changed config file).
    pub fn request_reload(&self, trigger: &'static str) {
        let _ = self.requests.try_send(Request::Reload {
            trigger,
            force: false,
            reply: None,
        });
    }

    /// Asks the daemon to drain and stop.
    pub async fn shutdown(&self, reason: impl Into<String>) {
        let _ = self
            .requests
            .send(Request::Shutdown {
                reason: reason.into(),
            })
            .await;
    }
}

/// What a subsystem gets to run: its section, and narrow handles to the rest of the daemon.
pub struct Ctx<C> {
    pub name: &'static str,
    /// Its config section in force; changes arrive here.
    pub config: watch::Receiver<Arc<C>>,
    pub hub: Hub,
    pub commands: Arc<Commands>,
    pub daemon: DaemonHandle,
    /// Cancelled when the subsystem must stop (daemon shutdown, or its restart).
    pub token: CancellationToken,
    /// For tasks the subsystem spawns, so shutdown waits for them.
    pub tracker: TaskTracker,
    board: Arc<StatusBoard>,
    layout: Arc<Layout>,
    grace: Arc<AtomicU64>,
}

impl<C> Clone for Ctx<C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            config: self.config.clone(),
            hub: self.hub.clone(),
            commands: self.commands.clone(),
            daemon: self.daemon.clone(),
            token: self.token.clone(),
            tracker: self.tracker.clone(),
            board: self.board.clone(),
            layout: self.layout.clone(),
            grace: self.grace.clone(),
        }
    }
}

impl<C> Ctx<C> {
    /// Marks the subsystem ready (state `running`).
    pub fn ready(&self) {
        self.board.set(self.name, "running", None);
    }

    /// Updates the human-readable detail shown by `status`.
    pub fn detail(&self, detail: impl Into<String>) {
        self.board.set(self.name, "running", Some(detail.into()));
    }

    /// Waits until no other subsystem is `starting` any more, at most `limit`: for events a
    /// subsystem emits as soon as it runs, so that subscribers starting alongside (at start-up
    /// or on a reload) get them.
    pub async fn others_started(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline
            && self
                .board
                .snapshot()
                .iter()
                .any(|(name, s)| name != self.name && s.state == "starting")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes this subsystem's typed status (shown in `status` under its name, read back
    /// with [`StatusBoard::info`]).
    pub fn publish<T: Serialize>(&self, info: &T) {
        self.board.publish(self.name, info);
    }

    /// Publishes this subsystem's status as a function computed each time it is read (by
    /// `status`, [`StatusBoard::info`]), instead of a value refreshed on a timer: a figure that
    /// changes all the time costs nothing until someone asks for it.
    pub fn publish_live<T, F>(&self, f: F)
    where
        T: Serialize,
        F: Fn() -> T + Send + Sync + 'static,
    {
        self.board.publish_live(self.name, f);
    }

    /// Registers the typed socket command `K`, owned by this subsystem: removed when it stops.
    pub fn handle<K, F, Fut>(&self, f: F)
    where
        K: Cmd,
        F: Fn(K::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<K::Reply, ErrorBody>> + Send + 'static,
    {
        self.commands.register_typed::<K, F, Fut>(self.name, f);
    }

    /// The daemon's grace period in force: how long a stop (shutdown, or this subsystem's
    /// restart) may take before the subsystem is aborted. Finish stopping well within it.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace.load(Ordering::Relaxed))
    }

    /// The instance's places, `[paths]` applied.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The instance's state folder (`[paths] state_dir` applied).
    pub fn state_dir(&self) -> &Path {
        &self.layout.state_dir
    }

    /// The instance's log folder (`[paths] log_dir` applied).
    pub fn log_dir(&self) -> &Path {
        &self.layout.log_dir
    }
}

/// Every subsystem's state and published status, for `status`.
#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<BTreeMap<&'static str, Entry>>,
    hub: Option<Hub>,
}

struct Entry {
    state: &'static str,
    detail: Option<String>,
    since: Instant,
    info: Option<Info>,
}

/// A subsystem's published status: a value, or a function computed when it is read.
#[derive(Clone)]
enum Info {
    Value(Value),
    Live(Arc<dyn Fn() -> Option<Value> + Send + Sync>),
}

impl StatusBoard {
    pub fn new(hub: Hub) -> Self {
        Self {
            inner: Mutex::default(),
            hub: Some(hub),
        }
    }

    pub fn set(&self, name: &'static str, state: &'static str, detail: Option<String>) {
        let changed = {
            let Ok(mut map) = self.inner.lock() else {
                return;
            };
            let entry = map.entry(name).or_insert(Entry {
                state: "",
                detail: None,
                since: Instant::now(),
                info: None,
            });
            let changed = entry.state != state;
            if changed {
                entry.since = Instant::now();
            }
            entry.state = state;
            entry.detail = detail.clone();
            changed
        };
        if changed && let Some(hub) = &self.hub {
            if state == "failed" {
                tracing::error!(
                    subsystem = name,
                    detail = detail.as_deref().unwrap_or(""),
                    "subsystem failed"
                );
            } else {
                tracing::debug!(subsystem = name, state, "subsystem state");
            }
            hub.emit(Event::SubsystemState {
                name: name.to_string(),
                state: state.to_string(),
                detail,
            });
        }
    }

    fn publish<T: Serialize>(&self, name: &'static str, info: &T) {
        let Ok(value) = serde_json::to_value(info) else {
            return;
        };
        self.put_info(name, Info::Value(value));
    }

    fn publish_live<T, F>(&self, name: &'static str, f: F)
    where
        T: Serialize,
        F: Fn() -> T + Send + Sync + 'static,
    {
        let live = move || serde_json::to_value(f()).ok();
        self.put_info(name, Info::Live(Arc::new(live)));
    }

    fn put_info(&self, name: &'static str, info: Info) {
        if let Ok(mut map) = self.inner.lock()
            && let Some(entry) = map.get_mut(name)
        {
            entry.info = Some(info);
        }
    }

    /// What `name` published last, read as `T`.
    pub fn info<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let info = self.inner.lock().ok()?.get(name)?.info.clone()?;
        // A live one is computed outside the board's lock (it may take its owner's locks).
        let value = match info {
            Info::Value(v) => v,
            Info::Live(f) => f()?,
        };
        serde_json::from_value(value).ok()
    }

    pub fn state(&self, name: &str) -> Option<&'static str> {
        self.inner.lock().ok()?.get(name).map(|e| e.state)
    }

    pub fn snapshot(&self) -> BTreeMap<String, SubsystemStatus> {
        let Ok(map) = self.inner.lock() else {
            return BTreeMap::new();
        };
        map.iter()
            .map(|(k, e)| {
                (
                    k.to_string(),
                    SubsystemStatus {
                        state: e.state.to_string(),
                        detail: e.detail.clone(),
                        since_s: e.since.elapsed().as_secs(),
                    },
                )
            })
            .collect()
    }

    /// The first failed subsystem and why, if any.
    pub fn failed(&self) -> Option<String> {
        let map = self.inner.lock().ok()?;
        map.iter()
            .find(|(_, e)| e.state == "failed")
            .map(|(name, e)| format!("{name}: {}", e.detail.clone().unwrap_or_default()))
    }

    fn remove(&self, name: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(name);
        }
    }
}

/// What every subsystem's [`Ctx`] shares.
#[derive(Clone)]
pub struct Shared {
    pub hub: Hub,
    pub commands: Arc<Commands>,
    pub daemon: DaemonHandle,
    pub board: Arc<StatusBoard>,
}

/// One subsystem as the registry holds it: its section's projection and watch, type-erased.
trait Mounted<R>: Send + Sync {
    fn name(&self) -> &'static str;
    /// Publishes `new`'s section; says whether the subsystem runs under it and what changed.
    fn update(&mut self, old: Option<&R>, new: &R) -> (bool, Change);
    fn run(&self, ctx: CtxParts) -> BoxFuture;
    /// Registers what its commands answer while it is off.
    fn off(&self, commands: &Commands);
}

struct CtxParts {
    shared: Shared,
    token: CancellationToken,
    tracker: TaskTracker,
    layout: Arc<Layout>,
    grace: Arc<AtomicU64>,
}

struct Mount<S: Subsystem, R> {
    sub: Arc<S>,
    project: fn(&R) -> S::Config,
    tx: Option<watch::Sender<Arc<S::Config>>>,
}

impl<S: Subsystem, R: 'static> Mounted<R> for Mount<S, R> {
    fn name(&self) -> &'static str {
        self.sub.name()
    }

    fn update(&mut self, old: Option<&R>, new: &R) -> (bool, Change) {
        let section = Arc::new((self.project)(new));
        let enabled = self.sub.enabled(&section);
        let change = match (old, &self.tx) {
            (Some(old), Some(_)) => self.sub.change(&(self.project)(old), &section),
            _ => Change::Restart,
        };
        match &self.tx {
            Some(tx) => {
                tx.send_replace(section);
            }
            None => self.tx = Some(watch::channel(section).0),
        }
        (enabled, change)
    }

    fn run(&self, parts: CtxParts) -> BoxFuture {
        let Some(tx) = &self.tx else {
            return Box::pin(async { Err("started before its config was applied".to_string()) });
        };
        let ctx = Ctx {
            name: self.sub.name(),
            config: tx.subscribe(),
            hub: parts.shared.hub,
            commands: parts.shared.commands,
            daemon: parts.shared.daemon,
            token: parts.token,
            tracker: parts.tracker,
            board: parts.shared.board,
            layout: parts.layout,
            grace: parts.grace,
        };
        self.sub.run(ctx)
    }

    fn off(&self, commands: &Commands) {
        self.sub.off(&Off {
            name: self.sub.name(),
            commands,
        });
    }
}

struct Running {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// Starts, restarts and stops the subsystems as configs are applied.
pub struct Registry<R> {
    mounts: Vec<Box<dyn Mounted<R>>>,
    running: BTreeMap<&'static str, Running>,
    shared: Shared,
    root: CancellationToken,
    tracker: TaskTracker,
    layout: Option<Arc<Layout>>,
    grace: Arc<AtomicU64>,
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub updated: Vec<String>,
    pub stopped: Vec<String>,
}

impl<R: 'static> Registry<R> {
    pub fn new(shared: Shared, root: CancellationToken, tracker: TaskTracker) -> Self {
        Self {
            mounts: Vec::new(),
            running: BTreeMap::new(),
            shared,
            root,
            tracker,
            layout: None,
            grace: Arc::default(),
        }
    }

    /// Adds a subsystem, with the function that takes its section out of the whole config.
    /// Subsystems start in the order they are mounted.
    pub fn mount<S: Subsystem>(&mut self, sub: S, project: fn(&R) -> S::Config) -> &mut Self {
        self.mounts.push(Box::new(Mount {
            sub: Arc::new(sub),
            project,
            tx: None,
        }));
        self
    }

    /// Applies `new` with the instance's places `layout` (`[paths]` applied). With `old = None`
    /// (start-up) every enabled subsystem starts; otherwise only what changed is touched. A
    /// moved state or log folder restarts everything; `force` does too.
    pub async fn apply(
        &mut self,
        old: Option<&R>,
        new: &R,
        layout: Layout,
        grace: Duration,
        force: bool,
    ) -> Applied {
        let moved = self
            .layout
            .as_ref()
            .is_some_and(|l| l.state_dir != layout.state_dir || l.log_dir != layout.log_dir);
        self.layout = Some(Arc::new(layout));
        let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.grace.store(millis, Ordering::Relaxed);
        let mut applied = Applied::default();
        // Every section first, and every subsystem about to start marked `starting` before the
        // first one runs: a client that the control socket answers meanwhile must not see a
        // daemon that looks ready while the subsystems after it have not started yet.
        let plan: Vec<(bool, Change)> = (0..self.mounts.len())
            .map(|i| {
                let (enabled, change) = self.mounts[i].update(old, new);
                let change = if force || moved {
                    Change::Restart
                } else {
                    change
                };
                let name = self.mounts[i].name();
                if enabled && (!self.running.contains_key(name) || change == Change::Restart) {
                    self.shared.board.set(name, "starting", None);
                }
                (enabled, change)
            })
            .collect();
        for (i, (enabled, change)) in plan.into_iter().enumerate() {
            let name = self.mounts[i].name();
            let is_running = self.running.contains_key(name);
            match (is_running, enabled, change) {
                (false, true, _) => {
                    self.start(i);
                    applied.started.push(name.to_string());
                }
                (true, false, _) => {
                    self.stop(name, grace).await;
                    self.shared.board.remove(name);
                    applied.stopped.push(name.to_string());
                }
                (true, true, Change::Restart) => {
                    self.stop(name, grace).await;
                    self.start(i);
                    applied.restarted.push(name.to_string());
                }
                (true, true, Change::Live) => applied.updated.push(name.to_string()),
                _ => {}
            }
            if !enabled {
                // Its commands answer that it is off (replacing any left by its last run).
                self.mounts[i].off(&self.shared.commands);
            }
        }
        applied
    }

    fn start(&mut self, i: usize) {
        let mount = &self.mounts[i];
        let name = mount.name();
        let token = self.root.child_token();
        let Some(layout) = self.layout.clone() else {
            return;
        };
        self.shared.board.set(name, "starting", None);
        // Its off answers (if it was off) give way to what the run registers.
        self.shared.commands.unregister_owner(name);
        let fut = mount.run(CtxParts {
            shared: self.shared.clone(),
            token: token.clone(),
            tracker: self.tracker.clone(),
            layout,
            grace: self.grace.clone(),
        });
        let shared = self.shared.clone();
        let span = tracing::info_span!("subsystem", name);
        let handle = self.tracker.spawn(
            async move {
                let result = fut.await;
                shared.commands.unregister_owner(name);
                match result {
                    Ok(()) => shared.board.set(name, "stopped", None),
                    Err(reason) => shared.board.set(name, "failed", Some(reason)),
                }
            }
            .instrument(span),
        );
        self.running.insert(name, Running { token, handle });
    }

    async fn stop(&mut self, name: &'static str, grace: Duration) {
        if let Some(r) = self.running.remove(name) {
            self.shared.board.set(name, "stopping", None);
            r.token.cancel();
            let abort = r.handle.abort_handle();
            if tokio::time::timeout(grace, r.handle).await.is_err() {
                tracing::warn!(
                    subsystem = name,
                    ?grace,
                    "did not stop within the grace period; aborted"
                );
                abort.abort();
            }
        }
    }

    /// Waits until no subsystem is `starting` any more, at most `limit`.
    /// A reload's apply that cannot leave the daemon broken: applies `new`, waits until no
    /// subsystem is starting, and when one it started or restarted failed, applies `old` again
    /// (with `old_layout`) and answers why. Start-up does not use it: there is nothing to go
    /// back to.
    pub async fn apply_or_roll_back(
        &mut self,
        old: &R,
        new: &R,
        layouts: (Layout, Layout),
        grace: Duration,
        force: bool,
    ) -> Result<Applied, String> {
        let (old_layout, new_layout) = layouts;
        let applied = self.apply(Some(old), new, new_layout, grace, force).await;
        self.wait_started(grace).await;
        let failed: Vec<String> = applied
            .started
            .iter()
            .chain(&applied.restarted)
            .filter(|n| self.shared.board.state(n) == Some("failed"))
            .map(|n| {
                let detail = self
                    .shared
                    .board
                    .snapshot()
                    .get(n.as_str())
                    .and_then(|s| s.detail.clone())
                    .unwrap_or_default();
                format!("{n}: {detail}")
            })
            .collect();
        if failed.is_empty() {
            return Ok(applied);
        }
        let back = self.apply(Some(new), old, old_layout, grace, false).await;
        self.wait_started(grace).await;
        let still = self.shared.board.failed();
        Err(format!(
            "{} failed to start with the new config ({}); rolled back to the previous config{}",
            failed.len(),
            failed.join("; "),
            match still {
                Some(f) => format!(", but {f} still fails"),
                None => format!(" (restarted {})", back.restarted.join(", ")),
            }
        ))
    }

    pub async fn wait_started(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let starting = self
                .running
                .keys()
                .any(|n| self.shared.board.state(n) == Some("starting"));
            if !starting {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
