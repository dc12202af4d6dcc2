//! The management commands (seed 003) as socket commands: processes (list, top, kill), open
//! ports, services (systemd, the Windows SCM) and packages (apt, dnf, yum, zypper, apk, winget, choco,
//! detected). Reads come from `/proc`; actions run the OS's own tool under a time limit and
//! only on what `[guest] kill_allow` / `service_allow` / `package_allow` match. Every call is
//! audited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use majordomo_core::lifecycle::Ctx;
use majordomo_proto::guest::*;
use majordomo_proto::{ErrorBody, ErrorCode};
use serde_json::{Value, json};

use crate::audit::Audit;
use crate::config::GuestConfig;

/// Longest a package or service tool may run before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);
/// Who asked, for the audit record: the connection the command came on (its transport, and
/// the peer's uid and pid where the OS tells them); a carrier without connections (one HTTP
/// request) gives none and the record says "instance protocol".
fn who() -> majordomo_core::Who {
    majordomo_core::ConnScope::current()
        .map(|s| *s.who())
        .unwrap_or_default()
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, msg)
}

fn allowed(list: &[String], name: &str) -> bool {
    list.iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .any(|p| p.matches(name))
}

/// Registers every management command on `ctx`.
/// What the management commands answer while `[guest]` is off on this instance (no agent or
/// control port here, or `enabled = false`): why, and how to turn them on.
pub const GUEST_OFF: &str = "the guest agent is off on this instance (no virtio port org.qemu.guest_agent.0 or org.majordomo.0 here, or [guest] enabled = false); set [guest] enabled = true and reload to use the guest.* commands without a host";

/// Registers, while `[guest]` is off, an answer for every management command saying so.
pub fn register_off(off: &majordomo_core::lifecycle::Off<'_>) {
    fn refuse<K: majordomo_proto::Cmd>(off: &majordomo_core::lifecycle::Off<'_>) {
        off.handle::<K, _, _>(|_| async {
            Err(ErrorBody::new(ErrorCode::UnknownCommand, GUEST_OFF))
        });
    }
    refuse::<GuestProcessesCmd>(off);
    refuse::<GuestKillCmd>(off);
    refuse::<GuestPortsCmd>(off);
    refuse::<GuestServicesCmd>(off);
    refuse::<GuestServiceCmd>(off);
    refuse::<GuestPackagesCmd>(off);
    refuse::<GuestAppsCmd>(off);
    refuse::<GuestPackageCmd>(off);
}

pub fn register(ctx: &Ctx<GuestConfig>, cfg: &GuestConfig, audit: Arc<Audit>) {
    let cfg = Arc::new(cfg.clone());
    {
        let a = audit.clone();
        ctx.handle::<GuestProcessesCmd, _, _>(move |args: ProcessesArgs| {
            let a = a.clone();
            async move {
                let (t, by) = (Instant::now(), who());
                let r = processes(&args);
                a.record("guest.processes", &by, &json!(args), Ok(()), t.elapsed());
                r
            }
        });
    }
    {
        let (a, c) = (audit.clone(), cfg.clone());
        ctx.handle::<GuestKillCmd, _, _>(move |args: KillArgs| {
            let (a, c) = (a.clone(), c.clone());
            async move {
                let (t, by) = (Instant::now(), who());
                let r = kill(&c, &args);
                audit_result(&a, by, "guest.kill", json!(args), &r, t);
                r
            }
        });
    }
    {
        let a = audit.clone();
        ctx.handle::<GuestPortsCmd, _, _>(move |_| {
            let a = a.clone();
            async move {
                let (t, by) = (Instant::now(), who());
                let r = ports();
                a.record("guest.ports", &by, &json!({}), Ok(()), t.elapsed());
                r
            }
        });
    }
    {
        let a = audit.clone();
        ctx.handle::<GuestServicesCmd, _, _>(move |args: ServicesArgs| {
            let a = a.clone();
            async move {
                let (t, by) = (Instant::now(), who());
                let r = services(&args).await;
                audit_result(&a, by, "guest.services", json!(args), &r, t);
                r
            }
        });
    }
    {
        let (a, c) = (audit.clone(), cfg.clone());
        ctx.handle::<GuestServiceCmd, _, _>(move |args: ServiceAction| {
            let (a, c) = (a.clone(), c.clone());
            async move {
                let (t, by) = (Instant::now(), who());
                let r = service_action(&c, &args).await;
                audit_result(&a, by, "guest.service", json!(args), &r, t);
                r
            }
        });
    }
    {
        let a = audit.clone();
        ctx.handle::<GuestPackagesCmd, _, _>(move |args: PackagesArgs| {
            let a = a.clone();
            async move {
                let (t, by) = (Instant::now(), who());
                let r = packages(&args).await;
                audit_result(&a, by, "guest.packages", json!(args), &r, t);
                r
            }
        });
    }
    {
        let a = audit.clone();
        ctx.handle::<GuestAppsCmd, _, _>(move |args: AppsArgs| {
            let a = a.clone();
            async move {
                let (t, by) = (Instant::now(), who());
                let r = crate::apps::apps(&args).await;
                audit_result(&a, by, "guest.apps", json!(args), &r, t);
                r
            }
        });
    }
    {
        let (a, c) = (audit, cfg);
        ctx.handle::<GuestPackageCmd, _, _>(move |args: PackageAction| {
            let (a, c) = (a.clone(), c.clone());
            async move {
                let (t, by) = (Instant::now(), who());
                let r = package_action(&c, &args).await;
                audit_result(&a, by, "guest.package", json!(args), &r, t);
                r
            }
        });
    }
}

