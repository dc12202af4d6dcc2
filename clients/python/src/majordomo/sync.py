"""A blocking wrapper around the asyncio client, for scripts and code without an event loop.

    from majordomo.sync import connect
    with connect("default") as md:
        print(md.status()["uptime_s"])
        md.publish("orders.7.new", {"sku": "x"})

It runs the asyncio client on a private event loop in a background thread. Every command of
the contract is a typed method, like on the asyncio client.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Dict, Iterator, Optional, TypeVar, Union

from ._generated import SyncCommands
from .client import Client as AsyncClient
from .client import Event, Message, Notice
from .client import Subscription as AsyncSubscription
from .errors import CallTimeoutError, ConnectionLostError

T = TypeVar("T")

__all__ = ["Client", "Subscription", "connect"]


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="majordomo-client", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        async def wrap() -> T:
            return await coro

        fut = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2.0)
        if not self.thread.is_alive():
            self.loop.close()


class Subscription:
    """Blocking view of a subscription: `for msg in sub` or `sub.next(timeout=1)`."""

    def __init__(self, owner: "Client", inner: AsyncSubscription) -> None:
        self._owner = owner
        self._inner = inner
        self.sid = inner.sid
        self.pattern = inner.pattern

    def next(self, timeout: Optional[float] = None) -> Message:
        return self._owner._loop.run(self._inner.next(timeout))

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.next()
            except ConnectionLostError:
                return

    def unsubscribe(self) -> None:
        self._owner._loop.run(self._inner.unsubscribe())

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unsubscribe()


class Client(SyncCommands):
    """Blocking client: same constructor arguments as `majordomo.Client.connect`."""

    def __init__(self, instance: Optional[str] = None, **kwargs: Any) -> None:
        self._loop = _Loop()
        try:
            self._a: AsyncClient = self._loop.run(AsyncClient.connect(instance, **kwargs))
        except BaseException:
            self._loop.stop()
            raise

    @property
    def inner(self) -> AsyncClient:
        """The asyncio client underneath."""
        return self._a

    def call(self, cmd: str, args: Optional[Dict[str, Any]] = None, *, timeout: Optional[float] = None) -> Any:
        return self._loop.run(self._a.call(cmd, args, timeout=timeout))

    def close(self) -> None:
        try:
            self._loop.run(self._a.close(), 5.0)
        finally:
            self._loop.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # the bus
    def register(self, endpoint: str, *, takeover: bool = False, token: Optional[str] = None) -> None:
        self._loop.run(self._a.register(endpoint, takeover=takeover, token=token))

    def send(self, to: str, event: str, data: Any = None, *, wait: Optional[float] = None) -> None:
        self._loop.run(self._a.send(to, event, data, wait=wait))

    def publish(self, topic: str, data: Any = None) -> None:
        self._loop.run(self._a.publish(topic, data))

    def publish_acked(self, topic: str, data: Any = None) -> Union[int, bool]:
        return self._loop.run(self._a.publish_acked(topic, data))

    def subscribe(self, pattern: str, *, queue: Optional[str] = None) -> Subscription:
        return Subscription(self, self._loop.run(self._a.subscribe(pattern, queue=queue)))

    def request(self, topic: str, data: Any = None, *, timeout: float = 10.0) -> Any:
        return self._loop.run(self._a.request(topic, data, timeout=timeout))

    def reply(self, reply_to: str, data: Any = None) -> None:
        self._loop.run(self._a.reply(reply_to, data))

    def next_event(self, timeout: Optional[float] = None) -> Event:
        return self._loop.run(self._a.next_event(timeout))

    def next_notice(self, timeout: Optional[float] = None) -> Notice:
        return self._loop.run(self._a.next_notice(timeout))

    def flush(self) -> None:
        self._loop.run(self._a.flush())


def connect(instance: Optional[str] = None, **kwargs: Any) -> Client:
    """`majordomo.sync.connect("name", home=..., wait=5)`: a blocking client."""
    return Client(instance, **kwargs)


_ = CallTimeoutError  # re-exported for `except majordomo.sync.CallTimeoutError`
