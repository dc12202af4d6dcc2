//! The `supervisor` subsystem: runs the `[[program]]`s, restarts them with backoff, stops them
//! in reverse dependency order, and answers `ps`, `start`, `stop`, `restart`, `signal`.
//!
//! One task per program ([`program::Program`]) owns that program's process and follows the state
//! machine written down in `docs/supervisor.md`. This module only starts and ends those tasks
//! (start-up, reload diff, daemon stop); [`commands`] routes socket commands to them.
#![deny(unsafe_code)]

mod checks;
mod commands;
pub mod config;
#[cfg(unix)]
pub mod guard;
mod machine;
pub mod output;
mod program;
mod spawn;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use majordomo_core::{BoxFuture, Change, Ctx, Subsystem};
use majordomo_proto::supervisor::ProgramState;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{ProgramConfig, validate};

use program::{Cmd, Env, Info, Program};
use spawn::Procs;

/// The subsystem (always enabled, so that `ps` answers even without programs). Its section is
/// `[[program]]`.
pub struct Supervisor;

impl Subsystem for Supervisor {
    type Config = Vec<ProgramConfig>;

    fn name(&self) -> &'static str {
        "supervisor"
    }

    /// A changed program list is applied live (only changed programs restart). A moved log
    /// folder restarts every subsystem (the registry does that).
    fn change(&self, old: &Self::Config, new: &Self::Config) -> Change {
        if old == new {
            Change::None
        } else {
            Change::Live
        }
    }

    fn run(&self, ctx: Ctx<Self::Config>) -> BoxFuture {
        Box::pin(run(ctx))
    }
}

/// What commands need of a program (cheap to clone).
#[derive(Clone)]
struct Entry {
    cfg: Arc<ProgramConfig>,
    tx: mpsc::Sender<Cmd>,
    info: Arc<Mutex<Info>>,
}

type Table = Arc<RwLock<BTreeMap<String, Entry>>>;

struct Manager {
    ctx: Ctx<Vec<ProgramConfig>>,
    env: Arc<Env>,
    table: Table,
    tasks: BTreeMap<String, JoinHandle<()>>,
    programs: Vec<ProgramConfig>,
}

async fn run(mut ctx: Ctx<Vec<ProgramConfig>>) -> Result<(), String> {
    let programs = ctx.config.borrow_and_update().clone();
    if let Err(e) = majordomo_platform::process::set_child_subreaper() {
        tracing::debug!(error = %e, "not a child subreaper");
    }
    let procs = Procs::new();
    let layout = ctx.layout().clone();
    let (states, _) = watch::channel(BTreeMap::new());
    let env = Arc::new(Env {
        hub: ctx.hub.clone(),
        procs: procs.clone(),
        states,
        log_dir: layout.log_dir.clone(),
        base_env: vec![
            ("MAJORDOMO_INSTANCE".into(), layout.instance.clone()),
            (
                "MAJORDOMO_SOCKET".into(),
                layout.socket.display().to_string(),
            ),
        ],
    });
    let table: Table = Arc::default();
    commands::register(&ctx, &table, &env);
    let mut m = Manager {
        ctx: ctx.clone(),
        env,
        table,
        tasks: BTreeMap::new(),
        programs: Vec::new(),
    };
    m.apply(programs.as_ref().clone()).await;
    ctx.ready();
    m.detail();

    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let mut states = m.env.states.subscribe();
    // Orphans are reaped a moment after SIGCHLD, in one batch, off the restart path (stopping
    // a program reaps by itself while it waits for its group to empty).
    let mut reap_at: Option<tokio::time::Instant> = None;
    #[cfg(unix)]
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        #[cfg(unix)]
        let child_signal = async {
            match sigchld.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let child_signal = std::future::pending::<()>();
        tokio::select! {
            _ = ctx.token.cancelled() => break,
            r = ctx.config.changed() => {
                if r.is_err() { break; }
                let programs = ctx.config.borrow_and_update().clone();
                m.apply(programs.as_ref().clone()).await;
                m.detail();
            }
            _ = child_signal => {
                reap_at.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(50));
            }
            _ = async {
                match reap_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                reap_at = None;
                procs.reap();
            }
            _ = sweep.tick(), if !m.programs.is_empty() => procs.reap(),
            r = states.changed() => {
                if r.is_ok() {
                    m.detail();
                }
            }
        }
    }
    let all: Vec<String> = m.tasks.keys().cloned().collect();
    let deadline = m.stop_deadline(&all);
    m.stop_in_order(&all, deadline).await;
    procs.kill_all();
    procs.reap();
    Ok(())
}

