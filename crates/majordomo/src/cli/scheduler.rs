//! CLI verbs of the scheduler: `job ls|run|history|pause|resume`, `state get|set|del|cas`,
//! `lock NAME -- CMD`, `notify send`. `state` and `lock` work without the daemon: the store and
//! the locks are files under the instance's state folder, used under the same locks.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_proto::scheduler::*;
use majordomo_proto::{ErrorCode, NoArgs};
use majordomo_scheduler::locks;
use majordomo_scheduler::store::Store;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Every job: schedule, next run, last result.
    Ls,
    /// Run a job now (its overlap policy applies).
    Run { name: String },
    /// A job's runs, newest first: exit code, duration, output tail, who triggered it.
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Stop scheduling a job (a running run continues); kept across restarts.
    Pause { name: String },
    /// Schedule a paused job again.
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// Print a key's JSON value (nothing and exit 1 when absent).
    Get { key: String },
    /// Set a key to a JSON value (a bare word is taken as a string).
    Set { key: String, value: String },
    /// Delete a key.
    Del { key: String },
    /// Compare and swap: set KEY to NEW only if it is EXPECTED now (`null` = absent); exit 1
    /// when it was not.
    Cas {
        key: String,
        expected: String,
        new: String,
    },
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (the one jobs' `lock` and `lock.acquire` use).
    pub name: String,
    /// Give up after this long (e.g. `30s`) instead of waiting until the lock is free; exits 75.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NotifySendArgs {
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub body: String,
    /// info, warning or critical.
    #[arg(long, default_value = "info")]
    pub severity: String,
    /// Only this notifier.
    #[arg(long)]
    pub notifier: Option<String>,
}

/// EX_TEMPFAIL: `lock --wait` gave up.
pub const LOCK_TIMEOUT: u8 = 75;

async fn call<K: majordomo_proto::Cmd>(
    client: &mut Client,
    args: &K::Args,
) -> Result<K::Reply, ClientError> {
    client.call_cmd::<K>(args).await.map_err(|e| match e {
        ClientError::Remote(mut body) if body.code == ErrorCode::UnknownCommand => {
            body.message = format!(
                "{}; the scheduler is not running in this instance (see `majordomo status`)",
                body.message
            );
            ClientError::Remote(body)
        }
        e => e,
    })
}

fn when(s: &Option<String>) -> String {
    s.as_deref()
        .and_then(|t| t.get(..19))
        .map(|t| t.replace('T', " "))
        .unwrap_or_else(|| "-".into())
}

fn last(r: &Option<Run>) -> String {
    match r {
        None => "never".into(),
        Some(r) => format!(
            "{} {}{}",
            when(&Some(r.started.clone())),
            r.outcome
                .map(|o| format!("{o:?}").to_lowercase())
                .unwrap_or_else(|| "running".into()),
            r.exit_code.map(|c| format!(" ({c})")).unwrap_or_default()
        ),
    }
}

