//! Black-box tests of the drop-folder pipeline: the real binary, real folders, and a real HTTP
//! sink (axum) that records every request's idempotency key. Test names follow the README's
//! "Drop-folder pipelines" section.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::{self, Home, eventually, stdout};

/// One request the sink received.
#[derive(Debug, Clone)]
struct Hit {
    key: String,
    file: String,
    body: String,
    auth: Option<String>,
}

type Rule = Arc<dyn Fn(&str, usize) -> u16 + Send + Sync>;

/// A local HTTP server that records requests and answers what `rule(body, nth_try)` says.
struct Sink {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Sink {
    async fn start(rule: Rule) -> Sink {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/upload",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let hits = h.clone();
                let rule = rule.clone();
                async move {
                    let get = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                    };
                    let hit = Hit {
                        key: get("idempotency-key").unwrap_or_default(),
                        file: get("x-file-name").unwrap_or_default(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                        auth: get("authorization"),
                    };
                    let nth = {
                        let mut v = hits.lock().unwrap();
                        v.push(hit.clone());
                        v.iter().filter(|x| x.key == hit.key).count()
                    };
                    StatusCode::from_u16(rule(&hit.body, nth)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Sink {
            url: format!("http://{addr}/upload"),
            hits,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Accepted uploads: body → the set of keys it was accepted under.
    fn accepted(&self, rule: &Rule) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for h in self.hits() {
            let n = seen.entry(h.key.clone()).or_default();
            *n += 1;
            if (200..300).contains(&rule(&h.body, *n)) {
                out.entry(h.body).or_default().insert(h.key);
            }
        }
        out
    }
}

fn ok_rule() -> Rule {
    Arc::new(|_, _| 200)
}

fn config(home: &Home, sink: &Sink, extra: &str) -> String {
    config_settle(home, sink, "200ms", extra)
}

fn config_settle(home: &Home, sink: &Sink, settle: &str, extra: &str) -> String {
    let p = home.path();
    format!(
        r#"
[daemon]
watch_config = false
[log]
file = false
level = "info,majordomo_pipeline=debug"

[[pipeline]]
name = "reports"
watch = ["{inbox}"]
settle = "{settle}"
upload = "sink"
retry_base = "50ms"
retry_max = "200ms"
{extra}

[[uploader]]
name = "sink"
url = "{url}"
headers = {{ Authorization = "Bearer ${{MJ_TEST_TOKEN}}" }}
concurrency = 4
timeout = "5s"
"#,
        inbox = p.join("in").display(),
        url = sink.url,
    )
}

/// Drops a file the way the README asks producers to: write under a temp name, rename in.
fn drop_file(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn start(home: &Home) -> common::Daemon {
    home.start_with("default", |c| {
        c.env("MJ_TEST_TOKEN", "s3cret-token");
    })
}

fn queue_json(home: &Home, args: &[&str]) -> Value {
    let mut a = vec!["--json", "queue"];
    a.extend_from_slice(args);
    let out = home.cli("default", &a);
    assert!(out.status.success(), "{:?}", out);
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_upload_each_dropped_file_once_with_a_stable_key() {
    let home = Home::new();
    let sink = Sink::start(ok_rule()).await;
    home.write_config("default", &config(&home, &sink, ""));
    let inbox = home.path().join("in");
    // A file already there before start-up is found by the start-up scan.
    drop_file(&inbox, "early.csv", "early");
    let d = start(&home);
    for i in 0..40 {
        drop_file(&inbox, &format!("r{i}.csv"), &format!("body-{i}"));
    }
    // Files a producer is still writing are never taken.
    std::fs::write(inbox.join("partial.csv.part"), "half").unwrap();
    std::fs::write(inbox.join(".hidden"), "x").unwrap();
    let rule = ok_rule();
    let got = eventually(Duration::from_secs(60), || {
        let a = sink.accepted(&rule);
        (a.len() == 41).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "not all uploaded: {:?}\n{}",
            sink.accepted(&rule).len(),
            d.stderr_text()
        )
    });
    for (body, keys) in &got {
        assert_eq!(keys.len(), 1, "{body} uploaded under {keys:?}");
        let key = keys.iter().next().unwrap();
        assert_eq!(key.len(), 26, "a ULID: {key}");
    }
    let hits = sink.hits();
    assert!(
        hits.iter()
            .all(|h| h.auth.as_deref() == Some("Bearer s3cret-token"))
    );
    assert!(
        hits.iter()
            .any(|h| h.file == "r7.csv" && h.body == "body-7")
    );
    assert!(inbox.join("partial.csv.part").exists() && inbox.join(".hidden").exists());
    assert!(!inbox.join("r0.csv").exists());
    // The queue is visible on disk and through `queue stats` / `queue ls`.
    let stats = eventually(Duration::from_secs(20), || {
        let s = queue_json(&home, &["stats"]);
        (s["pipelines"][0]["counts"]["done"] == 41).then_some(s)
    })
    .expect("41 done");
    assert_eq!(stats["pipelines"][0]["since_start"]["uploaded"], 41);
    let ls = queue_json(&home, &["ls", "--state", "done", "--limit", "5"]);
    assert_eq!(ls["total"], 41);
    assert_eq!(ls["items"].as_array().unwrap().len(), 5);
    let human = stdout(&home.cli("default", &["queue", "stats"]));
    assert!(
        human.contains("pipeline reports") && human.contains("uploaded 41"),
        "{human}"
    );
    // The token never shows in the effective config.
    let shown = stdout(&home.cli("default", &["--json", "config", "show"]));
    assert!(!shown.contains("s3cret-token"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_retry_transient_failures_and_dead_letter_refusals() {
    let home = Home::new();
    // "flaky" fails twice with 503 then succeeds; "refused" gets 422 until "fixed".
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fixed.clone();
    let rule: Rule = Arc::new(move |body, nth| match body {
        "flaky" if nth <= 2 => 503,
        "refused" if !f.load(std::sync::atomic::Ordering::SeqCst) => 422,
        _ => 200,
    });
    let sink = Sink::start(rule.clone()).await;
    home.write_config("default", &config(&home, &sink, ""));
    let d = start(&home);
    let inbox = home.path().join("in");
    drop_file(&inbox, "flaky.txt", "flaky");
    drop_file(&inbox, "refused.txt", "refused");
    let dead = home.path().join("default/state/pipeline/reports/dead");
    eventually(Duration::from_secs(30), || {
        let a = sink.accepted(&rule);
        (a.contains_key("flaky") && files_in(&dead).len() == 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{:?} {:?}\n{}",
            sink.hits(),
            files_in(&dead),
            d.stderr_text()
        )
    });
    // Three attempts of "flaky", all under one key.
    let flaky: Vec<Hit> = sink
        .hits()
        .into_iter()
        .filter(|h| h.body == "flaky")
        .collect();
    assert_eq!(flaky.len(), 3, "{flaky:?}");
    assert!(flaky.iter().all(|h| h.key == flaky[0].key));
    // The refused item is in the dead-letter folder with its reason.
    let names = files_in(&dead);
    let reason = names
        .iter()
        .find(|n| n.ends_with(".reason"))
        .expect("reason file");
    let text = std::fs::read_to_string(dead.join(reason)).unwrap();
    assert!(
        text.contains("422") && text.contains("refused.txt"),
        "{text}"
    );
    let ls = queue_json(&home, &["ls", "--state", "dead"]);
    assert_eq!(ls["total"], 1);
    let key = ls["items"][0]["id"].as_str().unwrap().to_string();
    // Once the server is fixed, `queue retry` sends it again under the same key.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = queue_json(&home, &["retry"]);
    assert_eq!(r["requeued"], 1);
    eventually(Duration::from_secs(30), || {
        sink.accepted(&rule).contains_key("refused").then_some(())
    })
    .expect("refused item uploaded after retry");
    assert_eq!(
        sink.accepted(&rule)["refused"],
        BTreeSet::from([key.clone()])
    );
    assert!(files_in(&dead).is_empty());
    let stats = queue_json(&home, &["stats"]);
    assert!(
        stats["pipelines"][0]["since_start"]["retries"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(stats["pipelines"][0]["since_start"]["dead_letters"], 1);
    let purged = queue_json(&home, &["purge", "--state", "done"]);
    assert_eq!(purged["purged"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_converter_failures_end_in_the_error_folder_with_a_reason() {
    let home = Home::new();
    let sink = Sink::start(ok_rule()).await;
    let script = home.path().join("conv.sh");
    // Crashes, hangs (with a child of its own), writes nothing, or converts (upper-cases).
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$(cat \"$1\")\" in\n  crash) echo boom >&2; exit 3;;\n  hang) sleep 300 & sleep 300;;\n  noout) exit 0;;\n  *) tr a-z A-Z < \"$1\" > \"$2\";;\nesac\n",
    )
    .unwrap();
    let done = home.path().join("done");
    let errors = home.path().join("errors");
    let extra = format!(
        "converter = {{ command = \"/bin/sh\", args = [\"{}\", \"{{input}}\", \"{{output}}\"], timeout = \"2s\" }}\npost_action = \"move\"\ndone_dir = \"{}\"\nerror_dir = \"{}\"",
        script.display(),
        done.display(),
        errors.display()
    );
    home.write_config("default", &config(&home, &sink, &extra));
    let d = start(&home);
    let inbox = home.path().join("in");
    for (name, body) in [
        ("a.txt", "crash"),
        ("b.txt", "hang"),
        ("c.txt", "noout"),
        ("d.txt", "good"),
    ] {
        drop_file(&inbox, name, body);
    }
    eventually(Duration::from_secs(60), || {
        (files_in(&errors).len() == 6 && !sink.hits().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", files_in(&errors), d.stderr_text()));
    assert_eq!(sink.hits()[0].body, "GOOD");
    assert_eq!(files_in(&done), vec!["d.txt".to_string()]);
    let read = |n: &str| std::fs::read_to_string(errors.join(n)).unwrap();
    assert!(
        read("a.txt.reason").contains("boom"),
        "{}",
        read("a.txt.reason")
    );
    assert!(read("b.txt.reason").contains("did not finish within 2s"));
    assert!(read("c.txt.reason").contains("wrote no output"));
    assert_eq!(read("c.txt"), "noout");
    let ls = queue_json(&home, &["ls", "--state", "failed"]);
    assert_eq!(ls["total"], 3);
}

/// Drops N files while killing the daemon with SIGKILL at pseudo-random moments, then checks
/// that every input was accepted by the server under exactly one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_survive_kill_9_with_nothing_lost_and_nothing_twice() {
    const N: usize = 300;
    let home = Home::new();
    let rule = ok_rule();
    let sink = Sink::start(rule.clone()).await;
    home.write_config("default", &config_settle(&home, &sink, "50ms", ""));
    let inbox: PathBuf = home.path().join("in");
    let mut d = start(&home);
    // A fixed LCG: "random" moments, the same on every run.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    let mut kills = 0;
    let mut dropped = 0;
    while dropped < N {
        let batch = (10 + next(40) as usize).min(N - dropped);
        for i in dropped..dropped + batch {
            drop_file(&inbox, &format!("f{i:05}.dat"), &format!("input-{i}"));
        }
        dropped += batch;
        tokio::time::sleep(Duration::from_millis(next(300))).await;
        if next(2) == 0 {
            d.signal(Signal::SIGKILL);
            d.wait_exit(Duration::from_secs(10));
            kills += 1;
            d = start(&home);
        }
    }
    if kills == 0 {
        d.signal(Signal::SIGKILL);
        d.wait_exit(Duration::from_secs(10));
        kills += 1;
        d = start(&home);
    }
    let accepted = eventually(Duration::from_secs(120), || {
        let a = sink.accepted(&rule);
        (a.len() == N).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "only {} of {N} inputs uploaded; work folder: {:?}\n{}",
            sink.accepted(&rule).len(),
            files_in(&home.path().join("default/state/pipeline/reports")).len(),
            d.stderr_text()
        )
    });
    let twice: Vec<_> = accepted.iter().filter(|(_, k)| k.len() != 1).collect();
    let requests = sink.hits().len();
    println!(
        "chaos: {N} dropped, {kills} kill -9, {} uploaded, {} under two keys, {} lost, {requests} requests (repeats of one key are the server's to drop)",
        accepted.len(),
        twice.len(),
        N - accepted.len()
    );
    assert!(twice.is_empty(), "uploaded under several keys: {twice:?}");
    for i in 0..N {
        assert!(
            accepted.contains_key(&format!("input-{i}")),
            "input-{i} lost"
        );
    }
    assert!(files_in(&inbox).is_empty(), "{:?}", files_in(&inbox));
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_config_check_locates_problems() {
    let home = Home::new();
    let bad = "[[pipeline]]\nname = \"x\"\nwatch = [\"relative/in\"]\nupload = \"missing\"\n";
    let f = home.path().join("bad.toml");
    std::fs::write(&f, bad).unwrap();
    let out = home.cli("default", &["config", "check", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = common::stderr(&out);
    assert!(
        err.contains("bad.toml:3:") && err.contains("pipeline[0].watch"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:4:") && err.contains("no [[uploader]] named \"missing\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_backpressure_leaves_files_in_the_drop_folder() {
    let home = Home::new();
    // The server is down (503 forever): items pile up, waiting to be retried.
    let rule: Rule = Arc::new(|_, _| 503);
    let sink = Sink::start(rule).await;
    home.write_config("default", &config(&home, &sink, "high_water = 4"));
    let d = start(&home);
    let inbox = home.path().join("in");
    for i in 0..10 {
        drop_file(&inbox, &format!("b{i}.csv"), &format!("b{i}"));
    }
    let stats = eventually(Duration::from_secs(30), || {
        let s = queue_json(&home, &["stats"]);
        s["pipelines"][0]["paused"].is_string().then_some(s)
    })
    .unwrap_or_else(|| panic!("never paused\n{}", d.stderr_text()));
    assert!(
        stats["pipelines"][0]["paused"]
            .as_str()
            .unwrap()
            .contains("high_water 4"),
        "{stats}"
    );
    // Give intake time to (wrongly) take more; it must not.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(files_in(&inbox).len(), 6, "{:?}", files_in(&inbox));
    let s = queue_json(&home, &["stats"]);
    assert_eq!(s["pipelines"][0]["since_start"]["claimed"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_polling_mode_takes_files_without_a_watcher() {
    let home = Home::new();
    let rule = ok_rule();
    let sink = Sink::start(rule.clone()).await;
    home.write_config(
        "default",
        &config(&home, &sink, "poll = true\npoll_interval = \"100ms\""),
    );
    let d = start(&home);
    let inbox = home.path().join("in");
    for i in 0..5 {
        drop_file(&inbox, &format!("p{i}.csv"), &format!("p{i}"));
    }
    eventually(Duration::from_secs(30), || {
        (sink.accepted(&rule).len() == 5).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", sink.hits(), d.stderr_text()));
    // The queue commands are typed: a wrong type or an unknown state is a bad request naming
    // the field, not an empty answer.
    for (args, field) in [
        (r#"{"state":"bogus"}"#, "`state`"),
        (r#"{"limit":"ten"}"#, "`limit`"),
    ] {
        let out = home.cli("default", &["call", "queue.ls", args]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = common::stderr(&out);
        assert!(err.contains("bad_request") && err.contains(field), "{err}");
    }
}

/// How many full rescans the pipeline has done since it started.
fn rescans(home: &Home) -> u64 {
    queue_json(home, &["stats"])["pipelines"][0]["since_start"]["rescans"]
        .as_u64()
        .unwrap_or(0)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_refuse_unusable_names_and_leave_links_and_fifos_alone() {
    use std::os::unix::ffi::OsStrExt;
    let home = Home::new();
    let sink = Sink::start(ok_rule()).await;
    let errors = home.path().join("errors");
    let extra = format!("rescan = \"100ms\"\nerror_dir = \"{}\"", errors.display());
    home.write_config("default", &config(&home, &sink, &extra));
    let inbox = home.path().join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    // 255 bytes: the longest name Linux allows, too long for the work folder's item names.
    let long = format!("{}.csv", "x".repeat(251));
    assert_eq!(long.len(), 255);
    std::fs::write(inbox.join(&long), "long").unwrap();
    let raw = std::ffi::OsStr::from_bytes(b"caf\xe9.csv");
    std::fs::write(inbox.join(raw), "latin1").unwrap();
    let target = home.path().join("target.csv");
    std::fs::write(&target, "secret").unwrap();
    std::os::unix::fs::symlink(&target, inbox.join("link.csv")).unwrap();
    nix::unistd::mkfifo(
        &inbox.join("pipe.csv"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    drop_file(&inbox, "good.csv", "good");
    let d = start(&home);
    eventually(Duration::from_secs(30), || {
        (files_in(&errors).len() == 4 && sink.hits().len() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", files_in(&errors), d.stderr_text()));
    // Both refused inputs are in the error folder, each with its reason, listed as failed.
    let ls = queue_json(&home, &["ls", "--state", "failed"]);
    assert_eq!(ls["total"], 2, "{ls}");
    let items = ls["items"].as_array().unwrap();
    let reason_of = |pred: &dyn Fn(&str) -> bool| {
        items
            .iter()
            .find(|i| pred(i["file"].as_str().unwrap()))
            .and_then(|i| i["reason"].as_str())
            .unwrap_or_else(|| panic!("{ls}"))
            .to_string()
    };
    let why_long = reason_of(&|f| f.starts_with("xxxx"));
    assert!(why_long.contains("255 bytes"), "{why_long}");
    let why_raw = reason_of(&|f| f == "caf_.csv");
    assert!(
        why_raw.contains("not valid UTF-8") && why_raw.contains("\\xE9"),
        "{why_raw}"
    );
    assert_eq!(
        std::fs::read_to_string(errors.join("caf_.csv")).unwrap(),
        "latin1"
    );
    // The link and the FIFO stay, never read (the sink got only the good file), logged once
    // each however many rescans pass.
    let before = rescans(&home);
    eventually(Duration::from_secs(30), || {
        (rescans(&home) >= before + 5).then_some(())
    })
    .expect("rescans go on");
    assert!(inbox.join("pipe.csv").exists());
    assert!(
        std::fs::symlink_metadata(inbox.join("link.csv"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
    assert_eq!(sink.hits()[0].body, "good");
    let log = d.stderr_text();
    for (name, kind) in [("link.csv", "a symbolic link"), ("pipe.csv", "a FIFO")] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:#?}");
        assert!(
            lines[0].contains(kind) && lines[0].contains("left in the drop folder"),
            "{}",
            lines[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_move_stray_files_out_of_the_work_folder_with_a_reason() {
    let home = Home::new();
    let sink = Sink::start(ok_rule()).await;
    let work = home.path().join("work");
    let extra = format!("work_dir = \"{}\"", work.display());
    home.write_config("default", &config(&home, &sink, &extra));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("notes.txt"), "mine").unwrap();
    let d = start(&home);
    let errors = work.join("error");
    eventually(Duration::from_secs(20), || {
        errors.join("notes.txt.reason").exists().then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", files_in(&work), d.stderr_text()));
    assert!(!work.join("notes.txt").exists());
    assert_eq!(
        std::fs::read_to_string(errors.join("notes.txt")).unwrap(),
        "mine"
    );
    let ls = queue_json(&home, &["ls", "--state", "failed"]);
    assert_eq!(ls["total"], 1, "{ls}");
    let why = ls["items"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains("not an item") && why.contains(work.to_str().unwrap()),
        "{why}"
    );
    // Nothing else was touched: the pipeline still works.
    drop_file(&home.path().join("in"), "a.csv", "a");
    eventually(Duration::from_secs(20), || {
        (!sink.hits().is_empty()).then_some(())
    })
    .expect("uploaded");
}
