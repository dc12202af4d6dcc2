//! The guest agent through the real binary: `[guest] port` pointed at a pseudo-terminal (the
//! serial-device fallback path), the test playing the hypervisor host on the other end. The
//! virtio-serial run in a real VM is `majordomo-bench guest` and the harness in
//! `shared/tools/vm` (QEMU cannot run everywhere CI runs).

use std::io::{Read, Write};
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
