//! `[nats]`: the servers, the credentials, the bridge rules and the remote control allow-list.

use std::path::PathBuf;

use majordomo_core::{Dur, Problem, Secret};
use majordomo_proto::bus as wire;
use majordomo_proto::contract::{Kind, catalog};
use serde::{Deserialize, Serialize};

/// `[nats]`: bridge the local bus to NATS, answer remote control, join the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// NATS servers to connect to (`nats://host:4222`, `tls://host:4222`); the bridge is off while the list is empty.
    pub servers: Vec<String>,
    /// This machine's name in subjects and in `fleet ls`; unset: the host name (dots become '-').
    pub node: Option<String>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<Secret>,
    /// Authentication token.
    pub token: Option<Secret>,
    /// NKey seed (`SU...`).
    pub nkey: Option<Secret>,
    /// Credentials file (JWT + NKey seed) written by `nsc`.
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs the server's certificate; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Require TLS even without `tls_ca` (system roots).
    pub tls_required: bool,
    /// Prefix of exported subjects; unset: `majordomo.<node>.<instance>.`. May be "" to export under the local topic names.
    pub prefix: Option<String>,
    /// Local topics (patterns) published to NATS under `prefix`; requests on them are answered from NATS.
    pub export: Vec<String>,
    /// NATS subjects (patterns) delivered to local subscribers under the same name; requests on them are answered locally.
    pub import: Vec<String>,
    /// Export every internal event as `<prefix>$sys.<kind>`.
    pub system_events: bool,
    /// Export the monitor's metrics (the `metrics` command's reply) as `<prefix>metrics` at this interval; unset: off.
    pub metrics_interval: Option<Dur>,
    /// Answer remote control commands on `majordomo.<node>.<instance>.ctl` and fleet pings.
    pub control: bool,
    /// Commands allowed remotely; unset: every read-only command (`status`, `ps`, `alerts`, ...).
    pub allow: Option<Vec<String>>,
    /// Labels of this instance (`admin`, `station`, ...), shown by `fleet ls` and usable as its filter.
    pub roles: Vec<String>,
    /// Exports held while NATS is unreachable or slower than the bus; past it the oldest are dropped (counted).
    pub buffer: usize,
    /// Imported messages the bridge's NATS client holds while the local bus takes them (its subscription buffer); past it the client drops them, counted exactly as `import_overflows` (core NATS; JetStream imports are redelivered instead).
    pub import_buffer: usize,
    /// JetStream stream for durable export (created if missing, over the exported subjects; duplicates suppressed by message id) and durable import (read through a durable consumer per import pattern, named from node and instance).
    pub stream: Option<String>,
    /// Deadline of a request crossing the bridge from the local bus to NATS.
    pub request_timeout: Dur,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            node: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            creds_file: None,
            tls_ca: None,
            tls_required: false,
            prefix: None,
            export: Vec::new(),
            import: Vec::new(),
            system_events: false,
            metrics_interval: None,
            control: true,
            allow: None,
            roles: Vec::new(),
            buffer: 65_536,
            import_buffer: 65_536,
            stream: None,
            request_timeout: Dur::secs(10),
        }
    }
}

/// The host name as a NATS subject token: dots, spaces and wildcards become '-'.
pub fn default_node() -> String {
    let h = majordomo_platform::host_name();
    let h = h.split('.').next().unwrap_or_default();
    let t = token(h);
    if t.is_empty() { "localhost".into() } else { t }
}

/// `s` as one subject token.
pub fn token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '.' | '*' | '>') {
                '-'
            } else {
                c
            }
        })
        .collect()
}

impl NatsConfig {
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    pub fn node(&self) -> String {
        self.node.clone().unwrap_or_else(default_node)
    }

