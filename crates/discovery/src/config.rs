//! `[discovery]`: advertise this instance on the LAN and find the others (mDNS/DNS-SD).

use majordomo_core::Problem;
use serde::{Deserialize, Serialize};

/// `[discovery]`: LAN discovery over mDNS/DNS-SD, off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Advertise this instance as `_majordomo._tcp` and browse for the others.
    pub enabled: bool,
    /// This machine's name in the record; unset: `[nats] node`, else the host name.
    pub node: Option<String>,
    /// Labels advertised (`admin`, `station`, `client`, ...), usable as filters (`discover --role`).
    pub roles: Vec<String>,
    /// HTTP port advertised; unset: the port of the first `[http] listen` address when HTTP is on.
    pub http_port: Option<u16>,
    /// Network interfaces to speak mDNS on (e.g. ["eth0"]); empty: every interface.
    pub interfaces: Vec<String>,
    /// mDNS UDP port: 5353 on a real LAN; another only for a private test network.
    pub port: u16,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node: None,
            roles: Vec::new(),
            http_port: None,
            interfaces: Vec::new(),
            port: 5353,
        }
    }
}

/// What the discovery subsystem is handed: its section, plus what it advertises from others'.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoverySection {
    pub discovery: DiscoveryConfig,
    /// The HTTP port in force (`[http]`), if HTTP is on.
    pub http_port: Option<u16>,
    /// `[nats] node`, if set.
    pub nats_node: Option<String>,
}

impl DiscoverySection {
    /// The node name advertised.
    pub fn node(&self) -> String {
        self.discovery
            .node
            .clone()
            .or_else(|| self.nats_node.clone())
            .unwrap_or_else(default_node)
    }
}

/// The host name's first label, '-' for characters a DNS label cannot carry.
pub fn default_node() -> String {
    let h = majordomo_platform::host_name();
    let h = h.split('.').next().unwrap_or_default();
    let t = label(h);
    if t.is_empty() { "localhost".into() } else { t }
}

fn label(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl DiscoveryConfig {
    /// Semantic checks of `[discovery]`, each problem with its field path.
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        if let Some(n) = &self.node
            && (n.is_empty() || label(n) != *n || n.len() > 63)
        {
            problems.push(Problem::at(
                "discovery.node",
                format!("{n:?} cannot be one DNS label"),
                "use up to 63 letters, digits, '-' and '_'",
            ));
        }
        for (i, r) in self.roles.iter().enumerate() {
            if r.is_empty() || r.contains([',', '=']) {
                problems.push(Problem::at(
                    format!("discovery.roles[{i}]"),
                    format!("{r:?} cannot be a role in the TXT record"),
                    "use a non-empty word without ',' or '=', e.g. \"admin\"",
                ));
            }
        }
        if self.port == 0 {
            problems.push(Problem::at(
                "discovery.port",
                "port 0 is no mDNS port",
                "leave it at 5353",
            ));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.trim().is_empty() {
                problems.push(Problem::at(
                    format!("discovery.interfaces[{i}]"),
                    "an empty interface name",
                    "write a name `ip link` shows, e.g. \"eth0\"",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = DiscoveryConfig::default();
        assert!(!c.enabled);
        let mut p = Vec::new();
        c.validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn bad_fields_are_named() {
        let c = DiscoveryConfig {
            node: Some("a.b".into()),
            roles: vec!["a,b".into()],
            port: 0,
            interfaces: vec![" ".into()],
            ..Default::default()
        };
        let mut p = Vec::new();
        c.validate(&mut p);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "discovery.node",
                "discovery.roles[0]",
                "discovery.port",
                "discovery.interfaces[0]"
            ]
        );
    }

    #[test]
    fn node_falls_back_to_nats_then_the_host() {
        let mut s = DiscoverySection {
            nats_node: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(s.node(), "n1");
        s.discovery.node = Some("d1".into());
        assert_eq!(s.node(), "d1");
        s.discovery.node = None;
        s.nats_node = None;
        assert!(!s.node().contains('.'));
    }
}
