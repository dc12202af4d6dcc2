//! Black-box tests of the health monitor, alerts and notifications (README: "Health monitor,
//! alerts and notifications"): the real binary, real child processes, a real local HTTP server
//! and, where it can start, a real notification server on a private D-Bus session bus.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Home, eventually, stderr, stdout};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn json_cli(home: &Home, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = home.cli("default", &all);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
}

fn deliveries(home: &Home) -> Vec<Value> {
    json_cli(home, &["notify", "log", "--limit", "200"])["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A delivery record of `notifier` for `alert` in `state` with `outcome`, once there is one.
fn wait_delivery(home: &Home, notifier: &str, alert: &str, state: &str, outcome: &str) -> Value {
    eventually(LONG, || {
        deliveries(home).into_iter().find(|d| {
            d["notifier"] == notifier
                && d["alert"] == alert
                && d["state"] == state
                && d["outcome"] == outcome
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no {outcome} {state} delivery of {alert} by {notifier}: {:#?}",
            deliveries(home)
        )
    })
}

fn active_alert(home: &Home, id: &str) -> Option<Value> {
    json_cli(home, &["alerts"])["active"]
        .as_array()?
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
}

/// A config with a fast monitor, no default checks, and the given extra sections.
fn config(extra: &str) -> String {
    format!("[monitor]\ninterval = \"1s\"\ntop = 0\n\n{extra}")
}

/// A command check that fails while `flag` does not exist.
fn flag_check(name: &str, flag: &Path, severity: &str) -> String {
    format!(
        "[[check]]\nname = \"{name}\"\ncommand = [\"test\", \"-e\", \"{}\"]\ninterval = \"1s\"\nseverity = \"{severity}\"\n\n",
        flag.display()
    )
}

/// A command notifier that appends each alert's JSON to `file`.
fn file_notifier(name: &str, file: &Path, extra: &str) -> String {
    format!(
        "[[notifier]]\nname = \"{name}\"\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> {} && echo >> {}\"]\nbackoff = \"100ms\"\n{extra}\n\n",
        file.display(),
        file.display()
    )
}

#[test]
fn health_monitor_metric_alert_fires_after_for_with_hysteresis_and_resolves() {
    let home = Home::new();
    home.write_config("default", &config(""));
    let d = home.start("default");
    // The daemon's own open descriptors: a metric this test can move by opening connections.
    // Until the first collection has run, `metrics` answers `busy`: keep asking.
    let base = eventually(LONG, || {
        let out = home.cli("default", &["--json", "metrics", "self.open_files"]);
        let v: Value = serde_json::from_str(&stdout(&out)).ok()?;
        out.status.success().then_some(())?;
        v["values"]["self.open_files"].as_f64()
    })
    .expect("self.open_files is collected");
    let (above, clear) = (base + 20.0, base + 8.0);
    home.write_config(
        "default",
        &config(&format!(
            "[[check]]\nname = \"fds\"\nmetric = \"self.open_files\"\nabove = {above}\nclear_below = {clear}\nfor = \"2s\"\nseverity = \"critical\"\n"
        )),
    );
    assert!(home.cli("default", &["reload"]).status.success());
    let mut conns: Vec<_> = (0..30)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap())
        .collect();
    // Pending first, firing once the condition held for `for`.
    let pending = eventually(LONG, || active_alert(&home, "fds")).expect("alert raised");
    assert!(
        matches!(pending["state"].as_str(), Some("pending" | "firing")),
        "{pending}"
    );
    let firing = eventually(LONG, || {
        active_alert(&home, "fds").filter(|a| a["state"] == "firing")
    })
    .expect("alert fires after `for`");
    assert_eq!(firing["severity"], "critical");
    // `status` shows it.
    let status = json_cli(&home, &["status"]);
    assert!(status["alerts"]["firing"].as_u64() >= Some(1), "{status}");
    assert!(stdout(&home.cli("default", &["status"])).contains("fds"));
    // Into the hysteresis band (between clear_below and above): still firing, for several cycles.
    conns.truncate(16);
    std::thread::sleep(Duration::from_secs(4));
    let still = active_alert(&home, "fds").expect("still active in the hysteresis band");
    assert_eq!(still["state"], "firing", "{still}");
    // Below clear_below: resolved.
    conns.clear();
    eventually(LONG, || active_alert(&home, "fds").is_none().then_some(())).expect("resolved");
    let recent = json_cli(&home, &["alerts"])["recent"].clone();
    assert_eq!(recent[0]["id"], "fds", "{recent}");
    assert_eq!(recent[0]["state"], "resolved", "{recent}");
    // The hub counted the transitions.
    let events = json_cli(&home, &["status"])["events"].clone();
    assert!(events["alert.firing"].as_u64() >= Some(1), "{events}");
    assert!(events["alert.resolved"].as_u64() >= Some(1), "{events}");
}

#[test]
fn health_monitor_routing_by_severity_and_resolved_notifications() {
    let home = Home::new();
    let flag = home.path().join("healthy");
    let (crit, all) = (
        home.path().join("crit.jsonl"),
        home.path().join("all.jsonl"),
    );
    let mut cfg = flag_check("svc", &flag, "warning");
    cfg.push_str(&file_notifier(
        "pager",
        &crit,
        "min_severity = \"critical\"",
    ));
    cfg.push_str(&file_notifier(
        "everything",
        &all,
        "min_severity = \"info\"",
    ));
    home.write_config("default", &config(&cfg));
    let _d = home.start("default");
    let fired = wait_delivery(&home, "everything", "svc", "firing", "delivered");
    assert_eq!(fired["attempts"].as_array().unwrap().len(), 1);
    let body = std::fs::read_to_string(&all).unwrap();
    let alert: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(alert["check"], "svc");
    assert_eq!(alert["severity"], "warning");
    assert!(
        alert["summary"].as_str().unwrap().contains("exited"),
        "{alert}"
    );
    // Resolution is notified too.
    std::fs::write(&flag, "").unwrap();
    wait_delivery(&home, "everything", "svc", "resolved", "delivered");
    // The critical-only notifier never saw this warning.
    assert!(!crit.exists(), "{:?}", std::fs::read_to_string(&crit));
    assert!(deliveries(&home).iter().all(|d| d["notifier"] != "pager"));
}

/// A local HTTP server that answers the first request with 500, stalls the second past the
/// client's timeout, and accepts the third. Returns the port, the request count and the bodies.
fn flaky_server() -> (u16, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (c, b) = (count.clone(), bodies.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let (c2, b2) = (c.clone(), b.clone());
            let _ = c2;
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
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
                b2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let reply: &[u8] = match n {
                    0 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    1 => {
                        std::thread::sleep(Duration::from_secs(4));
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    }
                    _ => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                };
                let _ = stream.write_all(reply);
            });
        }
    });
    (port, count, bodies)
}

