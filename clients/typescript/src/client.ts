/**
 * The client: one connection to an instance carrying control commands and the bus.
 */
import * as net from "node:net";

import { resolve, type DiscoveryOptions, type Place } from "./discovery.js";
import {
  CallTimeoutError,
  ConnectionLostError,
  MajordomoError,
  NotRunningError,
  PermissionDeniedError,
  RemoteError,
} from "./errors.js";
import {
  CommandMethods,
  PROTOCOL,
  type CallOptions,
  type CommandName,
  type Commands,
  type Hello,
  type JsonValue,
} from "./generated.js";

export const VERSION = "0.1.0";

export interface ConnectOptions extends DiscoveryOptions {
  /** The instance's `[control] token` (default `MAJORDOMO_TOKEN`). */
  token?: string;
  /** Keep retrying this long while the daemon is starting (default 0). */
  waitMs?: number;
  /** Default timeout of one call (default 30 000). */
  callTimeoutMs?: number;
  /** Reconnect with backoff when the connection drops (default true). */
  reconnect?: boolean;
  /** Longest pause between two reconnection attempts (default 5 000). */
  maxBackoffMs?: number;
  /** Named in `hello`. */
  clientName?: string;
  /**
   * Resend `hello` every this many ms until it is answered, for carriers whose far end may not
   * be listening yet (the guest agent's virtio-serial port). Off by default.
   */
  helloRetryMs?: number;
}

/** A message delivered to a subscription; `replyTo` is set when it is a request. */
export interface Message<T = JsonValue> {
  sid: number;
  topic: string;
  data: T;
  replyTo?: string;
  /** Answers this request (`bus.reply` to its `replyTo`). */
  respond(data: unknown): Promise<void>;
}

/** An event sent to this connection's endpoint (`bus.send`, or seed-004 `SendEvent`). */
export interface BusEvent {
  name: string;
  from: string | null;
  data: JsonValue;
  ts: string;
  target?: string;
}

/** What the daemon tells this connection (`dropped`, `taken_over`, `error`), and this client's own `disconnected` / `reconnected`. */
export interface Notice {
  kind: string;
  message: string;
  count: number;
  raw?: unknown;
}

/** An unbounded queue with an async iterator; `close()` ends the iteration. */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private head = 0;
  private waiters: Array<{ resolve: (v: IteratorResult<T>) => void }> = [];
  private closedWith: Error | null | undefined = undefined;

  push(item: T): void {
    const w = this.waiters.shift();
    if (w) w.resolve({ value: item, done: false });
    else this.items.push(item);
  }

  get size(): number {
    return this.items.length - this.head;
  }

  close(err: Error | null = null): void {
    if (this.closedWith !== undefined) return;
    this.closedWith = err;
    for (const w of this.waiters.splice(0)) w.resolve({ value: undefined as never, done: true });
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  private take(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const v = this.items[this.head];
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return v;
  }

  /** The next item; rejects with `CallTimeoutError` after `timeoutMs`, `ConnectionLostError` once closed. */
  next(timeoutMs?: number, what = "message"): Promise<T> {
    if (this.size > 0) return Promise.resolve(this.take() as T);
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith ?? new ConnectionLostError(`no more ${what}s: closed`));
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const w = {
        resolve: (r: IteratorResult<T>) => {
          if (timer) clearTimeout(timer);
          if (r.done) reject(this.closedWith ?? new ConnectionLostError(`no more ${what}s: closed`));
          else resolve(r.value);
        },
      };
      this.waiters.push(w);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new CallTimeoutError(what, timeoutMs));
        }, timeoutMs);
      }
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: (): Promise<IteratorResult<T>> => {
        if (this.size > 0) return Promise.resolve({ value: this.take() as T, done: false });
        if (this.closedWith !== undefined) return Promise.resolve({ value: undefined as never, done: true });
        return new Promise((resolve) => this.waiters.push({ resolve }));
      },
      return: (): Promise<IteratorResult<T>> => Promise.resolve({ value: undefined as never, done: true }),
    };
  }
}

