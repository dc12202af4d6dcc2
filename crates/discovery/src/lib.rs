//! LAN discovery without any server: every instance with `[discovery] enabled = true`
//! advertises itself over mDNS/DNS-SD as `_majordomo._tcp` (TXT: node, instance, version,
//! roles, HTTP port) and browses for the others.
//!
//! - [`config`]: `[discovery]` ([`DiscoveryConfig`]) and the section the subsystem is handed
//!   ([`DiscoverySection`]: the HTTP port and the NATS node name projected in by the app).
//! - [`Discovery`]: the subsystem (advertise, browse, answer `discovery.peers`).
//! - [`browse`]: one look at the LAN, for `majordomo discover` (no daemon needed).
//!
//! The mDNS engine is the `mdns-sd` crate: its own thread and sockets, no runtime; events reach
//! tokio through its async receiver.
#![deny(unsafe_code)]

pub mod config;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use majordomo_core::lifecycle::{BoxFuture, Ctx, Off, Subsystem};
use majordomo_proto::discovery::{DISCOVERY_OFF, DiscoveryPeersCmd, Peer, Peers, SERVICE_TYPE};
use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

pub use config::{DiscoveryConfig, DiscoverySection};

/// The discovery subsystem. Runs while `[discovery] enabled = true`.
pub struct Discovery;

impl Subsystem for Discovery {
    type Config = DiscoverySection;

    fn name(&self) -> &'static str {
        "discovery"
    }

    fn enabled(&self, config: &DiscoverySection) -> bool {
        config.discovery.enabled
    }

    fn run(&self, ctx: Ctx<DiscoverySection>) -> BoxFuture {
        Box::pin(run(ctx))
    }

    /// Off: `discovery.peers` answers `enabled: false`, no peers, and how to turn it on.
    fn off(&self, off: &Off<'_>) {
        off.handle::<DiscoveryPeersCmd, _, _>(|_| async {
            Ok(Peers {
                enabled: false,
                peers: Vec::new(),
                reason: Some(DISCOVERY_OFF.to_string()),
            })
        });
    }
}

/// Where and how to speak mDNS.
#[derive(Debug, Clone)]
pub struct Net {
    /// UDP port (5353 on a real LAN).
    pub port: u16,
    /// Interface names; empty: every interface (loopback too).
    pub interfaces: Vec<String>,
}

/// An mDNS engine on `net`'s port and interfaces.
fn engine(net: &Net) -> Result<ServiceDaemon, String> {
    let mdns = ServiceDaemon::new_with_port(net.port)
        .map_err(|e| format!("mDNS on UDP port {}: {e}", net.port))?;
    if !net.interfaces.is_empty() {
        let named: Vec<IfKind> = net
            .interfaces
            .iter()
            .map(|i| IfKind::Name(i.clone()))
            .collect();
        mdns.disable_interface(IfKind::All)
            .and_then(|()| mdns.enable_interface(named))
            .map_err(|e| format!("mDNS interfaces {:?}: {e}", net.interfaces))?;
    }
    Ok(mdns)
}

/// A peer from its resolved DNS-SD record; `None` for a record that is not ours.
fn peer_of(r: &ResolvedService) -> Option<Peer> {
    let txt = |k: &str| r.txt_properties.get_property_val_str(k).map(str::to_string);
    let node = txt("node")?;
    let instance = txt("instance")?;
    let mut addresses: Vec<String> = r
        .addresses
        .iter()
        .map(|a| a.to_ip_addr().to_string())
        .collect();
    addresses.sort();
    Some(Peer {
        node,
        instance,
        version: txt("version").unwrap_or_default(),
        roles: txt("roles")
            .map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        http_port: txt("http").and_then(|p| p.parse().ok()),
        addresses,
        host: r.host.clone(),
    })
}

/// The DNS-SD instance name of `node`/`instance`.
fn service_name(node: &str, instance: &str) -> String {
    format!("{node}-{instance}")
}

/// Looks at the LAN for `wait` and returns the peers seen (with every one of `roles`), sorted by
/// node and instance. For `majordomo discover`: needs no daemon.
pub async fn browse(net: &Net, roles: &[String], wait: Duration) -> Result<Vec<Peer>, String> {
    let mdns = engine(net)?;
    let rx = mdns
        .browse(SERVICE_TYPE)
        .map_err(|e| format!("mDNS browse: {e}"))?;
    let mut found: BTreeMap<String, Peer> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, rx.recv_async()).await {
        match ev {
            ServiceEvent::ServiceResolved(r) => {
                if let Some(p) = peer_of(&r) {
                    found.insert(r.fullname.clone(), p);
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                found.remove(&fullname);
            }
            _ => {}
        }
    }
    let _ = mdns.shutdown();
    let mut peers: Vec<Peer> = found.into_values().filter(|p| p.has_roles(roles)).collect();
    peers.sort_by(|a, b| (&a.node, &a.instance).cmp(&(&b.node, &b.instance)));
    Ok(peers)
}

