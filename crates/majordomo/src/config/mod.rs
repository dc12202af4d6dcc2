//! The instance's configuration: schema, layering and validation.
//!
//! Layers, lowest first: the embedded default (`default.toml`, which is also what
//! `majordomo config default` prints) < the instance's config file < environment variables
//! `MAJORDOMO_<SECTION>__<FIELD>` < command-line flags. Loading never binds or opens anything
//! but the config file; it returns either a complete [`Config`] or *every* problem found, each
//! located (file:line:col or the environment variable / flag that set it) with its field path
//! and a hint.

mod load;
pub mod units;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{Loaded, Origin, Override, Problem, Problems, Source, check_text, load};
pub use units::{Dur, Secret, Size};

/// The commented default configuration: embedded in the binary, printed by
/// `majordomo config default`, used when the instance has no config file.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub control: ControlConfig,
    pub paths: PathsConfig,
    /// `[[program]]`: the programs the supervisor runs.
    pub program: Vec<crate::supervisor::ProgramConfig>,
    pub bus: crate::bus::BusConfig,
    /// `[monitor]`: metrics collection and history.
    pub monitor: crate::monitor::MonitorConfig,
    /// `[[check]]`: health checks (a file with any `[[check]]` replaces the default ones).
    pub check: Vec<crate::monitor::CheckConfig>,
    /// `[[notifier]]`: where alerts are sent.
    pub notifier: Vec<crate::monitor::NotifierConfig>,
    /// `[[pipeline]]`: drop folders whose files are converted, queued and uploaded.
    pub pipeline: Vec<crate::pipeline::config::PipelineConfig>,
    /// `[[uploader]]`: HTTP endpoints that pipelines upload to.
    pub uploader: Vec<crate::pipeline::UploaderConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            daemon: DaemonConfig::default(),
            log: LogConfig::default(),
            control: ControlConfig::default(),
            paths: PathsConfig::default(),
            program: Vec::new(),
            bus: crate::bus::BusConfig::default(),
            monitor: crate::monitor::MonitorConfig::default(),
            check: crate::monitor::config::default_checks(),
            notifier: Vec::new(),
            pipeline: Vec::new(),
            uploader: Vec::new(),
        }
    }
}

/// `[daemon]`: the process as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// How long a shutdown may take before the remaining work is abandoned.
    pub grace_period: Dur,
    /// Reload automatically when the config file changes.
    pub watch_config: bool,
    /// Quiet time after the last change to the config file before it is reloaded.
    pub watch_debounce: Dur,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            grace_period: Dur::secs(10),
            watch_config: true,
            watch_debounce: Dur::millis(300),
        }
    }
}

