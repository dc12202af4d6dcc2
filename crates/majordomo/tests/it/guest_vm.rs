//! The guest agent in a real VM: the harness in `shared/tools/vm` boots a small Linux guest
//! under QEMU with this build of majordomo as its agent on the virtio-serial port
//! `org.qemu.guest_agent.0`, plus the second port `org.majordomo.0`, a disk and a NIC. One boot
//! serves every check: the QGA wire rules libvirt and Proxmox rely on, the answers' shapes
//! against the real qemu-ga (`qga-oracle.sh`, run on the host), exec under the allow-list,
//! the fsfreeze automatic thaw, host reconnects, and the instance protocol on the second port
//! with pushed `$sys.metrics`. Skipped, saying why, where the harness or QEMU is missing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::BIN;

/// The harness folder: `MAJORDOMO_VM_HARNESS`, else `shared/tools/vm` beside an ancestor of the
/// workspace.
fn harness() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("MAJORDOMO_VM_HARNESS") {
        return Some(PathBuf::from(d));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/tools/vm"))
        .find(|d| d.join("vm-env.sh").is_file())
}

/// A booted VM, stopped (through the harness, by its socket) when dropped.
struct Vm {
    harness: PathBuf,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = Command::new(self.harness.join("vm-env.sh"))
            .arg("stop")
            .arg(&self.sock)
            .output();
    }
}

impl Vm {
    fn console(&self) -> String {
        std::fs::read_to_string(self.sock.with_extension("sock.d").join("console.log"))
            .unwrap_or_default()
    }
}

/// A host-side QGA client, as libvirt and Proxmox are.
struct Qga {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Qga {
    fn connect(path: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    return Qga { s, buf: Vec::new() };
                }
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn fill(&mut self) -> bool {
        let mut b = [0u8; 65536];
        match self.s.read(&mut b) {
            Ok(0) => panic!("the host socket closed"),
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                false
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    /// 0xFF + guest-sync-delimited, resent every second until the reply with the latest id
    /// arrives; whatever came before it is dropped.
    fn sync(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut id = 0u64;
        let mut next_send = Instant::now();
        loop {
            assert!(
                Instant::now() < deadline,
                "the agent never answered guest-sync-delimited; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            if Instant::now() >= next_send {
                id = 1_000_000 + (id % 1000) + 1;
                let req = format!(
                    "\u{0}{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n"
                );
                let mut bytes = req.into_bytes();
                bytes[0] = 0xFF;
                self.s.write_all(&bytes).unwrap();
                next_send = Instant::now() + Duration::from_secs(1);
            }
            self.fill();
            let want = format!("{{\"return\":{id}}}\n");
            if let Some(pos) = self
                .buf
                .windows(want.len() + 1)
                .position(|w| w[0] == 0xFF && &w[1..] == want.as_bytes())
            {
                self.buf.drain(..pos + 1 + want.len());
                return;
            }
        }
    }

    fn line(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return self.buf.drain(..=i).collect();
            }
            assert!(
                Instant::now() < deadline,
                "no reply line; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.fill();
        }
    }

    fn ask(&mut self, req: &Value) -> Value {
        let mut l = serde_json::to_vec(req).unwrap();
        l.push(b'\n');
        self.s.write_all(&l).unwrap();
        let line = self.line();
        assert!(
            line.ends_with(b"}\n"),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&line)))
    }

    fn ret(&mut self, cmd: &str) -> Value {
        let v = self.ask(&json!({"execute": cmd}));
        assert!(v.get("return").is_some(), "{cmd}: {v}");
        v["return"].clone()
    }
}

