//! Health monitor: the metrics collector and its history, checks, alerts (the [`Monitor`]
//! subsystem) and notifiers (the [`Notify`] subsystem).
//!
//! The monitor collects every `[monitor] interval`, appends to the on-disk history, evaluates
//! the metric checks, and runs each command/tcp/http/program check in its own task. Alert
//! transitions (pending → firing → resolved) are published on the hub as
//! [`majordomo_proto::Event::Alert`]; the notify subsystem subscribes to them, so the two never
//! call each other. Each logs the events it emits.
#![deny(unsafe_code)]

pub mod alerts;
pub mod checks;
pub mod collect;
pub mod config;
pub mod history;
pub mod metrics;
pub mod monitor;
pub mod notifier;
pub mod notify;

pub use config::{
    CheckConfig, MonitorConfig, MonitorSection, NotifierConfig, QuietHours, default_checks,
    validate,
};
pub use majordomo_proto::monitor::{Alert, AlertState, Delivery, NotifierKind, Outcome, Severity};
pub use monitor::Monitor;
pub use notifier::Notify;

/// Appends to a JSON-lines file, keeping it under 1 MB (the previous part is kept as `.1.jsonl`).
pub(crate) fn append_rotating(path: &std::path::Path, text: &str) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 1_000_000) {
        let _ = std::fs::rename(path, path.with_extension("1.jsonl"));
    }
    match majordomo_core::jsonl::append_line(path, text.trim_end_matches('\n').as_bytes()) {
        Ok(true) => {
            tracing::warn!(path = %path.display(), "its last line was torn (a crash or a full disk); ended it so the new record stays whole")
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot append"),
    }
}

/// Repairs a JSON-lines store's file when it is opened (core's `jsonl::repair`: a torn tail
/// cut or ended, corrupt lines counted) and says what it found, once. `what` names the store.
pub(crate) fn repair_jsonl(path: &std::path::Path, what: &str) {
    match majordomo_core::jsonl::repair(path) {
        Ok(r) if r.is_clean() => {}
        Ok(r) => {
            if r.cut > 0 {
                tracing::warn!(path = %path.display(), bytes = r.cut, "{what}: cut a torn last line (a crash or a full disk mid-write); that record is lost");
            }
            if r.ended {
                tracing::warn!(path = %path.display(), "{what}: its last record had no newline (a crash mid-write); ended it");
            }
            if r.corrupt > 0 {
                tracing::warn!(path = %path.display(), lines = r.corrupt, "{what}: lines that are not JSON are skipped when read");
            }
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "{what}: cannot check the file; check its permissions")
        }
    }
}

/// Logs an alert transition (the monitor emits it on the hub right after).
pub(crate) fn log_alert(a: &Alert) {
    match (a.state, a.severity) {
        (AlertState::Firing, Severity::Critical) => {
            tracing::error!(alert = %a.id, severity = a.severity.as_str(), "alert firing: {}", a.summary)
        }
        (AlertState::Firing, _) => {
            tracing::warn!(alert = %a.id, severity = a.severity.as_str(), "alert firing: {}", a.summary)
        }
        (state, _) => {
            tracing::info!(alert = %a.id, severity = a.severity.as_str(), "alert {}: {}", state.as_str(), a.summary)
        }
    }
}

/// Logs a notification's outcome (the notify subsystem emits it on the hub right after).
pub(crate) fn log_delivery(d: &Delivery) {
    match d.outcome {
        Outcome::Failed => {
            tracing::warn!(notifier = %d.notifier, alert = %d.alert, attempts = d.attempts.len(), reason = d.reason.as_deref().unwrap_or(""), "notification failed")
        }
        _ => {
            tracing::debug!(notifier = %d.notifier, alert = %d.alert, outcome = ?d.outcome, "notification")
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
