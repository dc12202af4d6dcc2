//! The typed message-bus API: register an endpoint, send events, publish, subscribe (as a
//! [`Stream`]), request/reply with a deadline.
//!
//! A [`Bus`] owns one connection with a background reader that routes what the daemon pushes:
//! replies to the call that waits for them, messages to their [`Subscription`], events to
//! [`Bus::events`], notices (dropped messages, take-over) to [`Bus::notices`]. Writes from any
//! task are appended to one buffer that a writer task drains in batches, so publishing in a loop
//! costs one system call per batch, not per message. With [`BusOptions::binary`] the connection
//! switches to the length-prefixed binary framing after `hello` (publish and delivery frames
//! without JSON envelopes; `data` stays JSON text).
//!
//! ```no_run
//! # async fn demo() -> Result<(), majordomo_client::ClientError> {
//! use futures_util::StreamExt;
//! use majordomo_client::{ConnectOptions, bus::{Bus, BusOptions}};
//! let bus = Bus::connect(&ConnectOptions::new("/run/user/1000/majordomo/default.sock"), BusOptions::default()).await?;
//! bus.register("worker-1").await?;
//! let mut orders = bus.subscribe("orders.*.new").await?;
//! bus.publish("orders.7.new", &serde_json::json!({"sku": "x"})).await?;
//! let msg = orders.next().await.expect("a message");
//! println!("{} {}", msg.topic, msg.json::<serde_json::Value>()?);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use majordomo_proto::bus::{self as wire, BinPeek, BinRef};
use majordomo_proto::{ErrorBody, ErrorCode, LineCodec, PROTOCOL_VERSION};
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{Client, ClientError, ConnectOptions};

/// How a [`Bus`] connection is set up.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Negotiate the length-prefixed binary framing (faster; JSON lines otherwise).
    pub binary: bool,
    /// About how many messages are buffered per subscription before the reader waits for the
    /// application (and the daemon's slow-consumer policy takes over); they are held as read
    /// batches of up to 64 KiB, one per 256 messages of this figure.
    pub subscription_buffer: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            binary: false,
            subscription_buffer: 65_536,
        }
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    pub sid: u64,
    pub topic: String,
    /// Where to send the answer when this message is a request ([`Bus::reply`]).
    pub reply_to: Option<String>,
    /// The payload as JSON text.
    pub data: Bytes,
}

impl Message {
    /// Decodes the payload.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.data)
            .map_err(|e| ClientError::Protocol(format!("message data on {}: {e}", self.topic)))
    }
}

/// An event sent to this connection's endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct BusEvent {
    pub name: String,
    pub from: Option<String>,
    pub data: Value,
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
}

/// Something the daemon tells this connection: `dropped` (count), `taken_over`, `disconnected`.
#[derive(Debug, Clone, Deserialize)]
pub struct Notice {
    pub kind: String,
    #[serde(default)]
    pub count: u64,
    pub message: String,
}

type ReplyTx = oneshot::Sender<Result<Value, ErrorBody>>;

struct Shared {
    pending: Mutex<HashMap<u64, ReplyTx>>,
    subs: Mutex<HashMap<u64, mpsc::Sender<Batch>>>,
    events: mpsc::UnboundedSender<BusEvent>,
    notices: mpsc::UnboundedSender<Notice>,
    out: Mutex<BytesMut>,
    wake_writer: Notify,
    drained: Notify,
    closed: AtomicBool,
    binary: bool,
}

/// Above this many unwritten bytes, writers wait for the writer task (back-pressure).
const HIGH_WATER: usize = 1 << 20;

/// A bus connection. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Bus {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    next_sid: AtomicU64,
    call_timeout: Duration,
    events: Mutex<Option<mpsc::UnboundedReceiver<BusEvent>>>,
    notices: Mutex<Option<mpsc::UnboundedReceiver<Notice>>>,
    sub_buffer: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        // The writer sends what is still queued (a publish just before the drop is not lost),
        // then closes the connection; the reader stops now.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake_writer.notify_one();
        if let Some(reader) = self.tasks.first() {
            reader.abort();
        }
    }
}

