//! Where an instance keeps its files.
//!
//! An instance is named `[a-z0-9_-]{1,32}` (default `default`). Its config, state, logs and
//! socket live in the platform's usual places, for a system-wide or a per-user instance, or all
//! under one `--home` directory (portable installs, tests). The `[paths]` config section can move
//! state, logs and socket; the config file, lock and pid file stay where the layout puts them,
//! because they are how the instance is found.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[paths]`: overrides of where this instance keeps its files (each defaults to the platform's usual place).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Folder for state (queues, history, the pid file).
    pub state_dir: Option<PathBuf>,
    /// Folder for log files.
    pub log_dir: Option<PathBuf>,
    /// The instance socket (Unix) or pipe name (`\\.\pipe\...`, Windows).
    pub socket: Option<PathBuf>,
}

/// The default instance name.
pub const DEFAULT_INSTANCE: &str = "default";

/// Checks an instance name: 1 to 32 of `a-z`, `0-9`, `_`, `-`.
pub fn validate_instance(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid instance name {name:?}: use 1 to 32 characters from a-z, 0-9, '_' and '-'"
        ))
    }
}

/// How the instance's places are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// System-wide: `/etc`, `/var/lib`, `/var/log`, `/run` (Linux); `%ProgramData%` (Windows);
    /// `/Library` (macOS).
    System,
    /// Per user: XDG folders (Linux), `%LOCALAPPDATA%` (Windows), `~/Library` (macOS).
    User,
    /// Everything under one directory.
    Home(PathBuf),
}

impl Mode {
    /// The mode when none is asked for: system-wide for root on Unix, per user otherwise.
    pub fn default_for_process() -> Mode {
        #[cfg(unix)]
        {
            if nix::unistd::geteuid().is_root() {
                return Mode::System;
            }
        }
        Mode::User
    }

    /// Where a client looks for a running instance, in order: the mode it was asked for alone
    /// (`--system`, `--user`, `--home`); otherwise this process's default mode, then the other
    /// of system and user. The same rule on every OS: on Windows a service is installed
    /// system-wide by default while a console user's default mode is per user.
    pub fn lookup_order(explicit: Option<Mode>) -> Vec<Mode> {
        Self::lookup_order_from(explicit, Self::default_for_process())
    }

    fn lookup_order_from(explicit: Option<Mode>, default: Mode) -> Vec<Mode> {
        match explicit {
            Some(m) => vec![m],
            None => {
                let other = match default {
                    Mode::System => Mode::User,
                    _ => Mode::System,
                };
                vec![default, other]
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Mode::System => "system",
            Mode::User => "user",
            Mode::Home(_) => "home",
        }
    }
}

/// The resolved places of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub instance: String,
    pub mode: Mode,
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Unix socket path, or named pipe name on Windows.
    pub socket: PathBuf,
    /// Held locked while the instance runs.
    pub lock_file: PathBuf,
    /// The running daemon's PID, beside the lock (readable while the lock is held, on every OS).
    pub pid_file: PathBuf,
}

/// Whether a file can be created in `dir` (creates and removes a probe file).
fn probe_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".majordomo-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

#[cfg(unix)]
fn is_socket(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_socket()
}

#[cfg(not(unix))]
fn is_socket(_m: &std::fs::Metadata) -> bool {
    true
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  config  {}", self.config_file.display())?;
        writeln!(f, "  socket  {}", self.socket.display())?;
        writeln!(f, "  state   {}", self.state_dir.display())?;
        write!(f, "  logs    {}", self.log_dir.display())
    }
}

impl Layout {
    /// Resolves the layout; `instance` must be valid.
    pub fn resolve(instance: &str, mode: Mode) -> Result<Layout, String> {
        validate_instance(instance)?;
        let p = imp::places(instance, &mode)?;
        Ok(Layout {
            instance: instance.to_string(),
            mode,
            config_file: p.config_file,
            state_dir: p.state_dir,
            log_dir: p.log_dir,
            socket: p.socket,
            lock_file: p.run_dir.join(format!("{instance}.lock")),
            pid_file: p.run_dir.join(format!("{instance}.pid")),
        })
    }

    /// What can be checked before a reload moves to this layout from `prev`: the state and log
    /// folders exist as folders or can be created, and a new socket path's folder is writable
    /// and holds no other file at that name. Creates the folders (they are needed anyway);
    /// touches nothing else. Each problem names the path and what to do.
    pub fn preflight(&self, prev: &Layout) -> Vec<String> {
        let mut problems = Vec::new();
        for (what, dir, old) in [
            ("[paths] state_dir", &self.state_dir, &prev.state_dir),
            ("[paths] log_dir", &self.log_dir, &prev.log_dir),
        ] {
            if dir == old {
                continue;
            }
            if let Err(e) = std::fs::create_dir_all(dir) {
                problems.push(format!(
                    "{what}: cannot create the folder {}: {e}; choose a writable place",
                    dir.display()
                ));
            } else if !probe_writable(dir) {
                problems.push(format!(
                    "{what}: the folder {} is not writable by the daemon",
                    dir.display()
                ));
            }
        }
        if self.socket != prev.socket && cfg!(unix) {
            match std::fs::symlink_metadata(&self.socket) {
                Ok(m) if !is_socket(&m) => problems.push(format!(
                    "[paths] socket: {} exists and is not a socket; the daemon never replaces it",
                    self.socket.display()
                )),
                _ => {}
            }
            if let Some(dir) = self.socket.parent() {
                let ok = std::fs::create_dir_all(dir).is_ok() && probe_writable(dir);
                if !ok {
                    problems.push(format!(
                        "[paths] socket: cannot create a socket in {}; choose a writable folder",
                        dir.display()
                    ));
                }
            }
        }
        problems
    }

