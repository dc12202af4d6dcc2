//! One connection's bounded outbound queue and the writer task that drains it.
//!
//! Everything a connection is sent (replies to its own requests, messages, events, notices) is
//! appended, already encoded, to one buffer; a frame-length list beside it keeps the frame
//! boundaries so that the oldest frames can be dropped. Producers never wait: past the bound
//! (messages or bytes) the slow-consumer policy applies, `drop-oldest` (counted, and announced to
//! the consumer with a `notice` frame) or `disconnect`. The writer swaps the whole buffer out and
//! writes it with one `write_all` (a batch per wake-up), so a burst costs one system call, and
//! producers wake it at most once per batch (`waiting` flag + [`Wakes`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use majordomo_proto::bus;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What happens when a consumer's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    /// Drop the oldest queued frames, count them and tell the consumer.
    DropOldest,
    /// Close the consumer's connection.
    Disconnect,
}

/// The bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages: usize,
    pub bytes: usize,
    pub policy: SlowConsumer,
}

#[derive(Default)]
struct State {
    buf: BytesMut,
    lens: VecDeque<u32>,
    /// Dropped since the last notice.
    unannounced: u64,
    dropped: u64,
    sent: u64,
    binary: bool,
    waiting: bool,
    /// Set when the connection ends: the writer drains what is queued and stops.
    closing: bool,
}

pub struct Outbox {
    pub conn: u64,
    state: Mutex<State>,
    notify: Notify,
    /// Cancelled when the connection must end now (slow consumer disconnected, taken over,
    /// write failure); the reader watches it.
    pub kicked: CancellationToken,
}

/// Outboxes to wake at the end of a read batch.
#[derive(Default)]
pub struct Wakes(Vec<std::sync::Arc<Outbox>>);

impl Wakes {
    pub fn add(&mut self, o: &std::sync::Arc<Outbox>) {
        self.0.push(o.clone());
    }
    pub fn flush(&mut self) {
        for o in self.0.drain(..) {
            o.notify.notify_one();
        }
    }
}

/// Queue depth for `bus ls`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Depth {
    pub queued_msgs: usize,
    pub queued_bytes: usize,
    pub sent: u64,
    pub dropped: u64,
}

impl Outbox {
    pub fn new(conn: u64) -> Self {
        Self {
            conn,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            kicked: CancellationToken::new(),
        }
    }

    /// Appends one frame built by `encode` (which gets the buffer and whether the connection
    /// speaks the binary framing). Returns true when the writer must be woken.
    fn push_with(
        &self,
        limits: &Limits,
        droppable: bool,
        encode: impl FnOnce(&mut BytesMut, bool),
    ) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.closing || self.kicked.is_cancelled() {
            return false;
        }
        let before = s.buf.len();
        let binary = s.binary;
        encode(&mut s.buf, binary);
        let len = s.buf.len() - before;
        s.lens.push_back(len as u32);
        if droppable && (s.lens.len() > limits.messages || s.buf.len() > limits.bytes) {
            match limits.policy {
                SlowConsumer::DropOldest => {
                    let mut n = 0u64;
                    while s.lens.len() > 1
                        && (s.lens.len() > limits.messages || s.buf.len() > limits.bytes)
                    {
                        if let Some(first) = s.lens.pop_front() {
                            let _ = s.buf.split_to(first as usize);
                            n += 1;
                        }
                    }
                    s.unannounced += n;
                    s.dropped += n;
                }
                SlowConsumer::Disconnect => {
                    s.dropped += s.lens.len() as u64;
                    s.buf = BytesMut::new();
                    s.lens = VecDeque::new();
                    let note = format!(
                        "slow consumer: more than {} messages or {} bytes queued for this connection; disconnected ([bus] slow_consumer = \"disconnect\")",
                        limits.messages, limits.bytes
                    );
                    put_notice(&mut s.buf, binary, "disconnected", 0, &note);
                    let l = s.buf.len() as u32;
                    s.lens.push_back(l);
                    s.closing = true;
                    drop(s);
                    self.notify.notify_one();
                    self.kicked.cancel();
                    return false;
                }
            }
        }
        if s.waiting {
            s.waiting = false;
            true
        } else {
            false
        }
    }

    /// Queues a JSON line (given without its newline). Replies are never dropped to make room
    /// for themselves, but may be dropped later as the oldest frames.
    pub fn push_line(&self, limits: &Limits, line: &[u8], wakes: &mut Wakes, me: &OutboxRef) {
        if self.push_with(limits, false, |b, bin| {
            if bin {
                bus::put_json_bin(b, line);
            } else {
                b.reserve(line.len() + 1);
                b.put_slice(line);
                b.put_u8(b'\n');
            }
        }) {
            wakes.add(me);
        }
    }

    /// Queues a delivered message; `true` when the writer must be woken.
    pub fn push_msg(
        &self,
        limits: &Limits,
        sid: u64,
        topic: &str,
        reply_to: Option<&str>,
        data: &[u8],
    ) -> bool {
        self.push_with(limits, true, |b, bin| {
            if bin {
                bus::put_msg_bin(b, sid, topic, reply_to, data);
            } else {
                bus::put_msg_json(b, sid, topic, reply_to, data);
            }
        })
    }

    /// Queues a pushed JSON frame (an event) that may be dropped under the policy.
    pub fn push_droppable(&self, limits: &Limits, encode: impl FnOnce(&mut BytesMut)) -> bool {
        self.push_with(limits, true, |b, bin| {
            if bin {
                let mut tmp = BytesMut::new();
                encode(&mut tmp);
                let line = tmp.strip_suffix(b"\n").unwrap_or(&tmp);
                bus::put_json_bin(b, line);
            } else {
                encode(b);
            }
        })
    }

    /// Switches to the binary framing for everything queued after this call.
    pub fn set_binary(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.binary = true;
        }
    }

    pub fn depth(&self) -> Depth {
        self.state
            .lock()
            .map(|s| Depth {
                queued_msgs: s.lens.len(),
                queued_bytes: s.buf.len(),
                sent: s.sent,
                dropped: s.dropped,
            })
            .unwrap_or(Depth {
                queued_msgs: 0,
                queued_bytes: 0,
                sent: 0,
                dropped: 0,
            })
    }

    /// The connection is ending: write what is queued, then stop.
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closing = true;
        }
        self.notify.notify_one();
    }

    /// Ends the connection now, after one last notice (take-over, failures).
    pub fn kick(&self, kind: &str, message: &str) {
        if let Ok(mut s) = self.state.lock() {
            let bin = s.binary;
            put_notice(&mut s.buf, bin, kind, 0, message);
            let l = s.buf.len() as u32;
            s.lens.push_back(l);
            s.closing = true;
        }
        self.notify.notify_one();
        self.kicked.cancel();
    }
}