impl Bus {
    /// Connects (waiting as `opts` says), sends the token if any, negotiates the framing.
    pub async fn connect(opts: &ConnectOptions, bus_opts: BusOptions) -> Result<Self, ClientError> {
        let mut client = Client::connect(opts).await?;
        if bus_opts.binary {
            let hello = client
                .call(majordomo_proto::Command::Hello {
                    client: Some(format!("majordomo-client/{}", env!("CARGO_PKG_VERSION"))),
                    protocol: Some(PROTOCOL_VERSION),
                    token: opts.token.clone(),
                    framing: Some(wire::BINARY_FRAMING.into()),
                })
                .await?;
            if hello.get("framing").and_then(Value::as_str) != Some(wire::BINARY_FRAMING) {
                return Err(ClientError::Protocol(
                    "the daemon does not offer the binary framing; connect with binary = false"
                        .into(),
                ));
            }
        }
        let parts = client.framed.into_parts();
        let (rd, wr) = tokio::io::split(parts.io);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (no_tx, no_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            subs: Mutex::default(),
            events: ev_tx,
            notices: no_tx,
            out: Mutex::new(BytesMut::new()),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
            binary: bus_opts.binary,
        });
        let reader = tokio::spawn(read_loop(rd, parts.read_buf, shared.clone(), opts.max_line));
        let writer = tokio::spawn(write_loop(wr, shared.clone()));
        Ok(Self {
            shared,
            next_id: AtomicU64::new(client.next_id + 1),
            next_sid: AtomicU64::new(1),
            call_timeout: opts.call_timeout,
            events: Mutex::new(Some(ev_rx)),
            notices: Mutex::new(Some(no_rx)),
            sub_buffer: bus_opts.subscription_buffer.max(1),
            tasks: vec![reader, writer],
        })
    }

    /// Appends one frame for the writer, waiting while too much is unwritten.
    async fn enqueue(&self, encode: impl FnOnce(&mut BytesMut, bool)) -> Result<(), ClientError> {
        let mut encode = Some(encode);
        // Fast path: one lock, no waiter registration.
        if self.try_enqueue(&mut encode)? {
            return Ok(());
        }
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.try_enqueue(&mut encode)? {
                return Ok(());
            }
            drained.await;
        }
    }

    fn try_enqueue(
        &self,
        encode: &mut Option<impl FnOnce(&mut BytesMut, bool)>,
    ) -> Result<bool, ClientError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let mut out = self
            .shared
            .out
            .lock()
            .map_err(|_| ClientError::Protocol("bus writer poisoned".into()))?;
        if out.len() >= HIGH_WATER {
            return Ok(false);
        }
        let was_empty = out.is_empty();
        if let Some(f) = encode.take() {
            f(&mut out, self.shared.binary);
        }
        drop(out);
        if was_empty {
            self.shared.wake_writer.notify_one();
        }
        Ok(true)
    }

    async fn send_json(&self, line: &[u8]) -> Result<(), ClientError> {
        self.enqueue(|b, bin| {
            if bin {
                wire::put_json_bin(b, line);
            } else {
                b.put_slice(line);
                b.put_u8(b'\n');
            }
        })
        .await
    }

    /// Sends `{cmd, ...args, id}` and waits for its reply, at most `timeout`.
    async fn call_with(
        &self,
        cmd: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = match args {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        req.insert("cmd".into(), cmd.into());
        req.insert("id".into(), id.into());
        let line = serde_json::to_vec(&req)
            .map_err(|e| ClientError::Protocol(format!("request not serializable: {e}")))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.shared.pending.lock() {
            p.insert(id, tx);
        }
        self.send_json(&line).await?;
        let r = tokio::time::timeout(timeout, rx).await;
        if let Ok(mut p) = self.shared.pending.lock() {
            p.remove(&id);
        }
        match r {
            Err(_) => Err(ClientError::Timeout(timeout)),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(ClientError::Remote(e)),
        }
    }

    /// Any command on this connection (e.g. `bus.ls`, `status`).
    pub async fn call(&self, cmd: &str, args: Value) -> Result<Value, ClientError> {
        self.call_with(cmd, args, self.call_timeout).await
    }

    /// Registers this connection as endpoint `id`; refused (`conflict`) while another live
    /// connection holds it.
    pub async fn register(&self, id: &str) -> Result<(), ClientError> {
        self.call("bus.register", json!({ "endpoint": id }))
            .await
            .map(drop)
    }

    /// Registers as `id`, taking it over from another connection (which is told and closed),
    /// with the endpoint's token when `[bus.endpoints.<id>]` requires one.
    pub async fn register_with(
        &self,
        id: &str,
        takeover: bool,
        token: Option<&str>,
    ) -> Result<(), ClientError> {
        self.call(
            "bus.register",
            json!({ "endpoint": id, "takeover": takeover, "token": token }),
        )
        .await
        .map(drop)
    }

    /// Sends an event to endpoint `to`; an unknown endpoint is an error (`not_found`).
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &str,
        event: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        self.call(
            "bus.send",
            json!({ "to": to, "event": event, "data": data }),
        )
        .await
        .map(drop)
    }

    /// Sends an event that waits up to `wait` for `to` to register.
    pub async fn send_wait<T: Serialize + ?Sized>(
        &self,
        to: &str,
        event: &str,
        data: &T,
        wait: Duration,
    ) -> Result<(), ClientError> {
        let ms = wait.as_millis() as u64;
        self.call_with(
            "bus.send",
            json!({ "to": to, "event": event, "data": data, "wait_ms": ms }),
            wait + self.call_timeout,
        )
        .await
        .map(drop)
    }

    /// Publishes without waiting for an acknowledgement (errors come back as notices-free
    /// error replies and are counted by the daemon; use [`Bus::publish_acked`] to see them).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let data = serde_json::to_vec(data)
            .map_err(|e| ClientError::Protocol(format!("data not serializable: {e}")))?;
        self.publish_json(topic, &data).await
    }

    /// Publishes JSON text as it is (no serialization on this side).
    pub async fn publish_json(&self, topic: &str, json_text: &[u8]) -> Result<(), ClientError> {
        self.enqueue(|b, bin| put_pub(b, bin, topic, json_text))
            .await
    }

    /// Publishes several JSON texts on one topic, in order, as [`Bus::publish_json`] does one:
    /// the output buffer is locked once and the writer woken at most once for the whole batch,
    /// and the daemon reads them as one run. For publishers that have many messages at hand.
    pub async fn publish_json_batch<D: AsRef<[u8]>>(
        &self,
        topic: &str,
        json_texts: &[D],
    ) -> Result<(), ClientError> {
        self.enqueue(|b, bin| {
            for d in json_texts {
                put_pub(b, bin, topic, d.as_ref());
            }
        })
        .await
    }

    /// Publishes and waits for the daemon's answer: how many subscribers got it.
    pub async fn publish_acked<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<u64, ClientError> {
        let v = self
            .call("bus.pub", json!({ "topic": topic, "data": data }))
            .await?;
        Ok(v["delivered"].as_u64().unwrap_or(0))
    }

    /// Subscribes to `pattern` (`*` one token, final `>` the rest).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        self.subscribe_inner(pattern, None).await
    }

    /// Subscribes as a member of queue group `queue`: each message goes to one member.
    pub async fn subscribe_queue(
        &self,
        pattern: &str,
        queue: &str,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_inner(pattern, Some(queue)).await
    }

    async fn subscribe_inner(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, ClientError> {
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        // Batches (one read each, up to 64 KiB of frames): about `sub_buffer` small messages.
        let (tx, rx) = mpsc::channel(self.sub_buffer.div_ceil(256).max(2));
        if let Ok(mut s) = self.shared.subs.lock() {
            s.insert(sid, tx);
        }
        let r = self
            .call(
                "bus.sub",
                json!({ "pattern": pattern, "queue": queue, "sid": sid }),
            )
            .await;
        if let Err(e) = r {
            if let Ok(mut s) = self.shared.subs.lock() {
                s.remove(&sid);
            }
            return Err(e);
        }
        Ok(Subscription {
            sid,
            rx,
            current: None,
        })
    }

    /// Ends a subscription.
    pub async fn unsubscribe(&self, sub: Subscription) -> Result<(), ClientError> {
        if let Ok(mut s) = self.shared.subs.lock() {
            s.remove(&sub.sid);
        }
        self.call("bus.unsub", json!({ "sid": sub.sid }))
            .await
            .map(drop)
    }

    /// Sends a request on `topic` and waits for the first reply. No subscriber: `Remote` with
    /// code `no_responders`, at once; no reply within `timeout`: `Remote` with code `timeout`.
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let ms = timeout.as_millis().max(1) as u64;
        self.call_with(
            "bus.request",
            json!({ "topic": topic, "data": data, "timeout_ms": ms }),
            timeout + Duration::from_secs(2),
        )
        .await
        .map_err(|e| match e {
            ClientError::Timeout(_) => ClientError::Remote(ErrorBody::new(
                ErrorCode::Timeout,
                format!("no reply within {timeout:?}"),
            )),
            other => other,
        })
    }

    /// Answers a request message (`msg.reply_to`).
    pub async fn reply<T: Serialize + ?Sized>(
        &self,
        reply_to: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let line = serde_json::to_vec(&json!({ "cmd": "bus.reply", "to": reply_to, "data": data }))
            .map_err(|e| ClientError::Protocol(format!("data not serializable: {e}")))?;
        self.send_json(&line).await
    }

    /// The events sent to this endpoint. Once: later calls return `None`.
    pub fn events(&self) -> Option<impl Stream<Item = BusEvent> + use<>> {
        let rx = self.events.lock().ok()?.take()?;
        Some(ReceiverStream(rx))
    }

    /// What the daemon tells this connection (dropped messages, take-over). Once.
    pub fn notices(&self) -> Option<impl Stream<Item = Notice> + use<>> {
        let rx = self.notices.lock().ok()?.take()?;
        Some(ReceiverStream(rx))
    }

    /// Waits until everything queued so far was handed to the socket.
    pub async fn flush(&self) -> Result<(), ClientError> {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            if self.shared.out.lock().map(|o| o.is_empty()).unwrap_or(true) {
                return Ok(());
            }
            drained.await;
        }
    }
}

