//! `majordomo doctor --virtio` (alias `majordomo --diagnose`): is this a VM with the virtio
//! console driver, which ports exist, who holds each, is a host connected, and what to do
//! about each problem. Reads `/sys`, `/dev` and `/proc` (roots injectable for tests); never
//! reads from a port (that would take a byte meant for the agent), only polls it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::control::CONTROL_PORT;
use crate::port::AGENT_PORT;

/// How bad a finding is: the one type of every diagnosis (`doctor`, `doctor --virtio`).
pub use majordomo_proto::control::Level;

/// One finding, with what to do when it is not OK.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub name: String,
    pub status: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn f(name: &str, status: Level, detail: String, hint: Option<&str>) -> Finding {
    Finding {
        name: name.into(),
        status,
        detail,
        hint: hint.map(String::from),
    }
}

/// Where to look: `/sys`, `/dev`, `/proc` outside tests.
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub proc: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc: "/proc".into(),
        }
    }
}

/// A virtio-serial port the kernel knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPort {
    /// `vport1p1`.
    pub dev: String,
    /// Its name (`org.qemu.guest_agent.0`); empty for an unnamed console port.
    pub name: String,
}

/// The ports listed under `/sys/class/virtio-ports`.
pub fn ports(roots: &Roots) -> Vec<KnownPort> {
    let mut out: Vec<KnownPort> = std::fs::read_dir(roots.sys.join("class/virtio-ports"))
        .map(|rd| {
            rd.flatten()
                .map(|e| KnownPort {
                    dev: e.file_name().to_string_lossy().into_owned(),
                    name: std::fs::read_to_string(e.path().join("name"))
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.dev.cmp(&b.dev));
    out
}

/// The processes holding `dev` open: (pid, command name).
pub fn holders(roots: &Roots, dev: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&roots.proc) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == dev))
        {
            let comm = std::fs::read_to_string(e.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
            out.push((pid, comm));
        }
    }
    out.sort();
    out
}

/// Whether a host holds the other end: `Some(true/false)` when the port could be polled (it is
/// free), `None` when it is held by someone else (virtio ports admit one opener).
#[cfg(target_os = "linux")]
fn host_connected(dev: &Path) -> Option<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(dev)
        .ok()?;
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).ok()?;
    // The driver reports POLLHUP while no host process holds the host end.
    let hup = fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLHUP));
    Some(!hup)
}

