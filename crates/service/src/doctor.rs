//! `majordomo doctor [--json]`: every check OK, WARN or FAIL, with a hint to fix it. Exits 1
//! when any check FAILs. Offline: it reads files and asks the OS; the only connection it makes is
//! to the instance's own socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use majordomo_core::exit;
use majordomo_core::{Layout, Source};

use super::{Invocation, Manager, Manifest, Settings, Target, check};

/// What `doctor` needs beyond the global options. The application reads the config (this crate
/// never parses one).
#[derive(Debug, Clone)]
pub struct DoctorInput {
    /// The instance's layout: its mode from `--home` / `--system` / `--user`, `--config`
    /// applied, before the config's `[paths]`.
    pub layout: Layout,
    /// How the config at `layout.config_file` loaded, with the environment's overrides: where
    /// it came from, or every problem found (one line each).
    pub loaded: Result<Source, Vec<String>>,
    /// What that config says (the built-in values when it is invalid).
    pub settings: Settings,
}

/// How bad a finding is: the one type of every diagnosis (`doctor`, `doctor --virtio`).
pub use majordomo_proto::control::Level;

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Ok,
        detail: detail.into(),
        hint: None,
    }
}

fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Warn,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Fail,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

/// `majordomo doctor`: prints every check, returns the exit code (1 when any FAILs).
pub fn main(inv: &Invocation, input: &DoctorInput) -> u8 {
    let layout = &input.layout;
    let checks = run_checks(inv, input);
    let failed = checks.iter().any(|c| c.status == Level::Fail);
    if inv.json {
        println!(
            "{}",
            serde_json::json!({"ok": !failed, "instance": layout.instance, "checks": checks})
        );
    } else {
        println!("majordomo doctor · instance '{}'", layout.instance);
        for c in &checks {
            println!("{:<4}  {:<16} {}", c.status.label(), c.name, c.detail);
            if c.status != Level::Ok
                && let Some(h) = &c.hint
            {
                println!("      {:<16} fix: {h}", "");
            }
        }
        let count = |l| checks.iter().filter(|c| c.status == l).count();
        println!(
            "{} ok, {} warnings, {} failures",
            count(Level::Ok),
            count(Level::Warn),
            count(Level::Fail)
        );
    }
    if failed { exit::FAILURE } else { exit::OK }
}

/// Runs every check, in a fixed order.
pub fn run_checks(inv: &Invocation, input: &DoctorInput) -> Vec<Check> {
    let layout = &input.layout;
    let cfg = &input.settings;
    let mut out = vec![match &input.loaded {
        Ok(Source::File) => ok(
            "config",
            format!("{} is valid", layout.config_file.display()),
        ),
        Ok(Source::Embedded) => warn(
            "config",
            format!(
                "no config file at {}; the embedded default is used",
                layout.config_file.display()
            ),
            format!(
                "write one with `majordomo config default > {}` and edit it",
                layout.config_file.display()
            ),
        ),
        Err(problems) => fail(
            "config",
            format!(
                "{} is invalid: {}",
                layout.config_file.display(),
                problems.join("; ")
            ),
            "fix every problem listed by `majordomo config check`; a running daemon keeps its old config until then",
        ),
    }];
    let eff = layout.clone().with_overrides(&cfg.paths);
    for (name, dir) in [
        ("state folder", eff.state_dir.clone()),
        ("log folder", eff.log_dir.clone()),
        (
            "socket folder",
            eff.socket
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        ),
    ] {
        if cfg!(windows) && name == "socket folder" {
            continue; // a named pipe, not a file
        }
        out.push(writable(name, &dir));
    }
    let token = inv.token.clone().or_else(|| cfg.token.clone());
    let answers = check::ping(&eff.socket, token);
    out.push(match &answers {
        Ok(pid) => ok(
            "socket",
            format!("instance answers at {} (pid {pid})", eff.socket.display()),
        ),
        Err(e) => fail(
            "socket",
            format!("no answer at {}: {e}", eff.socket.display()),
            "start the instance: `majordomo service start` (installed service) or `majordomo run`",
        ),
    });
    let manager = Manager::detect();
    out.push(match &manager {
        Ok(m) => ok("service manager", format!("{} is running", m.label())),
        Err(e) => warn(
            "service manager",
            e.clone(),
            "run majordomo in the foreground or under another supervisor; services need systemd, launchd or Windows",
        ),
    });
    match Target::for_service(inv, None) {
        // A portable instance is often not a service at all: say so only when it is installed.
        Ok(t) if inv.home.is_some() && !t.manifest_path().exists() => out.push(ok(
            "service",
            "portable instance (--home): not installed as an OS service",
        )),
        Ok(t) => out.push(service_check(&t, manager.is_ok(), answers.is_ok())),
        Err(e) => out.push(warn(
            "service",
            e,
            "check --instance, --home and --system/--user",
        )),
    }
    if let Some(r) = check::Record::read(&eff.state_dir) {
        out.push(if r.last_error.is_some() {
            warn(
                "backup trigger",
                r.summary(),
                "see why the service manager refused: `majordomo service status`",
            )
        } else {
            ok("backup trigger", r.summary())
        });
    }
    out.push(dbus_check());
    out.push(virtio_check());
    out.push(disk_check(&eff.state_dir));
    out.push(clock_check(SystemTime::now()));
    out.extend(permission_checks(layout, &eff, cfg));
    out
}

