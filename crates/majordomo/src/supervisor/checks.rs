//! Readiness gates and health checks: one attempt of a [`Probe`] (TCP connect, HTTP GET, a
//! command). `bus` is answered from hub events by the program task itself.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::Probe;
use super::spawn::{Procs, Spawned};

/// One attempt, bounded by `timeout`. `Ok` when the check passes; `Err` says why not.
pub async fn attempt(
    probe: &Probe,
    timeout: Duration,
    env: &[(String, String)],
    procs: &Procs,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, run(probe, env, procs)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{probe}: no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn run(probe: &Probe, env: &[(String, String)], procs: &Procs) -> Result<(), String> {
    match probe {
        Probe::Started | Probe::Bus => Ok(()),
        Probe::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
            .await
            .map(|_| ())
            .map_err(|e| format!("tcp {host}:{port}: {e}")),
        Probe::Http { url } => http_get(url).await,
        Probe::Command { argv } => {
            let mut cmd = std::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let Spawned { mut child, group } = procs
                .spawn(cmd, &Default::default())
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            // Killed with its group when the attempt is abandoned (timeout).
            let guard = KillOnDrop(Some(group));
            let status = child
                .wait()
                .await
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            drop(guard);
            procs.sweep();
            if status.success() {
                Ok(())
            } else {
                Err(format!("{} exited with {status}", argv.join(" ")))
            }
        }
    }
}

struct KillOnDrop(Option<crate::platform::process::Group>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(g) = self.0.take()
            && !g.is_empty()
        {
            let _ = g.kill();
        }
    }
}

/// A plain HTTP/1.1 GET: passes on a 2xx or 3xx status line.
async fn http_get(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let host = authority;
    let mut s = TcpStream::connect(addr.trim_start_matches('[').replace("]:", ":"))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: majordomo\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(|e| format!("{url}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {code}"))
    }
}