/// `[log]`: the daemon's own log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a filter like `info,majordomo::control=debug`.
    pub level: String,
    /// Format of the log file: `text` or `json` (one JSON object per line).
    pub format: LogFormat,
    /// Write size-rotated files into the instance's log folder.
    pub file: bool,
    /// Rotate the log file when it reaches this size.
    pub max_size: Size,
    /// How many rotated files to keep besides the current one.
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            file: true,
            max_size: Size::mb(10),
            max_files: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[control]`: the instance socket that carries control commands (and the message bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Longest accepted line (one request); a longer one gets an error and the connection is closed.
    pub max_line: Size,
    /// Most connections held at once; further ones are told so and closed.
    pub max_connections: usize,
    /// Permissions of the Unix socket file, in octal: `0600` (owner only) or `0660` (with `socket_group`).
    pub socket_mode: String,
    /// Group owning the socket file, for `0660` (Unix).
    pub socket_group: Option<String>,
    /// Users allowed to connect besides the daemon's own user and root (names or numeric uids; Unix, checked with SO_PEERCRED).
    pub allowed_users: Vec<String>,
    /// When set, every connection must first send `{"cmd":"hello","token":"..."}` with this token.
    pub token: Option<Secret>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            max_line: Size::mib(1),
            max_connections: 10_000,
            socket_mode: "0600".into(),
            socket_group: None,
            allowed_users: Vec::new(),
            token: None,
        }
    }
}

impl ControlConfig {
    /// `socket_mode` as a number; validated at load time.
    pub fn socket_mode_bits(&self) -> u32 {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o600)
    }
}

/// `[paths]`: overrides of where this instance keeps its files (each defaults to the platform's usual place).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Folder for state (queues, history, the pid file).
    pub state_dir: Option<PathBuf>,
    /// Folder for log files.
    pub log_dir: Option<PathBuf>,
    /// The instance socket (Unix) or pipe name (`\\.\pipe\...`, Windows).
    pub socket: Option<PathBuf>,
}

impl Config {
    /// Checks what serde cannot: values that parse but make no sense. Adds to `problems`.
    fn validate(&self, problems: &mut Vec<Problem>) {
        if let Err(e) = crate::logging::parse_filter(&self.log.level) {
            problems.push(Problem::at(
                "log.level",
                format!("invalid log filter {:?}: {e}", self.log.level),
                "use error, warn, info, debug or trace, optionally with per-module directives like \"info,majordomo::control=debug\"",
            ));
        }
        if self.log.max_size.bytes() < 4096 {
            problems.push(Problem::at(
                "log.max_size",
                format!("{} is too small for a log file", self.log.max_size),
                "use at least 4KB, e.g. \"10MB\"",
            ));
        }
        let mode = self.control.socket_mode.trim_start_matches("0o");
        match u32::from_str_radix(mode, 8) {
            Ok(bits) if bits & !0o777 == 0 && bits & 0o600 == 0o600 => {
                if bits & 0o007 != 0 {
                    problems.push(Problem::at(
                        "control.socket_mode",
                        format!(
                            "{:?} would let every local user control this instance",
                            self.control.socket_mode
                        ),
                        "use \"0600\", or \"0660\" with socket_group",
                    ));
                }
            }
            _ => problems.push(Problem::at(
                "control.socket_mode",
                format!("{:?} is not a valid socket mode", self.control.socket_mode),
                "write an octal mode that keeps owner read/write, like \"0600\" or \"0660\"",
            )),
        }
        #[cfg(unix)]
        {
            for (i, user) in self.control.allowed_users.iter().enumerate() {
                let known = user.parse::<u32>().is_ok()
                    || matches!(nix::unistd::User::from_name(user), Ok(Some(_)));
                if !known {
                    problems.push(Problem::at(
                        format!("control.allowed_users[{i}]"),
                        format!("no user named {user:?} on this system"),
                        "use an existing user name or a numeric uid",
                    ));
                }
            }
            if let Some(group) = &self.control.socket_group
                && !matches!(nix::unistd::Group::from_name(group), Ok(Some(_)))
            {
                problems.push(Problem::at(
                    "control.socket_group",
                    format!("no group named {group:?} on this system"),
                    "create the group, or remove socket_group to keep the socket private (0600)",
                ));
            }
        }
        if self.control.max_line.bytes() < 1024 {
            problems.push(Problem::at(
                "control.max_line",
                format!("{} is too small for a request", self.control.max_line),
                "use at least 1KiB; the default is 1MiB",
            ));
        }
        if self.control.max_connections == 0 {
            problems.push(Problem::at(
                "control.max_connections",
                "0 would refuse every client, the CLI included",
                "use a positive number; the default is 10000",
            ));
        }
        if matches!(&self.control.token, Some(t) if t.expose().is_empty()) {
            problems.push(Problem::at(
                "control.token",
                "an empty token",
                "remove the field to disable tokens, or set a long random string",
            ));
        }
        crate::supervisor::config::validate(&self.program, problems);
        self.bus.validate(problems);
        crate::monitor::config::validate(&self.monitor, &self.check, &self.notifier, problems);
        // Across sections: a "program NAME not running" check must name a declared program.
        for (i, check) in self.check.iter().enumerate() {
            if let Some(name) = &check.program
                && !self.program.iter().any(|p| &p.name == name)
            {
                let known: Vec<&str> = self.program.iter().map(|p| p.name.as_str()).collect();
                problems.push(Problem::at(
                    format!("check[{i}].program"),
                    format!("no [[program]] named {name:?}"),
                    if known.is_empty() {
                        "declare it in a [[program]] table, or remove this check".to_string()
                    } else {
                        format!("declared programs: {}", known.join(", "))
                    },
                ));
            }
        }
        crate::pipeline::validate(&self.pipeline, &self.uploader, problems);
        if self.daemon.grace_period.get().is_zero() {
            problems.push(Problem::at(
                "daemon.grace_period",
                "a grace period of 0 gives nothing time to stop cleanly",
                "use a few seconds, e.g. \"10s\"",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
