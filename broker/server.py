"""The embedded broker: its amqtt configuration from the command line, run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from broker import passwords
from broker.access import Rules

log = logging.getLogger("edison-broker")

DATA_FILE = "broker.sqlite3"


class SetupError(Exception):
    """The options cannot make a safe broker; the message says why."""


@dataclass(frozen=True)
class Listeners:
    bind: str
    tls_bind: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    ws_bind: str | None = None

    @property
    def binds(self) -> list[str]:
        return [b for b in (self.bind, self.tls_bind, self.ws_bind) if b]


@dataclass(frozen=True)
class Limits:
    """0 means no limit."""

    max_connections: int = 100  # logged-in clients
    max_pending: int = 64  # connections not yet logged in (a quarter of them from one address)
    connect_timeout: float = 5.0  # seconds from accept to CONNECT
    max_message_size: int = 65536  # bytes of payload; commands are a few bytes
    max_queued: int = 10_000  # messages kept for one client


@dataclass(frozen=True)
class Options:
    listeners: Listeners
    passwd: Path | None = None
    rules: Rules | None = None
    allow_anonymous: bool = False
    data: Path | None = None
    limits: Limits = Limits()


def is_loopback(bind: str) -> bool:
    host = bind.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(o: Options) -> None:
    if o.allow_anonymous:
        exposed = [b for b in o.listeners.binds if not is_loopback(b)]
        if exposed:
            raise SetupError(f"--allow-anonymous is for local trials: refusing to listen on {', '.join(exposed)}; "
                             "bind to 127.0.0.1 or create users with `edison-broker passwd`")
        if o.passwd or o.rules:
            raise SetupError("--allow-anonymous has no users and no access rules: drop --passwd and --config")
    elif not (o.passwd and o.rules):
        raise SetupError("give --passwd FILE (users) and --config topics.yaml (access rules), "
                         "or --allow-anonymous for a local trial")
    ls = o.listeners
    if ls.tls_bind and not (ls.tls_cert and ls.tls_key):
        raise SetupError("--tls-bind needs --tls-cert and --tls-key")
    for option, path in (("--tls-cert", ls.tls_cert), ("--tls-key", ls.tls_key), ("--tls-ca", ls.tls_ca),
                         ("--passwd", o.passwd)):
        if path and not path.is_file():
            raise SetupError(f"{option} {path}: no such file")
    if o.passwd and not passwords.read(o.passwd):
        raise SetupError(f"{o.passwd}: no users (add them with `edison-broker passwd --passwd {o.passwd} add NAME`)")


def listener_config(ls: Listeners) -> dict[str, dict]:
    listeners: dict[str, dict] = {"default": {"type": "tcp", "bind": ls.bind}}
    if ls.tls_bind:
        tls = {"type": "tcp", "bind": ls.tls_bind, "ssl": True,
               "certfile": str(ls.tls_cert), "keyfile": str(ls.tls_key)}
        if ls.tls_ca:
            tls["cafile"] = str(ls.tls_ca)
        listeners["tls"] = tls
    if ls.ws_bind:
        listeners["ws"] = {"type": "ws", "bind": ls.ws_bind}
    return listeners


async def serve(o: Options, grace: float = 2.0) -> None:
    """Run until SIGINT or SIGTERM; then clients get `grace` seconds to take what was sent to them."""
    from broker.access import Access
    from broker.connection import Connections
    from broker.core import Core
    from broker.engine import EdisonBroker
    from broker.login import Passwords
    from broker.store import Store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    store = None
    if o.data:
        o.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = Store(o.data / DATA_FILE)
    users = None if o.allow_anonymous else Passwords(o.passwd)  # type: ignore[arg-type]
    access = Access(None if o.allow_anonymous else o.rules, users.users if users else ())
    core = Core(access, store, o.limits.max_queued, o.limits.max_message_size)
    if store:
        state = store.load()
        core.restore(state, loop)
        log.info("state restored from %s: %d retained message(s), %d session(s), %d queued message(s)", store.path,
                 len(state.retained), len(state.sessions), sum(len(s.queued) for s in state.sessions))
        store.start(loop)
    broker = EdisonBroker(listener_config(o.listeners), Connections(core, access, users, o.limits))
    try:
        await broker.start()
        mode = "trial mode: every client is accepted" if o.allow_anonymous else f"users from {o.passwd}"
        kept = f"state in {o.data}" if o.data else "state is in memory (lost on restart; use --data DIR to keep it)"
        log.info("listening on %s (%s; %s)", ", ".join(o.listeners.binds), mode, kept)
        await stop.wait()
        log.info("shutting down")
        await broker.stop(grace)
        left = core.unacknowledged()
        if left:
            log.warning("%d message(s) for connected clients not acknowledged by them: %s", left,
                        f"kept in {o.data} for the next start" if o.data else "lost (no --data)")
    finally:
        if store:
            store.close()
        if users:
            users.close()
    log.info("stopped")
