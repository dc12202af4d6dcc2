//! Non-metric checks: a command, TCP and HTTP reachability, "program NAME not running", "job
//! NAME's last run did not succeed (or none within a duration)".

use std::time::{Duration, SystemTime};

use crate::config::CheckConfig;
use crate::monitor::State;

/// The HTTP client an `http` check keeps for its lifetime (`None` for other checks).
pub fn http_client(c: &CheckConfig) -> Option<reqwest::Client> {
    c.http.as_ref()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    match reqwest::Client::builder().timeout(c.timeout.get()).build() {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(check = %c.name, error = %e, "cannot build an HTTP client");
            None
        }
    }
}

/// Runs one check once: `(healthy, what was seen)`.
pub async fn run(c: &CheckConfig, st: &State, client: Option<&reqwest::Client>) -> (bool, String) {
    let timeout = c.timeout.get();
    if let Some((prog, args)) = c.command.split_first() {
        let mut cmd = tokio::process::Command::new(prog);
        majordomo_platform::process::scrub_daemon_env(cmd.as_std_mut());
        let child = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return (false, format!("cannot start {prog:?}: {e}")),
        };
        return match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => (
                false,
                format!("{prog:?} did not finish within {}", c.timeout),
            ),
            Ok(Err(e)) => (false, format!("{prog:?}: {e}")),
            Ok(Ok(out)) => {
                let code = out.status.code();
                let text = String::from_utf8_lossy(&out.stdout);
                if code != Some(c.expect_exit) {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let last = err.lines().last().or(text.lines().last()).unwrap_or("");
                    (
                        false,
                        format!(
                            "{prog:?} exited with {} (expected {}): {last}",
                            out.status, c.expect_exit
                        ),
                    )
                } else if let Some(want) = &c.expect_output
                    && !text.contains(want.as_str())
                {
                    (false, format!("{prog:?} output does not contain {want:?}"))
                } else {
                    (true, format!("{prog:?} exited with {}", c.expect_exit))
                }
            }
        };
    }
    if let Some(addr) = &c.tcp {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str()))
            .await
        {
            Ok(Ok(_)) => (true, format!("{addr} accepts connections")),
            Ok(Err(e)) => (false, format!("{addr}: {e}")),
            Err(_) => (false, format!("{addr}: no answer within {}", c.timeout)),
        };
    }
    if let Some(url) = &c.http {
        return match client {
            Some(client) => http(client, url, c.expect_status, timeout).await,
            None => (false, "no HTTP client (see the log)".into()),
        };
    }
    if let Some(name) = &c.program {
        let seen = st.programs.lock().ok().and_then(|p| p.get(name).cloned());
        return match seen {
            Some(s) if s.failing() => (
                false,
                format!(
                    "program {name} is not running (state {}, {} restart{})",
                    s.state.as_str(),
                    s.restarts,
                    if s.restarts == 1 { "" } else { "s" }
                ),
            ),
            Some(s) => (true, format!("program {name} is {}", s.state.as_str())),
            // The supervisor has not reported it yet (the daemon is starting).
            None => (true, format!("program {name} is not reported yet")),
        };
    }
    if let Some(name) = &c.job {
        let seen = st
            .jobs
            .lock()
            .ok()
            .and_then(|j| j.get(name).cloned())
            .unwrap_or_default();
        if let Some((false, what)) = &seen.last {
            return (false, format!("job {name}: the last run {what}"));
        }
        if let Some(within) = c.no_success_within {
            let since = seen.last_ok.unwrap_or(st.started);
            let age = SystemTime::now().duration_since(since).unwrap_or_default();
            if age > within.get() {
                let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
                return (
                    false,
                    match seen.last_ok {
                        Some(_) => format!(
                            "job {name} has not succeeded for {age} (no_success_within = {within})"
                        ),
                        None => format!(
                            "job {name} has not succeeded since the monitor started {age} ago (no_success_within = {within})"
                        ),
                    },
                );
            }
        }
        return match seen.last {
            Some((_, what)) => (true, format!("job {name}: the last run {what}")),
            None => (true, format!("job {name} has not run yet")),
        };
    }
    (true, String::new())
}

use majordomo_core::units::redact_url;

/// A GET: healthy on 2xx/3xx, or on exactly `expect` when set.
async fn http(
    client: &reqwest::Client,
    url: &str,
    expect: Option<u16>,
    timeout: Duration,
) -> (bool, String) {
    match client.get(url).send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let ok = match expect {
                Some(e) => code == e,
                None => (200..400).contains(&code),
            };
            (ok, format!("{} answered HTTP {code}", redact_url(url)))
        }
        Err(e) if e.is_timeout() => (
            false,
            format!("{}: no answer within {timeout:?}", redact_url(url)),
        ),
        Err(e) => (false, format!("{}: {}", redact_url(url), e.without_url())),
    }
}