fn audit_result<T>(
    a: &Audit,
    who: majordomo_core::Who,
    cmd: &str,
    args: Value,
    r: &Result<T, ErrorBody>,
    t: Instant,
) {
    a.record(
        cmd,
        &who,
        &args,
        r.as_ref().map(|_| ()).map_err(|e| e.message.as_str()),
        t.elapsed(),
    );
}

// ------------------------------------------------------------------ processes

fn read_process(pid: u32) -> Option<Process> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let s = majordomo_platform::process::parse_stat(&stat)?;
    let uid = std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
        });
    let cmdline = std::fs::read(format!("{dir}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(Process {
        pid,
        name: s.comm.to_string(),
        uid,
        state: s.state.to_string(),
        cpu_s: s.cpu_ticks as f64 / 100.0,
        rss_bytes: s.rss_pages * 4096,
        threads: s.threads,
        cmdline,
    })
}

fn processes(args: &ProcessesArgs) -> Result<Vec<Process>, ErrorBody> {
    let rd = std::fs::read_dir("/proc").map_err(|e| {
        err(
            ErrorCode::Internal,
            format!("/proc: {e}; process lists need Linux /proc"),
        )
    })?;
    let mut out: Vec<Process> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_process)
        .collect();
    match args.sort.as_deref() {
        None | Some("cpu") => out.sort_by(|a, b| b.cpu_s.total_cmp(&a.cpu_s)),
        Some("rss") => out.sort_by_key(|p| std::cmp::Reverse(p.rss_bytes)),
        Some("pid") => out.sort_by_key(|p| p.pid),
        Some(other) => {
            return Err(err(
                ErrorCode::BadRequest,
                format!("sort {other:?} is not known; use \"cpu\", \"rss\" or \"pid\""),
            ));
        }
    }
    if let Some(n) = args.top {
        out.truncate(n);
    }
    Ok(out)
}

fn kill(cfg: &GuestConfig, args: &KillArgs) -> Result<Done, ErrorBody> {
    let p = read_process(args.pid).ok_or_else(|| {
        err(
            ErrorCode::NotFound,
            format!("no process {} (see guest.processes)", args.pid),
        )
    })?;
    if args.pid == std::process::id() || args.pid <= 1 {
        return Err(err(
            ErrorCode::Forbidden,
            format!("pid {} is init or majordomo itself; refused", args.pid),
        ));
    }
    if !allowed(&cfg.kill_allow, &p.name) {
        return Err(err(
            ErrorCode::Forbidden,
            format!(
                "process {} ({}) is not in [guest] kill_allow; the guest's admin can add its name there",
                args.pid, p.name
            ),
        ));
    }
    let sig = args.signal.as_deref().unwrap_or("TERM");
    let sig = sig.strip_prefix("SIG").unwrap_or(sig);
    majordomo_platform::process::signal_pid(args.pid, sig).map_err(|e| {
        err(
            ErrorCode::BadRequest,
            format!("cannot send SIG{sig} to {}: {e}", args.pid),
        )
    })?;
    Ok(Done {
        message: format!("sent SIG{sig} to {} ({})", args.pid, p.name),
        output: String::new(),
    })
}

