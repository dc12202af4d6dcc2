//! The read-only system facts the QGA commands report, with qemu-ga's reply shapes. Linux reads
//! `/proc`, `/sys` and `/etc`; other systems answer "not supported" for what is not here yet.

use serde_json::{Map, Value, json};

use crate::qmp::QmpError;

type R = Result<Value, QmpError>;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `/etc/os-release` as key → value (quotes removed).
pub fn os_release(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'');
        m.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    m
}

pub fn osinfo() -> R {
    let mut out = Map::new();
    #[cfg(unix)]
    {
        let u = nix::sys::utsname::uname().map_err(|e| QmpError::generic(e.to_string()))?;
        out.insert(
            "kernel-release".into(),
            json!(u.release().to_string_lossy()),
        );
        out.insert(
            "kernel-version".into(),
            json!(u.version().to_string_lossy()),
        );
        out.insert("machine".into(), json!(u.machine().to_string_lossy()));
    }
    let text = std::env::var("QGA_OS_RELEASE")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .or_else(|| read("/etc/os-release"))
        .or_else(|| read("/usr/lib/os-release"))
        .unwrap_or_default();
    let rel = os_release(&text);
    for (k, key) in [
        ("ID", "id"),
        ("NAME", "name"),
        ("PRETTY_NAME", "pretty-name"),
        ("VERSION", "version"),
        ("VERSION_ID", "version-id"),
        ("VARIANT", "variant"),
        ("VARIANT_ID", "variant-id"),
    ] {
        if let Some(v) = rel.get(k) {
            out.insert(key.into(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

pub fn host_name() -> R {
    #[cfg(unix)]
    {
        let h = nix::unistd::gethostname().map_err(|e| QmpError::generic(e.to_string()))?;
        Ok(json!({"host-name": h.to_string_lossy()}))
    }
    #[cfg(not(unix))]
    {
        Ok(json!({"host-name": std::env::var("COMPUTERNAME").unwrap_or_default()}))
    }
}

pub fn time_ns() -> R {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!(d.as_nanos() as i64))
}

pub fn timezone() -> R {
    // The local offset and zone abbreviation, as qemu-ga gets them from localtime().
    #[cfg(unix)]
    {
        let out = std::process::Command::new("date").arg("+%z %Z").output();
        if let Ok(o) = out {
            let s = String::from_utf8_lossy(&o.stdout);
            let mut it = s.split_whitespace();
            if let Some(off) = it.next()
                && off.len() == 5
            {
                let sign = if off.starts_with('-') { -1 } else { 1 };
                let h: i64 = off[1..3].parse().unwrap_or(0);
                let m: i64 = off[3..5].parse().unwrap_or(0);
                let mut r = json!({"offset": sign * (h * 3600 + m * 60)});
                if let Some(z) = it.next() {
                    r["zone"] = json!(z);
                }
                return Ok(r);
            }
        }
    }
    Ok(json!({"zone": "UTC", "offset": 0}))
}

pub fn vcpus() -> R {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return Err(QmpError::unsupported("guest-get-vcpus"));
    };
    let mut ids: Vec<u64> = dir
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("cpu").and_then(|d| d.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    for id in ids {
        let online_file = format!("/sys/devices/system/cpu/cpu{id}/online");
        let (online, can_offline) = match read(&online_file) {
            Some(s) => (s.trim() == "1", true),
            None => (true, false),
        };
        out.push(json!({"logical-id": id, "online": online, "can-offline": can_offline}));
    }
    Ok(Value::Array(out))
}

/// `/proc/loadavg`.
pub fn load() -> R {
    let s = read("/proc/loadavg").ok_or_else(|| QmpError::unsupported("guest-get-load"))?;
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 3 {
        return Err(QmpError::generic("unreadable /proc/loadavg"));
    }
    Ok(json!({"load1": v[0], "load5": v[1], "load15": v[2]}))
}

/// `/proc/stat` cpuN lines, qemu-ga's GuestLinuxCpuStats (jiffies converted to ms like qemu-ga).
pub fn cpustats_from(text: &str, hz: u64) -> Value {
    let ms = |j: u64| j.saturating_mul(1000) / hz.max(1);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(n) = name.strip_prefix("cpu").and_then(|d| d.parse::<i64>().ok()) else {
            continue;
        };
        let f: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        if f.len() < 4 {
            continue;
        }
        let mut o = json!({"type": "linux", "cpu": n, "user": ms(f[0]), "nice": ms(f[1]), "system": ms(f[2]), "idle": ms(f[3])});
        for (i, k) in [
            (4, "iowait"),
            (5, "irq"),
            (6, "softirq"),
            (7, "steal"),
            (8, "guest"),
            (9, "guestnice"),
        ] {
            if let Some(v) = f.get(i) {
                o[k] = json!(ms(*v));
            }
        }
        out.push(o);
    }
    Value::Array(out)
}

pub fn cpustats() -> R {
    let s = read("/proc/stat").ok_or_else(|| QmpError::unsupported("guest-get-cpustats"))?;
    Ok(cpustats_from(&s, 100))
}

/// `/proc/diskstats` → GuestDiskStatsInfo.
pub fn diskstats_from(text: &str) -> Value {
    const KEYS: [&str; 17] = [
        "read-ios",
        "read-merges",
        "read-sectors",
        "read-ticks",
        "write-ios",
        "write-merges",
        "write-sectors",
        "write-ticks",
        "ios-pgr",
        "total-ticks",
        "weight-ticks",
        "discard-ios",
        "discard-merges",
        "discard-sectors",
        "discard-ticks",
        "flush-ios",
        "flush-ticks",
    ];
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        let (Ok(major), Ok(minor)) = (f[0].parse::<u64>(), f[1].parse::<u64>()) else {
            continue;
        };
        let mut stats = Map::new();
        for (i, k) in KEYS.iter().enumerate() {
            if let Some(v) = f.get(3 + i).and_then(|x| x.parse::<u64>().ok()) {
                stats.insert((*k).into(), json!(v));
            }
        }
        out.push(json!({"name": f[2], "major": major, "minor": minor, "stats": stats}));
    }
    Value::Array(out)
}

pub fn diskstats() -> R {
    let s = read("/proc/diskstats").ok_or_else(|| QmpError::unsupported("guest-get-diskstats"))?;
    Ok(diskstats_from(&s))
}

pub fn memory_block_info() -> R {
    let s = read("/sys/devices/system/memory/block_size_bytes")
        .ok_or_else(|| QmpError::unsupported("guest-get-memory-block-info"))?;
    let size = u64::from_str_radix(s.trim(), 16).map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!({"size": size}))
}

pub fn memory_blocks() -> R {
    let dir = std::fs::read_dir("/sys/devices/system/memory")
        .map_err(|_| QmpError::unsupported("guest-get-memory-blocks"))?;
    let mut out = Vec::new();
    let mut ids: Vec<u64> = dir
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("memory").and_then(|d| d.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    for id in ids {
        let base = format!("/sys/devices/system/memory/memory{id}");
        let online = read(&format!("{base}/state")).is_some_and(|s| s.trim() == "online");
        let can_offline = read(&format!("{base}/removable")).is_some_and(|s| s.trim() == "1");
        out.push(json!({"phys-index": id, "online": online, "can-offline": can_offline}));
    }
    Ok(Value::Array(out))
}

/// Logged-in users from utmp (`struct utmp`, 384 bytes on Linux): USER_PROCESS records.
pub fn users_from_utmp(data: &[u8]) -> Value {
    const REC: usize = 384;
    let mut first: Vec<(String, f64)> = Vec::new();
    for rec in data.chunks_exact(REC) {
        let ut_type = i16::from_ne_bytes([rec[0], rec[1]]);
        if ut_type != 7 {
            continue;
        }
        let user_raw = &rec[44..76];
        let end = user_raw
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(user_raw.len());
        let user = String::from_utf8_lossy(&user_raw[..end]).to_string();
        if user.is_empty() {
            continue;
        }
        let sec = i32::from_ne_bytes([rec[340], rec[341], rec[342], rec[343]]) as f64;
        let usec = i32::from_ne_bytes([rec[344], rec[345], rec[346], rec[347]]) as f64;
        let t = sec + usec / 1e6;
        match first.iter_mut().find(|(u, _)| *u == user) {
            Some((_, lt)) => {
                if t < *lt {
                    *lt = t
                }
            }
            None => first.push((user, t)),
        }
    }
    Value::Array(
        first
            .into_iter()
            .map(|(u, t)| json!({"user": u, "login-time": t}))
            .collect(),
    )
}

pub fn users() -> R {
    let data = std::fs::read("/run/utmp")
        .or_else(|_| std::fs::read("/var/run/utmp"))
        .unwrap_or_default();
    Ok(users_from_utmp(&data))
}

/// Network interfaces: addresses from getifaddrs, counters from /proc/net/dev.
#[cfg(unix)]
pub fn interfaces(exclude: &[glob::Pattern]) -> R {
    use nix::ifaddrs::getifaddrs;
    let mut order: Vec<String> = Vec::new();
    let mut by: std::collections::HashMap<String, Map<String, Value>> = Default::default();
    let addrs = getifaddrs().map_err(|e| QmpError::generic(format!("getifaddrs: {e}")))?;
    for ifa in addrs {
        let name = ifa.interface_name.clone();
        if exclude.iter().any(|p| p.matches(&name)) {
            continue;
        }
        let entry = by.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m
        });
        let Some(addr) = ifa.address else { continue };
        if let Some(ll) = addr.as_link_addr() {
            if let Some(mac) = ll.addr() {
                let s = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                entry.insert("hardware-address".into(), json!(s));
            }
            continue;
        }
        let (ip, kind, prefix) = if let Some(v4) = addr.as_sockaddr_in() {
            let p = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| u32::from(m.ip()).count_ones())
                .unwrap_or(0);
            (v4.ip().to_string(), "ipv4", p)
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let p = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| u128::from(m.ip()).count_ones())
                .unwrap_or(0);
            (v6.ip().to_string(), "ipv6", p)
        } else {
            continue;
        };
        let list = entry
            .entry("ip-addresses")
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = list {
            a.push(json!({"ip-address-type": kind, "ip-address": ip, "prefix": prefix}));
        }
    }
    let dev = read("/proc/net/dev").unwrap_or_default();
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 12 {
            continue;
        }
        if let Some(e) = by.get_mut(name.trim()) {
            e.insert(
                "statistics".into(),
                json!({"rx-bytes": f[0], "rx-packets": f[1], "rx-errs": f[2], "rx-dropped": f[3],
                       "tx-bytes": f[8], "tx-packets": f[9], "tx-errs": f[10], "tx-dropped": f[11]}),
            );
        }
    }
    Ok(Value::Array(
        order
            .into_iter()
            .filter_map(|n| by.remove(&n).map(Value::Object))
            .collect(),
    ))
}