#[test]
fn notifications_webhook_retries_through_500_and_timeout_then_delivers() {
    let home = Home::new();
    let (port, count, bodies) = flaky_server();
    let flag = home.path().join("never");
    let other = home.path().join("other.jsonl");
    let mut cfg = flag_check("down", &flag, "critical");
    cfg.push_str(&format!(
        "[[notifier]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/alerts\"\ntimeout = \"1s\"\nretries = 3\nbackoff = \"200ms\"\n\n"
    ));
    cfg.push_str(&file_notifier("side", &other, ""));
    home.write_config("default", &config(&cfg));
    let _d = home.start("default");
    // The other notifier is not held up by the failing webhook.
    wait_delivery(&home, "side", "down", "firing", "delivered");
    let d = wait_delivery(&home, "hook", "down", "firing", "delivered");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{d:#}");
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("500"),
        "{d:#}"
    );
    assert!(
        attempts[1]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{d:#}"
    );
    assert_eq!(attempts[2]["ok"], true);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let body: Value = serde_json::from_str(&bodies.lock().unwrap()[2]).unwrap();
    assert_eq!(body["id"], "down");
    assert_eq!(body["state"], "firing");
    assert_eq!(body["instance"], "default");
    // Counted and visible, with a delivery rate.
    let log = json_cli(&home, &["notify", "log", "--notifier", "hook"]);
    assert_eq!(log["counts"]["hook"]["delivered"], 1);
    assert_eq!(log["counts"]["hook"]["attempts"], 3);
    assert_eq!(log["counts"]["hook"]["delivery_rate_pct"], 100.0);
    assert!(stdout(&home.cli("default", &["notify", "log"])).contains("hook"));
}

#[test]
fn notifications_quiet_hours_suppress_all_but_the_excepted_severity() {
    let home = Home::new();
    // Quiet hours from an hour ago to an hour from now, in UTC, whatever the time of day.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hhmm = |t: u64| format!("{:02}:{:02}", (t / 3600) % 24, (t / 60) % 60);
    let (from, to) = (hhmm(now - 3600), hhmm(now + 3600));
    let out = home.path().join("quiet.jsonl");
    let mut cfg = flag_check("minor", &home.path().join("a"), "warning");
    cfg.push_str(&flag_check("major", &home.path().join("b"), "critical"));
    cfg.push_str(&file_notifier(
        "night",
        &out,
        &format!("quiet_hours = {{ from = \"{from}\", to = \"{to}\", tz = \"UTC\", except = \"critical\" }}"),
    ));
    home.write_config("default", &config(&cfg));
    let _d = home.start("default");
    let s = wait_delivery(&home, "night", "minor", "firing", "suppressed");
    assert!(s["reason"].as_str().unwrap().contains("quiet hours"), "{s}");
    wait_delivery(&home, "night", "major", "firing", "delivered");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("\"major\"") && !text.contains("\"minor\""),
        "{text}"
    );
}

