//! The `supervisor` subsystem: runs the `[[program]]`s, restarts them with backoff, stops them
//! in reverse dependency order, and answers `ps`, `start`, `stop`, `restart`, `signal`.
//!
//! One task per program ([`program::Program`]) owns that program's process and follows the state
//! machine written down in `docs/supervisor.md`. This module only starts and ends those tasks
//! (start-up, reload diff, daemon stop) and routes commands to them.

mod checks;
pub mod cli;
pub mod config;
#[cfg(unix)]
pub mod guard;
mod machine;
mod output;
mod program;
mod spawn;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use majordomo_proto::{ErrorBody, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use config::ProgramConfig;
pub use machine::State;

use crate::commands::parse_args;
use crate::config::Config;
use crate::lifecycle::{BoxFuture, Change, Ctx, Subsystem};
use program::{Cmd, Env, Info, Program};
use spawn::Procs;

/// The subsystem (always enabled, so that `ps` answers even without programs).
pub struct Supervisor;

impl Subsystem for Supervisor {
    fn name(&self) -> &'static str {
        "supervisor"
    }

    fn change(&self, old: &Config, new: &Config) -> Change {
        if old.paths.log_dir != new.paths.log_dir {
            // The output files move: every program restarts.
            Change::Restart
        } else if old.program != new.program {
            Change::Live
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx) -> BoxFuture {
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
    ctx: Ctx,
    env: Arc<Env>,
    table: Table,
    tasks: BTreeMap<String, JoinHandle<()>>,
    programs: Vec<ProgramConfig>,
}

async fn run(mut ctx: Ctx) -> Result<(), String> {
    let config = ctx.config.borrow_and_update().clone();
    if let Err(e) = crate::platform::process::set_child_subreaper() {
        tracing::debug!(error = %e, "not a child subreaper");
    }
    let procs = Procs::new();
    let layout = ctx.shared.layout.clone().with_overrides(&config.paths);
    let (states, _) = watch::channel(BTreeMap::new());
    let env = Arc::new(Env {
        hub: ctx.shared.hub.clone(),
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
    register_commands(&ctx, &table, &env);
    let mut m = Manager {
        ctx: ctx.clone(),
        env,
        table,
        tasks: BTreeMap::new(),
        programs: Vec::new(),
    };
    m.apply(config.program.clone()).await;
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
                let cfg = ctx.config.borrow_and_update().clone();
                m.apply(cfg.program.clone()).await;
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
    let grace = ctx.shared.config().daemon.grace_period.get();
    let deadline = Instant::now() + grace.saturating_sub(Duration::from_millis(500));
    let all: Vec<String> = m.tasks.keys().cloned().collect();
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
            .filter(|(_, s)| **s == State::Failed)
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
            let grace = self.ctx.shared.config().daemon.grace_period.get();
            self.stop_in_order(&to_stop, Instant::now() + grace).await;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PsArgs {
    #[serde(default)]
    names: Vec<String>,
    /// One program (same as `names: [name]`).
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamesArgs {
    names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalArgs {
    name: String,
    signal: String,
}

fn bad(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, msg)
}

fn lookup(table: &Table, names: &[String]) -> Result<Vec<Entry>, ErrorBody> {
    let t = table
        .read()
        .map_err(|_| ErrorBody::new(ErrorCode::Internal, "program table poisoned"))?;
    if names.is_empty() {
        return Err(bad("name at least one program"));
    }
    names
        .iter()
        .map(|n| {
            t.get(n).cloned().ok_or_else(|| {
                bad(format!(
                    "unknown program {n:?}; configured programs: {}",
                    if t.is_empty() {
                        "none".to_string()
                    } else {
                        t.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))
            })
        })
        .collect()
}

/// A program's `ps` row.
fn row(e: &Entry) -> Value {
    let info = match e.info.lock() {
        Ok(i) => i.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let uptime = info.started.map(|s| s.elapsed().as_secs_f64());
    let (cpu, rss) = match info.pid {
        Some(pid) => (
            crate::platform::process::cpu_seconds(pid),
            crate::platform::process::rss_bytes(pid),
        ),
        None => (None, None),
    };
    let mut v = serde_json::to_value(&info).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("uptime_s".into(), json!(uptime));
        m.insert("cpu_s".into(), json!(cpu));
        m.insert("rss_bytes".into(), json!(rss));
        m.insert("command".into(), json!(e.cfg.command));
    }
    v
}

/// Sends a command to each program, waits until each acted on it, then until its state settles
/// (`settled`), at most `limit`. Answers with the programs' rows.
async fn each(
    entries: Vec<Entry>,
    states: watch::Sender<BTreeMap<String, State>>,
    make: fn(oneshot::Sender<()>) -> Cmd,
    settled: fn(State) -> bool,
) -> Result<Value, ErrorBody> {
    let mut acks = Vec::new();
    for e in &entries {
        let (tx, rx) = oneshot::channel();
        e.tx.send(make(tx))
            .await
            .map_err(|_| bad(format!("program {:?} is being removed", e.cfg.name)))?;
        acks.push(rx);
    }
    for (e, ack) in entries.iter().zip(acks) {
        // Stopping can take stop_timeout; starting, start_timeout.
        let limit = e.cfg.stop_timeout.get() + Duration::from_secs(10);
        let _ = tokio::time::timeout(limit, ack).await;
        let mut rx = states.subscribe();
        let name = e.cfg.name.clone();
        let wait = Duration::from_secs(30).min(e.cfg.start_timeout.get() + Duration::from_secs(1));
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|m| m.get(&name).is_none_or(|s| settled(*s))),
        )
        .await;
    }
    Ok(json!({"programs": entries.iter().map(row).collect::<Vec<_>>()}))
}

fn register_commands(ctx: &Ctx, table: &Table, env: &Arc<Env>) {
    let t = table.clone();
    ctx.command("ps", move |args| {
        let t = t.clone();
        async move {
            let mut a: PsArgs = parse_args("ps", args)?;
            a.names.extend(a.name.take());
            let entries = if a.names.is_empty() {
                t.read()
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default()
            } else {
                lookup(&t, &a.names)?
            };
            Ok(json!({"programs": entries.iter().map(row).collect::<Vec<_>>()}))
        }
    });
    let settled_start = |s: State| !matches!(s, State::Starting | State::Stopping | State::Stopped);
    let settled_stop = |s: State| matches!(s, State::Stopped | State::Failed | State::Exited);
    for (name, make, settled) in [
        (
            "start",
            Cmd::Start as fn(_) -> Cmd,
            settled_start as fn(State) -> bool,
        ),
        ("restart", Cmd::Restart as fn(_) -> Cmd, settled_start),
        ("stop", Cmd::Stop as fn(_) -> Cmd, settled_stop),
    ] {
        let t = table.clone();
        let states = env.states.clone();
        ctx.command(name, move |args| {
            let t = t.clone();
            let states = states.clone();
            async move {
                let a: NamesArgs = parse_args(name, args)?;
                let entries = lookup(&t, &a.names)?;
                each(entries, states, make, settled).await
            }
        });
    }
    let t = table.clone();
    ctx.command("signal", move |args| {
        let t = t.clone();
        async move {
            let a: SignalArgs = parse_args("signal", args)?;
            let sig = config::signal_name(&a.signal).ok_or_else(|| {
                bad(format!(
                    "{:?} is not a signal name; use one of {}",
                    a.signal,
                    config::SIGNALS.join(", ")
                ))
            })?;
            let e = lookup(&t, std::slice::from_ref(&a.name))?
                .into_iter()
                .next()
                .ok_or_else(|| bad(format!("unknown program {:?}", a.name)))?;
            let (tx, rx) = oneshot::channel();
            e.tx
                .send(Cmd::Signal(sig.to_string(), tx))
                .await
                .map_err(|_| bad(format!("program {:?} is being removed", a.name)))?;
            match rx.await {
                Ok(Ok(())) => Ok(json!({"name": a.name, "signal": sig, "pid": e.info.lock().ok().and_then(|i| i.pid)})),
                Ok(Err(msg)) => Err(bad(msg)),
                Err(_) => Err(bad(format!("program {:?} is being removed", a.name))),
            }
        }
    });
}
