//! Black-box tests of the foundation: the real binary, its socket, files and signals.
//! Test names follow the README's sections.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::{Home, eventually, stderr, stdout};
use majordomo_client::ClientError;
use majordomo_proto::ErrorCode;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn line_client(socket: &std::path::Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn roundtrip(r: &mut BufReader<UnixStream>, w: &mut UnixStream, line: &[u8]) -> Value {
    w.write_all(line).unwrap();
    w.write_all(b"\n").unwrap();
    let mut out = String::new();
    r.read_line(&mut out).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("reply {out:?} is not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_status_json_has_every_field() {
    let home = Home::new();
    let d = home.start("default");
    let out = home.cli("default", &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_str(&stdout(&out)).unwrap();
    for field in [
        "pid",
        "instance",
        "version",
        "uptime_s",
        "socket",
        "config_path",
        "config_generation",
        "last_reload",
        "subsystems",
    ] {
        assert!(s.get(field).is_some(), "status lacks {field}: {s}");
    }
    assert_eq!(s["pid"], json!(d.pid()));
    assert_eq!(s["instance"], "default");
    assert_eq!(s["config_source"], "embedded-default");
    assert_eq!(s["subsystems"]["control"]["state"], "running");
    // Human output names the places too.
    let human = stdout(&home.cli("default", &["status"]));
    assert!(human.contains(&d.socket.display().to_string()), "{human}");
    assert!(stdout(&home.cli("default", &["ping"])).starts_with("pong"));
    // The start-up banner says where things live.
    let banner = d.stderr_text();
    assert!(
        banner.contains("socket") && banner.contains(&d.socket.display().to_string()),
        "{banner}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_side_by_side() {
    let home = Home::new();
    let a = home.start("alpha");
    let b = home.start("beta");
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let (sa, sb) = (ca.status().await.unwrap(), cb.status().await.unwrap());
    assert_eq!(sa.instance, "alpha");
    assert_eq!(sb.instance, "beta");
    assert_ne!(sa.pid, sb.pid);
    assert_ne!(sa.socket, sb.socket);
    assert_ne!(sa.state_dir, sb.state_dir);
    assert_ne!(sa.log_dir, sb.log_dir);
    // Each writes its own log file.
    for s in [&sa, &sb] {
        let log = std::path::Path::new(&s.log_dir).join("majordomo.log");
        assert!(
            eventually(Duration::from_secs(5), || log.exists().then_some(())).is_some(),
            "{log:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_second_run_is_refused_with_the_pid() {
    let home = Home::new();
    let d = home.start("default");
    let out = home
        .command("default")
        .arg("run")
        .output()
        .expect("second run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already running") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_stale_lock_of_a_killed_daemon_is_taken_over() {
    let home = Home::new();
    let mut d = home.start("default");
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5));
    let d2 = home.start("default");
    let s = d2.client().await.status().await.unwrap();
    assert_eq!(s.pid, d2.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_broken_config_keeps_the_old_one_and_reports_the_line() {
    let home = Home::new();
    home.write_config("default", "[log]\nlevel = \"info\"\n");
    let d = home.start("default");
    let mut c = d.client().await;
    let before = c.status().await.unwrap();
    assert_eq!(before.config_source, "file");
    home.write_config(
        "default",
        "[log]\nlevel = \"debug\"\n\n[control]\nmax_line = \"lots\"\nbogus = true\n",
    );
    let err = c.reload().await.unwrap_err();
    let ClientError::Remote(body) = err else {
        panic!("expected a refusal")
    };
    assert_eq!(body.code, ErrorCode::InvalidConfig);
    let details: Vec<String> = serde_json::from_value(body.details.unwrap()).unwrap();
    let file = home.config_path("default").display().to_string();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with(&format!("{file}:5:")) && d.contains("control.max_line")),
        "{details:#?}"
    );
    let after = c.status().await.unwrap();
    assert_eq!(after.config_generation, before.config_generation);
    let last = after.last_reload.expect("recorded");
    assert!(!last.ok);
    // The old config is still in force.
    assert_eq!(c.config().await.unwrap()["log"]["level"], "info");
    // The CLI exits 64 and prints the line.
    let out = home.cli("default", &["reload"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains(&format!("{file}:5:")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_only_what_changed() {
    let home = Home::new();
    home.write_config("default", "[daemon]\nwatch_config = false\n");
    let d = home.start("default");
    let mut c = d.client().await;
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[log]\nlevel = \"debug\"\n",
    );
    let o = c.reload().await.unwrap();
    assert!(o.ok);
    assert_eq!(o.generation, 2);
    assert_eq!(o.updated, vec!["log".to_string()]);
    assert!(o.restarted.is_empty(), "{o:?}");
    assert_eq!(c.config().await.unwrap()["log"]["level"], "debug");
    // Moving the socket restarts only the control subsystem; the new socket answers.
    let new_socket = home.path().join("moved.sock");
    home.write_config(
        "default",
        &format!(
            "[daemon]\nwatch_config = false\n[log]\nlevel = \"debug\"\n[paths]\nsocket = \"{}\"\n",
            new_socket.display()
        ),
    );
    let o = c.reload().await.unwrap();
    assert_eq!(o.restarted, vec!["control".to_string()]);
    let mut c2 = majordomo_client::Client::connect(
        &majordomo_client::ConnectOptions::new(&new_socket).wait(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(c2.status().await.unwrap().config_generation, 3);
    // The CLI finds the moved socket through the config file.
    assert!(home.cli("default", &["ping"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_config_file_edit() {
    let home = Home::new();
    home.write_config("default", "[log]\nlevel = \"info\"\n");
    let d = home.start("default");
    let mut c = d.client().await;
    home.write_config("default", "[log]\nlevel = \"warn\"\n");
    let seen = eventually(Duration::from_secs(10), || {
        let out = home.cli("default", &["status", "--json"]);
        let s: Value = serde_json::from_str(&stdout(&out)).ok()?;
        // The generation moves before the sections are applied; the reload's record after.
        (s["config_generation"] == 2 && !s["last_reload"].is_null()).then_some(s)
    });
    let s = seen.unwrap_or_else(|| panic!("the edit was not picked up:\n{}", d.stderr_text()));
    assert_eq!(s["last_reload"]["trigger"], "file-change");
    assert_eq!(c.config().await.unwrap()["log"]["level"], "warn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_sighup() {
    let home = Home::new();
    home.write_config("default", "[daemon]\nwatch_config = false\n");
    let d = home.start("default");
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[log]\nlevel = \"warn\"\n",
    );
    d.signal(Signal::SIGHUP);
    let mut c = d.client().await;
    // The generation moves when the new config is in force, before its sections are applied;
    // `last_reload` is recorded when the apply is over.
    for _ in 0..500 {
        let s = c.status().await.unwrap();
        if s.config_generation == 2 && s.last_reload.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = c.status().await.unwrap();
    assert_eq!(s.config_generation, 2);
    assert_eq!(s.last_reload.unwrap().trigger, "signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_sigterm_drains_and_exits_0() {
    let home = Home::new();
    let mut d = home.start("default");
    let socket = d.socket.clone();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", d.stderr_text());
    assert!(!socket.exists(), "socket removed on exit");
    assert!(d.stderr_text().contains("stopped cleanly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_shutdown_command_stops_the_daemon() {
    let home = Home::new();
    let mut d = home.start("default");
    let out = home.cli("default", &["shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));
    // Talking to a stopped instance says so, clearly.
    let out = home.cli("default", &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no instance 'default' is running"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_systemd_notify_protocol() {
    let home = Home::new();
    let notify_path = home.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    home.write_config("default", "[daemon]\nwatch_config = false\n");
    let mut d = home.start_with("default", |c| {
        c.env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000");
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let mut recv = |seen: &mut Vec<String>, want: &str| {
        while !seen.iter().any(|m| m.contains(want)) {
            let n = sock.recv(&mut buf).expect("notify message");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    recv(&mut seen, "READY=1");
    recv(&mut seen, "WATCHDOG=1");
    let mut c = d.client().await;
    c.reload().await.unwrap();
    recv(&mut seen, "RELOADING=1");
    assert!(
        seen.iter()
            .any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC="))
    );
    d.signal(Signal::SIGTERM);
    recv(&mut seen, "STOPPING=1");
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_garbage_gets_errors_and_connections_keep_working() {
    let home = Home::new();
    let d = home.start("default");
    let (mut r, mut w) = line_client(&d.socket);
    // A second, well-behaved connection.
    let (mut r2, mut w2) = line_client(&d.socket);
    // A client that connects, sends half a line and disappears.
    {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"{\"id\":1,\"cmd\":\"sta").unwrap();
    }
    // One that connects and says nothing.
    let _silent = UnixStream::connect(&d.socket).unwrap();

    let v = roundtrip(&mut r, &mut w, b"{this is not json");
    assert_eq!(v["error"]["code"], "bad_json");
    let v = roundtrip(&mut r, &mut w, b"[1,2,3]");
    assert_eq!(v["error"]["code"], "bad_request");
    let v = roundtrip(&mut r, &mut w, br#"{"id":9,"cmd":"frobnicate"}"#);
    assert_eq!(v["error"]["code"], "unknown_command");
    assert_eq!(v["id"], 9);
    let v = roundtrip(&mut r, &mut w, &[0xff, 0xfe, 0x00, b'{']);
    assert_eq!(v["error"]["code"], "bad_json");
    // Same connection still works.
    let v = roundtrip(&mut r, &mut w, br#"{"id":"a","cmd":"ping"}"#);
    assert_eq!(v, json!({"id":"a","ok":"pong"}));
    let v = roundtrip(&mut r2, &mut w2, br#"{"id":1,"cmd":"hello","protocol":1}"#);
    assert_eq!(v["ok"]["protocol"], 1);
    assert_eq!(v["ok"]["instance"], "default");

    // An over-long line: an error, then the connection is closed.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let _ = w.write_all(&big);
    let mut out = String::new();
    r.read_line(&mut out).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "too_large");
    out.clear();
    assert_eq!(
        r.read_line(&mut out).unwrap_or(0),
        0,
        "closed after too_large"
    );
    // Others are unaffected.
    let v = roundtrip(&mut r2, &mut w2, br#"{"id":2,"cmd":"status"}"#);
    assert_eq!(v["ok"]["instance"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_seed_001_commands() {
    let home = Home::new();
    let d = home.start("default");
    let (mut r, mut w) = line_client(&d.socket);
    let v = roundtrip(&mut r, &mut w, br#"{"command":"get_status"}"#);
    assert_eq!(v["status"], "Running");
    assert_eq!(v["instance_id"], "default");
    let v = roundtrip(&mut r, &mut w, br#"{"command":"ping"}"#);
    assert_eq!(v["status"], "pong");
    let v = roundtrip(&mut r, &mut w, br#"{"command":"get_config"}"#);
    assert_eq!(v["log"]["level"], "info");
    let v = roundtrip(&mut r, &mut w, br#"{"command":"restart"}"#);
    assert_eq!(v["status"], "restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_permissions_and_token() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    home.write_config("default", "[control]\ntoken = \"t0ps3cret\"\n");
    let d = home.start("default");
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (mut r, mut w) = line_client(&d.socket);
    let v = roundtrip(&mut r, &mut w, br#"{"id":1,"cmd":"status"}"#);
    assert_eq!(v["error"]["code"], "forbidden");
    let v = roundtrip(&mut r, &mut w, br#"{"id":2,"cmd":"hello","token":"wrong"}"#);
    assert_eq!(v["error"]["code"], "forbidden");
    let v = roundtrip(
        &mut r,
        &mut w,
        br#"{"id":3,"cmd":"hello","token":"t0ps3cret"}"#,
    );
    assert!(v.get("ok").is_some(), "{v}");
    let v = roundtrip(&mut r, &mut w, br#"{"id":4,"cmd":"config"}"#);
    assert_eq!(v["ok"]["control"]["token"], "<redacted>");
    // The CLI passes the token from MAJORDOMO_TOKEN.
    let out = home
        .command("default")
        .env("MAJORDOMO_TOKEN", "t0ps3cret")
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("t0ps3cret"));
    assert!(!home.cli("default", &["status"]).status.success());
}

#[test]
fn config_default_passes_config_check() {
    let home = Home::new();
    let default = home.cli("default", &["config", "default"]);
    assert!(default.status.success());
    let mut check = home
        .command("default")
        .args(["config", "check", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(&default.stdout)
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("OK"));
}

#[test]
fn config_check_reports_every_problem_and_exits_64() {
    let home = Home::new();
    let file = home.path().join("bad.toml");
    std::fs::write(
        &file,
        "[log]\nlevel = \"info\"\nmax_files = \"many\"\n\n[control]\nsocket_mode = \"0666\"\n\n[whatever]\nx = 1\n",
    )
    .unwrap();
    let out = home.cli("default", &["config", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    let f = file.display().to_string();
    assert!(
        err.contains(&format!("{f}:3:")) && err.contains("log.max_files"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:8:")) && err.contains("unknown section `whatever`"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // Environment overrides are checked too, and named.
    let out = home
        .command("default")
        .env("MAJORDOMO_LOG__MAX_FILES", "nope")
        .args(["config", "check", "-"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("environment variable MAJORDOMO_LOG__MAX_FILES"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_bad_config_at_start_exits_64() {
    let home = Home::new();
    home.write_config("default", "[log]\nlevel = 5\n");
    let out = home.command("default").arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("config.toml:2:"), "{}", stderr(&out));
    // Bad usage, too.
    let out = home.cli("default", &["frobnicate"]);
    assert_eq!(out.status.code(), Some(64));
    let out = home.command("Bad Name").arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_env_and_flag_layers() {
    let home = Home::new();
    home.write_config("default", "[log]\nlevel = \"warn\"\nmax_files = 2\n");
    let d = home.start_with("default", |c| {
        c.env("MAJORDOMO_LOG__MAX_FILES", "7")
            .env("MAJORDOMO_LOG__LEVEL", "error")
            .args(["--log-level", "debug"]);
    });
    let cfg = d.client().await.config().await.unwrap();
    assert_eq!(cfg["log"]["max_files"], 7);
    assert_eq!(cfg["log"]["level"], "debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_many_connections_at_once() {
    let home = Home::new();
    let d = home.start("default");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let socket = d.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = majordomo_client::Client::connect(
                &majordomo_client::ConnectOptions::new(&socket).wait(Duration::from_secs(10)),
            )
            .await
            .unwrap();
            for _ in 0..5 {
                c.ping().await.unwrap();
            }
            i
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
