"""Errors of the majordomo client. Each says what went wrong and what to do."""
from __future__ import annotations

from typing import Any, Optional


class MajordomoError(Exception):
    """Base class of every error this package raises."""


class NotRunningError(MajordomoError, ConnectionError):
    """No daemon listens on the instance's socket."""

    def __init__(self, instance: Optional[str], socket: str, reason: str) -> None:
        self.instance = instance
        self.socket = socket
        self.reason = reason
        who = f"no instance '{instance}' is running" if instance else "no majordomo instance is running"
        flag = f" --instance {instance}" if instance and instance != "default" else ""
        super().__init__(f"{who}: socket {socket} {reason}; start it with `majordomo run{flag}`")


class PermissionDeniedError(MajordomoError, PermissionError):
    def __init__(self, socket: str) -> None:
        self.socket = socket
        super().__init__(
            f"permission denied on {socket}: run as the daemon's user or root, "
            "or list your user in [control] allowed_users"
        )


class ConnectionLostError(MajordomoError, ConnectionError):
    """The connection closed before the reply came."""

    def __init__(self, what: str = "the daemon closed the connection before replying") -> None:
        super().__init__(what)


class CallTimeoutError(MajordomoError, TimeoutError):
    """No reply came within the call's timeout."""

    def __init__(self, cmd: str, timeout: float) -> None:
        self.cmd = cmd
        self.timeout = timeout
        super().__init__(
            f"no reply to {cmd!r} within {timeout:g} s; the daemon may be overloaded or stuck "
            "(check `majordomo status`), or pass a longer timeout"
        )


class ProtocolError(MajordomoError):
    """The daemon sent something this client does not understand."""


class RemoteError(MajordomoError):
    """The daemon answered with an error: `code` is machine-readable (`not_found`, `timeout`, ...)."""

    def __init__(self, code: str, message: str, details: Any = None, cmd: Optional[str] = None) -> None:
        self.code = code
        self.message = message
        self.details = details
        self.cmd = cmd
        text = f"{message} ({code})"
        if code == "forbidden" and "token" in message:
            text += "; pass token=... or set MAJORDOMO_TOKEN"
        super().__init__(text)
