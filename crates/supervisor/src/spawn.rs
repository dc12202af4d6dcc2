//! Every process the supervisor starts goes through [`Procs::spawn`]: its own session / process
//! group (job object on Windows), registered with the guard process (Unix) so that the group is
//! killed even when the daemon is killed with SIGKILL, and with the orphan reaper.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};

use majordomo_platform::process::{self, Group, SpawnOpts};

/// A started process and its group.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub group: Group,
}

/// The process groups the supervisor started and still owns.
#[derive(Default)]
pub struct Procs {
    groups: Mutex<HashSet<i32>>,
    /// Started with the first program (whether it could be started, and its pipe).
    #[cfg(unix)]
    guard: Mutex<(bool, Option<super::guard::GuardPipe>)>,
}

impl Procs {
    pub fn new() -> Arc<Procs> {
        Arc::new(Procs::default())
    }

    /// Starts `cmd` in a new process group owned by the supervisor.
    pub fn spawn(&self, mut cmd: std::process::Command, opts: &SpawnOpts) -> io::Result<Spawned> {
        // The guard must know the child's group before the child can have children of its own:
        // the child announces itself on the guard's pipe before exec.
        #[cfg(unix)]
        let opts = &SpawnOpts {
            announce_fd: self.guard_fd(),
            ..opts.clone()
        };
        process::prepare(&mut cmd, opts);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let group = match Group::adopt(&child) {
            Ok(g) => g,
            Err(e) => {
                let _ = child.start_kill();
                return Err(e);
            }
        };
        self.track(group.id());
        Ok(Spawned { child, group })
    }

    /// Starts the guard process once, before the first child (Unix). Without it, programs
    /// still die with the daemon (parent-death signal) but their own children might not; that is
    /// logged.
    /// Starts the guard process once, before the first child (Unix), and returns the write end
    /// of its pipe, which stays open as long as `self`. Without a guard, programs still die with
    /// the daemon (parent-death signal) but their own children might not; that is logged.
    #[cfg(unix)]
    fn guard_fd(&self) -> Option<i32> {
        let mut guard = self.guard.lock().ok()?;
        if !guard.0 {
            guard.0 = true;
            match super::guard::GuardPipe::start() {
                Ok(g) => guard.1 = Some(g),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the guard process; grandchildren of programs may outlive a killed daemon")
                }
            }
        }
        guard.1.as_ref().and_then(|g| g.raw_fd())
    }

    fn track(&self, id: i32) {
        if let Ok(mut g) = self.groups.lock() {
            g.insert(id);
        }
        #[cfg(unix)]
        if let Ok(mut guard) = self.guard.lock()
            && let Some(pipe) = guard.1.as_mut()
        {
            pipe.send('+', id);
        }
    }

    /// Forgets groups that have no process left (also tells the guard).
    pub fn sweep(&self) {
        let empty: Vec<i32> = match self.groups.lock() {
            Ok(g) => g.iter().copied().filter(|id| group_gone(*id)).collect(),
            Err(_) => return,
        };
        if empty.is_empty() {
            return;
        }
        if let Ok(mut g) = self.groups.lock() {
            for id in &empty {
                g.remove(id);
            }
        }
        #[cfg(unix)]
        if let Ok(mut guard) = self.guard.lock()
            && let Some(pipe) = guard.1.as_mut()
        {
            for id in empty {
                pipe.send('-', id);
            }
        }
    }

    /// Reaps exited orphans that belong to one of our groups (Linux subreaper), then sweeps.
    pub fn reap(&self) {
        let sessions = self.groups.lock().map(|g| g.clone()).unwrap_or_default();
        process::reap_orphans(&sessions);
        self.sweep();
    }

    /// Kills every group still known (last resort at the end of a shutdown).
    pub fn kill_all(&self) {
        #[cfg(unix)]
        {
            let ids: Vec<i32> = self
                .groups
                .lock()
                .map(|g| g.iter().copied().collect())
                .unwrap_or_default();
            for id in ids {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(id),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[cfg(unix)]
fn group_gone(id: i32) -> bool {
    matches!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(id), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(not(unix))]
fn group_gone(_id: i32) -> bool {
    // Job objects are closed with their `Group`; nothing to remember.
    true
}

/// Finds `command` the way exec would: a path is checked as it is; a bare name is looked up in
/// `PATH` (the program's own `PATH` when its env sets one). Returns why not when it cannot run.
pub fn find_executable(
    command: &str,
    cwd: Option<&std::path::Path>,
    path_var: Option<&str>,
) -> Result<(), String> {
    use std::path::Path;
    let is_path = command.contains('/') || (cfg!(windows) && command.contains('\\'));
    if is_path {
        let p = Path::new(command);
        let full = match cwd {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        };
        return match std::fs::metadata(&full) {
            Ok(m) if m.is_dir() => {
                Err(format!("{} is a folder, not an executable", full.display()))
            }
            Ok(m) if !is_executable(&m) => Err(format!(
                "{} is not executable (chmod +x it, or set command to its interpreter)",
                full.display()
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("executable {} not found: {e}", full.display())),
        };
    }
    let path = path_var
        .map(String::from)
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    let exts: &[&str] = if cfg!(windows) {
        &["", ".exe", ".cmd", ".bat"]
    } else {
        &[""]
    };
    for dir in std::env::split_paths(&path) {
        for ext in exts {
            if let Ok(m) = std::fs::metadata(dir.join(format!("{command}{ext}")))
                && m.is_file()
                && is_executable(&m)
            {
                return Ok(());
            }
        }
    }
    Err(format!(
        "executable {command:?} not found in PATH ({path}); write its full path in `command`"
    ))
}

#[cfg(unix)]
fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_m: &std::fs::Metadata) -> bool {
    true
}
