//! The service verbs: `service install|uninstall|start|stop|restart|status`, `check` (the
//! backup trigger) and `doctor`. The clap definitions live here; the work is done by
//! `majordomo-service`, which gets plain values: an [`Invocation`] built from the global flags,
//! and what it needs of the instance's config, read here (the schema is the application's).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use majordomo_core::load::load;
use majordomo_core::{Layout, Override};
use majordomo_service::doctor::DoctorInput;
use majordomo_service::{
    Defaults, InstallRequest, Invocation, Scope, ServiceCommand, Settings, StagedManager, StartType,
};

use crate::app::{Config, DEFAULT_TOML, DaemonConfig};

/// `majordomo service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Install the instance as an OS service (systemd unit, launchd job, Windows service) and
    /// enable it; `--system` (default as root / on Windows) or `--user`.
    Install(InstallArgs),
    /// Stop and remove the service, and every file its install wrote.
    Uninstall(RootArgs),
    /// Start the installed service through the service manager.
    Start,
    /// Stop the service through the service manager (it drains within its grace period).
    Stop,
    /// Restart the service through the service manager.
    Restart,
    /// Show whether the service is installed, enabled, running and answering (with --root:
    /// what `install --root` staged there).
    Status(RootArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Start the service right after installing it.
    #[arg(long)]
    pub start: bool,
    /// Also install an OS scheduled trigger (systemd timer, Task Scheduler task, launchd
    /// StartInterval) that runs `majordomo check` every EVERY (default 5m) and starts the
    /// instance when it does not answer.
    #[arg(long, value_name = "EVERY", num_args = 0..=1, default_missing_value = "5m")]
    pub with_backup_timer: Option<String>,
    /// Also start `majordomo session-agent` at each logon (XDG autostart entry, LaunchAgent,
    /// Task Scheduler logon task), to show the instance's notifications on the desktop.
    #[arg(long)]
    pub session_agent: bool,
    /// Write every file under DIR instead of `/` (packaging, tests); no service manager is
    /// called and no rights are needed.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// With --root: stage the files of this service manager instead of this system's own
    /// (e.g. launchd plists on Linux, for inspection; the paths in them are this system's).
    #[arg(long, value_enum, requires = "root", value_name = "MANAGER")]
    pub manager: Option<ManagerArg>,
    /// When the service starts: on Windows its start type; with systemd `manual` installs
    /// the unit without enabling it (no boot link).
    #[arg(long, value_enum, default_value = "auto")]
    pub start_type: StartTypeArg,
    /// Windows: the account the service runs as (default LocalSystem), e.g.
    /// `NT AUTHORITY\LocalService`.
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,
}

#[derive(Debug, Args)]
pub struct RootArgs {
    /// The staging root given to `install --root`.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// The file-based service managers `--root` can stage for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ManagerArg {
    Systemd,
    Launchd,
}

/// Windows start types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartTypeArg {
    /// At boot.
    Auto,
    /// At boot, shortly after the other automatic services.
    DelayedAuto,
    /// Only when started by hand (or by `majordomo check`).
    Manual,
}

impl From<&ServiceCmd> for ServiceCommand {
    fn from(cmd: &ServiceCmd) -> Self {
        match cmd {
            ServiceCmd::Install(a) => ServiceCommand::Install(InstallRequest {
                start: a.start,
                with_backup_timer: a.with_backup_timer.clone(),
                session_agent: a.session_agent,
                root: a.root.clone(),
                manager: a.manager.map(|m| match m {
                    ManagerArg::Systemd => StagedManager::Systemd,
                    ManagerArg::Launchd => StagedManager::Launchd,
                }),
                start_type: match a.start_type {
                    StartTypeArg::Auto => StartType::Auto,
                    StartTypeArg::DelayedAuto => StartType::DelayedAuto,
                    StartTypeArg::Manual => StartType::Manual,
                },
                account: a.account.clone(),
            }),
            ServiceCmd::Uninstall(a) => ServiceCommand::Uninstall {
                root: a.root.clone(),
            },
            ServiceCmd::Start => ServiceCommand::Start,
            ServiceCmd::Stop => ServiceCommand::Stop,
            ServiceCmd::Restart => ServiceCommand::Restart,
            ServiceCmd::Status(a) => ServiceCommand::Status {
                root: a.root.clone(),
            },
        }
    }
}

/// The global options the service verbs use. `--socket` is not among them: they find the
/// instance's socket from its layout and config, as the service manager does.
#[derive(Debug, Clone)]
pub struct Globals<'a> {
    /// `--instance`.
    pub instance: &'a str,
    /// `--home`.
    pub home: Option<&'a Path>,
    /// `--system`.
    pub system: bool,
    /// `--user`.
    pub user: bool,
    /// `--config`.
    pub config: Option<&'a Path>,
    /// `--token`.
    pub token: Option<&'a str>,
    /// `--json`.
    pub json: bool,
}

/// `majordomo service ...`: returns the exit code.
pub fn service(cmd: &ServiceCmd, g: &Globals<'_>) -> u8 {
    majordomo_service::main(&invocation(g), &ServiceCommand::from(cmd))
}

/// `majordomo check`: returns the exit code.
pub fn check(g: &Globals<'_>) -> u8 {
    majordomo_service::check::main(&invocation(g))
}

/// `majordomo doctor`: `layout` is the instance's resolved layout with `--config` applied (the
/// one every verb uses). Returns the exit code.
pub fn doctor(g: &Globals<'_>, layout: &Layout) -> u8 {
    let overrides = Override::from_env(std::env::vars());
    let (loaded, config) = match load::<Config>(&layout.config_file, &overrides) {
        Ok(l) => (Ok(l.source), l.config),
        Err(problems) => (Err(problems.lines()), Config::default()),
    };
    let input = DoctorInput {
        layout: layout.clone(),
        loaded,
        settings: settings(&config),
    };
    majordomo_service::doctor::main(&invocation(g), &input)
}

fn invocation(g: &Globals<'_>) -> Invocation {
    Invocation {
        instance: g.instance.to_string(),
        scope: if g.system {
            Some(Scope::System)
        } else if g.user {
            Some(Scope::User)
        } else {
            None
        },
        home: g.home.map(Path::to_path_buf),
        config: g.config.map(Path::to_path_buf),
        token: g.token.map(str::to_string),
        json: g.json,
        exe: None,
        read_config,
        defaults: Defaults {
            grace: DaemonConfig::default().grace_period.get(),
            config_toml: DEFAULT_TOML,
        },
    }
}

/// What the service verbs use of the config file at `path`, without the environment's overrides
/// (the service manager starts the daemon without them); the built-in values when it is missing
/// or invalid.
fn read_config(path: &Path) -> Settings {
    match load::<Config>(path, &[]) {
        Ok(l) => settings(&l.config),
        Err(_) => settings(&Config::default()),
    }
}

fn settings(c: &Config) -> Settings {
    Settings {
        grace: c.daemon.grace_period.get(),
        token: c.control.token.as_ref().map(|t| t.expose().to_string()),
        paths: c.paths.clone(),
    }
}
