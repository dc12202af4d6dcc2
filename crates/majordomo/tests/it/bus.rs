//! Black-box tests of the message bus (README section "The message bus"): the real binary, its
//! real socket, the SDK, raw JSON lines and the CLI.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::{Daemon, Home, Line, eventually, stderr, stdout};
use futures_util::StreamExt;
use majordomo_client::bus::{Bus, BusOptions};
use majordomo_client::{ClientError, ConnectOptions};
use majordomo_proto::ErrorCode;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

async fn bus(d: &Daemon) -> Bus {
    Bus::connect(
        &ConnectOptions::new(&d.socket).wait(Duration::from_secs(10)),
        BusOptions::default(),
    )
    .await
    .expect("bus connect")
}

async fn bus_binary(d: &Daemon) -> Bus {
    Bus::connect(
        &ConnectOptions::new(&d.socket).wait(Duration::from_secs(10)),
        BusOptions {
            binary: true,
            ..Default::default()
        },
    )
    .await
    .expect("bus connect (binary)")
}

async fn next<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(LONG, s.next())
        .await
        .expect("an item within the deadline")
        .expect("stream open")
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(b) => Some(b.code),
        _ => None,
    }
}

fn ls(d: &Daemon) -> Value {
    let mut l = Line::connect(d);
    l.call(r#"{"id":1,"cmd":"bus.ls"}"#)["ok"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_endpoints_exchange_events_and_presence() {
    let home = Home::new();
    let d = home.start("default");
    let watcher = bus(&d).await;
    let mut presence = watcher.subscribe("$sys.endpoint.*").await.unwrap();

    let a = bus(&d).await;
    let b = bus(&d).await;
    a.register("worker-1").await.unwrap();
    b.register("worker-2").await.unwrap();
    let mut b_events = b.events().unwrap();
    a.send("worker-2", "job.done", &json!({"n": 7}))
        .await
        .unwrap();
    let ev = next(&mut b_events).await;
    assert_eq!(ev.name, "job.done");
    assert_eq!(ev.from.as_deref(), Some("worker-1"));
    assert_eq!(ev.data, json!({"n": 7}));
    assert!(ev.ts.ends_with('Z') && ev.ts.len() >= 20, "{}", ev.ts);

    // Presence on the system topics.
    let up1 = next(&mut presence).await;
    assert_eq!(up1.topic, "$sys.endpoint.up");
    assert_eq!(up1.json::<Value>().unwrap()["id"], "worker-1");
    let up2 = next(&mut presence).await;
    assert_eq!(up2.json::<Value>().unwrap()["id"], "worker-2");

    // An unknown target is an error at once.
    let e = a.send("nobody", "x", &1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotFound), "{e}");

    // A live id is refused to a second connection...
    let c = bus(&d).await;
    let e = c.register("worker-2").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Conflict), "{e}");
    // ...unless it takes over: the old connection is told, then closed.
    let mut b_notices = b.notices().unwrap();
    c.register_with("worker-2", true, None).await.unwrap();
    let n = next(&mut b_notices).await;
    assert_eq!(n.kind, "taken_over");
    let mut c_events = c.events().unwrap();
    a.send("worker-2", "again", &json!(null)).await.unwrap();
    assert_eq!(next(&mut c_events).await.name, "again");
    let down = next(&mut presence).await;
    assert_eq!(down.topic, "$sys.endpoint.down");
    assert_eq!(down.json::<Value>().unwrap()["reason"], "taken over");

    // Disconnecting unregisters.
    drop(a);
    let down = next(&mut presence).await;
    let v: Value = down.json().unwrap();
    if v["id"] == "worker-2" {
        // The take-over's new "up" may come first.
        let again = next(&mut presence).await;
        assert_eq!(again.json::<Value>().unwrap()["id"], "worker-1");
    }
    assert!(
        eventually(LONG, || {
            let v = ls(&d);
            let ids: Vec<&str> = v["endpoints"]
                .as_array()?
                .iter()
                .filter_map(|e| e["id"].as_str())
                .collect();
            (ids == vec!["worker-2"]).then_some(())
        })
        .is_some()
    );

    // An event may wait for its target to register.
    let waiter = tokio::spawn({
        let socket = d.socket.clone();
        async move {
            let s = Bus::connect(&ConnectOptions::new(&socket), BusOptions::default())
                .await
                .unwrap();
            s.send_wait("late", "hello", &json!("hi"), Duration::from_secs(15))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = bus(&d).await;
    let mut late_events = late.events().unwrap();
    late.register("late").await.unwrap();
    assert_eq!(next(&mut late_events).await.data, json!("hi"));
    waiter.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_wildcards_and_queue_groups() {
    let home = Home::new();
    let d = home.start("default");
    let s = bus(&d).await;
    let mut one = s.subscribe("orders.*.new").await.unwrap();
    let mut rest = s.subscribe("orders.>").await.unwrap();
    let p = bus(&d).await;
    assert_eq!(
        p.publish_acked("orders.7.new", &json!({"k": 1}))
            .await
            .unwrap(),
        2
    );
    assert_eq!(p.publish_acked("orders.7.new.x", &1).await.unwrap(), 1);
    assert_eq!(p.publish_acked("orders", &1).await.unwrap(), 0);
    assert_eq!(p.publish_acked("other.7.new", &1).await.unwrap(), 0);
    let m = next(&mut one).await;
    assert_eq!(
        (m.topic.as_str(), m.json::<Value>().unwrap()),
        ("orders.7.new", json!({"k": 1}))
    );
    assert_eq!(next(&mut rest).await.topic, "orders.7.new");
    assert_eq!(next(&mut rest).await.topic, "orders.7.new.x");

    // Bad patterns and topics are refused.
    let e = s.subscribe("orders..x").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest));
    let e = p.publish_acked("orders.*", &1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest));
    let e = p.publish_acked("$sys.fake", &1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden));

    // A queue group: each message to exactly one member, all members used.
    let g1 = bus(&d).await;
    let g2 = bus(&d).await;
    let mut q1 = g1.subscribe_queue("work.>", "workers").await.unwrap();
    let mut q2 = g2.subscribe_queue("work.>", "workers").await.unwrap();
    let mut plain = s.subscribe("work.>").await.unwrap();
    for i in 0..40 {
        assert_eq!(p.publish_acked("work.item", &i).await.unwrap(), 2);
    }
    let mut got = Vec::new();
    for _ in 0..40 {
        got.push(next(&mut plain).await.json::<i64>().unwrap());
    }
    assert_eq!(got, (0..40).collect::<Vec<_>>());
    let mut n1 = 0;
    let mut n2 = 0;
    let mut all = Vec::new();
    while n1 + n2 < 40 {
        tokio::select! {
            Some(m) = q1.next() => { n1 += 1; all.push(m.json::<i64>().unwrap()); }
            Some(m) = q2.next() => { n2 += 1; all.push(m.json::<i64>().unwrap()); }
            _ = tokio::time::sleep(LONG) => panic!("queue group lost messages: {n1} + {n2}"),
        }
    }
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert!(n1 > 0 && n2 > 0, "{n1} / {n2}");

    // Unsubscribing stops delivery.
    s.unsubscribe(one).await.unwrap();
    assert_eq!(p.publish_acked("orders.1.new", &1).await.unwrap(), 1);
    assert_eq!(next(&mut rest).await.topic, "orders.1.new");
    // A fire-and-forget publish right before the connection is dropped still goes out.
    let quick = bus(&d).await;
    quick.publish("orders.last", &"bye").await.unwrap();
    drop(quick);
    let m = next(&mut rest).await;
    assert_eq!(
        (m.topic.as_str(), m.json::<String>().unwrap().as_str()),
        ("orders.last", "bye")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_request_reply_timeout_and_no_responder() {
    let home = Home::new();
    let d = home.start("default");
    let responder = bus(&d).await;
    let mut reqs = responder.subscribe("price.get").await.unwrap();
    let server = tokio::spawn(async move {
        while let Some(m) = reqs.next().await {
            let sku: Value = m.json().unwrap();
            if sku == "slow" {
                continue; // never answers
            }
            let to = m.reply_to.clone().unwrap();
            responder
                .reply(&to, &json!({"sku": sku, "price": 3}))
                .await
                .unwrap();
        }
    });
    let r = bus(&d).await;
    let v = r
        .request("price.get", &"x", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v, json!({"sku": "x", "price": 3}));
    let e = r
        .request("nobody.home", &1, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NoResponders), "{e}");
    let e = r
        .request("price.get", &"slow", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Timeout), "{e}");

    // The CLI: the reply on stdout, exit 0; non-zero with no responder or on timeout.
    let out = home.cli(
        "default",
        &[
            "--json",
            "bus",
            "request",
            "price.get",
            "\"y\"",
            "--timeout",
            "10s",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["sku"],
        "y"
    );
    let out = home.cli(
        "default",
        &["bus", "request", "nobody.home", "1", "--timeout", "1s"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no_responders"), "{}", stderr(&out));
    let out = home.cli(
        "default",
        &[
            "bus",
            "request",
            "price.get",
            "\"slow\"",
            "--timeout",
            "300ms",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("timeout"), "{}", stderr(&out));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_seed_004_shapes() {
    let home = Home::new();
    let d = home.start("default");
    let mut m1 = Line::connect(&d);
    let mut m2 = Line::connect(&d);
    m1.send(r#"{"Type":"Register","Payload":{"MachineId":"machine-1","ProcessName":"ui","ProcessId":1,"RegisteredAt":"2025-01-01T00:00:00Z"}}"#);
    m2.send(r#"{"Type":"Register","Payload":{"MachineId":"machine-2"}}"#);
    assert!(
        eventually(LONG, || (ls(&d)["endpoints"].as_array()?.len() == 2)
            .then_some(()))
        .is_some()
    );
    m1.send(r#"{"Type":"SendEvent","Payload":{"SourceMachineId":"machine-1","TargetMachineId":"machine-2","EventName":"TEST_EVENT","Payload":{"Data":"Hello"},"Timestamp":"2025-01-01T00:00:00Z"}}"#);
    let v = m2.recv();
    assert_eq!(v["Type"], "SendEvent");
    assert_eq!(v["Payload"]["EventName"], "TEST_EVENT");
    assert_eq!(v["Payload"]["SourceMachineId"], "machine-1");
    assert_eq!(v["Payload"]["TargetMachineId"], "machine-2");
    assert_eq!(v["Payload"]["Payload"], json!({"Data": "Hello"}));
    assert!(v["Payload"]["Timestamp"].is_string());
    // An SDK client reaches the seed-shaped receiver; the receiver keeps its shape.
    let sdk = bus(&d).await;
    sdk.register("modern").await.unwrap();
    sdk.send("machine-2", "FROM_SDK", &json!([1]))
        .await
        .unwrap();
    let v = m2.recv();
    assert_eq!(v["Payload"]["SourceMachineId"], "modern");
    assert_eq!(v["Payload"]["EventName"], "FROM_SDK");
    // A seed-shaped sender reaches an SDK receiver.
    let mut ev = sdk.events().unwrap();
    m1.send(r#"{"Type":"SendEvent","Payload":{"SourceMachineId":"machine-1","TargetMachineId":"modern","EventName":"E","Payload":null}}"#);
    let e = next(&mut ev).await;
    assert_eq!(
        (e.name.as_str(), e.from.as_deref()),
        ("E", Some("machine-1"))
    );
    // Errors come back in the seed's shape.
    m1.send(r#"{"Type":"SendEvent","Payload":{"TargetMachineId":"ghost","EventName":"E"}}"#);
    let v = m1.recv();
    assert_eq!(v["Type"], "Error");
    assert_eq!(v["Payload"]["Code"], "not_found");
    m1.send(r#"{"Type":"Dance","Payload":{}}"#);
    assert_eq!(m1.recv()["Payload"]["Code"], "unknown_command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_stalled_subscriber_does_not_delay_another() {
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\nqueue_messages = 2000\nqueue_bytes = \"64MiB\"\n",
    );
    let d = home.start("default");
    // A subscriber that never reads.
    let mut stalled = Line::connect(&d);
    assert!(stalled.call(r#"{"id":1,"cmd":"bus.sub","pattern":"flood"}"#)["ok"]["sid"].is_u64());
    let healthy = bus(&d).await;
    let mut sub = healthy.subscribe("flood").await.unwrap();
    let p = bus(&d).await;
    let payload = "x".repeat(1000);
    const N: usize = 20_000;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            let mut n = 0;
            while n < N {
                let m = next(&mut sub).await;
                assert_eq!(m.json::<Value>().unwrap()["i"], n);
                n += 1;
                received.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        }
    });
    for i in 0..N {
        // Keep the healthy subscriber within its queue bound (2000), whatever the machine's
        // load: the stalled one falls behind without bound.
        while i >= received.load(std::sync::atomic::Ordering::Relaxed) + 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        p.publish("flood", &json!({"i": i, "pad": payload}))
            .await
            .unwrap();
    }
    p.flush().await.unwrap();
    // The healthy subscriber got every message although the other one never read.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap()
            .unwrap(),
        N
    );
    // The stalled one lost the oldest ones, counted.
    let v = ls(&d);
    let dropped = v["counters"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{v}");
    // When it reads again, it is told how many it lost, and then gets the newest messages.
    let mut saw_notice = false;
    let mut last_i = 0;
    for _ in 0..(N + 10) {
        let v = stalled.recv();
        if v["notice"]["kind"] == "dropped" {
            assert!(v["notice"]["count"].as_u64().unwrap() > 0);
            saw_notice = true;
        }
        if let Some(i) = v["msg"]["data"]["i"].as_u64() {
            last_i = i;
            if i as usize == N - 1 {
                break;
            }
        }
    }
    assert!(saw_notice);
    assert_eq!(last_i as usize, N - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_slow_consumer_disconnect_policy() {
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\nqueue_messages = 100\nqueue_bytes = \"1MiB\"\nslow_consumer = \"disconnect\"\n",
    );
    let d = home.start("default");
    let mut stalled = Line::connect(&d);
    assert!(stalled.call(r#"{"id":1,"cmd":"bus.sub","pattern":"flood"}"#)["ok"].is_object());
    let p = bus(&d).await;
    let pad = "y".repeat(2000);
    for i in 0..5000 {
        p.publish("flood", &json!({"i": i, "pad": pad}))
            .await
            .unwrap();
    }
    p.flush().await.unwrap();
    assert!(
        eventually(LONG, || (ls(&d)["counters"]["connections"].as_u64()? <= 2)
            .then_some(()))
        .is_some(),
        "the slow consumer was not disconnected"
    );
    // It reads what the kernel still held (the last notice is best effort: its socket was
    // full), then the end of the stream.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stalled.r, &mut rest).unwrap();
    assert!(!rest.is_empty());
    // The publisher is fine.
    assert_eq!(p.publish_acked("flood", &1).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_oversize_and_malformed_frames() {
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\nmax_message = \"1KiB\"\nmax_subscriptions = 2\n",
    );
    let d = home.start("default");
    let mut l = Line::connect(&d);
    let big = "z".repeat(2000);
    let v = l.call(&format!(
        r#"{{"id":1,"cmd":"bus.pub","topic":"a","data":"{big}"}}"#
    ));
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert_eq!(v["id"], 1);
    for (line, code) in [
        (r#"{"id":2,"cmd":"bus.pub"}"#, "bad_request"),
        (r#"{"id":3,"cmd":"bus.pub","topic":"a b"}"#, "bad_request"),
        (
            r#"{"id":4,"cmd":"bus.sub","pattern":"a.>.b"}"#,
            "bad_request",
        ),
        (r#"{"id":5,"cmd":"bus.nope"}"#, "unknown_command"),
        (
            r#"{"id":6,"cmd":"bus.register","endpoint":"bad id!"}"#,
            "bad_request",
        ),
        (
            r#"{"id":7,"cmd":"bus.request","topic":"x"}"#,
            "no_responders",
        ),
        (
            r#"{"id":8,"cmd":"bus.reply","to":"_INBOX.999","data":1}"#,
            "not_found",
        ),
        (r#"{"id":9,"cmd":"bus.unsub","sid":77}"#, "not_found"),
        (r#"{"id":10,"cmd":"bus.send","to":"x"}"#, "bad_request"),
        (
            r#"{"id":11,"cmd":"bus.sub","pattern":"a","queue":""}"#,
            "bad_request",
        ),
        // A wrong argument type is a bad request naming the field, not an unknown command.
        (r#"{"id":12,"cmd":"bus.unsub","sid":"x"}"#, "bad_request"),
        (r#"{"id":13,"cmd":"bus.sub","pattern":7}"#, "bad_request"),
        (r#"{"Type":"Register","Payload":{}}"#, ""),
        (r#"{"cmd":"bus.pub","topic":"a","data":[1,2}"#, "bad_json"),
    ] {
        let v = l.call(line);
        if code.is_empty() {
            assert_eq!(v["Type"], "Error", "{line} -> {v}");
        } else {
            assert_eq!(v["error"]["code"], code, "{line} -> {v}");
        }
    }
    let v = l.call(r#"{"id":14,"cmd":"bus.request","topic":"x","timeout_ms":"soon"}"#);
    assert_eq!(v["id"], 14, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`timeout_ms`"), "{v}");
    // The subscription limit.
    assert!(l.call(r#"{"id":20,"cmd":"bus.sub","pattern":"a"}"#)["ok"].is_object());
    assert!(l.call(r#"{"id":21,"cmd":"bus.sub","pattern":"b"}"#)["ok"].is_object());
    assert_eq!(
        l.call(r#"{"id":22,"cmd":"bus.sub","pattern":"c"}"#)["error"]["code"],
        "too_large"
    );
    // The connection still works, and so does the daemon.
    assert_eq!(l.call(r#"{"id":23,"cmd":"ping"}"#)["ok"], "pong");

    // Binary framing: garbage after the switch closes only that connection.
    let mut raw = UnixStream::connect(&d.socket).unwrap();
    raw.set_read_timeout(Some(LONG)).unwrap();
    raw.write_all(b"{\"id\":1,\"cmd\":\"hello\",\"framing\":\"binary-v1\"}\n")
        .unwrap();
    let mut r = BufReader::new(raw.try_clone().unwrap());
    let mut hello = String::new();
    r.read_line(&mut hello).unwrap();
    assert!(hello.contains("binary-v1"), "{hello}");
    raw.write_all(&[9, 0, 0, 0, 42, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    // The daemon may already have closed the connection after the bad frame: a broken pipe
    // here is expected, not a failure.
    let _ = raw.write_all(&[255, 255, 255, 127]);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut r, &mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("unknown frame kind") || text.contains("bad_request"),
        "{text}"
    );
    assert_eq!(l.call(r#"{"id":24,"cmd":"ping"}"#)["ok"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_binary_framing_interoperates_with_json_lines() {
    let home = Home::new();
    let d = home.start("default");
    let json_sub = bus(&d).await;
    let bin_sub = bus_binary(&d).await;
    let mut a = json_sub.subscribe("t.>").await.unwrap();
    let mut b = bin_sub.subscribe("t.>").await.unwrap();
    let bin_pub = bus_binary(&d).await;
    for i in 0..100 {
        bin_pub.publish("t.x", &json!({"i": i})).await.unwrap();
    }
    for i in 0..100 {
        assert_eq!(next(&mut a).await.json::<Value>().unwrap()["i"], i);
        assert_eq!(next(&mut b).await.json::<Value>().unwrap()["i"], i);
    }
    // Batches from either framing reach every subscriber whole and in order (a run encoded
    // once and shared by the two binary subscribers); a payload strict parsers reject is
    // refused alone, the rest of its batch still goes out.
    let bin_sub2 = bus_binary(&d).await;
    let mut c = bin_sub2.subscribe("t.>").await.unwrap();
    let mut batch: Vec<String> = (0..50).map(|j| format!(r#"{{"j":{j}}}"#)).collect();
    batch.insert(20, "1e999".into());
    for (publisher, topic) in [(&bin_pub, "t.y"), (&json_sub, "t.z")] {
        publisher.publish_json_batch(topic, &batch).await.unwrap();
        for j in 0..50 {
            for s in [&mut a, &mut b, &mut c] {
                assert_eq!(next(s).await.json::<Value>().unwrap()["j"], j);
            }
        }
    }
    // Requests, replies and errors work over the binary framing too.
    let e = bin_pub
        .request("none", &1, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NoResponders));
    bin_pub.register("bin-1").await.unwrap();
    let mut ev = bin_pub.events().unwrap();
    json_sub
        .send("bin-1", "ev", &json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(next(&mut ev).await.name, "ev");
}

/// A call made behind queued publishes goes out after them, in both framings: whatever path
/// the SDK writes a call by, it keeps its place in the connection's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_calls_keep_their_place_behind_queued_publishes() {
    let home = Home::new();
    let d = home.start("default");
    for binary in [false, true] {
        let sub = if binary {
            bus_binary(&d).await
        } else {
            bus(&d).await
        };
        let mut s = sub.subscribe("order").await.unwrap();
        let p = if binary {
            bus_binary(&d).await
        } else {
            bus(&d).await
        };
        const N: u64 = 20_000;
        let pad = "z".repeat(200);
        for round in 0..3u64 {
            for i in 0..N {
                p.publish("order", &json!({"i": i, "pad": pad}))
                    .await
                    .unwrap();
            }
            // Acknowledged publishes are calls: each is answered after the daemon read every
            // publish before it, so it arrives last, after all of this round's messages.
            assert_eq!(p.publish_acked("order", &json!({"i": N})).await.unwrap(), 1);
            for i in 0..=N {
                let got = next(&mut s).await.json::<Value>().unwrap()["i"].as_u64();
                assert_eq!(got, Some(i), "round {round}, binary {binary}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_thousand_concurrent_connections() {
    let home = Home::new();
    let d = home.start("default");
    const N: usize = 1000;
    let mut subs = Vec::with_capacity(N);
    for i in 0..N {
        let mut l = Line::connect(&d);
        l.send(&format!(
            r#"{{"id":{i},"cmd":"bus.sub","pattern":"all.>"}}"#
        ));
        subs.push(l);
    }
    for (i, l) in subs.iter_mut().enumerate() {
        let v = l.recv();
        assert_eq!(v["id"], i, "{v}");
        assert!(v["ok"]["sid"].is_u64(), "{v}");
    }
    let p = bus(&d).await;
    assert_eq!(
        p.publish_acked("all.hello", &"everyone").await.unwrap(),
        N as u64
    );
    for l in subs.iter_mut() {
        assert_eq!(l.recv()["msg"]["data"], "everyone");
    }
    // Each connection is still answered.
    for (i, l) in subs.iter_mut().enumerate().step_by(97) {
        assert_eq!(
            l.call(&format!(r#"{{"id":{i},"cmd":"ping"}}"#))["ok"],
            "pong"
        );
    }
    assert_eq!(
        ls(&d)["counters"]["connections"].as_u64().unwrap(),
        N as u64 + 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_access_tokens_and_topic_permissions() {
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\npublish = [\"public.>\"]\n[bus.endpoints.billing]\ntoken = \"s3cret\"\npublish = [\"billing.>\"]\nsubscribe = [\"orders.*\"]\n",
    );
    let d = home.start("default");
    let anon = bus(&d).await;
    assert_eq!(anon.publish_acked("public.x", &1).await.unwrap(), 0);
    let e = anon.publish_acked("billing.x", &1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let b = bus(&d).await;
    let e = b.register("billing").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let e = b
        .register_with("billing", false, Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    b.register_with("billing", false, Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(b.publish_acked("billing.done", &1).await.unwrap(), 0);
    let e = b.publish_acked("public.x", &1).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden));
    assert!(b.subscribe("orders.new").await.is_ok());
    let e = b.subscribe("orders.>").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden));
    // A bad pattern in the config is reported with its place.
    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "[bus]\nsubscribe = [\"a..b\"]\n").unwrap();
    let out = home.cli("default", &["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("bus.subscribe[0]"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_cli_verbs() {
    let home = Home::new();
    let d = home.start("default");
    let sub = std::process::Command::new(crate::common::BIN)
        .args([
            "--home",
            home.path().to_str().unwrap(),
            "bus",
            "sub",
            "cli.>",
            "--count",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(LONG, || (ls(&d)["counters"]["subscriptions"].as_u64()?
            == 1)
            .then_some(()))
        .is_some()
    );
    let out = home.cli("default", &["bus", "pub", "cli.a", r#"{"x":1}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 subscriber"), "{}", stdout(&out));
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        v,
        json!({"topic": "cli.a", "data": {"x": 1}, "reply_to": null})
    );

    let r = bus(&d).await;
    r.register("receiver").await.unwrap();
    let mut ev = r.events().unwrap();
    let out = home.cli(
        "default",
        &[
            "bus",
            "send",
            "receiver",
            "ping",
            "[1]",
            "--as",
            "cli-sender",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e = next(&mut ev).await;
    assert_eq!(
        (e.name.as_str(), e.from.as_deref(), e.data.clone()),
        ("ping", Some("cli-sender"), json!([1]))
    );
    let out = home.cli("default", &["bus", "send", "ghost", "ping"]);
    assert!(!out.status.success());
    let out = home.cli("default", &["--json", "bus", "ls"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "receiver")
    );
    assert!(v["counters"]["events"].as_u64().unwrap() >= 1);
    let human = stdout(&home.cli("default", &["bus", "ls"]));
    assert!(
        human.contains("receiver") && human.contains("counters"),
        "{human}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_limits_change_on_reload_without_dropping_connections() {
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\nmax_message = \"1KiB\"\n",
    );
    let d = home.start("default");
    let mut l = Line::connect(&d);
    let big = format!(
        r#"{{"id":1,"cmd":"bus.pub","topic":"a","data":"{}"}}"#,
        "z".repeat(2000)
    );
    assert_eq!(l.call(&big)["error"]["code"], "too_large");
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\nmax_message = \"4KiB\"\n",
    );
    let out = home.cli("default", &["--json", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["updated"], json!(["bus"]), "{v}");
    // The same connection, now under the new limit.
    assert_eq!(l.call(&big)["ok"]["delivered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_connection_without_a_first_line_is_closed() {
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[bus]\nfirst_line_timeout = \"1s\"\n",
    );
    let d = home.start("default");
    // One connection sends nothing, another half a line without its newline.
    let mut silent = Line::connect(&d);
    let mut partial = Line::connect(&d);
    partial.w.write_all(br#"{"id":1,"cmd":"sta"#).unwrap();
    // A connection that completed its first line stays open past the deadline.
    let mut active = Line::connect(&d);
    assert_eq!(active.call(r#"{"id":1,"cmd":"ping"}"#)["ok"], json!("pong"));
    for (what, l) in [("silent", &mut silent), ("partial", &mut partial)] {
        let v = l.recv();
        assert_eq!(v["error"]["code"], "bad_request", "{what}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("first_line_timeout"), "{what}: {msg}");
        assert!(l.next().is_none(), "{what}: the connection stays open");
    }
    assert!(active.quiet(Duration::from_millis(1500)));
    assert_eq!(active.call(r#"{"id":2,"cmd":"ping"}"#)["ok"], json!("pong"));
}

/// `VmRSS` or `VmHWM` of a process, in bytes.
fn proc_status_bytes(pid: u64, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

fn status_json(home: &Home) -> Value {
    let out = home.cli("default", &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_stalled_subscribers_stay_within_the_daemon_wide_queue_cap() {
    const MIB: u64 = 1024 * 1024;
    let home = Home::new();
    home.write_config(
        "default",
        "[daemon]\nwatch_config = false\n[monitor]\nenabled = false\n[bus]\nqueue_bytes = \"8MiB\"\ntotal_queue_bytes = \"16MiB\"\n",
    );
    let d = home.start("default");
    let pid = status_json(&home)["pid"].as_u64().unwrap();
    // Ten subscribers that never read.
    let mut stalled: Vec<Line> = (0..10)
        .map(|i| {
            let mut l = Line::connect(&d);
            let v = l.call(&format!(
                r#"{{"id":{i},"cmd":"bus.sub","pattern":"flood"}}"#
            ));
            assert!(v["ok"]["sid"].is_u64(), "{v}");
            l
        })
        .collect();
    let p = bus(&d).await;
    p.publish_acked("flood", &0).await.unwrap();
    let baseline = proc_status_bytes(pid, "VmRSS");
    // 10 x 40 MiB offered: each alone would fill its 8 MiB bound.
    let pad = "z".repeat(4000);
    for i in 0..10_000 {
        p.publish("flood", &json!({"i": i, "pad": pad}))
            .await
            .unwrap();
    }
    assert_eq!(p.publish_acked("flood", &1).await.unwrap(), 10);
    // The queues together hold about the daemon-wide cap, counted in real memory, and the
    // daemon's peak resident memory grew by about that much, not by ten per-connection bounds.
    let v = ls(&d);
    let c = &v["counters"];
    assert_eq!(c["total_queue_bytes"], 16 * MIB, "{c}");
    let memory = c["memory_bytes"].as_u64().unwrap();
    assert!(memory <= 17 * MIB, "queues hold {memory} bytes: {c}");
    assert!(c["overflows"].as_u64().unwrap() > 0, "{c}");
    assert!(c["dropped"].as_u64().unwrap() >= c["overflows"].as_u64().unwrap());
    for conn in v["connections"].as_array().unwrap() {
        assert!(conn["memory_bytes"].as_u64().unwrap() <= 8 * MIB, "{conn}");
    }
    let peak = proc_status_bytes(pid, "VmHWM");
    assert!(
        peak < baseline + 48 * MIB,
        "peak RSS {} MiB, {} MiB before the flood",
        peak / MIB,
        baseline / MIB
    );
    // `status` shows the overflow too (the bus publishes its health every second).
    let s = eventually(LONG, || {
        let s = status_json(&home);
        (s["bus"]["overflows"].as_u64()? > 0).then_some(s)
    })
    .expect("status shows the bus's overflows");
    assert!(
        s["bus"]["memory_bytes"].as_u64().unwrap() <= 17 * MIB,
        "{s}"
    );
    // A stalled subscriber that reads again is told what it lost (after what its socket
    // already held).
    let told = (0..20_000).any(|_| stalled[0].recv()["notice"]["kind"] == "dropped");
    assert!(told, "no dropped notice");
    eprintln!(
        "RSS before the flood {} MiB, peak {} MiB; queues {} MiB; {c}",
        baseline / MIB,
        peak / MIB,
        memory / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_health_in_ls_and_status() {
    let home = Home::new();
    home.write_config("default", "[daemon]\nwatch_config = false\n");
    let d = home.start("default");
    let before = ls(&d);
    let worker = bus(&d).await;
    worker.register("worker-1").await.unwrap();
    let mut sub = worker.subscribe("jobs").await.unwrap();
    let extra: Vec<Line> = (0..3).map(|_| Line::connect(&d)).collect();
    let p = bus(&d).await;
    for i in 0..5 {
        p.publish("jobs", &json!({"i": i})).await.unwrap();
    }
    for _ in 0..5 {
        next(&mut sub).await;
    }
    assert_eq!(worker.publish_acked("done", &"ok").await.unwrap(), 0);
    drop(extra);
    let v = eventually(LONG, || {
        let v = ls(&d);
        (v["counters"]["connections"].as_u64()? <= 3).then_some(v)
    })
    .expect("the extra connections close");
    let c = &v["counters"];
    // worker, its three neighbours and the publisher were open together (the `bus ls`
    // connections come and go, so they may or may not have raised the peak).
    assert!(c["peak_connections"].as_u64().unwrap() >= 5, "{c}");
    assert!(c["peak_connections"].as_u64().unwrap() > c["connections"].as_u64().unwrap());
    assert!(c["peak_at"].as_str().unwrap().ends_with('Z'), "{c}");
    let last = c["last_activity"].as_str().unwrap();
    assert!(
        before["counters"]["last_activity"]
            .as_str()
            .is_none_or(|b| b <= last),
        "{before} {c}"
    );
    let w = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "worker-1")
        .unwrap_or_else(|| panic!("{v}"));
    // In: register, subscribe, one publish at least; out: their replies and five messages.
    assert!(w["msgs_in"].as_u64().unwrap() >= 3, "{w}");
    assert!(w["bytes_in"].as_u64().unwrap() > 50, "{w}");
    assert!(w["msgs_out"].as_u64().unwrap() >= 8, "{w}");
    assert!(w["bytes_out"].as_u64().unwrap() > 5 * 20, "{w}");
    assert_eq!(w["dropped"], 0, "{w}");
    let s = eventually(LONG, || {
        let s = status_json(&home);
        (s["bus"]["peak_connections"].as_u64()? >= 5).then_some(s)
    })
    .expect("status shows the bus's health");
    for field in [
        "connections",
        "last_activity",
        "peak_at",
        "memory_bytes",
        "overflows",
    ] {
        assert!(!s["bus"][field].is_null(), "{field}: {s}");
    }
}
