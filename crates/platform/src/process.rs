//! Child processes as the supervisor needs them: each program in its own session / process
//! group (a job object on Windows), dying with the daemon, under its own user, signalled and
//! killed as a whole tree; plus the daemon's side (child subreaper, reaping adopted orphans)
//! and per-process resource readings.

pub use imp::*;

/// What a program runs as and with (resolved before the process is created).
#[derive(Debug, Clone, Default)]
pub struct SpawnOpts {
    /// (uid, gid, supplementary groups), Unix only.
    pub creds: Option<(u32, u32, Vec<u32>)>,
    /// File-creation mask, Unix only.
    pub umask: Option<u32>,
    /// A pipe (the guard's, Unix) to which the child writes `+PID\n` before it runs anything,
    /// so that its process group is known to the guard before it can have children.
    pub announce_fd: Option<i32>,
    /// An open `cgroup.procs` (Linux) the child writes `0` to before it runs anything, so that
    /// it and everything it starts live in that cgroup ([`crate::cgroup`]).
    pub cgroup_fd: Option<i32>,
}

/// One `/proc/PID/stat` line (Linux), the fields majordomo reads. The one parser of that
/// format: the supervisor's readings, orphan reaping and the monitor's collector all use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat<'a> {
    /// The command name (field 2), without its parentheses; it may hold spaces and `)`.
    pub comm: &'a str,
    /// Field 3: `R`, `S`, `Z`, ...
    pub state: char,
    /// Field 6: the session id.
    pub session: i32,
    /// Fields 14 + 15: user + system CPU time, in USER_HZ ticks (100 per second on Linux).
    pub cpu_ticks: u64,
    /// Field 20: the number of threads.
    pub threads: u64,
    /// Field 24: resident set size, in pages.
    pub rss_pages: u64,
}

/// Parses one `/proc/PID/stat` line. Pure (no I/O) and total: any text gives `Some` or `None`.
pub fn parse_stat(line: &str) -> Option<ProcStat<'_>> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?;
    // After the comm: field 3 (state) onwards.
    let mut it = line.get(close + 1..)?.split_ascii_whitespace();
    let state = it.next()?.chars().next()?;
    let session: i32 = it.nth(2)?.parse().ok()?; // field 6
    let utime: u64 = it.nth(7)?.parse().ok()?; // field 14
    let stime: u64 = it.next()?.parse().ok()?; // field 15
    let threads: u64 = it.nth(4)?.parse().ok()?; // field 20
    let rss_pages: u64 = it.nth(3)?.parse().ok()?; // field 24
    Some(ProcStat {
        comm,
        state,
        session,
        cpu_ticks: utime + stime,
        threads,
        rss_pages,
    })
}

#[cfg(not(target_os = "linux"))]
fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("{what} is not supported on this system"),
    )
}

#[cfg(unix)]
mod imp {
    use std::io;
    use std::os::unix::process::CommandExt;

