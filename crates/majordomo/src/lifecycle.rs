//! The one lifecycle contract every subsystem follows, and the registry that applies configs.
//!
//! A subsystem is a long-running task. It starts from the config and a shutdown token, reports
//! readiness with [`Ctx::ready`], sees newer configs on [`Ctx::config`], and returns when its
//! token is cancelled, within the grace period. Start-up and reload are the same operation,
//! [`Registry::apply`]: diff the previous config (none, at start-up) against the new one and,
//! for each subsystem, start it, restart it, hand it the new config live, or leave it alone.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::daemon::Shared;
use crate::hub::Event;

/// What a config change means for one subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing it uses changed.
    None,
    /// It takes the new config from [`Ctx::config`] without stopping.
    Live,
    /// It must be stopped and started again.
    Restart,
}

pub type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A long-running part of the daemon.
pub trait Subsystem: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether it runs at all under this config (e.g. only when a section is present).
    fn enabled(&self, _config: &Config) -> bool {
        true
    }
    /// What a change from `old` to `new` means for it.
    fn change(&self, old: &Config, new: &Config) -> Change;
    /// Runs until `ctx.token` is cancelled. An `Err` marks it failed, with that reason.
    fn run(&self, ctx: Ctx) -> BoxFuture;
}

/// What a subsystem gets to run.
#[derive(Clone)]
pub struct Ctx {
    pub name: &'static str,
    pub shared: Arc<Shared>,
    /// The config in force; changes arrive here.
    pub config: watch::Receiver<Arc<Config>>,
    /// Cancelled when the subsystem must stop (daemon shutdown, or its restart).
    pub token: CancellationToken,
    /// For tasks the subsystem spawns, so shutdown waits for them.
    pub tracker: TaskTracker,
}

impl Ctx {
    /// Marks the subsystem ready (state `running`).
    pub fn ready(&self) {
        self.shared.board.set(self.name, "running", None);
    }

    /// Registers a socket command owned by this subsystem; it is removed when the subsystem stops.
    pub fn command<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn(crate::commands::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = crate::commands::Reply> + Send + 'static,
    {
        let handler: crate::commands::Handler = Arc::new(move |args| Box::pin(f(args)));
        self.shared.commands.register(self.name, name, handler);
    }

    /// Updates the human-readable detail shown by `status`.
    pub fn detail(&self, detail: impl Into<String>) {
        self.shared
            .board
            .set(self.name, "running", Some(detail.into()));
    }
}

/// Every subsystem's state, for `status`.
#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<BTreeMap<&'static str, Entry>>,
    hub: Option<crate::hub::Hub>,
}

struct Entry {
    state: &'static str,
    detail: Option<String>,
    since: Instant,
}

impl StatusBoard {
    pub fn new(hub: crate::hub::Hub) -> Self {
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
            hub.emit(Event::SubsystemState {
                name: name.to_string(),
                state: state.to_string(),
                detail,
            });
        }
    }

    pub fn state(&self, name: &str) -> Option<&'static str> {
        self.inner.lock().ok()?.get(name).map(|e| e.state)
    }

    pub fn snapshot(&self) -> BTreeMap<String, majordomo_proto::SubsystemStatus> {
        let Ok(map) = self.inner.lock() else {
            return BTreeMap::new();
        };
        map.iter()
            .map(|(k, e)| {
                (
                    k.to_string(),
                    majordomo_proto::SubsystemStatus {
                        state: e.state.to_string(),
                        detail: e.detail.clone(),
                        since_s: e.since.elapsed().as_secs(),
                    },
                )
            })
            .collect()
    }

    fn remove(&self, name: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(name);
        }
    }
}

struct Running {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// Starts, restarts and stops the subsystems as configs are applied.
pub struct Registry {
    specs: Vec<Arc<dyn Subsystem>>,
    running: BTreeMap<&'static str, Running>,
    config_tx: watch::Sender<Arc<Config>>,
    root: CancellationToken,
    tracker: TaskTracker,
    shared: Arc<Shared>,
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub updated: Vec<String>,
    pub stopped: Vec<String>,
}

impl Registry {
    pub fn new(
        specs: Vec<Arc<dyn Subsystem>>,
        initial: Arc<Config>,
        root: CancellationToken,
        tracker: TaskTracker,
        shared: Arc<Shared>,
    ) -> Self {
        let (config_tx, _) = watch::channel(initial);
        Self {
            specs,
            running: BTreeMap::new(),
            config_tx,
            root,
            tracker,
            shared,
        }
    }

    /// Applies `new`. With `old = None` (start-up) every enabled subsystem starts; otherwise
    /// only what changed is touched. `force` restarts every running subsystem.
    pub async fn apply(&mut self, old: Option<&Config>, new: Arc<Config>, force: bool) -> Applied {
        let mut applied = Applied::default();
        let grace = new.daemon.grace_period.get();
        // Publish first, so that live subsystems and restarted ones both see the new config.
        self.config_tx.send_replace(new.clone());
        for spec in self.specs.clone() {
            let name = spec.name();
            let enabled = spec.enabled(&new);
            let is_running = self.running.contains_key(name);
            let change = match old {
                Some(old) if !force => spec.change(old, &new),
                _ => Change::Restart,
            };
            match (is_running, enabled, change) {
                (false, true, _) => {
                    self.start(spec.clone());
                    applied.started.push(name.to_string());
                }
                (true, false, _) => {
                    self.stop(name, grace).await;
                    self.shared.board.remove(name);
                    applied.stopped.push(name.to_string());
                }
                (true, true, Change::Restart) => {
                    self.stop(name, grace).await;
                    self.start(spec.clone());
                    applied.restarted.push(name.to_string());
                }
                (true, true, Change::Live) => applied.updated.push(name.to_string()),
                _ => {}
            }
        }
        applied
    }

    fn start(&mut self, spec: Arc<dyn Subsystem>) {
        let name = spec.name();
        let token = self.root.child_token();
        let ctx = Ctx {
            name,
            shared: self.shared.clone(),
            config: self.config_tx.subscribe(),
            token: token.clone(),
            tracker: self.tracker.clone(),
        };
        self.shared.board.set(name, "starting", None);
        let board = self.shared.clone();
        let fut = spec.run(ctx);
        let span = tracing::info_span!("subsystem", name);
        let handle = self.tracker.spawn(
            async move {
                let result = fut.await;
                board.commands.unregister_owner(name);
                match result {
                    Ok(()) => board.board.set(name, "stopped", None),
                    Err(reason) => board.board.set(name, "failed", Some(reason)),
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
