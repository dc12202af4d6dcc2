//! The collector: one long-lived value that turns the machine's state into a [`Snapshot`].
//!
//! On Linux it reads `/proc` and `statvfs` directly, reusing its buffers, which costs a fraction
//! of a general-purpose library's full refresh; elsewhere it uses `sysinfo`. Rates (CPU %, bytes
//! per second) are computed against the previous cycle, so the first cycle reports none of them.

use std::collections::BTreeMap;

pub use majordomo_proto::monitor::Port;

use crate::metrics::Proc;

/// What the collector needs to know beyond the machine: the supervised programs' PIDs.
#[derive(Debug, Default, Clone)]
pub struct Programs {
    /// Program name → PID while it runs.
    pub pids: BTreeMap<String, u32>,
}

/// A mounted file system the disk metrics report on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mount {
    pub path: String,
    pub device: String,
    pub fstype: String,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keeps the `n` largest by `key`, largest first.
fn top_n(procs: &[Proc], n: usize, key: impl Fn(&Proc) -> f64) -> Vec<Proc> {
    let mut v: Vec<&Proc> = procs.iter().collect();
    v.sort_by(|a, b| key(b).total_cmp(&key(a)));
    v.into_iter().take(n).cloned().collect()
}

#[cfg(target_os = "linux")]
pub use linux::{Collector, listening_ports, mounts};
#[cfg(not(target_os = "linux"))]
pub use other::{Collector, listening_ports, mounts};

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    use majordomo_platform::process::parse_stat;

    use super::{Mount, Port, Programs, top_n, unix_now};
    use crate::metrics::{Proc, Snapshot, pct};

    /// Linux exposes CPU times in USER_HZ, which is 100 on every architecture it supports.
    const USER_HZ: f64 = 100.0;

    #[derive(Clone, Copy, Default)]
    struct CpuTimes {
        busy: u64,
        iowait: u64,
        total: u64,
    }

    pub struct Collector {
        buf: String,
        small: String,
        page: u64,
        prev_at: Option<Instant>,
        prev_cpu: Vec<CpuTimes>,
        prev_disk: HashMap<(u64, u64), (u64, u64)>,
        prev_net: HashMap<Box<str>, (u64, u64)>,
        prev_procs: HashMap<u32, u64>,
        next_procs: HashMap<u32, u64>,
        procs: Vec<Proc>,
        prev_self: u64,
        prev_prog: HashMap<u32, u64>,
        top: usize,
    }

    fn read_into(path: &str, buf: &mut String) -> bool {
        buf.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_string(buf))
            .is_ok()
    }

    fn page_size() -> u64 {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map(|p| p as u64)
            .unwrap_or(4096)
    }

    /// Real file systems, not pseudo ones (proc, tmpfs, cgroup, squashfs images, ...).
    fn is_real_fs(fstype: &str) -> bool {
        matches!(
            fstype,
            "ext2"
                | "ext3"
                | "ext4"
                | "xfs"
                | "btrfs"
                | "zfs"
                | "vfat"
                | "exfat"
                | "ntfs"
                | "ntfs3"
                | "fuseblk"
                | "f2fs"
                | "jfs"
                | "reiserfs"
                | "nfs"
                | "nfs4"
                | "cifs"
                | "smb3"
                | "overlay"
                | "bcachefs"
                | "9p"
                | "virtiofs"
        )
    }

    /// Mounted real file systems, one per device (bind mounts of the same device are skipped;
    /// the shortest mount path wins), from `/proc/self/mounts`.
    pub fn mounts() -> Vec<Mount> {
        let mut buf = String::new();
        if !read_into("/proc/self/mounts", &mut buf) {
            return Vec::new();
        }
        parse_mounts(&buf)
    }

    pub(crate) fn parse_mounts(text: &str) -> Vec<Mount> {
        let mut by_dev: Vec<Mount> = Vec::new();
        for line in text.lines() {
            let mut f = line.split(' ');
            let (Some(dev), Some(path), Some(fstype)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !is_real_fs(fstype) {
                continue;
            }
            let path = unescape(path);
            match by_dev.iter_mut().find(|m| m.device == dev) {
                Some(m) if path.len() < m.path.len() => m.path = path,
                Some(_) => {}
                None => by_dev.push(Mount {
                    path,
                    device: dev.to_string(),
                    fstype: fstype.to_string(),
                }),
            }
        }
        by_dev.sort_by(|a, b| a.path.cmp(&b.path));
        by_dev
    }

    /// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo` (octal).
    fn unescape(s: &str) -> String {
        if !s.contains('\\') {
            return s.to_string();
        }
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 4 <= b.len()
                && let Some(n) = std::str::from_utf8(&b[i + 1..i + 4])
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(n);
                i += 4;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn dev_major_minor(dev: u64) -> (u64, u64) {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        (major, minor)
    }

    impl Collector {
        /// `top`: how many processes the top-by-CPU and top-by-memory lists keep (0: none,
        /// which also skips reading every process's stat file).
        pub fn new(top: usize) -> Self {
            Self {
                buf: String::with_capacity(8192),
                small: String::with_capacity(1024),
                page: page_size(),
                prev_at: None,
                prev_cpu: Vec::new(),
                prev_disk: HashMap::new(),
                prev_net: HashMap::new(),
                prev_procs: HashMap::new(),
                next_procs: HashMap::new(),
                procs: Vec::new(),
                prev_self: 0,
                prev_prog: HashMap::new(),
                top,
            }
        }

        /// One cycle: fills `out` (cleared first).
        pub fn collect(&mut self, programs: &Programs, out: &mut Snapshot) {
            out.samples.clear();
            out.top_cpu.clear();
            out.top_mem.clear();
            out.at = unix_now();
            let now = Instant::now();
            let dt = self
                .prev_at
                .map(|p| now.duration_since(p).as_secs_f64())
                .filter(|d| *d > 0.0);
            self.cpu(out);
            self.load(out);
            self.memory(out);
            self.disks(out, dt);
            self.net(out, dt);
            self.processes(out, dt);
            self.own(out, dt);
            self.programs(programs, out, dt);
            self.prev_at = Some(now);
        }

        fn cpu(&mut self, out: &mut Snapshot) {
            if !read_into("/proc/stat", &mut self.buf) {
                return;
            }
            let mut times = Vec::with_capacity(self.prev_cpu.len().max(2));
            for line in self.buf.lines() {
                if !line.starts_with("cpu") {
                    break;
                }
                let mut it = line.split_ascii_whitespace();
                it.next();
                let v: Vec<u64> = it.take(8).filter_map(|x| x.parse().ok()).collect();
                if v.len() < 5 {
                    continue;
                }
                // user nice system idle iowait irq softirq steal
                let idle = v[3];
                let iowait = v[4];
                let total: u64 = v.iter().sum();
                times.push(CpuTimes {
                    busy: total - idle - iowait,
                    iowait,
                    total,
                });
            }
            if self.prev_cpu.len() == times.len() {
                for (i, (now, prev)) in times.iter().zip(&self.prev_cpu).enumerate() {
                    let total = now.total.saturating_sub(prev.total) as f64;
                    let busy = pct(now.busy.saturating_sub(prev.busy) as f64, total);
                    if i == 0 {
                        out.push("cpu.used_pct", None, busy);
                        out.push(
                            "cpu.iowait_pct",
                            None,
                            pct(now.iowait.saturating_sub(prev.iowait) as f64, total),
                        );
                    } else {
                        let mut label = itoa_buf();
                        out.push("cpu.core_used_pct", Some(fmt_u(&mut label, i - 1)), busy);
                    }
                }
            }
            self.prev_cpu = times;
        }

        fn load(&mut self, out: &mut Snapshot) {
            if read_into("/proc/loadavg", &mut self.small) {
                let mut it = self.small.split_ascii_whitespace();
                for name in ["load.1m", "load.5m", "load.15m"] {
                    if let Some(v) = it.next().and_then(|x| x.parse().ok()) {
                        out.push(name, None, v);
                    }
                }
            }
            if read_into("/proc/uptime", &mut self.small)
                && let Some(v) = self
                    .small
                    .split_ascii_whitespace()
                    .next()
                    .and_then(|x| x.parse::<f64>().ok())
            {
                out.push("uptime.seconds", None, v.floor());
            }
        }

        fn memory(&mut self, out: &mut Snapshot) {
            if !read_into("/proc/meminfo", &mut self.buf) {
                return;
            }
            let (mut total, mut avail, mut free, mut swap_total, mut swap_free) =
                (None, None, 0u64, 0u64, 0u64);
            for line in self.buf.lines() {
                let Some((k, rest)) = line.split_once(':') else {
                    continue;
                };
                let kb = || {
                    rest.split_ascii_whitespace()
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0)
                        * 1024
                };
                match k {
                    "MemTotal" => total = Some(kb()),
                    "MemAvailable" => avail = Some(kb()),
                    "MemFree" => free = kb(),
                    "SwapTotal" => swap_total = kb(),
                    "SwapFree" => swap_free = kb(),
                    _ => {}
                }
            }
            if let Some(total) = total {
                let avail = avail.unwrap_or(free);
                let used = total.saturating_sub(avail);
                out.push("memory.total_bytes", None, total as f64);
                out.push("memory.used_bytes", None, used as f64);
                out.push("memory.available_bytes", None, avail as f64);
                out.push("memory.used_pct", None, pct(used as f64, total as f64));
            }
            let swap_used = swap_total.saturating_sub(swap_free);
            out.push("swap.total_bytes", None, swap_total as f64);
            out.push("swap.used_bytes", None, swap_used as f64);
            out.push(
                "swap.used_pct",
                None,
                pct(swap_used as f64, swap_total as f64),
            );
        }

        fn disks(&mut self, out: &mut Snapshot, dt: Option<f64>) {
            if !read_into("/proc/self/mounts", &mut self.buf) {
                return;
            }
            let mounts = parse_mounts(&self.buf);
            // Device numbers → (sectors read, sectors written).
            let mut io: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
            if read_into("/proc/diskstats", &mut self.buf) {
                for line in self.buf.lines() {
                    let f: Vec<&str> = line.split_ascii_whitespace().collect();
                    if f.len() < 10 {
                        continue;
                    }
                    if let (Ok(maj), Ok(min), Ok(r), Ok(w)) = (
                        f[0].parse::<u64>(),
                        f[1].parse::<u64>(),
                        f[5].parse::<u64>(),
                        f[9].parse::<u64>(),
                    ) {
                        io.insert((maj, min), (r, w));
                    }
                }
            }
            for m in &mounts {
                let Ok(st) = nix::sys::statvfs::statvfs(m.path.as_str()) else {
                    continue;
                };
                let frag = st.fragment_size() as f64;
                let total = st.blocks() as f64 * frag;
                if total <= 0.0 {
                    continue;
                }
                let free_all = st.blocks_free() as f64 * frag;
                let avail = st.blocks_available() as f64 * frag;
                let used = total - free_all;
                let label = Some(m.path.as_str());
                out.push("disk.total_bytes", label, total);
                out.push("disk.used_bytes", label, used);
                out.push("disk.free_bytes", label, avail);
                // As df computes it: used / (used + available to users).
                out.push("disk.used_pct", label, pct(used, used + avail));
                let dev = std::fs::metadata(&m.path)
                    .map(|md| dev_major_minor(md.dev()))
                    .ok();
                if let Some(dev) = dev
                    && let Some(&(r, w)) = io.get(&dev)
                {
                    if let (Some(dt), Some(&(pr, pw))) = (dt, self.prev_disk.get(&dev)) {
                        out.push(
                            "disk.read_bytes_per_s",
                            label,
                            r.saturating_sub(pr) as f64 * 512.0 / dt,
                        );
                        out.push(
                            "disk.write_bytes_per_s",
                            label,
                            w.saturating_sub(pw) as f64 * 512.0 / dt,
                        );
                    }
                    self.prev_disk.insert(dev, (r, w));
                }
            }
        }

        fn net(&mut self, out: &mut Snapshot, dt: Option<f64>) {
            if !read_into("/proc/net/dev", &mut self.buf) {
                return;
            }
            for line in self.buf.lines().skip(2) {
                let Some((iface, rest)) = line.split_once(':') else {
                    continue;
                };
                let iface = iface.trim();
                if iface == "lo" {
                    continue;
                }
                let f: Vec<u64> = rest
                    .split_ascii_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if f.len() < 16 {
                    continue;
                }
                let (rx, rx_err, rx_drop, tx, tx_err) = (f[0], f[2], f[3], f[8], f[10]);
                let label = Some(iface);
                if let (Some(dt), Some(&(prx, ptx))) = (dt, self.prev_net.get(iface)) {
                    out.push(
                        "net.rx_bytes_per_s",
                        label,
                        rx.saturating_sub(prx) as f64 / dt,
                    );
                    out.push(
                        "net.tx_bytes_per_s",
                        label,
                        tx.saturating_sub(ptx) as f64 / dt,
                    );
                }
                out.push("net.rx_errors", label, rx_err as f64);
                out.push("net.tx_errors", label, tx_err as f64);
                out.push("net.rx_dropped", label, rx_drop as f64);
                match self.prev_net.get_mut(iface) {
                    Some(v) => *v = (rx, tx),
                    None => {
                        self.prev_net.insert(iface.into(), (rx, tx));
                    }
                }
            }
        }

        fn processes(&mut self, out: &mut Snapshot, dt: Option<f64>) {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return;
            };
            let mut count = 0u64;
            self.procs.clear();
            self.next_procs.clear();
            let mut path = String::with_capacity(32);
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                count += 1;
                if self.top == 0 {
                    continue;
                }
                path.clear();
                path.push_str("/proc/");
                path.push_str(name.to_str().unwrap_or_default());
                path.push_str("/stat");
                if !read_into(&path, &mut self.small) {
                    continue;
                }
                let Some(stat) = parse_stat(&self.small) else {
                    continue;
                };
                let (comm, ticks, rss) = (stat.comm, stat.cpu_ticks, stat.rss_pages);
                let cpu = match (dt, self.prev_procs.get(&pid)) {
                    (Some(dt), Some(prev)) => {
                        ticks.saturating_sub(*prev) as f64 / USER_HZ / dt * 100.0
                    }
                    _ => 0.0,
                };
                self.next_procs.insert(pid, ticks);
                self.procs.push(Proc {
                    pid,
                    name: comm.to_string(),
                    cpu_pct: (cpu * 10.0).round() / 10.0,
                    rss_bytes: rss * self.page,
                });
            }
            std::mem::swap(&mut self.prev_procs, &mut self.next_procs);
            out.push("processes.count", None, count as f64);
            if self.top > 0 {
                out.top_cpu = top_n(&self.procs, self.top, |p| p.cpu_pct);
                out.top_mem = top_n(&self.procs, self.top, |p| p.rss_bytes as f64);
            }
        }

        fn own(&mut self, out: &mut Snapshot, dt: Option<f64>) {
            if read_into("/proc/self/stat", &mut self.small)
                && let Some(stat) = parse_stat(&self.small)
            {
                let (ticks, threads, rss) = (stat.cpu_ticks, stat.threads, stat.rss_pages);
                if let Some(dt) = dt {
                    out.push(
                        "self.cpu_pct",
                        None,
                        ticks.saturating_sub(self.prev_self) as f64 / USER_HZ / dt * 100.0,
                    );
                }
                self.prev_self = ticks;
                out.push("self.threads", None, threads as f64);
                out.push("self.rss_bytes", None, (rss * self.page) as f64);
            }
            if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
                // Minus the descriptor read_dir itself holds open.
                let n = fds.count().saturating_sub(1);
                out.push("self.open_files", None, n as f64);
            }
        }

        fn programs(&mut self, programs: &Programs, out: &mut Snapshot, dt: Option<f64>) {
            let mut seen = HashMap::with_capacity(programs.pids.len());
            for (name, pid) in &programs.pids {
                let path = format!("/proc/{pid}/stat");
                if !read_into(&path, &mut self.small) {
                    continue;
                }
                let Some(stat) = parse_stat(&self.small) else {
                    continue;
                };
                let (ticks, rss) = (stat.cpu_ticks, stat.rss_pages);
                if let (Some(dt), Some(prev)) = (dt, self.prev_prog.get(pid)) {
                    out.push(
                        "program.cpu_pct",
                        Some(name),
                        ticks.saturating_sub(*prev) as f64 / USER_HZ / dt * 100.0,
                    );
                }
                out.push("program.rss_bytes", Some(name), (rss * self.page) as f64);
                seen.insert(*pid, ticks);
            }
            self.prev_prog = seen;
        }
    }

    fn itoa_buf() -> String {
        String::with_capacity(4)
    }

    fn fmt_u(buf: &mut String, n: usize) -> &str {
        use std::fmt::Write;
        buf.clear();
        let _ = write!(buf, "{n}");
        buf.as_str()
    }

    /// Listening TCP sockets and bound UDP sockets, with the owning process when this user may
    /// see it. Costly (it walks every process's descriptors), so it runs on demand only.
    pub fn listening_ports() -> Vec<Port> {
        let mut inodes: HashMap<u64, (&'static str, String, u16)> = HashMap::new();
        let mut buf = String::new();
        for (file, proto) in [
            ("/proc/net/tcp", "tcp"),
            ("/proc/net/tcp6", "tcp6"),
            ("/proc/net/udp", "udp"),
            ("/proc/net/udp6", "udp6"),
        ] {
            if !read_into(file, &mut buf) {
                continue;
            }
            for line in buf.lines().skip(1) {
                let f: Vec<&str> = line.split_ascii_whitespace().collect();
                if f.len() < 10 {
                    continue;
                }
                let listening = if proto.starts_with("tcp") {
                    f[3] == "0A"
                } else {
                    f[3] == "07"
                };
                if !listening {
                    continue;
                }
                let Some((addr, port)) = f[1].split_once(':') else {
                    continue;
                };
                let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), f[9].parse::<u64>())
                else {
                    continue;
                };
                inodes.insert(inode, (proto, hex_addr(addr), port));
            }
        }
        let mut owners: HashMap<u64, (u32, String)> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    let Ok(target) = std::fs::read_link(fd.path()) else {
                        continue;
                    };
                    let t = target.to_string_lossy();
                    if let Some(inode) = t
                        .strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .and_then(|s| s.parse::<u64>().ok())
                        && inodes.contains_key(&inode)
                    {
                        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .map(|s| s.trim().to_string())
                            .unwrap_or_default();
                        owners.insert(inode, (pid, name));
                    }
                }
            }
        }
        let mut ports: Vec<Port> = inodes
            .into_iter()
            .map(|(inode, (proto, addr, port))| {
                let owner = owners.get(&inode);
                Port {
                    proto: proto.to_string(),
                    addr,
                    port,
                    pid: owner.map(|o| o.0),
                    process: owner.map(|o| o.1.clone()),
                }
            })
            .collect();
        ports.sort_by(|a, b| (a.port, &a.proto).cmp(&(b.port, &b.proto)));
        ports.dedup_by(|a, b| a.port == b.port && a.proto == b.proto && a.addr == b.addr);
        ports
    }

    /// `0100007F` → `127.0.0.1`; IPv6 as 32 hex digits in 4-byte little-endian words.
    fn hex_addr(h: &str) -> String {
        let bytes: Vec<u8> = (0..h.len() / 2)
            .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        match bytes.len() {
            4 => std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]).to_string(),
            16 => {
                let mut o = [0u8; 16];
                for w in 0..4 {
                    for b in 0..4 {
                        o[w * 4 + b] = bytes[w * 4 + 3 - b];
                    }
                }
                std::net::Ipv6Addr::from(o).to_string()
            }
            _ => h.to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn mounts_skip_pseudo_fs_and_bind_duplicates() {
            let text = "proc /proc proc rw 0 0\n/dev/sda1 /etc/hosts ext4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/sdb1 /mnt/my\\040disk xfs rw 0 0\n";
            let m = parse_mounts(text);
            let paths: Vec<_> = m.iter().map(|m| m.path.as_str()).collect();
            assert_eq!(paths, vec!["/", "/mnt/my disk"]);
        }

        #[test]
        fn stat_lines_with_spaces_in_comm() {
            let line = "123 (my (odd) prog) S 1 1 1 0 -1 0 0 0 0 0 50 25 0 0 20 0 7 0 100 1000 300 18446744073709551615";
            let s = parse_stat(line).unwrap();
            assert_eq!(s.comm, "my (odd) prog");
            assert_eq!((s.cpu_ticks, s.threads, s.rss_pages), (75, 7, 300));
        }

        proptest::proptest! {
            #[test]
            fn proc_parsers_never_panic(s in "\\PC{0,200}") {
                let _ = parse_mounts(&s);
                let _ = parse_stat(&s);
                let _ = hex_addr(&s);
                let _ = unescape(&s);
            }
        }

        #[test]
        fn addresses_decode() {
            assert_eq!(hex_addr("0100007F"), "127.0.0.1");
            assert_eq!(hex_addr("00000000000000000000000001000000"), "::1");
        }

        #[test]
        fn a_cycle_reports_the_core_metrics() {
            let mut c = Collector::new(3);
            let mut s = Snapshot::default();
            c.collect(&Programs::default(), &mut s);
            std::thread::sleep(std::time::Duration::from_millis(50));
            c.collect(&Programs::default(), &mut s);
            for name in [
                "cpu.used_pct",
                "memory.used_pct",
                "load.1m",
                "processes.count",
                "self.rss_bytes",
                "uptime.seconds",
            ] {
                assert!(s.samples.iter().any(|x| x.name == name), "{name} missing");
            }
            assert!(!s.top_mem.is_empty());
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::collections::HashMap;

    use sysinfo::{
        Disks, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System,
    };

    use super::{Mount, Port, Programs, top_n, unix_now};
    use crate::metrics::{Proc, Snapshot, pct};

    /// Each part is `None` when the system refused it; the others still report.
    pub struct Collector {
        sys: Option<System>,
        disks: Option<Disks>,
        nets: Option<Networks>,
        top: usize,
        prev_at: Option<std::time::Instant>,
    }

    pub fn mounts() -> Vec<Mount> {
        Disks::new_with_refreshed_list()
            .map(|disks| {
                disks
                    .iter()
                    .map(|d| Mount {
                        path: d.mount_point().to_string_lossy().into_owned(),
                        device: d.name().to_string_lossy().into_owned(),
                        fstype: d.file_system().to_string_lossy().into_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Not available on this system: the report says so by an empty list.
    pub fn listening_ports() -> Vec<Port> {
        Vec::new()
    }

    impl Collector {
        pub fn new(top: usize) -> Self {
            Self {
                sys: System::new_with_specifics(RefreshKind::nothing()).ok(),
                disks: Disks::new_with_refreshed_list().ok(),
                nets: Networks::new_with_refreshed_list().ok(),
                top,
                prev_at: None,
            }
        }

        pub fn collect(&mut self, programs: &Programs, out: &mut Snapshot) {
            out.samples.clear();
            out.top_cpu.clear();
            out.top_mem.clear();
            out.at = unix_now();
            let now = std::time::Instant::now();
            let dt = self
                .prev_at
                .map(|p| now.duration_since(p).as_secs_f64())
                .filter(|d| *d > 0.0);
            if let Ok(l) = System::load_average() {
                out.push("load.1m", None, l.one);
                out.push("load.5m", None, l.five);
                out.push("load.15m", None, l.fifteen);
            }
            if let Ok(up) = System::uptime() {
                out.push("uptime.seconds", None, up as f64);
            }
            if let Some(disks) = self.disks.as_mut() {
                disks.refresh(true);
                for d in disks.iter() {
                    let mount = d.mount_point().to_string_lossy().into_owned();
                    let total = d.total_space() as f64;
                    if total <= 0.0 {
                        continue;
                    }
                    let avail = d.available_space() as f64;
                    let label = Some(mount.as_str());
                    out.push("disk.total_bytes", label, total);
                    out.push("disk.used_bytes", label, total - avail);
                    out.push("disk.free_bytes", label, avail);
                    out.push("disk.used_pct", label, pct(total - avail, total));
                    if let Some(dt) = dt {
                        let u = d.usage();
                        out.push("disk.read_bytes_per_s", label, u.read_bytes as f64 / dt);
                        out.push("disk.write_bytes_per_s", label, u.written_bytes as f64 / dt);
                    }
                }
            }
            if let Some(nets) = self.nets.as_mut() {
                nets.refresh(true);
                for (iface, n) in nets.iter() {
                    let iface = iface.to_string_lossy();
                    let label = Some(iface.as_ref());
                    if let Some(dt) = dt {
                        out.push("net.rx_bytes_per_s", label, n.received() as f64 / dt);
                        out.push("net.tx_bytes_per_s", label, n.transmitted() as f64 / dt);
                    }
                    out.push("net.rx_errors", label, n.total_errors_on_received() as f64);
                    out.push(
                        "net.tx_errors",
                        label,
                        n.total_errors_on_transmitted() as f64,
                    );
                }
            }
            let Some(sys) = self.sys.as_mut() else {
                self.prev_at = Some(now);
                return;
            };
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            if dt.is_some() {
                out.push("cpu.used_pct", None, sys.global_cpu_usage() as f64);
                for (i, c) in sys.cpus().iter().enumerate() {
                    out.push("cpu.core_used_pct", Some(&i.to_string()), c.usage() as f64);
                }
            }
            let total = sys.total_memory() as f64;
            let avail = sys.available_memory() as f64;
            out.push("memory.total_bytes", None, total);
            out.push("memory.used_bytes", None, total - avail);
            out.push("memory.available_bytes", None, avail);
            out.push("memory.used_pct", None, pct(total - avail, total));
            let st = sys.total_swap() as f64;
            let su = sys.used_swap() as f64;
            out.push("swap.total_bytes", None, st);
            out.push("swap.used_bytes", None, su);
            out.push("swap.used_pct", None, pct(su, st));
            sys.refresh_processes_specifics(
                ProcessesToUpdate::All,
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            let procs: Vec<Proc> = sys
                .processes()
                .iter()
                .map(|(pid, p)| Proc {
                    pid: pid.as_u32(),
                    name: p.name().to_string_lossy().into_owned(),
                    cpu_pct: p.cpu_usage() as f64,
                    rss_bytes: p.memory(),
                })
                .collect();
            out.push("processes.count", None, procs.len() as f64);
            if self.top > 0 {
                out.top_cpu = top_n(&procs, self.top, |p| p.cpu_pct);
                out.top_mem = top_n(&procs, self.top, |p| p.rss_bytes as f64);
            }
            let by_pid: HashMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
            if let Some(me) = by_pid.get(&std::process::id()) {
                if dt.is_some() {
                    out.push("self.cpu_pct", None, me.cpu_pct);
                }
                out.push("self.rss_bytes", None, me.rss_bytes as f64);
            }
            if let Some(p) = sys.process(Pid::from_u32(std::process::id()))
                && let Some(tasks) = p.tasks()
            {
                out.push("self.threads", None, tasks.len() as f64);
            }
            for (name, pid) in &programs.pids {
                if let Some(p) = by_pid.get(pid) {
                    if dt.is_some() {
                        out.push("program.cpu_pct", Some(name), p.cpu_pct);
                    }
                    out.push("program.rss_bytes", Some(name), p.rss_bytes as f64);
                }
            }
            self.prev_at = Some(now);
        }
    }
}