    use nix::errno::Errno;
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Gid, Pid, Uid};

    use super::SpawnOpts;

    /// Prepares `cmd` so that the child starts a new session (its own process group, no
    /// controlling terminal), gets SIGKILL when the daemon dies (Linux), and switches to the
    /// configured umask and credentials before `exec`.
    pub fn prepare(cmd: &mut std::process::Command, opts: &SpawnOpts) {
        let parent = std::process::id() as i32;
        let umask = opts.umask;
        let announce = opts.announce_fd;
        let cgroup = opts.cgroup_fd;
        let creds = opts.creds.clone().map(|(uid, gid, groups)| {
            (
                Uid::from_raw(uid),
                Gid::from_raw(gid),
                groups.into_iter().map(Gid::from_raw).collect::<Vec<_>>(),
            )
        });
        let hook = move || -> io::Result<()> {
            nix::unistd::setsid()?;
            if let Some(fd) = cgroup {
                // SAFETY: write(2) of a static byte string on a descriptor the parent keeps open
                // for the whole spawn; async-signal-safe. Failing means no cgroup for this tree:
                // process groups still apply.
                let _ = unsafe { nix::libc::write(fd, b"0".as_ptr().cast(), 1) };
            }
            if let Some(fd) = announce {
                let mut buf = [0u8; 24];
                let n = announce_line(&mut buf, nix::unistd::getpid().as_raw());
                // SAFETY: write(2) on a descriptor the parent keeps open for the whole spawn
                // (the guard's pipe) from a stack buffer; async-signal-safe. A failure (guard
                // gone) is ignored: the parent-death signal still applies.
                let _ = unsafe { nix::libc::write(fd, buf.as_ptr().cast(), n) };
            }
            #[cfg(target_os = "linux")]
            {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The daemon may have died between fork and prctl: then we were re-parented.
                if nix::unistd::getppid().as_raw() != parent {
                    return Err(io::Error::other(
                        "the daemon exited while starting the program",
                    ));
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = parent;
            if let Some(mask) = umask {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask as _));
            }
            if let Some((uid, gid, groups)) = &creds {
                #[cfg(not(any(target_os = "macos", target_os = "ios")))]
                nix::unistd::setgroups(groups)?;
                #[cfg(any(target_os = "macos", target_os = "ios"))]
                let _ = groups;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        };
        // SAFETY: the hook runs in the forked child before exec. It only makes system calls that
        // are async-signal-safe (setsid, prctl, getppid, umask, setgroups, setgid, setuid), does
        // not allocate (everything it uses was built above, before the fork) and takes no lock.
        unsafe {
            cmd.pre_exec(hook);
        }
    }

    /// Formats `+PID\n` into `buf` without allocating (it runs between fork and exec).
    fn announce_line(buf: &mut [u8; 24], pid: i32) -> usize {
        let mut digits = [0u8; 12];
        let mut v = pid.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (v % 10) as u8;
            len += 1;
            v /= 10;
            if v == 0 || len == digits.len() {
                break;
            }
        }
        buf[0] = b'+';
        for i in 0..len {
            buf[1 + i] = digits[len - 1 - i];
        }
        buf[1 + len] = b'\n';
        len + 2
    }

    #[cfg(test)]
    #[test]
    fn announce_lines_are_plus_pid_newline() {
        let mut buf = [0u8; 24];
        for pid in [1, 9, 10, 4194304, i32::MAX] {
            let n = announce_line(&mut buf, pid);
            assert_eq!(&buf[..n], format!("+{pid}\n").as_bytes());
        }
    }

    /// The process group of a started program (its pid, since it leads a new session).
    #[derive(Debug)]
    pub struct Group {
        pgid: i32,
    }

    impl Group {
        /// Takes over a freshly spawned child (nothing to do on Unix: `prepare` made it a group).
        pub fn adopt(child: &tokio::process::Child) -> io::Result<Group> {
            let pid = child
                .id()
                .ok_or_else(|| io::Error::other("the process exited before it was adopted"))?;
            Ok(Group { pgid: pid as i32 })
        }

        pub fn id(&self) -> i32 {
            self.pgid
        }

        /// Sends `sig` (a name from `supervisor::config::SIGNALS`) to every process of the group.
        pub fn signal(&self, sig: &str) -> io::Result<()> {
            let s = parse(sig)?;
            match killpg(Pid::from_raw(self.pgid), s) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }

        /// Kills every process of the group at once.
        pub fn kill(&self) -> io::Result<()> {
            self.signal("KILL")
        }

        /// Whether no process of the group is left.
        pub fn is_empty(&self) -> bool {
            matches!(killpg(Pid::from_raw(self.pgid), None), Err(Errno::ESRCH))
        }
    }

    fn parse(sig: &str) -> io::Result<Signal> {
        format!("SIG{sig}").parse::<Signal>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{sig:?} is not a signal on this system"),
            )
        })
    }

    /// Sends `sig` to one process.
    pub fn signal_pid(pid: u32, sig: &str) -> io::Result<()> {
        kill(Pid::from_raw(pid as i32), parse(sig)?).map_err(io::Error::from)
    }

    /// Makes the daemon the reaper of orphaned descendants (Linux), so that a program's
    /// grandchildren are re-parented to it, not to init, and stay within its reach.
    pub fn set_child_subreaper() -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(super::unsupported("a child subreaper"))
        }
    }

    /// Reaps exited children of the daemon that it did not start itself (adopted orphans) whose
    /// session is in `sessions`. Children it started are left to their owner (tokio). Linux.
    pub fn reap_orphans(sessions: &std::collections::HashSet<i32>) -> usize {
        #[cfg(target_os = "linux")]
        {
            let mut reaped = 0;
            let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
                return 0;
            };
            for task in tasks.flatten() {
                let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
                    continue;
                };
                for pid in list
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let Some((state, sid)) = stat_state_sid(pid) else {
                        continue;
                    };
                    if state == 'Z' && pid != sid && sessions.contains(&sid) {
                        let flags = nix::sys::wait::WaitPidFlag::WNOHANG;
                        if nix::sys::wait::waitpid(Pid::from_raw(pid), Some(flags)).is_ok() {
                            reaped += 1;
                        }
                    }
                }
            }
            reaped
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = sessions;
            0
        }
    }

    #[cfg(target_os = "linux")]
    fn stat_state_sid(pid: i32) -> Option<(char, i32)> {
        let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let s = super::parse_stat(&line)?;
        Some((s.state, s.session))
    }

    /// Resident memory of one process, in bytes (Linux; `None` elsewhere).
    pub fn rss_bytes(pid: u32) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = pid;
            None
        }
    }

    /// CPU time (user + system) of one process, in seconds (Linux; `None` elsewhere).
    pub fn cpu_seconds(pid: u32) -> Option<f64> {
        #[cfg(target_os = "linux")]
        {
            let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // In USER_HZ ticks, which the kernel ABI fixes at 100 per second.
            Some(super::parse_stat(&line)?.cpu_ticks as f64 / 100.0)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = pid;
            None
        }
    }

    /// Resolves `user` (and `group`, else the user's primary group) to ids and supplementary
    /// groups. Names or numeric ids.
    pub fn lookup_creds(user: &str, group: Option<&str>) -> Result<(u32, u32, Vec<u32>), String> {
        use nix::unistd::{Group as G, User};
        let u = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("unknown user {user:?}"))?;
        let gid = match group {
            None => u.gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => Gid::from_raw(gid),
                Err(_) => {
                    G::from_name(g)
                        .map_err(|e| format!("cannot look up group {g:?}: {e}"))?
                        .ok_or_else(|| format!("unknown group {g:?}"))?
                        .gid
                }
            },
        };
        if !Uid::effective().is_root() && Uid::effective() != u.uid {
            return Err(format!(
                "cannot run as user {user:?}: the daemon runs as uid {} and is not root",
                Uid::effective()
            ));
        }
        #[cfg(not(any(target_os = "macos", target_os = "ios")))]
        let groups = {
            let name = std::ffi::CString::new(u.name.clone())
                .map_err(|_| format!("user name {user:?} contains a NUL byte"))?;
            nix::unistd::getgrouplist(&name, gid)
                .map_err(|e| format!("cannot list the groups of {user:?}: {e}"))?
                .into_iter()
                .map(|g| g.as_raw())
                .collect()
        };
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        let groups = Vec::new();
        Ok((u.uid.as_raw(), gid.as_raw(), groups))
    }
}

