//! Hub events on the bus: every internal event published on `$sys.<kind>`
//! (`$sys.endpoint.up`, `$sys.program.state`, ...).

use std::sync::Arc;

use majordomo_core::Hub;

use crate::router::Router;

/// Publishes every hub event on `$sys.<kind>` until `token` is cancelled.
pub async fn forward_hub(
    router: Arc<Router>,
    hub: Hub,
    enabled: impl Fn() -> bool,
    token: tokio_util::sync::CancellationToken,
) {
    let mut rx = hub.subscribe();
    loop {
        let ev = tokio::select! {
            _ = token.cancelled() => return,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(ev) if enabled() => router.publish_system(&ev),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "system topics fell behind the event hub");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