fn service_check(t: &Target, manager_running: bool, answers: bool) -> Check {
    let name = super::service_name(t);
    let manifest = Manifest::read(t).ok();
    let state = if manager_running {
        super::manager_state(t).ok()
    } else {
        None
    };
    let flags = super::instance_flags(t);
    match (manifest, state) {
        (None, Some(s)) if s.installed => warn(
            "service",
            format!("{name} is known to the service manager but was not installed by majordomo"),
            "check how it was installed; `majordomo service status` shows its state",
        ),
        (None, _) => warn(
            "service",
            format!("{name} is not installed ({} scope)", t.scope.label()),
            format!("install it with `majordomo service install{flags} --start`"),
        ),
        (Some(m), None) => warn(
            "service",
            format!(
                "{name} installed at {} ({}); its state is unknown: no service manager running",
                m.installed_at, m.manager
            ),
            "run on a system with the service manager, or start it with `majordomo run`",
        ),
        (Some(_), Some(s)) => match (s.enabled, s.running) {
            (_, Some(false)) if !answers => fail(
                "service",
                format!("{name} is installed but not running ({})", s.detail),
                format!(
                    "start it with `majordomo service start{flags}`; its log says why it stopped"
                ),
            ),
            (Some(false), _) => warn(
                "service",
                format!("{name} is installed but not enabled at boot ({})", s.detail),
                format!(
                    "reinstall with `majordomo service uninstall{flags}` then `service install{flags}`"
                ),
            ),
            _ => ok(
                "service",
                format!("{name} installed, enabled, {}", s.detail),
            ),
        },
    }
}

/// Whether `dir` (or, when it does not exist yet, its nearest existing parent) is writable.
fn writable(name: &'static str, dir: &Path) -> Check {
    let mut probe_dir = dir.to_path_buf();
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p.to_path_buf(),
            _ => break,
        }
    }
    let probe = probe_dir.join(format!(".majordomo-doctor-{}", std::process::id()));
    let result = std::fs::write(&probe, b"probe");
    let _ = std::fs::remove_file(&probe);
    match (result, probe_dir == dir) {
        (Ok(()), true) => ok(name, format!("{} is writable", dir.display())),
        (Ok(()), false) => ok(
            name,
            format!(
                "{} will be created (in writable {})",
                dir.display(),
                probe_dir.display()
            ),
        ),
        (Err(e), _) => fail(
            name,
            format!("{} is not writable: {e}", probe_dir.display()),
            "run as the service's user, fix the folder's owner/permissions, or move it with [paths] in the config",
        ),
    }
}

