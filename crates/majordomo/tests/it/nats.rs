//! Black-box tests of the NATS bridge (README section "Beyond one machine: NATS"): real
//! `majordomo` instances bridged through a real nats-server on 127.0.0.1 (Debian package
//! `nats-server`, installed by scripts/install-test-deps.sh; each test skips with a message
//! when it is missing).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Daemon, Home, eventually, stderr, stdout};
use futures_util::StreamExt;
use majordomo_client::ConnectOptions;
use majordomo_client::bus::{Bus, BusOptions};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

/// A nats-server on 127.0.0.1, killed on drop; restartable on the same port and store.
struct NatsServer {
    bin: PathBuf,
    port: u16,
    store: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl NatsServer {
    fn start(jetstream: bool) -> Option<Self> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("nats-server"))
                        .find(|p| p.exists())
                })
            });
        let Some(bin) = bin else {
            eprintln!(
                "SKIPPED: nats-server is not installed (Debian package nats-server; run scripts/install-test-deps.sh)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let mut s = Self {
            bin,
            port,
            store: jetstream.then(|| tempfile::tempdir().expect("store dir")),
            child: None,
        };
        s.spawn();
        Some(s)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut c = Command::new(&self.bin);
        c.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &self.store {
            c.arg("-js").arg("-sd").arg(dir.path());
        }
        self.child = Some(c.spawn().expect("spawn nats-server"));
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        });
        assert!(up.is_some(), "nats-server did not listen on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn bus(d: &Daemon) -> Bus {
    Bus::connect(
        &ConnectOptions::new(&d.socket).wait(Duration::from_secs(10)),
        BusOptions::default(),
    )
    .await
    .expect("bus connect")
}

async fn next<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(LONG, s.next())
        .await
        .expect("an item within the deadline")
        .expect("stream open")
}

async fn nats_status(d: &Daemon) -> Value {
    d.client()
        .await
        .call_named("nats.status", Value::Null)
        .await
        .expect("nats.status")
}

