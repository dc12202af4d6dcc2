//! The bridge's connection to the local bus: the bus crate's protocol [`Session`] served over an
//! in-process pipe, spoken from this side as a client. The bridge is then one more carrier of the
//! instance protocol: the router sees an ordinary connection (in `bus ls`, with its queue and
//! its slow-consumer policy), and nothing here reaches into the router's internals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use majordomo_bus::{Peer, Session};
use majordomo_proto::{ErrorBody, ErrorCode, LineCodec};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

/// A message the bus delivered to one of the bridge's subscriptions.
#[derive(Debug)]
pub struct Msg {
    pub topic: String,
    pub reply_to: Option<String>,
    /// The payload, JSON text as published.
    pub data: Bytes,
}

type ReplyTx = oneshot::Sender<Result<Bytes, ErrorBody>>;

/// One bus connection of the bridge.
#[derive(Clone)]
pub struct Link {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u64, ReplyTx>>>,
    next_id: Arc<AtomicU64>,
    /// Messages the bus dropped for this connection (its outbox's slow-consumer policy).
    pub bus_dropped: Arc<AtomicU64>,
    /// Cancelled when the session ended (the bridge stopping, or the bus closing it).
    pub closed: CancellationToken,
}

#[derive(Deserialize)]
struct MsgFrame<'a> {
    #[serde(borrow)]
    msg: MsgBody<'a>,
}

#[derive(Deserialize)]
struct MsgBody<'a> {
    topic: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct ReplyFrame<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    ok: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    notice: Option<Notice>,
}

#[derive(Deserialize)]
struct Notice {
    kind: String,
    #[serde(default)]
    count: u64,
    message: String,
}

impl Link {
    /// Opens a connection to the local bus; delivered messages arrive on the returned channel.
    pub fn open(
        session: &Session,
        stop: CancellationToken,
    ) -> (Link, mpsc::UnboundedReceiver<Msg>) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let conn = session.router.next_conn_id();
        session.tracker.spawn(session.clone().serve(
            theirs,
            conn,
            Peer {
                via: "nats",
                ..Peer::default()
            },
            (),
        ));
        let (mut rd, mut wr) = tokio::io::split(ours);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (msg_tx, msg_rx) = mpsc::unbounded_channel();
        let link = Link {
            out: out_tx,
            pending: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            bus_dropped: Arc::default(),
            closed: CancellationToken::new(),
        };
        let tracker = session.tracker.clone();
        let stop2 = stop.clone();
        tracker.spawn(async move {
            let mut batch = Vec::with_capacity(64 * 1024);
            loop {
                let first = tokio::select! {
                    _ = stop2.cancelled() => break,
                    l = out_rx.recv() => l,
                };
                let Some(first) = first else { break };
                batch.clear();
                batch.extend_from_slice(&first);
                batch.push(b'\n');
                while batch.len() < 256 * 1024 {
                    match out_rx.try_recv() {
                        Ok(l) => {
                            batch.extend_from_slice(&l);
                            batch.push(b'\n');
                        }
                        Err(_) => break,
                    }
                }
                if wr.write_all(&batch).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let pending = link.pending.clone();
        let dropped = link.bus_dropped.clone();
        let closed = link.closed.clone();
        tracker.spawn(async move {
            let mut codec = LineCodec::new(64 * 1024 * 1024);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                let n = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = rd.read_buf(&mut buf) => r,
                };
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    let frame = match codec.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(_) => {
                            buf.clear();
                            break;
                        }
                    };
                    handle_frame(&frame, &msg_tx, &pending, &dropped);
                }
            }
            // The session ended: fail whoever still waits.
            closed.cancel();
            if let Ok(mut p) = pending.lock() {
                for (_, tx) in p.drain() {
                    let _ = tx.send(Err(ErrorBody::new(
                        ErrorCode::Internal,
                        "the bridge's bus connection closed",
                    )));
                }
            }
        });
        (link, msg_rx)
    }

    /// Sends one request, `rest` being the members after `id` (`"cmd":"bus.sub",...`), and
    /// waits for its reply's `ok` (raw JSON) or `error`.
    pub async fn call(&self, rest: &[u8]) -> Result<Bytes, ErrorBody> {
        self.send_call(rest).await
    }

    /// Sends one request now, in order with what was sent before it, and gives the wait for
    /// its reply (e.g. a `ping` after a batch of publishes: its answer means the session has
    /// routed them all).
    pub fn send_call(
        &self,
        rest: &[u8],
    ) -> impl std::future::Future<Output = Result<Bytes, ErrorBody>> + Send + 'static {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = format!("{{\"id\":{id},").into_bytes();
        line.extend_from_slice(rest);
        line.push(b'}');
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        let sent = self.out.send(line).is_ok();
        async move {
            if !sent {
                return Err(ErrorBody::new(ErrorCode::Internal, "bus connection closed"));
            }
            rx.await.unwrap_or_else(|_| {
                Err(ErrorBody::new(ErrorCode::Internal, "bus connection closed"))
            })
        }
    }

    /// Sends a line that expects no reply (a publish without `id`; errors come back id-less and
    /// are logged). It may hold several lines separated by `\n` (a batch of publishes).
    pub fn send(&self, line: Vec<u8>) {
        let _ = self.out.send(line);
    }
}

fn handle_frame(
    frame: &[u8],
    msgs: &mpsc::UnboundedSender<Msg>,
    pending: &Mutex<HashMap<u64, ReplyTx>>,
    dropped: &AtomicU64,
) {
    if frame.starts_with(b"{\"msg\":") {
        if let Ok(m) = serde_json::from_slice::<MsgFrame<'_>>(frame) {
            let _ = msgs.send(Msg {
                topic: m.msg.topic,
                reply_to: m.msg.reply_to,
                data: Bytes::copy_from_slice(m.msg.data.get().as_bytes()),
            });
        }
        return;
    }
    let Ok(r) = serde_json::from_slice::<ReplyFrame<'_>>(frame) else {
        return;
    };
    if let Some(n) = r.notice {
        if n.kind == "dropped" {
            dropped.fetch_add(n.count, Ordering::Relaxed);
        }
        tracing::warn!(kind = %n.kind, "bus notice to the NATS bridge: {}", n.message);
        return;
    }
    let result = match (r.ok, r.error) {
        (_, Some(e)) => Err(e),
        (Some(ok), None) => Ok(Bytes::copy_from_slice(ok.get().as_bytes())),
        (None, None) => Ok(Bytes::from_static(b"null")),
    };
    match r.id {
        Some(id) => {
            let tx = pending.lock().ok().and_then(|mut p| p.remove(&id));
            if let Some(tx) = tx {
                let _ = tx.send(result);
            }
        }
        None => {
            if let Err(e) = result {
                tracing::warn!(
                    code = e.code.as_str(),
                    "the local bus refused a bridged message: {}",
                    e.message
                );
            }
        }
    }
}
