//! The scheduler, black-box: jobs seen through `job history`, persistent catch-up across a stop
//! and start, the exactly-once race between the daemon and `majordomo check`, `lock` mutual
//! exclusion between processes, `state cas` races, `notify send` delivered to a webhook.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Home, Line, eventually, stderr, stdout};

fn history(home: &Home, job: &str) -> Vec<Value> {
    let o = home.cli(
        "default",
        &["--json", "job", "history", job, "--limit", "100"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str::<Value>(&stdout(&o))
        .expect("history JSON")
        .as_array()
        .cloned()
        .expect("an array of runs")
}

fn ended(runs: &[Value]) -> Vec<&Value> {
    runs.iter().filter(|r| !r["outcome"].is_null()).collect()
}

#[test]
fn a_job_every_second_shows_in_history() {
    let home = Home::new();
    home.write_config(
        "default",
        "[[job]]\nname = \"tick\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \"echo tick $MAJORDOMO_JOB\"]\n\n\
         [[job]]\nname = \"slow\"\nschedule = \"0 0 1 1 *\"\ntimezone = \"Europe/Berlin\"\ncommand = [\"sh\", \"-c\", \"sleep 30\"]\ntimeout = \"300ms\"\n",
    );
    let _d = home.start("default");
    let runs = eventually(Duration::from_secs(10), || {
        let h = history(&home, "tick");
        (ended(&h).len() >= 3).then_some(h)
    })
    .expect("three runs within 10 s");
    let runs = ended(&runs);
    for r in &runs {
        assert_eq!(r["outcome"], "ok", "{r:#}");
        assert_eq!(r["exit_code"], 0, "{r:#}");
        assert_eq!(r["output_tail"], "tick tick\n", "{r:#}");
        assert_eq!(r["trigger"], "schedule", "{r:#}");
        assert_eq!(
            r["planned_ms"].as_i64().unwrap() % 1000,
            0,
            "every is anchored: {r:#}"
        );
    }
    // Newest first, one per second, none doubled.
    let planned: Vec<i64> = runs
        .iter()
        .map(|r| r["planned_ms"].as_i64().unwrap())
        .collect();
    for w in planned.windows(2) {
        assert!(w[0] > w[1], "{planned:?}");
    }
    // `job ls` shows both; a manual run of the slow one is killed by its timeout, tree and all.
    let o = home.cli("default", &["--json", "job", "ls"]);
    let ls: Value = serde_json::from_str(&stdout(&o)).expect("ls JSON");
    assert_eq!(ls["jobs"].as_array().unwrap().len(), 2, "{ls:#}");
    let slow = &ls["jobs"].as_array().unwrap()[0];
    assert_eq!(slow["name"], "slow");
    assert!(slow["next"].as_str().unwrap().starts_with("20"), "{slow:#}");
    let o = home.cli("default", &["job", "run", "slow"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = eventually(Duration::from_secs(10), || {
        ended(&history(&home, "slow")).first().map(|r| (*r).clone())
    })
    .expect("the slow run ends");
    assert_eq!(r["outcome"], "timed_out", "{r:#}");
    assert_eq!(r["trigger"], "manual", "{r:#}");
    // Pause holds it.
    let o = home.cli("default", &["--json", "job", "pause", "tick"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(300));
    let before = ended(&history(&home, "tick")).len();
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(ended(&history(&home, "tick")).len(), before, "paused");
    let o = home.cli("default", &["job", "history", "nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no job named \"nope\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_publish_job_publishes_each_second_and_its_history_survives_a_restart() {
    let home = Home::new();
    home.write_config(
        "default",
        "[monitor]\nenabled = false\n[[job]]\nname = \"beat\"\nevery = \"1s\"\npublish = { topic = \"beat.now\", data = { n = 1 } }\n",
    );
    let mut d = home.start("default");
    let mut sub = Line::connect(&d);
    let r = sub.call(r#"{"id":1,"cmd":"bus.sub","pattern":"beat.now"}"#);
    assert!(r["ok"]["sid"].is_number(), "{r}");
    let m = sub.recv();
    assert_eq!(m["msg"]["topic"], "beat.now", "{m}");
    assert_eq!(m["msg"]["data"], serde_json::json!({"n": 1}), "{m}");
    let runs = eventually(Duration::from_secs(10), || {
        let h = history(&home, "beat");
        (h.len() >= 2).then_some(h)
    })
    .expect("two runs within 10 s");
    for r in &runs {
        assert_eq!(r["outcome"], "ok", "{r:#}");
        assert_eq!(r["trigger"], "schedule", "{r:#}");
        assert_eq!(r["planned_ms"].as_i64().unwrap() % 1000, 0, "{r:#}");
    }
    // Written in batches (every 2 s) and at shutdown: read back after a restart.
    drop(sub);
    let o = home.cli("default", &["shutdown"]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_exit(Duration::from_secs(10));
    let _d = home.start("default");
    let after = history(&home, "beat");
    let planned: Vec<i64> = after
        .iter()
        .map(|r| r["planned_ms"].as_i64().unwrap())
        .collect();
    for r in &runs {
        assert!(
            planned.contains(&r["planned_ms"].as_i64().unwrap()),
            "{r:#} missing after the restart: {planned:?}"
        );
    }
}

#[test]
fn a_persistent_job_catches_up_once_after_downtime() {
    let home = Home::new();
    let out = home.path().join("ran.txt");
    home.write_config(
        "default",
        &format!(
            "[[job]]\nname = \"p\"\nevery = \"1s\"\npersistent = true\ncommand = [\"sh\", \"-c\", \"echo $MAJORDOMO_JOB_PLANNED >> {}\"]\n",
            out.display()
        ),
    );
    let mut d = home.start("default");
    eventually(Duration::from_secs(10), || {
        (!ended(&history(&home, "p")).is_empty()).then_some(())
    })
    .expect("a first run");
    let o = home.cli("default", &["shutdown"]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_exit(Duration::from_secs(10));
    // Three occurrences are missed while it is down.
    std::thread::sleep(Duration::from_millis(3200));
    let _d = home.start("default");
    let runs = eventually(Duration::from_secs(10), || {
        let h = history(&home, "p");
        h.iter()
            .any(|r| r["trigger"] == "catch_up" && !r["outcome"].is_null())
            .then_some(h)
    })
    .expect("a catch-up run");
    let catch_ups: Vec<&Value> = runs.iter().filter(|r| r["trigger"] == "catch_up").collect();
    assert_eq!(
        catch_ups.len(),
        1,
        "once, not once per missed occurrence: {runs:#?}"
    );
    let lines = std::fs::read_to_string(&out).unwrap();
    let mut seen = std::collections::HashSet::new();
    for l in lines.lines() {
        assert!(
            seen.insert(l.to_string()),
            "occurrence {l} ran twice:\n{lines}"
        );
    }
}

#[test]
fn daemon_and_check_started_together_run_each_occurrence_once() {
    let home = Home::new();
    let out = home.path().join("ran.txt");
    home.write_config(
        "default",
        &format!(
            "[[job]]\nname = \"once\"\nevery = \"1s\"\npersistent = true\ncommand = [\"sh\", \"-c\", \"echo $MAJORDOMO_JOB_PLANNED >> {}\"]\n",
            out.display()
        ),
    );
    // First sight (daemon down): `check` sets the baseline and runs nothing.
    let o = home.cli("default", &["check"]);
    let _ = o;
    assert!(!out.exists(), "nothing runs at first sight");
    let iterations = 20;
    let ran = || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for _ in 0..iterations {
        let before = ran();
        // Down across at least one occurrence.
        std::thread::sleep(Duration::from_millis(1050));
        let check = home
            .command("default")
            .arg("check")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn check");
        let mut d = home.start("default");
        let mut check = check;
        let _ = check.wait();
        // Up long enough for this downtime's catch-up (by either) to run: a daemon stopped
        // before its start-up catch-up claimed anything rightly leaves it to the next start,
        // which runs only the latest missed occurrence. The count is checked below.
        let _ = eventually(Duration::from_secs(10), || (ran() > before).then_some(()));
        let o = home.cli("default", &["shutdown"]);
        assert!(o.status.success(), "{}", stderr(&o));
        d.wait_exit(Duration::from_secs(10));
    }
    let lines = std::fs::read_to_string(&out).unwrap();
    let mut seen = std::collections::HashSet::new();
    for l in lines.lines() {
        assert!(
            seen.insert(l.to_string()),
            "occurrence {l} ran twice:\n{lines}"
        );
    }
    // Every downtime was caught up, by one or the other.
    assert!(seen.len() >= iterations, "{} runs:\n{lines}", seen.len());
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(home.path().join("default/state/jobs/once.json"))
            .or_else(|_| {
                // The state folder's place depends on the layout; find the record.
                find(home.path(), "once.json")
                    .map(std::fs::read_to_string)
                    .unwrap()
            })
            .unwrap(),
    )
    .unwrap();
    let runs = rec["history"].as_array().unwrap();
    let by_check = runs.iter().filter(|r| r["trigger"] == "backup").count();
    let by_daemon = runs.iter().filter(|r| r["trigger"] == "catch_up").count();
    eprintln!("catch-ups: {by_check} by check, {by_daemon} by the daemon");
    assert!(by_check + by_daemon >= 1, "{rec:#}");
}

fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir()
            && let Some(f) = find(&p, name)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn lock_excludes_between_processes_without_the_daemon() {
    let home = Home::new();
    let log = home.path().join("log.txt");
    let script = format!(
        "echo start >> {0}; sleep 0.3; echo end >> {0}",
        log.display()
    );
    let children: Vec<_> = (0..3)
        .map(|_| {
            home.command("default")
                .args(["lock", "shared", "--", "sh", "-c", &script])
                .spawn()
                .expect("spawn lock")
        })
        .collect();
    // While one holds it, a bounded wait gives up with 75.
    std::thread::sleep(Duration::from_millis(100));
    let o = home.cli(
        "default",
        &["lock", "shared", "--wait", "50ms", "--", "true"],
    );
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("still held"), "{}", stderr(&o));
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, "start\nend\n".repeat(3), "interleaved:\n{text}");
    // The command's exit code is passed through.
    let o = home.cli("default", &["lock", "shared", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
}

#[test]
fn a_socket_lock_is_released_when_its_connection_closes() {
    let home = Home::new();
    home.write_config("default", "[monitor]\nenabled = false\n");
    let d = home.start("default");
    let mut a = Line::connect(&d);
    let r = a.call(r#"{"cmd":"lock.acquire","name":"shared"}"#);
    assert_eq!(r["ok"]["acquired"], true, "{r}");
    let token = r["ok"]["token"].as_u64().expect("a token");
    // Held: another connection and another process are refused.
    let mut b = Line::connect(&d);
    let r = b.call(r#"{"cmd":"lock.acquire","name":"shared","wait_ms":0}"#);
    assert_eq!(r["ok"]["acquired"], false, "{r}");
    let o = home.cli(
        "default",
        &["lock", "shared", "--wait", "10ms", "--", "true"],
    );
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    // Released by token, taken again on the same connection.
    let r = a.call(&format!(
        r#"{{"cmd":"lock.release","name":"shared","token":{token}}}"#
    ));
    assert!(r["ok"].is_object(), "{r}");
    let r = a.call(r#"{"cmd":"lock.acquire","name":"shared"}"#);
    assert_eq!(r["ok"]["acquired"], true, "{r}");
    // The holder goes away without releasing: the waiting client gets it (long before its
    // 20 s wait ends, which would answer `acquired: false`).
    drop(a);
    let r = b.call(r#"{"cmd":"lock.acquire","name":"shared","wait_ms":20000}"#);
    assert_eq!(r["ok"]["acquired"], true, "{r}");
}

fn cas_increments(home: &Home, key: &str, n: usize) -> std::process::Child {
    // A shell loop of read + compare-and-swap, retried when another process won.
    let bin = crate::common::BIN;
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do v=$(\"{bin}\" --home \"{home}\" state get {key}); \
         v=${{v:-null}}; if [ \"$v\" = null ]; then new=1; else new=$((v+1)); fi; \
         if \"{bin}\" --home \"{home}\" state cas {key} \"$v\" $new >/dev/null; then i=$((i+1)); fi; done",
        home = home.path().display()
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("MAJORDOMO_INSTANCE")
        .spawn()
        .expect("spawn")
}

#[test]
fn state_cas_races_lose_no_update_with_and_without_the_daemon() {
    let home = Home::new();
    // Daemon down: the CLI uses the store under its lock.
    let kids: Vec<_> = (0..4).map(|_| cas_increments(&home, "n", 5)).collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let o = home.cli("default", &["state", "get", "n"]);
    assert_eq!(stdout(&o).trim(), "20", "{}", stderr(&o));
    // Daemon up: the same store through the socket.
    let d = home.start("default");
    let kids: Vec<_> = (0..4).map(|_| cas_increments(&home, "n", 5)).collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let o = home.cli("default", &["--json", "state", "get", "n"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["value"], 40, "{v}");
    assert_eq!(v["version"], 40, "{v}");
    let o = home.cli("default", &["state", "set", "doc", "{\"a\":[1,2]}"]);
    assert!(o.status.success());
    let o = home.cli("default", &["state", "cas", "doc", "{\"a\":[1]}", "3"]);
    assert_eq!(o.status.code(), Some(1), "a failed swap exits 1");
    assert_eq!(stdout(&o).trim(), "{\"a\":[1,2]}");
    drop(d);
    // Survives the daemon (kill -9 on drop): readable offline.
    let o = home.cli("default", &["state", "get", "doc"]);
    assert_eq!(stdout(&o).trim(), "{\"a\":[1,2]}");
    let o = home.cli("default", &["state", "del", "doc"]);
    assert!(o.status.success());
    let o = home.cli("default", &["state", "get", "doc"]);
    assert_eq!(o.status.code(), Some(1));
}

/// An HTTP server that answers 200 and keeps the bodies.
fn hook() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            b.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

#[test]
fn notify_send_and_a_failing_job_reach_a_webhook() {
    let home = Home::new();
    let (port, bodies) = hook();
    home.write_config(
        "default",
        &format!(
            "[[notifier]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/n\"\n\n\
             [[job]]\nname = \"bad\"\nschedule = \"0 0 1 1 *\"\ncommand = [\"sh\", \"-c\", \"echo oops; exit 3\"]\nnotify_on = [\"failure\"]\n"
        ),
    );
    let _d = home.start("default");
    let o = home.cli(
        "default",
        &[
            "notify",
            "send",
            "--title",
            "Backup done",
            "--body",
            "42 files",
            "--severity",
            "warning",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = eventually(Duration::from_secs(10), || {
        bodies.lock().unwrap().first().cloned()
    })
    .expect("the webhook got the notification");
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["labels"]["title"], "Backup done", "{v:#}");
    assert_eq!(v["labels"]["body"], "42 files", "{v:#}");
    assert_eq!(v["severity"], "warning", "{v:#}");
    assert_eq!(v["source"], "program", "{v:#}");
    // A job's failure goes the same way.
    let o = home.cli("default", &["job", "run", "bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = eventually(Duration::from_secs(10), || {
        bodies.lock().unwrap().get(1).cloned()
    })
    .expect("the job's failure notified");
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["source"], "job", "{v:#}");
    assert!(
        v["summary"].as_str().unwrap().contains("job bad failed"),
        "{v:#}"
    );
    assert!(
        v["labels"]["body"].as_str().unwrap().contains("oops"),
        "{v:#}"
    );
    // The delivery record has both.
    let o = home.cli("default", &["--json", "notify", "log"]);
    assert!(stdout(&o).contains("notify:Backup done"), "{}", stdout(&o));
    // A bad severity is refused before anything is sent.
    let o = home.cli(
        "default",
        &["notify", "send", "--title", "x", "--severity", "loud"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("info, warning or critical"),
        "{}",
        stderr(&o)
    );
    // So is a notifier the instance does not have, naming the ones it has.
    let o = home.cli(
        "default",
        &["notify", "send", "--title", "x", "--notifier", "pager"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no notifier named \"pager\"; configured: hook"),
        "{}",
        stderr(&o)
    );
}

/// With no `[[notifier]]` nothing would deliver a notification: sending one fails and says
/// what to add, instead of answering "sent".
#[test]
fn notify_send_without_a_notifier_fails_and_says_so() {
    let home = Home::new();
    home.write_config("default", "[monitor]\nenabled = false\n");
    let _d = home.start("default");
    let o = home.cli("default", &["notify", "send", "--title", "hello"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("this instance has no [[notifier]]"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn notify_send_reaches_the_desktop_through_the_session_agent() {
    let home = Home::new();
    let Some(desk) = crate::monitor::desktop(home.path()) else {
        return;
    };
    home.write_config(
        "default",
        "[monitor]\ninterval = \"1s\"\ntop = 0\n\n[[notifier]]\nname = \"session\"\ntype = \"session\"\nretries = 0\n",
    );
    // Like a system service, the daemon has no session bus: only the agent reaches dunst.
    let _d = home.start_with("default", |c| {
        c.env_remove("DBUS_SESSION_BUS_ADDRESS");
    });
    // Without an agent the notifier fails and says what to do.
    let o = home.cli(
        "default",
        &["call", "session.show", r#"{"title":"nobody"}"#],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("session-agent"), "{}", stderr(&o));
    let log = home.path().join("agent.stderr");
    let mut agent = home
        .command("default")
        .arg("session-agent")
        .env("DBUS_SESSION_BUS_ADDRESS", &desk.bus)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn the session agent");
    eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("subscribed"))
    })
    .expect("the agent subscribes");
    let o = home.cli(
        "default",
        &[
            "notify",
            "send",
            "--title",
            "backup finished",
            "--body",
            "3 volumes",
            "--notifier",
            "session",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // dunst lists a notification in its history once it is closed.
    let shown = eventually(Duration::from_secs(20), || {
        let bus = |c: &str| {
            std::process::Command::new("dunstctl")
                .arg(c)
                .env("DBUS_SESSION_BUS_ADDRESS", &desk.bus)
                .output()
                .ok()
        };
        let _ = bus("close-all");
        let text = String::from_utf8_lossy(&bus("history")?.stdout).into_owned();
        text.contains("backup finished").then_some(text)
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let shown = shown.unwrap_or_else(|| {
        panic!(
            "dunst never showed it; agent said:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(shown.contains("3 volumes"), "{shown}");
    let counted = eventually(Duration::from_secs(10), || {
        let o = home.cli("default", &["--json", "notify", "log"]);
        let v: Value = serde_json::from_str(&stdout(&o)).ok()?;
        (v["counts"]["session"]["delivered"] == 1).then_some(v)
    });
    assert!(counted.is_some(), "the delivery record counts it");
}

#[test]
fn service_install_session_agent_writes_an_autostart_entry() {
    let home = Home::new();
    let root = home.path().join("root");
    let user_home = home.path().join("u");
    let svc = |verb: &str, extra: &[&str]| {
        let mut c = std::process::Command::new(crate::common::BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("MAJORDOMO_") || k.starts_with("XDG_") {
                c.env_remove(k);
            }
        }
        let o = c
            .env("HOME", &user_home)
            .args(["service", verb, "--user", "--instance", "desk", "--root"])
            .arg(&root)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run majordomo");
        assert!(o.status.success(), "{verb}: {}{}", stdout(&o), stderr(&o));
        o
    };
    let o = svc("install", &["--manager", "systemd", "--session-agent"]);
    assert!(
        stdout(&o).contains("session agent at logon"),
        "{}",
        stdout(&o)
    );
    let entry = find(&root, "majordomo-session-agent-desk.desktop").expect("the autostart entry");
    assert!(
        entry.to_string_lossy().contains(".config/autostart"),
        "{}",
        entry.display()
    );
    let text = std::fs::read_to_string(&entry).unwrap();
    assert!(
        text.contains("[Desktop Entry]\nType=Application\n"),
        "{text}"
    );
    let exec = text.lines().find(|l| l.starts_with("Exec=")).expect("Exec");
    assert!(
        exec.ends_with(" --user --instance desk session-agent"),
        "{exec}"
    );
    svc("uninstall", &[]);
    assert!(!entry.exists(), "uninstall removes it");
}

/// `config check` reports every broken job with its line: a schedule out of range, a time
/// zone that does not exist, a publish topic with a wildcard, one reserved for the daemon.
#[test]
fn config_check_reports_each_broken_job_with_its_line() {
    let home = Home::new();
    let file = home.path().join("jobs.toml");
    std::fs::write(
        &file,
        "[[job]]\nname = \"a\"\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\n\n\
         [[job]]\nname = \"b\"\nevery = \"1m\"\ntimezone = \"Mars/Olympus\"\ncommand = [\"true\"]\n\n\
         [[job]]\nname = \"c\"\nevery = \"1m\"\npublish = { topic = \"app.*\", data = 1 }\n\n\
         [[job]]\nname = \"d\"\nevery = \"1m\"\npublish = { topic = \"$sys.job.finished\", data = 1 }\n",
    )
    .unwrap();
    let out = home.cli("default", &["config", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", stdout(&out));
    let err = stderr(&out);
    let f = file.display().to_string();
    for (line, what) in [
        (3, "job[0].schedule"),
        (9, "job[1].timezone: unknown time zone \"Mars/Olympus\""),
        (15, "contains a wildcard"),
        (20, "reserved for the daemon"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{f}:{line}:")) && l.contains(what)),
            "line {line}, {what}: {err}"
        );
    }
}
