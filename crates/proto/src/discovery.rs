//! Wire types of LAN discovery: the `discovery.peers` command and what one peer advertises
//! (mDNS/DNS-SD `_majordomo._tcp`, its TXT record).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The DNS-SD service type every instance with `[discovery] enabled = true` advertises.
pub const SERVICE_TYPE: &str = "_majordomo._tcp.local.";

crate::commands! { COMMANDS:
    /// Instances seen on the LAN (mDNS/DNS-SD), optionally only those with every given role.
    DiscoveryPeersCmd "discovery.peers" (Read) PeersArgs => Peers;
}

/// `discovery.peers` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeersArgs {
    /// Only peers with every one of these roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `discovery.peers`: what this instance sees on the LAN (itself excluded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Peers {
    /// False when LAN discovery is off on this instance: `peers` is then empty and `reason`
    /// says how to turn it on.
    #[serde(default = "yes")]
    pub enabled: bool,
    pub peers: Vec<Peer>,
    /// Why the list is empty when discovery is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            enabled: true,
            peers: Vec::new(),
            reason: None,
        }
    }
}

/// What `discovery.peers` says while `[discovery]` is off.
pub const DISCOVERY_OFF: &str = "LAN discovery is off on this instance; set [discovery] enabled = true and reload to turn it on";

/// One instance found on the LAN, from its DNS-SD record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Peer {
    pub node: String,
    pub instance: String,
    pub version: String,
    /// Labels from `[discovery] roles` (e.g. `admin`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Its HTTP API and dashboard port, when it advertises one.
    #[serde(default)]
    pub http_port: Option<u16>,
    /// Its addresses on the LAN.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Its mDNS host name (`<node>.local.`).
    #[serde(default)]
    pub host: String,
}

impl Peer {
    /// Whether the peer has every one of `roles`.
    pub fn has_roles(&self, roles: &[String]) -> bool {
        roles.iter().all(|r| self.roles.contains(r))
    }
}

/// Serde's default for `enabled` (a reply from a daemon that predates it is from a running
/// subsystem).
fn yes() -> bool {
    true
}
