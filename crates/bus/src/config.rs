//! `[bus]`: limits, slow-consumer policy, access lists, and their validation.

use std::collections::BTreeMap;

use majordomo_core::{Dur, Problem, Secret, Size};
use serde::{Deserialize, Serialize};

use crate::outbox::{Limits, SlowConsumer};
use crate::wire;

/// `[bus]`: the message bus on the instance socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Largest `data` of one message, event, request or reply.
    pub max_message: Size,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bound of each connection's outbound queue, in messages.
    pub queue_messages: usize,
    /// Bound of each connection's outbound queue, in bytes.
    pub queue_bytes: Size,
    /// Bound of all connections' outbound queues together, in bytes of real memory: past it, a
    /// connection holding more than its fair share (this divided by the connections) gets the
    /// slow_consumer policy.
    pub total_queue_bytes: Size,
    /// What happens to a consumer whose queue is full: `drop-oldest` (counted and announced to it) or `disconnect`.
    pub slow_consumer: SlowConsumer,
    /// Deadline of a request that names none (`timeout_ms`).
    pub request_timeout: Dur,
    /// Longest an event may wait for its target to register (`wait_ms`).
    pub max_wait: Dur,
    /// How long a new connection (of any carrier) may take to complete its first request; one
    /// that sends nothing, or half a line, is then closed.
    pub first_line_timeout: Dur,
    /// Publish every internal event on `$sys.<kind>` topics (`$sys.endpoint.up`, `$sys.program.state`, ...).
    pub system_topics: bool,
    /// Topics anyone may publish to (patterns); an endpoint listed in `endpoints` with its own `publish` uses that instead.
    pub publish: Vec<String>,
    /// Topics anyone may subscribe to (patterns); an endpoint listed in `endpoints` with its own `subscribe` uses that instead.
    pub subscribe: Vec<String>,
    /// Per-endpoint access: `[bus.endpoints.worker-1]` with `token`, `publish`, `subscribe`.
    pub endpoints: BTreeMap<String, EndpointAccess>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            max_message: Size::mib(1),
            max_subscriptions: 1000,
            queue_messages: 65_536,
            queue_bytes: Size::mib(8),
            total_queue_bytes: Size::mib(64),
            slow_consumer: SlowConsumer::DropOldest,
            request_timeout: Dur::secs(10),
            max_wait: Dur::secs(60),
            first_line_timeout: Dur::secs(10),
            system_topics: true,
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            endpoints: BTreeMap::new(),
        }
    }
}

/// `[bus.endpoints.<id>]`: who may register as `<id>` and where it may publish and subscribe.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointAccess {
    /// Registering as this endpoint requires `"token":"..."` with this value.
    pub token: Option<Secret>,
    /// Topics this endpoint may publish to (patterns); unset: `[bus] publish`.
    pub publish: Option<Vec<String>>,
    /// Topics this endpoint may subscribe to (patterns); unset: `[bus] subscribe`.
    pub subscribe: Option<Vec<String>>,
}

impl BusConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            messages: self.queue_messages.max(1),
            bytes: usize::try_from(self.queue_bytes.bytes()).unwrap_or(usize::MAX),
            total_bytes: usize::try_from(self.total_queue_bytes.bytes()).unwrap_or(usize::MAX),
            policy: self.slow_consumer,
        }
    }

    pub(crate) fn max_message(&self) -> usize {
        usize::try_from(self.max_message.bytes()).unwrap_or(usize::MAX)
    }

    /// Semantic checks of `[bus]`, each problem with its field path. The app calls it from its
    /// config validation.
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        let mut patterns = |field: String, list: &[String]| {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = wire::check_topic(p, true) {
                    problems.push(Problem::at(
                        format!("{field}[{i}]"),
                        format!("topic pattern {p:?} {e}"),
                        "write dot-separated tokens, `*` for one token, a final `>` for the rest, e.g. \"orders.>\"",
                    ));
                }
            }
        };
        patterns("bus.publish".into(), &self.publish);
        patterns("bus.subscribe".into(), &self.subscribe);
        for (id, a) in &self.endpoints {
            if let Some(p) = &a.publish {
                patterns(format!("bus.endpoints.{id}.publish"), p);
            }
            if let Some(p) = &a.subscribe {
                patterns(format!("bus.endpoints.{id}.subscribe"), p);
            }
        }
        for (id, a) in &self.endpoints {
            if let Err(e) = check_endpoint_id(id) {
                problems.push(Problem::at(
                    format!("bus.endpoints.{id}"),
                    format!("endpoint id {id:?} {e}"),
                    "use 1-128 letters, digits, '-', '_', '.', ':' or '@'",
                ));
            }
            if matches!(&a.token, Some(t) if t.expose().is_empty()) {
                problems.push(Problem::at(
                    format!("bus.endpoints.{id}.token"),
                    "an empty token",
                    "remove the field, or set a long random string",
                ));
            }
        }
        if self.max_message.bytes() < 64 {
            problems.push(Problem::at(
                "bus.max_message",
                format!("{} is too small for a message", self.max_message),
                "use at least 64 bytes; the default is 1MiB",
            ));
        }
        if self.queue_messages == 0 {
            problems.push(Problem::at(
                "bus.queue_messages",
                "0 would drop every message",
                "use a positive number; the default is 65536",
            ));
        }
        if self.queue_bytes.bytes() < self.max_message.bytes() {
            problems.push(Problem::at(
                "bus.queue_bytes",
                format!(
                    "{} cannot hold one message of max_message ({})",
                    self.queue_bytes, self.max_message
                ),
                "make queue_bytes at least max_message",
            ));
        }
        if self.first_line_timeout.get().is_zero() {
            problems.push(Problem::at(
                "bus.first_line_timeout",
                "a timeout of 0 closes every connection before its first request",
                "use e.g. \"10s\"",
            ));
        }
        if self.total_queue_bytes.bytes() < self.max_message.bytes() {
            problems.push(Problem::at(
                "bus.total_queue_bytes",
                format!(
                    "{} cannot hold one message of max_message ({})",
                    self.total_queue_bytes, self.max_message
                ),
                "make total_queue_bytes at least max_message; the default is 64MiB",
            ));
        }
        if self.request_timeout.get().is_zero() {
            problems.push(Problem::at(
                "bus.request_timeout",
                "a timeout of 0 fails every request",
                "use e.g. \"10s\"",
            ));
        }
    }
}

/// Whether every topic `pattern` can match is matched by `allowed`: `*` in `allowed` covers one
/// token (a `*` too, but not `>`), a final `>` covers the rest.
pub(crate) fn covers(allowed: &str, pattern: &str) -> bool {
    let mut a = allowed.split('.');
    let mut p = pattern.split('.');
    loop {
        match (a.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub(crate) fn check_endpoint_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1-128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
    {
        return Err("may only contain letters, digits, '-', '_', '.', ':' and '@'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_permission_covers_patterns() {
        assert!(covers(">", "a.>"));
        assert!(covers("orders.*", "orders.new"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.a.b"));
        assert!(covers("orders.>", "orders.*.new"));
        assert!(!covers("orders.new", "orders.*"));
    }

    #[test]
    fn default_bus_config_is_valid() {
        let mut p = Vec::new();
        BusConfig::default().validate(&mut p);
        assert!(p.is_empty());
        let bad = BusConfig {
            publish: vec!["a..b".into()],
            queue_messages: 0,
            ..Default::default()
        };
        bad.validate(&mut p);
        assert_eq!(p.len(), 2);
    }
}
