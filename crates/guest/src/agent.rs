//! The agent: answers one QGA request at a time (as qemu-ga does), with its state: guest-exec
//! children, open files, the fsfreeze state and its automatic thaw.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::GuestConfig;
use crate::qmp::{self, COMMANDS, Policy, QmpError, Request};

type R = Result<Value, QmpError>;

/// What a request produced: a reply line to send, or nothing (guest-shutdown).
pub enum Outcome {
    Reply(Vec<u8>),
    Silent,
}

struct ExecState {
    exited: Option<(Option<i32>, Option<i32>)>,
    out: Vec<u8>,
    err: Vec<u8>,
    out_trunc: bool,
    err_trunc: bool,
    capture: bool,
}

#[derive(Default)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Freeze {
    frozen: Vec<PathBuf>,
    generation: u64,
}

/// Shared agent state (the exec/file tables outlive one host connection, as in qemu-ga).
pub struct Agent {
    cfg: GuestConfig,
    policy: Policy,
    exclude: Vec<glob::Pattern>,
    execs: Mutex<HashMap<i64, Arc<Mutex<ExecState>>>>,
    files: Mutex<HashMap<i64, std::fs::File>>,
    next_handle: Mutex<i64>,
    freeze: Arc<Mutex<Freeze>>,
    /// The port requests arrive on, for the audit record.
    pub origin: majordomo_core::Who,
    audit: Arc<crate::audit::Audit>,
}