pub async fn run(cmd: &JobCmd, opts: &ConnectOptions, json: bool) -> Result<u8, ClientError> {
    let mut client = Client::connect(opts).await?;
    let print = |v: &dyn erased_json::Json| println!("{}", v.json());
    match cmd {
        JobCmd::Ls => {
            let l = call::<JobLsCmd>(&mut client, &NoArgs {}).await?;
            if json {
                print(&l);
            } else {
                println!(
                    "{:<20} {:<32} {:<20} {:<8} LAST",
                    "JOB", "SCHEDULE", "NEXT", "STATE"
                );
                for j in &l.jobs {
                    let state = if j.running {
                        "running"
                    } else if j.paused {
                        "paused"
                    } else {
                        "idle"
                    };
                    println!(
                        "{:<20} {:<32} {:<20} {:<8} {}",
                        j.name,
                        j.schedule,
                        when(&j.next),
                        state,
                        last(&j.last)
                    );
                }
                println!(
                    "{} of at most {} runs in progress",
                    l.running, l.max_concurrent
                );
            }
        }
        JobCmd::Run { name } => {
            let r = call::<JobRunCmd>(&mut client, &JobArgs { name: name.clone() }).await?;
            if json {
                print(&r);
            } else {
                println!("{}: {}", r.name, r.result);
            }
        }
        JobCmd::History { name, limit } => {
            let runs = call::<JobHistoryCmd>(
                &mut client,
                &JobHistoryArgs {
                    name: name.clone(),
                    limit: Some(*limit),
                },
            )
            .await?;
            if json {
                print(&runs);
            } else {
                println!(
                    "{:<20} {:<20} {:>8} {:<12} {:>5} {:<9} BY",
                    "PLANNED", "STARTED", "LATE_MS", "OUTCOME", "EXIT", "TRIGGER"
                );
                for r in &runs {
                    println!(
                        "{:<20} {:<20} {:>8} {:<12} {:>5} {:<9} {}{}",
                        when(&Some(r.planned.clone())),
                        when(&Some(r.started.clone())),
                        r.late_ms,
                        r.outcome
                            .map(|o| format!("{o:?}").to_lowercase())
                            .unwrap_or_else(|| "running".into()),
                        r.exit_code.map(|c| c.to_string()).unwrap_or("-".into()),
                        format!("{:?}", r.trigger).to_lowercase(),
                        r.by,
                        r.error
                            .as_ref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        JobCmd::Pause { name } | JobCmd::Resume { name } => {
            let a = JobArgs { name: name.clone() };
            let row = if matches!(cmd, JobCmd::Pause { .. }) {
                call::<JobPauseCmd>(&mut client, &a).await?
            } else {
                call::<JobResumeCmd>(&mut client, &a).await?
            };
            if json {
                print(&row);
            } else {
                println!(
                    "{}: {}, next {}",
                    row.name,
                    if row.paused { "paused" } else { "scheduled" },
                    when(&row.next)
                );
            }
        }
    }
    Ok(exit::OK)
}

/// `notify send`, through the instance's notifiers.
pub async fn notify_send(
    a: &NotifySendArgs,
    opts: &ConnectOptions,
    json: bool,
) -> Result<u8, ClientError> {
    let severity: majordomo_proto::monitor::Severity =
        serde_json::from_value(Value::String(a.severity.to_lowercase())).map_err(|_| {
            ClientError::Protocol(format!(
                "--severity {:?}: use info, warning or critical",
                a.severity
            ))
        })?;
    let mut client = Client::connect(opts).await?;
    // The notifiers answer it (the monitor's command: "no [[notifier]]" when there is none).
    let r = super::monitor::call::<NotifySendCmd>(
        &mut client,
        &majordomo_proto::scheduler::NotifySendArgs {
            title: a.title.clone(),
            body: a.body.clone(),
            severity,
            notifier: a.notifier.clone(),
        },
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!("sent {}", r.id);
    }
    Ok(exit::OK)
}

/// A JSON value from the command line: JSON if it parses, else the text as a string.
fn value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn show(v: &StateValue, json: bool) {
    if json {
        println!("{}", serde_json::to_string(v).unwrap_or_default());
    } else if let Some(v) = &v.value {
        println!("{v}");
    }
}

/// `state ...`: through the daemon when it answers (so `state.watch` subscribers see the
/// change), else directly on the store, under the same lock.
pub fn state(cmd: &StateCmd, opts: &ConnectOptions, state_dir: &Path, json: bool) -> ExitCode {
    let online = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| rt.block_on(state_online(cmd, opts)).transpose());
    let result: Result<(bool, StateValue), String> = match online {
        Some(r) => r,
        None => {
            let st = Store::new(state_dir);
            match cmd {
                StateCmd::Get { key } => st.get(key).map(|v| (v.value.is_some(), v)),
                StateCmd::Set { key, value: v } => st.set(key, value(v)).map(|v| (true, v)),
                StateCmd::Del { key } => st.del(key).map(|v| (true, v)),
                StateCmd::Cas { key, expected, new } => {
                    let e = value(expected);
                    st.cas(key, Some(&e), Some(value(new)))
                }
            }
            .map_err(|e| format!("state store in {}: {e}", state_dir.display()))
        }
    };
    match result {
        Ok((ok, v)) => {
            show(&v, json);
            ExitCode::from(if ok { exit::OK } else { exit::FAILURE })
        }
        Err(e) => {
            eprintln!("majordomo: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// `None` when the daemon does not run (or has no scheduler): use the store directly.
async fn state_online(
    cmd: &StateCmd,
    opts: &ConnectOptions,
) -> Result<Option<(bool, StateValue)>, String> {
    let Ok(mut c) = Client::connect(opts).await else {
        return Ok(None);
    };
    let r = match cmd {
        StateCmd::Get { key } => c
            .call_cmd::<StateGetCmd>(&KeyArgs { key: key.clone() })
            .await
            .map(|v| (v.value.is_some(), v)),
        StateCmd::Set { key, value: v } => c
            .call_cmd::<StateSetCmd>(&StateSetArgs {
                key: key.clone(),
                value: value(v),
            })
            .await
            .map(|v| (true, v)),
        StateCmd::Del { key } => c
            .call_cmd::<StateDelCmd>(&KeyArgs { key: key.clone() })
            .await
            .map(|v| (true, v)),
        StateCmd::Cas { key, expected, new } => c
            .call_cmd::<StateCasCmd>(&StateCasArgs {
                key: key.clone(),
                expected: Some(value(expected)),
                value: Some(value(new)),
            })
            .await
            .map(|r| (r.swapped, r.current)),
    };
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Remote(b)) if b.code == ErrorCode::UnknownCommand => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// `lock NAME [--wait D] -- CMD ARGS...`: runs CMD holding the named lock; its exit code.
pub fn lock(a: &LockArgs, state_dir: &Path) -> ExitCode {
    let wait = match a.wait.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            eprintln!(
                "majordomo: --wait {:?}: {e}; write e.g. 30s or 2m",
                a.wait.as_deref().unwrap_or_default()
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    let held = match locks::acquire(state_dir, &a.name, wait) {
        Ok(Some(l)) => l,
        Ok(None) => {
            eprintln!(
                "majordomo: lock {:?} is still held after {}; giving up",
                a.name,
                humantime::format_duration(wait.unwrap_or(Duration::ZERO))
            );
            return ExitCode::from(LOCK_TIMEOUT);
        }
        Err(e) => {
            eprintln!("majordomo: lock {:?}: {e}", a.name);
            return ExitCode::from(exit::FAILURE);
        }
    };
    let status = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .env("MAJORDOMO_LOCK", &a.name)
        .status();
    drop(held);
    match status {
        Ok(s) => ExitCode::from(exit_code(&s)),
        Err(e) => {
            eprintln!("majordomo: cannot run {:?}: {e}", a.command[0]);
            ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            })
        }
    }
}

#[cfg(unix)]
fn exit_code(s: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => exit::FAILURE,
    }
}

#[cfg(not(unix))]
fn exit_code(s: &std::process::ExitStatus) -> u8 {
    s.code().map(|c| c as u8).unwrap_or(exit::FAILURE)
}

mod erased_json {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
