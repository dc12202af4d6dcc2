//! The NATS subsystem: a bridge between the local bus and NATS, remote control of the instance,
//! and the fleet verbs' client side.
//!
//! - [`config`]: `[nats]` ([`NatsConfig`]) and its validation.
//! - [`local`]: the bridge's connection to the local bus, the bus crate's [`Session`] over an
//!   in-process pipe (the bridge is one more carrier of the instance protocol).
//! - [`bridge`]: export (local topics → NATS under the prefix, through a bounded buffer, core NATS
//!   or JetStream), import (NATS subjects → local subscribers), requests both ways, `$sys` and
//!   metrics export, no echo.
//! - [`remote`]: the control subject (`majordomo.<node>.<instance>.ctl`) and fleet pings.
//! - [`fleet`]: what `majordomo fleet ls|call` do over NATS (a client, no daemon needed).
//!
//! A message never crosses back over the bridge it came in by: the NATS connection is opened
//! with `no_echo`, and a message the bridge delivered locally is not exported again when it
//! comes back on the bridge's own export subscription.
#![deny(unsafe_code)]

pub mod bridge;
pub mod config;
pub mod fleet;
pub mod local;
pub mod remote;

use std::sync::Arc;

use majordomo_bus::Router;
use majordomo_core::lifecycle::{BoxFuture, Ctx, Off, Subsystem};
use majordomo_proto::nats::{Fleet, NATS_OFF, NatsFleetCmd, NatsStatus, NatsStatusCmd};

pub use async_nats;
pub use config::NatsConfig;

/// The NATS subsystem. Runs while `[nats] servers` lists at least one server.
pub struct Nats {
    router: Arc<Router>,
}

impl Nats {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

impl Subsystem for Nats {
    type Config = NatsConfig;

    fn name(&self) -> &'static str {
        "nats"
    }

    fn enabled(&self, config: &NatsConfig) -> bool {
        config.enabled()
    }

    fn run(&self, ctx: Ctx<NatsConfig>) -> BoxFuture {
        let router = self.router.clone();
        Box::pin(bridge::run(router, ctx))
    }

    /// Off: `nats.status` and `nats.fleet` answer `enabled: false` with how to turn it on.
    fn off(&self, off: &Off<'_>) {
        off.handle::<NatsStatusCmd, _, _>(|_| async {
            Ok(NatsStatus {
                enabled: false,
                reason: Some(NATS_OFF.to_string()),
                ..Default::default()
            })
        });
        off.handle::<NatsFleetCmd, _, _>(|_| async {
            Ok(Fleet {
                enabled: false,
                members: Vec::new(),
                reason: Some(NATS_OFF.to_string()),
            })
        });
    }
}
