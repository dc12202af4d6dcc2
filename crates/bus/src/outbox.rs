//! One connection's bounded outbound queue and the writer that drains it.
//!
//! Everything a connection is sent (replies to its own requests, messages, events, notices) is
//! appended, already encoded, to a list of chunks (1 KiB for the first, growing with the queue to
//! 64 KiB, or one frame's size when larger; a fan-out run is one [`SharedRun`] referenced by
//! every subscriber's queue);
//! a frame-length list beside it keeps the frame boundaries so that the oldest frames can be
//! dropped, and a chunk whose frames are all written or dropped is freed at once (but for one
//! full-size chunk kept for the next while a backlog lasts, counted like the rest). Producers never
//! wait: past the bound the slow-consumer policy applies, `drop-oldest` (counted, and announced to
//! the consumer with a `notice` frame) or `disconnect`. Producers flush each queue they touched
//! once per batch ([`Wakes`]): while the writer is idle, a small queue is written at once from
//! the producer's task if the socket takes it without waiting (no hop through another task);
//! anything else wakes the writer (`waiting` flag), which takes all queued chunks and writes
//! them with vectored writes, many chunks per system call. The writer runs in the connection's
//! task, beside its reader.
//!
//! The byte bounds count real memory: the chunks' allocations (not just the frames' lengths), the
//! frame-length list and the batch the writer is still writing. Every outbox also charges that
//! memory to one daemon-wide [`Budget`] (`[bus] total_queue_bytes`): while all outboxes together
//! hold more, a connection holding more than its fair share gets the same policy as when its own
//! bound is passed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use majordomo_proto::bus;
use tokio::io::AsyncWrite;
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

/// The bounds of one queue, and of all queues together.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages: usize,
    /// Real memory one connection's queue may hold.
    pub bytes: usize,
    /// Real memory all connections' queues together may hold (`[bus] total_queue_bytes`).
    pub total_bytes: usize,
    pub policy: SlowConsumer,
}

/// Size of the chunks frames are appended to: the first of a queue is small, later ones grow
/// with the queue up to `CHUNK` (or one frame's size, when larger).
const MIN_CHUNK: usize = 1024;
const CHUNK: usize = 64 * 1024;
/// What each chunk costs besides its bytes: the `BytesMut` and its shared header, the list slot
/// and the allocator's own bookkeeping.
const CHUNK_OVERHEAD: usize = 96;

/// The memory every outbox of one router holds, shared by them all.
#[derive(Debug, Default)]
pub struct Budget {
    /// Real bytes held by all outboxes now.
    used: AtomicUsize,
    /// Outboxes alive (the fair share of the total is the total divided by this).
    outboxes: AtomicUsize,
    /// Frames dropped, or held by connections closed, because all outboxes together held more
    /// than `total_bytes`.
    overflows: AtomicU64,
}

impl Budget {
    /// Real bytes held by all outboxes now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Frames dropped (or connections closed, counted by their queued frames) because of the
    /// daemon-wide cap.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// A chunk's bytes: this queue's own (appended to), or a run encoded once and shared with the
/// other subscribers' queues (fan-out).
enum ChunkBuf {
    Own(BytesMut),
    Shared(Bytes),
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBuf::Own(b) => b,
            ChunkBuf::Shared(b) => b,
        }
    }
}

impl ChunkBuf {
    fn advance(&mut self, n: usize) {
        match self {
            ChunkBuf::Own(b) => b.advance(n),
            ChunkBuf::Shared(b) => b.advance(n),
        }
    }
}

struct Chunk {
    buf: ChunkBuf,
    /// Its allocation's size, fixed when it was made (grown only if a frame outgrew it).
    alloc: usize,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Chunk>,
    lens: VecDeque<u32>,
    /// Bytes of the queued frames.
    live: usize,
    /// Sum of the chunks' allocations.
    alloc: usize,
    /// Allocations of the batch the writer is writing.
    inflight: usize,
    /// What this outbox has added to the budget's `used`.
    charged: usize,
    /// Dropped since the last notice.
    unannounced: u64,
    dropped: u64,
    sent: u64,
    sent_bytes: u64,
    binary: bool,
    waiting: bool,
    /// What a direct flush left half written: the writer sends it before anything else
    /// (counted in `inflight`; never dropped, its frames are partly out).
    handoff: VecDeque<Chunk>,
    /// Set when the connection ends: the writer drains what is queued and stops.
    closing: bool,
    /// A full-size chunk the writer has written, kept for the next full-size chunk while a
    /// backlog lasts (a queue that keeps growing at the back and draining at the front would
    /// otherwise give memory back to the allocator and fault it in again, 64 KiB at a time).
    /// Dropped when the writer runs out of work, so an idle connection holds none.
    spare: Option<BytesMut>,
}