#[cfg(not(unix))]
pub fn interfaces(_exclude: &[glob::Pattern]) -> R {
    Err(QmpError::unsupported("guest-network-get-interfaces"))
}

/// One mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

pub fn mounts_from(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 2 {
            continue;
        }
        let Some((maj, min)) = l[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        out.push(Mount {
            major,
            minor,
            mountpoint: unescape_mount(l[4]),
            fstype: r[0].to_string(),
            source: unescape_mount(r[1]),
        });
    }
    out
}

/// Real block-device mounts (qemu-ga skips virtual filesystems: major 0, and rootfs).
pub fn block_mounts() -> Vec<Mount> {
    let text = read("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<Mount> = mounts_from(&text)
        .into_iter()
        .filter(|m| m.major != 0 && m.fstype != "rootfs" && m.fstype != "autofs")
        .collect();
    // Each mount point once, the last mount wins (it is the visible one).
    let mut seen = std::collections::HashSet::new();
    v.reverse();
    v.retain(|m| seen.insert(m.mountpoint.clone()));
    v.reverse();
    v
}

/// The sysfs block device name of MAJ:MIN (`vda1`).
fn block_name(major: u32, minor: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().to_string())
}

/// The whole disks a block device sits on (itself, its parent for a partition, or the slaves
/// of a device-mapper/md device), as sysfs device paths.
fn disk_devices(name: &str) -> Vec<std::path::PathBuf> {
    let sys = std::path::Path::new("/sys/class/block").join(name);
    let slaves = sys.join("slaves");
    if let Ok(d) = std::fs::read_dir(&slaves) {
        let v: Vec<_> = d
            .flatten()
            .flat_map(|e| disk_devices(&e.file_name().to_string_lossy()))
            .collect();
        if !v.is_empty() {
            return v;
        }
    }
    let real = std::fs::canonicalize(&sys).unwrap_or(sys.clone());
    if real.join("partition").exists()
        && let Some(parent) = real.parent()
    {
        return vec![parent.to_path_buf()];
    }
    vec![real]
}

