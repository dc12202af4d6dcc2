// Against a real daemon: control commands, the bus, errors, reconnect, seed-004 interop.
import assert from "node:assert/strict";
import * as net from "node:net";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import { CallTimeoutError, Client, connect, NotRunningError, RemoteError, type ConnectOptions } from "../src/index.js";
import { Daemon, skipWithoutDaemon, tempHome } from "./helpers.js";

const skip = skipWithoutDaemon();

describe("against a real daemon", { skip }, () => {
  const home = tempHome();
  let d: Daemon;
  const open: Client[] = [];
  const conn = async (opts: ConnectOptions = {}, dd: Daemon = d): Promise<Client> => {
    const c = await connect({ instance: dd.instance, home, waitMs: 5000, callTimeoutMs: 10_000, ...opts });
    open.push(c);
    return c;
  };

  before(async () => {
    d = await new Daemon(home).start();
  });
  after(async () => {
    for (const c of open) await c.close();
    await d.stop();
  });

  test("control commands", async () => {
    const md = await conn();
    assert.equal(md.helloInfo?.protocol, 1);
    const st = await md.status();
    assert.equal(st.instance, "default");
    assert.equal(st.mode, "home");
    assert.equal(st.socket, d.socket);
    assert.equal(await md.ping(), "pong");
    const cfg = (await md.config()) as Record<string, unknown>;
    assert.ok("control" in cfg);
    assert.equal((await md.reload()).ok, true);
    const ps = await md.ps();
    assert.deepEqual(ps.programs.map((p) => p.name), ["sleeper"]);
    await md.stop({ name: "sleeper" });
    assert.ok(["stopping", "stopped"].includes((await md.ps({ name: "sleeper" })).programs[0].state));
    await md.start({ names: ["sleeper"] });
    await md.restart({ name: "sleeper" });
    for (let i = 0; i < 100; i++) {
      const row = (await md.ps({ name: "sleeper" })).programs[0];
      if ((row.state === "running" || row.state === "ready") && row.pid) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await md.signal({ name: "sleeper", signal: "CONT" })).name, "sleeper");
    assert.ok(Array.isArray((await md.alerts()).active));
    assert.equal(typeof (await md.metrics()), "object");
    assert.equal((await md.report()).instance, "default");
    assert.equal((await md.notifyTest({ name: "logn" })).notifier, "logn");
    assert.ok("counts" in (await md.notifyLog({ limit: 5 })));
    assert.ok("counters" in (await md.busLs()));
    try {
      assert.ok(Array.isArray((await md.queueStats()).pipelines));
      assert.ok(Array.isArray((await md.queueLs({ limit: 3 })).items));
    } catch (e) {
      assert.ok(e instanceof RemoteError && ["unknown_command", "not_found"].includes(e.code));
    }
    await assert.rejects(md.signal({ name: "nope", signal: "HUP" }), (e) => e instanceof RemoteError);
    await assert.rejects(md.call("no.such.command", {}), (e) => e instanceof RemoteError && e.code === "unknown_command");
  });

  test("a missing instance says what to do", async () => {
    await assert.rejects(connect({ instance: "ghost", home }), (e) => {
      assert.ok(e instanceof NotRunningError);
      assert.match(e.message, /no instance 'ghost' is running: socket .*ghost\/majordomo\.sock not found; start it with `majordomo run --instance ghost`/);
      assert.ok(e.message.includes(path.join(home, "ghost", "majordomo.sock")));
      return true;
    });
  });

  test("token hello", async () => {
    const t = await new Daemon(home, "tok", '[log]\nfile = false\n[control]\ntoken = "s3cret"\n').start();
    try {
      const ok = await conn({ token: "s3cret" }, t);
      assert.equal(await ok.ping(), "pong");
      await assert.rejects(conn({ token: "wrong" }, t), (e) => e instanceof RemoteError && e.code === "forbidden");
      await assert.rejects(conn({}, t), (e) => e instanceof RemoteError && e.code === "forbidden" && /MAJORDOMO_TOKEN/.test(e.message));
    } finally {
      await t.stop("SIGKILL");
    }
  });

  test("events between endpoints", async () => {
    const a = await conn();
    const b = await conn();
    await a.register("ts-a");
    await b.register("ts-b");
    await a.send("ts-b", "job.done", { n: 1 });
    const ev = await b.nextEvent(5000);
    assert.deepEqual([ev.name, ev.from, ev.data], ["job.done", "ts-a", { n: 1 }]);
    await assert.rejects(a.send("nobody", "x"), (e) => e instanceof RemoteError && e.code === "not_found");
    const c = await conn();
    await assert.rejects(c.register("ts-a"), (e) => e instanceof RemoteError && e.code === "conflict");
  });

  test("publish, subscribe with wildcards, queue groups", async () => {
    const pub = await conn();
    const s1 = await conn();
    const s2 = await conn();
    const star = await s1.subscribe("orders.*.new");
    const tail = await s2.subscribe("orders.>");
    await pub.publish("orders.7.new", { sku: "x" });
    await pub.publish("orders.7.old", 2);
    const m = await star.next(5000);
    assert.deepEqual([m.topic, m.data], ["orders.7.new", { sku: "x" }]);
    assert.deepEqual([(await tail.next(5000)).topic, (await tail.next(5000)).topic], ["orders.7.new", "orders.7.old"]);
    const q1 = await s1.subscribe("work.>", { queue: "workers" });
    const q2 = await s2.subscribe("work.>", { queue: "workers" });
    for (let i = 0; i < 20; i++) await pub.publish(`work.${i}`, i);
    assert.equal(await pub.publishAcked("work.last", "x"), 1);
    const seen: unknown[] = [];
    const deadline = Date.now() + 5000;
    while (seen.length < 21 && Date.now() < deadline) {
      for (const q of [q1, q2]) while (q.pending) seen.push((await q.next()).data);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(seen.length, 21);
    assert.deepEqual(seen.filter((x) => typeof x === "number").sort((a, b) => (a as number) - (b as number)), [...Array(20).keys()]);
    await star.unsubscribe();
    assert.equal(await pub.publishAcked("orders.1.new"), 1);
  });

  test("for await over a subscription", async () => {
    const md = await conn();
    const sub = await md.subscribe<number>("iter.>");
    for (let i = 0; i < 3; i++) await md.publish(`iter.${i}`, i);
    const got: number[] = [];
    for await (const m of sub) {
      got.push(m.data);
      if (got.length === 3) break;
    }
    assert.deepEqual(got, [0, 1, 2]);
  });

  test("request/reply, no responders, timeout", async () => {
    const server = await conn();
    const client = await conn();
    const sub = await server.subscribe<string>("price.get");
    void (async () => {
      for await (const m of sub) await m.respond({ sku: m.data, price: 3 });
    })();
    assert.deepEqual(await client.request("price.get", "x", { timeoutMs: 5000 }), { sku: "x", price: 3 });
    await assert.rejects(client.request("nobody.home", 1, { timeoutMs: 1000 }), (e) => e instanceof RemoteError && e.code === "no_responders");
    await server.subscribe("slow.op");
    const t0 = Date.now();
    await assert.rejects(client.request("slow.op", 1, { timeoutMs: 300 }), (e) => e instanceof RemoteError && e.code === "timeout");
    assert.ok(Date.now() - t0 < 3000);
  });

  test("call timeout keeps the connection usable", async () => {
    const md = await conn();
    await assert.rejects(
      md.call("bus.send", { to: "nobody-yet", event: "e", wait_ms: 2000 }, { timeoutMs: 200 }),
      (e) => e instanceof CallTimeoutError && /within 200 ms/.test(e.message),
    );
    assert.equal(await md.ping(), "pong");
  });

  test("reconnects and restores endpoint and subscriptions", async () => {
    const r = await new Daemon(home, "recon", "[log]\nfile = false\n").start();
    try {
      const md = await conn({ maxBackoffMs: 200 }, r);
      const other = await conn({ maxBackoffMs: 200 }, r);
      await md.register("survivor");
      const sub = await md.subscribe("after.>");
      await r.stop("SIGKILL");
      assert.equal((await md.nextNotice(5000)).kind, "disconnected");
      await r.start();
      assert.equal(await md.ping({ timeoutMs: 10_000 }), "pong");
      await other.ping({ timeoutMs: 10_000 });
      await other.publish("after.restart", 1);
      assert.equal((await sub.next(5000)).data, 1);
      await other.send("survivor", "hi", null, { waitMs: 2000 });
      assert.equal((await md.nextEvent(5000)).name, "hi");
    } finally {
      await r.stop("SIGKILL");
    }
  });

  test("seed-004 shapes reach a TypeScript endpoint", async () => {
    const md = await conn();
    await md.register("ts-m2");
    const raw = net.createConnection({ path: d.socket });
    await new Promise((r) => raw.once("connect", r));
    raw.write('{"Type":"Register","Payload":{"MachineId":"cs-m1"}}\n');
    raw.write('{"Type":"SendEvent","Payload":{"SourceMachineId":"cs-m1","TargetMachineId":"ts-m2","EventName":"TEST_EVENT","Payload":{"Data":"Hello"}}}\n');
    const ev = await md.nextEvent(5000);
    assert.deepEqual([ev.name, ev.from, ev.data], ["TEST_EVENT", "cs-m1", { Data: "Hello" }]);
    raw.destroy();
  });
});
