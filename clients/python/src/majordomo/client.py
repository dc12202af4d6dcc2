"""The asyncio client: one connection to an instance carrying control commands and the bus."""
from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Deque, Dict, Optional, Union

from ._generated import PROTOCOL, AsyncCommands, Hello
from .discovery import Place, resolve
from .errors import (
    CallTimeoutError,
    ConnectionLostError,
    MajordomoError,
    NotRunningError,
    PermissionDeniedError,
    ProtocolError,
    RemoteError,
)

__all__ = ["Client", "Message", "Event", "Notice", "Subscription", "connect"]

VERSION = "0.1.0"
_LIMIT = 32 * 1024 * 1024  # longest line accepted from the daemon
_HIGH_WATER = 256 * 1024  # drain the socket's write buffer past this


@dataclass
class Message:
    """A message delivered to a subscription. `reply_to` is set when it is a request."""

    sid: int
    topic: str
    data: Any
    reply_to: Optional[str] = None
    _client: Optional["Client"] = field(default=None, repr=False, compare=False)

    async def respond(self, data: Any) -> None:
        """Answers this request (`bus.reply` to its `reply_to`)."""
        if self.reply_to is None or self._client is None:
            raise MajordomoError(f"the message on {self.topic!r} is not a request: it has no reply_to")
        await self._client.reply(self.reply_to, data)


@dataclass
class Event:
    """An event sent to this connection's endpoint (`bus.send`, or seed-004 `SendEvent`)."""

    name: str
    from_: Optional[str]
    data: Any
    ts: str
    target: Optional[str] = None


@dataclass
class Notice:
    """Something the daemon tells this connection: `dropped` messages, `taken_over`, an `error`
    for a fire-and-forget request, and this client's own `disconnected` / `reconnected`."""

    kind: str
    message: str
    count: int = 0
    raw: Dict[str, Any] = field(default_factory=dict)


