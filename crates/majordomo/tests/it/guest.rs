//! The guest agent through the real binary: `[guest] port` pointed at a pseudo-terminal (the
//! serial-device fallback path), the test playing the hypervisor host on the other end. The
//! virtio-serial run in a real VM is `majordomo-bench guest` and the harness in
//! `shared/tools/vm` (QEMU cannot run everywhere CI runs).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Home;

struct Host {
    w: std::fs::File,
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Host {
    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Reads until `n` newline-terminated lines have arrived (raw bytes, 0xFF kept).
    fn lines(&mut self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.buf.iter().filter(|&&b| b == b'\n').count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.buf.extend(b),
                Err(_) => panic!("no reply; got {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
        let mut out = Vec::new();
        for _ in 0..n {
            let i = self.buf.iter().position(|&b| b == b'\n').unwrap();
            out.push(self.buf.drain(..=i).collect());
        }
        out
    }

    fn ask(&mut self, req: &str) -> Value {
        self.send(req.as_bytes());
        self.send(b"\n");
        let l = self.lines(1).remove(0);
        serde_json::from_slice(&l)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&l)))
    }
}

#[test]
fn qga_protocol_through_the_binary() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        pty.slave.as_raw_fd()
    }))
    .expect("pty name");
    // Raw mode on our end too: no echo, no line discipline.
    let mut t = nix::sys::termios::tcgetattr(&pty.master).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.master, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();

    let home = Home::new();
    home.write_config(
        "g",
        &format!(
            "[guest]\nenabled = true\nport = {:?}\nallow = [\"guest-ping\", \"guest-get-*\", \"guest-network-*\", \"guest-exec*\"]\nblock = [\"guest-get-users\"]\n[monitor]\nenabled = false\n",
            slave.display().to_string()
        ),
    );
    let _d = home.start("g");

    let master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 65536];
        while let Ok(n) = reader.read(&mut b) {
            if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut host = Host {
        w: master,
        rx,
        buf: Vec::new(),
    };

    // A real client's resync: 0xFF, then guest-sync-delimited; the reply starts with 0xFF.
    host.send(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4711}}\n");
    let l = host.lines(1).remove(0);
    assert_eq!(l, b"\xff{\"return\":4711}\n");

    // Proxmox: sync-delimited + command in one write, matched by qemu-server's regex
    // ^.*\xff([^\n]+}\r?\n[^\n]+})\r?\n(.*)$ : two single lines ending in '}'.
    host.send(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1234501}}\n{\"execute\":\"guest-get-host-name\",\"arguments\":{}}\n");
    let two = host.lines(2);
    assert_eq!(two[0], b"\xff{\"return\":1234501}\n");
    assert!(two[1].ends_with(b"}\n") && !two[1][..two[1].len() - 1].contains(&b'\n'));
    let v: Value = serde_json::from_slice(&two[1]).unwrap();
    assert!(v["return"]["host-name"].is_string(), "{v}");

    // libvirt: guest-sync with a millisecond id, no 0xFF; id member echoed.
    assert_eq!(
        host.ask(r#"{"execute":"guest-sync","arguments":{"id":1764600000000}}"#),
        serde_json::json!({"return": 1764600000000u64})
    );
    assert_eq!(
        host.ask(r#"{"execute":"guest-ping","id":"abc"}"#),
        serde_json::json!({"return": {}, "id": "abc"})
    );

    // Resync after a half-written request.
    host.send(b"{\"execute\":\"guest-get-os");
    host.send(b"\xff{\"execute\":\"guest-ping\"}\n");
    assert_eq!(host.lines(1).remove(0), b"{\"return\":{}}\n");

    // Errors: unknown, disabled by allow (not listed) and by block, bad arguments.
    let e = host.ask(r#"{"execute":"guest-nope"}"#);
    assert_eq!(e["error"]["class"], "CommandNotFound");
    let e = host.ask(r#"{"execute":"guest-fstrim"}"#);
    assert_eq!(e["error"]["desc"], "Command guest-fstrim has been disabled");
    let e = host.ask(r#"{"execute":"guest-get-users"}"#);
    assert_eq!(e["error"]["class"], "CommandNotFound");
    let e = host.ask(r#"{"execute":"guest-get-time","arguments":{"x":1}}"#);
    assert_eq!(e["error"]["class"], "GenericError");
    let info = host.ask(r#"{"execute":"guest-info"}"#);
    let cmds = info["return"]["supported_commands"].as_array().unwrap();
    let enabled = |n: &str| cmds.iter().find(|c| c["name"] == n).unwrap()["enabled"].clone();
    assert_eq!(enabled("guest-exec"), true);
    assert_eq!(enabled("guest-file-open"), false);

    // guest-exec with captured output, as `qm guest exec` does.
    let r = host.ask(r#"{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","echo out; echo err >&2; exit 7"],"capture-output":true}}"#);
    let pid = r["return"]["pid"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = host.ask(&format!(
            r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#
        ));
        if st["return"]["exited"] == true || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st["return"]["exitcode"], 7, "{st}");
    assert_eq!(st["return"]["out-data"], "b3V0Cg==");
    assert_eq!(st["return"]["err-data"], "ZXJyCg==");

    // Shapes of the read-only commands libvirt's guestinfo uses.
    let os = host.ask(r#"{"execute":"guest-get-osinfo"}"#);
    assert!(os["return"]["kernel-release"].is_string(), "{os}");
    let t = host.ask(r#"{"execute":"guest-get-time"}"#);
    assert!(t["return"].as_i64().unwrap() > 1_600_000_000_000_000_000);
    let fs = host.ask(r#"{"execute":"guest-get-fsinfo"}"#);
    assert!(fs["return"].is_array(), "{fs}");
    let ifs = host.ask(r#"{"execute":"guest-network-get-interfaces"}"#);
    assert!(
        ifs["return"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "lo"),
        "{ifs}"
    );
}

/// The management commands on the host, through the socket and the CLI: a real process list
/// and kill (under `kill_allow`), a refused kill, the open ports with their process, the real
/// package list of this machine, and the audit record of each.
#[test]
fn management_commands_list_kill_ports_packages_and_audit() {
    let home = Home::new();
    home.write_config(
        "m",
        "[guest]\nenabled = true\nkill_allow = [\"sleep\"]\n[monitor]\nenabled = false\n[http]\nenabled = false\n",
    );
    let d = home.start("m");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut l = crate::common::Line::connect(&d);

    let r = l.call(r#"{"id":1,"cmd":"guest.processes","sort":"pid"}"#);
    let procs = r["ok"].as_array().unwrap_or_else(|| panic!("{r}"));
    let me = procs
        .iter()
        .find(|p| p["pid"] == sleeper.id())
        .unwrap_or_else(|| panic!("no sleep {} in {r}", sleeper.id()));
    assert_eq!(me["name"], "sleep");
    assert_eq!(me["cmdline"], "sleep 300");
    let top = l.call(r#"{"id":2,"cmd":"guest.processes","top":2}"#);
    assert_eq!(top["ok"].as_array().unwrap().len(), 2, "{top}");

    // Not in kill_allow: refused, and the process lives on.
    let r = l.call(&format!(
        r#"{{"id":3,"cmd":"guest.kill","pid":{}}}"#,
        std::process::id()
    ));
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = l.call(&format!(
        r#"{{"id":4,"cmd":"guest.kill","pid":{},"signal":"TERM"}}"#,
        sleeper.id()
    ));
    assert!(
        r["ok"]["message"].as_str().unwrap().contains("SIGTERM"),
        "{r}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(sleeper.wait().unwrap().signal(), Some(15));

    let r = l.call(r#"{"id":5,"cmd":"guest.ports"}"#);
    let local = format!("127.0.0.1:{port}");
    let mine = r["ok"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["local"] == local.as_str() && p["proto"] == "tcp")
        .unwrap_or_else(|| panic!("no {local} in {r}"));
    assert_eq!(mine["state"], "LISTEN");
    assert_eq!(mine["pid"], std::process::id());
    drop(listener);

    // The CLI prints the same through the socket.
    let out = home.cli("m", &["--json", "guest", "packages"]);
    let text = crate::common::stdout(&out);
    if Path::new("/usr/bin/dpkg-query").exists() {
        assert!(out.status.success(), "{}", crate::common::stderr(&out));
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["manager"], "apt");
        assert!(
            v["packages"].as_array().unwrap().iter().any(
                |p| p["name"] == "dpkg" && p["version"].as_str().is_some_and(|s| !s.is_empty())
            ),
            "no dpkg in the package list"
        );
    } else {
        println!("SKIP package list: no dpkg-query here (the check is written for Debian)");
    }
    let out = home.cli("m", &["guest", "package", "install", "hello"]);
    assert!(!out.status.success());
    assert!(
        crate::common::stderr(&out).contains("package_allow"),
        "{}",
        crate::common::stderr(&out)
    );

    // The audit record: every management command, refusals with their reason.
    let audit = crate::common::eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(find_audit(home.path())?).ok()?;
        (text.lines().count() >= 7).then_some(text)
    })
    .expect("audit records");
    let recs: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kills: Vec<&Value> = recs
        .iter()
        .filter(|r| r["command"] == "guest.kill")
        .collect();
    assert_eq!(kills.len(), 2, "{audit}");
    assert_eq!(kills[0]["ok"], false);
    assert!(kills[0]["error"].as_str().unwrap().contains("kill_allow"));
    assert_eq!(kills[1]["ok"], true);
    assert_eq!(kills[1]["args"]["pid"], sleeper.id());
    assert!(
        recs.iter()
            .any(|r| r["command"] == "guest.package" && r["ok"] == false)
    );
}

fn find_audit(dir: &Path) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_audit(&p) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == "guest-audit.jsonl") {
            return Some(p);
        }
    }
    None
}

/// `guest.apps` lists the desktop entries of the XDG data dirs (first id wins, hidden ones
/// left out), on a one-thread daemon (`[daemon] threads = 1`, the guest-only footprint); the
/// audit record says who asked: the Unix socket with this process's uid and pid. The bus's
/// health, now computed when `status` asks, is there.
#[test]
fn installed_apps_and_the_audit_names_the_connection() {
    let home = Home::new();
    home.write_config(
        "a",
        "[daemon]\nthreads = 1\n[guest]\nenabled = true\n[monitor]\nenabled = false\n[http]\nenabled = false\n",
    );
    let (user, system) = (home.path().join("xdg-home"), home.path().join("xdg-sys"));
    for (dir, file, text) in [
        (
            &user,
            "editor.desktop",
            "[Desktop Entry]\nType=Application\nName=Editor Deluxe\n",
        ),
        (
            &system,
            "editor.desktop",
            "[Desktop Entry]\nType=Application\nName=Shadowed\n",
        ),
        (
            &system,
            "hidden.desktop",
            "[Desktop Entry]\nType=Application\nName=Helper\nNoDisplay=true\n",
        ),
        (
            &system,
            "vendor/viewer.desktop",
            "[Desktop Entry]\nType=Application\nName=Viewer\n",
        ),
    ] {
        let p = dir.join("applications").join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let d = home.start_with("a", |c| {
        c.env("XDG_DATA_HOME", &user).env("XDG_DATA_DIRS", &system);
    });
    let mut l = crate::common::Line::connect(&d);
    let r = l.call(r#"{"id":1,"cmd":"guest.apps"}"#);
    let apps = r["ok"].as_array().unwrap_or_else(|| panic!("{r}"));
    let desktop: Vec<&str> = apps
        .iter()
        .filter(|a| a["source"] == "desktop")
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(desktop, ["Editor Deluxe", "Viewer"], "{r}");
    let r = l.call(r#"{"id":2,"cmd":"guest.apps","name":"EDITOR*"}"#);
    assert_eq!(r["ok"].as_array().map(Vec::len), Some(1), "{r}");
    let r = l.call(r#"{"id":3,"cmd":"status"}"#);
    assert!(r["ok"]["bus"]["connections"].as_u64() >= Some(1), "{r}");

    let out = home.cli("a", &["guest", "apps", "view*"]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    assert!(crate::common::stdout(&out).contains("Viewer"));

    let audit = crate::common::eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(find_audit(home.path())?).ok()?;
        (text.lines().count() >= 3).then_some(text)
    })
    .expect("audit records");
    let first: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(first["command"], "guest.apps", "{audit}");
    assert_eq!(first["via"], "unix socket", "{audit}");
    assert_eq!(first["pid"], std::process::id(), "{audit}");
    assert_eq!(first["uid"], nix::unistd::getuid().as_raw(), "{audit}");
}

#[test]
fn management_commands_say_when_the_guest_agent_is_off_and_work_once_it_is_on() {
    let home = Home::new();
    let off = "[guest]\nenabled = false\n[monitor]\nenabled = false\n[http]\nenabled = false\n";
    home.write_config("a", off);
    let d = home.start("a");
    // Socket and CLI: why, and what turns it on (not a bare "unknown command").
    let r = crate::common::raw_call(&d.socket, r#"{"id":1,"cmd":"guest.processes"}"#).unwrap();
    assert_eq!(r["error"]["code"], "unknown_command", "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest agent is off") && msg.contains("[guest] enabled = true"),
        "{r}"
    );
    let o = home.cli("a", &["guest", "apps"]);
    assert!(!o.status.success());
    assert!(
        crate::common::stderr(&o).contains("guest agent is off"),
        "{}",
        crate::common::stderr(&o)
    );
    // Turned on by a reload: the real commands replace the answers.
    home.write_config(
        "a",
        &off.replace("enabled = false\n[monitor]", "enabled = true\n[monitor]"),
    );
    let o = home.cli("a", &["reload"]);
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    let o = home.cli("a", &["--json", "guest", "ports"]);
    assert!(
        o.status.success(),
        "{}{}",
        crate::common::stdout(&o),
        crate::common::stderr(&o)
    );
}
