//! `majordomo discover`: the instances advertising themselves on the LAN (mDNS/DNS-SD), seen
//! from here; no daemon needed.

use std::time::Duration;

use clap::Args;
use majordomo_client::ClientError;
use majordomo_core::exit;
use majordomo_discovery::Net;

/// Look for instances on the LAN.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Only instances with this role ([discovery] roles); repeat for several (all must match).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// How long to listen for answers.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Speak mDNS only on this interface (e.g. eth0); repeat for several; default: all.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// mDNS UDP port (5353 on a real LAN).
    #[arg(long, default_value_t = 5353)]
    pub port: u16,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 500ms, 2s, 1m"))
}

pub async fn run(a: &DiscoverArgs, json: bool) -> Result<u8, ClientError> {
    let net = Net {
        port: a.port,
        interfaces: a.interfaces.clone(),
    };
    let peers = match majordomo_discovery::browse(&net, &a.roles, a.wait).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("majordomo: {e}; multicast may be unavailable on this network");
            return Ok(exit::UNAVAILABLE);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&peers).unwrap_or_default());
        return Ok(exit::OK);
    }
    if peers.is_empty() {
        println!(
            "no instance answered within {:?} (instances advertise with [discovery] enabled = true)",
            a.wait
        );
        return Ok(exit::OK);
    }
    println!(
        "{:<20} {:<16} {:<10} {:<16} {:<6} ADDRESSES",
        "NODE", "INSTANCE", "VERSION", "ROLES", "HTTP"
    );
    for p in &peers {
        let roles = if p.roles.is_empty() {
            "-".to_string()
        } else {
            p.roles.join(",")
        };
        let http = p
            .http_port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<16} {:<10} {:<16} {:<6} {}",
            p.node,
            p.instance,
            p.version,
            roles,
            http,
            p.addresses.join(", ")
        );
    }
    Ok(exit::OK)
}
