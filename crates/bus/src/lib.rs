//! The message bus: endpoints, events, topics, queue groups and request/reply, carried on the
//! instance protocol beside the control commands, and the per-connection protocol session that
//! every carrier of that protocol runs.
//!
//! - [`config`]: `[bus]` ([`BusConfig`]) and its validation.
//! - [`router`]: the [`Router`], shared by every connection of every carrier.
//! - [`conn`]: one connection's bus state ([`ConnBus`]), which handles each bus line.
//! - [`outbox`]: each connection's bounded outbound queue and its writer (which runs in the
//!   connection's task, beside its reader).
//! - [`sys`]: hub events published on `$sys.<kind>` topics.
//! - [`session`]: the protocol session over any byte stream ([`Session`]): framing, `hello` and
//!   the token, the seed-001 aliases, bus lines, and every other command through the registry.
//!   The control socket runs it; so will the WebSocket endpoint, the guest agent's virtio-serial
//!   port and the NATS bridge, none of which imports the control crate.
//!
//! [`Bus`] is the subsystem that takes `[bus]` live and runs the `$sys` forwarding.
#![deny(unsafe_code)]

pub mod config;
pub mod conn;
pub mod outbox;
pub mod router;
pub mod session;
pub mod sys;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use majordomo_proto::bus as wire;

use majordomo_core::lifecycle::{BoxFuture, Change, Ctx, Subsystem};

pub use config::{BusConfig, EndpointAccess};
pub use conn::ConnBus;
pub use outbox::{Limits, Outbox, OutboxRef, SlowConsumer, Wakes};
pub use router::{Counters, LastTopic, Router};
pub use session::{Peer, Session, SessionConfig};
pub use sys::forward_hub;

/// Whether a token given by a client equals the expected one, in time independent of where
/// they differ (a wrong token's length is not secret).
pub fn tokens_match(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bus subsystem: applies `[bus]` to the shared [`Router`] live, and publishes hub events on
/// `$sys.<kind>` while `[bus] system_topics` is on. The carriers (the control socket, ...) get
/// the same router.
pub struct Bus {
    router: Arc<Router>,
}

impl Bus {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

impl Subsystem for Bus {
    type Config = BusConfig;

    fn name(&self) -> &'static str {
        "bus"
    }

    fn change(&self, old: &BusConfig, new: &BusConfig) -> Change {
        if old == new {
            Change::None
        } else {
            Change::Live
        }
    }

    fn run(&self, ctx: Ctx<BusConfig>) -> BoxFuture {
        let router = self.router.clone();
        Box::pin(async move {
            let mut config = ctx.config.clone();
            let cfg = config.borrow_and_update().clone();
            router.set_config(&cfg);
            let on = Arc::new(AtomicBool::new(cfg.system_topics));
            let flag = on.clone();
            ctx.tracker.spawn(forward_hub(
                router.clone(),
                ctx.hub.clone(),
                move || flag.load(Ordering::Relaxed),
                ctx.token.clone(),
            ));
            // Its counters as gauges (`majordomo_proto::metric::GAUGES`), which `[[check]]`s
            // use; read only when the monitor collects.
            let r = router.clone();
            let _gauges = ctx
                .hub
                .gauges()
                .register("bus", move |out| write_gauges(&r, out));
            // The bus's health in its status slot, which `status` shows under `bus`: computed
            // when asked, so an idle daemon has no timer for it.
            let r = router.clone();
            ctx.publish_live(move || r.health());
            ctx.ready();
            loop {
                tokio::select! {
                    _ = ctx.token.cancelled() => return Ok(()),
                    changed = config.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let c = config.borrow_and_update().clone();
                        router.set_config(&c);
                        on.store(c.system_topics, Ordering::Relaxed);
                    }
                }
            }
        })
    }
}

/// Writes the bus's gauges: the daemon-wide counters, and per registered endpoint.
fn write_gauges(router: &Router, out: &mut majordomo_core::gauges::Sink<'_>) {
    let l = router.list();
    let c = &l.counters;
    out("bus.connections", None, c.connections as f64);
    out("bus.peak_connections", None, c.peak_connections as f64);
    out("bus.queue_bytes", None, c.memory_bytes as f64);
    out("bus.overflows", None, c.overflows as f64);
    out("bus.dropped", None, c.dropped as f64);
    out("bus.subscriptions", None, c.subscriptions as f64);
    for e in &l.endpoints {
        let id = Some(e.id.as_str());
        out("bus.endpoint.msgs_in", id, e.msgs_in as f64);
        out("bus.endpoint.msgs_out", id, e.msgs_out as f64);
        out("bus.endpoint.bytes_in", id, e.bytes_in as f64);
        out("bus.endpoint.bytes_out", id, e.bytes_out as f64);
        out("bus.endpoint.dropped", id, e.dropped as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gauge_written_is_in_the_catalogue() {
        let r = Router::new(majordomo_core::Hub::new(), &BusConfig::default());
        let mut names = Vec::new();
        write_gauges(&r, &mut |n, _, _| names.push(n));
        assert!(names.contains(&"bus.connections"));
        for n in names {
            assert!(
                majordomo_proto::metric::GAUGES.iter().any(|d| d.name == n),
                "{n} is not in majordomo_proto::metric::GAUGES"
            );
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("s3cret", "s3cret"));
        assert!(!tokens_match("s3cret", "s3cres"));
        assert!(!tokens_match("s3cret", "s3cre"));
        assert!(!tokens_match("s3cret", ""));
    }
}
