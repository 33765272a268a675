"""The broker's shared types: its listeners, its limits and its options.

A leaf module: everything in broker/ may import it, and it imports nothing of the broker's running parts, so the
connection, the core and the run loop share these types without importing each other. Each limit is declared
once, here, with its help text; the command line is derived from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from broker.access import Rules
from node.topics import Layout

WEB_LISTENER = "web"  # the listener that serves the control page beside MQTT over WebSocket
# QoS 1 and 2 publishes one client may have unacknowledged (its MQTT 5 receive maximum); the Mosquitto export
# gives its clients the same window.
MAX_UNACKNOWLEDGED = 256


@dataclass(frozen=True)
class Listeners:
    bind: str
    tls_bind: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    ws_bind: str | None = None
    web_bind: str | None = None  # the control page, and MQTT over WebSocket at /mqtt; with TLS if a certificate

    @property
    def binds(self) -> list[str]:
        return [b for b in (self.bind, self.tls_bind, self.ws_bind, self.web_bind) if b]


def _limit(default: Any, help: str) -> Any:
    """A limit's default and its --help text (the flag is the field's name with dashes)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Limits:
    """0 means no limit."""

    max_connections: int = _limit(100, "logged-in clients; more are refused")
    max_connections_per_user: int = _limit(10, "logged-in clients of one user; more are refused")
    max_pending: int = _limit(128, "connections waiting to log in, an eighth of them from one address")
    connect_timeout: float = _limit(5.0, "seconds a new connection may take to send CONNECT")
    max_message_size: int = _limit(65536, "drop larger publishes, bytes of payload (commands are a few bytes)")
    max_queued: int = _limit(10_000, "messages kept for one client; newer ones are dropped and logged")
    max_queued_bytes: int = _limit(16 * 1024 * 1024, "bytes of messages kept for one client, likewise")
    max_subscriptions: int = _limit(256, "topic filters of one client; more are refused")
    max_sessions_per_user: int = _limit(20, "persistent sessions of one user; more are refused")
    session_expiry: float = _limit(7 * 86400.0, "seconds a persistent session outlives its client's absence, "
                                   "0: forever")
    max_retained_bytes: int = _limit(32 * 1024 * 1024, "bytes of all retained messages, topics included; beyond, "
                                     "new ones are not retained")
    max_keepalive: int = _limit(0, "seconds: an MQTT 5 client asking for a longer keep-alive, or none, is given "
                                "this one (0: no limit)")

    @classmethod
    def flags(cls) -> list[tuple[str, str, Any, str]]:
        """(flag, field, default, help) of every limit, for the command line."""
        return [(f"--{f.name.replace('_', '-')}", f.name, f.default, f.metadata["help"]) for f in fields(cls)]


@dataclass(frozen=True)
class Options:
    listeners: Listeners
    passwd: Path | None = None
    rules: Rules | None = None
    allow_anonymous: bool = False
    data: Path | None = None
    limits: Limits = Limits()
    layout: Layout = Layout()  # the topic prefixes, which the control page needs
