//! The guard: a tiny helper process (`majordomo __guard`) that outlives the daemon for one
//! purpose. The daemon tells it, over its stdin pipe, each process group it creates (`+PGID`)
//! and forgets (`-PGID`). When the pipe closes, because the daemon exited or was killed with
//! SIGKILL, the guard kills every group still listed and exits. This covers what the parent
//! death signal cannot: a program's own children (grandchildren of the daemon) on every Unix.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};

/// The daemon's end of the guard.
pub struct GuardPipe {
    child: Child,
    stdin: Option<ChildStdin>,
    broken: bool,
}

impl GuardPipe {
    pub fn start() -> std::io::Result<GuardPipe> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("__guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl+C in the daemon's terminal must not kill it.
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(GuardPipe {
            child,
            stdin,
            broken: false,
        })
    }

    /// The pipe's write end, for children to announce themselves before exec.
    pub fn raw_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.stdin.as_ref().map(|s| s.as_raw_fd())
    }

    pub fn send(&mut self, op: char, pgid: i32) {
        self.send_line(&format!("{op}{pgid}\n"));
    }

    /// `c<dir>`: a cgroup to kill at the end; `d<dir>`: forget it.
    pub fn send_cgroup(&mut self, op: char, dir: &std::path::Path) {
        // Paths with a newline cannot be sent on one line; ours never have one.
        if let Some(d) = dir.to_str().filter(|d| !d.contains('\n')) {
            self.send_line(&format!("{op}{d}\n"));
        }
    }

    fn send_line(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        // One write(2) of a short line: atomic on a pipe, never interleaved with the lines
        // children write themselves before exec.
        if let Err(e) = stdin.write_all(line.as_bytes())
            && !self.broken
        {
            self.broken = true;
            tracing::warn!(error = %e, "the guard process is gone; grandchildren of programs may outlive a killed daemon");
        }
    }
}

impl Drop for GuardPipe {
    fn drop(&mut self) {
        // Closing the pipe lets the guard exit (it kills any group still listed).
        drop(self.stdin.take());
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// `majordomo __guard`: reads `+PGID` / `-PGID` and `cDIR` / `dDIR` (cgroups) lines until EOF,
/// then kills what is listed.
pub fn main() -> ExitCode {
    let mut groups = BTreeSet::new();
    let mut cgroups = BTreeSet::new();
    let mut parents = BTreeSet::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (op, id) = line.split_at(line.len().min(1));
        match op {
            "c" => {
                let dir = std::path::PathBuf::from(id);
                if let Some(p) = dir.parent() {
                    parents.insert(p.to_path_buf());
                }
                cgroups.insert(dir);
                continue;
            }
            "d" => {
                cgroups.remove(std::path::Path::new(id));
                continue;
            }
            _ => {}
        }
        let Ok(id) = id.trim().parse::<i32>() else {
            continue;
        };
        // Never signal "every process" (0, -1) or a single process by mistake.
        if id <= 1 {
            continue;
        }
        match op {
            "+" => {
                groups.insert(id);
            }
            "-" => {
                groups.remove(&id);
            }
            _ => {}
        }
    }
    for id in groups {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(id),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for dir in cgroups {
        // Only our own cgroups: never write outside a `majordomo-<pid>` subtree.
        if dir.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|s| s.starts_with("majordomo-"))
        }) {
            majordomo_platform::cgroup::remove(&dir);
        }
    }
    // The daemon's subtree goes once its last cgroup is gone (plain rmdir: never a kill).
    for p in parents {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("majordomo-"))
        {
            let _ = std::fs::remove_dir(p);
        }
    }
    ExitCode::SUCCESS
}