/// GuestDiskAddress for a whole disk's sysfs path: the PCI function it hangs from (libvirt
/// matches `domfsinfo` targets by it), bus type, and serial.
fn disk_address(dev: &std::path::Path) -> Option<Value> {
    let s = dev.to_string_lossy();
    let name = dev.file_name()?.to_string_lossy().to_string();
    // The last PCI address component in the path: ..../0000:00:04.0/virtio1/block/vda
    let mut pci = None;
    for comp in s.split('/') {
        let b = comp.as_bytes();
        if b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.' {
            pci = Some(comp.to_string());
        }
    }
    let pci = pci?;
    let domain = i64::from_str_radix(&pci[0..4], 16).ok()?;
    let bus = i64::from_str_radix(&pci[5..7], 16).ok()?;
    let slot = i64::from_str_radix(&pci[8..10], 16).ok()?;
    let function = i64::from_str_radix(&pci[11..12], 16).ok()?;
    let bus_type = if s.contains("/virtio") && !s.contains("/host") {
        "virtio"
    } else if s.contains("/nvme") {
        "nvme"
    } else if s.contains("/ata") {
        "sata"
    } else if s.contains("/host") {
        "scsi"
    } else if s.contains("/usb") {
        "usb"
    } else {
        "unknown"
    };
    let mut a = json!({
        "pci-controller": {"domain": domain, "bus": bus, "slot": slot, "function": function},
        "bus-type": bus_type, "bus": 0, "target": 0, "unit": 0,
        "dev": format!("/dev/{name}"),
    });
    // SCSI: host:channel:target:lun from the path.
    if bus_type == "scsi"
        && let Some(hctl) = s
            .split('/')
            .find(|c| c.split(':').count() == 4 && c.split(':').all(|x| x.parse::<u32>().is_ok()))
    {
        let v: Vec<i64> = hctl.split(':').filter_map(|x| x.parse().ok()).collect();
        a["bus"] = json!(v[1]);
        a["target"] = json!(v[2]);
        a["unit"] = json!(v[3]);
    }
    let serial = read(&format!("/sys/class/block/{name}/serial"))
        .or_else(|| read(&format!("/sys/class/block/{name}/device/serial")));
    if let Some(sr) = serial
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
    {
        a["serial"] = json!(sr);
    }
    Some(a)
}