class Subscription:
    """Messages on a topic pattern: `async for msg in sub`, or `await sub.next(timeout=1)`."""

    def __init__(self, client: "Client", sid: int, pattern: str, queue: Optional[str]) -> None:
        self.sid = sid
        self.pattern = pattern
        self.queue = queue
        self._client = client
        self._q: "asyncio.Queue[Optional[Message]]" = asyncio.Queue()
        self.closed = False

    def _push(self, m: Optional[Message]) -> None:
        self._q.put_nowait(m)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Message:
        m = await self._q.get()
        if m is None:
            raise StopAsyncIteration
        return m

    async def next(self, timeout: Optional[float] = None) -> Message:
        """The next message; `CallTimeoutError` after `timeout` seconds."""
        try:
            m = await asyncio.wait_for(self._q.get(), timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError(f"message on {self.pattern}", timeout or 0) from None
        if m is None:
            raise ConnectionLostError(f"subscription {self.pattern!r} ended")
        return m

    def pending(self) -> int:
        return self._q.qsize()

    async def unsubscribe(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._client._subs.pop(self.sid, None)
        self._push(None)
        if self._client.connected:
            try:
                await self._client.call("bus.unsub", {"sid": self.sid})
            except (ConnectionLostError, RemoteError):
                pass

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.unsubscribe()


async def _open_stream(path: str) -> "tuple[asyncio.StreamReader, asyncio.StreamWriter]":
    if sys.platform == "win32" and path.startswith("\\\\.\\pipe\\"):
        loop = asyncio.get_running_loop()
        create = getattr(loop, "create_pipe_connection", None)
        if create is None:
            raise MajordomoError(
                "named pipes need asyncio's ProactorEventLoop (the default on Windows); "
                "do not switch to the selector event loop"
            )
        reader = asyncio.StreamReader(limit=_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await create(lambda: protocol, path)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer
    open_unix = getattr(asyncio, "open_unix_connection")
    r, w = await open_unix(path, limit=_LIMIT)
    return r, w


def _retryable(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
        return True
    # Windows: ERROR_PIPE_BUSY (231) while every pipe instance is taken.
    return isinstance(e, OSError) and getattr(e, "winerror", None) == 231


class Client(AsyncCommands):
    """A connection to a majordomo instance.

    Use `await Client.connect("name")` (or `majordomo.connect`); every command of the contract is
    a typed coroutine (`status()`, `ps()`, `queue_stats()`, ...) and the bus is here too
    (`register`, `send`, `publish`, `subscribe`, `request`, `reply`, `events`). When the daemon
    goes away the client reconnects with backoff, registers its endpoint again and restores its
    subscriptions; calls made meanwhile wait (within their timeout) for the connection.
    """

    def __init__(
        self,
        place: Place,
        *,
        token: Optional[str] = None,
        timeout: float = 30.0,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        client_name: Optional[str] = None,
    ) -> None:
        self.place = place
        self.timeout = timeout
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.hello_info: Optional[Hello] = None
        self._token = token
        self._client_name = client_name or f"majordomo-python/{VERSION}"
        self._ids = itertools.count(1)
        self._sids = itertools.count(1)
        self._pending: Dict[int, "asyncio.Future[Any]"] = {}
        self._compat: Deque["asyncio.Future[Any]"] = deque()
        self._subs: Dict[int, Subscription] = {}
        self._events: "asyncio.Queue[Event]" = asyncio.Queue()
        self._notices: "asyncio.Queue[Notice]" = asyncio.Queue()
        self._endpoint: Optional[Dict[str, Any]] = None
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._read_task: Optional["asyncio.Task[None]"] = None
        self._reconnect_task: Optional["asyncio.Task[None]"] = None
        self._connected = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._closed = False

    # -- connecting ----------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        instance: Optional[str] = None,
        *,
        home: Optional[str] = None,
        system: Optional[bool] = None,
        socket: Optional[str] = None,
        config: Optional[str] = None,
        token: Optional[str] = None,
        wait: float = 0.0,
        timeout: float = 30.0,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        client_name: Optional[str] = None,
    ) -> "Client":
        """Connects to an instance found with the CLI's rules (see `majordomo.discovery`).

        `wait`: keep retrying this many seconds while the daemon is starting. `timeout`: the
        default per-call timeout. `token`: the instance's `[control] token` (default
        `MAJORDOMO_TOKEN`).
        """
        import os

        place = resolve(instance, home=home, system=system, socket=socket, config=config)
        if token is None:
            token = os.environ.get("MAJORDOMO_TOKEN") or None
        client = cls(
            place, token=token, timeout=timeout, reconnect=reconnect, max_backoff=max_backoff, client_name=client_name
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = 0.01
        while True:
            try:
                await client._open()
                return client
            except (NotRunningError, ConnectionLostError):
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def _open(self) -> None:
        path = self.place.socket
        try:
            reader, writer = await _open_stream(path)
        except PermissionError:
            raise PermissionDeniedError(path) from None
        except OSError as e:
            if _retryable(e):
                reason = "not found" if isinstance(e, FileNotFoundError) else f"refused the connection ({e.strerror or e})"
                raise NotRunningError(self.place.instance, path, reason) from None
            raise MajordomoError(f"connection to {path} failed: {e}") from e
        self._reader, self._writer = reader, writer
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop(reader))
        deadline = min(self.timeout, 10.0)
        try:
            args: Dict[str, Any] = {"protocol": PROTOCOL, "client": self._client_name}
            if self._token:
                args["token"] = self._token
            self.hello_info = await self._call_now("hello", args, deadline)
            if self._endpoint is not None:
                await self._call_now("bus.register", dict(self._endpoint), deadline)
            for sub in list(self._subs.values()):
                a: Dict[str, Any] = {"pattern": sub.pattern, "sid": sub.sid}
                if sub.queue:
                    a["queue"] = sub.queue
                await self._call_now("bus.sub", a, deadline)
        except BaseException:
            writer.close()
            raise
        self._connected.set()

    async def close(self) -> None:
        """Closes the connection; subscriptions and event iterators end."""
        self._closed = True
        self._connected.clear()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._read_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._read_task), 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self._read_task.cancel()
        self._fail_pending(ConnectionLostError("the client was closed"))
        for sub in list(self._subs.values()):
            sub._push(None)
        self._subs.clear()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _fail_pending(self, err: BaseException) -> None:
        for fut in list(self._pending.values()) + list(self._compat):
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._compat.clear()

    async def _reconnect_loop(self) -> None:
        delay = 0.05
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._open()
            except (MajordomoError, OSError):
                delay = min(delay * 2, self.max_backoff)
                continue
            self._notices.put_nowait(Notice("reconnected", f"reconnected to {self.place.socket}"))
            return

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.endswith(b"\n"):
                    line = line[:-1]
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    self._notices.put_nowait(Notice("error", f"unreadable line from the daemon: {line[:200]!r}"))
                    continue
                if isinstance(obj, dict):
                    self._dispatch(obj)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._on_disconnect()

    def _on_disconnect(self) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._fail_pending(ConnectionLostError())
        if self._closed:
            return
        if was:
            self._notices.put_nowait(Notice("disconnected", f"lost the connection to {self.place.socket}"))
        if self.reconnect and was:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())
        elif not self.reconnect:
            for sub in list(self._subs.values()):
                sub._push(None)

    def _dispatch(self, obj: Dict[str, Any]) -> None:
        msg = obj.get("msg")
        if isinstance(msg, dict):
            sub = self._subs.get(msg.get("sid", -1))
            if sub is not None:
                sub._push(Message(msg["sid"], msg.get("topic", ""), msg.get("data"), msg.get("reply_to"), self))
            return
        ev = obj.get("event")
        if isinstance(ev, dict):
            self._events.put_nowait(Event(ev.get("name", ""), ev.get("from"), ev.get("data"), ev.get("ts", "")))
            return
        notice = obj.get("notice")
        if isinstance(notice, dict):
            self._notices.put_nowait(
                Notice(str(notice.get("kind", "")), str(notice.get("message", "")), int(notice.get("count", 0) or 0), notice)
            )
            return
        if "Type" in obj and "Payload" in obj:
            p = obj.get("Payload") or {}
            if obj["Type"] == "SendEvent":
                self._events.put_nowait(
                    Event(p.get("EventName", ""), p.get("SourceMachineId"), p.get("Payload"), p.get("Timestamp", ""), p.get("TargetMachineId"))
                )
            else:
                self._notices.put_nowait(Notice("error", f"{p.get('Message', '')} ({p.get('Code', obj['Type'])})", raw=obj))
            return
        if "ok" in obj or "error" in obj:
            rid = obj.get("id")
            fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
            if fut is None:
                err = obj.get("error")
                if isinstance(err, dict):
                    self._notices.put_nowait(Notice("error", f"{err.get('message', '')} ({err.get('code', '')})", raw=obj))
                return
            if fut.done():
                return
            if "error" in obj:
                e = obj["error"] or {}
                fut.set_exception(RemoteError(str(e.get("code", "other")), str(e.get("message", "")), e.get("details")))
            else:
                fut.set_result(obj["ok"])
            return
        # A seed-001 reply: flat, without an id.
        if self._compat:
            fut = self._compat.popleft()
            if not fut.done():
                fut.set_result(obj)

    # -- writing and calling -------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        w = self._writer
        if w is None or w.is_closing():
            raise ConnectionLostError(f"not connected to {self.place.socket}")
        w.write(data)
        t = w.transport
        if t is not None and t.get_write_buffer_size() > _HIGH_WATER:
            async with self._drain_lock:
                await w.drain()

    async def _wait_connected(self, what: str, timeout: float) -> None:
        if self._connected.is_set():
            return
        if self._closed:
            raise ConnectionLostError("the client is closed")
        if not self.reconnect:
            raise ConnectionLostError(f"not connected to {self.place.socket} (reconnect is off)")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except asyncio.TimeoutError:
            raise NotRunningError(
                self.place.instance, self.place.socket, f"did not come back within {timeout:g} s ({what})"
            ) from None

    async def _call_now(self, cmd: str, args: Optional[Dict[str, Any]], timeout: float, shown: Optional[float] = None) -> Any:
        rid = next(self._ids)
        req: Dict[str, Any] = {"id": rid, "cmd": cmd}
        if args:
            req.update(args)
        fut: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError(cmd, timeout if shown is None else shown) from None
        except RemoteError as e:
            e.cmd = cmd
            raise
        finally:
            self._pending.pop(rid, None)

    async def call(self, cmd: str, args: Optional[Dict[str, Any]] = None, *, timeout: Optional[float] = None) -> Any:
        """Sends any command with its arguments; returns the reply's `ok` value or raises `RemoteError`."""
        t = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._wait_connected(cmd, t)
        return await self._call_now(cmd, args, max(0.001, t - (loop.time() - start)), t)

    async def call_compat(self, command: str, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Sends a seed-001 command (`{"command": "get_status"}`) and returns its flat reply."""
        t = self.timeout if timeout is None else timeout
        await self._wait_connected(command, t)
        fut: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        self._compat.append(fut)
        await self._write(json.dumps({"command": command}).encode() + b"\n")
        try:
            r = await asyncio.wait_for(fut, t)
        except asyncio.TimeoutError:
            raise CallTimeoutError(command, t) from None
        if not isinstance(r, dict):
            raise ProtocolError(f"unexpected reply to {command!r}: {r!r}")
        return r

    # -- the bus -------------------------------------------------------------------------------

    async def register(self, endpoint: str, *, takeover: bool = False, token: Optional[str] = None) -> None:
        """Registers this connection as `endpoint`; events sent to it arrive on `events()`.
        Registered again automatically after a reconnect."""
        args: Dict[str, Any] = {"endpoint": endpoint}
        if takeover:
            args["takeover"] = True
        if token is not None:
            args["token"] = token
        await self.call("bus.register", args)
        self._endpoint = args

    async def unregister(self) -> None:
        self._endpoint = None
        await self.call("bus.unregister", {})

    async def send(self, to: str, event: str, data: Any = None, *, wait: Optional[float] = None) -> None:
        """Sends an event to an endpoint; `RemoteError(code="not_found")` if it is not registered
        (with `wait`, waits up to that many seconds for it to register)."""
        args: Dict[str, Any] = {"to": to, "event": event, "data": data}
        timeout = None
        if wait is not None:
            args["wait_ms"] = int(wait * 1000)
            timeout = self.timeout + wait
        await self.call("bus.send", args, timeout=timeout)

    async def publish(self, topic: str, data: Any = None) -> None:
        """Publishes without waiting for an acknowledgement (errors arrive on `notices()`)."""
        if not self._connected.is_set():
            await self._wait_connected("bus.pub", self.timeout)
        line = '{"cmd":"bus.pub","topic":%s,"data":%s}\n' % (json.dumps(topic), json.dumps(data, separators=(",", ":")))
        await self._write(line.encode())

    async def publish_acked(self, topic: str, data: Any = None) -> Union[int, bool]:
        """Publishes and returns how many subscribers got it."""
        r = await self.call("bus.pub", {"topic": topic, "data": data})
        d: Union[int, bool] = r.get("delivered", 0)
        return d

    async def subscribe(self, pattern: str, *, queue: Optional[str] = None) -> Subscription:
        """Subscribes to a pattern (`*` one token, final `>` the rest); with `queue`, joins that
        queue group (each message goes to one member). Restored after a reconnect."""
        sid = next(self._sids)
        sub = Subscription(self, sid, pattern, queue)
        self._subs[sid] = sub
        args: Dict[str, Any] = {"pattern": pattern, "sid": sid}
        if queue is not None:
            args["queue"] = queue
        try:
            await self.call("bus.sub", args)
        except BaseException:
            self._subs.pop(sid, None)
            raise
        return sub

    async def request(self, topic: str, data: Any = None, *, timeout: float = 10.0) -> Any:
        """Sends a request to one subscriber of `topic` and returns its reply.
        `RemoteError` with code `no_responders` (nobody subscribed) or `timeout`."""
        args = {"topic": topic, "data": data, "timeout_ms": max(1, int(timeout * 1000))}
        try:
            return await self.call("bus.request", args, timeout=timeout + 2.0)
        except CallTimeoutError:
            raise RemoteError("timeout", f"no reply on {topic!r} within {timeout:g} s", cmd="bus.request") from None

    async def reply(self, reply_to: str, data: Any = None) -> None:
        """Answers a request (a `Message` with `reply_to`)."""
        line = '{"cmd":"bus.reply","to":%s,"data":%s}\n' % (json.dumps(reply_to), json.dumps(data, separators=(",", ":")))
        await self._write(line.encode())

    async def next_event(self, timeout: Optional[float] = None) -> Event:
        """The next event sent to this endpoint; `CallTimeoutError` after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError("event", timeout or 0) from None

    async def events(self) -> AsyncIterator[Event]:
        """Events sent to this endpoint, as they come: `async for ev in client.events()`."""
        while not self._closed:
            yield await self._events.get()

    async def next_notice(self, timeout: Optional[float] = None) -> Notice:
        try:
            return await asyncio.wait_for(self._notices.get(), timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError("notice", timeout or 0) from None

    async def notices(self) -> AsyncIterator[Notice]:
        while not self._closed:
            yield await self._notices.get()

    async def flush(self) -> None:
        """Waits until everything written has been handed to the socket."""
        if self._writer is not None:
            async with self._drain_lock:
                await self._writer.drain()


async def connect(instance: Optional[str] = None, **kwargs: Any) -> Client:
    """`await majordomo.connect("name", home=..., token=..., wait=5)`: see `Client.connect`."""
    return await Client.connect(instance, **kwargs)
