//! Wire types of the guest agent's management commands (seed 003): processes, open ports,
//! services, packages and applications of the machine majordomo runs on, as socket commands
//! (so also on the guest's control port `org.majordomo.0` and in the CLI, `majordomo guest
//! ...`). What the acting commands may touch is limited by `[guest]` allow-lists; every call
//! is audited.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::NoArgs;

crate::commands! { COMMANDS:
    /// Processes: pid, name, user id, state, CPU time, memory, command line. `top` keeps the
    /// N that used the most CPU time (or memory with `sort: "rss"`).
    GuestProcessesCmd "guest.processes" (Read) ProcessesArgs => Vec<Process>;
    /// Sends a signal (default TERM) to a process whose name `[guest] kill_allow` matches.
    GuestKillCmd "guest.kill" (Action) KillArgs => Done;
    /// Open TCP and UDP sockets (listening and connected) with the process holding each.
    GuestPortsCmd "guest.ports" (Read) NoArgs => Vec<OpenPort>;
    /// Services of the OS service manager (systemd, the Windows SCM): all, or those whose name
    /// matches `name`.
    GuestServicesCmd "guest.services" (Read) ServicesArgs => Vec<Service>;
    /// start, stop, restart, enable or disable a service `[guest] service_allow` matches.
    GuestServiceCmd "guest.service" (Action) ServiceAction => Done;
    /// The detected package manager and the installed packages (or, with `search`, the
    /// available ones matching it).
    GuestPackagesCmd "guest.packages" (Read) PackagesArgs => Packages;
    /// install, remove or update packages `[guest] package_allow` matches (update without
    /// names: refresh the index and upgrade everything, when the list allows "*").
    GuestPackageCmd "guest.package" (Action) PackageAction => Done;
    /// Installed applications, as a user sees them: Windows' Uninstall keys (machine, 32-bit
    /// and user), Linux desktop entries (and flatpak, snap), macOS bundles in /Applications.
    GuestAppsCmd "guest.apps" (Read) AppsArgs => Vec<App>;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessesArgs {
    /// Keep only the first N after sorting.
    #[serde(default)]
    pub top: Option<usize>,
    /// "cpu" (default) or "rss".
    #[serde(default)]
    pub sort: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub uid: Option<u32>,
    pub state: String,
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub threads: u64,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillArgs {
    pub pid: u32,
    /// TERM (default), KILL, INT, HUP, ...
    #[serde(default)]
    pub signal: Option<String>,
}

/// What an acting command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Done {
    /// One line saying what was done.
    pub message: String,
    /// The tool's output (its last 4 KiB), when a tool ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpenPort {
    /// tcp, tcp6, udp, udp6.
    pub proto: String,
    pub local: String,
    pub remote: String,
    /// LISTEN, ESTABLISHED, ... (UDP: UNCONN or ESTABLISHED).
    pub state: String,
    pub pid: Option<u32>,
    pub process: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicesArgs {
    /// A pattern (`*`, `?`) over service names; none = all.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Service {
    pub name: String,
    pub description: String,
    /// active, inactive, failed, ...
    pub active: String,
    /// running, dead, exited, ...
    pub sub: String,
    /// enabled, disabled, static, ... (empty when unknown)
    pub enabled: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAction {
    /// start, stop, restart, enable, disable.
    pub action: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesArgs {
    /// Search the available packages instead of listing the installed ones.
    #[serde(default)]
    pub search: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Packages {
    /// apt, dnf, yum, zypper, apk, winget, choco.
    pub manager: String,
    pub packages: Vec<Package>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The architecture, or the summary for search results (empty when unknown).
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageAction {
    /// install, remove, update.
    pub action: String,
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppsArgs {
    /// A pattern (`*`, `?`, case-insensitive) over application names; none = all.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct App {
    pub name: String,
    /// Empty when the source does not say (desktop entries carry no version).
    pub version: String,
    /// Empty when the source does not say.
    pub publisher: String,
    /// Where it was found: "registry", "registry-wow64", "registry-user", "desktop",
    /// "flatpak", "snap", "bundle".
    pub source: String,
    /// The source's own id: the Uninstall key, the .desktop file, the flatpak/snap name, the
    /// bundle path.
    pub id: String,
}
