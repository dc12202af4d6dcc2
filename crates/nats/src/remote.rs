//! Remote control: the instance answers allowed commands on its control subject, and fleet
//! pings with who it is.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use majordomo_core::Commands;
use majordomo_proto::nats::{FLEET_PING, FleetMember, FleetPing};
use majordomo_proto::{AlertSummary, ErrorBody, ErrorCode, Status};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::Stats;

/// Who this instance is to the fleet.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: String,
    pub instance: String,
    pub roles: Vec<String>,
    pub allow: Vec<String>,
}

/// Subscribes the control subject and the fleet ping, and answers them until `token` ends.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    client: &async_nats::Client,
    ctl: &str,
    me: Identity,
    commands: Arc<Commands>,
    stats: Arc<Stats>,
    tracker: &TaskTracker,
    token: CancellationToken,
) -> Result<(), String> {
    let mut ctl_sub = client
        .subscribe(ctl.to_string())
        .await
        .map_err(|e| format!("[nats] control subject {ctl}: {e}"))?;
    let mut ping_sub = client
        .subscribe(FLEET_PING)
        .await
        .map_err(|e| format!("[nats] {FLEET_PING}: {e}"))?;
    let me = Arc::new(me);
    {
        let client = client.clone();
        let commands = commands.clone();
        let me = me.clone();
        let token = token.clone();
        tracker.spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = token.cancelled() => return,
                    m = ctl_sub.next() => m,
                };
                let Some(m) = m else { return };
                let Some(reply) = m.reply else { continue };
                let client = client.clone();
                let commands = commands.clone();
                let me = me.clone();
                let stats = stats.clone();
                tokio::spawn(async move {
                    let answer = match control(&m.payload, &me, &commands).await {
                        Ok(v) => {
                            stats.ctl_answered.fetch_add(1, Ordering::Relaxed);
                            json!({ "ok": v })
                        }
                        Err(e) => {
                            if e.code == ErrorCode::Forbidden {
                                stats.ctl_refused.fetch_add(1, Ordering::Relaxed);
                            }
                            json!({ "error": e })
                        }
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    let _ = client.publish(reply, body.into()).await;
                });
            }
        });
    }
    {
        let client = client.clone();
        let ctl = ctl.to_string();
        tracker.spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = token.cancelled() => return,
                    m = ping_sub.next() => m,
                };
                let Some(m) = m else { return };
                let Some(reply) = m.reply else { continue };
                let filter: FleetPing = serde_json::from_slice(&m.payload).unwrap_or_default();
                if !filter.roles.iter().all(|r| me.roles.contains(r)) {
                    continue;
                }
                let member = member(&me, &ctl, &commands).await;
                if let Ok(body) = serde_json::to_vec(&member) {
                    let _ = client.publish(reply, body.into()).await;
                }
            }
        });
    }
    Ok(())
}

/// Runs one remote control request: `{"cmd":"status", ...args}`.
async fn control(payload: &[u8], me: &Identity, commands: &Commands) -> Result<Value, ErrorBody> {
    let mut args: Map<String, Value> = serde_json::from_slice(payload).map_err(|e| {
        ErrorBody::new(
            ErrorCode::BadJson,
            format!("a control request is a JSON object {{\"cmd\":\"status\",...}}: {e}"),
        )
    })?;
    let cmd = match args.remove("cmd") {
        Some(Value::String(c)) => c,
        _ => {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "missing \"cmd\" (the command's name)",
            ));
        }
    };
    args.remove("id");
    if !me.allow.contains(&cmd) {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "{cmd:?} is not allowed remotely on {}/{}; allowed: {} (see [nats] allow)",
                me.node,
                me.instance,
                me.allow.join(", ")
            ),
        ));
    }
    commands.dispatch(&cmd, args).await
}

/// What this instance answers to a fleet ping.
pub(crate) async fn member(me: &Identity, ctl: &str, commands: &Commands) -> FleetMember {
    let status: Option<Status> = commands
        .dispatch("status", Map::new())
        .await
        .ok()
        .and_then(|v| serde_json::from_value(v).ok());
    let alerts: AlertSummary = status
        .as_ref()
        .map(|s| s.alerts.clone())
        .unwrap_or_default();
    FleetMember {
        node: me.node.clone(),
        instance: me.instance.clone(),
        version: status
            .as_ref()
            .map(|s| s.version.clone())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        uptime_s: status.as_ref().map(|s| s.uptime_s).unwrap_or_default(),
        roles: me.roles.clone(),
        firing: alerts.firing,
        alerts: alerts
            .active
            .iter()
            .filter(|a| a.state == "firing")
            .map(|a| a.id.clone())
            .collect(),
        ctl_subject: ctl.to_string(),
        allow: me.allow.clone(),
    }
}