async fn run(ctx: Ctx<DiscoverySection>) -> Result<(), String> {
    let section = ctx.config.borrow().clone();
    let cfg = &section.discovery;
    let node = section.node();
    let instance = ctx.layout().instance.clone();
    let net = Net {
        port: cfg.port,
        interfaces: cfg.interfaces.clone(),
    };
    let mdns = engine(&net).map_err(|e| format!("[discovery] {e}"))?;
    let http_port = cfg.http_port.or(section.http_port);
    let mut txt = vec![
        ("node".to_string(), node.clone()),
        ("instance".to_string(), instance.clone()),
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("roles".to_string(), cfg.roles.join(",")),
    ];
    if let Some(p) = http_port {
        txt.push(("http".to_string(), p.to_string()));
    }
    let name = service_name(&node, &instance);
    let host = format!("{node}.local.");
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        &name,
        &host,
        "",
        http_port.unwrap_or(0),
        &txt[..],
    )
    .map_err(|e| format!("[discovery] the service record of {name}: {e}"))?
    .enable_addr_auto();
    let me = info.get_fullname().to_string();
    mdns.register(info)
        .map_err(|e| format!("[discovery] advertising {name}: {e}"))?;
    let rx = mdns
        .browse(SERVICE_TYPE)
        .map_err(|e| format!("[discovery] browsing: {e}"))?;

    let peers: Arc<Mutex<BTreeMap<String, Peer>>> = Arc::default();
    {
        let peers = peers.clone();
        ctx.handle::<DiscoveryPeersCmd, _, _>(move |args| {
            let mut list: Vec<Peer> = peers
                .lock()
                .map(|m| {
                    m.values()
                        .filter(|p| p.has_roles(&args.roles))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            list.sort_by(|a, b| (&a.node, &a.instance).cmp(&(&b.node, &b.instance)));
            async move {
                Ok(Peers {
                    peers: list,
                    ..Default::default()
                })
            }
        });
    }
    tracing::info!(
        service = %me,
        port = net.port,
        interfaces = ?net.interfaces,
        roles = ?cfg.roles,
        "LAN discovery started (mDNS/DNS-SD {SERVICE_TYPE})"
    );
    ctx.ready();
    loop {
        let ev = tokio::select! {
            _ = ctx.token.cancelled() => break,
            ev = rx.recv_async() => ev,
        };
        let Ok(ev) = ev else { break };
        match ev {
            ServiceEvent::ServiceResolved(r) if r.fullname != me => {
                if let Some(p) = peer_of(&r) {
                    tracing::debug!(peer = %r.fullname, "LAN peer seen");
                    if let Ok(mut m) = peers.lock() {
                        m.insert(r.fullname.clone(), p);
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                tracing::debug!(peer = %fullname, "LAN peer gone");
                if let Ok(mut m) = peers.lock() {
                    m.remove(&fullname);
                }
            }
            _ => {}
        }
    }
    // Say goodbye so peers drop this instance at once, then stop the engine.
    if let Ok(done) = mdns.unregister(&me) {
        let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
    }
    let _ = mdns.shutdown();
    ctx.commands.unregister_owner("discovery");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_our_txt_is_not_a_peer() {
        let info = ServiceInfo::new(SERVICE_TYPE, "x", "h.local.", "127.0.0.1", 1, None)
            .unwrap()
            .as_resolved_service();
        assert!(peer_of(&info).is_none());
        let txt = [
            ("node", "n1"),
            ("instance", "a"),
            ("version", "1"),
            ("roles", "admin,station"),
            ("http", "7373"),
        ];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            "n1-a",
            "n1.local.",
            "127.0.0.1",
            7373,
            &txt[..],
        )
        .unwrap()
        .as_resolved_service();
        let p = peer_of(&info).unwrap();
        assert_eq!((p.node.as_str(), p.instance.as_str()), ("n1", "a"));
        assert_eq!(p.roles, ["admin", "station"]);
        assert_eq!(p.http_port, Some(7373));
        assert_eq!(p.addresses, ["127.0.0.1"]);
        assert!(p.has_roles(&["admin".into()]));
        assert!(!p.has_roles(&["client".into()]));
    }
}