/// Keys the QAPI schema marks optional (present or not depending on the machine): they may be
/// missing on either side; every other key must be on both, with the same JSON type.
const OPTIONAL: &[&str] = &[
    "version",
    "variant",
    "variant-id",
    "serial",
    "dev",
    "statistics",
    "ip-addresses",
    "hardware-address",
    "used-bytes",
    "total-bytes",
    "pci-controller",
];

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key path (`[]` for array elements) with its type, over all elements.
fn shape(v: &Value, at: &str, out: &mut BTreeMap<String, &'static str>) {
    out.insert(at.to_string(), kind(v));
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                shape(x, &format!("{at}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for x in a {
                shape(x, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// Differences between majordomo's and qemu-ga's shapes, ignoring optional keys.
fn shape_diff(cmd: &str, ours: &Value, theirs: &Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    shape(ours, "", &mut a);
    shape(theirs, "", &mut b);
    let optional = |path: &str| {
        path.split(['.', '['])
            .any(|seg| OPTIONAL.contains(&seg.trim_end_matches(']')))
    };
    let mut diffs = Vec::new();
    for (p, t) in &a {
        match b.get(p) {
            Some(u) if u != t => diffs.push(format!("{cmd}{p}: majordomo {t}, qemu-ga {u}")),
            None if !optional(p) => diffs.push(format!("{cmd}{p}: only majordomo has it")),
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) && !optional(p) {
            diffs.push(format!("{cmd}{p}: only qemu-ga has it"));
        }
    }
    diffs
}

#[test]
fn guest_agent_in_a_real_vm() {
    let Some(h) = harness() else {
        println!(
            "SKIP guest VM smoke: the VM harness (shared/tools/vm) is not here; set MAJORDOMO_VM_HARNESS"
        );
        return;
    };
    let env_sh = h.join("vm-env.sh");
    let check = Command::new(&env_sh).arg("check").output().unwrap();
    if !check.status.success() {
        println!(
            "SKIP guest VM smoke: the harness is not ready (run scripts/install-test-deps.sh, which runs `vm-env.sh setup`):\n{}",
            String::from_utf8_lossy(&check.stdout)
        );
        return;
    }

    let dir = tempfile::Builder::new().prefix("mjvm").tempdir().unwrap();
    // The guest copies the agent into its RAM disk: a stripped copy is half the size.
    let agent = dir.path().join("majordomo");
    std::fs::copy(BIN, &agent).unwrap();
    let _ = Command::new("strip").arg(&agent).status();
    let config = dir.path().join("guest.toml");
    std::fs::write(
        &config,
        r#"[guest]
allow = ["guest-sync*", "guest-ping", "guest-info", "guest-get-*", "guest-network-*", "guest-exec*", "guest-fsfreeze-*"]
metrics_interval = "1s"
fsfreeze_timeout = "2s"
[monitor]
enabled = false
[http]
enabled = false
"#,
    )
    .unwrap();
    let sock = dir.path().join("md.sock");
    let boot = Command::new(&env_sh)
        .args(["boot"])
        .arg(&agent)
        .arg(&sock)
        .args([
            "--",
            "--home",
            "/tmp/md",
            "--config",
            "/etc/majordomo.toml",
            "run",
        ])
        .env(
            "QGA_EXTRA_FILES",
            format!("{}:/etc/majordomo.toml", config.display()),
        )
        .env("QGA_EXTRA_PORTS", "org.majordomo.0")
        .env("QGA_DISK", "8")
        .env("QGA_NIC", "1")
        .env("QGA_MEM", "384M")
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "boot: {}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let vm = Vm {
        harness: h.clone(),
        sock: sock.clone(),
        _dir: dir,
    };

    // qemu-ga's answers on this host, while the guest boots.
    let probes = [
        "guest-info",
        "guest-get-osinfo",
        "guest-get-fsinfo",
        "guest-network-get-interfaces",
        "guest-get-disks",
        "guest-get-host-name",
        "guest-get-timezone",
        "guest-get-vcpus",
    ];
    let mut oracle = Command::new(h.join("qga-oracle.sh"));
    oracle.arg("run");
    for p in probes {
        oracle.arg(json!({"execute": p}).to_string());
    }
    if nix::unistd::geteuid().is_root() {
        // The default `nobody` cannot reach a state folder under root's home; the oracle
        // only answers reads (host-changing commands are blocked).
        oracle.env("QGA_ORACLE_USER", "root");
    }
    let oracle = oracle.output().unwrap();
    assert!(
        oracle.status.success(),
        "qga-oracle: {}",
        String::from_utf8_lossy(&oracle.stderr)
    );
    let theirs: Vec<Value> = String::from_utf8_lossy(&oracle.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(theirs.len(), probes.len(), "{:?}", oracle);

    let mut q = Qga::connect(&sock);
    q.sync(Duration::from_secs(240));

    // Shapes against qemu-ga: same keys, same types.
    let mut diffs = Vec::new();
    for (p, t) in probes.iter().zip(&theirs) {
        let ours = q.ask(&json!({"execute": p}));
        if *p == "guest-info" {
            // The command lists differ by design; compare one entry's shape and the envelope.
            let first = |v: &Value| v["return"]["supported_commands"][0].clone();
            diffs.extend(shape_diff(p, &first(&ours), &first(t)));
            assert!(ours["return"]["version"].is_string(), "{ours}");
            continue;
        }
        diffs.extend(shape_diff(p, &ours, t));
    }
    assert!(
        diffs.is_empty(),
        "shapes differ from qemu-ga:\n{}",
        diffs.join("\n")
    );
    // What the guest has: the disk with its PCI address (libvirt's domfsinfo needs it), eth0.
    let fs = q.ret("guest-get-fsinfo");
    let data = fs
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["mountpoint"] == "/mnt/data")
        .unwrap_or_else(|| panic!("no /mnt/data in {fs}"));
    assert_eq!(data["disk"][0]["serial"], "QGA-DISK-0", "{data}");
    assert!(
        data["disk"][0]["pci-controller"]["slot"].is_number(),
        "{data}"
    );
    let ifs = q.ret("guest-network-get-interfaces");
    assert!(
        ifs.as_array().unwrap().iter().any(|i| i["name"] == "eth0"
            && i["ip-addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["ip-address"] == "10.0.2.15"))),
        "{ifs}"
    );
    assert_eq!(q.ret("guest-ping"), json!({}));

    // exec: allowed here by `allow`; guest-file-* is not listed, so it stays off.
    let r = q.ret_args(
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "echo hi; exit 3"], "capture-output": true}),
    );
    let pid = r["pid"].as_i64().unwrap();
    let st = q.wait_exec(pid);
    assert_eq!(st["exitcode"], 3, "{st}");
    assert_eq!(st["out-data"], "aGkK", "{st}");
    let e = q.ask(&json!({"execute": "guest-file-open", "arguments": {"path": "/etc/os-release"}}));
    assert_eq!(e["error"]["class"], "CommandNotFound", "{e}");

    // `majordomo --diagnose` (doctor --virtio) inside the guest: driver, both ports, held by
    // the running agent. At boot the control port can get its name after the agent started,
    // which then finds it within 250 ms: a few seconds are allowed for that.
    let diagnose = |q: &mut Qga| {
        let r = q.ret_args(
            "guest-exec",
            json!({"path": "/agent", "arg": ["--json", "--diagnose"], "capture-output": true}),
        );
        let st = q.wait_exec(r["pid"].as_i64().unwrap());
        assert_eq!(st["exitcode"], 0, "{st}");
        let out = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            st["out-data"].as_str().unwrap_or(""),
        )
        .unwrap();
        serde_json::from_slice::<Value>(&out)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
    };
    let held = |doc: &Value| {
        doc["checks"].as_array().is_some_and(|cs| {
            cs.iter()
                .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("org.")))
                .all(|c| c["detail"].as_str().is_some_and(|d| d.contains("held by")))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut doc = diagnose(&mut q);
    while !held(&doc) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        doc = diagnose(&mut q);
    }
    let find = |n: &str| {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {n} in {doc}"))
    };
    assert_eq!(find("driver")["status"], "OK", "{doc}");
    for port in ["org.qemu.guest_agent.0", "org.majordomo.0"] {
        let c = find(port);
        assert_eq!(c["status"], "OK", "{c}");
        assert!(c["detail"].as_str().unwrap().contains("held by"), "{c}");
    }

    // fsfreeze, and the automatic thaw after fsfreeze_timeout (2 s here).
    let n = q.ret("guest-fsfreeze-freeze");
    assert!(n.as_i64().unwrap() >= 1, "{n}");
    assert_eq!(q.ret("guest-fsfreeze-status"), "frozen");
    let deadline = Instant::now() + Duration::from_secs(60);
    while q.ret("guest-fsfreeze-status") != "thawed" {
        assert!(Instant::now() < deadline, "never thawed");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Resync after garbage and a half-written request.
    q.s.write_all(b"hello {\"execute\":\"guest-get-os").unwrap();
    q.sync(Duration::from_secs(30));
    assert_eq!(q.ret("guest-ping"), json!({}));
    drop(q);

    // Proxmox: a fresh connection per command, sync-delimited + command in one write, the
    // buffer matched by qemu-server's ^.*\xff([^\n]+}\r?\n[^\n]+})\r?\n(.*)$ (no newline may
    // come before the 0xFF: Perl's `.` does not cross lines).
    for n in 1..=3u64 {
        let mut p = Qga::connect(&sock);
        let id = 42_420_000 + n; // Proxmox: <pid>0<seq>
        p.s.write_all(format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n{{\"execute\":\"guest-get-host-name\",\"arguments\":{{}}}}\n").as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (a, b) = loop {
            if let Some(ff) = p.buf.iter().position(|&x| x == 0xFF) {
                assert!(
                    !p.buf[..ff].contains(&b'\n'),
                    "a line before the 0xFF breaks Proxmox's regex: {:?}",
                    String::from_utf8_lossy(&p.buf)
                );
                let rest = &p.buf[ff + 1..];
                let lines: Vec<&[u8]> = rest.split(|&x| x == b'\n').collect();
                if lines.len() >= 3 {
                    break (lines[0].to_vec(), lines[1].to_vec());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?}",
                String::from_utf8_lossy(&p.buf)
            );
            p.fill();
        };
        assert!(a.ends_with(b"}") && b.ends_with(b"}"));
        let a: Value = serde_json::from_slice(&a).unwrap();
        let b: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(a["return"], id);
        assert_eq!(b["return"]["host-name"], "qga-guest", "{b}");
    }

    // The second port: the instance protocol, behind the read-only allow-list, with the
    // metrics pushed; and again after the host reconnects.
    let ctl = PathBuf::from(format!("{}.org.majordomo.0", sock.display()));
    for round in 0..2 {
        let mut c = Qga::connect(&ctl);
        c.s.write_all(b"{\"id\":1,\"cmd\":\"status\"}\n{\"id\":2,\"cmd\":\"shutdown\"}\n{\"id\":3,\"cmd\":\"ping\"}\n").unwrap();
        let mut replies = Vec::new();
        let mut metrics = None;
        while replies.len() < 3 || metrics.is_none() {
            let l = c.line();
            let v: Value = serde_json::from_slice(&l)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&l)));
            if v["msg"]["topic"] == "$sys.metrics" {
                metrics = Some(v);
            } else {
                replies.push(v);
            }
        }
        assert_eq!(replies[0]["id"], 1, "round {round}: {replies:?}");
        assert!(replies[0]["ok"]["pid"].is_number(), "{}", replies[0]);
        assert_eq!(replies[1]["id"], 2);
        assert_eq!(replies[1]["error"]["code"], "forbidden", "{}", replies[1]);
        assert_eq!(replies[2], json!({"id": 3, "ok": "pong"}));
        let m = metrics.unwrap();
        assert!(m["msg"]["data"]["memory"]["total"].is_number(), "{m}");
    }

    // The agent kept running through it all (never respawned).
    let console = vm.console();
    assert!(
        !console.contains("agent-exit"),
        "the agent exited:\n{console}"
    );
}

impl Qga {
    fn ret_args(&mut self, cmd: &str, args: Value) -> Value {
        let v = self.ask(&json!({"execute": cmd, "arguments": args}));
        assert!(v.get("return").is_some(), "{cmd}: {v}");
        v["return"].clone()
    }

    fn wait_exec(&mut self, pid: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.ret_args("guest-exec-status", json!({"pid": pid}));
            if st["exited"] == true {
                return st;
            }
            assert!(Instant::now() < deadline, "exec never ended: {st}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