/** Messages on a topic pattern: `for await (const m of sub)`, or `await sub.next(1000)`. */
export class Subscription<T = JsonValue> implements AsyncIterable<Message<T>> {
  /** @internal */
  readonly queue = new AsyncQueue<Message<T>>();

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly sid: number,
    readonly pattern: string,
    readonly group: string | undefined,
  ) {}

  next(timeoutMs?: number): Promise<Message<T>> {
    return this.queue.next(timeoutMs, `message on ${this.pattern}`);
  }

  /** Messages received and not yet taken. */
  get pending(): number {
    return this.queue.size;
  }

  async unsubscribe(): Promise<void> {
    if (this.queue.closed) return;
    this.queue.close();
    await this.client.unsubscribe(this.sid);
  }

  [Symbol.asyncIterator](): AsyncIterator<Message<T>> {
    return this.queue[Symbol.asyncIterator]();
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
  cmd: string;
}

function retryable(e: NodeJS.ErrnoException): boolean {
  return e.code === "ENOENT" || e.code === "ECONNREFUSED" || e.code === "EPIPE_BUSY" || e.code === "EBUSY";
}

/**
 * A connection to a majordomo instance. `await Client.connect({ instance: "name" })`; every
 * command of the contract is a typed method (`status()`, `ps()`, `queueStats()`, ...), and the
 * bus is here too. When the daemon goes away the client reconnects with backoff, registers its
 * endpoint again and restores its subscriptions; calls made meanwhile wait (within their timeout).
 */
export class Client extends CommandMethods {
  readonly place: Place;
  readonly callTimeoutMs: number;
  /** The daemon's answer to this connection's `hello`. */
  helloInfo: Hello | null = null;

  private sock: net.Socket | null = null;
  private connected = false;
  private closed = false;
  private nextId = 1;
  private nextSid = 1;
  private pending = new Map<number, Pending>();
  private subs = new Map<number, Subscription<never>>();
  private endpoint: Record<string, unknown> | null = null;
  private readonly eventQ = new AsyncQueue<BusEvent>();
  private readonly noticeQ = new AsyncQueue<Notice>();
  private connectedWaiters: Array<() => void> = [];
  private reconnectTimer: NodeJS.Timeout | null = null;

  private constructor(
    place: Place,
    private readonly opts: ConnectOptions,
  ) {
    super();
    this.place = place;
    this.callTimeoutMs = opts.callTimeoutMs ?? 30_000;
  }

  /** Connects to an instance found with the CLI's rules; a string is the instance name. */
  static async connect(opts: ConnectOptions | string = {}): Promise<Client> {
    const o: ConnectOptions = typeof opts === "string" ? { instance: opts } : { ...opts };
    if (o.token === undefined && process.env.MAJORDOMO_TOKEN) o.token = process.env.MAJORDOMO_TOKEN;
    const client = new Client(resolve(o), o);
    const deadline = Date.now() + (o.waitMs ?? 0);
    let delay = 10;
    for (;;) {
      try {
        await client.open(deadline);
        return client;
      } catch (e) {
        if (!(e instanceof NotRunningError) || Date.now() + delay >= deadline) throw e;
        await sleep(delay);
        delay = Math.min(delay * 2, 200);
      }
    }
  }

  get isConnected(): boolean {
    return this.connected;
  }

  private rawConnect(): Promise<net.Socket> {
    const socket = this.place.socket;
    return new Promise((resolveP, rejectP) => {
      const s = net.createConnection({ path: socket });
      const onError = (e: NodeJS.ErrnoException) => {
        s.destroy();
        if (e.code === "EACCES" || e.code === "EPERM") rejectP(new PermissionDeniedError(socket));
        else if (retryable(e))
          rejectP(
            new NotRunningError(
              this.place.instance,
              socket,
              e.code === "ENOENT" ? "not found" : `refused the connection (${e.code})`,
            ),
          );
        else rejectP(new MajordomoError(`connection to ${socket} failed: ${e.message}`));
      };
      s.once("error", onError);
      s.once("connect", () => {
        s.off("error", onError);
        resolveP(s);
      });
    });
  }