fn dbus_check() -> Check {
    const NAME: &str = "desktop session";
    if !cfg!(target_os = "linux") {
        return ok(
            NAME,
            "notifications use the system's own notification service",
        );
    }
    let addr = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok().or_else(|| {
        dirs::runtime_dir()
            .map(|d| d.join("bus"))
            .filter(|p| p.exists())
            .map(|p| format!("unix:path={}", p.display()))
    });
    let hint = "desktop notifications need a D-Bus session bus (a logged-in desktop user, or DBUS_SESSION_BUS_ADDRESS); \
                a system service has none: its notifications go to the log and other notifiers";
    let Some(addr) = addr else {
        return warn(
            NAME,
            "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS unset, no $XDG_RUNTIME_DIR/bus)",
            hint,
        );
    };
    match dbus_path(&addr) {
        Some(path) => match probe_unix(&path) {
            Ok(()) => ok(
                NAME,
                format!("D-Bus session bus answers at {}", path.display()),
            ),
            Err(e) => warn(
                NAME,
                format!("D-Bus session bus {addr} does not accept connections: {e}"),
                hint,
            ),
        },
        None => ok(NAME, format!("D-Bus session bus at {addr} (not probed)")),
    }
}

/// The socket path of a `unix:path=...` D-Bus address (the first one listed).
pub fn dbus_path(addr: &str) -> Option<PathBuf> {
    addr.split(';').find_map(|a| {
        let rest = a.strip_prefix("unix:")?;
        rest.split(',')
            .find_map(|kv| kv.strip_prefix("path="))
            .map(PathBuf::from)
    })
}

#[cfg(unix)]
fn probe_unix(path: &Path) -> std::io::Result<()> {
    std::os::unix::net::UnixStream::connect(path).map(drop)
}

#[cfg(not(unix))]
fn probe_unix(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

fn virtio_check() -> Check {
    const NAME: &str = "virtio-serial";
    let hint = "only needed as a VM guest agent: add a virtio-serial channel to the VM (libvirt <channel type='unix'>, \
                QEMU -device virtserialport,name=...) and install the VirtIO serial driver on Windows guests";
    #[cfg(windows)]
    {
        let found: Vec<&str> = ["org.majordomo.0", "org.qemu.guest_agent.0"]
            .into_iter()
            .filter(|n| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .open(format!(r"\\.\Global\{n}"))
                    .is_ok()
            })
            .collect();
        if found.is_empty() {
            warn(
                NAME,
                r"no virtio-serial port (\\.\Global\org.majordomo.0, \\.\Global\org.qemu.guest_agent.0)",
                hint,
            )
        } else {
            ok(NAME, format!(r"ports: \\.\Global\{}", found.join(", ")))
        }
    }
    #[cfg(not(windows))]
    {
        let dir = Path::new("/dev/virtio-ports");
        let ports: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if ports.is_empty() {
            warn(NAME, format!("no ports in {}", dir.display()), hint)
        } else {
            ok(NAME, format!("{}: {}", dir.display(), ports.join(", ")))
        }
    }
}

/// Free-space verdict: FAIL under 2 % or 100 MiB, WARN under 10 % or 1 GiB.
pub fn disk_level(free: u64, total: u64) -> Level {
    let pct = if total == 0 {
        100.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    if pct < 2.0 || free < 100 << 20 {
        Level::Fail
    } else if pct < 10.0 || free < 1 << 30 {
        Level::Warn
    } else {
        Level::Ok
    }
}

fn disk_check(dir: &Path) -> Check {
    const NAME: &str = "free disk";
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
            _ => break,
        }
    }
    match majordomo_platform::disk_space(&probe) {
        Ok((free, total)) => {
            let detail = format!(
                "{} free of {} at {}",
                bytesize::ByteSize(free),
                bytesize::ByteSize(total),
                probe.display()
            );
            let hint = "free space on that volume or move [paths] state_dir / log_dir; the queue and logs need room";
            match disk_level(free, total) {
                Level::Ok => ok(NAME, detail),
                Level::Warn => warn(NAME, detail, hint),
                Level::Fail => fail(NAME, detail, hint),
            }
        }
        Err(e) => warn(
            NAME,
            format!("cannot measure {}: {e}", probe.display()),
            "check that the folder's volume is mounted",
        ),
    }
}

