"""The embedded broker: its amqtt configuration from the command line, run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import TYPE_CHECKING

from broker import passwords
from broker.login import is_loopback
from broker.models import WEB_LISTENER, Listeners, Options

if TYPE_CHECKING:
    from broker.store import Store

log = logging.getLogger("edison-broker")

DATA_FILE = "broker.sqlite3"
EXPIRY_CHECK = 60.0  # seconds between looks for expired sessions


class SetupError(Exception):
    """The options cannot make a safe broker; the message says why."""


def loopback_bind(bind: str) -> bool:
    return is_loopback(bind.rpartition(":")[0].strip("[]"))


def check(o: Options) -> None:
    if o.allow_anonymous:
        exposed = [b for b in o.listeners.binds if not loopback_bind(b)]
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
    if bool(ls.tls_cert) != bool(ls.tls_key):
        raise SetupError("--tls-cert and --tls-key go together")
    if ls.tls_cert and not (ls.tls_bind or ls.web_bind):
        raise SetupError("--tls-cert is for --tls-bind or --web-bind: give one of them")
    for option, path in (("--tls-cert", ls.tls_cert), ("--tls-key", ls.tls_key), ("--tls-ca", ls.tls_ca),
                         ("--passwd", o.passwd)):
        if path and not path.is_file():
            raise SetupError(f"{option} {path}: no such file")
    if ls.tls_cert and ls.tls_key:
        from broker import tls

        tls_problem = tls.problem(ls.tls_cert, ls.tls_key, ls.tls_ca)
        if tls_problem:
            raise SetupError(tls_problem)
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
    if ls.web_bind:
        web: dict = {"type": "ws", "bind": ls.web_bind}
        if ls.tls_cert:
            web.update({"ssl": True, "certfile": str(ls.tls_cert), "keyfile": str(ls.tls_key)})
        listeners[WEB_LISTENER] = web
    return listeners


def open_store(o: Options) -> Store | None:
    """The data directory's store, opened before anything listens; SetupError when it cannot be used."""
    from broker.store import Store, StoreError

    if not o.data:
        return None
    try:
        return Store(o.data / DATA_FILE)
    except StoreError as exc:
        raise SetupError(str(exc)) from None


async def serve(o: Options, store: Store | None, grace: float = 2.0) -> None:
    """Run until SIGINT or SIGTERM; then clients get `grace` seconds to take what was sent to them."""
    from broker.access import Access
    from broker.connection import Connections
    from broker.core import Core
    from broker.engine import EdisonBroker
    from broker.login import Passwords
    from broker.web import Site

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    users = None if o.allow_anonymous else Passwords(o.passwd)  # type: ignore[arg-type]
    access = Access(None if o.allow_anonymous else o.rules, users.users if users else ())
    devices = [u for u, allowed in (o.rules.publish if o.rules else {}).items()
               if o.layout.device(u).everything in allowed]
    core = Core(access, store, o.limits, {o.layout.device(d).status: d for d in devices})
    if store:
        state = store.load()
        core.restore(state, loop)
        log.info("state restored from %s: %d retained message(s), %d session(s), %d queued message(s)", store.path,
                 len(state.retained), len(state.sessions), sum(len(s.queued) for s in state.sessions))
        store.start(loop)
    site = Site(o.layout, o.allow_anonymous) if o.listeners.web_bind else None
    broker = EdisonBroker(listener_config(o.listeners), Connections(core, access, users, o.limits), site)
    try:
        await broker.start()
        mode = "trial mode: every client is accepted" if o.allow_anonymous else f"users from {o.passwd}"
        kept = f"state in {o.data}" if o.data else "state is in memory (lost on restart; use --data DIR to keep it)"
        log.info("listening on %s (%s; %s)", ", ".join(o.listeners.binds), mode, kept)
        while not stop.is_set():  # now and then: sessions whose client stayed away too long
            core.expire(time.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), EXPIRY_CHECK)
        log.info("shutting down")
        await broker.stop(grace)
        left = core.unacknowledged()
        if left:
            log.warning("%d message(s) for connected clients not acknowledged by them: %s", left,
                        f"kept in {o.data} for the next start" if o.data else "lost (no --data)")
    finally:
        if store:
            store.close()
    log.info("stopped")
