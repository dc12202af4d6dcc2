//! `majordomo session-agent`: runs in the user's desktop session (started at logon by
//! `service install --session-agent`), connects to the instance and shows the notifications
//! its `type = "session"` notifiers route to the desktop. It reconnects with backoff whenever
//! the instance is down or restarts.
//!
//! The daemon publishes each such notification on the system topic [`TOPIC`]; a notifier counts
//! it delivered when at least one agent received it (see the scheduler's `session.show`).

use std::time::Duration;

use futures_util::StreamExt;
use majordomo_client::bus::{Bus, BusOptions};
use majordomo_client::{ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_platform::desktop::{self, Urgency};
use majordomo_proto::monitor::Severity;
use majordomo_proto::scheduler::SessionNotification;

pub use majordomo_proto::scheduler::SESSION_TOPIC as TOPIC;

/// The app id Windows toasts are shown under (PowerShell's, registered on every Windows).
const WINDOWS_APP_ID: &str =
    "{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\\WindowsPowerShell\\v1.0\\powershell.exe";

pub async fn run(opts: &ConnectOptions) -> Result<u8, ClientError> {
    let mut attempt = 0u32;
    loop {
        match serve(opts).await {
            Ok(()) => {
                eprintln!(
                    "majordomo session-agent: the instance closed the connection; reconnecting"
                );
                attempt = 0;
            }
            Err(e) if attempt == 0 => {
                eprintln!("majordomo session-agent: {e}; retrying with backoff");
            }
            Err(_) => {}
        }
        attempt = attempt.saturating_add(1);
        let delay = majordomo_core::backoff::full_jitter(
            Duration::from_millis(500),
            Duration::from_secs(30),
            attempt,
        );
        tokio::time::sleep(delay).await;
        if attempt == u32::MAX {
            return Ok(exit::FAILURE);
        }
    }
}

/// One connection: subscribe, then show every notification until it closes.
async fn serve(opts: &ConnectOptions) -> Result<(), ClientError> {
    let bus = Bus::connect(opts, BusOptions::default()).await?;
    let mut sub = bus.subscribe(TOPIC).await?;
    eprintln!(
        "majordomo session-agent: subscribed to {TOPIC} on {}",
        opts.socket().display()
    );
    while let Some(m) = sub.next().await {
        let n: SessionNotification = match m.json() {
            Ok(n) => n,
            Err(e) => {
                eprintln!(
                    "majordomo session-agent: skipped a notification that does not parse: {e}"
                );
                continue;
            }
        };
        let urgency = match n.severity {
            Severity::Critical => Urgency::Critical,
            Severity::Warning => Urgency::Normal,
            Severity::Info => Urgency::Low,
        };
        let app = format!("majordomo ({})", n.instance);
        if let Err(e) = desktop::show(&app, Some(WINDOWS_APP_ID), &n.title, &n.body, urgency).await
        {
            eprintln!("majordomo session-agent: {e}");
        }
    }
    Ok(())
}
