//! `[guest]`: the QGA port, which commands it answers, exec limits, fsfreeze, metrics.

use std::path::PathBuf;

use majordomo_core::{Dur, Problem, Size};
use serde::{Deserialize, Serialize};

/// `[guest]`: the VM guest agent (QEMU Guest Agent protocol on a virtio-serial port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// `true`/`false`; unset = on when the agent port exists (inside a VM), off elsewhere.
    pub enabled: Option<bool>,
    /// The agent port; unset = auto-detect (`/dev/virtio-ports/org.qemu.guest_agent.0`, `\\.\Global\org.qemu.guest_agent.0` on Windows).
    pub port: Option<PathBuf>,
    /// Serial device used when no virtio port exists and `port` is unset (e.g. "/dev/ttyS1"); unset = none.
    pub serial_fallback: Option<PathBuf>,
    /// Commands enabled (patterns); empty = every command except guest-exec* and guest-file-*.
    pub allow: Vec<String>,
    /// Commands disabled (patterns), applied after `allow`.
    pub block: Vec<String>,
    /// Most output kept per stream of a guest-exec child; more is dropped and flagged truncated.
    pub exec_max_output: Size,
    /// A guest-exec child still running after this is killed (0s = never).
    pub exec_timeout: Dur,
    /// Whether guest-exec children inherit the agent's environment (the request's `env` is added).
    pub exec_inherit_env: bool,
    /// Folder of fsfreeze hook scripts, run with "freeze" before and "thaw" after (unset = none).
    pub fsfreeze_hook_dir: Option<PathBuf>,
    /// Frozen filesystems are thawed automatically after this long (0s = never, like qemu-ga).
    pub fsfreeze_timeout: Dur,
    /// Interfaces left out of guest-network-get-interfaces (patterns; container veths by default).
    pub network_exclude: Vec<String>,
    /// Seconds between metrics pushed on the control port as `$sys.metrics`.
    pub metrics_interval: Dur,
    /// The second port `org.majordomo.0` (the instance protocol): `true`/`false`; unset = on
    /// whenever the port exists (the host creating it is its admin opting in).
    pub control_port: Option<bool>,
    /// The control port's device; unset = auto-detect `/dev/virtio-ports/org.majordomo.0`.
    pub control_port_path: Option<PathBuf>,
    /// Commands the control port lets through (patterns; "@read" = every read-only command).
    pub control_commands: Vec<String>,
    /// Process names `guest.kill` may signal (patterns); empty = none.
    pub kill_allow: Vec<String>,
    /// Services `guest.service` may start, stop, restart, enable, disable (patterns); empty = none.
    pub service_allow: Vec<String>,
    /// Packages `guest.package` may install, remove, update (patterns; "*" also allows a full
    /// upgrade); empty = none.
    pub package_allow: Vec<String>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            port: None,
            serial_fallback: None,
            allow: Vec::new(),
            block: Vec::new(),
            exec_max_output: Size::mib(16),
            exec_timeout: Dur::secs(600),
            exec_inherit_env: true,
            fsfreeze_hook_dir: None,
            fsfreeze_timeout: Dur::secs(600),
            network_exclude: vec!["veth*".into(), "cali*".into(), "lxc*".into()],
            metrics_interval: Dur::secs(30),
            control_port: None,
            control_port_path: None,
            control_commands: vec!["@read".into(), "bus.*".into()],
            kill_allow: Vec::new(),
            service_allow: Vec::new(),
            package_allow: Vec::new(),
        }
    }
}

/// Checks what serde cannot in `[guest]`.
pub fn validate(c: &GuestConfig, problems: &mut Vec<Problem>) {
    for (field, list) in [
        ("control_commands", &c.control_commands),
        ("kill_allow", &c.kill_allow),
        ("service_allow", &c.service_allow),
        ("package_allow", &c.package_allow),
        ("allow", &c.allow),
        ("block", &c.block),
        ("network_exclude", &c.network_exclude),
    ] {
        for (i, p) in list.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(p) {
                problems.push(Problem::at(
                    format!("guest.{field}[{i}]"),
                    format!("{p:?} is not a valid pattern: {e}"),
                    "use a command or interface name, with * and ? as wildcards",
                ));
            }
        }
    }
    for (i, p) in c.allow.iter().chain(c.block.iter()).enumerate() {
        let matches_any = glob::Pattern::new(p)
            .map(|pat| crate::qmp::COMMANDS.iter().any(|c| pat.matches(c.name)))
            .unwrap_or(true);
        if !matches_any {
            problems.push(Problem::at(
                format!("guest.allow/block[{i}]"),
                format!("{p:?} names no guest-agent command"),
                "check the spelling; `majordomo guest commands` is not needed: guest-info lists them",
            ));
        }
    }
    if c.metrics_interval.get() < std::time::Duration::from_secs(1) {
        problems.push(Problem::at(
            "guest.metrics_interval",
            format!("{} is too short", c.metrics_interval),
            "use at least 1s; the default is 30s",
        ));
    }
    if c.exec_max_output.bytes() == 0 {
        problems.push(Problem::at(
            "guest.exec_max_output",
            "0 would drop every output",
            "use a size like \"16MiB\" (the default)",
        ));
    }
}
