"""Request/reply round trip and 1->1 publish throughput of the Python client against a running
daemon. Prints one JSON line. Used by scripts/client-bench.sh.

    python3 bench/bench.py --socket /path/to/majordomo.sock --rtt 2000 --n 100000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import majordomo  # noqa: E402

PAYLOAD = "x" * 62  # 64 bytes of JSON with its quotes


async def rtt(socket: str, n: int) -> "list[float]":
    server = await majordomo.connect(socket=socket, wait=5)
    client = await majordomo.connect(socket=socket, wait=5)
    sub = await server.subscribe("bench.py.rtt")

    async def serve() -> None:
        async for m in sub:
            if m.reply_to:
                await server.reply(m.reply_to, m.data)

    task = asyncio.ensure_future(serve())
    samples = []
    for i in range(n + n // 10):
        t = time.perf_counter()
        await client.request("bench.py.rtt", PAYLOAD, timeout=10)
        if i >= n // 10:
            samples.append(time.perf_counter() - t)
    task.cancel()
    await server.close()
    await client.close()
    samples.sort()
    return samples


async def throughput(socket: str, n: int) -> float:
    sub_client = await majordomo.connect(socket=socket, wait=5)
    pub = await majordomo.connect(socket=socket, wait=5)
    sub = await sub_client.subscribe("bench.py.pub")
    done = asyncio.get_running_loop().create_future()

    async def count() -> None:
        seen = 0
        async for _ in sub:
            seen += 1
            if seen == n:
                done.set_result(time.perf_counter())
                return

    task = asyncio.ensure_future(count())
    start = time.perf_counter()
    for _ in range(n):
        await pub.publish("bench.py.pub", PAYLOAD)
    await pub.flush()
    end = await asyncio.wait_for(done, 120)
    task.cancel()
    await pub.close()
    await sub_client.close()
    return n / (end - start)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--rtt", type=int, default=2000)
    ap.add_argument("--n", type=int, default=100000)
    a = ap.parse_args()
    s = await rtt(a.socket, a.rtt)
    pct = lambda p: s[min(len(s) - 1, int(len(s) * p / 100))] * 1e6  # noqa: E731
    rate = await throughput(a.socket, a.n)
    print(json.dumps({"client": "python", "rtt_p50_us": round(pct(50), 1), "rtt_p99_us": round(pct(99), 1), "pub_msgs_per_s": round(rate)}))


if __name__ == "__main__":
    asyncio.run(main())
