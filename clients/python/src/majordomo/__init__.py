"""majordomo: the Python client of a majordomo instance (control commands and the message bus).

    import asyncio, majordomo

    async def main():
        async with await majordomo.connect("default") as md:
            print((await md.status())["uptime_s"])

    asyncio.run(main())

`majordomo.sync` is the blocking form, `majordomo.ipc` the seed-001-shaped helpers.
"""
from . import _generated as types
from ._generated import COMMANDS, PROTOCOL
from .client import VERSION, Client, Event, Message, Notice, Subscription, connect
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
from .ipc import AsyncIPCClient, IPCClient, ServiceStatus

__version__ = VERSION

__all__ = [
    "COMMANDS",
    "PROTOCOL",
    "AsyncIPCClient",
    "CallTimeoutError",
    "Client",
    "ConnectionLostError",
    "Event",
    "IPCClient",
    "MajordomoError",
    "Message",
    "NotRunningError",
    "Notice",
    "PermissionDeniedError",
    "Place",
    "ProtocolError",
    "RemoteError",
    "ServiceStatus",
    "Subscription",
    "connect",
    "resolve",
    "types",
]
