//! Black-box tests of the supervisor: the real binary running real programs (`/bin/sh`
//! scripts), observed through `ps`, the CLI, files the programs write and `/proc`.
//! Test names follow the README's "Supervised programs" section.

use std::path::Path;
use std::time::Duration;

use crate::common::{Home, eventually, raw_call, stderr, stdout};
use nix::sys::signal::Signal;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// A config with `[daemon] watch_config = false` and the given program tables.
fn config(programs: &str) -> String {
    format!("[daemon]\nwatch_config = false\ngrace_period = \"20s\"\n\n{programs}")
}

/// A `[[program]]` running `script` under /bin/sh, with extra TOML lines.
fn sh(name: &str, script: &str, extra: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[[program]]\nname = \"{name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"{script}\"]\n{extra}\n"
    )
}

fn ps_all(socket: &Path) -> Vec<Value> {
    raw_call(socket, r#"{"id":1,"cmd":"ps"}"#)
        .and_then(|v| v["ok"]["programs"].as_array().cloned())
        .unwrap_or_default()
}

fn ps(socket: &Path, name: &str) -> Value {
    ps_all(socket)
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or(Value::Null)
}

/// Waits until `name` satisfies `pred`, returning its row.
fn wait_for(socket: &Path, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(LONG, || {
        let p = ps(socket, name);
        pred(&p).then_some(p)
    })
    .unwrap_or_else(|| panic!("{name}: never {what}; last: {}", ps(socket, name)))
}

fn state_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |p: &Value| p["state"] == s
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> i32 {
    eventually(LONG, || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .unwrap_or_else(|| panic!("{} never written", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_restart_on_failure_with_growing_backoff() {
    let home = Home::new();
    home.write_config(
        "default",
        &config(&sh(
            "crashy",
            "echo started; exit 7",
            "backoff_initial = \"100ms\"\nbackoff_max = \"30s\"\nstart_limit = { burst = 0 }",
        )),
    );
    let d = home.start("default");
    // While in backoff after run k+1, `restarts` is k and the delay cap is 100 ms × 2^k.
    let mut biggest = 0;
    let last = eventually(LONG, || {
        let p = ps(&d.socket, "crashy");
        if p["state"] == "backoff" {
            let restarts = p["restarts"].as_u64().unwrap();
            let cap = p["backoff_cap_ms"].as_u64().unwrap();
            assert_eq!(cap, 100 << restarts, "cap must double per failure: {p}");
            biggest = biggest.max(cap);
        }
        (biggest >= 800).then_some(p)
    })
    .expect("the backoff never reached 800 ms");
    assert_eq!(last["last_exit_code"], 7, "{last}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("exited with code 7")
    );
    // Its output and the supervisor's notes are in its log file.
    let log = std::fs::read_to_string(last["log_file"].as_str().unwrap()).unwrap();
    assert!(log.contains("started\n"), "{log}");
    assert!(log.contains("[majordomo] exited with code 7"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_start_limit_then_failed_and_retry_forever() {
    let home = Home::new();
    home.write_config(
        "default",
        &config(&format!(
            "{}{}",
            sh(
                "gives-up",
                "exit 1",
                "backoff_initial = \"0s\"\nbackoff_max = \"0s\"\nstart_limit = { burst = 3, interval = \"1h\" }"
            ),
            sh(
                "keeps-trying",
                "exit 1",
                "backoff_initial = \"0s\"\nbackoff_max = \"100ms\"\nstart_limit = { burst = 2, interval = \"1h\", retry_forever = true }"
            )
        )),
    );
    let d = home.start("default");
    let p = wait_for(&d.socket, "gives-up", "failed", state_is("failed"));
    assert_eq!(p["restarts"], 2, "3 starts = 2 restarts: {p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("start limit reached"),
        "{p}"
    );
    // retry_forever: never failed, keeps restarting past the burst.
    let p = eventually(LONG, || {
        let p = ps(&d.socket, "keeps-trying");
        assert_ne!(p["state"], "failed", "{p}");
        (p["restarts"].as_u64().unwrap_or(0) >= 5).then_some(p)
    })
    .expect("keeps-trying stopped retrying");
    assert!(p["restarts"].as_u64().unwrap() >= 5);
    // A person can start a failed program again.
    let out = home.cli("default", &["start", "gives-up"]);
    let text = stdout(&out);
    assert!(text.contains("gives-up"), "{text}{}", stderr(&out));
    wait_for(&d.socket, "gives-up", "failed again", state_is("failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_ignoring_sigterm_are_killed_with_their_children() {
    let home = Home::new();
    let dir = home.path().to_path_buf();
    home.write_config(
        "default",
        &config(&sh(
            "stubborn",
            &format!(
                "trap '' TERM; sleep 1000 & echo $! > {d}/child.pid; echo $$ > {d}/main.pid; while :; do sleep 0.1; done",
                d = dir.display()
            ),
            "stop_timeout = \"1s\"",
        )),
    );
    let d = home.start("default");
    let main = read_pid(&dir.join("main.pid"));
    let child = read_pid(&dir.join("child.pid"));
    assert!(alive(main) && alive(child));
    let out = home.cli("default", &["stop", "stubborn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("stopped"), "{}", stdout(&out));
    assert!(
        eventually(LONG, || (!alive(main) && !alive(child)).then_some(())).is_some(),
        "main {main} or child {child} survived the stop"
    );
    let p = ps(&d.socket, "stubborn");
    assert_eq!(p["state"], "stopped", "{p}");
    let log = std::fs::read_to_string(p["log_file"].as_str().unwrap()).unwrap();
    assert!(log.contains("did not stop within stop_timeout"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_depends_on_orders_start_and_stop() {
    let home = Home::new();
    let dir = home.path().to_path_buf();
    let order = dir.join("order");
    // Each program notes its start, marks itself ready (a file its readiness command tests),
    // and notes its stop when it gets SIGTERM.
    let prog = |name: &str, deps: &str| {
        sh(
            name,
            &format!(
                "echo start {name} >> {o}; touch {d}/{name}.ready; trap 'echo stop {name} >> {o}; exit 0' TERM; while :; do sleep 0.05; done",
                o = order.display(),
                d = dir.display()
            ),
            &format!(
                "depends_on = [{deps}]\nready = \"command:/bin/test -e {}/{name}.ready\"",
                dir.display()
            ),
        )
    };
    // Declared in the wrong order on purpose.
    home.write_config(
        "default",
        &config(&format!(
            "{}{}{}",
            prog("web", "\"api\""),
            prog("api", "\"db\""),
            prog("db", "")
        )),
    );
    let mut d = home.start("default");
    wait_for(&d.socket, "web", "ready", state_is("ready"));
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(LONG).success());
    let lines: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        [
            "start db",
            "start api",
            "start web",
            "stop web",
            "stop api",
            "stop db"
        ],
        "start in dependency order, stop in reverse"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_readiness_gate_holds_dependents() {
    let home = Home::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    home.write_config(
        "default",
        &config(&format!(
            "{}{}",
            sh(
                "server",
                "exec sleep 1000",
                &format!("ready = \"tcp:{port}\"")
            ),
            sh("client", "exec sleep 1000", "depends_on = [\"server\"]")
        )),
    );
    let d = home.start("default");
    let p = wait_for(&d.socket, "server", "running", state_is("running"));
    assert!(p["pid"].as_u64().is_some());
    std::thread::sleep(Duration::from_millis(300));
    let c = ps(&d.socket, "client");
    assert_eq!(c["state"], "waiting", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("server"), "{c}");
    // The port opens: the server is ready, the client starts.
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    wait_for(&d.socket, "server", "ready", state_is("ready"));
    wait_for(&d.socket, "client", "ready", state_is("ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_failing_health_check_restarts() {
    let home = Home::new();
    let flag = home.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    home.write_config(
        "default",
        &config(&sh(
            "svc",
            "exec sleep 1000",
            &format!(
                "health = {{ check = \"command:/bin/test -e {}\", interval = \"200ms\", timeout = \"5s\", failures = 2 }}\nbackoff_initial = \"0s\"\nbackoff_max = \"0s\"",
                flag.display()
            ),
        )),
    );
    let d = home.start("default");
    let first = wait_for(&d.socket, "svc", "ready", state_is("ready"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        ps(&d.socket, "svc")["pid"],
        first["pid"],
        "healthy: not restarted"
    );
    std::fs::remove_file(&flag).unwrap();
    let p = wait_for(&d.socket, "svc", "restarted", |p| {
        p["restarts"].as_u64().unwrap_or(0) >= 1
    });
    let log = std::fs::read_to_string(p["log_file"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("health check failed 2 times in a row"),
        "{log}"
    );
    std::fs::write(&flag, "").unwrap();
    let p = wait_for(&d.socket, "svc", "ready again", state_is("ready"));
    assert_ne!(p["pid"], first["pid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_output_is_captured_and_rotated() {
    let home = Home::new();
    home.write_config(
        "default",
        &config(&(sh(
            "chatty",
            "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; exec sleep 1000",
            "log_max_size = \"8KB\"\nlog_max_files = 2",
        ) + &sh("errs", "echo to-stderr >&2; exec sleep 1000", ""))),
    );
    let d = home.start("default");
    let p = wait_for(&d.socket, "chatty", "ready", state_is("ready"));
    let log = std::path::PathBuf::from(p["log_file"].as_str().unwrap());
    eventually(LONG, || {
        let out = home.cli("default", &["logs", "chatty", "-n", "1"]);
        stdout(&out).contains("line-2999-").then_some(())
    })
    .unwrap_or_else(|| {
        let o = home.cli("default", &["logs", "chatty", "-n", "5"]);
        panic!("last line never logged: {}{}", stdout(&o), stderr(&o))
    });
    // stderr is captured too.
    eventually(LONG, || {
        stdout(&home.cli("default", &["logs", "errs"]))
            .contains("to-stderr")
            .then_some(())
    })
    .expect("stderr not captured");
    // `logs -n N` prints the last N lines.
    let out = stdout(&home.cli("default", &["logs", "chatty", "-n", "2"]));
    assert_eq!(out.lines().count(), 2, "{out}");
    // Rotated: the current file and two older ones, nothing more, none much above the limit.
    let name = |s: &str| {
        let mut p = log.clone().into_os_string();
        p.push(s);
        std::path::PathBuf::from(p)
    };
    assert!(
        name(".1").exists() && name(".2").exists(),
        "rotated files missing"
    );
    assert!(!name(".3").exists(), "more files kept than log_max_files");
    for f in [log.clone(), name(".1"), name(".2")] {
        assert!(
            std::fs::metadata(&f).unwrap().len() < 8000 + 17 * 1024,
            "{f:?}"
        );
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_reload_restarts_only_changed_programs() {
    let home = Home::new();
    let base = |b_arg: &str| {
        config(&format!(
            "{}{}",
            sh("a", "exec sleep 1000", ""),
            sh("b", &format!("exec sleep {b_arg}"), "")
        ))
    };
    home.write_config("default", &base("1000"));
    let d = home.start("default");
    let a = wait_for(&d.socket, "a", "ready", state_is("ready"))["pid"].clone();
    let b = wait_for(&d.socket, "b", "ready", state_is("ready"))["pid"].clone();
    home.write_config(
        "default",
        &format!("{}{}", base("1001"), sh("c", "exec sleep 1000", "")),
    );
    let out = home.cli("default", &["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = wait_for(&d.socket, "c", "ready", state_is("ready"));
    assert!(c["pid"].is_u64());
    let b2 = wait_for(&d.socket, "b", "restarted", |p| {
        p["state"] == "ready" && p["pid"] != b
    })["pid"]
        .clone();
    assert!(b2.is_u64(), "b changed: restarted");
    assert_eq!(ps(&d.socket, "a")["pid"], a, "a unchanged: same process");
    assert!(!alive(b.as_i64().unwrap() as i32), "old b stopped");
    // Removing a program stops it.
    home.write_config("default", &base("1001"));
    assert!(home.cli("default", &["reload"]).status.success());
    // The supervisor applies a reload live, right after the reply.
    eventually(LONG, || ps(&d.socket, "c").is_null().then_some(())).expect("c not removed");
    let c_pid = c["pid"].as_i64().unwrap() as i32;
    eventually(LONG, || (!alive(c_pid)).then_some(())).expect("c still running");
    assert_eq!(ps(&d.socket, "a")["pid"], a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_sigkill_of_the_daemon_leaves_no_orphan() {
    let home = Home::new();
    let dir = home.path().to_path_buf();
    home.write_config(
        "default",
        &config(&sh(
            "tree",
            &format!(
                "sleep 1000 & echo $! > {d}/child.pid; echo $$ > {d}/main.pid; wait",
                d = dir.display()
            ),
            "",
        )),
    );
    let mut d = home.start("default");
    let main = read_pid(&dir.join("main.pid"));
    let child = read_pid(&dir.join("child.pid"));
    assert!(alive(main) && alive(child));
    d.signal(Signal::SIGKILL);
    d.wait_exit(LONG);
    assert!(
        eventually(LONG, || (!alive(main) && !alive(child)).then_some(())).is_some(),
        "program {main} (alive: {}) or its child {child} (alive: {}) outlived the killed daemon: {} / {}",
        alive(main),
        alive(child),
        std::fs::read_to_string(format!("/proc/{main}/stat")).unwrap_or_default(),
        std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_bad_programs_fail_alone() {
    let home = Home::new();
    home.write_config(
        "default",
        &config(&format!(
            "{}{}{}[[program]]\nname = \"nothere\"\ncommand = \"/nonexistent/bin\"\n",
            sh("good", "exec sleep 1000", ""),
            sh("nocwd", "exec sleep 1000", "cwd = \"/nonexistent/dir\""),
            sh(
                "nobody-knows",
                "exec sleep 1000",
                "user = \"no-such-user-xyz\""
            ),
        )),
    );
    let d = home.start("default");
    wait_for(&d.socket, "good", "ready", state_is("ready"));
    for (name, reason) in [
        ("nothere", "/nonexistent/bin"),
        ("nocwd", "/nonexistent/dir"),
        ("nobody-knows", "no-such-user-xyz"),
    ] {
        let p = wait_for(&d.socket, name, "failed", state_is("failed"));
        assert!(p["detail"].as_str().unwrap().contains(reason), "{p}");
    }
    // `ps` shows the reason to a person too.
    let out = stdout(&home.cli("default", &["ps"]));
    assert!(out.contains("not found") && out.contains("good"), "{out}");
    // `status` names the failed programs.
    let status = stdout(&home.cli("default", &["status"]));
    assert!(
        status.contains("3 failed") && status.contains("nocwd"),
        "{status}"
    );
}

#[test]
fn programs_config_check_reports_bad_programs_with_lines() {
    let home = Home::new();
    let path = home.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[program]]\nname = \"a\"\ncommand = \"/bin/true\"\ndepends_on = [\"ghost\"]\n\n\
         [[program]]\nname = \"a\"\ncommand = \"/bin/true\"\nstop_signal = \"SIGNOPE\"\n\n\
         [[program]]\nname = \"x\"\ndepends_on = [\"y\"]\n\n\
         [[program]]\nname = \"y\"\ncommand = \"/bin/true\"\ndepends_on = [\"x\"]\nready = \"tcp:99999\"\n",
    )
    .unwrap();
    let out = home.cli("default", &["config", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    let f = path.display().to_string();
    for (line, what) in [
        (4, "unknown program \"ghost\""),
        (7, "a second program named \"a\""),
        (9, "\"SIGNOPE\" is not a signal name"),
        (12, "has no command"),
        (13, "dependency cycle"),
        (19, "is not a TCP port"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{f}:{line}:")) && l.contains(what)),
            "expected {what:?} at line {line}:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_cli_ps_signal_stop_start() {
    let home = Home::new();
    let dir = home.path().to_path_buf();
    home.write_config(
        "default",
        &config(&sh(
            "svc",
            &format!(
                "trap 'echo got-usr1 > {d}/usr1' USR1; while :; do sleep 0.05; done",
                d = dir.display()
            ),
            "autostart = false",
        )),
    );
    let d = home.start("default");
    assert_eq!(ps(&d.socket, "svc")["state"], "stopped");
    let out = home.cli("default", &["start", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p = wait_for(&d.socket, "svc", "ready", state_is("ready"));
    let human = stdout(&home.cli("default", &["ps"]));
    assert!(
        human.contains("svc") && human.contains("ready") && human.contains(&p["pid"].to_string()),
        "{human}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&home.cli("default", &["ps", "--json"]))).unwrap();
    let row = &json["programs"][0];
    for field in [
        "state",
        "pid",
        "uptime_s",
        "restarts",
        "last_exit_code",
        "last_signal",
        "cpu_s",
        "rss_bytes",
    ] {
        assert!(row.get(field).is_some(), "ps lacks {field}: {row}");
    }
    let out = home.cli("default", &["signal", "svc", "USR1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(LONG, || dir.join("usr1").exists().then_some(())).is_some(),
        "the program never got SIGUSR1"
    );
    let out = home.cli("default", &["signal", "svc", "NOPE"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a signal name"),
        "{}",
        stderr(&out)
    );
    let out = home.cli("default", &["stop", "nosuch"]);
    assert!(
        stderr(&out).contains("unknown program \"nosuch\""),
        "{}",
        stderr(&out)
    );
    let out = home.cli("default", &["stop", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ps(&d.socket, "svc")["state"], "stopped");
    assert!(!alive(p["pid"].as_i64().unwrap() as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_memory_limit_restarts() {
    let home = Home::new();
    home.write_config(
        "default",
        &config(&sh(
            "hog",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo grown; while :; do sleep 1; done",
            "max_memory = \"20MB\"\nbackoff_initial = \"5s\"\nbackoff_max = \"5s\"",
        )),
    );
    let d = home.start("default");
    let p = wait_for(&d.socket, "hog", "restarted for memory", |p| {
        p["detail"]
            .as_str()
            .is_some_and(|s| s.contains("above max_memory"))
    });
    assert!(
        matches!(p["state"].as_str(), Some("exited" | "backoff")),
        "{p}"
    );
}

/// The commands take typed arguments: a wrong type or an unknown field is `bad_request` naming
/// the field, and `name` is accepted for one program wherever `names` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_commands_are_typed_and_take_one_name() {
    let home = Home::new();
    home.write_config("default", &config(&sh("svc", "exec sleep 1000", "")));
    let d = home.start("default");
    let first = wait_for(&d.socket, "svc", "ready", state_is("ready"));
    let call = |line: &str| raw_call(&d.socket, line).expect("a reply");

    let v = call(r#"{"id":1,"cmd":"restart","names":"svc"}"#);
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`names`"),
        "{v}"
    );
    let v = call(r#"{"id":1,"cmd":"stop","nmes":["svc"]}"#);
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nmes"),
        "{v}"
    );
    let v = call(r#"{"id":1,"cmd":"signal","name":"svc","signal":9}"#);
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`signal`"),
        "{v}"
    );

    let v = call(r#"{"id":1,"cmd":"ps","name":"svc"}"#);
    assert_eq!(v["ok"]["programs"].as_array().map(Vec::len), Some(1), "{v}");
    let v = call(r#"{"id":1,"cmd":"restart","name":"svc"}"#);
    assert_eq!(v["ok"]["programs"][0]["name"], "svc", "{v}");
    let p = wait_for(&d.socket, "svc", "ready again", state_is("ready"));
    assert_ne!(p["pid"], first["pid"], "restarted");
}