    /// The run file beside the pid file where the running daemon records its socket, so a CLI
    /// that cannot read the config still finds the instance (`<instance>.socket`).
    /// What the instance's socket is called in messages: a named pipe on Windows.
    pub const SOCKET_WORD: &'static str = if cfg!(windows) { "pipe" } else { "socket" };

    pub fn socket_record(&self) -> PathBuf {
        self.pid_file.with_extension("socket")
    }

    /// Applies the `[paths]` overrides of a config.
    pub fn with_overrides(mut self, paths: &PathsConfig) -> Layout {
        if let Some(p) = &paths.state_dir {
            self.state_dir = p.clone();
        }
        if let Some(p) = &paths.log_dir {
            self.log_dir = p.clone();
        }
        if let Some(p) = &paths.socket {
            self.socket = p.clone();
        }
        self
    }

    /// An explicit config file replaces the layout's.
    pub fn with_config_file(mut self, file: Option<&Path>) -> Layout {
        if let Some(f) = file {
            self.config_file = f.to_path_buf();
        }
        self
    }
}

struct Places {
    config_file: PathBuf,
    state_dir: PathBuf,
    log_dir: PathBuf,
    socket: PathBuf,
    run_dir: PathBuf,
}

fn home_places(dir: &Path, instance: &str) -> Places {
    let root = dir.join(instance);
    Places {
        config_file: root.join("config.toml"),
        state_dir: root.join("state"),
        log_dir: root.join("logs"),
        socket: imp::home_socket(&root, instance),
        run_dir: root.clone(),
    }
}

