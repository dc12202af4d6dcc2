//! The audit record: one JSON line per host-changing QGA command (guest-exec, guest-file-*,
//! guest-set-user-password, ...) and per management command, in `<state>/guest-audit.jsonl`
//! (through core's `jsonl`: a torn tail never glues onto a new record), and the same in the
//! log under the target `majordomo::audit`. Arguments are shown with secrets redacted.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use majordomo_core::Who;
use serde_json::{Value, json};

/// Where audit records go.
pub struct Audit {
    path: Option<PathBuf>,
    lock: Mutex<()>,
}

impl Audit {
    /// Records to `path` (and the log); `None`: the log only.
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    /// One record: the command, who asked (`via`: the port or carrier; the peer's `uid` and
    /// `pid` where the carrier knows them), the arguments as shown (already redacted), the
    /// result and how long it took.
    pub fn record(
        &self,
        command: &str,
        who: &Who,
        args: &Value,
        result: Result<(), &str>,
        took: Duration,
    ) {
        let ms = took.as_millis() as u64;
        let via = if who.via.is_empty() {
            "instance protocol"
        } else {
            who.via
        };
        tracing::info!(
            target: "majordomo::audit",
            command,
            via,
            uid = who.uid,
            pid = who.pid,
            arguments = %args,
            ok = result.is_ok(),
            error = result.err().unwrap_or(""),
            ms,
            "guest command"
        );
        let Some(path) = &self.path else { return };
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut rec = json!({
            "at": at,
            "command": command,
            "via": via,
            "args": args,
            "ok": result.is_ok(),
            "ms": ms,
        });
        if let Some(uid) = who.uid {
            rec["uid"] = json!(uid);
        }
        if let Some(pid) = who.pid {
            rec["pid"] = json!(pid);
        }
        if let Err(e) = result {
            rec["error"] = json!(e);
        }
        let Ok(line) = serde_json::to_vec(&rec) else {
            return;
        };
        let _g = self.lock.lock();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = majordomo_core::jsonl::append_line(path, &line) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the guest audit record; it is in the log only");
        }
    }
}
