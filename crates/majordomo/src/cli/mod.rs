//! The command line: `run` starts the daemon; every other verb is a client of a running
//! instance, through `majordomo-client`, except `config check|default`, which work offline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_proto::{ErrorCode, ReloadOutcome, Status};

use majordomo_core::exit;
use majordomo_core::layout::DEFAULT_INSTANCE;
use majordomo_core::{Layout, Mode, Override};
use majordomo_platform::Notifier;

use crate::app::{self, Config};
use crate::daemon;
use crate::logging::LogFormat;

/// `println!` for every verb's output: a closed stdout (`majordomo config show | head -1`) ends
/// the process quietly with exit 0 instead of panicking.
macro_rules! outln {
    () => { $crate::cli::stdout_write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::cli::stdout_write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` with the same rule as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::stdout_write(format_args!($($t)*)) };
}

/// Writes to stdout; on a closed pipe, exits quietly (there is no reader left to tell).
pub(crate) fn stdout_write(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let r = std::io::stdout().lock().write_fmt(args);
    quiet_on_closed(r);
}

fn quiet_on_closed(r: std::io::Result<()>) {
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

pub mod bus;
pub mod discover;
pub mod guest;
pub mod http;
pub mod monitor;
pub mod nats;
pub mod pipeline;
pub mod scheduler;
pub mod service;
pub mod session_agent;
pub mod supervisor;

/// One small binary that gives any application its background-service layer.
#[derive(Debug, Parser)]
#[command(name = "majordomo", version, about, propagate_version = true)]
pub struct Cli {
    /// The instance to run or talk to: 1-32 of a-z, 0-9, '_', '-'.
    #[arg(long, global = true, env = "MAJORDOMO_INSTANCE", default_value = DEFAULT_INSTANCE)]
    pub instance: String,
    /// Keep every file of the instance under DIR (portable installs, tests).
    #[arg(long, global = true, env = "MAJORDOMO_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Use the system-wide places (default when running as root on Unix).
    #[arg(long, global = true, conflicts_with = "user")]
    pub system: bool,
    /// Use the per-user places (default otherwise).
    #[arg(long, global = true)]
    pub user: bool,
    /// The config file, instead of the instance's usual one.
    #[arg(long, global = true, env = "MAJORDOMO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Talk to this socket (or named pipe) instead of the instance's.
    #[arg(long, global = true, env = "MAJORDOMO_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The instance's `[control] token`, when it has one.
    #[arg(long, global = true, env = "MAJORDOMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon in the foreground (Ctrl+C or SIGTERM to stop, SIGHUP to reload).
    Run(RunFlags),
    /// Show a running instance's state.
    Status,
    /// Check that an instance answers.
    Ping,
    /// Reload the instance's config; a broken config is refused and the running one kept.
    Reload,
    /// Stop a running instance (drains within its grace period).
    Shutdown {
        /// Return once the daemon acknowledged, without waiting for it to exit.
        #[arg(long)]
        no_wait: bool,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCmd),
    #[command(flatten)]
    Programs(supervisor::ProgramsCmd),
    /// Internal: the guard process that kills programs' process groups if the daemon dies.
    #[cfg(unix)]
    #[command(name = "__guard", hide = true)]
    Guard,
    #[command(flatten)]
    Monitor(monitor::MonitorCmd),
    /// Inspect and manage the pipelines' upload queues.
    #[command(subcommand)]
    Queue(pipeline::QueueCmd),
    /// Send any socket command and print its reply, e.g. `majordomo call status` or
    /// `majordomo call ps '{"name":"api"}'`.
    Call {
        /// The command name (`cmd`).
        cmd: String,
        /// Its arguments as a JSON object.
        #[arg(default_value = "{}")]
        args: String,
    },
    /// Install, remove and control the instance as an OS service (systemd, launchd, Windows SCM).
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Backup trigger: if the instance does not answer, start it through the service manager
    /// and record that it did (run by the timer that `service install --with-backup-timer` adds).
    Check,
    /// Check config, folders, socket, service, desktop session, virtio ports, disk, clock and
    /// permissions: each OK/WARN/FAIL with a fix; exits 1 when any FAILs.
    /// `--virtio` (alias `majordomo --diagnose`): the VM guest agent's ports in detail.
    Doctor {
        /// Only the virtio-serial ports: driver, ports, who holds them, host connected.
        #[arg(long)]
        virtio: bool,
    },
    /// The message bus: publish, subscribe, send events, requests, list endpoints.
    #[command(subcommand)]
    Bus(bus::BusCmd),
    /// The machine's processes, open ports, services and packages (the guest agent's
    /// management commands; acting ones limited by [guest] allow-lists and audited).
    #[command(subcommand)]
    Guest(guest::GuestCmd),
    /// Every instance on a NATS server: list them, run allowed commands remotely; this
    /// instance's bridge status.
    #[command(subcommand)]
    Fleet(nats::FleetCmd),
    /// The instances on the LAN (mDNS/DNS-SD, [discovery]); needs no daemon.
    Discover(discover::DiscoverArgs),
    /// Scheduled jobs: list, run now, history, pause, resume.
    #[command(subcommand)]
    Job(scheduler::JobCmd),
    /// The shared state store (works while the daemon is down, under the same lock).
    #[command(subcommand)]
    State(scheduler::StateCmd),
    /// Run a command holding a named cross-process lock (with or without the daemon).
    Lock(scheduler::LockArgs),
    /// Show this instance's desktop notifications (`type = "session"` notifiers) in the
    /// user's session, reconnecting when the instance restarts; started at logon by
    /// `service install --session-agent`.
    SessionAgent,
    /// The HTTP dashboard: print its link with the login token, or rotate the token.
    #[command(subcommand)]
    Http(http::HttpCmd),
}

#[derive(Debug, Args)]
pub struct RunFlags {
    /// Log filter, overriding [log] level.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log file format, overriding [log] format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file (default: the instance's), `-` for standard input. Reports every
    /// problem with file:line and exits 64 when there is any.
    Check {
        #[arg(value_name = "FILE|-")]
        file: Option<String>,
    },
    /// Print the complete, commented default config.
    Default,
    /// Print the effective config of the running instance (secrets redacted).
    Show,
}

/// Parses the command line and runs it. `notifier` was taken from the environment first thing.
pub fn main(notifier: Notifier) -> ExitCode {
    let cli = match Cli::try_parse_from(guest::rewrite_diagnose(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let mode = if let Some(home) = &cli.home {
        Mode::Home(home.clone())
    } else if cli.system {
        Mode::System
    } else if cli.user {
        Mode::User
    } else {
        Mode::default_for_process()
    };
    let layout = match Layout::resolve(&cli.instance, mode) {
        Ok(l) => l.with_config_file(cli.config.as_deref()),
        Err(e) => {
            eprintln!("majordomo: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    match &cli.cmd {
        Cmd::Run(flags) => {
            let mut overrides = Override::from_env(std::env::vars());
            if let Some(level) = &flags.log_level {
                overrides.push(Override::flag(
                    "--log-level",
                    &["log", "level"],
                    level.clone(),
                ));
            }
            if let Some(f) = flags.log_format {
                let f = match f {
                    LogFormatArg::Text => LogFormat::Text,
                    LogFormatArg::Json => LogFormat::Json,
                };
                let raw = serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                overrides.push(Override::flag("--log-format", &["log", "format"], raw));
            }
            let args = daemon::RunArgs {
                layout,
                overrides,
                notifier,
            };
            run_daemon(args)
        }
        Cmd::Config(ConfigCmd::Default) => {
            out!("{}", app::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Cmd::Config(ConfigCmd::Check { file }) => config_check(&cli, &layout, file.as_deref()),
        Cmd::Service(cmd) => ExitCode::from(service::service(cmd, &globals(&cli))),
        Cmd::Check => {
            backup_jobs(&cli, &layout);
            ExitCode::from(service::check(&globals(&cli)))
        }
        Cmd::State(c) => scheduler::state(
            c,
            &connect_options(&cli, &layout),
            &state_dir(&layout),
            cli.json,
        ),
        Cmd::Lock(a) => scheduler::lock(a, &state_dir(&layout)),
        Cmd::Doctor { virtio: true } => guest::doctor_virtio(cli.json),
        Cmd::Doctor { virtio: false } => ExitCode::from(service::doctor(&globals(&cli), &layout)),
        #[cfg(unix)]
        Cmd::Guard => majordomo_supervisor::guard::main(),
        _ => client_main(&cli, &layout),
    }
}

/// What the service verbs need of the global options.
fn globals(cli: &Cli) -> service::Globals<'_> {
    service::Globals {
        instance: &cli.instance,
        home: cli.home.as_deref(),
        system: cli.system,
        user: cli.user,
        config: cli.config.as_deref(),
        token: cli.token.as_deref(),
        json: cli.json,
    }
}

/// Runs the daemon: on Windows under the SCM when it started the process, else in the foreground.
#[cfg(windows)]
fn run_daemon(args: daemon::RunArgs) -> ExitCode {
    use majordomo_platform::winsvc::{Outcome, dispatch};
    let name = format!("majordomo-{}", args.layout.instance);
    match dispatch(&name, Box::new(move || daemon::run_code(args))) {
        Ok(Outcome::Service(code)) => ExitCode::from(code),
        Ok(Outcome::Console(body)) => ExitCode::from(body()),
        Err(e) => {
            eprintln!("majordomo: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Runs the daemon in the foreground.
#[cfg(not(windows))]
fn run_daemon(args: daemon::RunArgs) -> ExitCode {
    daemon::run(args)
}

fn config_check(cli: &Cli, layout: &Layout, file: Option<&str>) -> ExitCode {
    let (label, text) = match file {
        Some("-") => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("majordomo: cannot read standard input: {e}");
                return ExitCode::from(exit::USAGE);
            }
            ("<stdin>".to_string(), s)
        }
        other => {
            let path = other
                .map(PathBuf::from)
                .unwrap_or_else(|| layout.config_file.clone());
            match std::fs::read_to_string(&path) {
                Ok(s) => (path.display().to_string(), s),
                Err(e) => {
                    eprintln!("majordomo: cannot read {}: {e}", path.display());
                    return ExitCode::from(exit::USAGE);
                }
            }
        }
    };
    let overrides = Override::from_env(std::env::vars());
    match majordomo_core::load::check_text::<Config>(&text, &label, &overrides) {
        Ok(config) => {
            // What depends on this machine and may change before a start: warnings.
            let warnings = majordomo_supervisor::config::environment_warnings(&config.program);
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": true, "file": label, "warnings": warnings})
                );
            } else {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                if warnings.is_empty() {
                    outln!("{label}: OK");
                } else {
                    outln!("{label}: OK, with {} warning(s)", warnings.len());
                }
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": false, "file": label, "problems": problems.lines()})
                );
            } else {
                eprint!("{problems}");
            }
            ExitCode::from(exit::USAGE)
        }
    }
}

/// Where the CLI found (or looked for) the instance's socket.
struct Found {
    socket: PathBuf,
    /// When no mode was asked for and no instance answered: every mode tried and its socket.
    looked: Vec<(&'static str, PathBuf)>,
}

/// The socket to talk to: `--socket`; else, in each mode of [`Mode::lookup_order`] (the one
/// asked for with `--home`/`--system`/`--user`; otherwise this process's default, then the
/// other of system and user), the instance's socket there ([`socket_for`]); the first where an
/// instance is present ([`present`]) wins. When none is, the default mode's socket, and where
/// it looked.
fn find_socket(cli: &Cli, layout: &Layout) -> Found {
    let own = socket_for(cli, layout, true);
    let explicit = cli.socket.is_some() || cli.home.is_some() || cli.system || cli.user;
    if explicit {
        return Found {
            socket: own,
            looked: Vec::new(),
        };
    }
    let mut looked = vec![(layout.mode.label(), own.clone())];
    if present(layout, &own) {
        return Found {
            socket: own,
            looked: Vec::new(),
        };
    }
    for mode in Mode::lookup_order(None) {
        if mode == layout.mode {
            continue;
        }
        let Ok(other) = Layout::resolve(&cli.instance, mode) else {
            continue;
        };
        let other = other.with_config_file(cli.config.as_deref());
        let socket = socket_for(cli, &other, false);
        if present(&other, &socket) {
            return Found {
                socket,
                looked: Vec::new(),
            };
        }
        looked.push((other.mode.label(), socket));
    }
    Found {
        socket: own,
        looked,
    }
}

/// Whether an instance seems to be there, without connecting (a probe connection would take
/// one of the daemon's connection slots): its Unix socket exists; on Windows, where opening a
/// named pipe connects to it, its pid file exists (removed when the daemon exits).
fn present(layout: &Layout, socket: &Path) -> bool {
    if cfg!(windows) {
        layout.pid_file.exists()
    } else {
        socket.exists()
    }
}

/// "no instance 'x' is running: looked for the system socket A and the user socket B".
fn not_running_anywhere(instance: &str, looked: &[(&'static str, PathBuf)]) -> String {
    let places: Vec<String> = looked
        .iter()
        .map(|(mode, s)| format!("the {mode} {} {}", Layout::SOCKET_WORD, s.display()))
        .collect();
    let flag = if instance == DEFAULT_INSTANCE {
        String::new()
    } else {
        format!(" --instance {instance}")
    };
    format!(
        "no instance '{instance}' is running: looked for {}; start it with `majordomo{flag} run` \
         (or `majordomo{flag} service start`), or name where it listens with --socket",
        places.join(" and ")
    )
}

/// The socket of the instance in `layout`'s mode: `--socket`; else the socket the running
/// daemon recorded beside its pid file (where it listens now, even before a changed
/// `[paths] socket` is reloaded); else the config file's `[paths] socket`; else the layout's.
/// With `report`, a config that cannot be read is reported on stderr.
fn socket_for(cli: &Cli, layout: &Layout, report: bool) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    let record = layout.socket_record();
    let recorded = std::fs::read(&record)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .filter(|p| cfg!(windows) || p.exists());
    let loaded = match std::fs::read_to_string(&layout.config_file) {
        Ok(text) => majordomo_core::load::check_text::<Config>(
            &text,
            &layout.config_file.display().to_string(),
            &Override::from_env(std::env::vars()),
        )
        .map_err(|p| p.to_string()),
        // No config file: the defaults apply, as for the daemon.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return recorded.unwrap_or_else(|| layout.socket.clone());
        }
        Err(e) => Err(format!(
            "cannot read {}: {e}\n",
            layout.config_file.display()
        )),
    };
    match loaded {
        Ok(c) => recorded
            .or(c.paths.socket)
            .unwrap_or_else(|| layout.socket.clone()),
        Err(_) if !report => recorded.unwrap_or_else(|| layout.socket.clone()),
        Err(problems) => {
            eprint!("majordomo: the config could not be read for its socket: {problems}");
            match recorded {
                Some(s) => {
                    eprintln!(
                        "majordomo: using the socket the running daemon recorded in {}: {}",
                        record.display(),
                        s.display()
                    );
                    s
                }
                None => {
                    eprintln!(
                        "majordomo: no running daemon recorded its socket in {}; trying {}",
                        record.display(),
                        layout.socket.display()
                    );
                    layout.socket.clone()
                }
            }
        }
    }
}

/// The instance's state folder, `[paths]` of its config applied.
fn state_dir(layout: &Layout) -> PathBuf {
    std::fs::read_to_string(&layout.config_file)
        .ok()
        .and_then(|text| {
            majordomo_core::load::check_text::<Config>(
                &text,
                "",
                &Override::from_env(std::env::vars()),
            )
            .ok()
        })
        .map(|c| layout.clone().with_overrides(&c.paths).state_dir)
        .unwrap_or_else(|| layout.state_dir.clone())
}

fn connect_options(cli: &Cli, layout: &Layout) -> ConnectOptions {
    ConnectOptions::new(find_socket(cli, layout).socket)
        .instance(layout.instance.clone())
        .token(cli.token.clone())
}

/// `check` while the daemon is down: the persistent jobs that are due run once, through the
/// scheduler's own catch-up (the job's lock and run record decide against the daemon).
fn backup_jobs(cli: &Cli, layout: &Layout) {
    let overrides = Override::from_env(std::env::vars());
    let Ok(loaded) = majordomo_core::load::load::<Config>(&layout.config_file, &overrides) else {
        return;
    };
    let config = loaded.config;
    if !config.job.iter().any(|j| j.persistent) {
        return;
    }
    let socket = config
        .paths
        .socket
        .clone()
        .unwrap_or_else(|| layout.socket.clone());
    if majordomo_service::check::ping(&socket, cli.token.clone()).is_ok() {
        return;
    }
    let dir = layout.clone().with_overrides(&config.paths).state_dir;
    for line in majordomo_scheduler::offline::run_due(&dir, &config.job, config.scheduler.history) {
        if !cli.json {
            println!("{line}");
        }
    }
}

fn client_main(cli: &Cli, layout: &Layout) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("majordomo: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let found = find_socket(cli, layout);
    let opts = ConnectOptions::new(found.socket)
        .instance(layout.instance.clone())
        .token(cli.token.clone());
    match runtime.block_on(client_cmd(cli, &opts)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = match &e {
                ClientError::NotRunning { .. } if found.looked.len() > 1 => {
                    not_running_anywhere(&layout.instance, &found.looked)
                }
                e => e.to_string(),
            };
            let code = match &e {
                ClientError::Remote(body) if body.code == ErrorCode::InvalidConfig => exit::USAGE,
                _ => exit::FAILURE,
            };
            if cli.json {
                outln!("{}", serde_json::json!({"ok": false, "error": msg}));
            } else {
                eprintln!("majordomo: {msg}");
                if let ClientError::Remote(body) = &e
                    && let Some(details) = body.details.as_ref().and_then(|d| d.as_array())
                {
                    for d in details {
                        eprintln!("  {}", d.as_str().unwrap_or_default());
                    }
                }
            }
            ExitCode::from(code)
        }
    }
}

/// Every client verb group has one signature: `run(&cmd, &ConnectOptions, json)`, returning
/// the exit code or the error that `client_main` prints.
async fn client_cmd(cli: &Cli, opts: &ConnectOptions) -> Result<u8, ClientError> {
    match &cli.cmd {
        Cmd::Bus(c) => return bus::run(c, opts, cli.json).await,
        Cmd::Guest(c) => return guest::run(c, opts, cli.json).await,
        Cmd::Http(c) => return http::run(c, opts, cli.json).await,
        Cmd::Programs(c) => return supervisor::run(c, opts, cli.json).await,
        Cmd::Monitor(c) => return monitor::run(c, opts, cli.json).await,
        Cmd::Queue(c) => return pipeline::run(c, opts, cli.json).await,
        Cmd::Fleet(c) => return nats::run(c, opts, cli.json).await,
        Cmd::Discover(c) => return discover::run(c, cli.json).await,
        Cmd::Job(c) => return scheduler::run(c, opts, cli.json).await,
        Cmd::SessionAgent => return session_agent::run(opts).await,
        _ => {}
    }
    let mut client = Client::connect(opts).await?;
    let print_json = |v: &dyn erased::Json| outln!("{}", v.json());
    match &cli.cmd {
        Cmd::Status => {
            let s = client.status().await?;
            if cli.json {
                print_json(&s);
            } else {
                print_status(&s);
            }
        }
        Cmd::Ping => {
            let t = Instant::now();
            client.ping().await?;
            let rtt = t.elapsed();
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": true, "rtt_us": rtt.as_micros() as u64})
                );
            } else {
                outln!(
                    "pong from {} in {:.2} ms",
                    opts.socket().display(),
                    rtt.as_secs_f64() * 1e3
                );
            }
        }
        Cmd::Reload => {
            let o = client.reload().await?;
            if cli.json {
                print_json(&o);
            } else {
                print_reload(&o);
            }
        }
        Cmd::Shutdown { no_wait } => {
            let pid = client.status().await.map(|s| s.pid).ok();
            client.shutdown().await?;
            drop(client);
            if !no_wait {
                wait_gone(opts.socket()).await;
            }
            if cli.json {
                outln!("{}", serde_json::json!({"ok": true, "pid": pid}));
            } else {
                outln!(
                    "stopped{}",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                );
            }
        }
        Cmd::Config(ConfigCmd::Show) => {
            let v = client.config().await?;
            if cli.json {
                outln!("{v}");
            } else {
                match toml::to_string_pretty(&v) {
                    Ok(t) => out!("{t}"),
                    Err(_) => outln!("{v:#}"),
                }
            }
        }
        Cmd::Call { cmd, args } => {
            let args: serde_json::Value = serde_json::from_str(args).map_err(|e| {
                ClientError::Protocol(format!("arguments must be a JSON object: {e}"))
            })?;
            let v = client.call_named(cmd, args).await?;
            if cli.json {
                outln!("{v}");
            } else {
                outln!("{v:#}");
            }
        }
        #[cfg(unix)]
        Cmd::Guard => return Ok(exit::USAGE),
        // `run` and the offline `config` verbs are dispatched in `main` and never get here.
        Cmd::Run(_)
        | Cmd::Config(_)
        | Cmd::Service(_)
        | Cmd::Check
        | Cmd::Doctor { .. }
        | Cmd::Bus(_)
        | Cmd::Guest(_)
        | Cmd::Http(_)
        | Cmd::Programs(_)
        | Cmd::Monitor(_)
        | Cmd::Queue(_)
        | Cmd::Fleet(_)
        | Cmd::Discover(_)
        | Cmd::Job(_)
        | Cmd::State(_)
        | Cmd::Lock(_)
        | Cmd::SessionAgent => {
            return Ok(exit::USAGE);
        }
    }
    Ok(exit::OK)
}

/// Waits until nobody answers on the socket any more (the daemon exited), at most 60 s.
async fn wait_gone(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if Client::connect(&ConnectOptions::new(socket)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fmt_secs(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

fn print_status(s: &Status) {
    outln!(
        "majordomo {} · instance '{}' · pid {} · up {}",
        s.version,
        s.instance,
        s.pid,
        fmt_secs(s.uptime_s)
    );
    outln!(
        "  config  {} ({}, generation {})",
        s.config_path,
        s.config_source,
        s.config_generation
    );
    outln!("  socket  {}", s.socket);
    outln!("  state   {}", s.state_dir);
    outln!("  logs    {}", s.log_dir);
    if let Some(r) = &s.last_reload {
        outln!(
            "  last reload  {} at {} ({})",
            if r.ok { "ok" } else { "REFUSED" },
            r.at,
            r.trigger
        );
        for e in &r.errors {
            outln!("    {e}");
        }
    }
    if !s.alerts.active.is_empty() {
        outln!(
            "  alerts  {} firing, {} pending",
            s.alerts.firing,
            s.alerts.pending
        );
        for a in &s.alerts.active {
            outln!(
                "    {:<8} {:<9} {}  {}",
                a.state,
                a.severity,
                a.id,
                a.summary
            );
        }
    }
    outln!("  subsystems");
    for (name, st) in &s.subsystems {
        outln!(
            "    {name:<14} {:<9} {:>8}  {}",
            st.state,
            fmt_secs(st.since_s),
            st.detail.as_deref().unwrap_or("")
        );
    }
}

fn print_reload(o: &ReloadOutcome) {
    if o.restarted.is_empty() && o.updated.is_empty() {
        outln!("reloaded: generation {}; nothing changed", o.generation);
    } else {
        outln!("reloaded: generation {}", o.generation);
        if !o.restarted.is_empty() {
            outln!("  restarted: {}", o.restarted.join(", "));
        }
        if !o.updated.is_empty() {
            outln!("  updated live: {}", o.updated.join(", "));
        }
    }
}

mod erased {
    /// Anything printable as one line of JSON.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