impl Manager {
    /// `status` shows how many programs are in which state, and names the failed ones.
    fn detail(&self) {
        let n = self.programs.len();
        let states = self.env.states.borrow().clone();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in states.values() {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        let failed: Vec<&str> = states
            .iter()
            .filter(|(_, s)| **s == ProgramState::Failed)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut text = format!("{n} program{}", if n == 1 { "" } else { "s" });
        if !counts.is_empty() {
            let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
            text.push_str(&format!(": {}", parts.join(", ")));
        }
        if !failed.is_empty() {
            text.push_str(&format!(
                " (failed: {}; see `majordomo ps`)",
                failed.join(", ")
            ));
        }
        self.ctx.detail(text);
    }

    /// Start-up and reload: stops removed and changed programs (dependents first), then starts
    /// new and changed ones. Unchanged programs are not touched and keep their processes.
    async fn apply(&mut self, new: Vec<ProgramConfig>) {
        let old: BTreeMap<String, ProgramConfig> = self
            .programs
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let new_map: BTreeMap<String, ProgramConfig> =
            new.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let to_stop: Vec<String> = old
            .iter()
            .filter(|(n, p)| new_map.get(*n) != Some(*p))
            .map(|(n, _)| n.clone())
            .collect();
        if !to_stop.is_empty() {
            let deadline = self.stop_deadline(&to_stop);
            self.stop_in_order(&to_stop, deadline).await;
            let name_list = to_stop.clone();
            self.env.states.send_modify(|m| {
                for n in &name_list {
                    m.remove(n);
                }
            });
            if let Ok(mut t) = self.table.write() {
                for n in &to_stop {
                    t.remove(n);
                }
            }
        }
        for p in &new {
            if old.get(&p.name) == Some(p) {
                continue;
            }
            self.spawn_task(p.clone());
        }
        self.programs = new;
        if !to_stop.is_empty() {
            tracing::info!(stopped_or_changed = ?to_stop, "programs updated");
        }
    }

    /// When stopping `names` must be over: each program has its own `stop_timeout` (which
    /// bounds its stop sequence), capped by the daemon's grace period (less a margin for the
    /// final SIGKILL), so the registry never aborts the supervisor mid-stop.
    fn stop_deadline(&self, names: &[String]) -> Instant {
        let longest = self
            .programs
            .iter()
            .filter(|p| names.contains(&p.name))
            .map(|p| p.stop_timeout.get())
            .max()
            .unwrap_or_default();
        let cap = self.ctx.grace().saturating_sub(Duration::from_millis(500));
        Instant::now() + longest.min(cap)
    }

    fn spawn_task(&mut self, cfg: ProgramConfig) {
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::channel(16);
        let program = Program::new(cfg.clone(), self.env.clone());
        let info = program.info.clone();
        let name = cfg.name.clone();
        let span = tracing::info_span!("program", name = %name);
        let task = self
            .ctx
            .tracker
            .spawn(tracing::Instrument::instrument(program.run(rx), span));
        if let Ok(mut t) = self.table.write() {
            t.insert(name.clone(), Entry { cfg, tx, info });
        }
        self.tasks.insert(name, task);
    }

    /// Ends the tasks of `names`: programs that others depend on stop after those others.
    async fn stop_in_order(&mut self, names: &[String], deadline: Instant) {
        let depths = config::depths(&self.programs);
        let mut levels: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for n in names {
            levels
                .entry(depths.get(n).copied().unwrap_or(0))
                .or_default()
                .push(n.clone());
        }
        for (_, level) in levels.into_iter().rev() {
            let mut waits = Vec::new();
            for n in level {
                let tx = self
                    .table
                    .read()
                    .ok()
                    .and_then(|t| t.get(&n).map(|e| e.tx.clone()));
                if let Some(tx) = tx {
                    let _ = tx.send(Cmd::Shutdown(deadline)).await;
                }
                if let Some(task) = self.tasks.remove(&n) {
                    waits.push((n, task));
                }
            }
            for (n, task) in waits {
                let abort = task.abort_handle();
                let left =
                    deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(300);
                if tokio::time::timeout(left, task).await.is_err() {
                    tracing::warn!(program = %n, "did not stop in time; its process group is killed");
                    abort.abort();
                }
            }
        }
    }
}
