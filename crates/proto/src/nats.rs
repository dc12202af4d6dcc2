//! Wire types of the NATS bridge: its `nats.status` command, and what the fleet verbs exchange
//! over NATS (an instance's announcement, a remote control request's shape).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::NoArgs;

/// The subject every bridged instance answers fleet discovery on (`majordomo fleet ls`).
pub const FLEET_PING: &str = "majordomo.fleet.ping";

/// The control subject of one instance: `majordomo.<node>.<instance>.ctl`.
pub fn ctl_subject(node: &str, instance: &str) -> String {
    format!("majordomo.{node}.{instance}.ctl")
}

crate::commands! { COMMANDS:
    /// The NATS bridge: connection, subjects, counters.
    NatsStatusCmd "nats.status" (Read) NoArgs => NatsStatus;
    /// The instances on this instance's NATS server (a fleet ping over the bridge's connection).
    NatsFleetCmd "nats.fleet" (Read) FleetArgs => Fleet;
}

/// `nats.fleet` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetArgs {
    /// Only members with every one of these roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `nats.fleet`: the members that answered a fleet ping, sorted by node and instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Fleet {
    /// False when the NATS bridge is off on this instance (`[nats] servers` empty): `members`
    /// is then empty and `reason` says how to turn it on.
    #[serde(default = "yes")]
    pub enabled: bool,
    pub members: Vec<FleetMember>,
    /// Why the list is empty when the bridge could not ask (off, or not connected to NATS).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            enabled: true,
            members: Vec::new(),
            reason: None,
        }
    }
}

/// What `nats.status` and `nats.fleet` say while `[nats]` is off.
pub const NATS_OFF: &str = "the NATS bridge is off on this instance; list servers in [nats] servers (e.g. servers = [\"nats://127.0.0.1:4222\"]) and reload to turn it on";

/// `nats.status`: the bridge as it is now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NatsStatus {
    /// False when the bridge is off on this instance (`[nats] servers` empty): the other
    /// members are then empty or zero, and `reason` says how to turn it on.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Why the bridge is off, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the bridge holds a connection to a NATS server now.
    pub connected: bool,
    /// The server it is connected to, or tries to reach (credentials never shown).
    pub server: Option<String>,
    pub node: String,
    pub instance: String,
    /// Prefix of exported subjects, e.g. `majordomo.host1.default.`.
    pub prefix: String,
    /// The control subject this instance answers on (empty when remote control is off).
    pub ctl_subject: String,
    /// JetStream stream exports go to (durable mode), if any.
    pub stream: Option<String>,
    /// Local messages published to NATS (acknowledged by JetStream in durable mode).
    pub exported: u64,
    /// NATS messages delivered on the local bus.
    pub imported: u64,
    /// Local messages not exported because they had just come in over the bridge (no echo).
    pub echo_suppressed: u64,
    /// Requests crossing the bridge: local → NATS and NATS → local.
    pub requests_out: u64,
    pub requests_in: u64,
    /// Remote control commands answered (and refused by the allow-list).
    pub ctl_answered: u64,
    pub ctl_refused: u64,
    /// Exports waiting in the buffer (NATS unreachable or slower than the bus).
    pub buffered: u64,
    /// Exports dropped because the buffer was full (oldest first), since start.
    pub dropped: u64,
    /// Exports handed to a connection that broke before they were confirmed: possibly lost
    /// (core NATS only; JetStream retries them).
    pub unconfirmed: u64,
    /// Imported NATS messages lost because the bridge fell behind the server (core NATS: the
    /// client's subscription buffer, `[nats] import_buffer`, was full). Exact whenever the
    /// importer has caught up: messages its NATS connection received minus messages it took.
    /// JetStream imports are not lost this way: they are redelivered.
    #[serde(default)]
    pub import_overflows: u64,
    /// JetStream redeliveries already delivered locally, skipped (durable import only).
    #[serde(default)]
    pub redelivered: u64,
    /// The durable JetStream consumers imports are read through (`stream` set), if any.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Times the connection was (re-)established.
    pub connects: u64,
    /// Last connection error, if any.
    pub last_error: Option<String>,
}

/// What an instance answers on [`FLEET_PING`]: who it is, for `majordomo fleet ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FleetMember {
    pub node: String,
    pub instance: String,
    pub version: String,
    pub uptime_s: u64,
    /// Labels from `[nats] roles` (e.g. `admin`), usable as fleet filters.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Alerts of the health monitor firing now.
    #[serde(default)]
    pub firing: u32,
    /// Ids of the firing alerts.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// The subject that takes its remote control commands (empty when off).
    #[serde(default)]
    pub ctl_subject: String,
    /// The commands it allows remotely.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// The filter of a fleet ping: only members with every one of these roles answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FleetPing {
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Serde's default for `enabled` (a reply from a daemon that predates it is from a running
/// subsystem).
fn yes() -> bool {
    true
}