  private async open(deadline = 0): Promise<void> {
    const s = await this.rawConnect();
    this.sock = s;
    s.setNoDelay?.(true);
    let buf: Buffer | null = null;
    s.on("data", (chunk: Buffer) => {
      let data = buf ? Buffer.concat([buf, chunk]) : chunk;
      let start = 0;
      for (;;) {
        const nl = data.indexOf(10, start);
        if (nl < 0) break;
        if (nl > start) this.onLine(data.toString("utf8", start, nl));
        start = nl + 1;
      }
      buf = start < data.length ? data.subarray(start) : null;
    });
    s.on("error", () => {
      /* 'close' follows */
    });
    s.on("close", () => this.onClose(s));
    try {
      const args: Record<string, unknown> = { protocol: PROTOCOL, client: this.opts.clientName ?? `majordomo-node/${VERSION}` };
      if (this.opts.token) args.token = this.opts.token;
      const limit = Math.min(this.callTimeoutMs, 10_000);
      const retry = this.opts.helloRetryMs;
      // On a port that may hold an earlier session's bytes, start ids where a stale reply will not match.
      if (retry) this.nextId = 1 + Math.floor(Math.random() * 1e9);
      for (;;) {
        try {
          const h = await this.callNow("hello", args, retry ?? limit);
          if (!h || typeof h !== "object" || !("protocol" in h)) throw new MajordomoError(`not a majordomo hello reply: ${JSON.stringify(h)}`);
          this.helloInfo = h as Hello;
          break;
        } catch (e) {
          if (!retry || !(e instanceof CallTimeoutError) || Date.now() >= deadline) throw e;
        }
      }
      if (this.endpoint) await this.callNow("bus.register", this.endpoint, limit);
      for (const sub of this.subs.values()) {
        const a: Record<string, unknown> = { pattern: sub.pattern, sid: sub.sid };
        if (sub.group !== undefined) a.queue = sub.group;
        await this.callNow("bus.sub", a, limit);
      }
    } catch (e) {
      s.destroy();
      throw e;
    }
    this.connected = true;
    for (const w of this.connectedWaiters.splice(0)) w();
  }

  private onClose(s: net.Socket): void {
    if (s !== this.sock) return;
    const was = this.connected;
    this.connected = false;
    this.failPending(new ConnectionLostError());
    if (this.closed) return;
    if (was) this.noticeQ.push({ kind: "disconnected", message: `lost the connection to ${this.place.socket}`, count: 0 });
    if (was && this.opts.reconnect !== false) this.scheduleReconnect(50);
    else if (this.opts.reconnect === false) {
      for (const sub of this.subs.values()) sub.queue.close();
      this.eventQ.close();
    }
  }

  private scheduleReconnect(delay: number): void {
    this.reconnectTimer = setTimeout(async () => {
      this.reconnectTimer = null;
      if (this.closed) return;
      try {
        await this.open(Date.now() + 30_000);
        this.noticeQ.push({ kind: "reconnected", message: `reconnected to ${this.place.socket}`, count: 0 });
      } catch {
        this.scheduleReconnect(Math.min(delay * 2, this.opts.maxBackoffMs ?? 5_000));
      }
    }, delay);
  }

  private failPending(err: Error): void {
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }

  /** Closes the connection; subscriptions and iterators end. */
  async close(): Promise<void> {
    this.closed = true;
    this.connected = false;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.failPending(new ConnectionLostError("the client was closed"));
    for (const sub of this.subs.values()) sub.queue.close();
    this.subs.clear();
    this.eventQ.close();
    this.noticeQ.close();
    const s = this.sock;
    if (s && !s.destroyed) {
      await new Promise<void>((r) => {
        s.once("close", () => r());
        s.end();
        setTimeout(() => {
          s.destroy();
          r();
        }, 500).unref();
      });
    }
  }