fn need(dir: Option<PathBuf>, what: &str) -> Result<PathBuf, String> {
    dir.ok_or_else(|| {
        format!("cannot find the user's {what} folder; pass --home DIR or set MAJORDOMO_HOME")
    })
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;

    pub(super) fn places(instance: &str, mode: &Mode) -> Result<Places, String> {
        Ok(match mode {
            Mode::Home(dir) => home_places(dir, instance),
            Mode::System => Places {
                config_file: PathBuf::from(format!("/etc/majordomo/{instance}.toml")),
                state_dir: PathBuf::from(format!("/var/lib/majordomo/{instance}")),
                log_dir: PathBuf::from(format!("/var/log/majordomo/{instance}")),
                socket: PathBuf::from(format!("/run/majordomo/{instance}.sock")),
                run_dir: PathBuf::from("/run/majordomo"),
            },
            Mode::User => {
                let config = need(dirs::config_dir(), "config")?;
                let state = need(dirs::state_dir().or_else(dirs::data_local_dir), "state")?;
                let state_dir = state.join("majordomo").join(instance);
                let run_dir = dirs::runtime_dir()
                    .map(|d| d.join("majordomo"))
                    .unwrap_or_else(|| state_dir.clone());
                Places {
                    config_file: config.join("majordomo").join(format!("{instance}.toml")),
                    log_dir: state_dir.join("logs"),
                    socket: run_dir.join(format!("{instance}.sock")),
                    state_dir,
                    run_dir,
                }
            }
        })
    }

    pub(super) fn home_socket(root: &Path, _instance: &str) -> PathBuf {
        root.join("majordomo.sock")
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use super::*;

    pub(super) fn places(instance: &str, mode: &Mode) -> Result<Places, String> {
        Ok(match mode {
            Mode::Home(dir) => home_places(dir, instance),
            Mode::System => {
                let base = PathBuf::from("/Library/Application Support/majordomo");
                Places {
                    config_file: base.join(format!("{instance}.toml")),
                    state_dir: base.join(instance),
                    log_dir: PathBuf::from(format!("/Library/Logs/majordomo/{instance}")),
                    socket: PathBuf::from(format!("/var/run/majordomo/{instance}.sock")),
                    run_dir: PathBuf::from("/var/run/majordomo"),
                }
            }
            Mode::User => {
                let home = need(dirs::home_dir(), "home")?;
                let base = home.join("Library/Application Support/majordomo");
                let state_dir = base.join(instance);
                Places {
                    config_file: base.join(format!("{instance}.toml")),
                    log_dir: home.join("Library/Logs/majordomo").join(instance),
                    socket: state_dir.join("majordomo.sock"),
                    run_dir: state_dir.clone(),
                    state_dir,
                }
            }
        })
    }

    pub(super) fn home_socket(root: &Path, _instance: &str) -> PathBuf {
        root.join("majordomo.sock")
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::hash::{Hash, Hasher};

    pub(super) fn places(instance: &str, mode: &Mode) -> Result<Places, String> {
        Ok(match mode {
            Mode::Home(dir) => home_places(dir, instance),
            Mode::System => {
                // The shell's answer first: a service's environment may differ from a console's.
                let base = majordomo_platform::folders::program_data()
                    .or_else(|| std::env::var_os("ProgramData").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
                    .join("majordomo")
                    .join(instance);
                per_dir(base, format!(r"\\.\pipe\majordomo-{instance}"))
            }
            Mode::User => {
                let base = need(dirs::data_local_dir(), "local app data")?
                    .join("majordomo")
                    .join(instance);
                let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
                let user: String = user
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                per_dir(base, format!(r"\\.\pipe\majordomo-{user}-{instance}"))
            }
        })
    }

    fn per_dir(base: PathBuf, pipe: String) -> Places {
        Places {
            config_file: base.join("config.toml"),
            state_dir: base.join("state"),
            log_dir: base.join("logs"),
            socket: PathBuf::from(pipe),
            run_dir: base,
        }
    }

    /// Pipe names are global on Windows: derive one from the home directory.
    pub(super) fn home_socket(root: &Path, instance: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut h);
        PathBuf::from(format!(
            r"\\.\pipe\majordomo-{:016x}-{instance}",
            h.finish()
        ))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
mod imp {
    use super::*;

    pub(super) fn places(instance: &str, mode: &Mode) -> Result<Places, String> {
        match mode {
            Mode::Home(dir) => Ok(home_places(dir, instance)),
            Mode::System => Ok(Places {
                config_file: PathBuf::from(format!("/usr/local/etc/majordomo/{instance}.toml")),
                state_dir: PathBuf::from(format!("/var/db/majordomo/{instance}")),
                log_dir: PathBuf::from(format!("/var/log/majordomo/{instance}")),
                socket: PathBuf::from(format!("/var/run/majordomo/{instance}.sock")),
                run_dir: PathBuf::from("/var/run/majordomo"),
            }),
            Mode::User => {
                let home = need(dirs::home_dir(), "home")?.join(".majordomo");
                Ok(home_places(&home, instance))
            }
        }
    }

    pub(super) fn home_socket(root: &Path, _instance: &str) -> PathBuf {
        root.join("majordomo.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        for ok in ["default", "a", "worker-1", "x_y", &"a".repeat(32)] {
            assert!(validate_instance(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Default", "a b", "../x", &"a".repeat(33), "é"] {
            assert!(validate_instance(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_order_is_the_asked_mode_alone_else_both() {
        let home = Mode::Home("/h".into());
        for default in [Mode::System, Mode::User] {
            for m in [Mode::System, Mode::User, home.clone()] {
                assert_eq!(
                    Mode::lookup_order_from(Some(m.clone()), default.clone()),
                    vec![m]
                );
            }
        }
        assert_eq!(
            Mode::lookup_order_from(None, Mode::System),
            vec![Mode::System, Mode::User]
        );
        assert_eq!(
            Mode::lookup_order_from(None, Mode::User),
            vec![Mode::User, Mode::System]
        );
        // This process: its own mode first, then the other; both resolve to distinct places.
        let order = Mode::lookup_order(None);
        assert_eq!(order[0], Mode::default_for_process());
        let [a, b] = &order[..] else {
            panic!("{order:?}")
        };
        let (a, b) = (
            Layout::resolve("web", a.clone()).unwrap(),
            Layout::resolve("web", b.clone()).unwrap(),
        );
        assert_ne!(a.socket, b.socket);
        assert_ne!(a.socket_record(), b.socket_record());
    }

    /// Windows: a console user looks for the per-user pipe first, then the system service's.
    #[cfg(windows)]
    #[test]
    fn windows_looks_for_the_user_pipe_then_the_system_pipe() {
        assert_eq!(Mode::default_for_process(), Mode::User);
        assert_eq!(Mode::lookup_order(None), vec![Mode::User, Mode::System]);
        let user = Layout::resolve("web", Mode::User).unwrap();
        let system = Layout::resolve("web", Mode::System).unwrap();
        assert_eq!(system.socket, PathBuf::from(r"\\.\pipe\majordomo-web"));
        let u = user.socket.to_string_lossy().into_owned();
        assert!(
            u.starts_with(r"\\.\pipe\majordomo-")
                && u.ends_with("-web")
                && u != r"\\.\pipe\majordomo-web",
            "{u}"
        );
        assert_eq!(Layout::SOCKET_WORD, "pipe");
    }

    #[test]
    fn home_layout_keeps_instances_apart() {
        let a = Layout::resolve("a", Mode::Home("/h".into())).unwrap();
        let b = Layout::resolve("b", Mode::Home("/h".into())).unwrap();
        assert_ne!(a.socket, b.socket);
        assert_ne!(a.state_dir, b.state_dir);
        assert_ne!(a.lock_file, b.lock_file);
        assert!(a.config_file.starts_with("/h/a"));
    }
}