    pub fn prefix(&self, node: &str, instance: &str) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("majordomo.{node}.{}.", token(instance)))
    }

    /// The commands allowed remotely.
    pub fn allowed(&self) -> Vec<String> {
        match &self.allow {
            Some(list) => list.clone(),
            None => catalog()
                .iter()
                // `nats.fleet` would have every remote call fan out to the whole fleet.
                .filter(|c| {
                    c.kind == Kind::Read && !c.name.starts_with("bus.") && c.name != "nats.fleet"
                })
                .map(|c| c.name.to_string())
                .collect(),
        }
    }

    /// Semantic checks of `[nats]`, each problem with its field path.
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        for (i, s) in self.servers.iter().enumerate() {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|p| s.starts_with(p))
                || !s.contains("://");
            if s.contains('@') {
                // Never echo the address: it holds a secret.
                problems.push(Problem::at(
                    format!("nats.servers[{i}]"),
                    "credentials in a server address would be shown by `config show` and in logs",
                    "put them in nats.user + nats.password, nats.token, nats.nkey or nats.creds_file",
                ));
            } else if s.trim().is_empty() || !scheme_ok {
                problems.push(Problem::at(
                    format!("nats.servers[{i}]"),
                    format!("{s:?} is not a NATS server address"),
                    "write nats://host:4222 (or tls://host:4222)",
                ));
            }
        }
        if let Some(n) = &self.node
            && (n.is_empty() || token(n) != *n)
        {
            problems.push(Problem::at(
                "nats.node",
                format!("{n:?} cannot be one subject token"),
                "use letters, digits, '-' and '_' (no dots, spaces, '*' or '>')",
            ));
        }
        let mut patterns = |field: &str, list: &[String]| {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = wire::check_topic(p, true) {
                    problems.push(Problem::at(
                        format!("nats.{field}[{i}]"),
                        format!("subject pattern {p:?} {e}"),
                        "write dot-separated tokens, `*` for one token, a final `>` for the rest, e.g. \"orders.>\"",
                    ));
                } else if wire::is_reserved(p) {
                    problems.push(Problem::at(
                        format!("nats.{field}[{i}]"),
                        format!("{p:?} is reserved (replies and system events cross on their own)"),
                        "bridge application topics; set system_events = true for $sys",
                    ));
                }
            }
        };
        patterns("export", &self.export);
        patterns("import", &self.import);
        if let Some(p) = &self.prefix
            && !p.is_empty()
            && (!p.ends_with('.') || wire::check_topic(p.trim_end_matches('.'), false).is_err())
        {
            problems.push(Problem::at(
                "nats.prefix",
                format!("{p:?} is not a subject prefix"),
                "write dot-separated tokens ending with a dot, e.g. \"site1.\", or \"\" for none",
            ));
        }
        if self.password.is_some() && self.user.is_none() {
            problems.push(Problem::at(
                "nats.password",
                "a password without a user",
                "set nats.user too",
            ));
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey.is_some(),
            self.creds_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if methods > 1 {
            problems.push(Problem::at(
                "nats",
                "more than one of user, token, nkey and creds_file is set",
                "keep the one your NATS server expects",
            ));
        }
        if self.buffer == 0 {
            problems.push(Problem::at(
                "nats.buffer",
                "0 would drop every export while NATS is slow or away",
                "use a positive number; the default is 65536",
            ));
        }
        if self.import_buffer == 0 {
            problems.push(Problem::at(
                "nats.import_buffer",
                "0 would drop every import",
                "use a positive number; the default is 65536",
            ));
        }
        if let Some(s) = &self.stream
            && (s.is_empty() || s.contains(['.', '*', '>', ' ', '/', '\\']))
        {
            problems.push(Problem::at(
                "nats.stream",
                format!("{s:?} is not a JetStream stream name"),
                "use letters, digits, '-' and '_'",
            ));
        }
        if self.stream.is_some()
            && self.export.is_empty()
            && self.import.is_empty()
            && !self.system_events
        {
            problems.push(Problem::at(
                "nats.stream",
                "a stream without anything exported or imported",
                "list topics in nats.export or subjects in nats.import, or remove nats.stream",
            ));
        }
        if self.request_timeout.get().is_zero() {
            problems.push(Problem::at(
                "nats.request_timeout",
                "a timeout of 0 fails every request",
                "use e.g. \"10s\"",
            ));
        }
        if let Some(d) = &self.metrics_interval
            && d.get() < std::time::Duration::from_millis(100)
        {
            problems.push(Problem::at(
                "nats.metrics_interval",
                format!("{d} is too often"),
                "use at least 1s, e.g. \"10s\"",
            ));
        }
        let known: Vec<&str> = catalog().iter().map(|c| c.name).collect();
        for (i, c) in self.allow.iter().flatten().enumerate() {
            if !known.contains(&c.as_str()) {
                problems.push(Problem::at(
                    format!("nats.allow[{i}]"),
                    format!("no command {c:?}"),
                    format!("known commands: {}", known.join(", ")),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_read_only() {
        let mut p = Vec::new();
        NatsConfig::default().validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        let allowed = NatsConfig::default().allowed();
        assert!(allowed.contains(&"status".to_string()));
        assert!(allowed.contains(&"ps".to_string()));
        assert!(!allowed.contains(&"reload".to_string()));
        assert!(!allowed.contains(&"stop".to_string()));
    }

    #[test]
    fn bad_fields_are_named() {
        let c = NatsConfig {
            servers: vec!["http://x".into(), "nats://u:hunter2@h".into()],
            node: Some("a.b".into()),
            export: vec!["a..b".into()],
            password: Some(Secret::new("x")),
            buffer: 0,
            import_buffer: 0,
            allow: Some(vec!["nope".into()]),
            ..Default::default()
        };
        let mut p = Vec::new();
        c.validate(&mut p);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(!format!("{p:?}").contains("hunter2"));
        for want in [
            "nats.servers[0]",
            "nats.servers[1]",
            "nats.node",
            "nats.export[0]",
            "nats.password",
            "nats.buffer",
            "nats.import_buffer",
            "nats.allow[0]",
        ] {
            assert!(paths.contains(&want), "{want} missing in {paths:?}");
        }
    }

    #[test]
    fn node_is_one_token() {
        assert_eq!(token("a.b c*"), "a-b-c-");
        assert!(!default_node().contains('.'));
    }
}
