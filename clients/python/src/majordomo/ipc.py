"""Seed-001-shaped helpers: a drop-in for an asyncio service IPC client.

    from majordomo.ipc import AsyncIPCClient

    async def check_service():
        client = AsyncIPCClient("default")
        if await client.connect():
            status = await client.get_status()
            print(f"Service status: {status.status}")
            print(f"Queue size: {status.pending_count}")
            await client.disconnect()

`get_status`, `get_config`, `ping`, `stop` (stops the daemon) and `restart` (restarts its
subsystems) use the daemon's seed-001 commands (`{"command": "get_status"}`); `pending_count`
comes from the pipelines' queues (`queue.stats`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .client import Client
from .errors import MajordomoError, RemoteError

__all__ = ["AsyncIPCClient", "IPCClient", "ServiceStatus"]


@dataclass
class ServiceStatus:
    """The service's status, as `get_status()` returns it."""

    status: str
    instance_id: str = ""
    pid: int = 0
    version: str = ""
    uptime_s: int = 0
    config_generation: int = 0
    subsystems: Dict[str, Any] = field(default_factory=dict)
    pending_count: int = 0
    errors: List[str] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == "Running"


class AsyncIPCClient:
    """Connects to instance `instance_id` (same discovery as the CLI; keyword arguments go to
    `majordomo.Client.connect`: `home=`, `socket=`, `token=`, `timeout=`)."""

    def __init__(self, instance_id: str = "default", **connect_args: Any) -> None:
        self.instance_id = instance_id
        self.connect_args = connect_args
        self.client: Optional[Client] = None
        self.last_error: Optional[str] = None

    async def connect(self, timeout: float = 5.0) -> bool:
        """True when connected; False (with `last_error` saying why) when the service is not running."""
        args = dict(self.connect_args)
        args.setdefault("timeout", timeout)
        args.setdefault("reconnect", False)
        try:
            self.client = await Client.connect(self.instance_id, **args)
        except (MajordomoError, OSError, ValueError) as e:
            self.last_error = str(e)
            return False
        return True

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def _c(self) -> Client:
        if self.client is None:
            raise MajordomoError("not connected: call `await client.connect()` first")
        return self.client

    async def disconnect(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def __aenter__(self) -> "AsyncIPCClient":
        if not await self.connect():
            raise MajordomoError(self.last_error or "cannot connect")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.disconnect()

    async def get_status(self) -> ServiceStatus:
        c = self._c()
        r = await c.call_compat("get_status")
        pending = 0
        try:
            stats = await c.queue_stats()
            for p in stats.get("pipelines", []):
                counts = p["counts"]
                pending += counts["input"] + counts["queued"] + counts["processing"] + counts["error"]
        except RemoteError:
            pass  # no pipeline subsystem in this daemon
        return ServiceStatus(
            status=str(r.get("status", "unknown")),
            instance_id=str(r.get("instance_id", "")),
            pid=int(r.get("pid", 0) or 0),
            version=str(r.get("version", "")),
            uptime_s=int(r.get("uptime_s", 0) or 0),
            config_generation=int(r.get("config_generation", 0) or 0),
            subsystems=dict(r.get("subsystems") or {}),
            pending_count=pending,
            errors=list(r.get("errors") or []),
            raw=r,
        )

    async def get_config(self) -> Dict[str, Any]:
        """The effective configuration (secrets redacted)."""
        return await self._c().call_compat("get_config")

    async def ping(self) -> bool:
        try:
            return (await self._c().call_compat("ping")).get("status") == "pong"
        except MajordomoError:
            return False

    async def stop(self) -> bool:
        """Asks the daemon to stop (it drains first). True when it accepted."""
        r = await self._c().call_compat("stop")
        return r.get("status") == "stopping"

    async def restart(self) -> Dict[str, Any]:
        """Restarts the daemon's subsystems with a freshly read config: `{"status": "restarted", "restarted": [...]}`
        or `{"status": "error", "errors": [...]}`."""
        return await self._c().call_compat("restart")


class IPCClient:
    """The blocking form of `AsyncIPCClient`."""

    def __init__(self, instance_id: str = "default", **connect_args: Any) -> None:
        from .sync import _Loop

        self._loop = _Loop()
        self._a = AsyncIPCClient(instance_id, **connect_args)

    def connect(self, timeout: float = 5.0) -> bool:
        return self._loop.run(self._a.connect(timeout))

    @property
    def last_error(self) -> Optional[str]:
        return self._a.last_error

    def disconnect(self) -> None:
        self._loop.run(self._a.disconnect())
        self._loop.stop()

    def get_status(self) -> ServiceStatus:
        return self._loop.run(self._a.get_status())

    def get_config(self) -> Dict[str, Any]:
        return self._loop.run(self._a.get_config())

    def ping(self) -> bool:
        return self._loop.run(self._a.ping())

    def stop(self) -> bool:
        return self._loop.run(self._a.stop())

    def restart(self) -> Dict[str, Any]:
        return self._loop.run(self._a.restart())
