"""Against a real daemon: control commands, the bus, errors, reconnect, sync and seed-001 helpers."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, Awaitable, List, TypeVar

import pytest

import majordomo
from majordomo import Client, RemoteError
from majordomo.ipc import AsyncIPCClient, IPCClient

from conftest import Daemon, Spawner

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(wrap())


async def connect(d: Daemon, **kw: Any) -> Client:
    return await majordomo.connect(d.instance, home=d.home, wait=5, timeout=10, **kw)


def test_control_commands(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as md:
            assert md.hello_info is not None and md.hello_info["protocol"] == majordomo.PROTOCOL
            st = await md.status()
            assert st["instance"] == "default" and st["mode"] == "home"
            assert st["socket"] == daemon.socket
            assert await md.ping() == "pong"
            cfg = await md.config()
            assert isinstance(cfg, dict) and "control" in cfg
            out = await md.reload()
            assert out["ok"] is True
            ps = await md.ps()
            assert [p["name"] for p in ps["programs"]] == ["sleeper"]
            await md.stop(name="sleeper")
            rows = (await md.ps(name="sleeper"))["programs"]
            assert rows[0]["state"] in ("stopping", "stopped")
            await md.start(names=["sleeper"])
            await md.restart(name="sleeper")
            for _ in range(100):
                row = (await md.ps(name="sleeper"))["programs"][0]
                if row["state"] in ("running", "ready") and row.get("pid"):
                    break
                await asyncio.sleep(0.05)
            sig = await md.signal("sleeper", "CONT")
            assert sig["name"] == "sleeper"
            assert "active" in await md.alerts()
            m = await md.metrics()
            assert isinstance(m, dict)
            rep = await md.report()
            assert rep["instance"] == "default"
            d = await md.notify_test("logn")
            assert d["notifier"] == "logn"
            log = await md.notify_log(limit=5)
            assert "counts" in log
            bl = await md.bus_ls()
            assert "counters" in bl
            try:
                qs = await md.queue_stats()
                assert "pipelines" in qs
                assert "items" in await md.queue_ls(limit=3)
            except RemoteError as e:
                assert e.code in ("unknown_command", "not_found")
            with pytest.raises(RemoteError) as ei:
                await md.signal("nope", "HUP")
            assert ei.value.code in ("not_found", "bad_request")
            with pytest.raises(RemoteError) as ei:
                await md.call("no.such.command")
            assert ei.value.code == "unknown_command"

    run(go())


def test_not_running_error_says_what_to_do(home: str) -> None:
    async def go() -> None:
        with pytest.raises(majordomo.NotRunningError) as ei:
            await majordomo.connect("ghost", home=home)
        msg = str(ei.value)
        assert "no instance 'ghost' is running" in msg
        assert os.path.join(home, "ghost", "majordomo.sock") in msg and "not found" in msg
        assert "majordomo run --instance ghost" in msg

    run(go())


def test_token_hello(spawn: Spawner) -> None:
    d = spawn("tok", config='[log]\nfile = false\n[control]\ntoken = "s3cret"\n')

    async def go() -> None:
        async with await connect(d, token="s3cret") as md:
            assert await md.ping() == "pong"
        with pytest.raises(RemoteError) as ei:
            await connect(d, token="wrong")
        assert ei.value.code == "forbidden"
        with pytest.raises(RemoteError) as ei:
            async with await connect(d) as md:
                await md.ping()
        assert ei.value.code == "forbidden" and "MAJORDOMO_TOKEN" in str(ei.value)

    run(go())


def test_events_between_endpoints(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as a, await connect(daemon) as b:
            await a.register("py-a")
            await b.register("py-b")
            await a.send("py-b", "job.done", {"n": 1})
            ev = await b.next_event(timeout=5)
            assert (ev.name, ev.from_, ev.data) == ("job.done", "py-a", {"n": 1})
            with pytest.raises(RemoteError) as ei:
                await a.send("nobody", "x")
            assert ei.value.code == "not_found"
            with pytest.raises(RemoteError) as ei:
                async with await connect(daemon) as c:
                    await c.register("py-a")
            assert ei.value.code == "conflict"

    run(go())


def test_publish_subscribe_wildcards_and_queue_groups(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as pub, await connect(daemon) as s1, await connect(daemon) as s2:
            star = await s1.subscribe("orders.*.new")
            tail = await s2.subscribe("orders.>")
            await pub.publish("orders.7.new", {"sku": "x"})
            await pub.publish("orders.7.old", 2)
            m = await star.next(timeout=5)
            assert (m.topic, m.data) == ("orders.7.new", {"sku": "x"})
            got = [(await tail.next(timeout=5)).topic for _ in range(2)]
            assert got == ["orders.7.new", "orders.7.old"]
            assert star.pending() == 0
            q1 = await s1.subscribe("work.>", queue="workers")
            q2 = await s2.subscribe("work.>", queue="workers")
            n = 20
            for i in range(n):
                await pub.publish(f"work.{i}", i)
            assert await pub.publish_acked("work.last", "x") == 1
            seen: List[Any] = []
            deadline = time.monotonic() + 5
            while len(seen) < n + 1 and time.monotonic() < deadline:
                for q in (q1, q2):
                    while q.pending():
                        seen.append((await q.next()).data)
                await asyncio.sleep(0.01)
            assert sorted(x for x in seen if isinstance(x, int)) == list(range(n))
            assert len(seen) == n + 1
            await star.unsubscribe()
            assert await pub.publish_acked("orders.1.new") == 1  # only `orders.>` is left

    run(go())


def test_async_iteration_of_a_subscription(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as md:
            async with await md.subscribe("iter.>") as sub:
                for i in range(3):
                    await md.publish(f"iter.{i}", i)
                got = []
                async for m in sub:
                    got.append(m.data)
                    if len(got) == 3:
                        break
                assert got == [0, 1, 2]

    run(go())


def test_request_reply(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as server, await connect(daemon) as client:
            sub = await server.subscribe("price.get")

            async def serve() -> None:
                async for m in sub:
                    await m.respond({"sku": m.data, "price": 3})

            task = asyncio.ensure_future(serve())
            assert await client.request("price.get", "x", timeout=5) == {"sku": "x", "price": 3}
            with pytest.raises(RemoteError) as ei:
                await client.request("nobody.home", 1, timeout=1)
            assert ei.value.code == "no_responders"
            silent = await server.subscribe("slow.op")
            t0 = time.monotonic()
            with pytest.raises(RemoteError) as ei:
                await client.request("slow.op", 1, timeout=0.3)
            assert ei.value.code == "timeout" and time.monotonic() - t0 < 3
            assert silent.pending() == 1
            task.cancel()

    run(go())


def test_call_timeout(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as md:
            with pytest.raises(majordomo.CallTimeoutError) as ei:
                await md.call("bus.send", {"to": "nobody-yet", "event": "e", "wait_ms": 2000}, timeout=0.2)
            assert "within 0.2 s" in str(ei.value)
            assert await md.ping() == "pong"  # the connection is still usable

    run(go())


def test_reconnects_and_restores_subscriptions(spawn: Spawner) -> None:
    d = spawn("recon", config="[log]\nfile = false\n")

    async def go() -> None:
        async with await connect(d, max_backoff=0.2) as md, await connect(d, max_backoff=0.2) as other:
            await md.register("survivor")
            sub = await md.subscribe("after.>")
            d.stop(signal.SIGKILL)
            notice = await md.next_notice(timeout=5)
            assert notice.kind == "disconnected"
            d.start()
            assert await md.ping(timeout=10) == "pong"  # waits for the reconnection
            await other.ping(timeout=10)
            await other.publish("after.restart", 1)
            assert (await sub.next(timeout=5)).data == 1
            await other.send("survivor", "hi", wait=2)
            assert (await md.next_event(timeout=5)).name == "hi"

    run(go())


def test_sync_client(daemon: Daemon) -> None:
    with majordomo.sync.connect(daemon.instance, home=daemon.home, wait=5) as md:
        assert md.ping() == "pong"
        assert md.status()["pid"] > 0
        with md.subscribe("sync.*") as sub:
            md.publish("sync.a", [1, 2])
            assert sub.next(timeout=5).data == [1, 2]
        md.register("sync-ep")
        md.send("sync-ep", "self", None)
        assert md.next_event(timeout=5).name == "self"


def test_seed_001_helpers(daemon: Daemon, spawn: Spawner) -> None:
    async def go() -> None:
        c = AsyncIPCClient(daemon.instance, home=daemon.home)
        assert await c.connect()
        st = await c.get_status()
        assert st.status == "Running" and st.running and st.instance_id == "default"
        assert st.pending_count == 0
        assert "control" in await c.get_config()
        assert await c.ping()
        r = await c.restart()
        assert r["status"] == "restarted"
        await c.disconnect()
        missing = AsyncIPCClient("nobody", home=daemon.home)
        assert not await missing.connect()
        assert missing.last_error is not None and "no instance 'nobody' is running" in missing.last_error

    run(go())
    d = spawn("tostop", config="[log]\nfile = false\n")
    c = IPCClient(d.instance, home=d.home)
    assert c.connect() and c.ping()
    assert c.stop()
    c.disconnect()
    assert d.proc is not None and d.proc.wait(10) == 0


def test_seed_004_shapes_reach_a_python_endpoint(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon) as py:
            await py.register("py-m2")
            reader, writer = await asyncio.open_unix_connection(daemon.socket)
            writer.write(b'{"Type":"Register","Payload":{"MachineId":"cs-m1"}}\n')
            writer.write(b'{"Type":"SendEvent","Payload":{"SourceMachineId":"cs-m1","TargetMachineId":"py-m2","EventName":"TEST_EVENT","Payload":{"Data":"Hello"}}}\n')
            await writer.drain()
            ev = await py.next_event(timeout=5)
            assert (ev.name, ev.from_, ev.data) == ("TEST_EVENT", "cs-m1", {"Data": "Hello"})
            writer.close()

    run(go())