pub type OutboxRef = std::sync::Arc<Outbox>;

fn put_notice(buf: &mut BytesMut, binary: bool, kind: &str, count: u64, message: &str) {
    let v = serde_json::json!({"notice": {"kind": kind, "count": count, "message": message}});
    let line = serde_json::to_vec(&v).unwrap_or_default();
    if binary {
        bus::put_json_bin(buf, &line);
    } else {
        buf.put_slice(&line);
        buf.put_u8(b'\n');
    }
}

/// How long the writer keeps trying to deliver queued frames once the daemon is stopping or the
/// connection was kicked (a stalled client must not hold up the drain).
const LAST_FLUSH: Duration = Duration::from_millis(300);
/// How long a stopping writer waits for its reader to finish the request in hand.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Drains `outbox` into `w` until the connection closes. Spawned once per connection.
pub async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    outbox: OutboxRef,
    stop: CancellationToken,
    limits_note: impl Fn() -> Limits,
) {
    let mut spare = BytesMut::new();
    loop {
        let mut closing = false;
        {
            let Ok(mut s) = outbox.state.lock() else {
                break;
            };
            if s.buf.is_empty() && spare.is_empty() {
                if s.closing {
                    break;
                }
                s.waiting = true;
            } else {
                std::mem::swap(&mut s.buf, &mut spare);
                s.sent += s.lens.len() as u64;
                s.lens.clear();
                closing = s.closing;
            }
            if s.unannounced > 0 && !spare.is_empty() {
                // Announced before the messages that survived the drop.
                let n = s.unannounced;
                s.unannounced = 0;
                let l = limits_note();
                let msg = format!(
                    "slow consumer: {n} oldest messages dropped (more than {} messages or {} bytes were queued for this connection)",
                    l.messages, l.bytes
                );
                let mut with_notice = BytesMut::with_capacity(spare.len() + 256);
                put_notice(&mut with_notice, s.binary, "dropped", n, &msg);
                with_notice.extend_from_slice(&spare);
                spare = with_notice;
            }
        }
        if spare.is_empty() {
            if stop.is_cancelled() {
                // Stopping: the reader closes the outbox as soon as it is back in its loop
                // (a reply to `reload` or `shutdown` may still be on its way).
                if tokio::time::timeout(CLOSE_WAIT, outbox.notify.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            } else {
                tokio::select! {
                    _ = outbox.notify.notified() => {}
                    _ = stop.cancelled() => {}
                }
            }
            continue;
        }
        let hurry = closing || stop.is_cancelled() || outbox.kicked.is_cancelled();
        let res = if hurry {
            match tokio::time::timeout(LAST_FLUSH, w.write_all(&spare)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = w.write_all(&spare) => r,
                // A half-written batch is lost with the connection either way.
                _ = stop.cancelled() => tokio::time::timeout(LAST_FLUSH, w.write_all(&spare)).await.unwrap_or(Ok(())),
                _ = outbox.kicked.cancelled() => tokio::time::timeout(LAST_FLUSH, w.write_all(&spare)).await.unwrap_or(Ok(())),
            }
        };
        if res.is_err() {
            outbox.kicked.cancel();
            break;
        }
        spare.clear();
        if spare.capacity() > 64 * 1024 {
            // A burst is over: give its memory back instead of holding it per connection.
            spare = BytesMut::new();
        }
    }
    let _ = tokio::time::timeout(LAST_FLUSH, w.shutdown()).await;
    if let Ok(mut s) = outbox.state.lock() {
        s.buf = BytesMut::new();
        s.lens = VecDeque::new();
        s.closing = true;
    }
}