/// The clock is sane when it is after this program was written (2025-01-01) and before 2100.
pub fn clock_check(now: SystemTime) -> Check {
    const NAME: &str = "clock";
    const EARLIEST: u64 = 1_735_689_600; // 2025-01-01T00:00:00Z
    const LATEST: u64 = 4_102_444_800; // 2100-01-01T00:00:00Z
    let hint = "set the system clock (enable NTP: `timedatectl set-ntp true`, or Windows Time); schedules and TLS depend on it";
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) if (EARLIEST..LATEST).contains(&d.as_secs()) => {
            ok(NAME, format!("{}", humantime::format_rfc3339_seconds(now)))
        }
        Ok(d) => fail(
            NAME,
            format!(
                "the clock says {}, which cannot be right",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(d.as_secs()))
            ),
            hint,
        ),
        Err(_) => fail(NAME, "the clock is before 1970", hint),
    }
}

fn permission_checks(layout: &Layout, eff: &Layout, cfg: &Settings) -> Vec<Check> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        const NAME: &str = "permissions";
        let mut out = Vec::new();
        if let Ok(md) = std::fs::metadata(&layout.config_file) {
            let mode = md.permissions().mode() & 0o777;
            let path = layout.config_file.display();
            if mode & 0o002 != 0 {
                out.push(fail(
                    NAME,
                    format!("{path} is writable by everyone (mode {mode:o}): anyone can make the daemon run anything"),
                    format!("chmod o-w {path}"),
                ));
            } else if cfg.token.is_some() && mode & 0o044 != 0 {
                out.push(warn(
                    NAME,
                    format!(
                        "{path} holds a control token and is readable by others (mode {mode:o})"
                    ),
                    format!("chmod go-r {path}"),
                ));
            }
            let me = nix::unistd::geteuid().as_raw();
            if md.uid() != me && me != 0 && md.uid() != 0 {
                out.push(warn(
                    NAME,
                    format!("{path} belongs to uid {}, not to you (uid {me})", md.uid()),
                    "run as the user the instance belongs to",
                ));
            }
        }
        if let Ok(md) = std::fs::metadata(&eff.socket) {
            let mode = md.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                out.push(fail(
                    NAME,
                    format!("socket {} is open to everyone (mode {mode:o})", eff.socket.display()),
                    "set [control] socket_mode = \"0600\" (or \"0660\" with socket_group) and reload",
                ));
            }
        }
        if out.is_empty() {
            out.push(ok(
                NAME,
                "config file and socket are not open to other users",
            ));
        }
        out
    }
    #[cfg(not(unix))]
    {
        let _ = (layout, eff, cfg);
        vec![ok(
            "permissions",
            "the pipe rejects remote clients; folder ACLs are inherited from %ProgramData% / %LOCALAPPDATA%",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_levels() {
        let gib = 1u64 << 30;
        assert_eq!(disk_level(50 * gib, 100 * gib), Level::Ok);
        assert_eq!(disk_level(5 * gib, 100 * gib), Level::Warn);
        assert_eq!(disk_level(gib / 2, 4 * gib), Level::Warn);
        assert_eq!(disk_level(gib, 1000 * gib), Level::Fail);
        assert_eq!(disk_level(50 << 20, 60 << 20), Level::Fail);
    }

    #[test]
    fn clock_sanity() {
        assert_eq!(clock_check(SystemTime::now()).status, Level::Ok);
        assert_eq!(clock_check(UNIX_EPOCH).status, Level::Fail);
        assert_eq!(
            clock_check(UNIX_EPOCH + Duration::from_secs(5_000_000_000)).status,
            Level::Fail
        );
    }

    #[test]
    fn dbus_addresses() {
        assert_eq!(
            dbus_path("unix:path=/run/user/1000/bus"),
            Some(PathBuf::from("/run/user/1000/bus"))
        );
        assert_eq!(
            dbus_path("unix:abstract=/tmp/x,guid=1;unix:path=/b,guid=2"),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(dbus_path("tcp:host=x,port=1"), None);
    }

    proptest::proptest! {
        #[test]
        fn dbus_path_never_panics(s in ".{0,60}") {
            let _ = dbus_path(&s);
        }
    }
}
