"""The embedded broker: its amqtt configuration from the command line, run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from broker import passwords
from broker.access import Rules, amqtt_plugin_config

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

    max_connections: int = 100
    max_message_size: int = 65536  # bytes of payload; commands are a few bytes
    max_queued: int = 1000  # messages kept for one offline client (Mosquitto's default)


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


def broker_config(o: Options) -> dict:
    # An explicit "plugins" mapping replaces amqtt's defaults (which would allow
    # anonymous sessions without an offline queue, and publish $SYS topics).
    plugins: dict[str, dict] = {}
    if o.allow_anonymous:
        plugins["broker.plugins.TrialAuthPlugin"] = {}
    else:
        plugins["amqtt.plugins.authentication.FileAuthPlugin"] = {"password_file": str(o.passwd)}
        plugins["amqtt.plugins.topic_checking.TopicAccessControlListPlugin"] = amqtt_plugin_config(o.rules)
    if o.data:
        plugins["broker.persistence.PersistencePlugin"] = {"file": str(o.data / DATA_FILE)}
    return {"listeners": listener_config(o.listeners), "plugins": plugins}


async def serve(o: Options) -> None:
    from broker.engine import EdisonBroker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if o.data:
        o.data.mkdir(parents=True, exist_ok=True, mode=0o700)
    broker = EdisonBroker(broker_config(o), o.limits)
    await broker.start()
    mode = "trial mode: every client is accepted" if o.allow_anonymous else f"users from {o.passwd}"
    state = f"state in {o.data}" if o.data else "state is in memory (lost on restart; use --data DIR to keep it)"
    log.info("listening on %s (%s; %s)", ", ".join(o.listeners.binds), mode, state)
    await stop.wait()
    log.info("shutting down")
    await broker.shutdown()
    log.info("stopped")
