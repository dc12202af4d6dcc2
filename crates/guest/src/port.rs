//! Finding the agent port. The path logic is pure and tested on every OS; opening and reading
//! live in [`crate::io`].

use std::path::{Path, PathBuf};

/// The virtio-serial port name libvirt and Proxmox create for the agent.
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// The device path of a named virtio-serial port on `os` ("linux", "windows", ...).
pub fn virtio_path(os: &str, name: &str) -> PathBuf {
    if os == "windows" {
        // qemu qga/main.c QGA_VIRTIO_PATH_DEFAULT: the vioserial driver's global name.
        PathBuf::from(format!(r"\\.\Global\{name}"))
    } else {
        PathBuf::from(format!("/dev/virtio-ports/{name}"))
    }
}

/// Without udev, `/dev/virtio-ports/NAME` is missing: find the `vportNpM` whose
/// `/sys/class/virtio-ports/*/name` is NAME. `sys_root` is `/sys` outside tests.
pub fn find_by_sysfs(sys_root: &Path, dev_root: &Path, name: &str) -> Option<PathBuf> {
    let dir = std::fs::read_dir(sys_root.join("class/virtio-ports")).ok()?;
    for e in dir.flatten() {
        let Ok(n) = std::fs::read_to_string(e.path().join("name")) else {
            continue;
        };
        if n.trim() == name {
            return Some(dev_root.join(e.file_name()));
        }
    }
    None
}

/// The port to use: the configured one, else the named virtio port (udev link or sysfs
/// lookup on Linux), else the serial fallback. `None`: no port on this machine.
pub fn resolve(
    configured: Option<&Path>,
    name: &str,
    serial_fallback: Option<&Path>,
) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let os = std::env::consts::OS;
    let p = virtio_path(os, name);
    if exists(&p) {
        return Some(p);
    }
    if os == "linux"
        && let Some(p) = find_by_sysfs(Path::new("/sys"), Path::new("/dev"), name)
    {
        return Some(p);
    }
    serial_fallback.filter(|p| exists(p)).map(Path::to_path_buf)
}

/// Whether a port path exists. On Windows the `\\.\Global\` namespace cannot be stat'ed;
/// opening it (done by the caller) is the only test, so it counts as existing when the
/// vioserial driver's device is there, which `metadata` reports through the object manager.
pub fn exists(p: &Path) -> bool {
    std::fs::metadata(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_os() {
        assert_eq!(
            virtio_path("windows", AGENT_PORT),
            PathBuf::from(r"\\.\Global\org.qemu.guest_agent.0")
        );
        assert_eq!(
            virtio_path("linux", "org.majordomo.0"),
            PathBuf::from("/dev/virtio-ports/org.majordomo.0")
        );
        assert_eq!(
            virtio_path("freebsd", AGENT_PORT),
            PathBuf::from("/dev/virtio-ports/org.qemu.guest_agent.0")
        );
    }

    #[test]
    fn configured_port_wins_and_missing_fallback_is_none() {
        let p = Path::new("/somewhere/port");
        assert_eq!(resolve(Some(p), AGENT_PORT, None), Some(p.to_path_buf()));
        assert_eq!(
            resolve(None, "org.example.never.0", Some(Path::new("/no/such/tty"))),
            None
        );
    }

    #[test]
    fn sysfs_lookup_without_udev() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        for (dev, name) in [("vport1p1", "org.majordomo.0"), ("vport1p2", AGENT_PORT)] {
            let d = sys.join("class/virtio-ports").join(dev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_by_sysfs(&sys, Path::new("/dev"), AGENT_PORT),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(find_by_sysfs(&sys, Path::new("/dev"), "nope"), None);
    }
}
