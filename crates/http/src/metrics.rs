//! `/metrics` in the Prometheus text format (0.0.4). Everything is read at scrape time through
//! the command registry (`status`, `ps`, `metrics`, `alerts`, `queue.stats`), the bus router and
//! the hub: no subsystem crate is named, and a subsystem that is off simply adds nothing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::config::Role;
use crate::server::{App, Ip, St};

/// Program states, for the one-hot `majordomo_program_state`.
const PROGRAM_STATES: &[&str] = &[
    "stopped", "waiting", "starting", "running", "ready", "stopping", "exited", "backoff", "failed",
];

type Label = Option<(String, String)>;

/// One metric family being written.
pub struct Out {
    text: String,
    seen: std::collections::BTreeSet<String>,
}

impl Out {
    fn new() -> Self {
        Self {
            text: String::with_capacity(16 * 1024),
            seen: Default::default(),
        }
    }

    /// Starts a family (once per name).
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        if self.seen.insert(name.to_string()) {
            let _ = writeln!(self.text, "# HELP {name} {help}");
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(val));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", num(v));
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, v);
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `cpu.used_pct` → `cpu_used_pct`: only `[a-zA-Z0-9_]`.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

/// A monitor metric key (`disk.used_pct{mount=/}`) as a Prometheus name and label.
fn monitor_name(key: &str) -> (String, Option<(String, String)>) {
    let (name, label) = match key.split_once('{') {
        Some((n, rest)) => {
            let inner = rest.trim_end_matches('}');
            let label = inner
                .split_once('=')
                .map(|(k, v)| (sanitize(k), v.to_string()));
            (n, label)
        }
        None => (key, None),
    };
    let mut n = sanitize(name);
    // Prometheus conventions: base units and whole words.
    for (from, to) in [
        ("_pct", "_percent"),
        ("_kb", "_kilobytes"),
        ("_ms", "_milliseconds"),
        ("_count", ""),
        ("_sum", "_sum_value"),
        ("_bucket", "_bucket_value"),
    ] {
        if let Some(stem) = n.strip_suffix(from) {
            n = format!("{stem}{to}");
        }
    }
    (format!("majordomo_monitor_{n}"), label)
}