/// Waits until `f` holds for the instance's `nats.status`.
async fn until(d: &Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let s = nats_status(d).await;
        if f(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened; nats.status: {s:#}\nstderr:\n{}",
            d.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn connected(s: &Value) -> bool {
    s["connected"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_exchange_messages_requests_and_fleet_control() {
    let Some(server) = NatsServer::start(false) else {
        return;
    };
    let url = server.url();
    let home = Home::new();
    home.write_config(
        "a",
        &format!(
            "[nats]\nservers = [\"{url}\"]\nnode = \"n1\"\nexport = [\"orders.>\"]\nroles = [\"admin\"]\n"
        ),
    );
    home.write_config(
        "b",
        &format!(
            "[nats]\nservers = [\"{url}\"]\nnode = \"n2\"\nimport = [\"majordomo.n1.a.orders.>\"]\nroles = [\"station\"]\n"
        ),
    );
    let a = home.start("a");
    let b = home.start("b");
    until(&a, "a connected", connected).await;
    until(&b, "b connected", connected).await;

    // b's subscribers see a's exported topics under a's prefix.
    let bb = bus(&b).await;
    let mut orders = bb.subscribe("majordomo.n1.a.orders.new").await.unwrap();
    let mut prices = bb.subscribe("majordomo.n1.a.orders.price").await.unwrap();
    let ab = bus(&a).await;
    // The import subscription must be live on the server before a publishes: the
    // subscription's own request round-trip through b proves b's bridge is subscribed.
    for i in 0..3 {
        ab.publish("orders.new", &json!({"n": i})).await.unwrap();
    }
    for i in 0..3 {
        let m = next(&mut orders).await;
        assert_eq!(m.json::<Value>().unwrap(), json!({"n": i}));
    }

    // Request/reply both ways: a's local request goes out over NATS (export side), b answers
    // it from its local responder (import side).
    let responder = tokio::spawn(async move {
        let m = next(&mut prices).await;
        let q: Value = m.json().unwrap();
        bb.reply(
            m.reply_to.as_deref().unwrap(),
            &json!({"sku": q["sku"], "price": 42}),
        )
        .await
        .unwrap();
        bb
    });
    let r: Value = ab
        .request(
            "orders.price",
            &json!({"sku": "x"}),
            Duration::from_secs(10),
        )
        .await
        .expect("reply through NATS");
    assert_eq!(r, json!({"sku": "x", "price": 42}));
    let _bb = responder.await.unwrap();
    let sa = nats_status(&a).await;
    assert!(sa["exported"].as_u64().unwrap() >= 3, "{sa}");
    assert_eq!(sa["requests_out"], 1, "{sa}");
    let sb = nats_status(&b).await;
    assert!(sb["imported"].as_u64().unwrap() >= 3, "{sb}");
    assert_eq!(sb["requests_in"], 1, "{sb}");

    // The fleet: both instances, filtered by role, and a remote `status`.
    let out = home.cli(
        "a",
        &["--json", "fleet", "ls", "--nats", &url, "--wait", "500ms"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let members: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["node"].as_str().unwrap(),
                m["instance"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["n1/a", "n2/b"], "{members}");
    assert_eq!(members[0]["roles"], json!(["admin"]));
    assert_eq!(members[0]["version"], env!("CARGO_PKG_VERSION"));
    let out = home
        .command("a")
        .env("MAJORDOMO_NATS", &url)
        .args([
            "--json", "fleet", "ls", "--role", "station", "--wait", "500ms",
        ])
        .output()
        .unwrap();
    let members: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members[0]["instance"], "b");
    let out = home.cli(
        "a",
        &["--json", "fleet", "call", "--nats", &url, "n2/b", "status"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["instance"], "b");
    assert_eq!(status["pid"], b.pid());
    // Actions are not allowed remotely by default.
    let out = home.cli("a", &["fleet", "call", "--nats", &url, "n2/b", "reload"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not allowed remotely"),
        "{}",
        stderr(&out)
    );
    let out = home.cli("a", &["fleet", "call", "--nats", &url, "n9/zz", "status"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let sb = nats_status(&b).await;
    assert_eq!(sb["ctl_answered"], 1, "{sb}");
    assert_eq!(sb["ctl_refused"], 1, "{sb}");

    // The fleet over HTTP, as the dashboard's Fleet page reads it.
    let fleet = http_get(&home, "a", "/api/v1/nats.fleet").await;
    assert_eq!(member_names(&fleet["members"]), ["n1/a", "n2/b"], "{fleet}");
    assert_eq!(fleet["reason"], Value::Null, "{fleet}");
    let fleet = http_get(&home, "b", "/api/v1/nats.fleet?roles=admin").await;
    assert_eq!(member_names(&fleet["members"]), ["n1/a"], "{fleet}");
    let page = http_get(&home, "a", "/assets/app.js").await;
    assert!(
        page.as_str()
            .is_some_and(|js| js.contains("nats.fleet") && js.contains("discovery.peers")),
        "the dashboard has no Fleet page"
    );
}

fn member_names(members: &Value) -> Vec<String> {
    members
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["node"].as_str().unwrap_or("?"),
                        m["instance"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// GET `path` on the instance's HTTP port with its login token: the body as JSON, or as a string.
async fn http_get(home: &Home, instance: &str, path: &str) -> Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = home.cli(instance, &["--json", "http", "url"]);
    assert!(o.status.success(), "http url: {}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).expect("http url --json");
    let url = v["url"].as_str().expect("url");
    let (base, token) = url.split_once("/?token=").expect("a link with the token");
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    let text = resp.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_bridges_do_not_echo_or_loop() {
    let Some(server) = NatsServer::start(false) else {
        return;
    };
    let url = server.url();
    let home = Home::new();
    for (name, node) in [("a", "n1"), ("b", "n2")] {
        home.write_config(
            name,
            &format!(
                "[nats]\nservers = [\"{url}\"]\nnode = \"{node}\"\nprefix = \"\"\nexport = [\"chat.>\"]\nimport = [\"chat.>\"]\ncontrol = false\n"
            ),
        );
    }
    let a = home.start("a");
    let b = home.start("b");
    until(&a, "a connected", connected).await;
    until(&b, "b connected", connected).await;
    let (ab, bb) = (bus(&a).await, bus(&b).await);
    let mut at_a = ab.subscribe("chat.>").await.unwrap();
    let mut at_b = bb.subscribe("chat.>").await.unwrap();
    ab.publish("chat.room", &json!("from a")).await.unwrap();
    assert_eq!(next(&mut at_a).await.json::<Value>().unwrap(), "from a");
    assert_eq!(next(&mut at_b).await.json::<Value>().unwrap(), "from a");
    bb.publish("chat.room", &json!("from b")).await.unwrap();
    assert_eq!(next(&mut at_b).await.json::<Value>().unwrap(), "from b");
    assert_eq!(next(&mut at_a).await.json::<Value>().unwrap(), "from b");
    // Nothing else arrives: no copy came back, nothing loops between the two.
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        tokio::select! { m = at_a.next() => m, m = at_b.next() => m }
    })
    .await;
    assert!(extra.is_err(), "an echo arrived: {:?}", extra);
    let (sa, sb) = (nats_status(&a).await, nats_status(&b).await);
    assert_eq!(sa["exported"], 1, "{sa}");
    assert_eq!(sb["exported"], 1, "{sb}");
    assert_eq!(sa["echo_suppressed"], 1, "{sa}");
    assert_eq!(sb["echo_suppressed"], 1, "{sb}");
}

/// Publishes `n` messages `{"i":start..}` on `topic`, a few at a time.
/// Instance `a` (node n1) exporting `ev.>` and `b` (node n2) importing it back as
/// `majordomo.n1.a.ev.>`, each `[nats]` section with its extra lines; both connected.
async fn exporter_and_importer(url: &str, a_extra: &str, b_extra: &str) -> (Home, Daemon, Daemon) {
    let home = Home::new();
    home.write_config(
        "a",
        &format!("[nats]\nservers = [\"{url}\"]\nnode = \"n1\"\nexport = [\"ev.>\"]\n{a_extra}"),
    );
    home.write_config(
        "b",
        &format!(
            "[nats]\nservers = [\"{url}\"]\nnode = \"n2\"\nimport = [\"majordomo.n1.a.ev.>\"]\n{b_extra}"
        ),
    );
    let a = home.start("a");
    let b = home.start("b");
    until(&a, "a connected", connected).await;
    until(&b, "b connected", connected).await;
    (home, a, b)
}

async fn publish_range(bus: &Bus, topic: &str, range: std::ops::Range<u64>) {
    for i in range {
        bus.publish(topic, &json!({ "i": i })).await.unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    bus.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_without_jetstream_counts_the_loss() {
    let Some(mut server) = NatsServer::start(false) else {
        return;
    };
    let url = server.url();
    let (home, a, b) = exporter_and_importer(&url, "buffer = 20\n", "").await;
    let ab = bus(&a).await;
    let bb = bus(&b).await;
    let mut got = bb.subscribe("majordomo.n1.a.ev.>").await.unwrap();
    publish_range(&ab, "ev.x", 0..100).await;
    for _ in 0..100 {
        next(&mut got).await;
    }
    // Killed mid-stream: the bridge notices, buffers 20, drops the oldest beyond that.
    server.kill();
    until(&a, "a disconnected", |s| !connected(s)).await;
    publish_range(&ab, "ev.x", 100..400).await;
    let s = until(&a, "drops counted", |s| s["dropped"].as_u64() >= Some(280)).await;
    assert_eq!(s["buffered"], 20, "{s}");
    server.spawn();
    until(&a, "a reconnected", |s| connected(s) && s["buffered"] == 0).await;
    until(&b, "b reconnected", connected).await;
    // After the restart the stream flows again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_range(&ab, "ev.x", 1000..1010).await;
    let mut received = 100;
    loop {
        let m = next(&mut got).await;
        received += 1;
        if m.json::<Value>().unwrap()["i"] == 1009 {
            break;
        }
    }
    let s = nats_status(&a).await;
    let dropped = s["dropped"].as_u64().unwrap();
    assert!(dropped >= 280, "{s}");
    assert!(
        received <= 410 - dropped,
        "received {received}, dropped {dropped}: {s}"
    );
    // Reported: in `fleet status` and as a $sys event with the count.
    let out = home.cli("a", &["fleet", "status"]);
    assert!(
        stdout(&out).contains(&format!("dropped {dropped}")),
        "{}",
        stdout(&out)
    );
    assert!(
        a.stderr_text().contains("lost the NATS connection"),
        "{}",
        a.stderr_text()
    );
}

/// End to end through JetStream: `a` exports into the stream, `b` imports from it through its
/// durable consumer; nats-server (with its store) is killed and restarted mid-stream, and `b`'s
/// local subscriber still gets every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_with_jetstream_loses_nothing() {
    let Some(mut server) = NatsServer::start(true) else {
        return;
    };
    let url = server.url();
    let (_home, a, b) = exporter_and_importer(&url, "stream = \"EV\"\n", "stream = \"EV\"\n").await;
    let bb = bus(&b).await;
    let mut got = bb.subscribe("majordomo.n1.a.ev.>").await.unwrap();
    let ab = bus(&a).await;
    publish_range(&ab, "ev.x", 0..100).await;
    // The first messages arrive through b's durable consumer (created once a made the stream).
    for i in 0..100 {
        assert_eq!(next(&mut got).await.json::<Value>().unwrap()["i"], i);
    }
    // Killed mid-stream, while the rest is being published.
    let publisher = {
        let ab = bus(&a).await;
        tokio::spawn(async move {
            publish_range(&ab, "ev.x", 100..400).await;
            ab
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.kill();
    let _ab2 = publisher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.spawn();
    let s = until(&a, "every export acknowledged", |s| {
        s["exported"] == 400 && s["buffered"] == 0
    })
    .await;
    assert_eq!(s["dropped"], 0, "{s}");
    // b's subscriber: each of the 400, once, in order.
    for i in 100..400 {
        let m = next(&mut got).await;
        assert_eq!(
            m.json::<Value>().unwrap()["i"],
            i,
            "b's import after the restart"
        );
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), got.next()).await;
    assert!(extra.is_err(), "a duplicate arrived: {extra:?}");
    let sb = until(&b, "b imported all", |s| s["imported"] == 400).await;
    assert_eq!(sb["consumers"], json!(["majordomo-n2-b-0"]), "{sb}");
    // The stream holds each message exactly once.
    let client = majordomo_nats::async_nats::connect(url.as_str())
        .await
        .unwrap();
    let js = majordomo_nats::async_nats::jetstream::new(client);
    let mut stream = js.get_stream("EV").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 400, "{:?}", info.state);
    assert_eq!(info.config.subjects, ["majordomo.n1.a.ev.>"]);
}

#[test]
fn bad_nats_config_is_refused_with_its_field() {
    let home = Home::new();
    home.write_config(
        "x",
        "[nats]\nservers = [\"http://nope\"]\nnode = \"a.b\"\nallow = [\"nope\"]\npassword = \"hunter2\"\n",
    );
    let out = home.cli("x", &["config", "check"]);
    assert_eq!(out.status.code(), Some(64));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for field in [
        "nats.servers[0]",
        "nats.node",
        "nats.allow[0]",
        "nats.password",
    ] {
        assert!(text.contains(field), "{field} not named: {text}");
    }
    assert!(!text.contains("hunter2"), "a secret was printed: {text}");
}

/// With `[nats]` and `[discovery]` off, their commands still answer, over the socket and HTTP:
/// `enabled: false` and the section that turns them on. A reload that turns the bridge off
/// brings the same answer back; one that turns it on brings the bridge's own. (No nats-server
/// needed: a bridge whose server is unreachable runs and retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_subsystems_answer_that_they_are_off() {
    let home = Home::new();
    home.write_config("a", "");
    let a = home.start("a");
    let call = |cmd: &str| {
        let out = home.cli("a", &["--json", "call", cmd]);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
        serde_json::from_str::<Value>(stdout(&out).trim()).expect("JSON reply")
    };
    for (cmd, section) in [
        ("nats.status", "[nats] servers"),
        ("nats.fleet", "[nats] servers"),
        ("discovery.peers", "[discovery] enabled"),
    ] {
        let v = call(cmd);
        assert_eq!(v["enabled"], false, "{cmd}: {v}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(section), "{cmd}: {v}");
    }
    let fleet = http_get(&home, "a", "/api/v1/nats.fleet").await;
    assert_eq!(fleet["enabled"], false, "{fleet}");
    assert_eq!(fleet["members"], json!([]), "{fleet}");
    let peers = http_get(&home, "a", "/api/v1/discovery.peers").await;
    assert_eq!(peers["enabled"], false, "{peers}");
    let out = home.cli("a", &["fleet", "status"]);
    assert!(out.status.success(), "fleet status: {}", stderr(&out));
    assert!(stdout(&out).contains("NATS off"), "{}", stdout(&out));

    // On (the server unreachable: the bridge runs and retries), then off again.
    home.write_config("a", "[nats]\nservers = [\"nats://127.0.0.1:1\"]\n");
    let out = home.cli("a", &["reload"]);
    assert!(out.status.success(), "reload: {}", stderr(&out));
    let s = nats_status(&a).await;
    assert_eq!(
        (&s["enabled"], &s["connected"]),
        (&json!(true), &json!(false)),
        "{s}"
    );
    home.write_config("a", "");
    let out = home.cli("a", &["reload"]);
    assert!(out.status.success(), "reload: {}", stderr(&out));
    let s = nats_status(&a).await;
    assert_eq!(s["enabled"], false, "{s}");
}

/// Core NATS loses what the importing bridge cannot hold, and counts it exactly: with
/// `import_buffer = 1` a flood from `a` overflows `b`'s NATS client (it parses many messages
/// per socket read), and every message sent is either delivered to `b`'s subscriber or
/// counted in `b`'s `import_overflows`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_overflows_are_counted_exactly() {
    let Some(server) = NatsServer::start(false) else {
        return;
    };
    let url = server.url();
    let (_home, a, b) = exporter_and_importer(&url, "", "import_buffer = 1\n").await;
    let bb = bus(&b).await;
    let mut got = bb.subscribe("majordomo.n1.a.ev.>").await.unwrap();
    let ab = bus(&a).await;
    const SENT: u64 = 20_000;
    for i in 0..SENT {
        ab.publish("ev.x", &json!({ "i": i })).await.unwrap();
    }
    ab.flush().await.unwrap();
    let s = until(&b, "every message delivered or counted as lost", |s| {
        s["imported"].as_u64().unwrap_or(0) + s["import_overflows"].as_u64().unwrap_or(0) >= SENT
    })
    .await;
    let (imported, lost) = (
        s["imported"].as_u64().unwrap(),
        s["import_overflows"].as_u64().unwrap(),
    );
    assert_eq!(imported + lost, SENT, "{s}");
    assert!(
        lost > 0,
        "nothing overflowed a 1-message import buffer: {s}"
    );
    // What was imported reached the local subscriber, each message once, in order.
    let mut last = None;
    for _ in 0..imported {
        let i = next(&mut got).await.json::<Value>().unwrap()["i"]
            .as_u64()
            .unwrap();
        assert!(last < Some(i), "{i} after {last:?}");
        last = Some(i);
    }
    until(&a, "a exported every message", |s| s["exported"] == SENT).await;
    eprintln!("{imported} imported, {lost} counted as lost");
    drop(server);
}