impl State {
    /// The real memory this queue holds.
    fn real(&self) -> usize {
        self.alloc
            + self.chunks.len() * CHUNK_OVERHEAD
            + self.lens.capacity() * std::mem::size_of::<u32>()
            + self.inflight
            + if self.spare.is_some() { CHUNK } else { 0 }
    }

    /// A new chunk of `cap` bytes: the spare when it is that size (a smaller chunk leaves the
    /// spare for the next full-size one), else a new allocation.
    fn new_chunk(&mut self, cap: usize) -> BytesMut {
        if cap == CHUNK
            && let Some(mut b) = self.spare.take()
        {
            b.clear();
            // Written through, so its whole allocation is free again: taken back in place.
            b.reserve(CHUNK);
            return b;
        }
        BytesMut::with_capacity(cap)
    }

    /// Keeps `b`, a full-size chunk written through, as the spare when there is none.
    fn recycle(&mut self, b: BytesMut) {
        if self.spare.is_none() && !self.closing {
            self.spare = Some(b);
        }
    }

    /// Appends one frame built by `encode`; `hint` is about its size.
    fn append(&mut self, hint: usize, encode: impl FnOnce(&mut BytesMut, bool)) {
        let binary = self.binary;
        let fits = self.chunks.back().is_some_and(|c| match &c.buf {
            ChunkBuf::Own(b) => b.capacity() - b.len() >= hint,
            ChunkBuf::Shared(_) => false,
        });
        if !fits {
            // Small while the queue is short (an idle connection holds little), up to CHUNK as
            // it grows.
            let cap = hint.max(self.live.clamp(MIN_CHUNK, CHUNK));
            let buf = self.new_chunk(cap);
            self.chunks.push_back(Chunk {
                buf: ChunkBuf::Own(buf),
                alloc: cap,
            });
            self.alloc += cap;
        }
        let Some(Chunk {
            buf: ChunkBuf::Own(buf),
            alloc,
        }) = self.chunks.back_mut()
        else {
            return;
        };
        let before = buf.len();
        let cap_before = buf.capacity();
        encode(buf, binary);
        let len = buf.len() - before;
        if buf.capacity() > cap_before {
            // The hint was short and the chunk grew: count its new allocation.
            let grown = buf.capacity() - cap_before;
            *alloc += grown;
            self.alloc += grown;
        }
        self.live += len;
        self.lens.push_back(len as u32);
    }

    /// Drops the oldest frame; a chunk left empty is freed.
    fn drop_first(&mut self) {
        let Some(first) = self.lens.pop_front() else {
            return;
        };
        let first = first as usize;
        self.live -= first;
        if let Some(front) = self.chunks.front_mut() {
            front.buf.advance(first.min(front.buf.len()));
            if front.buf.is_empty() {
                self.alloc -= front.alloc;
                self.chunks.pop_front();
            }
        }
    }

    fn clear(&mut self) {
        self.spare = None;
        self.chunks = VecDeque::new();
        self.handoff = VecDeque::new();
        self.lens = VecDeque::new();
        self.live = 0;
        self.alloc = 0;
    }
}

/// The connection's write side, shared by its writer and [`Wakes::flush`].
type Io = Box<dyn AsyncWrite + Send + Unpin>;

pub struct Outbox {
    pub conn: u64,
    state: Mutex<State>,
    /// The connection's write side once [`Outbox::attach`]ed. Locked only for one
    /// non-blocking write attempt at a time, never across an await.
    io: Mutex<Option<Io>>,
    /// `State::binary`, readable without the lock (set under it).
    binary: std::sync::atomic::AtomicBool,
    notify: Notify,
    budget: Arc<Budget>,
    /// Frames this connection sent, and their bytes (its reader adds once per read batch).
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
    /// Cancelled when the connection must end now (slow consumer disconnected, taken over,
    /// write failure), and when its carrier stops: a child of the carrier's token, so the
    /// connection's task waits on this one token for both.
    pub kicked: CancellationToken,
}

/// Outboxes to flush at the end of a read batch.
#[derive(Default)]
pub struct Wakes(Vec<std::sync::Arc<Outbox>>);

impl Wakes {
    pub fn add(&mut self, o: &std::sync::Arc<Outbox>) {
        self.0.push(o.clone());
    }

    /// Sends what the batch queued for each outbox whose writer was idle: written right here
    /// when its socket takes it without waiting (no hop through the writer, no wake-up of
    /// its task), else handed to its writer.
    pub fn flush(&mut self) {
        for o in self.0.drain(..) {
            if o.flush_direct() {
                o.notify.notify_one();
            }
        }
    }
}