#[cfg(windows)]
mod imp {
    use std::io;
    use std::os::windows::process::CommandExt;

    use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, HANDLE};
    use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
    };
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JobObjectBasicAccountingInformation, JobObjectExtendedLimitInformation,
        QueryInformationJobObject, SetInformationJobObject, TerminateJobObject,
    };
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::Threading::{
        CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED, GetProcessTimes, OpenProcess, OpenThread,
        PROCESS_QUERY_LIMITED_INFORMATION, ResumeThread, THREAD_SUSPEND_RESUME,
    };

    use super::SpawnOpts;

    /// Creates the child suspended, in a new console process group; [`Group::adopt`] puts it in
    /// a kill-on-close job object and only then lets it run.
    pub fn prepare(cmd: &mut std::process::Command, _opts: &SpawnOpts) {
        cmd.creation_flags(CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP);
    }

    /// A program's job object: every process it starts belongs to it, and closing the handle
    /// (the daemon stopping or dying) kills them all.
    #[derive(Debug)]
    pub struct Group {
        job: isize,
        pid: u32,
    }

    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: `job` is a handle this struct owns and closes exactly once.
            unsafe { CloseHandle(self.job as HANDLE) };
        }
    }

    impl Group {
        pub fn adopt(child: &tokio::process::Child) -> io::Result<Group> {
            let pid = child
                .id()
                .ok_or_else(|| io::Error::other("the process exited before it was adopted"))?;
            let process = child
                .raw_handle()
                .ok_or_else(|| io::Error::other("no process handle"))?;
            // SAFETY: plain Win32 calls with valid arguments; the job handle is owned by the
            // returned `Group` (closed in Drop); `info` lives across the call.
            let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if job.is_null() {
                return Err(io::Error::last_os_error());
            }
            let group = Group {
                job: job as isize,
                pid,
            };
            // SAFETY: zeroed is a valid JOBOBJECT_EXTENDED_LIMIT_INFORMATION (plain data).
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            // SAFETY: `job` is valid; `info` is the struct this information class expects.
            let ok = unsafe {
                SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    &info as *const _ as *const _,
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both handles are valid: the job above, the child's process handle.
            if unsafe { AssignProcessToJobObject(job, process as HANDLE) } == 0 {
                return Err(io::Error::last_os_error());
            }
            resume_threads(pid)?;
            Ok(group)
        }

        pub fn id(&self) -> i32 {
            self.pid as i32
        }

        /// Windows has no signals: KILL terminates the job; anything else sends CTRL_BREAK to
        /// the program's console process group (which only works when it shares the daemon's
        /// console; otherwise the stop timeout ends in the job being terminated).
        pub fn signal(&self, sig: &str) -> io::Result<()> {
            if sig == "KILL" {
                return self.kill();
            }
            // SAFETY: plain Win32 call with a process group id.
            if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.pid) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        pub fn kill(&self) -> io::Result<()> {
            // SAFETY: `job` is a valid handle owned by self.
            if unsafe { TerminateJobObject(self.job as HANDLE, 1) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        pub fn is_empty(&self) -> bool {
            // SAFETY: zeroed is valid plain data; `job` is valid; the buffer has the right size.
            let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
            let ok = unsafe {
                QueryInformationJobObject(
                    self.job as HANDLE,
                    JobObjectBasicAccountingInformation,
                    &mut info as *mut _ as *mut _,
                    std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                    std::ptr::null_mut(),
                )
            };
            ok != 0 && info.ActiveProcesses == 0
        }
    }

    fn resume_threads(pid: u32) -> io::Result<()> {
        // SAFETY: toolhelp snapshot of all threads; closed below; `entry` is a valid out buffer
        // with dwSize set as the API requires; thread handles are closed after use.
        unsafe {
            let snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
            if snap as isize == -1 {
                return Err(io::Error::last_os_error());
            }
            let mut entry: THREADENTRY32 = std::mem::zeroed();
            entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
            let mut resumed = 0;
            let mut more = Thread32First(snap, &mut entry) != 0;
            while more {
                if entry.th32OwnerProcessID == pid {
                    let t = OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID);
                    if !t.is_null() {
                        if ResumeThread(t) != u32::MAX {
                            resumed += 1;
                        }
                        CloseHandle(t);
                    }
                }
                more = Thread32Next(snap, &mut entry) != 0;
            }
            CloseHandle(snap);
            if resumed == 0 {
                return Err(io::Error::other(format!(
                    "could not resume the main thread of pid {pid}"
                )));
            }
        }
        Ok(())
    }

    pub fn signal_pid(pid: u32, sig: &str) -> io::Result<()> {
        if sig == "KILL" {
            // Without the job handle: open the process and terminate it.
            return Err(super::unsupported(
                "killing a process outside its job object",
            ));
        }
        // SAFETY: plain Win32 call with a process group id.
        if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn set_child_subreaper() -> io::Result<()> {
        Err(super::unsupported("a child subreaper"))
    }

    pub fn reap_orphans(_sessions: &std::collections::HashSet<i32>) -> usize {
        0
    }

    fn with_process<T>(pid: u32, f: impl FnOnce(HANDLE) -> Option<T>) -> Option<T> {
        // SAFETY: the handle is checked and closed after `f`.
        let h = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if h.is_null() {
            return None;
        }
        let out = f(h);
        // SAFETY: `h` is a valid handle opened above.
        unsafe { CloseHandle(h) };
        out
    }

    pub fn rss_bytes(pid: u32) -> Option<u64> {
        with_process(pid, |h| {
            // SAFETY: zeroed plain data; the struct size is passed as the API requires.
            let mut c: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
            c.cb = size;
            // SAFETY: valid handle and out buffer.
            (unsafe { K32GetProcessMemoryInfo(h, &mut c, size) } != 0)
                .then_some(c.WorkingSetSize as u64)
        })
    }

    pub fn cpu_seconds(pid: u32) -> Option<f64> {
        with_process(pid, |h| {
            let zero = FILETIME {
                dwLowDateTime: 0,
                dwHighDateTime: 0,
            };
            let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
            // SAFETY: valid handle and four valid out pointers.
            if unsafe { GetProcessTimes(h, &mut c, &mut e, &mut k, &mut u) } == 0 {
                return None;
            }
            let t = |f: FILETIME| (f.dwHighDateTime as u64) << 32 | f.dwLowDateTime as u64;
            Some((t(k) + t(u)) as f64 / 1e7)
        })
    }

    pub fn lookup_creds(user: &str, _group: Option<&str>) -> Result<(u32, u32, Vec<u32>), String> {
        Err(format!(
            "user = {user:?}: running a program as another user is not supported on Windows; install the service under that account instead"
        ))
    }
}

/// Keeps the daemon's own `MAJORDOMO_*` variables (`MAJORDOMO_CONTROL__TOKEN` and every other
/// config override, `MAJORDOMO_TOKEN`, ...) out of what `cmd` passes on to its child. Call it
/// right after creating the command, before setting the variables the child should get: every
/// program, probe, converter and notifier command goes through it.
pub fn scrub_daemon_env(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars_os() {
        if k.as_encoded_bytes().starts_with(b"MAJORDOMO_") {
            cmd.env_remove(k);
        }
    }
}

#[cfg(test)]
mod stat_tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_and_parentheses_in_comm() {
        let line = "123 (my (odd) prog) S 1 1 42 0 -1 0 0 0 0 0 50 25 0 0 20 0 7 0 100 1000 300 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!((s.state, s.session), ('S', 42));
        assert_eq!((s.cpu_ticks, s.threads, s.rss_pages), (75, 7, 300));
        assert_eq!(parse_stat("123 (x) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }
}
