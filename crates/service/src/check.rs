//! `majordomo check`: the backup trigger (seed 002's scheduled task). Run by the OS scheduler
//! (systemd timer, Task Scheduler, launchd StartInterval): when the instance does not answer on
//! its socket, start it through the service manager and record that it did, in
//! `<state>/backup-trigger.json` (shown by `service status` and `doctor`).
//!
//! A lock (`<state>/backup-trigger.lock`) makes two overlapping runs never both act.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use majordomo_client::{Client, ConnectOptions};
use serde::{Deserialize, Serialize};

use super::{Action, Invocation, Target};
use majordomo_core::exit;

/// How long the instance gets to answer before it counts as down.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What the backup trigger did, kept across runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// Runs that found the instance answering.
    pub checks_ok: u64,
    /// Times the instance did not answer and a start was attempted.
    pub starts: u64,
    /// Of those, how many the service manager refused.
    pub start_failures: u64,
    pub last_check_at: Option<String>,
    pub last_start_at: Option<String>,
    /// Why the last start was needed (the connection error).
    pub last_reason: Option<String>,
    /// The service manager's error, when the last start failed.
    pub last_error: Option<String>,
}

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("backup-trigger.json")
    }

    /// The record, if the trigger ever acted or checked.
    pub fn read(state_dir: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        super::manifest::write_atomic(&Self::path(state_dir), text.as_bytes())
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        match &self.last_start_at {
            None => format!("{} checks, never had to start the instance", self.checks_ok),
            Some(at) => format!(
                "started the instance {} time(s), last at {at}{}",
                self.starts,
                match &self.last_error {
                    Some(e) => format!(" (FAILED: {e})"),
                    None => String::new(),
                }
            ),
        }
    }
}

/// Asks the instance for its status; its PID when it answers.
pub fn ping(socket: &Path, token: Option<String>) -> Result<u32, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let opts = ConnectOptions::new(socket)
            .token(token)
            .call_timeout(ANSWER_WITHIN);
        let fut = async {
            let mut c = Client::connect(&opts).await?;
            c.status().await
        };
        match tokio::time::timeout(ANSWER_WITHIN, fut).await {
            Ok(Ok(s)) => Ok(s.pid),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {ANSWER_WITHIN:?}")),
        }
    })
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `majordomo check`: prints what it found and did, returns the exit code.
pub fn main(inv: &Invocation) -> u8 {
    let t = match Target::any(inv) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("majordomo: {e}");
            return exit::USAGE;
        }
    };
    let state_dir = t.layout.clone().with_overrides(&t.settings.paths).state_dir;
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        eprintln!(
            "majordomo: cannot create the state folder {}: {e}",
            state_dir.display()
        );
        return exit::FAILURE;
    }
    // One trigger at a time: a second overlapping run leaves it to the first.
    let lock_path = state_dir.join("backup-trigger.lock");
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("majordomo: cannot open {}: {e}", lock_path.display());
            return exit::FAILURE;
        }
    };
    if lock.try_lock().is_err() {
        println!("another `majordomo check` is running for this instance; leaving it to that one");
        return exit::OK;
    }
    let mut record = Record::read(&state_dir).unwrap_or_default();
    record.last_check_at = Some(now());
    let code = match ping(&t.socket(), t.token(inv.token.clone())) {
        Ok(pid) => {
            record.checks_ok += 1;
            if inv.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "answers": true, "pid": pid})
                );
            } else {
                println!("instance '{}' answers (pid {pid})", t.instance);
            }
            exit::OK
        }
        Err(reason) => {
            record.starts += 1;
            record.last_start_at = record.last_check_at.clone();
            record.last_reason = Some(reason.clone());
            tracing::warn!(instance = %t.instance, %reason, "instance does not answer; starting it through the service manager");
            match super::run_action(&t, Action::Start) {
                Ok(()) => {
                    record.last_error = None;
                    if inv.json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": true, "answers": false, "started": true, "reason": reason})
                        );
                    } else {
                        println!(
                            "instance '{}' did not answer ({reason}); started {}",
                            t.instance,
                            super::service_name(&t)
                        );
                    }
                    exit::OK
                }
                Err(f) => {
                    record.start_failures += 1;
                    record.last_error = Some(f.message.clone());
                    if inv.json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": false, "answers": false, "started": false, "reason": reason, "error": f.message})
                        );
                    } else {
                        eprintln!(
                            "majordomo: instance '{}' did not answer ({reason}) and could not be started: {}",
                            t.instance, f.message
                        );
                    }
                    exit::FAILURE
                }
            }
        }
    };
    if let Err(e) = record.write(&state_dir) {
        eprintln!(
            "majordomo: cannot record the check in {}: {e}",
            Record::path(&state_dir).display()
        );
        return exit::FAILURE;
    }
    drop(lock);
    code
}