/// Queue depth and traffic for `bus ls`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Depth {
    pub queued_msgs: usize,
    pub queued_bytes: usize,
    /// The real memory the queue holds (allocations, bookkeeping, the batch being written).
    pub memory_bytes: usize,
    pub sent: u64,
    pub sent_bytes: u64,
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub dropped: u64,
}

impl Outbox {
    /// An outbox with a budget of its own (tests, carriers without a router).
    pub fn new(conn: u64) -> Self {
        Self::with_budget(conn, Arc::new(Budget::default()), &CancellationToken::new())
    }

    /// An outbox charging its memory to `budget`, shared with the router's other outboxes,
    /// kicked when `stop` (its carrier's token) is cancelled.
    pub fn with_budget(conn: u64, budget: Arc<Budget>, stop: &CancellationToken) -> Self {
        budget.outboxes.fetch_add(1, Ordering::Relaxed);
        Self {
            conn,
            state: Mutex::new(State::default()),
            io: Mutex::new(None),
            binary: std::sync::atomic::AtomicBool::new(false),
            notify: Notify::new(),
            budget,
            msgs_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            kicked: stop.child_token(),
        }
    }

    /// Counts what the connection sent: `frames` frames of `bytes` bytes in all.
    pub fn count_in(&self, frames: u64, bytes: u64) {
        self.msgs_in.fetch_add(frames, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Brings the budget up to date with this queue's real memory.
    fn settle(&self, s: &mut State) {
        let real = s.real();
        if real > s.charged {
            self.budget
                .used
                .fetch_add(real - s.charged, Ordering::Relaxed);
        } else if real < s.charged {
            self.budget
                .used
                .fetch_sub(s.charged - real, Ordering::Relaxed);
        }
        s.charged = real;
    }

    /// Appends one frame built by `encode` (which gets the buffer and whether the connection
    /// speaks the binary framing); `hint` is about its encoded size. Returns true when the
    /// writer must be woken.
    fn push_with(
        &self,
        limits: &Limits,
        droppable: bool,
        hint: usize,
        encode: impl FnOnce(&mut BytesMut, bool),
    ) -> bool {
        self.push_many(limits, droppable, |s| s.append(hint, encode))
    }

    /// Appends the frames `fill` appends, under one lock, then applies the bounds once.
    fn push_many(&self, limits: &Limits, droppable: bool, fill: impl FnOnce(&mut State)) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        // Every kick sets `closing` first (under this lock), so the token need not be asked: it
        // takes a lock of its own.
        if s.closing {
            return false;
        }
        fill(&mut s);
        if droppable {
            // The rest of the daemon's queues, as of now, and this one's fair share of the total.
            let others = self.budget.used().saturating_sub(s.charged);
            let share = limits.total_bytes / self.budget.outboxes.load(Ordering::Relaxed).max(1);
            let own_over = |s: &State| s.lens.len() > limits.messages || s.real() > limits.bytes;
            let total_over = |s: &State| others + s.real() > limits.total_bytes && s.real() > share;
            if own_over(&s) || total_over(&s) {
                match limits.policy {
                    SlowConsumer::DropOldest => {
                        let mut n = 0u64;
                        let mut by_total = 0u64;
                        while s.lens.len() > 1 && (own_over(&s) || total_over(&s)) {
                            if !own_over(&s) {
                                by_total += 1;
                            }
                            s.drop_first();
                            n += 1;
                        }
                        s.unannounced += n;
                        s.dropped += n;
                        self.budget.overflows.fetch_add(by_total, Ordering::Relaxed);
                    }
                    SlowConsumer::Disconnect => {
                        if !own_over(&s) {
                            self.budget
                                .overflows
                                .fetch_add(s.lens.len() as u64, Ordering::Relaxed);
                        }
                        s.dropped += s.lens.len() as u64;
                        s.clear();
                        let note = format!(
                            "slow consumer: more than {} messages or {} bytes queued for this connection, or more than {} bytes for all connections together; disconnected ([bus] slow_consumer = \"disconnect\")",
                            limits.messages, limits.bytes, limits.total_bytes
                        );
                        let kind_binary = s.binary;
                        s.append(256 + note.len(), |b, _| {
                            put_notice(b, kind_binary, "disconnected", 0, &note)
                        });
                        s.closing = true;
                        self.settle(&mut s);
                        drop(s);
                        self.notify.notify_one();
                        self.kicked.cancel();
                        return false;
                    }
                }
            }
        }
        self.settle(&mut s);
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
        if self.push_with(limits, false, line.len() + 16, |b, bin| {
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
        let hint = data.len() + topic.len() + reply_to.map_or(0, str::len) + 64;
        self.push_with(limits, true, hint, |b, bin| {
            if bin {
                bus::put_msg_bin(b, sid, topic, reply_to, data);
            } else {
                bus::put_msg_json(b, sid, topic, reply_to, data);
            }
        })
    }

    /// Queues a run of messages on one topic for one subscription (one lock for the run);
    /// `true` when the writer must be woken.
    pub fn push_msgs(&self, limits: &Limits, sid: u64, topic: &str, datas: &[&[u8]]) -> bool {
        self.push_many(limits, true, |s| push_run(s, sid, topic, datas))
    }

    /// Queues a run of frames encoded once for several subscribers ([`Outbox::encoding`] says
    /// which): the bytes are shared, not copied. `lens` are the frames' lengths. Each queue
    /// counts the run's whole size as its own. `true` when the writer must be woken.
    pub fn push_shared(&self, limits: &Limits, run: &SharedRun, datas: &[&[u8]]) -> bool {
        self.push_many(limits, true, |s| {
            if s.binary != run.binary {
                // The framing changed since the run was encoded: this queue's own copy.
                return push_run(s, run.sid, &run.topic, datas);
            }
            let (run, lens) = (&run.bytes, &run.lens);
            s.chunks.push_back(Chunk {
                buf: ChunkBuf::Shared(run.clone()),
                alloc: run.len(),
            });
            s.alloc += run.len();
            s.live += run.len();
            s.lens.extend(lens.iter().copied());
        })
    }

    /// Whether this connection speaks the binary framing (what a shared run is encoded in).
    pub fn is_binary(&self) -> bool {
        self.binary.load(Ordering::Relaxed)
    }

    /// Queues a pushed JSON frame (an event) that may be dropped under the policy.
    pub fn push_droppable(&self, limits: &Limits, encode: impl FnOnce(&mut BytesMut)) -> bool {
        self.push_with(limits, true, 512, |b, bin| {
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

    /// Gives the outbox its connection's write side: [`writer`] drains into it, and
    /// [`Wakes::flush`] writes into it directly while the writer is idle.
    pub fn attach<W: AsyncWrite + Send + Unpin + 'static>(&self, w: W) {
        if let Ok(mut io) = self.io.lock() {
            *io = Some(Box::new(w));
        }
    }

    /// Writes the queue out now, from the caller's task, if the writer is idle and holds
    /// nothing, the queue is small ([`DIRECT_MAX`]) and the socket takes the bytes without
    /// waiting. Whatever is left (socket full,
    /// write side busy, an error) goes to the writer: returns true when it must be woken.
    fn flush_direct(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        if s.inflight != 0
            || s.chunks.is_empty()
            || s.live > DIRECT_MAX
            || s.closing
            || s.unannounced > 0
            || !s.handoff.is_empty()
        {
            return true;
        }
        // Never wait for the write side: the writer (or another flush) has it for a moment.
        let Ok(mut io) = self.io.try_lock() else {
            return true;
        };
        let Some(w) = io.as_mut() else {
            return true;
        };
        let mut batch = std::mem::take(&mut s.chunks);
        s.sent += s.lens.len() as u64;
        s.sent_bytes += s.live as u64;
        s.lens.clear();
        s.live = 0;
        let mut held = s.alloc;
        s.alloc = 0;
        // One attempt per system call, no waiting: a waker that does nothing.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_IOV];
            let k = fill_slices(&batch, &mut slices);
            if k == 0 {
                break;
            }
            match std::pin::Pin::new(&mut **w).poll_write_vectored(&mut cx, &slices[..k]) {
                std::task::Poll::Ready(Ok(n)) if n > 0 => held -= consume(&mut batch, n).0,
                _ => break,
            }
        }
        drop(io);
        batch.retain(|c| {
            !c.buf.is_empty() || {
                held -= c.alloc;
                false
            }
        });
        let rest = !batch.is_empty();
        if rest {
            s.inflight += held;
            s.handoff = batch;
        } else {
            // Everything went out: the writer never woke and still waits.
            s.waiting = true;
        }
        self.settle(&mut s);
        rest
    }

    /// Switches to the binary framing for everything queued after this call.
    pub fn set_binary(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.binary = true;
            self.binary.store(true, Ordering::Relaxed);
        }
    }

    pub fn depth(&self) -> Depth {
        self.state
            .lock()
            .map(|s| Depth {
                queued_msgs: s.lens.len(),
                queued_bytes: s.live,
                memory_bytes: s.real(),
                sent: s.sent,
                sent_bytes: s.sent_bytes,
                msgs_in: self.msgs_in.load(Ordering::Relaxed),
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                dropped: s.dropped,
            })
            .unwrap_or(Depth {
                queued_msgs: 0,
                queued_bytes: 0,
                memory_bytes: 0,
                sent: 0,
                sent_bytes: 0,
                msgs_in: 0,
                bytes_in: 0,
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
            s.append(256 + message.len(), |b, _| {
                put_notice(b, bin, kind, 0, message)
            });
            s.closing = true;
            self.settle(&mut s);
        }
        self.notify.notify_one();
        self.kicked.cancel();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.budget.outboxes.fetch_sub(1, Ordering::Relaxed);
        let charged = match self.state.get_mut() {
            Ok(s) => s.charged,
            Err(p) => p.into_inner().charged,
        };
        self.budget.used.fetch_sub(charged, Ordering::Relaxed);
    }
}

pub type OutboxRef = std::sync::Arc<Outbox>;

/// Appends a run of messages on one topic for subscription `sid`, in the queue's framing.
fn push_run(s: &mut State, sid: u64, topic: &str, datas: &[&[u8]]) {
    // What comes before the payload is the same for the whole run: encoded once.
    let mut prefix = [0u8; bus::MSG_PREFIX_MAX];
    let prefix = bus::msg_prefix(s.binary, sid, topic, &mut prefix).map(|n| &prefix[..n]);
    for data in datas {
        let hint = data.len() + topic.len() + 64;
        s.append(hint, |b, bin| put_msg(b, bin, prefix, sid, topic, data));
    }
}

fn put_msg(b: &mut BytesMut, bin: bool, prefix: Option<&[u8]>, sid: u64, topic: &str, data: &[u8]) {
    match prefix {
        Some(p) => bus::put_msg_after_prefix(b, bin, p, data),
        None if bin => bus::put_msg_bin(b, sid, topic, None, data),
        None => bus::put_msg_json(b, sid, topic, None, data),
    }
}

/// A run of messages on one topic encoded once for every subscriber with the same framing and
/// subscription id (fan-out: each connection numbers its subscriptions from 1), shared by
/// reference between their queues.
pub struct SharedRun {
    pub binary: bool,
    pub sid: u64,
    topic: Box<str>,
    bytes: Bytes,
    lens: Vec<u32>,
}

impl SharedRun {
    pub fn encode(binary: bool, sid: u64, topic: &str, datas: &[&[u8]]) -> Self {
        let mut prefix = [0u8; bus::MSG_PREFIX_MAX];
        let prefix = bus::msg_prefix(binary, sid, topic, &mut prefix).map(|n| &prefix[..n]);
        let size: usize = datas.iter().map(|d| d.len() + topic.len() + 64).sum();
        let mut b = BytesMut::with_capacity(size);
        let mut lens = Vec::with_capacity(datas.len());
        for data in datas {
            let before = b.len();
            put_msg(&mut b, binary, prefix, sid, topic, data);
            lens.push((b.len() - before) as u32);
        }
        Self {
            binary,
            sid,
            topic: topic.into(),
            bytes: b.freeze(),
            lens,
        }
    }
}

/// Most bytes a flush writes from the producer's task. Small flushes (a reply, a message, a
/// short run) go out at once, with no hop through the writer's task; bigger ones are left to
/// the writer, so the producer goes on reading while they are written.
const DIRECT_MAX: usize = 16 * 1024;

/// Chunks passed to one vectored write.
const MAX_IOV: usize = 64;

/// Takes the first `n` written bytes off `batch`; returns the allocations freed, and the last
/// full-size chunk of this queue's own among them for [`State::recycle`].
fn consume(batch: &mut VecDeque<Chunk>, mut n: usize) -> (usize, Option<BytesMut>) {
    let mut freed = 0;
    let mut reusable = None;
    while let Some(front) = batch.front_mut() {
        if n < front.buf.len() {
            front.buf.advance(n);
            break;
        }
        n -= front.buf.len();
        freed += front.alloc;
        if let Some(Chunk {
            buf: ChunkBuf::Own(b),
            alloc: CHUNK,
        }) = batch.pop_front()
        {
            reusable = Some(b);
        }
    }
    (freed, reusable)
}

/// Points `slices` at the first non-empty chunks of `batch`; returns how many.
fn fill_slices<'a>(batch: &'a VecDeque<Chunk>, slices: &mut [std::io::IoSlice<'a>]) -> usize {
    let mut k = 0;
    for c in batch
        .iter()
        .filter(|c| !c.buf.is_empty())
        .take(slices.len())
    {
        slices[k] = std::io::IoSlice::new(&c.buf);
        k += 1;
    }
    k
}

/// One vectored write of the first chunks of `batch` into the outbox's write side. The slice
/// list is built at each poll, so it is not kept in the connection's task between polls.
async fn write_io(outbox: &Outbox, batch: &VecDeque<Chunk>) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut slices = [std::io::IoSlice::new(&[]); MAX_IOV];
        let k = fill_slices(batch, &mut slices);
        if k == 0 {
            return std::task::Poll::Ready(Ok(0));
        }
        let Ok(mut io) = outbox.io.lock() else {
            return std::task::Poll::Ready(Err(std::io::Error::other("write side poisoned")));
        };
        match io.as_mut() {
            Some(w) => std::pin::Pin::new(&mut **w).poll_write_vectored(cx, &slices[..k]),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    })
    .await
}

/// Writes `batch` out, as many chunks per system call as the writer takes; each chunk's memory
/// goes back once it is written. Cancel-safe: what was written is already taken off `batch`.
async fn write_batch(batch: &mut VecDeque<Chunk>, outbox: &Outbox) -> std::io::Result<()> {
    while !batch.is_empty() {
        let written = write_io(outbox, batch).await?;
        if written == 0 && batch.iter().any(|c| !c.buf.is_empty()) {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let (freed, reusable) = consume(batch, written);
        if freed > 0
            && let Ok(mut s) = outbox.state.lock()
        {
            s.inflight = s.inflight.saturating_sub(freed);
            if let Some(b) = reusable {
                s.recycle(b);
            }
            outbox.settle(&mut s);
        }
    }
    Ok(())
}

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

/// Drains `outbox` into the write side it was [`Outbox::attach`]ed until the connection closes.
/// Runs once per connection, beside its reader. `stop` is the carrier's token the outbox was
/// made under ([`Outbox::with_budget`]): its cancellation also kicks the outbox, which is the
/// one token the writer waits on.
pub async fn writer(outbox: OutboxRef, stop: CancellationToken, limits_note: impl Fn() -> Limits) {
    let mut batch: VecDeque<Chunk> = VecDeque::new();
    loop {
        let closing;
        {
            let Ok(mut s) = outbox.state.lock() else {
                break;
            };
            // What a direct flush left half written goes first (already in `inflight`).
            std::mem::swap(&mut s.handoff, &mut batch);
            let handed = batch.len();
            if s.chunks.is_empty() {
                if batch.is_empty() {
                    if s.closing {
                        break;
                    }
                    s.waiting = true;
                    // Out of work: an idle connection keeps no spare chunk.
                    s.spare = None;
                }
            } else {
                if batch.is_empty() {
                    std::mem::swap(&mut s.chunks, &mut batch);
                } else {
                    batch.extend(s.chunks.drain(..));
                }
                s.sent += s.lens.len() as u64;
                s.sent_bytes += s.live as u64;
                s.lens.clear();
                s.inflight += s.alloc;
                s.live = 0;
                s.alloc = 0;
            }
            closing = s.closing;
            if s.unannounced > 0 && batch.len() > handed {
                // Announced before the messages that survived the drop.
                let n = s.unannounced;
                s.unannounced = 0;
                let l = limits_note();
                let msg = format!(
                    "slow consumer: {n} oldest messages dropped (more than {} messages or {} bytes were queued for this connection, or more than {} bytes for all connections together)",
                    l.messages, l.bytes, l.total_bytes
                );
                let mut notice = BytesMut::with_capacity(msg.len() + 128);
                put_notice(&mut notice, s.binary, "dropped", n, &msg);
                let alloc = notice.capacity();
                s.inflight += alloc;
                // After a half-written frame, before the messages that survived the drop.
                batch.insert(
                    handed,
                    Chunk {
                        buf: ChunkBuf::Own(notice),
                        alloc,
                    },
                );
            }
            outbox.settle(&mut s);
        }
        if batch.is_empty() {
            if stop.is_cancelled() {
                // Stopping: the reader closes the outbox as soon as it is back in its loop
                // (a reply to `reload` or `shutdown` may still be on its way).
                if tokio::time::timeout(CLOSE_WAIT, outbox.notify.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            } else if outbox.kicked.is_cancelled() {
                // Kicked: the reader closes the outbox as soon as it sees it.
                outbox.notify.notified().await;
            } else {
                tokio::select! {
                    _ = outbox.notify.notified() => {}
                    _ = outbox.kicked.cancelled() => {}
                }
            }
            continue;
        }
        // The whole batch, a vectored write at a time (one system call for many chunks).
        let hurry = closing || stop.is_cancelled() || outbox.kicked.is_cancelled();
        let res = if hurry {
            match tokio::time::timeout(LAST_FLUSH, write_batch(&mut batch, &outbox)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            }
        } else {
            tokio::select! {
                r = write_batch(&mut batch, &outbox) => r,
                // Stopping or kicked: a half-written batch is lost with the connection either way.
                _ = outbox.kicked.cancelled() => tokio::time::timeout(LAST_FLUSH, write_batch(&mut batch, &outbox)).await.unwrap_or(Ok(())),
            }
        };
        let failed = res.is_err();
        if !batch.is_empty() {
            // Lost (failure or timeout): its memory goes back at once.
            let lost: usize = batch.iter().map(|c| c.alloc).sum();
            batch.clear();
            if let Ok(mut s) = outbox.state.lock() {
                s.inflight = s.inflight.saturating_sub(lost);
                outbox.settle(&mut s);
            }
        }
        if failed {
            // Nothing more is queued for a connection that cannot be written to.
            if let Ok(mut s) = outbox.state.lock() {
                s.closing = true;
            }
            if !(closing || stop.is_cancelled()) {
                outbox.kicked.cancel();
            }
            break;
        }
    }
    batch.clear();
    let shutdown = std::future::poll_fn(|cx| match outbox.io.lock() {
        Ok(mut io) => match io.as_mut() {
            Some(w) => std::pin::Pin::new(&mut **w).poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        },
        Err(_) => std::task::Poll::Ready(Ok(())),
    });
    let _ = tokio::time::timeout(LAST_FLUSH, shutdown).await;
    // The write side goes with the connection (the outbox may outlive it a moment).
    if let Ok(mut io) = outbox.io.lock() {
        *io = None;
    }
    if let Ok(mut s) = outbox.state.lock() {
        s.clear();
        s.inflight = 0;
        s.closing = true;
        outbox.settle(&mut s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bytes: usize, total_bytes: usize) -> Limits {
        Limits {
            messages: 1_000_000,
            bytes,
            total_bytes,
            policy: SlowConsumer::DropOldest,
        }
    }

    #[test]
    fn queues_count_real_memory_and_free_it_when_dropping() {
        let budget = Arc::new(Budget::default());
        let o = Outbox::with_budget(1, budget.clone(), &CancellationToken::new());
        let l = limits(1 << 20, 1 << 30);
        let data = vec![b'1'; 1000];
        for _ in 0..10_000 {
            o.push_msg(&l, 1, "t", None, &data);
        }
        let d = o.depth();
        // Real memory is counted (at least the frames' bytes), and it stays within the bound.
        assert!(d.memory_bytes >= d.queued_bytes, "{d:?}");
        assert!(d.memory_bytes <= 1 << 20, "{d:?}");
        assert!(d.dropped > 0);
        assert_eq!(budget.used(), d.memory_bytes);
        assert_eq!(budget.overflows(), 0);
        drop(o);
        assert_eq!(budget.used(), 0);
    }

    /// A flush that the socket only partly takes hands the rest to the writer, which sends it
    /// first, in order; a fan-out run is shared between queues and arrives whole at each.
    #[tokio::test]
    async fn direct_flush_hands_the_rest_to_the_writer_in_order() {
        use tokio::io::AsyncReadExt;
        let l = limits(1 << 20, 1 << 30);
        let (mut peers, mut outboxes, mut writers) = (Vec::new(), Vec::new(), Vec::new());
        for conn in 0..2 {
            // A pipe that takes 100 bytes before it is full.
            let (ours, theirs) = tokio::io::duplex(100);
            let o: OutboxRef = Arc::new(Outbox::new(conn));
            o.attach(ours);
            let stop = CancellationToken::new();
            writers.push(tokio::spawn(writer(o.clone(), stop, move || l)));
            peers.push(theirs);
            outboxes.push(o);
        }
        // Let the writers park.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let datas: Vec<Vec<u8>> = (0..200).map(|i| format!("{i}").into_bytes()).collect();
        let datas: Vec<&[u8]> = datas.iter().map(|d| &d[..]).collect();
        let run = SharedRun::encode(false, 1, "t", &datas);
        let mut wakes = Wakes::default();
        for o in &outboxes {
            if o.push_shared(&l, &run, &datas) {
                wakes.add(o);
            }
        }
        o_push_reply(&outboxes[0], &l, &mut wakes);
        wakes.flush();
        for (o, peer) in outboxes.iter().zip(peers.iter_mut()) {
            let mut expect = BytesMut::new();
            for d in &datas {
                bus::put_msg_json(&mut expect, 1, "t", None, d);
            }
            if o.conn == 0 {
                expect.extend_from_slice(b"{\"ok\":true}\n");
            }
            let mut got = vec![0u8; expect.len()];
            tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
                .await
                .expect("everything arrives")
                .unwrap();
            assert_eq!(got, &expect[..]);
            assert_eq!(o.depth().sent, datas.len() as u64 + u64::from(o.conn == 0));
        }
        for o in &outboxes {
            o.close();
        }
        for w in writers {
            w.await.unwrap();
        }
    }

    /// While a backlog lasts, a full-size chunk the writer has written through is kept (and
    /// counted) for the next full-size chunk; once the writer runs out of work the connection
    /// holds none, and the budget is back to zero when it ends.
    #[tokio::test]
    async fn a_backlog_reuses_a_written_chunk_and_an_idle_queue_keeps_none() {
        use tokio::io::AsyncReadExt;
        let budget = Arc::new(Budget::default());
        let l = limits(64 << 20, 1 << 30);
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let o: OutboxRef = Arc::new(Outbox::with_budget(
            1,
            budget.clone(),
            &CancellationToken::new(),
        ));
        o.attach(ours);
        let w = tokio::spawn(writer(o.clone(), CancellationToken::new(), move || l));
        let data = vec![b'1'; 1000];
        let mut frame = BytesMut::new();
        bus::put_msg_json(&mut frame, 1, "t", None, &data);
        let spare = |o: &OutboxRef| o.state.lock().unwrap().spare.is_some();
        let push = |o: &OutboxRef| {
            for _ in 0..1000 {
                o.push_msg(&l, 1, "t", None, &data);
            }
            o.notify.notify_one();
        };
        // The frames of the next `n` messages, as the peer reads them.
        let mut read = async |n: usize| {
            let mut got = vec![0u8; n * frame.len()];
            tokio::time::timeout(Duration::from_secs(5), theirs.read_exact(&mut got))
                .await
                .expect("the frames arrive")
                .unwrap();
            got
        };
        push(&o);
        // The writer takes the queue and gets through its first full-size chunks.
        let got = read(300).await;
        assert!(
            spare(&o),
            "a written full-size chunk is kept while the backlog lasts"
        );
        assert_eq!(budget.used(), o.depth().memory_bytes);
        assert!(o.depth().memory_bytes >= CHUNK);
        // A short queue's small chunk leaves it; the next full-size chunk is that one.
        o.push_msg(&l, 1, "t", None, &data);
        assert!(spare(&o), "a small chunk leaves the spare alone");
        push(&o);
        assert!(!spare(&o));
        // Everything arrives, in order; then the writer is idle and keeps nothing spare.
        let rest = read(1701).await;
        assert!(
            got.chunks(frame.len())
                .chain(rest.chunks(frame.len()))
                .all(|f| f == &frame[..])
        );
        let idle = async {
            while spare(&o) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("an idle queue holds no spare chunk");
        // Nothing queued, nothing in flight: what is left is the frame-length list's capacity.
        let d = o.depth();
        assert!(d.queued_bytes == 0 && d.memory_bytes < CHUNK, "{d:?}");
        assert_eq!(budget.used(), d.memory_bytes);
        o.close();
        w.await.unwrap();
        drop(o);
        assert_eq!(budget.used(), 0);
    }

    fn o_push_reply(o: &OutboxRef, l: &Limits, wakes: &mut Wakes) {
        o.push_line(l, b"{\"ok\":true}", wakes, o);
    }

    #[test]
    fn a_short_queue_holds_little_memory() {
        let o = Outbox::new(1);
        let l = limits(1 << 20, 1 << 30);
        o.push_msg(&l, 1, "t", None, b"1");
        let d = o.depth();
        assert!(d.memory_bytes < 4096, "{d:?}");
    }

    #[test]
    fn the_daemon_wide_cap_trims_the_connections_above_their_share() {
        let budget = Arc::new(Budget::default());
        let l = limits(8 << 20, 2 << 20);
        let a = Outbox::with_budget(1, budget.clone(), &CancellationToken::new());
        let b = Outbox::with_budget(2, budget.clone(), &CancellationToken::new());
        let data = vec![b'1'; 4000];
        for _ in 0..2_000 {
            a.push_msg(&l, 1, "t", None, &data);
            b.push_msg(&l, 1, "t", None, &data);
        }
        // Each alone is far below its own 8 MiB bound; together they hold about the total.
        assert!(
            budget.used() <= (2 << 20) + 2 * (CHUNK + 8192),
            "{}",
            budget.used()
        );
        assert!(budget.overflows() > 0);
        assert!(a.depth().dropped > 0 && b.depth().dropped > 0);
    }
}
