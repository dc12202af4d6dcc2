// The host-channel helper, through a stand-in for QEMU's chardev socket: it accepts the host's
// connection at once, leaves garbage on the line, stays silent while the "guest" boots, then
// relays to a real daemon (what the guest's second virtio-serial port carries).
import assert from "node:assert/strict";
import * as net from "node:net";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import { connectGuest, guestMetrics } from "../src/index.js";
import { Daemon, skipWithoutDaemon, tempHome } from "./helpers.js";

const skip = skipWithoutDaemon();

describe("guest host channel", { skip }, () => {
  const home = tempHome("md-ts-guest-");
  let d: Daemon;
  let chardev: net.Server;
  const chardevPath = path.join(home, "vm1-majordomo.sock");
  let bootMs = 700;
  const hosts: net.Socket[] = [];

  before(async () => {
    d = await new Daemon(home, "guest", '[log]\nfile = false\n[monitor]\ninterval = "1s"\n').start();
    chardev = net.createServer((host) => {
      host.write("\xff\xffgarbage from an earlier session\n{\"id\":1,\"ok\":\"stale\"}\n");
      let relay: net.Socket | null = null;
      host.on("data", (b) => {
        if (relay) relay.write(b);
      });
      host.on("error", () => undefined);
      setTimeout(() => {
        // The guest agent is up: from now on, bytes flow both ways. What the host sent before is lost, as on a real port.
        relay = net.createConnection({ path: d.socket });
        relay.pipe(host);
        relay.on("error", () => host.destroy());
        host.on("close", () => relay?.destroy());
      }, bootMs).unref();
      hosts.push(host);
    });
    await new Promise<void>((r) => chardev.listen(chardevPath, r));
  });
  after(async () => {
    for (const h of hosts) h.destroy();
    chardev.close();
    await d.stop();
  });

  test("waits for the guest, skips garbage, then speaks the whole protocol", async () => {
    const t0 = Date.now();
    const g = await connectGuest(chardevPath, { waitMs: 10_000, helloRetryMs: 200 });
    try {
      assert.ok(Date.now() - t0 >= bootMs - 50, "connected before the guest was up");
      assert.equal(g.helloInfo?.instance, "guest");
      assert.equal((await g.status()).instance, "guest");
      const sub = await g.subscribe("vm.>");
      await g.publish("vm.hello", 1);
      assert.equal((await sub.next(5000)).data, 1);
      const metrics = await guestMetrics(g);
      assert.equal(metrics.pattern, "$sys.metrics");
    } finally {
      await g.close();
    }
  });

  test("gives up with a clear error when no guest answers", async () => {
    bootMs = 60_000;
    await assert.rejects(connectGuest(chardevPath, { waitMs: 600, helloRetryMs: 200 }), /no reply to 'hello'/);
    bootMs = 700;
  });
});
