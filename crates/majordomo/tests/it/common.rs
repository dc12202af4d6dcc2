//! Test harness: the real `majordomo` binary in a temporary `--home`, driven through its real
//! socket (with `majordomo-client`) and its real CLI. Unix only: the Windows binary is driven
//! under Wine by the CI smoke test instead.
#![allow(dead_code)]
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use majordomo_client::{Client, ConnectOptions};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_majordomo");

/// A temporary home that several instances can share.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("mj")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self, instance: &str) -> PathBuf {
        self.path().join(instance).join("config.toml")
    }

    pub fn socket(&self, instance: &str) -> PathBuf {
        self.path().join(instance).join("majordomo.sock")
    }

    pub fn write_config(&self, instance: &str, toml: &str) {
        let p = self.config_path(instance);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Write then rename, as an editor would, so the watcher never sees half a file.
        let tmp = p.with_extension("toml.tmp");
        std::fs::write(&tmp, toml).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    /// A `Command` for the binary with this home and instance, environment cleared of
    /// MAJORDOMO_* variables from the outside.
    pub fn command(&self, instance: &str) -> Command {
        let mut c = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("MAJORDOMO_") || k == "NOTIFY_SOCKET" {
                c.env_remove(k);
            }
        }
        c.arg("--home")
            .arg(self.path())
            .arg("--instance")
            .arg(instance);
        c
    }

    /// Runs a CLI verb to completion.
    pub fn cli(&self, instance: &str, args: &[&str]) -> Output {
        self.command(instance)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run majordomo")
    }

    /// Starts `majordomo run` and waits until it answers on its socket.
    pub fn start(&self, instance: &str) -> Daemon {
        self.start_with(instance, |_| {})
    }

    pub fn start_with(&self, instance: &str, tweak: impl FnOnce(&mut Command)) -> Daemon {
        let log = self.path().join(format!("{instance}.stderr"));
        let mut cmd = self.command(instance);
        cmd.arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("spawn majordomo run");
        let d = Daemon {
            child: Some(child),
            socket: self.socket(instance),
            stderr: log,
            instance: instance.to_string(),
        };
        d.wait_ready();
        d
    }
}

/// A running daemon; killed on drop if the test did not stop it.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub stderr: PathBuf,
    pub instance: String,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until the daemon answers and none of its subsystems is still `starting`.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = raw_call(&self.socket, r#"{"id":0,"cmd":"status"}"#) {
                let starting = status["ok"]["subsystems"]
                    .as_object()
                    .is_some_and(|m| m.values().any(|s| s["state"] == "starting"));
                if !starting {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "daemon did not come up; stderr:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    pub async fn client(&self) -> Client {
        Client::connect(&ConnectOptions::new(&self.socket).wait(Duration::from_secs(10)))
            .await
            .expect("connect")
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends a signal (Unix).
    #[cfg(unix)]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("still owned");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("daemon did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request line over a fresh connection; `None` if the daemon does not answer.
pub fn raw_call(socket: &Path, line: &str) -> Option<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(line.as_bytes()).ok()?;
    s.write_all(b"\n").ok()?;
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out).ok()?;
    serde_json::from_str(&out).ok()
}

/// Polls `f` until it returns `Some`, at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One raw connection speaking JSON lines.
pub struct Line {
    pub r: BufReader<UnixStream>,
    pub w: UnixStream,
}

impl Line {
    pub fn connect(d: &Daemon) -> Self {
        let s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }
    pub fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }
    /// The next line, or `None` at end of stream.
    pub fn next(&mut self) -> Option<Value> {
        let mut out = String::new();
        match self.r.read_line(&mut out) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"))),
        }
    }
    pub fn recv(&mut self) -> Value {
        self.next().expect("a line before end of stream")
    }
    pub fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }
    /// Whether nothing arrives within `wait`.
    pub fn quiet(&mut self, wait: Duration) -> bool {
        self.w.set_read_timeout(Some(wait)).unwrap();
        let mut out = String::new();
        let r = self.r.read_line(&mut out);
        self.w
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        match r {
            Ok(0) => true,
            Ok(_) => panic!("unexpected line {out:?}"),
            Err(_) => out.is_empty(),
        }
    }
}