pub fn fsinfo() -> R {
    let mut out = Vec::new();
    for m in block_mounts() {
        let name = block_name(m.major, m.minor).unwrap_or_else(|| m.source.clone());
        let disks: Vec<Value> = disk_devices(&name)
            .iter()
            .filter_map(|d| disk_address(d))
            .collect();
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut fs =
            json!({"name": name, "mountpoint": m.mountpoint, "type": m.fstype, "disk": disks});
        #[cfg(unix)]
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        if let Ok(st) = nix::sys::statvfs::statvfs(m.mountpoint.as_str()) {
            let frsize = st.fragment_size() as u64;
            let total = st.blocks() as u64 * frsize;
            let used = total.saturating_sub(st.blocks_free() as u64 * frsize);
            // qemu-ga: total-bytes counts what non-root users can use (used + available).
            fs["total-bytes"] = json!(used + st.blocks_available() as u64 * frsize);
            fs["used-bytes"] = json!(used);
        }
        out.push(fs);
    }
    Ok(Value::Array(out))
}

pub fn disks() -> R {
    let dir =
        std::fs::read_dir("/sys/block").map_err(|_| QmpError::unsupported("guest-get-disks"))?;
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let real = std::fs::canonicalize(format!("/sys/block/{name}")).unwrap_or_default();
        let mut d = json!({"name": format!("/dev/{name}"), "partition": false});
        let deps: Vec<String> = std::fs::read_dir(real.join("slaves"))
            .map(|r| {
                r.flatten()
                    .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        d["dependencies"] = json!(deps);
        if let Some(a) = disk_address(&real) {
            d["address"] = a;
        }
        if let Some(alias) = read(&format!("{}/dm/name", real.display())) {
            d["alias"] = json!(alias.trim());
        }
        out.push(d);
        // Its partitions.
        if let Ok(parts) = std::fs::read_dir(&real) {
            let mut pn: Vec<String> = parts
                .flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            pn.sort();
            for p in pn {
                out.push(json!({"name": format!("/dev/{p}"), "partition": true, "dependencies": [format!("/dev/{name}")]}));
            }
        }
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let mi = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                  30 22 0:5 / /dev rw - devtmpfs devtmpfs rw\n\
                  40 22 254:16 / /mnt/my\\040data rw - xfs /dev/vdb rw\n";
        let m = mounts_from(mi);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mountpoint, "/");
        assert_eq!(m[2].mountpoint, "/mnt/my data");
        assert_eq!(m[2].fstype, "xfs");
        let st = cpustats_from(
            "cpu  1 2 3 4\ncpu0 100 0 50 1000 5 0 1 0 0 0\nintr 5\n",
            100,
        );
        assert_eq!(st[0]["cpu"], 0);
        assert_eq!(st[0]["user"], 1000);
        assert_eq!(st[0]["type"], "linux");
        let ds = diskstats_from(
            " 254       0 vda 3058 1201 196046 2129 94 55 1170 89 0 1820 2218 0 0 0 0 12 3\n",
        );
        assert_eq!(ds[0]["name"], "vda");
        assert_eq!(ds[0]["stats"]["read-sectors"], 196046);
        assert_eq!(ds[0]["stats"]["flush-ticks"], 3);
        let r = os_release("ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
        assert_eq!(r["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn utmp_users() {
        let mut rec = vec![0u8; 384];
        rec[0] = 7;
        rec[44..48].copy_from_slice(b"root");
        rec[340..344].copy_from_slice(&1_700_000_000i32.to_ne_bytes());
        let v = users_from_utmp(&rec);
        assert_eq!(v[0]["user"], "root");
        assert_eq!(v[0]["login-time"], 1_700_000_000.0);
        assert_eq!(users_from_utmp(&[1, 2, 3]), json!([]));
    }

    #[test]
    fn parsers_never_panic_on_junk() {
        for junk in [
            "",
            "x",
            " - ",
            "1 2 3:4 5 6 - a",
            "cpu",
            "cpu0 a b",
            "\\\\\\",
            "a\\1",
        ] {
            let _ = mounts_from(junk);
            let _ = cpustats_from(junk, 0);
            let _ = diskstats_from(junk);
            let _ = os_release(junk);
            let _ = unescape_mount(junk);
        }
    }
}