// ------------------------------------------------------------------ ports

const TCP_STATES: [&str; 12] = [
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// `0100007F:0016` (little-endian words) → `127.0.0.1:22`; IPv6 likewise.
pub fn hex_addr(s: &str) -> Option<String> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes: Vec<u8> = (0..ip.len() / 2)
        .filter_map(|i| u8::from_str_radix(ip.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    match bytes.len() {
        4 => {
            let a = std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]);
            Some(format!("{a}:{port}"))
        }
        16 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                for i in 0..4 {
                    b[w * 4 + i] = bytes[w * 4 + 3 - i];
                }
            }
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn socket_owners() -> HashMap<u64, (u32, String)> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(t) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = t.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse().ok())
            {
                let comm = std::fs::read_to_string(e.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                m.entry(inode).or_insert((pid, comm));
            }
        }
    }
    m
}

fn ports() -> Result<Vec<OpenPort>, ErrorBody> {
    let owners = socket_owners();
    let mut out = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/net/{proto}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote)) = (hex_addr(f[1]), hex_addr(f[2])) else {
                continue;
            };
            let st = usize::from_str_radix(f[3], 16).unwrap_or(0);
            let state = if proto.starts_with("udp") {
                if st == 1 { "ESTABLISHED" } else { "UNCONN" }
            } else {
                TCP_STATES.get(st).copied().unwrap_or("?")
            };
            let owner = f[9].parse::<u64>().ok().and_then(|i| owners.get(&i));
            out.push(OpenPort {
                proto: proto.into(),
                local,
                remote,
                state: state.into(),
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
            });
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ tools

/// Runs a tool with a time limit; its output's last 4 KiB. Fails with what to do.
pub(crate) async fn tool(
    prog: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String, ErrorBody> {
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let run = c.output();
    let out = match tokio::time::timeout(TOOL_TIMEOUT, run).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(err(
                ErrorCode::Internal,
                format!("cannot run {prog}: {e}; is it installed and on PATH?"),
            ));
        }
        Err(_) => {
            return Err(err(
                ErrorCode::Timeout,
                format!(
                    "{prog} {} ran longer than {}s and was killed",
                    args.join(" "),
                    TOOL_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        let tail: String = tail(&text, 600);
        Err(err(
            ErrorCode::Internal,
            format!(
                "{prog} {} failed ({}): {}",
                args.join(" "),
                out.status,
                tail.trim()
            ),
        ))
    }
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

pub(crate) fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            d.join(prog).is_file() || (cfg!(windows) && d.join(format!("{prog}.exe")).is_file())
        })
    })
}

// ------------------------------------------------------------------ services

fn name_pattern(args: &ServicesArgs) -> Result<Option<glob::Pattern>, ErrorBody> {
    args.name
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .map_err(|e| {
            err(
                ErrorCode::BadRequest,
                format!("name: {e}; use a service name with * and ? as wildcards"),
            )
        })
}

/// The services of the SCM: name, display name, state, start type.
#[cfg(windows)]
async fn services(args: &ServicesArgs) -> Result<Vec<Service>, ErrorBody> {
    let pattern = name_pattern(args)?;
    let found = tokio::task::spawn_blocking(scm::list)
        .await
        .map_err(|e| err(ErrorCode::Internal, format!("listing services: {e}")))??;
    Ok(found
        .into_iter()
        .filter(|s| pattern.as_ref().is_none_or(|p| p.matches(&s.name)))
        .collect())
}

/// start, stop, restart, enable (automatic start), disable through the SCM.
#[cfg(windows)]
async fn service_action(cfg: &GuestConfig, a: &ServiceAction) -> Result<Done, ErrorBody> {
    let name = checked_service(cfg, a, &a.name)?.to_string();
    let action = a.action.clone();
    let msg = format!("{action} {name}: done");
    tokio::task::spawn_blocking(move || scm::act(&name, &action))
        .await
        .map_err(|e| err(ErrorCode::Internal, format!("service action: {e}")))??;
    Ok(Done {
        message: msg,
        output: String::new(),
    })
}