  private onLine(line: string): void {
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(line);
    } catch {
      return; // not JSON (e.g. leftovers on a serial port): ignored
    }
    if (obj === null || typeof obj !== "object") return;
    const msg = obj.msg as Record<string, unknown> | undefined;
    if (msg && typeof msg === "object") {
      const sub = this.subs.get(msg.sid as number);
      if (sub) {
        const replyTo = msg.reply_to as string | undefined;
        sub.queue.push({
          sid: msg.sid as number,
          topic: msg.topic as string,
          data: msg.data as never,
          replyTo,
          respond: (data: unknown) =>
            replyTo ? this.reply(replyTo, data) : Promise.reject(new MajordomoError(`the message on ${String(msg.topic)} is not a request`)),
        });
      }
      return;
    }
    const ev = obj.event as Record<string, unknown> | undefined;
    if (ev && typeof ev === "object") {
      this.eventQ.push({ name: ev.name as string, from: (ev.from as string) ?? null, data: (ev.data ?? null) as JsonValue, ts: ev.ts as string });
      return;
    }
    const notice = obj.notice as Record<string, unknown> | undefined;
    if (notice && typeof notice === "object") {
      this.noticeQ.push({ kind: String(notice.kind), message: String(notice.message ?? ""), count: Number(notice.count ?? 0), raw: notice });
      return;
    }
    if (typeof obj.Type === "string" && "Payload" in obj) {
      const p = (obj.Payload ?? {}) as Record<string, unknown>;
      if (obj.Type === "SendEvent") {
        this.eventQ.push({
          name: p.EventName as string,
          from: (p.SourceMachineId as string) ?? null,
          data: (p.Payload ?? null) as JsonValue,
          ts: (p.Timestamp as string) ?? "",
          target: p.TargetMachineId as string,
        });
      } else {
        this.noticeQ.push({ kind: "error", message: `${String(p.Message ?? "")} (${String(p.Code ?? obj.Type)})`, count: 0, raw: obj });
      }
      return;
    }
    if ("ok" in obj || "error" in obj) {
      const p = typeof obj.id === "number" ? this.pending.get(obj.id) : undefined;
      if (!p) {
        const err = obj.error as Record<string, unknown> | undefined;
        if (err) this.noticeQ.push({ kind: "error", message: `${String(err.message)} (${String(err.code)})`, count: 0, raw: obj });
        return;
      }
      this.pending.delete(obj.id as number);
      if (p.timer) clearTimeout(p.timer);
      if ("error" in obj) {
        const e = (obj.error ?? {}) as Record<string, unknown>;
        p.reject(new RemoteError(String(e.code ?? "other"), String(e.message ?? ""), e.details, p.cmd));
      } else p.resolve(obj.ok);
    }
  }

  private write(line: string): boolean {
    const s = this.sock;
    if (!s || s.destroyed) throw new ConnectionLostError(`not connected to ${this.place.socket}`);
    return s.write(line);
  }

  /** `reportMs` is the caller's whole timeout, named in the error; `timeoutMs` is what is left of it. */
  private callNow(cmd: string, args: Record<string, unknown> | undefined, timeoutMs: number, reportMs = timeoutMs): Promise<unknown> {
    const id = this.nextId++;
    const line = JSON.stringify({ id, cmd, ...(args ?? {}) }) + "\n";
    return new Promise((resolveP, rejectP) => {
      const p: Pending = { resolve: resolveP, reject: rejectP, cmd };
      p.timer = setTimeout(() => {
        this.pending.delete(id);
        rejectP(new CallTimeoutError(cmd, reportMs));
      }, timeoutMs);
      this.pending.set(id, p);
      try {
        this.write(line);
      } catch (e) {
        clearTimeout(p.timer);
        this.pending.delete(id);
        rejectP(e as Error);
      }
    });
  }

  private waitConnected(what: string, timeoutMs: number): Promise<void> {
    if (this.connected) return Promise.resolve();
    if (this.closed) return Promise.reject(new ConnectionLostError("the client is closed"));
    if (this.opts.reconnect === false) return Promise.reject(new ConnectionLostError(`not connected to ${this.place.socket} (reconnect is off)`));
    return new Promise((resolveP, rejectP) => {
      const done = () => {
        clearTimeout(timer);
        resolveP();
      };
      const timer = setTimeout(() => {
        const i = this.connectedWaiters.indexOf(done);
        if (i >= 0) this.connectedWaiters.splice(i, 1);
        rejectP(new NotRunningError(this.place.instance, this.place.socket, `did not come back within ${timeoutMs} ms (${what})`));
      }, timeoutMs);
      this.connectedWaiters.push(done);
    });
  }

  /** Sends any command with its arguments; resolves with the reply's `ok` value, rejects with `RemoteError`. */
  override call<K extends CommandName>(cmd: K, args: Commands[K]["args"], opts?: CallOptions): Promise<Commands[K]["reply"]>;
  override call(cmd: string, args?: Record<string, unknown>, opts?: CallOptions): Promise<unknown>;
  override async call(cmd: string, args?: object, opts?: CallOptions): Promise<unknown> {
    const t = opts?.timeoutMs ?? this.callTimeoutMs;
    const start = Date.now();
    await this.waitConnected(cmd, t);
    return this.callNow(cmd, args as Record<string, unknown>, Math.max(1, t - (Date.now() - start)), t);
  }

  // -- the bus --------------------------------------------------------------------------------

  /** Registers this connection as `endpoint`; events sent to it arrive on `events()`. Restored after a reconnect. */
  async register(endpoint: string, opts: { takeover?: boolean; token?: string } = {}): Promise<void> {
    const args: Record<string, unknown> = { endpoint };
    if (opts.takeover) args.takeover = true;
    if (opts.token !== undefined) args.token = opts.token;
    await this.call("bus.register", args);
    this.endpoint = args;
  }

  async unregister(): Promise<void> {
    this.endpoint = null;
    await this.call("bus.unregister", {});
  }

  /** Sends an event to an endpoint (`RemoteError` `not_found` if it is not registered; with `waitMs`, waits for it). */
  async send(to: string, event: string, data: unknown = null, opts: { waitMs?: number } = {}): Promise<void> {
    const args: Record<string, unknown> = { to, event, data };
    let timeoutMs: number | undefined;
    if (opts.waitMs !== undefined) {
      args.wait_ms = opts.waitMs;
      timeoutMs = this.callTimeoutMs + opts.waitMs;
    }
    await this.call("bus.send", args, { timeoutMs });
  }

  /** Publishes without an acknowledgement (errors arrive on `notices()`). Resolves once written (backpressure). */
  async publish(topic: string, data: unknown = null): Promise<void> {
    if (!this.connected) await this.waitConnected("bus.pub", this.callTimeoutMs);
    const ok = this.write(`{"cmd":"bus.pub","topic":${JSON.stringify(topic)},"data":${JSON.stringify(data)}}\n`);
    if (!ok) await new Promise<void>((r) => this.sock!.once("drain", () => r()));
  }

  /** Publishes and resolves with how many subscribers got it. */
  async publishAcked(topic: string, data: unknown = null): Promise<number | boolean> {
    const r = await this.call("bus.pub", { topic, data });
    return r.delivered;
  }

  /** Subscribes to a pattern (`*` one token, final `>` the rest); with `queue`, joins that queue group. */
  async subscribe<T = JsonValue>(pattern: string, opts: { queue?: string } = {}): Promise<Subscription<T>> {
    const sid = this.nextSid++;
    const sub = new Subscription<T>(this, sid, pattern, opts.queue);
    this.subs.set(sid, sub as unknown as Subscription<never>);
    const args: Record<string, unknown> = { pattern, sid };
    if (opts.queue !== undefined) args.queue = opts.queue;
    try {
      await this.call("bus.sub", args);
    } catch (e) {
      this.subs.delete(sid);
      throw e;
    }
    return sub;
  }

  /** @internal */
  async unsubscribe(sid: number): Promise<void> {
    this.subs.get(sid)?.queue.close();
    this.subs.delete(sid);
    if (this.connected) {
      try {
        await this.call("bus.unsub", { sid });
      } catch (e) {
        if (!(e instanceof RemoteError || e instanceof ConnectionLostError)) throw e;
      }
    }
  }

  /** Sends a request to one subscriber of `topic`; `RemoteError` `no_responders` or `timeout`. */
  async request<T = JsonValue>(topic: string, data: unknown = null, opts: { timeoutMs?: number } = {}): Promise<T> {
    const t = opts.timeoutMs ?? 10_000;
    try {
      return (await this.call("bus.request", { topic, data, timeout_ms: Math.max(1, Math.round(t)) }, { timeoutMs: t + 2000 })) as T;
    } catch (e) {
      if (e instanceof CallTimeoutError) throw new RemoteError("timeout", `no reply on '${topic}' within ${t} ms`, undefined, "bus.request");
      throw e;
    }
  }

  /** Answers a request (a message with `replyTo`). */
  async reply(replyTo: string, data: unknown = null): Promise<void> {
    if (!this.connected) await this.waitConnected("bus.reply", this.callTimeoutMs);
    this.write(`{"cmd":"bus.reply","to":${JSON.stringify(replyTo)},"data":${JSON.stringify(data)}}\n`);
  }

  /** Events sent to this endpoint: `for await (const ev of client.events())`. */
  events(): AsyncIterable<BusEvent> {
    return this.eventQ;
  }

  nextEvent(timeoutMs?: number): Promise<BusEvent> {
    return this.eventQ.next(timeoutMs, "event");
  }

  notices(): AsyncIterable<Notice> {
    return this.noticeQ;
  }

  nextNotice(timeoutMs?: number): Promise<Notice> {
    return this.noticeQ.next(timeoutMs, "notice");
  }
}

/** `await connect("name")` or `await connect({ home, token, waitMs })`. */
export function connect(opts: ConnectOptions | string = {}): Promise<Client> {
  return Client.connect(opts);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
