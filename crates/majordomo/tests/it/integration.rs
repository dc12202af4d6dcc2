//! Black-box tests of subsystems working together through the hub, as a user sees them: the
//! supervisor's `ready = "bus"` gate opened by a program registering a bus endpoint, and program
//! transitions arriving on the bus's `$sys.program.state` topic.

use std::time::Duration;

use crate::common::{Home, eventually, raw_call};
use futures_util::StreamExt;
use majordomo_client::ConnectOptions;
use majordomo_client::bus::{Bus, BusOptions};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn program(socket: &std::path::Path, name: &str) -> Value {
    raw_call(socket, r#"{"id":1,"cmd":"ps"}"#)
        .and_then(|v| v["ok"]["programs"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or(Value::Null)
}

/// `api` becomes ready only when it registers the bus endpoint named after it (once the test,
/// subscribed to `$sys`, lets it); `web` depends on it and starts only then. Events of both
/// arrive on `$sys`, in the order they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_ready_on_bus_registration_and_program_events_on_the_bus() {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("SKIPPED: python3 is not installed (the endpoint program is a python script)");
        return;
    }
    let home = Home::new();
    // The program reads the socket path from MAJORDOMO_SOCKET, as any supervised program can.
    // It registers only once the `go` file exists: the test creates it after its subscriptions
    // are in place, so no transition can happen before the test listens (under load, a fixed
    // sleep in the program was not enough).
    let go = home.path().join("go");
    let script = "import os, socket, time\n\
                  while not os.path.exists(os.environ['GO']): time.sleep(0.02)\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(os.environ['MAJORDOMO_SOCKET'])\n\
                  s.sendall(b'{\"id\":1,\"cmd\":\"bus.register\",\"endpoint\":\"api\"}\\n')\n\
                  s.recv(4096)\n\
                  time.sleep(1000)\n";
    home.write_config(
        "default",
        &format!(
            "[daemon]\nwatch_config = false\n\n\
             [[program]]\nname = \"api\"\ncommand = \"python3\"\nargs = [\"-c\", '''{script}''']\nready = \"bus\"\nenv = {{ GO = {go:?} }}\n\n\
             [[program]]\nname = \"web\"\ncommand = \"sleep\"\nargs = [\"1000\"]\ndepends_on = [\"api\"]\n"
        ),
    );
    let d = home.start("default");
    let bus = Bus::connect(
        &ConnectOptions::new(&d.socket).wait(Duration::from_secs(10)),
        BusOptions::default(),
    )
    .await
    .expect("bus connection");
    let mut states = bus
        .subscribe("$sys.program.state")
        .await
        .expect("subscribe");
    let mut ups = bus.subscribe("$sys.endpoint.up").await.expect("subscribe");

    // Until api registers, it is running but not ready, and web waits.
    eventually(LONG, || {
        (program(&d.socket, "api")["state"] == "running").then_some(())
    })
    .expect("api starts");
    eventually(LONG, || {
        (program(&d.socket, "web")["state"] == "waiting").then_some(())
    })
    .expect("web waits for api");
    assert_eq!(program(&d.socket, "api")["state"], "running");
    std::fs::write(&go, "").expect("write the go file");
    // The registration opens the gate.
    let up = tokio::time::timeout(LONG, ups.next())
        .await
        .expect("endpoint.up in time")
        .expect("a message");
    let up: Value = up.json().expect("json");
    assert_eq!(up["id"], "api");
    eventually(LONG, || {
        (program(&d.socket, "api")["state"] == "ready").then_some(())
    })
    .expect("api ready after registering");
    eventually(LONG, || {
        let w = program(&d.socket, "web");
        (w["state"] == "running" || w["state"] == "ready").then_some(())
    })
    .expect("web starts once api is ready");

    // The transitions were published on the bus as they happened.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(n, s): &(String, String)| n == "web" && (s == "running" || s == "ready"))
    {
        let m = tokio::time::timeout(LONG, states.next())
            .await
            .expect("program.state in time")
            .expect("a message");
        let v: Value = m.json().expect("json");
        seen.push((
            v["name"].as_str().unwrap_or_default().to_string(),
            v["state"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let at = |name: &str, state: &str| seen.iter().position(|(n, s)| n == name && s == state);
    let ready = at("api", "ready");
    assert!(ready.is_some(), "{seen:?}");
    // web starts because api is ready: the events say so in that order.
    assert!(ready < at("web", "starting"), "{seen:?}");
}