#[cfg(windows)]
mod scm {
    use std::time::{Duration, Instant};

    use majordomo_proto::guest::Service;
    use majordomo_proto::{ErrorBody, ErrorCode};
    use windows_service::service::{ServiceAccess, ServiceStartType, ServiceState};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    fn scm_err(what: &str, e: impl std::fmt::Display) -> ErrorBody {
        ErrorBody::new(
            ErrorCode::Internal,
            format!(
                "{what}: {e}; majordomo must run as an administrator (or LocalSystem) to manage services"
            ),
        )
    }

    fn state_words(raw: u32) -> (&'static str, &'static str) {
        match raw {
            1 => ("inactive", "stopped"),
            2 => ("activating", "start-pending"),
            3 => ("deactivating", "stop-pending"),
            4 => ("active", "running"),
            5 => ("activating", "continue-pending"),
            6 => ("deactivating", "pause-pending"),
            7 => ("inactive", "paused"),
            _ => ("unknown", "unknown"),
        }
    }

    /// Every Win32 service, with its start type as `enabled` (enabled = automatic,
    /// manual, disabled; the words of systemd where they mean the same).
    pub fn list() -> Result<Vec<Service>, ErrorBody> {
        let all = majordomo_platform::winscm::list_services()
            .map_err(|e| scm_err("cannot list the services", e))?;
        let mgr = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT).ok();
        Ok(all
            .into_iter()
            .map(|s| {
                let start = mgr
                    .as_ref()
                    .and_then(|m| m.open_service(&s.name, ServiceAccess::QUERY_CONFIG).ok())
                    .and_then(|svc| svc.query_config().ok())
                    .map(|c| match c.start_type {
                        ServiceStartType::AutoStart => "enabled",
                        ServiceStartType::OnDemand => "manual",
                        ServiceStartType::Disabled => "disabled",
                        ServiceStartType::SystemStart | ServiceStartType::BootStart => "static",
                    })
                    .unwrap_or("");
                let (active, sub) = state_words(s.state);
                Service {
                    name: s.name,
                    description: s.display_name,
                    active: active.into(),
                    sub: sub.into(),
                    enabled: start.into(),
                }
            })
            .collect())
    }

    /// Waits (up to 30 s) until the service reaches `want`.
    fn wait_for(svc: &windows_service::service::Service, want: ServiceState) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match svc.query_status() {
                Ok(st) if st.current_state == want => return true,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => return false,
            }
        }
        false
    }

    pub fn act(name: &str, action: &str) -> Result<(), ErrorBody> {
        match action {
            "enable" => {
                return majordomo_platform::winscm::set_start_type(name, Some(true))
                    .map_err(|e| scm_err(&format!("cannot enable {name}"), e));
            }
            "disable" => {
                return majordomo_platform::winscm::set_start_type(name, None)
                    .map_err(|e| scm_err(&format!("cannot disable {name}"), e));
            }
            _ => {}
        }
        let mgr = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(|e| scm_err("cannot connect to the service control manager", e))?;
        let svc = mgr
            .open_service(
                name,
                ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
            )
            .map_err(|e| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("no service {name:?} ({e}); `majordomo guest services` lists them"),
                )
            })?;
        let running = || {
            svc.query_status()
                .map(|s| s.current_state != ServiceState::Stopped)
                .unwrap_or(false)
        };
        if matches!(action, "stop" | "restart") && running() {
            svc.stop()
                .map_err(|e| scm_err(&format!("cannot stop {name}"), e))?;
            if !wait_for(&svc, ServiceState::Stopped) {
                return Err(ErrorBody::new(
                    ErrorCode::Internal,
                    format!(
                        "{name} did not stop within 30 s; look at its state with `majordomo guest services {name}`"
                    ),
                ));
            }
        }
        if matches!(action, "start" | "restart") && !running() {
            svc.start::<&str>(&[])
                .map_err(|e| scm_err(&format!("cannot start {name}"), e))?;
        }
        Ok(())
    }
}

