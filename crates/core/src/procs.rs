//! Every process a subsystem starts (programs, probes, `pre_start`, converters) goes through
//! [`Procs::spawn`]: its own session / process group (job object on Windows), its own cgroup v2
//! where the daemon may create one (Linux), registered with the guard process (Unix) so that the
//! group and the cgroup are killed even when the daemon is killed with SIGKILL, and with the
//! orphan reaper.

#[cfg(unix)]
pub mod guard;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use majordomo_platform::cgroup::{self, Cgroups};
use majordomo_platform::process::{self, Group, SpawnOpts};

/// The daemon's cgroup subtree, detected once per process (`None`: not available here).
fn cgroups() -> Option<&'static Cgroups> {
    CG.get_or_init(|| match Cgroups::detect() {
        Ok(c) => {
            tracing::info!(cgroup = %c.base().display(), "each program and converter gets a cgroup v2 of its own");
            Some(c)
        }
        Err(why) => {
            tracing::info!("no cgroup per program ({why}); process groups, the parent-death signal and the guard keep children from outliving the daemon");
            None
        }
    })
    .as_ref()
}

/// At the daemon's exit: kills whatever is still in its cgroup subtree and removes it.
pub fn release() {
    if let Some(c) = CG.get().and_then(Option::as_ref) {
        cgroup::remove(c.base());
    }
}

static CG: OnceLock<Option<Cgroups>> = OnceLock::new();

/// Names of the cgroups this process creates, unique across every `Procs`.
static NEXT_CGROUP: AtomicU64 = AtomicU64::new(1);

/// A started process and its group.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub group: Group,
}

/// The process groups the supervisor started and still owns.
#[derive(Default)]
pub struct Procs {
    groups: Mutex<HashSet<i32>>,
    /// The cgroup of each group that has one (Linux with cgroup v2 write access).
    cgroups: Mutex<HashMap<i32, PathBuf>>,
    /// Started with the first program (whether it could be started, and its pipe).
    #[cfg(unix)]
    guard: Mutex<(bool, Option<guard::GuardPipe>)>,
}

impl Procs {
    pub fn new() -> Arc<Procs> {
        Arc::new(Procs::default())
    }

    /// Starts `cmd` in a new process group owned by the supervisor.
    pub fn spawn(&self, mut cmd: std::process::Command, opts: &SpawnOpts) -> io::Result<Spawned> {
        // The guard must know the child's group before the child can have children of its own:
        // the child announces itself on the guard's pipe before exec.
        // Its own cgroup, which the child enters before exec: nothing it starts can leave it.
        let cg = cgroups().and_then(|c| {
            let name = format!("t{}", NEXT_CGROUP.fetch_add(1, Ordering::Relaxed));
            c.create(&name)
                .map_err(|e| tracing::warn!(error = %e, "cannot create a cgroup for a child"))
                .ok()
        });
        #[cfg(unix)]
        let opts = &SpawnOpts {
            announce_fd: self.guard_fd(),
            cgroup_fd: cg.as_ref().map(|(_, f)| {
                use std::os::fd::AsRawFd;
                f.as_raw_fd()
            }),
            ..opts.clone()
        };
        process::prepare(&mut cmd, opts);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let spawned = cmd.spawn();
        // The parent's descriptor on cgroup.procs is not needed once the child has exec'd.
        let cg = cg.map(|(dir, _)| dir);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(dir) = &cg {
                    cgroup::remove(dir);
                }
                return Err(e);
            }
        };
        let group = match Group::adopt(&child) {
            Ok(g) => g,
            Err(e) => {
                let _ = child.start_kill();
                return Err(e);
            }
        };
        self.track(group.id(), cg);
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
            match guard::GuardPipe::start() {
                Ok(g) => guard.1 = Some(g),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the guard process; grandchildren of programs may outlive a killed daemon")
                }
            }
        }
        guard.1.as_ref().and_then(|g| g.raw_fd())
    }

    fn track(&self, id: i32, cg: Option<PathBuf>) {
        if let Ok(mut g) = self.groups.lock() {
            g.insert(id);
        }
        #[cfg(unix)]
        if let Ok(mut guard) = self.guard.lock()
            && let Some(pipe) = guard.1.as_mut()
        {
            pipe.send('+', id);
            if let Some(dir) = &cg {
                pipe.send_cgroup('c', dir);
            }
        }
        if let (Some(dir), Ok(mut m)) = (cg, self.cgroups.lock()) {
            m.insert(id, dir);
        }
    }

    /// Kills the tree of group `id`: its process group and, where it has one, its cgroup
    /// (which also holds what escaped the group with `setsid`).
    pub fn kill_tree(&self, id: i32) {
        #[cfg(unix)]
        if id > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(id),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let dir = self.cgroups.lock().ok().and_then(|m| m.get(&id).cloned());
        if let Some(dir) = dir {
            cgroup::kill(&dir);
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
        // A tree ends with its group leader's group: whatever is left in its cgroup (started
        // with setsid, double-forked) is killed, and the cgroup removed.
        let dirs: Vec<PathBuf> = match self.cgroups.lock() {
            Ok(mut m) => empty.iter().filter_map(|id| m.remove(id)).collect(),
            Err(_) => Vec::new(),
        };
        for dir in &dirs {
            if !cgroup::is_empty(dir) {
                tracing::info!(cgroup = %dir.display(), "killing what a finished program or converter left running");
            }
            cgroup::remove(dir);
        }
        #[cfg(unix)]
        if let Ok(mut guard) = self.guard.lock()
            && let Some(pipe) = guard.1.as_mut()
        {
            for dir in &dirs {
                pipe.send_cgroup('d', dir);
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
        let dirs: Vec<PathBuf> = self
            .cgroups
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for dir in dirs {
            cgroup::kill(&dir);
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
