//! The http subsystem against the real binary: auth (no token, roles, cookie login, CSRF, rate
//! limit, rotation), every read route against its socket twin, the OpenAPI document, SSE, a
//! WebSocket client and a socket client exchanging bus messages, `promtool check metrics`, the
//! port fallback, and one dashboard journey in headless Chromium over WebDriver.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::common::{Daemon, Home, raw_call, stderr, stdout};

const READ_TOKEN: &str = "read-token-0123456789abcdef";
const OPERATE_TOKEN: &str = "operate-token-0123456789abcdef";

fn config(extra: &str) -> String {
    format!(
        "[[program]]\nname = \"sleeper\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo hello from sleeper; exec sleep 1000\"]\n\n\
         [http]\nlogin_attempts_per_minute = 3\n\
         [[http.tokens]]\nname = \"grafana\"\ntoken = \"{READ_TOKEN}\"\nrole = \"read\"\n\
         [[http.tokens]]\nname = \"ci\"\ntoken = \"{OPERATE_TOKEN}\"\nrole = \"operate\"\n{extra}"
    )
}

/// The daemon's HTTP base URL and login token, from `majordomo http url --json`.
struct Web {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Web {
    fn of(home: &Home, instance: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let o = home.cli(instance, &["--json", "http", "url"]);
        assert!(o.status.success(), "http url: {}", stderr(&o));
        let v: Value = serde_json::from_str(stdout(&o).trim()).expect("http url --json");
        let url = v["url"].as_str().expect("url").to_string();
        let (base, token) = url.split_once("/?token=").expect("a link with the token");
        Self {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .read_timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("GET");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut r = self.http.post(self.url(path)).json_body(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("POST");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

fn socket_ok(d: &Daemon, cmd: &str, args: Value) -> Value {
    let mut line = args;
    line["cmd"] = json!(cmd);
    line["id"] = json!(1);
    let v = raw_call(&d.socket, &line.to_string()).expect("socket answers");
    v.get("ok")
        .cloned()
        .unwrap_or_else(|| panic!("{cmd} on the socket: {v}"))
}

fn wait_program(d: &Daemon, name: &str, state: &str) {
    let ok = crate::common::eventually(Duration::from_secs(15), || {
        let ps = socket_ok(d, "ps", json!({ "name": name }));
        (ps["programs"][0]["state"] == state).then_some(())
    });
    assert!(ok.is_some(), "{name} never reached {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_roles_cookie_csrf_rate_limit_and_rotation() {
    let home = Home::new();
    home.write_config("web", &config(""));
    let d = home.start("web");
    let w = Web::of(&home, "web");
    wait_program(&d, "sleeper", "ready");

    // No token: 401 with the error shape and a WWW-Authenticate challenge.
    let resp = w.http.get(w.url("/api/v1/status")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    assert_eq!(w.get("/metrics", None).await.0, 401);
    assert_eq!(w.get("/api/v1/events", None).await.0, 401);

    // A read token reads but cannot act; operate can restart but not shut down.
    assert_eq!(w.get("/api/v1/ps", Some(READ_TOKEN)).await.0, 200);
    let (s, e) = w
        .post(
            "/api/v1/restart",
            Some(READ_TOKEN),
            json!({"name": "sleeper"}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    assert_eq!(e["error"]["code"], "forbidden");
    let (s, r) = w
        .post(
            "/api/v1/restart",
            Some(OPERATE_TOKEN),
            json!({"name": "sleeper"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["programs"][0]["name"], "sleeper");
    assert_eq!(
        w.post("/api/v1/shutdown", Some(OPERATE_TOKEN), json!({}))
            .await
            .0,
        403
    );

    // Cookie login: the token in the link becomes an HttpOnly, SameSite=Strict cookie and the
    // redirect drops it from the address.
    let resp = w
        .http
        .get(w.url(&format!("/?token={}", w.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let page = w
        .http
        .get(w.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let status = w
        .http
        .get(w.url("/api/v1/status"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status().as_u16(), 200);
    // CSRF: a cookie-authenticated action without the header is refused, with it accepted.
    let no_csrf = w
        .http
        .post(w.url("/api/v1/restart"))
        .header("cookie", &cookie)
        .json_body(&json!({"name": "sleeper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status().as_u16(), 403);
    let cross = w
        .http
        .post(w.url("/api/v1/restart"))
        .header("cookie", &cookie)
        .header("x-majordomo-csrf", "1")
        .header("sec-fetch-site", "cross-site")
        .json_body(&json!({"name": "sleeper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    let with = w
        .http
        .post(w.url("/api/v1/restart"))
        .header("cookie", &cookie)
        .header("x-majordomo-csrf", "1")
        .json_body(&json!({"name": "sleeper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(with.status().as_u16(), 200);

    // Rotation: the old token and its sessions stop working, the new link works.
    let o = home.cli("web", &["http", "rotate-token"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new_link = stdout(&o);
    let new_token = new_link.trim().split("?token=").nth(1).unwrap().to_string();
    assert_ne!(new_token, w.token);
    let file = std::fs::read_to_string(home.path().join("web").join("state/http/token"))
        .or_else(|_| {
            let st = socket_ok(&d, "http.info", json!({}));
            std::fs::read_to_string(st["token_file"].as_str().unwrap())
        })
        .unwrap();
    assert_eq!(file.trim(), new_token);
    assert_eq!(w.get("/api/v1/ping", Some(&new_token)).await.0, 200);
    let old = w
        .http
        .get(w.url("/api/v1/status"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status().as_u16(), 401);
    // The token never reaches the log file.
    let logs = std::fs::read_dir(home.path().join("web"))
        .unwrap()
        .flatten()
        .flat_map(|e| walk(&e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect::<String>();
    assert!(!logs.contains(&w.token) && !logs.contains(&new_token));
    assert!(!d.stderr_text().contains(&new_token));
    // The token file is the owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let info = socket_ok(&d, "http.info", json!({}));
        let mode = std::fs::metadata(info["token_file"].as_str().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Wrong tokens: 401, then 429 past the per-minute limit (3 here), even for a good one
    // (a limit that let good tokens through would still answer every guess).
    for _ in 0..3 {
        assert_eq!(w.get("/?token=wrong", None).await.0, 401);
    }
    assert_eq!(w.get("/?token=wrong", None).await.0, 429);
    assert_eq!(w.get("/api/v1/ping", Some("wrong")).await.0, 429);
    assert_eq!(w.get("/api/v1/ping", Some(&new_token)).await.0, 429);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|r| r.flatten().flat_map(|e| walk(&e.path())).collect())
            .unwrap_or_default()
    } else {
        vec![p.to_path_buf()]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_routes_match_their_socket_twins_and_openapi_is_valid() {
    let home = Home::new();
    home.write_config("api", &config(""));
    let d = home.start("api");
    let w = Web::of(&home, "api");
    wait_program(&d, "sleeper", "ready");
    let t = Some(w.token.as_str());

    // Stable reads: the same reply on both carriers.
    for (cmd, args, query) in [
        ("ping", json!({}), ""),
        ("config", json!({}), ""),
        ("http.info", json!({}), ""),
        ("alerts", json!({}), ""),
        ("notify.log", json!({}), ""),
        ("queue.stats", json!({}), ""),
        ("queue.ls", json!({}), ""),
    ] {
        let sock = raw_call(&d.socket, &{
            let mut l = args.clone();
            l["cmd"] = json!(cmd);
            l.to_string()
        })
        .unwrap();
        let (s, v) = w.get(&format!("/api/v1/{cmd}{query}"), t).await;
        match sock.get("ok") {
            Some(ok) => {
                assert_eq!(s, 200, "{cmd}: {v}");
                assert_eq!(&v, ok, "{cmd} differs from its socket twin");
            }
            None => {
                // A subsystem that is off answers the same error on both.
                assert_eq!(v["error"]["code"], sock["error"]["code"], "{cmd}");
            }
        }
    }
    // Reads with arguments from the query, typed by the schema.
    let sock = socket_ok(&d, "ps", json!({"names": ["sleeper"]}));
    let (s, v) = w.get("/api/v1/ps?names=sleeper", t).await;
    assert_eq!(s, 200);
    assert_eq!(v["programs"][0]["name"], sock["programs"][0]["name"]);
    assert_eq!(v["programs"][0]["pid"], sock["programs"][0]["pid"]);
    let (s, v) = w.get("/api/v1/ps?name=nope", t).await;
    let sock = raw_call(&d.socket, r#"{"cmd":"ps","name":"nope"}"#).unwrap();
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], sock["error"]["code"]);
    // A program's output (`logs`): the same tail on both carriers.
    let sock = crate::common::eventually(Duration::from_secs(15), || {
        let v = socket_ok(&d, "logs", json!({"name": "sleeper", "lines": 5}));
        v["text"]
            .as_str()?
            .contains("hello from sleeper")
            .then_some(v)
    })
    .expect("the program's output in `logs`");
    let (s, v) = w.get("/api/v1/logs?name=sleeper&lines=5", t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, sock);
    assert!(v["file"].as_str().unwrap().ends_with("sleeper.log"), "{v}");
    let st = socket_ok(&d, "status", json!({}));
    let (_, v) = w.get("/api/v1/status", t).await;
    assert_eq!(v["pid"], st["pid"]);
    assert_eq!(v["instance"], st["instance"]);
    assert_eq!(v["subsystems"]["http"]["state"], "running");
    let (_, v) = w.get("/api/v1/metrics?name=cpu.", t).await;
    let sock = raw_call(&d.socket, r#"{"cmd":"metrics","name":"cpu."}"#).unwrap();
    match sock.get("ok") {
        Some(ok) => {
            let a: Vec<_> = ok["values"].as_object().unwrap().keys().collect();
            let b: Vec<_> = v["values"].as_object().unwrap().keys().collect();
            assert_eq!(a, b);
        }
        None => assert_eq!(v["error"]["code"], sock["error"]["code"]),
    }
    // bus.ls: the same endpoints and counters shape.
    let (_, v) = w.get("/api/v1/bus.ls", t).await;
    assert!(v["counters"]["published"].is_u64(), "{v}");
    // Actions: POST with a JSON body; the session-answered ones too.
    let (s, v) = w
        .post(
            "/api/v1/bus.pub",
            t,
            json!({"topic": "x.y", "data": {"a": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = w
        .post("/api/v1/stop", t, json!({"names": ["sleeper"]}))
        .await;
    assert_eq!(s, 200, "{v}");
    wait_program(&d, "sleeper", "stopped");
    let (s, _) = w.post("/api/v1/start", t, json!({"name": "sleeper"})).await;
    assert_eq!(s, 200);
    wait_program(&d, "sleeper", "ready");
    // Errors: unknown command 404, wrong method 405, bad arguments 400 naming the field,
    // connection-scoped bus commands pointed at the WebSocket.
    let (s, v) = w.get("/api/v1/nope", t).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_command"))
    );
    assert_eq!(w.get("/api/v1/restart", t).await.0, 405);
    assert_eq!(w.post("/api/v1/ps", t, json!({})).await.0, 405);
    let (s, v) = w.post("/api/v1/restart", t, json!({"names": "x"})).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("names"),
        "{v}"
    );
    let (s, v) = w.post("/api/v1/restart", t, json!([1])).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = w.post("/api/v1/bus.sub", t, json!({"pattern": "a"})).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/ws")
    );

    // OpenAPI 3.1: every command of the contract, every $ref resolving.
    let (s, doc) = w.get("/api/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for c in majordomo_proto::contract::catalog() {
        let path = &doc["paths"][format!("/api/v1/{}", c.name)];
        let method = if c.kind == majordomo_proto::Kind::Read {
            "get"
        } else {
            "post"
        };
        assert!(path[method].is_object(), "{} has no {method}", c.name);
    }
    let text = doc.to_string();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    // An outside validator, when installed (pip `openapi-spec-validator`).
    if let Ok(v) = which("openapi-spec-validator") {
        let f = home.path().join("openapi.json");
        std::fs::write(&f, &text).unwrap();
        let o = Command::new(v).arg(&f).output().unwrap();
        assert!(
            o.status.success(),
            "openapi-spec-validator: {}{}",
            stdout(&o),
            stderr(&o)
        );
    } else {
        eprintln!(
            "SKIP openapi-spec-validator: not installed (pip install openapi-spec-validator)"
        );
    }

    // /metrics: Prometheus text, `promtool check metrics` clean.
    let resp = w
        .http
        .get(w.url("/metrics"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    for want in [
        "majordomo_program_state{program=\"sleeper\",state=\"ready\"} 1",
        "majordomo_program_restarts_total{program=\"sleeper\"}",
        "majordomo_bus_published_total",
        "majordomo_process_resident_memory_bytes",
        "majordomo_subsystem_up{subsystem=\"http\"} 1",
    ] {
        assert!(text.contains(want), "/metrics lacks {want}:\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("majordomo_"), "{line}");
    }
    match which("promtool") {
        Ok(p) => {
            let mut c = Command::new(p)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
                "promtool check metrics: {}{}\n{text}",
                stdout(&o),
                stderr(&o)
            );
        }
        Err(_) => eprintln!(
            "SKIP promtool: not installed (Debian package prometheus; scripts/install-test-deps.sh)"
        ),
    }
}

fn which(cmd: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([std::path::PathBuf::from("/usr/bin"), "/usr/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .ok_or(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_events_and_websocket_speaks_the_protocol() {
    let home = Home::new();
    home.write_config("live", &config(""));
    let d = home.start("live");
    let w = Web::of(&home, "live");
    wait_program(&d, "sleeper", "ready");

    // SSE: the programs' last states first, then live transitions; ?topics= filters.
    let mut resp = w
        .http
        .get(w.url("/api/v1/events?topics=program.state"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seen = String::new();
    let mut read_until = async |seen: &mut String, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !seen.contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {want:?} in the stream: {seen}"))
                .unwrap()
                .expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until(&mut seen, "\"state\":\"ready\"").await;
    assert!(seen.contains("event: program.state"), "{seen}");
    let (s, _) = w
        .post(
            "/api/v1/restart",
            Some(OPERATE_TOKEN),
            json!({"name": "sleeper"}),
        )
        .await;
    assert_eq!(s, 200);
    read_until(&mut seen, "\"state\":\"stopping\"").await;
    assert!(
        !seen.contains("event: subsystem.state"),
        "the filter let other kinds through"
    );

    // WebSocket: needs admin; then it is a protocol connection like the socket.
    let ws_url = w.url("/api/v1/ws").replacen("http://", "ws://", 1);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {READ_TOKEN}").parse().unwrap(),
    );
    assert!(
        tokio_tungstenite::connect_async(req.clone()).await.is_err(),
        "a read token opened the WebSocket"
    );
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", w.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    use tokio_tungstenite::tungstenite::Message;
    let ws_recv = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a WebSocket message in time")
                .expect("open")
                .expect("ok");
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    };
    ws.send(Message::Text(r#"{"id":1,"cmd":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(ws_recv(&mut ws).await["ok"], "pong");
    ws.send(Message::Text(
        r#"{"id":2,"cmd":"bus.sub","pattern":"chat.>"}"#.into(),
    ))
    .await
    .unwrap();
    assert!(ws_recv(&mut ws).await["ok"]["sid"].is_u64());

    // A socket client subscribes too, then each publishes and the other receives.
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sock = Line {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
    };
    assert!(sock.call(r#"{"id":1,"cmd":"bus.sub","pattern":"room.>"}"#)["ok"].is_object());
    let r = sock.call(r#"{"id":2,"cmd":"bus.pub","topic":"chat.hello","data":{"from":"socket"}}"#);
    assert!(r["ok"].is_object(), "{r}");
    let m = ws_recv(&mut ws).await;
    assert_eq!(m["msg"]["topic"], "chat.hello", "{m}");
    assert_eq!(m["msg"]["data"]["from"], "socket");
    ws.send(Message::Text(
        r#"{"id":3,"cmd":"bus.pub","topic":"room.1","data":{"from":"ws"}}"#.into(),
    ))
    .await
    .unwrap();
    assert!(ws_recv(&mut ws).await["ok"].is_object());
    let m = sock.recv();
    assert_eq!(m["msg"]["topic"], "room.1", "{m}");
    assert_eq!(m["msg"]["data"]["from"], "ws");
    // The WebSocket's connection is one of the bus's, and leaves with it.
    let before = socket_ok(&d, "bus.ls", json!({}))["counters"]["connections"]
        .as_u64()
        .unwrap();
    ws.close(None).await.unwrap();
    let gone = crate::common::eventually(Duration::from_secs(5), || {
        let now = socket_ok(&d, "bus.ls", json!({}))["counters"]["connections"]
            .as_u64()
            .unwrap();
        (now < before).then_some(())
    });
    assert!(gone.is_some(), "the WebSocket's bus connection stayed");
}

struct Line {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Line {
    fn call(&mut self, line: &str) -> Value {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
        self.recv()
    }
    fn recv(&mut self) -> Value {
        let mut out = String::new();
        self.r.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_falls_back_and_remote_without_tls_is_refused() {
    let home = Home::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    home.write_config(
        "port",
        &format!("[http]\nlisten = [\"127.0.0.1:{port}\", \"127.0.0.1:0\"]\n"),
    );
    let d = home.start("port");
    let info = socket_ok(&d, "http.info", json!({}));
    let listen: Vec<&str> = info["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listen.len(), 2, "{info}");
    assert_ne!(listen[0], format!("127.0.0.1:{port}"));
    let w = Web::of(&home, "port");
    assert_eq!(w.base, format!("http://{}", listen[0]));
    assert_eq!(w.get("/api/v1/ping", Some(&w.token)).await.1, "pong");
    let o = home.cli("port", &["http", "url"]);
    assert_eq!(stdout(&o).lines().count(), 2, "one link per listen address");
    drop(taken);

    // Reachable from the network without TLS: refused at load, with what to do.
    let f = home.path().join("remote.toml");
    std::fs::write(&f, "[http]\nlisten = [\"0.0.0.0:7373\"]\n").unwrap();
    let o = home.cli("port", &["config", "check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{}", stdout(&o));
    let msg = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        msg.contains("http.listen[0]") && msg.contains("TLS"),
        "{msg}"
    );
    std::fs::write(
        &f,
        "[http]\nlisten = [\"0.0.0.0:7373\"]\nallow_insecure_remote = true\n",
    )
    .unwrap();
    let o = home.cli("port", &["config", "check", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// A WebDriver session on headless Chromium (plain HTTP to chromedriver).
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    shots: std::path::PathBuf,
}

impl Browser {
    async fn start(profile: &std::path::Path) -> Option<Self> {
        let (Ok(chromium), Ok(driver)) = (
            which("chromium").or_else(|_| which("chromium-browser")),
            which("chromedriver"),
        ) else {
            eprintln!(
                "SKIP dashboard browser journey: chromium and chromedriver not installed (Debian packages chromium, chromium-driver; scripts/install-test-deps.sh)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .body(caps.to_string())
            .send()
            .await
            .unwrap()
            .json_text()
            .await;
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        let shots =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Some(Self {
            driver: child,
            base,
            session,
            http,
            shots,
        })
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).body(body.to_string()),
        };
        req.send().await.unwrap().json_text().await["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn wait_js(&self, script: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            if Instant::now() > deadline {
                self.shot("failed").await;
                panic!("the dashboard never showed {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", json!({})).await;
        if let Some(png) = b64.as_str().and_then(base64_decode) {
            let _ = std::fs::write(self.shots.join(format!("http-{name}.png")), png);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

trait JsonText {
    async fn json_text(self) -> Value;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap_or_default()).unwrap_or(Value::Null)
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// One short journey in headless Chromium: refused without login, log in through the link,
/// see the program, restart it and watch its state change live, see a chart drawn; screenshots
/// in target/screenshots/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_journey_in_headless_chromium() {
    let home = Home::new();
    home.write_config(
        "ui",
        &config(
            "\n[monitor]\ninterval = \"1s\"\n\n[[job]]\nname = \"nightly\"\nschedule = \"0 3 * * *\"\ncommand = [\"sh\", \"-c\", \"echo nightly done\"]\n",
        ),
    );
    let d = home.start("ui");
    wait_program(&d, "sleeper", "ready");
    let w = Web::of(&home, "ui");
    let Some(b) = Browser::start(&home.path().join("chromium-profile")).await else {
        return;
    };
    // Unauthenticated: the API refuses, the page asks for a login.
    b.go(&w.url("/api/v1/status")).await;
    let body = b.js("return document.body.innerText").await;
    assert!(
        body.as_str().unwrap_or("").contains("unauthorized"),
        "{body}"
    );
    b.go(&w.url("/")).await;
    b.wait_js(
        "return document.querySelector('form.login input[name=token]') !== null",
        "the login form",
    )
    .await;
    b.shot("login").await;
    // The link logs in; the redirect leaves no token in the address.
    b.go(&format!("{}/?token={}", w.base, w.token)).await;
    let url = b.cmd("GET", "/url", json!({})).await;
    assert!(!url.as_str().unwrap().contains("token"), "{url}");
    let state_js = "const e = document.querySelector('[data-program=\"sleeper\"] .state span'); return e ? e.dataset.state : null";
    let first = b.wait_js(state_js, "the program").await;
    assert_eq!(first, "ready");
    b.wait_js(
        "return document.getElementById('live').textContent === 'live'",
        "the live stream",
    )
    .await;
    // Restart through a real click; the state changes without a reload.
    let el = b
        .cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": "[data-program=\"sleeper\"] button.restart"}),
        )
        .await;
    let id = el
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .expect("the restart button")
        .to_string();
    b.js("window.__marker = 1").await;
    // Every state the row shows, recorded as the page changes it: a restart of a `sleep` can
    // pass through stopping/starting in a few milliseconds, faster than any polling sees.
    b.js("window.__states = []; new MutationObserver(() => { const e = document.querySelector('[data-program=\\\"sleeper\\\"] .state span'); const s = e ? e.dataset.state : null; if (s && window.__states[window.__states.length - 1] !== s) window.__states.push(s); }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true})").await;
    b.cmd("POST", &format!("/element/{id}/click"), json!({}))
        .await;
    let mut seen: Vec<String> = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let s = b.js("return window.__states").await;
        seen = s
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if seen.len() >= 2 && seen.last().map(String::as_str) == Some("ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        seen.iter()
            .any(|s| s == "stopping" || s == "starting" || s == "running"),
        "no live state change after restart: {seen:?}"
    );
    assert_eq!(
        b.js("return window.__marker").await,
        1,
        "the page was reloaded"
    );
    // A chart from the monitor's history.
    let points = b
        .wait_js(
            "const c = document.querySelector('#chart canvas'); const n = +(document.getElementById('chart').dataset.points || 0); if (c && c.width > 0 && n > 0) return n; document.getElementById('metric-range').dispatchEvent(new Event('change')); return null",
            "a chart with points",
        )
        .await;
    assert!(points.as_u64().unwrap_or(0) > 0);
    b.shot("dashboard").await;
    // The program's output, tailed on the programs page.
    b.js("document.querySelector('[data-program=\"sleeper\"] button.log').click()")
        .await;
    b.wait_js(
        "return document.getElementById('log-text').textContent.includes('hello from sleeper') || null",
        "the program's output",
    )
    .await;
    // Jobs: the next run shown; run now, and the outcome arrives live.
    let next = b
        .wait_js(
            "const r = document.querySelector('[data-job=\"nightly\"] td:nth-child(3)'); return r && r.textContent !== '–' ? r.textContent : null",
            "the job's next run",
        )
        .await;
    assert!(next.as_str().unwrap_or("").contains("03:00"), "{next}");
    b.js("document.querySelector('[data-job=\"nightly\"] button.run').click()")
        .await;
    b.wait_js(
        "const e = document.querySelector('[data-job=\"nightly\"] .outcome span'); return e && e.dataset.state === 'ok' || null",
        "the job's run, ok",
    )
    .await;
    b.js("document.querySelector('[data-job=\"nightly\"] button.history').click()")
        .await;
    b.wait_js(
        "return document.getElementById('run-rows').textContent.includes('nightly done') || null",
        "the run's output in the history",
    )
    .await;
    b.js("document.getElementById('programs').scrollIntoView()")
        .await;
    b.shot("jobs-and-log").await;
    // Phone width.
    b.cmd("POST", "/window/rect", json!({"width": 390, "height": 844}))
        .await;
    let overflow = b
        .js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    b.shot("phone").await;
    assert_eq!(overflow, true, "the page is wider than a phone");
    b.cmd("DELETE", "", json!({})).await;
    eprintln!("screenshots in {}", b.shots.display());
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI in `dir`
/// (`NAME-ca.pem`, `NAME-cert.pem`, `NAME-key.pem`); `None` where openssl is missing.
fn make_cert(dir: &std::path::Path, name: &str) -> Option<()> {
    let openssl = which("openssl").ok()?;
    let p = |f: &str| {
        dir.join(format!("{name}-{f}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let run = |args: &[&str]| {
        let o = Command::new(&openssl).args(args).output().expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subj_ca = format!("/CN=majordomo test CA {name}");
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca-key.pem"),
        p("ca.pem"),
        p("key.pem"),
        p("leaf.csr"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    a.extend([
        "-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", &subj_ca,
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    run(&a);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "1",
        "-extfile",
        &ext,
    ]);
    Some(())
}

/// A client that trusts only the CA in `ca` (PEM).
fn tls_client(ca: &std::path::Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .pool_max_idle_per_host(0)
        .read_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_signed_certificate_and_reload_on_renewal() {
    let home = Home::new();
    if make_cert(home.path(), "one").is_none() || make_cert(home.path(), "two").is_none() {
        eprintln!("SKIPPED: openssl is not installed (apt-get install openssl)");
        return;
    }
    let f = |n: &str| home.path().join(n);
    // The daemon reads tls/cert.pem and tls/key.pem; "renewal" replaces them.
    std::fs::create_dir_all(f("tls")).unwrap();
    std::fs::copy(f("one-cert.pem"), f("tls/cert.pem")).unwrap();
    std::fs::copy(f("one-key.pem"), f("tls/key.pem")).unwrap();
    home.write_config(
        "tls",
        &format!(
            "[http]\nlisten = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\n",
            f("tls/cert.pem"),
            f("tls/key.pem")
        ),
    );
    let d = home.start("tls");
    let info = socket_ok(&d, "http.info", json!({}));
    assert_eq!(info["tls"], true, "{info}");
    let addr = info["listen"][0].as_str().unwrap().to_string();
    let w = Web::of(&home, "tls");
    assert_eq!(w.base, format!("https://{addr}"), "the link says https");
    let ping = |c: reqwest::Client| {
        let url = format!("https://{addr}/api/v1/ping");
        let token = w.token.clone();
        async move { c.get(url).bearer_auth(token).send().await }
    };
    let r = ping(tls_client(&f("one-ca.pem")))
        .await
        .expect("HTTPS with the CA");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "\"pong\"");
    // A client that does not trust the CA is refused by its own check.
    assert!(ping(tls_client(&f("two-ca.pem"))).await.is_err());
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/ping"))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    // Renewal: new files (each written whole, then renamed); the next connection gets them.
    for (from, to) in [
        ("two-key.pem", "tls/key.pem"),
        ("two-cert.pem", "tls/cert.pem"),
    ] {
        std::fs::copy(f(from), f("tls/new.pem")).unwrap();
        std::fs::rename(f("tls/new.pem"), f(to)).unwrap();
    }
    let r = ping(tls_client(&f("two-ca.pem")))
        .await
        .expect("HTTPS with the renewed certificate, no restart");
    assert_eq!(r.status(), 200);
    assert!(ping(tls_client(&f("one-ca.pem"))).await.is_err());

    // Listening beyond loopback is accepted with TLS (and refused without: the test above).
    let remote = home.path().join("remote.toml");
    std::fs::write(
        &remote,
        format!(
            "[http]\nlisten = [\"0.0.0.0:7373\"]\ntls_cert = {:?}\ntls_key = {:?}\n",
            f("tls/cert.pem"),
            f("tls/key.pem")
        ),
    )
    .unwrap();
    let o = home.cli("tls", &["config", "check", remote.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// Sends a GET on `s` and returns the first bytes of the answer.
fn raw_get(s: &mut std::net::TcpStream, path: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = std::io::Read::read(s, &mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_are_counted() {
    let home = Home::new();
    home.write_config(
        "cap",
        "[http]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 2\n",
    );
    let d = home.start("cap");
    let info = socket_ok(&d, "http.info", json!({}));
    let addr = info["listen"][0].as_str().unwrap().to_string();
    // Two kept-alive connections, each answered once: both places are taken.
    let mut held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            let a = raw_get(&mut s, "/api/v1/ping");
            assert!(a.starts_with("HTTP/1.1 401"), "{a}");
            s
        })
        .collect();
    let mut third = std::net::TcpStream::connect(&addr).unwrap();
    let a = raw_get(&mut third, "/api/v1/ping");
    assert!(a.starts_with("HTTP/1.1 503"), "{a}");
    assert!(
        a.contains("max_connections") && a.contains("\"busy\""),
        "{a}"
    );
    // One closes: its place is free again (once the server has seen it go).
    drop(held.pop());
    let w = Web::of(&home, "cap");
    let metrics = crate::common::eventually(Duration::from_secs(15), || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            w.token
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).ok()?;
        text.starts_with("HTTP/1.1 200").then_some(text)
    })
    .expect("a place frees when a connection closes");
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("majordomo_http_connections_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the refused counter");
    assert!(refused >= 1.0, "{metrics}");
    assert!(
        metrics.contains("majordomo_http_connections 2"),
        "{metrics}"
    );
}