async fn read(app: &App, cmd: &str) -> Option<Value> {
    app.commands.get(cmd)?;
    app.commands.dispatch(cmd, Map::new()).await.ok()
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Renders every metric.
pub async fn render(app: &App) -> String {
    let mut o = Out::new();
    // The daemon itself.
    if let Some(st) = read(app, "status").await {
        let version = s(&st, "version");
        let instance = s(&st, "instance");
        o.one(
            "majordomo_build_info",
            "gauge",
            "The running version (always 1).",
            &[("version", version), ("instance", instance)],
            1.0,
        );
        if let Some(u) = f(&st, "uptime_s") {
            o.one(
                "majordomo_uptime_seconds",
                "gauge",
                "Seconds since the daemon started.",
                &[],
                u,
            );
        }
        if let Some(g) = f(&st, "config_generation") {
            o.one(
                "majordomo_config_generation",
                "gauge",
                "How many configs were applied since start (1 = the first).",
                &[],
                g,
            );
        }
        if let Some(Value::Object(subs)) = st.get("subsystems") {
            o.family(
                "majordomo_subsystem_up",
                "gauge",
                "1 when the subsystem is running, 0 otherwise.",
            );
            for (name, sub) in subs {
                let up = if s(sub, "state") == "running" {
                    1.0
                } else {
                    0.0
                };
                o.sample("majordomo_subsystem_up", &[("subsystem", name)], up);
            }
        }
    }
    let pid = std::process::id();
    if let Some(rss) = majordomo_platform::process::rss_bytes(pid) {
        o.one(
            "majordomo_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the daemon process.",
            &[],
            rss as f64,
        );
    }
    if let Some(cpu) = majordomo_platform::process::cpu_seconds(pid) {
        o.one(
            "majordomo_process_cpu_seconds_total",
            "counter",
            "CPU time (user + system) of the daemon process.",
            &[],
            cpu,
        );
    }
    o.family(
        "majordomo_events_total",
        "counter",
        "Internal events emitted since start, by kind.",
    );
    for (kind, n) in app.hub.counts() {
        o.sample("majordomo_events_total", &[("kind", &kind)], n as f64);
    }
    // Programs.
    if let Some(ps) = read(app, "ps").await
        && let Some(rows) = ps.get("programs").and_then(Value::as_array)
    {
        o.family(
            "majordomo_program_state",
            "gauge",
            "1 for the program's current state, 0 for the others.",
        );
        for r in rows {
            let name = s(r, "name");
            let st = s(r, "state");
            for state in PROGRAM_STATES {
                let v = if *state == st { 1.0 } else { 0.0 };
                o.sample(
                    "majordomo_program_state",
                    &[("program", name), ("state", state)],
                    v,
                );
            }
        }
        let per = [
            (
                "restarts",
                "majordomo_program_restarts_total",
                "counter",
                "Restarts of the program since the daemon started.",
            ),
            (
                "cpu_s",
                "majordomo_program_cpu_seconds_total",
                "counter",
                "CPU time of the program's current process.",
            ),
            (
                "rss_bytes",
                "majordomo_program_resident_memory_bytes",
                "gauge",
                "Resident memory of the program's process.",
            ),
            (
                "uptime_s",
                "majordomo_program_uptime_seconds",
                "gauge",
                "Seconds since the program's process started.",
            ),
        ];
        for (key, metric, kind, help) in per {
            o.family(metric, kind, help);
            for r in rows {
                if let Some(v) = f(r, key) {
                    o.sample(metric, &[("program", s(r, "name"))], v);
                }
            }
        }
    }
    // The health monitor's latest sample.
    if let Some(m) = read(app, "metrics").await
        && let Some(Value::Object(values)) = m.get("values")
    {
        let mut fams: BTreeMap<String, Vec<(Label, f64)>> = BTreeMap::new();
        for (k, v) in values {
            if let Some(v) = v.as_f64() {
                let (name, label) = monitor_name(k);
                fams.entry(name).or_default().push((label, v));
            }
        }
        for (name, samples) in fams {
            o.family(
                &name,
                "gauge",
                "A figure of the health monitor's latest sample.",
            );
            for (label, v) in samples {
                match &label {
                    Some((k, val)) => o.sample(&name, &[(k, val)], v),
                    None => o.sample(&name, &[], v),
                }
            }
        }
    }
    // Alerts.
    if let Some(a) = read(app, "alerts").await
        && let Some(active) = a.get("active").and_then(Value::as_array)
    {
        o.family(
            "majordomo_alert_active",
            "gauge",
            "Active alerts (1 each), by check, severity and state (pending or firing).",
        );
        let mut by: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        for al in active {
            *by.entry((
                s(al, "check").to_string(),
                s(al, "severity").to_string(),
                s(al, "state").to_string(),
            ))
            .or_default() += 1.0;
        }
        for ((check, sev, state), n) in by {
            o.sample(
                "majordomo_alert_active",
                &[("check", &check), ("severity", &sev), ("state", &state)],
                n,
            );
        }
    }
    // Pipelines.
    if let Some(q) = read(app, "queue.stats").await
        && let Some(ps) = q.get("pipelines").and_then(Value::as_array)
    {
        o.family(
            "majordomo_pipeline_items",
            "gauge",
            "Items of the pipeline by state.",
        );
        for p in ps {
            let name = s(p, "pipeline");
            if let Some(Value::Object(counts)) = p.get("counts") {
                for (state, n) in counts {
                    o.sample(
                        "majordomo_pipeline_items",
                        &[("pipeline", name), ("state", state)],
                        n.as_f64().unwrap_or(0.0),
                    );
                }
            }
        }
        o.family(
            "majordomo_pipeline_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest item not yet done.",
        );
        for p in ps {
            if let Some(v) = f(p, "oldest_pending_age_s") {
                o.sample(
                    "majordomo_pipeline_oldest_pending_age_seconds",
                    &[("pipeline", s(p, "pipeline"))],
                    v,
                );
            }
        }
        let counters = [
            (
                "claimed",
                "majordomo_pipeline_claimed_total",
                "Items claimed from the drop folder.",
            ),
            (
                "converted",
                "majordomo_pipeline_converted_total",
                "Items converted.",
            ),
            (
                "convert_failed",
                "majordomo_pipeline_convert_failures_total",
                "Conversions that failed.",
            ),
            (
                "uploaded",
                "majordomo_pipeline_uploaded_total",
                "Items uploaded.",
            ),
            (
                "retries",
                "majordomo_pipeline_retries_total",
                "Upload retries.",
            ),
            (
                "dead_letters",
                "majordomo_pipeline_dead_letters_total",
                "Items given up on.",
            ),
            (
                "rescans",
                "majordomo_pipeline_rescans_total",
                "Full rescans of the drop folder.",
            ),
        ];
        for (key, metric, help) in counters {
            o.family(metric, "counter", help);
            for p in ps {
                if let Some(v) = p.get("since_start").and_then(|x| f(x, key)) {
                    o.sample(metric, &[("pipeline", s(p, "pipeline"))], v);
                }
            }
        }
        let gauges = [
            (
                "convert_ms_avg",
                "majordomo_pipeline_convert_duration_seconds_avg",
                "Average conversion time since start.",
            ),
            (
                "upload_ms_avg",
                "majordomo_pipeline_upload_duration_seconds_avg",
                "Average upload time since start.",
            ),
            (
                "upload_ms_max",
                "majordomo_pipeline_upload_duration_seconds_max",
                "Longest upload since start.",
            ),
        ];
        for (key, metric, help) in gauges {
            o.family(metric, "gauge", help);
            for p in ps {
                if let Some(v) = p.get("since_start").and_then(|x| f(x, key)) {
                    o.sample(metric, &[("pipeline", s(p, "pipeline"))], v / 1000.0);
                }
            }
        }
    }
    // The bus.
    let bus = app.router.list();
    let c = &bus.counters;
    o.one(
        "majordomo_bus_connections",
        "gauge",
        "Open protocol connections (socket and WebSocket).",
        &[],
        c.connections as f64,
    );
    o.one(
        "majordomo_bus_subscriptions",
        "gauge",
        "Bus subscriptions.",
        &[],
        c.subscriptions as f64,
    );
    o.one(
        "majordomo_bus_endpoints",
        "gauge",
        "Registered bus endpoints.",
        &[],
        bus.endpoints.len() as f64,
    );
    for (v, name, help) in [
        (
            c.published,
            "majordomo_bus_published_total",
            "Messages published.",
        ),
        (
            c.delivered,
            "majordomo_bus_delivered_total",
            "Messages delivered to subscribers.",
        ),
        (
            c.dropped,
            "majordomo_bus_dropped_total",
            "Messages dropped for slow consumers.",
        ),
        (
            c.events,
            "majordomo_bus_system_events_total",
            "Hub events published on $sys topics.",
        ),
        (c.requests, "majordomo_bus_requests_total", "Bus requests."),
        (c.replies, "majordomo_bus_replies_total", "Bus replies."),
        (
            c.no_responders,
            "majordomo_bus_no_responders_total",
            "Requests nobody was subscribed to.",
        ),
        (
            c.timeouts,
            "majordomo_bus_timeouts_total",
            "Requests whose deadline passed.",
        ),
        (
            c.errors,
            "majordomo_bus_errors_total",
            "Bus lines answered with an error.",
        ),
    ] {
        o.one(name, "counter", help, &[], v as f64);
    }
    // HTTP itself.
    o.one(
        "majordomo_http_api_requests_total",
        "counter",
        "Requests to /api/v1 commands.",
        &[],
        app.requests.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "majordomo_http_sse_clients",
        "gauge",
        "Open event streams.",
        &[],
        app.sse_clients.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "majordomo_http_websocket_clients",
        "gauge",
        "Open WebSocket connections.",
        &[],
        app.ws_clients.load(Ordering::Relaxed) as f64,
    );
    o.one(
        "majordomo_http_connections",
        "gauge",
        "Open HTTP connections (at most [http] max_connections).",
        &[],
        app.gate.open() as f64,
    );
    o.one(
        "majordomo_http_connections_refused_total",
        "counter",
        "Connections refused because [http] max_connections were open.",
        &[],
        app.gate.refused() as f64,
    );
    o.text
}

pub async fn scrape(State(app): State<St>, ip: Ip, headers: HeaderMap) -> Response {
    if let Err(r) = app.allow(&headers, ip.0, Role::Read, false) {
        return r;
    }
    let body = render(&app).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_names_follow_conventions() {
        assert_eq!(
            monitor_name("disk.used_pct{mount=/}"),
            (
                "majordomo_monitor_disk_used_percent".to_string(),
                Some(("mount".to_string(), "/".to_string()))
            )
        );
        assert_eq!(monitor_name("load.1m").0, "majordomo_monitor_load_1m");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
