//! The supervisor's socket commands (`ps`, `start`, `stop`, `restart`, `signal`, `logs`), typed by the
//! contract in `majordomo_proto::supervisor`. Each finds the programs' tasks in the table and
//! sends them a [`Cmd`]; the task owns the process and does the work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use majordomo_core::Ctx;
use majordomo_proto::supervisor::{
    LogTail, LogsArgs, LogsCmd, NamesArgs, ProgramRow, ProgramState, Programs, PsCmd, RestartCmd,
    SignalArgs, SignalCmd, Signaled, StartCmd, StopCmd,
};
use majordomo_proto::{Cmd as Command, ErrorBody, ErrorCode};
use tokio::sync::{oneshot, watch};

use crate::config::{self, ProgramConfig};
use crate::program::{Cmd, Env};
use crate::{Entry, Table};

fn bad(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, msg)
}

fn removed(name: &str) -> ErrorBody {
    bad(format!(
        "program {name:?} is being removed by a reload; see `majordomo ps`"
    ))
}

/// The entries of `names`, or `bad_request` naming the first unknown one and what exists.
fn lookup(table: &Table, names: &[String]) -> Result<Vec<Entry>, ErrorBody> {
    let t = table.read().map_err(|_| {
        ErrorBody::new(
            ErrorCode::Internal,
            "the supervisor's program table is poisoned (a handler panicked); restart the daemon",
        )
    })?;
    if names.is_empty() {
        return Err(bad(
            "name at least one program (`names: [...]` or `name: \"...\"`)",
        ));
    }
    names
        .iter()
        .map(|n| {
            t.get(n).cloned().ok_or_else(|| {
                let known = if t.is_empty() {
                    "none".to_string()
                } else {
                    t.keys().cloned().collect::<Vec<_>>().join(", ")
                };
                bad(format!(
                    "unknown program {n:?}; configured programs: {known}"
                ))
            })
        })
        .collect()
}

/// A program's `ps` row.
fn row(e: &Entry) -> ProgramRow {
    let info = match e.info.lock() {
        Ok(i) => i.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let (cpu_s, rss_bytes) = match info.pid {
        Some(pid) => (
            majordomo_platform::process::cpu_seconds(pid),
            majordomo_platform::process::rss_bytes(pid),
        ),
        None => (None, None),
    };
    ProgramRow {
        uptime_s: info.started.map(|s| s.elapsed().as_secs_f64()),
        cpu_s,
        rss_bytes,
        command: e.cfg.command.clone(),
        name: info.name,
        state: info.state,
        pid: info.pid,
        restarts: info.restarts,
        last_exit_code: info.last_exit_code,
        last_signal: info.last_signal,
        detail: info.detail,
        log_file: info.log_file,
        backoff_cap_ms: info.backoff_cap_ms,
    }
}

fn rows(entries: &[Entry]) -> Programs {
    Programs {
        programs: entries.iter().map(row).collect(),
    }
}

/// Sends a command to each program, waits until each acted on it, then until its state settles
/// (`settled`), at most `limit`. Answers with the programs' rows.
async fn each(
    entries: Vec<Entry>,
    states: watch::Sender<BTreeMap<String, ProgramState>>,
    make: fn(oneshot::Sender<()>) -> Cmd,
    settled: fn(ProgramState) -> bool,
) -> Result<Programs, ErrorBody> {
    let mut acks = Vec::new();
    for e in &entries {
        let (tx, rx) = oneshot::channel();
        e.tx.send(make(tx))
            .await
            .map_err(|_| removed(&e.cfg.name))?;
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
    Ok(rows(&entries))
}

fn settled_start(s: ProgramState) -> bool {
    !matches!(
        s,
        ProgramState::Starting | ProgramState::Stopping | ProgramState::Stopped
    )
}

fn settled_stop(s: ProgramState) -> bool {
    matches!(
        s,
        ProgramState::Stopped | ProgramState::Failed | ProgramState::Exited
    )
}

/// Registers a command that sends `make` to every named program and waits for `settled`.
fn register_action<K>(
    ctx: &Ctx<Vec<ProgramConfig>>,
    table: &Table,
    env: &Arc<Env>,
    make: fn(oneshot::Sender<()>) -> Cmd,
    settled: fn(ProgramState) -> bool,
) where
    K: Command<Args = NamesArgs, Reply = Programs>,
{
    let t = table.clone();
    let states = env.states.clone();
    ctx.handle::<K, _, _>(move |args: NamesArgs| {
        let t = t.clone();
        let states = states.clone();
        async move {
            let entries = lookup(&t, &args.all())?;
            each(entries, states, make, settled).await
        }
    });
}

/// Registers every command of `majordomo_proto::supervisor::COMMANDS`.
pub fn register(ctx: &Ctx<Vec<ProgramConfig>>, table: &Table, env: &Arc<Env>) {
    let t = table.clone();
    ctx.handle::<PsCmd, _, _>(move |args: NamesArgs| {
        let t = t.clone();
        async move {
            let names = args.all();
            let entries = if names.is_empty() {
                t.read()
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default()
            } else {
                lookup(&t, &names)?
            };
            Ok(rows(&entries))
        }
    });
    register_action::<StartCmd>(ctx, table, env, Cmd::Start, settled_start);
    register_action::<RestartCmd>(ctx, table, env, Cmd::Restart, settled_start);
    register_action::<StopCmd>(ctx, table, env, Cmd::Stop, settled_stop);
    let t = table.clone();
    ctx.handle::<SignalCmd, _, _>(move |a: SignalArgs| {
        let t = t.clone();
        async move { signal(&t, a).await }
    });
    let t = table.clone();
    ctx.handle::<LogsCmd, _, _>(move |a: LogsArgs| {
        let t = t.clone();
        async move { logs(&t, a).await }
    });
}

async fn logs(table: &Table, a: LogsArgs) -> Result<LogTail, ErrorBody> {
    let e = lookup(table, std::slice::from_ref(&a.name))?
        .pop()
        .ok_or_else(|| removed(&a.name))?;
    let file = match e.info.lock() {
        Ok(i) => i.log_file.clone(),
        Err(p) => p.into_inner().log_file.clone(),
    };
    let n = a.count();
    let path = std::path::PathBuf::from(&file);
    let bytes = tokio::task::spawn_blocking(move || crate::output::last_lines(&path, n))
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("reading {file}: {e}")))?;
    Ok(LogTail {
        name: a.name,
        file,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

async fn signal(table: &Table, a: SignalArgs) -> Result<Signaled, ErrorBody> {
    let sig = config::signal_name(&a.signal).ok_or_else(|| {
        bad(format!(
            "{:?} is not a signal name; use one of {}",
            a.signal,
            config::SIGNALS.join(", ")
        ))
    })?;
    let e = lookup(table, std::slice::from_ref(&a.name))?
        .into_iter()
        .next()
        .ok_or_else(|| bad(format!("unknown program {:?}", a.name)))?;
    let (tx, rx) = oneshot::channel();
    e.tx.send(Cmd::Signal(sig.to_string(), tx))
        .await
        .map_err(|_| removed(&a.name))?;
    match rx.await {
        Ok(Ok(())) => Ok(Signaled {
            pid: e.info.lock().ok().and_then(|i| i.pid),
            name: a.name,
            signal: sig.to_string(),
        }),
        Ok(Err(msg)) => Err(bad(msg)),
        Err(_) => Err(removed(&a.name)),
    }
}