/// Every finding about virtio-serial on this machine.
pub fn findings(roots: &Roots) -> Vec<Finding> {
    let mut out = Vec::new();
    if cfg!(windows) {
        for name in [AGENT_PORT, CONTROL_PORT] {
            let p = crate::port::virtio_path("windows", name);
            let opens = std::fs::OpenOptions::new().read(true).open(&p);
            out.push(match opens {
                Ok(_) => f(name, Level::Ok, format!("{} opens", p.display()), None),
                Err(e) => f(
                    name,
                    Level::Warn,
                    format!("{}: {e}", p.display()),
                    Some(
                        "install the VirtIO serial driver (virtio-win, vioser) and add the channel to the VM; \
                         if qemu-ga's service runs, stop it (sc stop QEMU-GA) so majordomo can open the port",
                    ),
                ),
            });
        }
        return out;
    }
    let bus = roots.sys.join("bus/virtio");
    let devices = std::fs::read_dir(bus.join("devices"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    let driver = roots.sys.join("bus/virtio/drivers/virtio_console").exists();
    if devices == 0 {
        out.push(f(
            "virtio",
            Level::Warn,
            format!("no virtio devices ({} is empty or missing)", bus.display()),
            Some(
                "not a VM with virtio devices: the guest agent is only needed inside one; \
                 on the host, add a virtio-serial controller and a channel (libvirt <channel type='unix'> \
                 <target type='virtio' name='org.qemu.guest_agent.0'/>, Proxmox: agent: 1)",
            ),
        ));
        return out;
    }
    out.push(if driver {
        f(
            "driver",
            Level::Ok,
            format!("virtio_console is loaded ({devices} virtio devices)"),
            None,
        )
    } else {
        f(
            "driver",
            Level::Fail,
            format!("{devices} virtio devices but the virtio_console driver is not loaded"),
            Some("load it: modprobe virtio_console (and add it to /etc/modules for the next boot)"),
        )
    });
    let known = ports(roots);
    out.push(f(
        "ports",
        if known.is_empty() {
            Level::Warn
        } else {
            Level::Ok
        },
        if known.is_empty() {
            "no virtio-serial ports".to_string()
        } else {
            known
                .iter()
                .map(|p| format!("{} ({})", p.dev, if p.name.is_empty() { "unnamed" } else { &p.name }))
                .collect::<Vec<_>>()
                .join(", ")
        },
        known.is_empty().then_some(
            "the VM has no serial channel: add one on the host (libvirt <channel type='unix'>, QEMU -device virtserialport,name=org.qemu.guest_agent.0)",
        ),
    ));
    for (name, what) in [
        (AGENT_PORT, "the QEMU guest agent port"),
        (CONTROL_PORT, "majordomo's control port"),
    ] {
        let Some(p) = known.iter().find(|p| p.name == name) else {
            out.push(f(
                name,
                if name == AGENT_PORT {
                    Level::Warn
                } else {
                    Level::Ok
                },
                format!("absent: the host did not create {what}"),
                (name == AGENT_PORT).then_some(
                    "enable the agent on the host: libvirt <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>, Proxmox `qm set ID --agent 1` (then a full power cycle)",
                ),
            ));
            continue;
        };
        let dev = roots.dev.join(&p.dev);
        let link = roots.dev.join("virtio-ports").join(name);
        let mut detail = format!("{}", dev.display());
        if !link.exists() {
            detail.push_str(&format!(
                "; no {} link (no udev: majordomo finds it through sysfs)",
                link.display()
            ));
        }
        let held = holders(roots, &dev);
        let me = std::process::id();
        let others: Vec<&(u32, String)> = held.iter().filter(|(pid, _)| *pid != me).collect();
        if others.is_empty() {
            detail.push_str("; free");
        } else {
            detail.push_str(&format!(
                "; held by {}",
                others
                    .iter()
                    .map(|(pid, c)| format!("{c} (pid {pid})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let my_exe = std::env::current_exe().ok();
        let foreign = others.iter().find(|(pid, c)| {
            let exe = std::fs::read_link(roots.proc.join(pid.to_string()).join("exe")).ok();
            !c.starts_with("majordomo") && (exe.is_none() || exe != my_exe)
        });
        #[cfg(target_os = "linux")]
        let host = if others.is_empty() {
            host_connected(&dev)
        } else {
            None
        };
        #[cfg(not(target_os = "linux"))]
        let host: Option<bool> = None;
        match host {
            Some(true) => detail.push_str("; a host is connected"),
            Some(false) => detail.push_str("; no host connected"),
            None => {}
        }
        let (level, hint) = if let Some((pid, comm)) = foreign {
            (
                Level::Fail,
                Some(format!(
                    "{comm} (pid {pid}) holds it and a port admits one process: if it is qemu-ga, stop and disable it \
                     (systemctl disable --now qemu-guest-agent) so majordomo can serve the port"
                )),
            )
        } else if others.is_empty() {
            (
                Level::Warn,
                Some(
                    "nothing serves it: start majordomo (`majordomo run`, or its service); [guest] turns on by itself when the port exists"
                        .to_string(),
                ),
            )
        } else {
            (Level::Ok, None)
        };
        out.push(Finding {
            name: name.into(),
            status: level,
            detail,
            hint,
        });
    }
    out
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn fake(t: &Path) -> Roots {
        Roots {
            sys: t.join("sys"),
            dev: t.join("dev"),
            proc: t.join("proc"),
        }
    }

    #[test]
    fn no_virtio_says_so_and_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let r = findings(&fake(t.path()));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, Level::Warn);
        assert!(
            r[0].hint
                .as_deref()
                .unwrap()
                .contains("org.qemu.guest_agent.0")
        );
    }

    #[test]
    fn missing_driver_and_a_port_held_by_qemu_ga() {
        let t = tempfile::tempdir().unwrap();
        let r = fake(t.path());
        std::fs::create_dir_all(r.sys.join("bus/virtio/devices/virtio0")).unwrap();
        let f1 = findings(&r);
        assert!(
            f1.iter()
                .any(|x| x.name == "driver" && x.status == Level::Fail)
        );
        std::fs::create_dir_all(r.sys.join("bus/virtio/drivers/virtio_console")).unwrap();
        let port = r.sys.join("class/virtio-ports/vport1p1");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("name"), "org.qemu.guest_agent.0\n").unwrap();
        std::fs::create_dir_all(&r.dev).unwrap();
        // A "device" (a plain file here) held by a process called qemu-ga.
        let dev = r.dev.join("vport1p1");
        std::fs::write(&dev, "").unwrap();
        let p = r.proc.join("4242");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("comm"), "qemu-ga\n").unwrap();
        std::os::unix::fs::symlink(&dev, p.join("fd/3")).unwrap();
        let f2 = findings(&r);
        let agent = f2.iter().find(|x| x.name == AGENT_PORT).unwrap();
        assert_eq!(agent.status, Level::Fail, "{agent:?}");
        assert!(agent.detail.contains("qemu-ga (pid 4242)"), "{agent:?}");
        assert!(agent.hint.as_deref().unwrap().contains("systemctl disable"));
        let ctl = f2.iter().find(|x| x.name == CONTROL_PORT).unwrap();
        assert_eq!(ctl.status, Level::Ok);
    }
}
