//! The client side of the fleet verbs: `majordomo fleet ls` and `fleet call` talk to NATS
//! directly (no local daemon needed).

use std::time::Duration;

use futures_util::StreamExt;
use majordomo_proto::nats::{FLEET_PING, FleetMember, FleetPing, ctl_subject};
use majordomo_proto::{ErrorBody, ErrorCode};
use serde_json::{Map, Value};

use crate::bridge::redact_url;

/// How the fleet verbs reach NATS.
#[derive(Debug, Clone, Default)]
pub struct FleetConnect {
    /// Server URL(s), comma-separated; user:password@ or token@ in the URL are honoured.
    pub url: String,
    /// A credentials file (JWT + NKey seed).
    pub creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) for TLS.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Connects once (no retry: a CLI reports the failure).
pub async fn connect(c: &FleetConnect) -> Result<async_nats::Client, String> {
    let mut o = match &c.creds {
        Some(p) => async_nats::ConnectOptions::with_credentials_file(p.clone())
            .await
            .map_err(|e| format!("credentials file {}: {e}", p.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = &c.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    o.name("majordomo fleet")
        .connection_timeout(Duration::from_secs(3))
        .connect(c.url.as_str())
        .await
        .map_err(|e| {
            format!(
                "cannot reach NATS at {}: {e}; check --nats or MAJORDOMO_NATS",
                redact_url(&c.url)
            )
        })
}

/// Every instance that answers a fleet ping within `wait` (only those with all `roles`),
/// sorted by node and instance.
pub async fn ls(
    client: &async_nats::Client,
    roles: &[String],
    wait: Duration,
) -> Result<Vec<FleetMember>, String> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("subscribe {inbox}: {e}"))?;
    let ping = serde_json::to_vec(&FleetPing {
        roles: roles.to_vec(),
    })
    .unwrap_or_default();
    client
        .publish_with_reply(FLEET_PING, inbox, ping.into())
        .await
        .map_err(|e| format!("publish {FLEET_PING}: {e}"))?;
    client.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut out: Vec<FleetMember> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(member) = serde_json::from_slice::<FleetMember>(&m.payload) {
            out.push(member);
        }
    }
    out.sort_by(|a, b| (&a.node, &a.instance).cmp(&(&b.node, &b.instance)));
    out.dedup_by(|a, b| a.node == b.node && a.instance == b.instance);
    Ok(out)
}

/// Runs `cmd` with `args` on `node/instance`; the reply's `ok` value, or its error.
pub async fn call(
    client: &async_nats::Client,
    node: &str,
    instance: &str,
    cmd: &str,
    mut args: Map<String, Value>,
    timeout: Duration,
) -> Result<Value, ErrorBody> {
    args.insert("cmd".into(), cmd.into());
    let subject = ctl_subject(node, instance);
    let body = serde_json::to_vec(&args).unwrap_or_default();
    let reply = tokio::time::timeout(timeout, client.request(subject.clone(), body.into()))
        .await
        .map_err(|_| {
            ErrorBody::new(
                ErrorCode::Timeout,
                format!("{node}/{instance} did not answer within {timeout:?}"),
            )
        })?
        .map_err(|e| {
            let no_one = matches!(
                e.kind(),
                async_nats::client::RequestErrorKind::NoResponders
            );
            ErrorBody::new(
                if no_one {
                    ErrorCode::NotFound
                } else {
                    ErrorCode::Internal
                },
                if no_one {
                    format!(
                        "no instance answers on {subject}; list the live ones with `majordomo fleet ls`"
                    )
                } else {
                    format!("request on {subject}: {e}")
                },
            )
        })?;
    let v: Value = serde_json::from_slice(&reply.payload).map_err(|e| {
        ErrorBody::new(
            ErrorCode::Internal,
            format!("{node}/{instance} answered something that is not JSON: {e}"),
        )
    })?;
    if let Some(e) = v.get("error") {
        return Err(serde_json::from_value(e.clone())
            .unwrap_or_else(|_| ErrorBody::new(ErrorCode::Internal, e.to_string())));
    }
    Ok(v.get("ok").cloned().unwrap_or(Value::Null))
}
