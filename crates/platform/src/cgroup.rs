//! cgroup v2 on Linux: one cgroup per started process tree, so that everything a program or a
//! converter starts (even with `setsid`, even double-forked) can be found and killed at once.
//!
//! The daemon looks for the cgroup2 mount in `/proc/self/mountinfo` (it is `/sys/fs/cgroup` on
//! most systems, `/sys/fs/cgroup/unified` on hybrid ones), reads its own cgroup from
//! `/proc/self/cgroup` (`0::/path`), and creates `majordomo-<pid>` below it. That only works
//! when it may (root, or a delegated subtree such as a systemd unit with `Delegate=yes`);
//! otherwise [`Cgroups::detect`] answers `None` and process groups, the parent-death signal and
//! the guard process remain the mechanism. Each tree's cgroup is killed with `cgroup.kill`
//! (Linux 5.14), or by signalling every pid it lists on older kernels.

use std::io;
use std::path::{Path, PathBuf};

/// The daemon's own cgroup subtree, where every tree it starts gets a cgroup.
#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
}

/// The cgroup2 mount point, from mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(point)))
    })
}

/// The v2 path of a process, from `/proc/PID/cgroup` text (`0::/path`).
pub fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

impl Cgroups {
    /// Creates the daemon's subtree if the system has cgroup v2 and the daemon may write there.
    /// `Err` says why not (for one log line); callers fall back to process groups.
    pub fn detect() -> Result<Cgroups, String> {
        if !cfg!(target_os = "linux") {
            return Err("cgroups exist on Linux only".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own_cgroup(&own).ok_or("this process has no cgroup v2 path")?;
        let parent = mount.join(own.trim_start_matches('/'));
        let base = parent.join(format!("majordomo-{}", std::process::id()));
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create {} ({e}); run as root or in a delegated cgroup",
                    base.display()
                ));
            }
        }
        // Moving a process in needs write access to cgroup.procs.
        if std::fs::OpenOptions::new()
            .write(true)
            .open(base.join("cgroup.procs"))
            .is_err()
        {
            let _ = std::fs::remove_dir(&base);
            return Err(format!("cannot write {}/cgroup.procs", base.display()));
        }
        Ok(Cgroups { base })
    }

    /// The daemon's subtree (`.../majordomo-<pid>`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Creates the cgroup `name` and opens its `cgroup.procs` for a child to move itself in
    /// before `exec` ([`crate::process::SpawnOpts::cgroup_fd`]).
    pub fn create(&self, name: &str) -> io::Result<(PathBuf, std::fs::File)> {
        let dir = self.base.join(name);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok((dir, procs))
    }
}

/// Whether a cgroup has no process left.
pub fn is_empty(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => s.trim().is_empty(),
        Err(_) => true,
    }
}

/// Kills every process in a cgroup (and its descendants): `cgroup.kill`, or SIGKILL to each
/// listed pid where the kernel has no `cgroup.kill`.
pub fn kill(dir: &Path) {
    let done = std::fs::write(dir.join("cgroup.kill"), b"1").is_ok();
    #[cfg(unix)]
    if !done {
        kill_each(dir);
    }
    #[cfg(not(unix))]
    let _ = done;
}

/// SIGKILL to each pid listed in the cgroup, a few rounds (for kernels without `cgroup.kill`).
#[cfg(unix)]
fn kill_each(dir: &Path) {
    for _ in 0..10 {
        let Ok(list) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let pids: Vec<i32> = list.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Removes an empty cgroup (and empty children); kills what is left first.
pub fn remove(dir: &Path) {
    if !is_empty(dir) {
        kill(dir);
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    // The kernel empties a cgroup asynchronously after a kill: retry briefly.
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_and_own_path() {
        let mi = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let mi = "41 31 0:38 / /sys/fs/my\\040cg rw shared:9 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(mi), Some(PathBuf::from("/sys/fs/my cg")));
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(
            own_cgroup("1:cpu:/\n0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
    }
}