/// The action and name of `a`, refused unless both are known and `[guest] service_allow`
/// matches the name.
fn checked_service<'a>(
    cfg: &GuestConfig,
    a: &ServiceAction,
    raw: &'a str,
) -> Result<&'a str, ErrorBody> {
    if !matches!(
        a.action.as_str(),
        "start" | "stop" | "restart" | "enable" | "disable"
    ) {
        return Err(err(
            ErrorCode::BadRequest,
            format!(
                "action {:?} is not known; use start, stop, restart, enable or disable",
                a.action
            ),
        ));
    }
    let name = raw.trim_end_matches(".service");
    if name.is_empty() || name.starts_with('-') || name.contains(['/', '\\']) {
        return Err(err(
            ErrorCode::BadRequest,
            format!("{raw:?} is not a service name"),
        ));
    }
    if !allowed(&cfg.service_allow, name) {
        return Err(err(
            ErrorCode::Forbidden,
            format!(
                "service {name:?} is not in [guest] service_allow; the guest's admin can add it there"
            ),
        ));
    }
    Ok(name)
}

/// The units of systemd.
#[cfg(not(windows))]
async fn services(args: &ServicesArgs) -> Result<Vec<Service>, ErrorBody> {
    if !on_path("systemctl") || !std::path::Path::new("/run/systemd/system").exists() {
        return Err(err(
            ErrorCode::NotFound,
            "no systemd here (systemctl missing or systemd not running as init); services are managed through systemd on Linux and the SCM on Windows",
        ));
    }
    let pattern = name_pattern(args)?;
    let units = tool(
        "systemctl",
        &[
            "list-units",
            "--type=service",
            "--all",
            "--no-legend",
            "--plain",
            "--no-pager",
        ],
        &[],
    )
    .await?;
    let files = tool(
        "systemctl",
        &[
            "list-unit-files",
            "--type=service",
            "--no-legend",
            "--plain",
            "--no-pager",
        ],
        &[],
    )
    .await
    .unwrap_or_default();
    let enabled: HashMap<&str, &str> = files
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, it.next()?))
        })
        .collect();
    let mut out = Vec::new();
    for l in units.lines() {
        let mut it = l.split_whitespace();
        let (Some(unit), Some(_load), Some(active), Some(sub)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let name = unit.trim_end_matches(".service");
        if pattern
            .as_ref()
            .is_some_and(|p| !p.matches(name) && !p.matches(unit))
        {
            continue;
        }
        out.push(Service {
            name: name.into(),
            description: it.collect::<Vec<_>>().join(" "),
            active: active.into(),
            sub: sub.into(),
            enabled: enabled.get(unit).copied().unwrap_or("").into(),
        });
    }
    Ok(out)
}

#[cfg(not(windows))]
async fn service_action(cfg: &GuestConfig, a: &ServiceAction) -> Result<Done, ErrorBody> {
    let name = checked_service(cfg, a, &a.name)?;
    let unit = format!("{name}.service");
    let out = tool("systemctl", &[&a.action, "--no-ask-password", &unit], &[]).await?;
    Ok(Done {
        message: format!("systemctl {} {unit}: done", a.action),
        output: tail(&out, 4096),
    })
}

// ------------------------------------------------------------------ packages

/// The package manager of this machine, by the tools on PATH (in this order).
pub fn detect_manager() -> Option<&'static str> {
    ["apt", "dnf", "yum", "zypper", "apk", "winget", "choco"]
        .into_iter()
        .find(|m| match *m {
            "apt" => on_path("apt-get") && on_path("dpkg-query"),
            m => on_path(m),
        })
}

fn no_manager() -> ErrorBody {
    err(
        ErrorCode::NotFound,
        "no known package manager on PATH (apt, dnf, yum, zypper, apk, winget, choco)",
    )
}

async fn packages(args: &PackagesArgs) -> Result<Packages, ErrorBody> {
    let m = detect_manager().ok_or_else(no_manager)?;
    let packages = match &args.search {
        None => installed(m).await?,
        Some(term) => {
            if term.is_empty() || term.starts_with('-') {
                return Err(err(
                    ErrorCode::BadRequest,
                    "search: give a word that does not start with '-'",
                ));
            }
            search(m, term).await?
        }
    };
    Ok(Packages {
        manager: m.into(),
        packages,
    })
}

fn split_rows(text: &str, sep: char) -> Vec<Package> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, sep);
            let name = it.next()?.trim();
            if name.is_empty() {
                return None;
            }
            Some(Package {
                name: name.into(),
                version: it.next().unwrap_or("").trim().into(),
                detail: it.next().unwrap_or("").trim().into(),
            })
        })
        .collect()
}