struct ReceiverStream<T>(mpsc::UnboundedReceiver<T>);

impl<T> Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// The messages of one subscription, as a `Stream` of owned [`Message`]s, or batch by batch
/// with [`Subscription::next_batch`] (borrowed frames, no allocation per message). Ends when the
/// connection closes.
#[derive(Debug)]
pub struct Subscription {
    sid: u64,
    rx: mpsc::Receiver<Batch>,
    current: Option<Batch>,
}

impl Subscription {
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// The messages that arrived together (one read from the socket), still in the read
    /// buffer: iterate them as [`MessageRef`]s without copying. `None` when the connection
    /// closed. Messages already taken one by one are not repeated.
    pub async fn next_batch(&mut self) -> Option<Batch> {
        if let Some(b) = self.current.take()
            && !b.is_empty()
        {
            return Some(b);
        }
        self.rx.recv().await
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            if let Some(b) = &mut self.current {
                if let Some(m) = b.next_owned() {
                    return Poll::Ready(Some(m));
                }
                self.current = None;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => self.current = Some(b),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A message borrowed from its [`Batch`]: topic and reply subject as text, the payload as JSON
/// text, all pointing into the read buffer.
#[derive(Debug, Clone)]
pub struct MessageRef<'a> {
    pub sid: u64,
    pub topic: Cow<'a, str>,
    pub reply_to: Option<Cow<'a, str>>,
    /// The payload as JSON text.
    pub data: &'a [u8],
}

impl MessageRef<'_> {
    /// Decodes the payload.
    pub fn json<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, ClientError> {
        serde_json::from_slice(self.data)
            .map_err(|e| ClientError::Protocol(format!("message data on {}: {e}", self.topic)))
    }
}

/// The messages of one subscription that arrived in one read: the shared read buffer and where
/// each message's frame starts in it.
#[derive(Debug)]
pub struct Batch {
    chunk: Bytes,
    frames: Vec<u32>,
    next: usize,
    binary: bool,
}

impl Batch {
    /// How many messages are left in it.
    pub fn len(&self) -> usize {
        self.frames.len() - self.next
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its messages, borrowed.
    pub fn iter(&self) -> impl Iterator<Item = MessageRef<'_>> + '_ {
        // The topic before is handed on, so that a run on one topic is checked as UTF-8 once.
        self.frames[self.next..]
            .iter()
            .scan("", |last, off| {
                let m = self.at(*off, last);
                if let Some(MessageRef {
                    topic: Cow::Borrowed(t),
                    ..
                }) = &m
                {
                    *last = t;
                }
                Some(m)
            })
            .flatten()
    }

    /// The message at `off`; `last_topic`: the topic of the message before, or "".
    fn at<'a>(&'a self, off: u32, last_topic: &'a str) -> Option<MessageRef<'a>> {
        let b = self.chunk.get(off as usize..)?;
        if self.binary {
            match wire::decode_bin_ref_after(b, usize::MAX, last_topic) {
                Ok(Some((
                    BinRef::Msg {
                        sid,
                        topic,
                        reply_to,
                        data,
                    },
                    _,
                ))) => Some(MessageRef {
                    sid,
                    topic: Cow::Borrowed(topic),
                    reply_to: (!reply_to.is_empty()).then_some(Cow::Borrowed(reply_to)),
                    data,
                }),
                _ => None,
            }
        } else {
            let end = memchr::memchr(b'\n', b).unwrap_or(b.len());
            let line = &b[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some((sid, topic, reply_to, data)) = wire::read_msg_line(line) {
                return Some(MessageRef {
                    sid,
                    topic: Cow::Borrowed(topic),
                    reply_to: reply_to.map(Cow::Borrowed),
                    data,
                });
            }
            let p = serde_json::from_slice::<Pushed>(line).ok()?.msg?;
            Some(MessageRef {
                sid: p.sid,
                topic: p.topic,
                reply_to: p.reply_to,
                data: p.data.get().as_bytes(),
            })
        }
    }

    fn next_owned(&mut self) -> Option<Message> {
        while let Some(off) = self.frames.get(self.next).copied() {
            self.next += 1;
            if let Some(m) = self.at(off, "") {
                return Some(Message {
                    sid: m.sid,
                    topic: m.topic.into_owned(),
                    reply_to: m.reply_to.map(Cow::into_owned),
                    data: self.chunk.slice_ref(m.data),
                });
            }
        }
        None
    }
}

/// One publish frame, in the connection's framing.
fn put_pub(b: &mut BytesMut, binary: bool, topic: &str, json_text: &[u8]) {
    if binary {
        wire::put_pub_bin(b, topic, json_text);
    } else {
        b.put_slice(b"{\"cmd\":\"bus.pub\",\"topic\":");
        wire::put_json_str(b, topic);
        b.put_slice(b",\"data\":");
        b.put_slice(json_text);
        b.put_slice(b"}\n");
    }
}

async fn write_loop(mut w: tokio::io::WriteHalf<crate::Stream>, shared: Arc<Shared>) {
    let mut spare = BytesMut::new();
    loop {
        {
            let Ok(mut out) = shared.out.lock() else {
                break;
            };
            std::mem::swap(&mut *out, &mut spare);
        }
        shared.drained.notify_waiters();
        if spare.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                break;
            }
            shared.wake_writer.notified().await;
            continue;
        }
        if w.write_all(&spare).await.is_err() {
            break;
        }
        spare.clear();
        if spare.capacity() > 4 * HIGH_WATER {
            spare = BytesMut::new();
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.drained.notify_waiters();
    let _ = w.shutdown().await;
}

#[derive(Deserialize)]
struct Pushed<'a> {
    #[serde(borrow, default)]
    msg: Option<PushedMsg<'a>>,
    #[serde(default)]
    event: Option<BusEvent>,
    #[serde(default)]
    notice: Option<Notice>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    ok: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct PushedMsg<'a> {
    sid: u64,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow, default)]
    reply_to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn read_loop(
    mut r: tokio::io::ReadHalf<crate::Stream>,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    max_line: usize,
) {
    let mut codec = LineCodec::new(max_line);
    let mut senders = Senders::default();
    'outer: loop {
        // Every frame of this read, in place: replies, events and notices now; messages noted
        // by subscription and handed over once per read, as one batch each.
        let mut pos = 0;
        loop {
            let avail = &buf[pos..];
            let at = pos as u32;
            if shared.binary {
                // Routed by its sid alone: a message frame is read when its batch is.
                match wire::peek_bin(avail, max_line) {
                    Ok(Some((frame, used))) => {
                        pos += used;
                        match frame {
                            BinPeek::Msg { sid } => senders.note(sid, at),
                            BinPeek::Json(line) => dispatch_line(&shared, &mut senders, line, at),
                            BinPeek::Pub => {}
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            } else {
                match codec.next_line(avail, false) {
                    Ok((Some(range), used)) => {
                        pos += used;
                        let at = at + range.start as u32;
                        dispatch_line(&shared, &mut senders, &avail[range], at);
                    }
                    Ok((None, used)) => {
                        pos += used;
                        break;
                    }
                    Err(_) => break 'outer,
                }
            }
        }
        if senders.noted() {
            let chunk = buf.split_to(pos).freeze();
            senders.hand_over(&shared, chunk).await;
        } else {
            buf.advance(pos);
        }
        buf.reserve(64 * 1024);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.drained.notify_waiters();
    shared.wake_writer.notify_one();
    // Waiting calls fail with `Closed`; subscriptions end.
    if let Ok(mut p) = shared.pending.lock() {
        p.clear();
    }
    if let Ok(mut s) = shared.subs.lock() {
        s.clear();
    }
}

/// The reader's own copy of the subscription senders (no lock per message), and the messages
/// of the current read by subscription.
#[derive(Default)]
struct Senders {
    txs: HashMap<u64, mpsc::Sender<Batch>>,
    /// Frame offsets of this read's messages, by subscription (most reads carry one or two).
    noted: Vec<(u64, Vec<u32>)>,
}

impl Senders {
    fn note(&mut self, sid: u64, at: u32) {
        match self.noted.iter_mut().find(|(s, _)| *s == sid) {
            Some((_, frames)) => frames.push(at),
            None => self.noted.push((sid, vec![at])),
        }
    }

    fn noted(&self) -> bool {
        !self.noted.is_empty()
    }

    /// Hands each subscription its messages of this read, `chunk` being the read's bytes.
    async fn hand_over(&mut self, shared: &Shared, chunk: Bytes) {
        for (sid, frames) in std::mem::take(&mut self.noted) {
            let tx = match self.txs.entry(sid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match shared.subs.lock().ok().and_then(|s| s.get(&sid).cloned()) {
                        Some(tx) => v.insert(tx),
                        None => continue,
                    }
                }
            };
            let batch = Batch {
                chunk: chunk.clone(),
                frames,
                next: 0,
                binary: shared.binary,
            };
            let gone = match tx.try_send(batch) {
                Ok(()) => false,
                // Back-pressure: a full subscription stops the reading (the daemon's policy
                // applies).
                Err(mpsc::error::TrySendError::Full(b)) => tx.send(b).await.is_err(),
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            };
            if gone {
                self.txs.remove(&sid);
            }
        }
    }
}

/// One JSON frame: a message is noted for its subscription (`at`: where the line starts in the
/// read buffer); anything else is handed over now.
fn dispatch_line(shared: &Shared, senders: &mut Senders, line: &[u8], at: u32) {
    if let Some((sid, ..)) = wire::read_msg_line(line) {
        return senders.note(sid, at);
    }
    let Ok(p) = serde_json::from_slice::<Pushed>(line) else {
        return;
    };
    if let Some(m) = p.msg {
        return senders.note(m.sid, at);
    }
    if let Some(e) = p.event {
        let _ = shared.events.send(e);
        return;
    }
    if let Some(n) = p.notice {
        let _ = shared.notices.send(n);
        return;
    }
    let result = match (p.ok, p.error) {
        (Some(ok), _) => Ok(serde_json::from_str(ok.get()).unwrap_or(Value::Null)),
        (None, Some(e)) => Err(e),
        (None, None) => return,
    };
    match p.id {
        Some(id) => {
            if let Some(tx) = shared.pending.lock().ok().and_then(|mut m| m.remove(&id)) {
                let _ = tx.send(result);
            }
        }
        None => {
            // An error for a fire-and-forget publish: surface it as a notice.
            if let Err(e) = result {
                let _ = shared.notices.send(Notice {
                    kind: "error".into(),
                    count: 1,
                    message: format!("{} ({})", e.message, e.code.as_str()),
                });
            }
        }
    }
}