#[test]
fn health_monitor_report_and_history_survive_a_restart() {
    let home = Home::new();
    let flag = home.path().join("ok");
    home.write_config("default", &config(&flag_check("flappy", &flag, "warning")));
    let mut d = home.start("default");
    eventually(LONG, || {
        active_alert(&home, "flappy").filter(|a| a["state"] == "firing")
    })
    .expect("fires");
    std::fs::write(&flag, "").unwrap();
    eventually(LONG, || {
        active_alert(&home, "flappy").is_none().then_some(())
    })
    .expect("resolves");
    // A few collections into the history.
    let points = |home: &Home| {
        json_cli(home, &["metrics", "uptime.seconds", "--since", "1h"])["series"]["uptime.seconds"]
            ["stats"]["count"]
            .as_u64()
            .unwrap_or(0)
    };
    let before =
        eventually(LONG, || Some(points(&home)).filter(|n| *n >= 3)).expect("history grows");
    let report = home.path().join("report.json");
    let out = home.cli("default", &["report", "--out", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    for key in [
        "generated_at",
        "instance",
        "host",
        "current",
        "history",
        "checks",
        "alerts",
        "programs",
        "ports",
        "notifications",
    ] {
        assert!(r.get(key).is_some(), "report lacks {key}: {r:#}");
    }
    assert!(
        r["current"]["values"]["memory.used_pct"].as_f64().is_some(),
        "{r:#}"
    );
    let mem = &r["history"]["series"]["memory.used_pct"];
    assert!(
        mem["min"].as_f64() <= mem["avg"].as_f64() && mem["avg"].as_f64() <= mem["max"].as_f64(),
        "{mem}"
    );
    assert!(mem["count"].as_u64() >= Some(3), "{mem}");
    let hist = r["alerts"]["history"].as_array().unwrap();
    assert!(
        hist.iter()
            .any(|a| a["id"] == "flappy" && a["state"] == "firing"),
        "{hist:#?}"
    );
    assert!(
        hist.iter()
            .any(|a| a["id"] == "flappy" && a["state"] == "resolved"),
        "{hist:#?}"
    );
    assert_eq!(r["checks"][0]["name"], "flappy");
    assert_eq!(r["checks"][0]["state"], "ok");
    // Human output of the other verbs.
    let m = stdout(&home.cli("default", &["metrics"]));
    assert!(
        m.contains("cpu.used_pct") && m.contains("memory.used_pct"),
        "{m}"
    );
    assert!(stdout(&home.cli("default", &["alerts"])).contains("flappy"));
    // The history survives a restart.
    assert!(home.cli("default", &["shutdown"]).status.success());
    d.wait_exit(LONG);
    let _d2 = home.start("default");
    let after = points(&home);
    assert!(after >= before, "history lost: {before} -> {after}");
}

#[test]
fn health_monitor_bad_checks_are_config_errors_with_lines() {
    let home = Home::new();
    let file = home.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[check]]\nname = \"a\"\nmetric = \"cpu.usd_pct\"\nabove = 1\n\n[[check]]\nname = \"b\"\nmetric = \"disk.used_pct\"\nlabels = { mount = \"/no/such/mount\" }\nabove = 90\n\n[[notifier]]\nname = \"n\"\ntype = \"webhook\"\nquiet_hours = { from = \"25:00\", to = \"07:00\", tz = \"Mars/Olympus\" }\n",
    )
    .unwrap();
    let out = home.cli("default", &["config", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    let f = file.display().to_string();
    assert!(
        err.contains(&format!("{f}:3:"))
            && err.contains("unknown metric \"cpu.usd_pct\"")
            && err.contains("cpu.used_pct"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:9:")) && err.contains("/no/such/mount"),
        "{err}"
    );
    assert!(err.contains("needs `url`"), "{err}");
    assert!(
        err.contains("25:00") && err.contains("Mars/Olympus"),
        "{err}"
    );
}

#[test]
fn health_monitor_program_check_follows_the_supervisor() {
    let home = Home::new();
    // `api` cannot start (its executable is missing), `db` runs: only api-up fires, and it says
    // why from the supervisor's own program state.
    home.write_config(
        "default",
        &config(concat!(
            "[[program]]\nname = \"api\"\ncommand = \"/nonexistent/api-server\"\n\n",
            "[[program]]\nname = \"db\"\ncommand = \"sleep\"\nargs = [\"1000\"]\n\n",
            "[[check]]\nname = \"api-up\"\nprogram = \"api\"\ninterval = \"1s\"\nseverity = \"critical\"\n\n",
            "[[check]]\nname = \"db-up\"\nprogram = \"db\"\ninterval = \"1s\"\nseverity = \"critical\"\n",
        )),
    );
    let _d = home.start("default");
    let a = eventually(LONG, || {
        active_alert(&home, "api-up").filter(|a| a["state"] == "firing")
    })
    .expect("fires");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("program api is not running (state failed, 0 restarts)"),
        "{a}"
    );
    // db has been running all along (checked every second): never alerted.
    assert!(active_alert(&home, "db-up").is_none());
    // A check on an undeclared program is a config error with its line.
    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "[[check]]\nname = \"x\"\nprogram = \"ghost\"\n").unwrap();
    let out = home.cli("default", &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains(":3:") && stderr(&out).contains("no [[program]] named \"ghost\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn health_monitor_every_program_check_wakes_on_a_state_change() {
    let home = Home::new();
    // Four checks watch one program that fails after two seconds, and the checks' own interval
    // is an hour: each alert can only come from the wake-up on the program's state change, which
    // must reach every check that watches it, not one of them.
    let mut cfg = String::from(
        "[[program]]\nname = \"p\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 2; exit 3\"]\nrestart = \"never\"\n\n",
    );
    for n in 1..=4 {
        cfg.push_str(&format!(
            "[[check]]\nname = \"p-up-{n}\"\nprogram = \"p\"\ninterval = \"1h\"\nseverity = \"warning\"\n\n"
        ));
    }
    home.write_config("default", &config(&cfg));
    let _d = home.start("default");
    for n in 1..=4 {
        let name = format!("p-up-{n}");
        eventually(LONG, || {
            active_alert(&home, &name).filter(|a| a["state"] == "firing")
        })
        .unwrap_or_else(|| panic!("{name} fires when its program fails"));
    }
}

/// Starts a private X display, D-Bus session bus and dunst; `None` (with a message) if any of
/// them is missing or does not start.
pub(crate) struct Desktop {
    procs: Vec<std::process::Child>,
    pub(crate) bus: String,
}

impl Drop for Desktop {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

pub(crate) fn desktop(dir: &Path) -> Option<Desktop> {
    use std::process::{Command, Stdio};
    for tool in ["dbus-daemon", "dunst", "Xvfb", "dunstctl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!(
                "SKIPPED: {tool} is not installed (scripts/install-test-deps.sh installs it)"
            );
            return None;
        }
    }
    let mut procs = Vec::new();
    let display = format!(":{}", 90 + std::process::id() % 400);
    procs.push(
        Command::new("Xvfb")
            .args([
                display.as_str(),
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "640x480x24",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    let mut bus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(bus.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    procs.push(bus);
    let addr = line.trim().to_string();
    if addr.is_empty() {
        eprintln!("SKIPPED: dbus-daemon did not start a session bus");
        return None;
    }
    let _ = std::fs::write(dir.join("dunstrc"), "[global]\n");
    procs.push(
        Command::new("dunst")
            .args(["-config", dir.join("dunstrc").to_str()?])
            .env("DISPLAY", &display)
            .env("DBUS_SESSION_BUS_ADDRESS", &addr)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dunst.stderr")).ok()?)
            .spawn()
            .ok()?,
    );
    let d = Desktop { procs, bus: addr };
    let up = eventually(Duration::from_secs(20), || {
        Command::new("dunstctl")
            .arg("is-paused")
            .env("DBUS_SESSION_BUS_ADDRESS", &d.bus)
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    if up.is_none() {
        eprintln!(
            "SKIPPED: dunst did not come up on the private bus: {}",
            std::fs::read_to_string(dir.join("dunst.stderr")).unwrap_or_default()
        );
        return None;
    }
    Some(d)
}

#[test]
fn notifications_desktop_reaches_a_real_notification_server() {
    let home = Home::new();
    let Some(desk) = desktop(home.path()) else {
        return;
    };
    home.write_config(
        "default",
        &config("[[notifier]]\nname = \"desk\"\ntype = \"desktop\"\n"),
    );
    let _d = home.start_with("default", |c| {
        c.env("DBUS_SESSION_BUS_ADDRESS", &desk.bus);
    });
    let out = home.cli("default", &["notify", "test", "desk"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("delivered"));
    // dunst has it.
    let shown = eventually(Duration::from_secs(20), || {
        let o = std::process::Command::new("dunstctl")
            .arg("history")
            .env("DBUS_SESSION_BUS_ADDRESS", &desk.bus)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.contains("test notification from majordomo")
            .then_some(text)
    });
    // dunst moves a notification to its history only once it is closed: ask for that, then look.
    let shown = shown.or_else(|| {
        let _ = std::process::Command::new("dunstctl")
            .arg("close-all")
            .env("DBUS_SESSION_BUS_ADDRESS", &desk.bus)
            .status();
        eventually(Duration::from_secs(20), || {
            let o = std::process::Command::new("dunstctl")
                .arg("history")
                .env("DBUS_SESSION_BUS_ADDRESS", &desk.bus)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.contains("test notification from majordomo")
                .then_some(text)
        })
    });
    assert!(shown.is_some(), "dunst never showed the notification");
    let log = json_cli(&home, &["notify", "log"]);
    assert_eq!(log["counts"]["desk"]["delivered"], 1, "{log}");
}

#[test]
fn notifications_desktop_without_a_session_bus_fails_clearly() {
    let home = Home::new();
    home.write_config(
        "default",
        &config("[[notifier]]\nname = \"desk\"\ntype = \"desktop\"\nretries = 1\nbackoff = \"100ms\"\ntimeout = \"2s\"\n"),
    );
    let _d = home.start_with("default", |c| {
        c.env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("XDG_RUNTIME_DIR", "/nonexistent-majordomo-test");
    });
    let out = home.cli("default", &["notify", "test", "desk"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("2 attempt"), "{}", stderr(&out));
    let log = json_cli(&home, &["notify", "log"]);
    assert_eq!(log["counts"]["desk"]["failed"], 1, "{log}");
}

#[test]
fn health_monitor_tcp_and_http_checks() {
    let home = Home::new();
    // A server that answers every request with 503.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    home.write_config(
        "default",
        &config(&format!(
            "[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1:{up}/health\"\ninterval = \"1s\"\ntimeout = \"5s\"\n\n\
             [[check]]\nname = \"port-up\"\ntcp = \"127.0.0.1:{up}\"\ninterval = \"1s\"\n\n\
             [[check]]\nname = \"port-down\"\ntcp = \"127.0.0.1:{down}\"\ninterval = \"1s\"\n"
        )),
    );
    let _d = home.start("default");
    let web = eventually(LONG, || {
        active_alert(&home, "web").filter(|a| a["state"] == "firing")
    })
    .expect("http check fires");
    assert!(web["summary"].as_str().unwrap().contains("503"), "{web}");
    assert_eq!(web["source"], "http");
    eventually(LONG, || {
        active_alert(&home, "port-down").filter(|a| a["state"] == "firing")
    })
    .expect("tcp check fires");
    assert!(active_alert(&home, "port-up").is_none());
}

#[test]
fn health_monitor_checks_bus_gauges_and_jobs() {
    let home = Home::new();
    let flag = home.path().join("good");
    home.write_config(
        "default",
        &config(&format!(
            concat!(
                "[[check]]\nname = \"crowded\"\nmetric = \"bus.connections\"\nabove = 3.5\nclear_below = 1.5\n\n",
                "[[job]]\nname = \"rotate\"\nschedule = \"0 0 1 1 *\"\ncommand = [\"test\", \"-e\", \"{}\"]\n\n",
                "[[check]]\nname = \"rotate-ok\"\njob = \"rotate\"\nseverity = \"critical\"\n",
            ),
            flag.display()
        )),
    );
    let d = home.start("default");
    // Four clients held open: the bus's published gauge crosses 3.5.
    let mut held: Vec<crate::common::Line> =
        (0..4).map(|_| crate::common::Line::connect(&d)).collect();
    for l in &mut held {
        l.call(r#"{"id":1,"cmd":"ping"}"#);
    }
    let a = eventually(LONG, || {
        active_alert(&home, "crowded").filter(|a| a["state"] == "firing")
    })
    .expect("the bus.connections check fires");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("bus.connections is"),
        "{a}"
    );
    drop(held);
    eventually(LONG, || {
        active_alert(&home, "crowded").is_none().then_some(())
    })
    .expect("it resolves when they close");
    // The job has not run: healthy. A failing run fires the job check...
    assert!(active_alert(&home, "rotate-ok").is_none());
    let o = home.cli("default", &["job", "run", "rotate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = eventually(LONG, || {
        active_alert(&home, "rotate-ok").filter(|a| a["state"] == "firing")
    })
    .expect("the job check fires after a failed run");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("job rotate: the last run failed"),
        "{a}"
    );
    // ...and a good one resolves it.
    std::fs::write(&flag, "").unwrap();
    let o = home.cli("default", &["job", "run", "rotate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    eventually(LONG, || {
        active_alert(&home, "rotate-ok").is_none().then_some(())
    })
    .expect("a good run resolves the job check");
    // The metric is in `metrics` like the collector's own.
    let m = json_cli(&home, &["metrics", "bus."]);
    assert!(m["values"]["bus.connections"].is_number(), "{m}");
    // A check on an undeclared job, or an unknown gauge, is a config error with its line.
    let bad = home.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[check]]\nname = \"x\"\njob = \"ghost\"\n\n[[check]]\nname = \"y\"\nmetric = \"bus.conections\"\nabove = 1\n",
    )
    .unwrap();
    let out = home.cli("default", &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(
        err.contains(":3:") && err.contains("no [[job]] named \"ghost\""),
        "{err}"
    );
    assert!(
        err.contains(":7:") && err.contains("bus.connections"),
        "{err}"
    );
}