/// Who QGA requests come from, for the audit record: the host, through the agent port.
pub const QGA_ORIGIN: majordomo_core::Who = majordomo_core::Who {
    via: "virtio port org.qemu.guest_agent.0",
    uid: None,
    pid: None,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncArgs {
    id: i64,
}

impl Agent {
    pub fn new(cfg: GuestConfig, origin: majordomo_core::Who) -> Self {
        let policy = Policy::new(&cfg.allow, &cfg.block).unwrap_or_default();
        let exclude = cfg
            .network_exclude
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect();
        Self {
            cfg,
            policy,
            exclude,
            execs: Mutex::default(),
            files: Mutex::default(),
            next_handle: Mutex::new(1000),
            freeze: Arc::default(),
            origin,
            audit: Arc::new(crate::audit::Audit::new(None)),
        }
    }

    /// Where the audit records go (the log only by default).
    pub fn with_audit(mut self, audit: Arc<crate::audit::Audit>) -> Self {
        self.audit = audit;
        self
    }

    /// Whether filesystems are frozen now.
    pub fn frozen(&self) -> bool {
        self.freeze
            .lock()
            .map(|f| !f.frozen.is_empty())
            .unwrap_or(false)
    }

    /// Answers one framed request.
    pub async fn handle_bytes(&self, bytes: &[u8]) -> Outcome {
        match qmp::parse(bytes) {
            Ok(req) => self.handle(req).await,
            Err((e, id)) => Outcome::Reply(qmp::reply_line(&Err(e), id.as_ref())),
        }
    }

    pub async fn handle(&self, req: Request) -> Outcome {
        let Request {
            execute,
            arguments,
            id,
        } = req;
        let Some(info) = qmp::lookup(&execute) else {
            return Outcome::Reply(qmp::reply_line(
                &Err(QmpError::not_found(&execute)),
                id.as_ref(),
            ));
        };
        if !self.policy.enabled(info) {
            return Outcome::Reply(qmp::reply_line(
                &Err(QmpError::disabled(&execute)),
                id.as_ref(),
            ));
        }
        // While frozen, only what cannot write to a filesystem (qemu-ga's frozen allow-list).
        if self.frozen()
            && !matches!(
                execute.as_str(),
                "guest-sync"
                    | "guest-sync-delimited"
                    | "guest-ping"
                    | "guest-info"
                    | "guest-fsfreeze-status"
                    | "guest-fsfreeze-thaw"
                    | "guest-get-time"
                    | "guest-get-osinfo"
                    | "guest-get-host-name"
            )
        {
            return Outcome::Reply(qmp::reply_line(
                &Err(QmpError::generic(format!(
                    "Command {execute} has been disabled: the agent is in frozen state"
                ))),
                id.as_ref(),
            ));
        }
        let audited = matches!(
            execute.as_str(),
            "guest-exec"
                | "guest-set-user-password"
                | "guest-shutdown"
                | "guest-set-time"
                | "guest-fsfreeze-freeze"
                | "guest-fsfreeze-freeze-list"
                | "guest-fsfreeze-thaw"
                | "__org.majordomo_exec"
        ) || execute.starts_with("guest-file-");
        let shown_args = if audited {
            redact(&execute, &arguments)
        } else {
            Value::Null
        };
        let started = Instant::now();
        let delimited = execute == "guest-sync-delimited";
        let result = self.dispatch(&execute, arguments).await;
        if audited {
            self.audit.record(
                &execute,
                &self.origin,
                &shown_args,
                result.as_ref().map(|_| ()).map_err(|e| e.desc.as_str()),
                started.elapsed(),
            );
        }
        if !info.success_response && result.is_ok() {
            return Outcome::Silent;
        }
        let mut line = Vec::new();
        if delimited && result.is_ok() {
            line.push(0xFF);
        }
        line.extend(qmp::reply_line(&result, id.as_ref()));
        Outcome::Reply(line)
    }

    async fn dispatch(&self, name: &str, a: Map<String, Value>) -> R {
        let no_args = |a: &Map<String, Value>| -> Result<(), QmpError> {
            match a.keys().next() {
                Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
                None => Ok(()),
            }
        };
        match name {
            "guest-sync" | "guest-sync-delimited" => {
                let s: SyncArgs = qmp::args(a)?;
                Ok(json!(s.id))
            }
            "guest-ping" => no_args(&a).map(|_| json!({})),
            "guest-info" => {
                no_args(&a)?;
                Ok(self.info())
            }
            "guest-get-osinfo" => no_args(&a).and_then(|_| crate::sys::osinfo()),
            "guest-get-host-name" => no_args(&a).and_then(|_| crate::sys::host_name()),
            "guest-get-timezone" => no_args(&a).and_then(|_| crate::sys::timezone()),
            "guest-get-time" => no_args(&a).and_then(|_| crate::sys::time_ns()),
            "guest-set-time" => self.set_time(a).await,
            "guest-get-users" => no_args(&a).and_then(|_| crate::sys::users()),
            "guest-get-vcpus" => no_args(&a).and_then(|_| crate::sys::vcpus()),
            "guest-network-get-interfaces" => {
                no_args(&a).and_then(|_| crate::sys::interfaces(&self.exclude))
            }
            "guest-get-fsinfo" => no_args(&a).and_then(|_| crate::sys::fsinfo()),
            "guest-get-disks" => no_args(&a).and_then(|_| crate::sys::disks()),
            "guest-get-diskstats" => no_args(&a).and_then(|_| crate::sys::diskstats()),
            "guest-get-cpustats" => no_args(&a).and_then(|_| crate::sys::cpustats()),
            "guest-get-load" => no_args(&a).and_then(|_| crate::sys::load()),
            "guest-get-memory-blocks" => no_args(&a).and_then(|_| crate::sys::memory_blocks()),
            "guest-get-memory-block-info" => {
                no_args(&a).and_then(|_| crate::sys::memory_block_info())
            }
            "guest-fsfreeze-status" => {
                no_args(&a)?;
                Ok(json!(if self.frozen() { "frozen" } else { "thawed" }))
            }
            "guest-fsfreeze-freeze" => {
                no_args(&a)?;
                self.freeze(None).await
            }
            "guest-fsfreeze-freeze-list" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    mountpoints: Option<Vec<String>>,
                }
                let x: A = qmp::args(a)?;
                self.freeze(x.mountpoints).await
            }
            "guest-fsfreeze-thaw" => {
                no_args(&a)?;
                Ok(json!(
                    thaw(&self.freeze, self.cfg.fsfreeze_hook_dir.as_deref()).await
                ))
            }
            "guest-fstrim" => self.fstrim(a),
            "guest-shutdown" => self.shutdown(a).await,
            "guest-exec" | "__org.majordomo_exec" => self.exec(a, name != "guest-exec"),
            "guest-exec-status" => self.exec_status(a),
            "guest-file-open" => self.file_open(a),
            "guest-file-read" => self.file_read(a),
            "guest-file-write" => self.file_write(a),
            "guest-file-seek" => self.file_seek(a),
            "guest-file-flush" => self.file_flush(a),
            "guest-file-close" => self.file_close(a),
            "guest-set-user-password" => self.set_password(a).await,
            "__org.majordomo_metrics" => {
                no_args(&a)?;
                Ok(crate::metrics::snapshot())
            }
            _ => Err(QmpError::not_found(name)),
        }
    }

    fn info(&self) -> Value {
        let cmds: Vec<Value> = COMMANDS
            .iter()
            .map(|c| {
                json!({"name": c.name, "enabled": self.policy.enabled(c), "success-response": c.success_response})
            })
            .collect();
        json!({"version": env!("CARGO_PKG_VERSION"), "supported_commands": cmds})
    }

    async fn set_time(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            time: Option<i64>,
        }
        let x: A = qmp::args(a)?;
        #[cfg(target_os = "linux")]
        {
            match x.time {
                Some(ns) => {
                    let ts = nix::sys::time::TimeSpec::new(ns / 1_000_000_000, ns % 1_000_000_000);
                    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(
                        |e| QmpError::generic(format!("Failed to set time to guest: {e}")),
                    )?;
                    // Keep the hardware clock in step, as qemu-ga does (best effort).
                    let _ = run_quiet("hwclock", &["-w"]).await;
                }
                None => {
                    run_quiet("hwclock", &["-s"]).await.map_err(|e| {
                        QmpError::generic(format!("hwclock failed to set system time: {e}"))
                    })?;
                }
            }
            Ok(json!({}))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = x.time;
            Err(QmpError::unsupported("guest-set-time"))
        }
    }

    async fn freeze(&self, list: Option<Vec<String>>) -> R {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            if self.frozen() {
                return Err(QmpError::generic(
                    "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state",
                ));
            }
            hooks(self.cfg.fsfreeze_hook_dir.as_deref(), "freeze").await?;
            let mut mounts: Vec<String> = crate::sys::block_mounts()
                .into_iter()
                .map(|m| m.mountpoint)
                .collect();
            if let Some(l) = list {
                for m in &l {
                    if !mounts.contains(m) {
                        return Err(QmpError::generic(format!("Mount point '{m}' not found")));
                    }
                }
                mounts = l;
            }
            // Deepest first, like qemu-ga (reverse mount order), so no parent is frozen before a child.
            mounts.reverse();
            let mut done = Vec::new();
            for m in mounts {
                let f = match std::fs::File::open(&m) {
                    Ok(f) => f,
                    Err(e) => {
                        self.rollback(done).await;
                        return Err(QmpError::generic(format!("failed to open {m}: {e}")));
                    }
                };
                match majordomo_platform::guest::fs_freeze(f.as_fd(), true) {
                    Ok(()) => done.push(PathBuf::from(&m)),
                    // Already frozen by someone else, or a filesystem that cannot freeze: qemu-ga
                    // skips EOPNOTSUPP and fails on the rest.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {}
                    Err(e) => {
                        self.rollback(done).await;
                        return Err(QmpError::generic(format!("failed to freeze {m}: {e}")));
                    }
                }
            }
            let n = done.len();
            let generation = {
                let mut f = self
                    .freeze
                    .lock()
                    .map_err(|_| QmpError::generic("internal lock"))?;
                f.frozen = done;
                f.generation += 1;
                f.generation
            };
            // The automatic thaw: filesystems left frozen by a host that died hang the guest.
            let limit = self.cfg.fsfreeze_timeout.get();
            if !limit.is_zero() {
                let state = self.freeze.clone();
                let hook_dir = self.cfg.fsfreeze_hook_dir.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(limit).await;
                    let still = state
                        .lock()
                        .map(|f| f.generation == generation && !f.frozen.is_empty())
                        .unwrap_or(false);
                    if still {
                        let n = thaw(&state, hook_dir.as_deref()).await;
                        tracing::warn!(thawed = n, after = ?limit, "filesystems were still frozen at the deadline ([guest] fsfreeze_timeout): thawed them");
                    }
                });
            }
            Ok(json!(n))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = list;
            Err(QmpError::unsupported("guest-fsfreeze-freeze"))
        }
    }

    #[cfg(target_os = "linux")]
    async fn rollback(&self, done: Vec<PathBuf>) {
        if let Ok(mut f) = self.freeze.lock() {
            f.frozen = done;
        }
        thaw(&self.freeze, self.cfg.fsfreeze_hook_dir.as_deref()).await;
    }

    fn fstrim(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            minimum: Option<u64>,
        }
        let x: A = qmp::args(a)?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            let mut paths = Vec::new();
            for m in crate::sys::block_mounts() {
                let mut r = json!({"path": m.mountpoint});
                match std::fs::File::open(&m.mountpoint) {
                    Ok(f) => {
                        match majordomo_platform::guest::fs_trim(f.as_fd(), x.minimum.unwrap_or(0))
                        {
                            Ok(n) => {
                                r["trimmed"] = json!(n);
                                r["minimum"] = json!(x.minimum.unwrap_or(0));
                            }
                            Err(e) => r["error"] = json!(e.to_string()),
                        }
                    }
                    Err(e) => r["error"] = json!(e.to_string()),
                }
                paths.push(r);
            }
            Ok(json!({ "paths": paths }))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = x.minimum;
            Err(QmpError::unsupported("guest-fstrim"))
        }
    }

    async fn shutdown(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            mode: Option<String>,
        }
        let x: A = qmp::args(a)?;
        let mode = x.mode.unwrap_or_else(|| "powerdown".into());
        let (flag, systemctl) = match mode.as_str() {
            "powerdown" => ("-P", "poweroff"),
            "halt" => ("-H", "halt"),
            "reboot" => ("-r", "reboot"),
            other => {
                return Err(QmpError::generic(format!(
                    "Parameter 'mode' expects 'halt', 'powerdown' or 'reboot', not '{other}'"
                )));
            }
        };
        #[cfg(unix)]
        {
            if run_quiet("shutdown", &[flag, "+0", "hypervisor initiated shutdown"])
                .await
                .is_ok()
                || run_quiet("systemctl", &[systemctl]).await.is_ok()
                || run_quiet(systemctl, &[]).await.is_ok()
            {
                return Ok(json!({}));
            }
            Err(QmpError::generic("child process has failed to shutdown"))
        }
        #[cfg(windows)]
        {
            let _ = (flag, systemctl);
            let arg = match mode.as_str() {
                "reboot" => "/r",
                _ => "/s",
            };
            run_quiet("shutdown", &[arg, "/t", "0"])
                .await
                .map(|_| json!({}))
                .map_err(|e| QmpError::generic(format!("shutdown failed: {e}")))
        }
    }

    fn exec(&self, a: Map<String, Value>, extended: bool) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            path: String,
            arg: Option<Vec<String>>,
            env: Option<Vec<String>>,
            #[serde(rename = "input-data")]
            input_data: Option<String>,
            #[serde(rename = "capture-output")]
            capture_output: Option<Value>,
            /// majordomo's extension only.
            cwd: Option<String>,
            timeout: Option<u64>,
        }
        let x: A = qmp::args(a)?;
        if !extended && (x.cwd.is_some() || x.timeout.is_some()) {
            return Err(QmpError::generic(
                "Parameter 'cwd'/'timeout' is unexpected (use __org.majordomo_exec)",
            ));
        }
        let input =
            match &x.input_data {
                Some(s) => Some(B64.decode(s).map_err(|e| {
                    QmpError::generic(format!("Invalid base64 in 'input-data': {e}"))
                })?),
                None => None,
            };
        let capture = match &x.capture_output {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(Value::String(s)) if ["none"].contains(&s.as_str()) => false,
            Some(Value::String(s))
                if ["stdout", "stderr", "separated", "merged"].contains(&s.as_str()) =>
            {
                true
            }
            Some(v) => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter 'capture-output': {v}"
                )));
            }
        };
        // std::process and plain threads: the child's pipes and its wait never touch the
        // runtime, so a guest with one vCPU keeps answering while children run.
        let mut cmd = std::process::Command::new(&x.path);
        cmd.args(x.arg.unwrap_or_default());
        if !self.cfg.exec_inherit_env {
            cmd.env_clear();
        }
        for kv in x.env.unwrap_or_default() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        if let Some(d) = &x.cwd {
            cmd.current_dir(d);
        }
        cmd.stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        let pipe = || {
            if capture {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        cmd.stdout(pipe()).stderr(pipe());
        let mut child = cmd.spawn().map_err(|e| {
            QmpError::generic(format!(
                "Guest agent command failed, error was '{}: {e}'",
                x.path
            ))
        })?;
        let pid = i64::from(child.id());
        let state = Arc::new(Mutex::new(ExecState {
            exited: None,
            out: Vec::new(),
            err: Vec::new(),
            out_trunc: false,
            err_trunc: false,
            capture,
        }));
        if let Ok(mut m) = self.execs.lock() {
            m.insert(pid, state.clone());
        }
        let cap = usize::try_from(self.cfg.exec_max_output.bytes()).unwrap_or(usize::MAX);
        let limit = x
            .timeout
            .map(Duration::from_secs)
            .or_else(|| Some(self.cfg.exec_timeout.get()).filter(|d| !d.is_zero()));
        if let (Some(mut w), Some(data)) = (child.stdin.take(), input) {
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = w.write_all(&data);
            });
        }
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let r = r?;
            let st = state.clone();
            std::thread::Builder::new()
                .name("guest-exec-io".into())
                .spawn(move || drain(r, &st, cap, i == 0))
                .ok()
        })
        .collect();
        let spawned = std::thread::Builder::new()
            .name("guest-exec".into())
            .spawn(move || {
                let started = Instant::now();
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break Ok(s),
                        Ok(None) => {
                            if limit.is_some_and(|l| started.elapsed() > l) {
                                let _ = child.kill();
                                break child.wait();
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => break Err(e),
                    }
                };
                for r in readers {
                    let _ = r.join();
                }
                let (code, sig) = match status {
                    #[cfg(unix)]
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        (s.code(), s.signal())
                    }
                    #[cfg(not(unix))]
                    Ok(s) => (s.code(), None),
                    Err(_) => (None, None),
                };
                if let Ok(mut st) = state.lock() {
                    st.exited = Some((code, sig));
                }
            });
        if let Err(e) = spawned {
            return Err(QmpError::generic(format!("cannot watch the child: {e}")));
        }
        Ok(json!({ "pid": pid }))
    }

    fn exec_status(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            pid: i64,
        }
        let x: A = qmp::args(a)?;
        let st = self
            .execs
            .lock()
            .ok()
            .and_then(|m| m.get(&x.pid).cloned())
            .ok_or_else(|| QmpError::generic("Invalid parameter 'pid'"))?;
        let st = st.lock().map_err(|_| QmpError::generic("internal lock"))?;
        let Some((code, sig)) = st.exited else {
            return Ok(json!({"exited": false}));
        };
        let mut r = json!({"exited": true});
        if let Some(c) = code {
            r["exitcode"] = json!(c);
        }
        if let Some(s) = sig {
            r["signal"] = json!(s);
        }
        if st.capture {
            if !st.out.is_empty() {
                r["out-data"] = json!(B64.encode(&st.out));
            }
            if !st.err.is_empty() {
                r["err-data"] = json!(B64.encode(&st.err));
            }
            if st.out_trunc {
                r["out-truncated"] = json!(true);
            }
            if st.err_trunc {
                r["err-truncated"] = json!(true);
            }
        }
        drop(st);
        // Reported once, then forgotten (as qemu-ga does).
        if let Ok(mut m) = self.execs.lock() {
            m.remove(&x.pid);
        }
        Ok(r)
    }

    fn handle_of(&self, h: i64) -> Result<std::fs::File, QmpError> {
        self.files
            .lock()
            .ok()
            .and_then(|m| m.get(&h).and_then(|f| f.try_clone().ok()))
            .ok_or_else(|| QmpError::generic(format!("handle '{h}' has not been found")))
    }

    fn file_open(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            path: String,
            mode: Option<String>,
        }
        let x: A = qmp::args(a)?;
        let mode = x.mode.unwrap_or_else(|| "r".into());
        let mut o = std::fs::OpenOptions::new();
        match mode.trim_end_matches('b').replace('b', "").as_str() {
            "r" => o.read(true),
            "r+" => o.read(true).write(true),
            "w" => o.write(true).create(true).truncate(true),
            "w+" => o.read(true).write(true).create(true).truncate(true),
            "a" => o.append(true).create(true),
            "a+" => o.read(true).append(true).create(true),
            _ => {
                return Err(QmpError::generic(format!(
                    "invalid file open mode '{mode}'"
                )));
            }
        };
        let f = o.open(&x.path).map_err(|e| {
            QmpError::generic(format!(
                "failed to open file '{}' (mode: '{mode}'): {e}",
                x.path
            ))
        })?;
        let mut n = self
            .next_handle
            .lock()
            .map_err(|_| QmpError::generic("internal lock"))?;
        *n += 1;
        let h = *n;
        if let Ok(mut m) = self.files.lock() {
            m.insert(h, f);
        }
        Ok(json!(h))
    }

    fn file_read(&self, a: Map<String, Value>) -> R {
        use std::io::Read;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            handle: i64,
            count: Option<i64>,
        }
        let x: A = qmp::args(a)?;
        let count = x.count.unwrap_or(4096);
        if !(0..=48 * 1024 * 1024).contains(&count) {
            return Err(QmpError::generic(format!(
                "value '{count}' is invalid for argument count"
            )));
        }
        let mut f = self.handle_of(x.handle)?;
        let mut buf = vec![0u8; count as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(QmpError::generic(format!("failed to read file: {e}"))),
            }
        }
        buf.truncate(got);
        Ok(json!({"count": got, "buf-b64": B64.encode(&buf), "eof": got < count as usize}))
    }

    fn file_write(&self, a: Map<String, Value>) -> R {
        use std::io::Write;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            handle: i64,
            #[serde(rename = "buf-b64")]
            buf: String,
            count: Option<usize>,
        }
        let x: A = qmp::args(a)?;
        let data = B64
            .decode(&x.buf)
            .map_err(|e| QmpError::generic(format!("Invalid base64 in 'buf-b64': {e}")))?;
        let n = x.count.unwrap_or(data.len());
        if n > data.len() {
            return Err(QmpError::generic(format!(
                "value '{n}' is invalid for argument count"
            )));
        }
        let mut f = self.handle_of(x.handle)?;
        f.write_all(&data[..n])
            .map_err(|e| QmpError::generic(format!("failed to write to file: {e}")))?;
        Ok(json!({"count": n, "eof": false}))
    }

    fn file_seek(&self, a: Map<String, Value>) -> R {
        use std::io::{Seek, SeekFrom};
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            handle: i64,
            offset: i64,
            whence: Value,
        }
        let x: A = qmp::args(a)?;
        let pos = match &x.whence {
            Value::String(s) if s == "set" => SeekFrom::Start(x.offset.max(0) as u64),
            Value::String(s) if s == "cur" => SeekFrom::Current(x.offset),
            Value::String(s) if s == "end" => SeekFrom::End(x.offset),
            Value::Number(n) if n.as_i64() == Some(0) => SeekFrom::Start(x.offset.max(0) as u64),
            Value::Number(n) if n.as_i64() == Some(1) => SeekFrom::Current(x.offset),
            Value::Number(n) if n.as_i64() == Some(2) => SeekFrom::End(x.offset),
            w => return Err(QmpError::generic(format!("invalid whence code {w}"))),
        };
        let mut f = self.handle_of(x.handle)?;
        let p = f
            .seek(pos)
            .map_err(|e| QmpError::generic(format!("failed to seek file: {e}")))?;
        Ok(json!({"position": p, "eof": false}))
    }

    fn file_flush(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            handle: i64,
        }
        let x: A = qmp::args(a)?;
        self.handle_of(x.handle)?
            .sync_data()
            .map_err(|e| QmpError::generic(format!("failed to flush file: {e}")))?;
        Ok(json!({}))
    }

    fn file_close(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            handle: i64,
        }
        let x: A = qmp::args(a)?;
        let removed = self.files.lock().ok().and_then(|mut m| m.remove(&x.handle));
        match removed {
            Some(_) => Ok(json!({})),
            None => Err(QmpError::generic(format!(
                "handle '{}' has not been found",
                x.handle
            ))),
        }
    }

    async fn set_password(&self, a: Map<String, Value>) -> R {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct A {
            username: String,
            password: String,
            crypted: bool,
        }
        let x: A = qmp::args(a)?;
        let pw = B64
            .decode(&x.password)
            .map_err(|e| QmpError::generic(format!("Invalid base64 in 'password': {e}")))?;
        let pw = String::from_utf8(pw).map_err(|_| QmpError::generic("password is not UTF-8"))?;
        if pw.contains('\n') || x.username.contains(':') || x.username.contains('\n') {
            return Err(QmpError::generic(
                "username or password contains a forbidden character",
            ));
        }
        let mut args = vec![];
        if x.crypted {
            args.push("-e");
        }
        let input = format!("{}:{}\n", x.username, pw);
        let mut child = tokio::process::Command::new("chpasswd")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| QmpError::generic(format!("cannot run chpasswd: {e}")))?;
        if let Some(mut w) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let _ = w.write_all(input.as_bytes()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| QmpError::generic(e.to_string()))?;
        if out.status.success() {
            Ok(json!({}))
        } else {
            Err(QmpError::generic(format!(
                "child process has failed to set user password: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

fn drain(mut src: Box<dyn std::io::Read + Send>, st: &Mutex<ExecState>, cap: usize, out: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut s) = st.lock() {
                    let s = &mut *s;
                    let (v, t) = if out {
                        (&mut s.out, &mut s.out_trunc)
                    } else {
                        (&mut s.err, &mut s.err_trunc)
                    };
                    let room = cap.saturating_sub(v.len());
                    if n > room {
                        *t = true;
                    }
                    v.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    }
}

/// Thaws what is frozen (hooks after), returns how many filesystems were thawed.
async fn thaw(state: &Mutex<Freeze>, hook_dir: Option<&std::path::Path>) -> usize {
    let list = match state.lock() {
        Ok(mut f) => std::mem::take(&mut f.frozen),
        Err(_) => return 0,
    };
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut n = 0;
    #[cfg(target_os = "linux")]
    for m in list.iter().rev() {
        use std::os::fd::AsFd;
        if let Ok(f) = std::fs::File::open(m)
            && majordomo_platform::guest::fs_freeze(f.as_fd(), false).is_ok()
        {
            n += 1;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = &list;
    if let Err(e) = hooks(hook_dir, "thaw").await {
        tracing::warn!(error = %e.desc, "fsfreeze thaw hook failed");
    }
    n
}

/// Runs every executable in the hook folder with `freeze`/`thaw`, in name order (thaw in
/// reverse), as qemu-ga's fsfreeze-hook.d does. A failing freeze hook fails the freeze.
async fn hooks(dir: Option<&std::path::Path>, phase: &str) -> Result<(), QmpError> {
    let Some(dir) = dir else { return Ok(()) };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut list: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    list.sort();
    if phase == "thaw" {
        list.reverse();
    }
    for h in list {
        let st = tokio::process::Command::new(&h)
            .arg(phase)
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| QmpError::generic(format!("fsfreeze hook {}: {e}", h.display())))?;
        if !st.success() && phase == "freeze" {
            return Err(QmpError::generic(format!(
                "fsfreeze hook {} failed with {st}",
                h.display()
            )));
        }
    }
    Ok(())
}

async fn run_quiet(prog: &str, args: &[&str]) -> Result<(), String> {
    let st = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("{prog}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{prog}: {st}"))
    }
}

/// The arguments as the audit record shows them: passwords and file/stdin contents replaced.
pub fn redact(cmd: &str, args: &Map<String, Value>) -> Value {
    let mut m = args.clone();
    for k in ["password", "buf-b64", "input-data"] {
        if let Some(v) = m.get_mut(k) {
            let len = v.as_str().map(str::len).unwrap_or(0);
            *v = json!(format!("<redacted {len} chars>"));
        }
    }
    if (cmd == "guest-exec" || cmd == "__org.majordomo_exec")
        && let Some(Value::Array(env)) = m.get_mut("env")
    {
        {
            for e in env.iter_mut() {
                if let Some(s) = e.as_str()
                    && let Some((k, _)) = s.split_once('=')
                {
                    *e = json!(format!("{k}=<redacted>"));
                }
            }
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(cfg: GuestConfig) -> Agent {
        Agent::new(cfg, majordomo_core::Who::default())
    }

    async fn ask(a: &Agent, line: &str) -> Value {
        match a.handle_bytes(line.as_bytes()).await {
            Outcome::Reply(mut l) => {
                if l.first() == Some(&0xFF) {
                    l.remove(0);
                }
                assert_eq!(l.iter().filter(|&&b| b == b'\n').count(), 1);
                serde_json::from_slice(&l).unwrap()
            }
            Outcome::Silent => Value::Null,
        }
    }

    #[tokio::test]
    async fn sync_ping_info_and_errors() {
        let a = agent(GuestConfig::default());
        assert_eq!(
            ask(&a, r#"{"execute":"guest-sync","arguments":{"id":42}}"#).await,
            json!({"return":42})
        );
        match a
            .handle_bytes(br#"{"execute":"guest-sync-delimited","arguments":{"id":1}}"#)
            .await
        {
            Outcome::Reply(l) => assert_eq!(l, b"\xff{\"return\":1}\n"),
            Outcome::Silent => panic!(),
        }
        assert_eq!(
            ask(&a, r#"{"execute":"guest-ping","id":"x"}"#).await,
            json!({"return":{},"id":"x"})
        );
        let e = ask(&a, r#"{"execute":"nope"}"#).await;
        assert_eq!(e["error"]["class"], "CommandNotFound");
        let e = ask(
            &a,
            r#"{"execute":"guest-exec","arguments":{"path":"/bin/true"}}"#,
        )
        .await;
        assert_eq!(e["error"]["desc"], "Command guest-exec has been disabled");
        let e = ask(&a, r#"{"execute":"guest-sync","arguments":{"id":1,"x":2}}"#).await;
        assert_eq!(e["error"]["desc"], "Parameter 'x' is unexpected");
        let e = ask(&a, r#"{"execute":"guest-sync"}"#).await;
        assert_eq!(e["error"]["desc"], "Parameter 'id' is missing");
        let info = ask(&a, r#"{"execute":"guest-info"}"#).await;
        let cmds = info["return"]["supported_commands"].as_array().unwrap();
        let exec = cmds.iter().find(|c| c["name"] == "guest-exec").unwrap();
        assert_eq!(exec["enabled"], false);
        let sd = cmds.iter().find(|c| c["name"] == "guest-shutdown").unwrap();
        assert_eq!(sd["success-response"], false);
    }

    #[cfg(unix)] // runs /bin/sh
    #[tokio::test]
    async fn exec_and_files_when_allowed() {
        let a = agent(GuestConfig {
            allow: vec!["*".into()],
            ..Default::default()
        });
        let r = ask(&a, r#"{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","echo hi; echo err >&2; exit 3"],"capture-output":true}}"#).await;
        let pid = r["return"]["pid"].as_i64().unwrap();
        let st = loop {
            let st = ask(
                &a,
                &format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#),
            )
            .await;
            if st["return"]["exited"] == true {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(st["return"]["exitcode"], 3);
        assert_eq!(st["return"]["out-data"], B64.encode("hi\n"));
        assert_eq!(st["return"]["err-data"], B64.encode("err\n"));
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let h = ask(
            &a,
            &format!(
                r#"{{"execute":"guest-file-open","arguments":{{"path":"{}","mode":"w+"}}}}"#,
                p.display()
            ),
        )
        .await["return"]
            .as_i64()
            .unwrap();
        let w = ask(
            &a,
            &format!(
                r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{}"}}}}"#,
                B64.encode("hello")
            ),
        )
        .await;
        assert_eq!(w["return"]["count"], 5);
        let s = ask(&a, &format!(r#"{{"execute":"guest-file-seek","arguments":{{"handle":{h},"offset":0,"whence":"set"}}}}"#)).await;
        assert_eq!(s["return"]["position"], 0);
        let r = ask(
            &a,
            &format!(r#"{{"execute":"guest-file-read","arguments":{{"handle":{h},"count":100}}}}"#),
        )
        .await;
        assert_eq!(
            r["return"],
            json!({"count":5,"buf-b64":B64.encode("hello"),"eof":true})
        );
        assert_eq!(
            ask(
                &a,
                &format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{h}}}}}"#)
            )
            .await,
            json!({"return":{}})
        );
    }

    #[test]
    fn audit_redacts_secrets() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"username":"root","password":"c2VjcmV0","crypted":false}"#)
                .unwrap();
        let r = redact("guest-set-user-password", &m).to_string();
        assert!(!r.contains("c2VjcmV0"), "{r}");
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"path":"/bin/x","env":["TOKEN=abc"]}"#).unwrap();
        let r = redact("guest-exec", &m).to_string();
        assert!(!r.contains("abc") && r.contains("TOKEN="), "{r}");
    }
}
