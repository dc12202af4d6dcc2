//! Readiness gates and health checks: one attempt of a [`Probe`] (TCP connect, HTTP(S) GET, a
//! command). `bus` is answered from hub events by the program task itself.

use majordomo_core::units::redact_url;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

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
            majordomo_platform::process::scrub_daemon_env(&mut cmd);
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

struct KillOnDrop(Option<majordomo_platform::process::Group>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(g) = self.0.take()
            && !g.is_empty()
        {
            let _ = g.kill();
        }
    }
}

/// The one HTTP client of the supervisor's checks: no proxy (checks are about this machine),
/// redirects not followed (a 3xx answer passes), rustls with the ring provider for `https://`.
fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // reqwest is built without a bundled crypto provider; install ring once per process.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("majordomo/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client for checks: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An HTTP(S) GET: passes on a 2xx or 3xx status. The caller bounds it with the timeout.
async fn http_get(url: &str) -> Result<(), String> {
    let response = http_client()?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{}: {}", redact_url(url), error_chain(&e.without_url())))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("{}: HTTP {}", redact_url(url), status.as_u16()))
    }
}

/// An error with its causes ("error sending request: connection refused"), as reqwest's own
/// message names only the outermost.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
