//! LAN discovery (README "Beyond one machine", `[discovery]`): two real instances advertise
//! themselves over mDNS/DNS-SD and see each other; `majordomo discover` sees both without a
//! daemon. Everything stays on the loopback interface and a private UDP port, so nothing
//! leaves this machine; where loopback multicast does not work the test says so and skips.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use crate::common::{Home, eventually, stderr, stdout};
use serde_json::Value;

/// A free UDP port on loopback for this test's private mDNS network.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// Whether a multicast datagram sent out of `lo` comes back to a member on `lo`.
fn loopback_multicast_works(port: u16) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let rx = || -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(s.into())
    };
    let tx = || -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        s.set_multicast_loop_v4(true)?;
        s.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
        Ok(s.into())
    };
    let (Ok(rx), Ok(tx)) = (rx(), tx()) else {
        return false;
    };
    if tx.send_to(b"majordomo-probe", (group, port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(rx.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"majordomo-probe")
}

fn peers(home: &Home, instance: &str) -> Value {
    let out = home.cli(instance, &["--json", "call", "discovery.peers"]);
    assert!(out.status.success(), "discovery.peers: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("discovery.peers JSON")
}

fn names(peers: &Value) -> Vec<String> {
    peers
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["node"].as_str().unwrap_or("?"),
                        p["instance"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn two_instances_find_each_other_on_the_lan() {
    let port = free_udp_port();
    if !loopback_multicast_works(port) {
        eprintln!(
            "SKIPPED: multicast on the loopback interface does not work here (mDNS discovery needs it)"
        );
        return;
    }
    let home = Home::new();
    for (name, node, roles) in [("a", "n1", "[\"admin\"]"), ("b", "n2", "[\"station\"]")] {
        home.write_config(
            name,
            &format!(
                "[discovery]\nenabled = true\nnode = \"{node}\"\nroles = {roles}\nhttp_port = 7000\ninterfaces = [\"lo\"]\nport = {port}\n"
            ),
        );
    }
    let a = home.start("a");
    let b = home.start("b");
    // Each sees the other (never itself), with its TXT record.
    let seen = eventually(Duration::from_secs(20), || {
        let p = peers(&home, "a");
        (names(&p["peers"]) == ["n2/b"]).then_some(p)
    });
    let p = seen.unwrap_or_else(|| {
        panic!(
            "a never saw b: {}\nstderr a:\n{}\nstderr b:\n{}",
            peers(&home, "a"),
            a.stderr_text(),
            b.stderr_text()
        )
    });
    let bp = &p["peers"][0];
    assert_eq!(bp["roles"], serde_json::json!(["station"]), "{p}");
    assert_eq!(bp["http_port"], 7000, "{p}");
    assert_eq!(bp["version"], env!("CARGO_PKG_VERSION"), "{p}");
    assert!(
        eventually(Duration::from_secs(20), || (names(
            &peers(&home, "b")["peers"]
        ) == ["n1/a"])
        .then_some(()))
        .is_some(),
        "b never saw a: {}",
        peers(&home, "b")
    );
    // Filtered by role.
    let out = home.cli(
        "a",
        &[
            "--json",
            "call",
            "discovery.peers",
            r#"{"roles":["admin"]}"#,
        ],
    );
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(names(&v["peers"]), Vec::<String>::new(), "{v}");

    // `majordomo discover` browses on its own (no daemon needed) and sees both.
    let port_s = port.to_string();
    let args = [
        "--json",
        "discover",
        "--interface",
        "lo",
        "--port",
        &port_s,
        "--wait",
        "3s",
    ];
    let out = home.cli("nobody", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(names(&all), ["n1/a", "n2/b"], "{all}");
    let mut with_role = args.to_vec();
    with_role.extend(["--role", "admin"]);
    let out = home.cli("nobody", &with_role);
    let admins: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(names(&admins), ["n1/a"], "{admins}");
    let out = home.cli(
        "nobody",
        &[
            "discover",
            "--interface",
            "lo",
            "--port",
            &port_s,
            "--wait",
            "2s",
        ],
    );
    assert!(stdout(&out).contains("NODE"), "{}", stdout(&out));
}
