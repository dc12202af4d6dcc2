// Request/reply round trip and 1->1 publish throughput of the TypeScript client against a running
// daemon. Prints one JSON line. Used by scripts/client-bench.sh:
//   node build/bench/bench.js --socket /path/to/majordomo.sock --rtt 2000 --n 100000
import { connect } from "../src/index.js";

const PAYLOAD = "x".repeat(62); // 64 bytes of JSON with its quotes

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

async function rtt(socket: string, n: number): Promise<number[]> {
  const server = await connect({ socket, waitMs: 5000 });
  const client = await connect({ socket, waitMs: 5000 });
  const sub = await server.subscribe("bench.ts.rtt");
  void (async () => {
    for await (const m of sub) if (m.replyTo) await server.reply(m.replyTo, m.data);
  })();
  const samples: number[] = [];
  for (let i = 0; i < n + Math.floor(n / 10); i++) {
    const t = process.hrtime.bigint();
    await client.request("bench.ts.rtt", PAYLOAD, { timeoutMs: 10_000 });
    if (i >= Math.floor(n / 10)) samples.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  await server.close();
  await client.close();
  return samples.sort((a, b) => a - b);
}

async function throughput(socket: string, n: number): Promise<number> {
  const subClient = await connect({ socket, waitMs: 5000 });
  const pub = await connect({ socket, waitMs: 5000 });
  const sub = await subClient.subscribe("bench.ts.pub");
  const done = (async () => {
    let seen = 0;
    for await (const _ of sub) if (++seen === n) return process.hrtime.bigint();
    throw new Error(`the subscriber got ${seen} of ${n}`);
  })();
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await pub.publish("bench.ts.pub", PAYLOAD);
  const end = await done;
  await pub.close();
  await subClient.close();
  return n / (Number(end - start) / 1e9);
}

const socket = arg("socket", "");
const s = await rtt(socket, Number(arg("rtt", "2000")));
const pct = (p: number) => s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))];
const rate = await throughput(socket, Number(arg("n", "100000")));
console.log(JSON.stringify({ client: "typescript", rtt_p50_us: +pct(50).toFixed(1), rtt_p99_us: +pct(99).toFixed(1), pub_msgs_per_s: Math.round(rate) }));