async fn installed(m: &str) -> Result<Vec<Package>, ErrorBody> {
    Ok(match m {
        "apt" => {
            let t = tool(
                "dpkg-query",
                &[
                    "-W",
                    "-f",
                    "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
                ],
                &[],
            )
            .await?;
            // Only installed ones ("ii"); removed-but-configured ("rc") are not.
            split_rows(
                &t.lines()
                    .filter_map(|l| l.strip_prefix("ii \t"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                '\t',
            )
        }
        "dnf" | "yum" | "zypper" => split_rows(
            &tool(
                "rpm",
                &["-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n"],
                &[],
            )
            .await?,
            '\t',
        ),
        "apk" => tool("apk", &["info", "-v"], &[])
            .await?
            .lines()
            .filter_map(|l| {
                // name-1.2.3-r0: the version starts at the second-last '-'.
                let mut cut = l.rmatch_indices('-').map(|(i, _)| i);
                let _ = cut.next()?;
                let i = cut.next()?;
                Some(Package {
                    name: l[..i].into(),
                    version: l[i + 1..].into(),
                    detail: String::new(),
                })
            })
            .collect(),
        "choco" => split_rows(&tool("choco", &["list", "--limit-output"], &[]).await?, '|'),
        "winget" => tool("winget", &["list", "--disable-interactivity"], &[])
            .await?
            .lines()
            .skip_while(|l| !l.starts_with("---"))
            .skip(1)
            .map(|l| Package {
                name: l.trim().into(),
                version: String::new(),
                detail: String::new(),
            })
            .collect(),
        _ => return Err(no_manager()),
    })
}

async fn search(m: &str, term: &str) -> Result<Vec<Package>, ErrorBody> {
    let rows = |t: String, sep: &str| -> Vec<Package> {
        t.lines()
            .filter_map(|l| {
                let (n, d) = l.split_once(sep)?;
                Some(Package {
                    name: n.trim().into(),
                    version: String::new(),
                    detail: d.trim().into(),
                })
            })
            .collect()
    };
    Ok(match m {
        "apt" => rows(
            tool("apt-cache", &["search", "--names-only", term], &[]).await?,
            " - ",
        ),
        "dnf" | "yum" => rows(tool(m, &["search", "-q", term], &[]).await?, " : "),
        "zypper" => rows(
            tool("zypper", &["--non-interactive", "search", term], &[]).await?,
            "|",
        ),
        "apk" => rows(tool("apk", &["search", "-v", term], &[]).await?, " - "),
        "choco" => split_rows(
            &tool("choco", &["search", term, "--limit-output"], &[]).await?,
            '|',
        ),
        "winget" => rows(
            tool("winget", &["search", term, "--disable-interactivity"], &[]).await?,
            "  ",
        ),
        _ => return Err(no_manager()),
    })
}

/// What each package tool runs: (manager, action, program, arguments before the names).
/// `update-all` is "update" without names, where it differs from "update".
const VERBS: &[(&str, &str, &str, &[&str])] = &[
    ("apt", "install", "apt-get", &["install", "-y", "-q"]),
    ("apt", "remove", "apt-get", &["remove", "-y", "-q"]),
    (
        "apt",
        "update-all",
        "apt-get",
        &["dist-upgrade", "-y", "-q"],
    ),
    (
        "apt",
        "update",
        "apt-get",
        &["install", "--only-upgrade", "-y", "-q"],
    ),
    ("dnf", "install", "dnf", &["install", "-y"]),
    ("dnf", "remove", "dnf", &["remove", "-y"]),
    ("dnf", "update", "dnf", &["upgrade", "-y"]),
    ("yum", "install", "yum", &["install", "-y"]),
    ("yum", "remove", "yum", &["remove", "-y"]),
    ("yum", "update", "yum", &["upgrade", "-y"]),
    (
        "zypper",
        "install",
        "zypper",
        &["--non-interactive", "install"],
    ),
    (
        "zypper",
        "remove",
        "zypper",
        &["--non-interactive", "remove"],
    ),
    (
        "zypper",
        "update",
        "zypper",
        &["--non-interactive", "update"],
    ),
    ("apk", "install", "apk", &["add"]),
    ("apk", "remove", "apk", &["del"]),
    ("apk", "update", "apk", &["upgrade"]),
    ("choco", "install", "choco", &["install", "-y"]),
    ("choco", "remove", "choco", &["uninstall", "-y"]),
    ("choco", "update", "choco", &["upgrade", "-y"]),
    ("choco", "update-all", "choco", &["upgrade", "-y", "all"]),
    (
        "winget",
        "install",
        "winget",
        &["install", "--silent", "--disable-interactivity"],
    ),
    (
        "winget",
        "remove",
        "winget",
        &["uninstall", "--silent", "--disable-interactivity"],
    ),
    (
        "winget",
        "update",
        "winget",
        &["upgrade", "--silent", "--disable-interactivity"],
    ),
    (
        "winget",
        "update-all",
        "winget",
        &["upgrade", "--silent", "--disable-interactivity", "--all"],
    ),
];

async fn package_action(cfg: &GuestConfig, a: &PackageAction) -> Result<Done, ErrorBody> {
    let m = detect_manager().ok_or_else(no_manager)?;
    for n in &a.names {
        if n.is_empty() || n.starts_with('-') || n.chars().any(char::is_whitespace) {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{n:?} is not a package name"),
            ));
        }
        if !allowed(&cfg.package_allow, n) {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "package {n:?} is not in [guest] package_allow; the guest's admin can add it there"
                ),
            ));
        }
    }
    let all = a.names.is_empty();
    match a.action.as_str() {
        "install" | "remove" if all => {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{} needs \"names\"", a.action),
            ));
        }
        "update" if all && !cfg.package_allow.iter().any(|p| p == "*") => {
            return Err(err(
                ErrorCode::Forbidden,
                "updating every package needs \"*\" in [guest] package_allow; or name the packages",
            ));
        }
        "install" | "remove" | "update" => {}
        other => {
            return Err(err(
                ErrorCode::BadRequest,
                format!("action {other:?} is not known; use install, remove or update"),
            ));
        }
    }
    let names: Vec<&str> = a.names.iter().map(String::as_str).collect();
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive")];
    // "update" of everything is a verb of its own where the tool has one.
    let verb = match a.action.as_str() {
        "update" if all => "update-all",
        v => v,
    };
    let Some(&(_, _, prog, fixed)) = VERBS
        .iter()
        .find(|(mm, v, ..)| *mm == m && *v == verb)
        .or_else(|| VERBS.iter().find(|(mm, v, ..)| *mm == m && *v == a.action))
    else {
        return Err(no_manager());
    };
    let mut args: Vec<&str> = fixed.to_vec();
    if m == "apt" && a.action != "remove" {
        tool("apt-get", &["update", "-q"], &noninteractive).await?;
    }
    args.extend(names);
    let out = tool(prog, &args, &noninteractive).await?;
    Ok(Done {
        message: format!("{prog} {}: done", args.join(" ")),
        output: tail(&out, 4096),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(hex_addr("0100007F:0016").as_deref(), Some("127.0.0.1:22"));
        assert_eq!(
            hex_addr("00000000000000000000000001000000:1F90").as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(hex_addr("zz"), None);
    }

    /// Under Wine too: its SCM lists real services with their start types.
    #[cfg(windows)]
    #[test]
    fn the_scm_lists_services_with_their_start_type() {
        let all = scm::list().unwrap();
        assert!(!all.is_empty());
        assert!(
            all.iter()
                .any(|s| ["enabled", "manual", "disabled"].contains(&s.enabled.as_str())),
            "{all:?}"
        );
        assert!(all.iter().all(|s| s.active != "unknown"), "{all:?}");
    }

    #[test]
    fn every_package_manager_has_every_verb() {
        for m in ["apt", "dnf", "yum", "zypper", "apk", "winget", "choco"] {
            for v in ["install", "remove", "update"] {
                assert!(
                    VERBS.iter().any(|(mm, vv, ..)| *mm == m && *vv == v),
                    "{m} {v}"
                );
            }
        }
    }

    #[test]
    fn allow_lists_are_patterns() {
        assert!(allowed(&["nginx*".into()], "nginx-light"));
        assert!(!allowed(&[], "anything"));
    }
}
