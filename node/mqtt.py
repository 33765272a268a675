"""One MQTT connection that stays up: the node's link to its broker (the bridge uses it too).

paho-mqtt does the protocol; this module adds what a device behind NAT needs
and paho leaves to the caller: a persistent session, birth and Last Will
messages, resubscribing on every connect, MQTT 5 with a fallback to 3.1.1,
TCP_NODELAY, callbacks that can never kill the network thread, and a flush of
pending publishes before a clean disconnect.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "5", "3.1.1")
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason: Unsupported Protocol Version (paho maps 3.1.1's code 1 to it)


class LinkError(Exception):
    """The connection settings are unusable; raised at start, never while running."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """`mqtt://host[:port]` or `mqtts://host[:port]`; credentials never come from the URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise LinkError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        if parts.username or parts.password:
            raise LinkError("put broker credentials in MQTT_USERNAME / MQTT_PASSWORD, not in the URL")
        if not parts.hostname:
            raise LinkError(f"broker URL {url!r} has no host")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise LinkError(f"broker URL {url!r} has an invalid port") from None
        return cls(parts.hostname, port, parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        """MQTT_USERNAME with MQTT_PASSWORD, or MQTT_PASSWORD_FILE naming a file that holds it."""
        username = env.get("MQTT_USERNAME") or None
        password = env.get("MQTT_PASSWORD") or None
        password_file = env.get("MQTT_PASSWORD_FILE")
        if password_file:
            if password:
                raise LinkError("set MQTT_PASSWORD or MQTT_PASSWORD_FILE, not both")
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise LinkError(f"MQTT_PASSWORD_FILE: cannot read {password_file}: {exc}") from None
        if password and not username:
            raise LinkError("a password is set but MQTT_USERNAME is not")
        return cls(username, password)


@dataclass(frozen=True)
class LinkSettings:
    address: BrokerAddress
    credentials: Credentials = Credentials()
    protocol: str = "auto"
    ca_file: str | None = None
    keepalive: int = 60
    session_expiry: int = 86400  # MQTT 5: how long the broker keeps the session while we are away

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise LinkError(f"protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise LinkError(f"CA file {self.ca_file} does not exist")
        if self.ca_file and not self.address.tls:
            raise LinkError("a CA file is only used with an mqtts:// broker URL")


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str | bytes
    retain: bool = False


def _guarded(method):
    """paho ends its network thread silently when a callback raises: log instead and carry on."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (connection kept)", method.__name__)
            return None

    return wrapper


class Link:
    """A client that connects, stays connected and resumes its session.

    `on_connect(session_present)` and `on_message(msg)` run on paho's network
    thread and must not block. `backlog_age()` tells on_message whether the
    message arrives from the queue the broker kept while we were away.
    """

    def __init__(
        self,
        settings: LinkSettings,
        client_id: str,
        subscriptions: list[str],
        on_message: Callable[[paho.MQTTMessage], None],
        on_connect: Callable[[bool], None] = lambda session_present: None,
        birth: Message | None = None,
        will: Message | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._subscriptions = subscriptions
        self._on_message_cb = on_message
        self._on_connect_cb = on_connect
        self._birth = birth
        self._will = will
        self._version = paho.MQTTv311 if settings.protocol == "3.1.1" else paho.MQTTv5
        self._pending: set[int] = set()
        self._acked_early: set[int] = set()  # PUBACKs that beat publish() back to its caller
        self._pending_changed = threading.Condition()
        self._offline_since: float | None = None
        self._backlog_age: float | None = None
        self._fence_mid: int | None = None
        self._stopping = threading.Event()
        self._starting = threading.Lock()  # stop() must not race a connect that is starting
        self._client = self._new_client()

    @property
    def mqtt5(self) -> bool:
        return self._version == paho.MQTTv5

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self) -> None:
        """Connect in the background; with protocol auto, learn the broker's MQTT version first."""
        log.info("connecting to %s as %s", self.settings.address, self.client_id)
        if self.settings.protocol == "auto":
            threading.Thread(target=self._probe_then_connect, name="mqtt-probe", daemon=True).start()
        else:
            self._connect(self._client)

    def publish(
        self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 1, properties: Properties | None = None
    ) -> int | None:
        """Queue a publish; it is sent now or after the next reconnect (paho keeps QoS 1 messages).

        Returns the message id of a QoS 1 publish that is now pending.
        """
        if properties is not None and not self.mqtt5:
            properties = None
        # Never hold our lock while calling paho: its network thread calls
        # on_publish while holding paho's own lock.
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish to %s not queued: %s", topic, paho.error_string(info.rc))
            return None
        if qos == 0:
            return None
        with self._pending_changed:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._pending.add(info.mid)
        return info.mid

    def backlog_age(self) -> float | None:
        """Seconds we were offline, while the broker is still delivering what it queued meanwhile."""
        return self._backlog_age

    def stop(self, final: list[Message] = (), timeout: float = 1.0) -> bool:
        """Publish `final`, wait up to `timeout` for every pending publish, disconnect.

        Returns whether everything was acknowledged by the broker.
        """
        for message in final:
            self.publish(message.topic, message.payload, retain=message.retain)
        deadline = time.monotonic() + timeout
        with self._pending_changed:
            flushed = self._pending_changed.wait_for(
                lambda: not self._pending or not self.connected, max(0.0, deadline - time.monotonic())
            )
            flushed = flushed and not self._pending
        with self._starting:
            self._stopping.set()
            self._client.disconnect()
            self._client.loop_stop()
        return flushed

    # -- paho plumbing -------------------------------------------------

    def _new_client(self) -> paho.Client:
        s = self.settings
        kwargs = {"clean_session": False} if self._version == paho.MQTTv311 else {}
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self._version, **kwargs
        )
        if s.credentials.username:
            client.username_pw_set(s.credentials.username, s.credentials.password)
        if s.address.tls:
            client.tls_set(ca_certs=s.ca_file)
        if self._will:
            client.will_set(self._will.topic, self._will.payload, qos=1, retain=self._will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _connect(self, client: paho.Client) -> None:
        s = self.settings
        if self._version == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry
            client.connect_async(s.address.host, s.address.port, s.keepalive, clean_start=False, properties=props)
        else:
            client.connect_async(s.address.host, s.address.port, s.keepalive)
        client.loop_start()

    def _probe_then_connect(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                mqtt5 = self._broker_speaks_mqtt5()
                break
            except OSError as exc:
                log.warning("cannot reach %s: %s (retrying in %.0f s)", self.settings.address, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        else:
            return
        with self._starting:
            if self._stopping.is_set():
                return
            if not mqtt5:
                log.info("broker %s does not speak MQTT 5: using MQTT 3.1.1", self.settings.address)
                self._version = paho.MQTTv311
                self._client = self._new_client()
            self._connect(self._client)

    def _broker_speaks_mqtt5(self, timeout: float = 5.0) -> bool:
        """Ask with a bare, throw-away MQTT 5 CONNECT: own client id, no will, no credentials.

        amqtt 0.12 never answers an MQTT 5 CONNECT that carries a will or a
        user name, so the refusal cannot be waited for on the real connection.
        A broker that wants credentials still answers in its own version.
        """
        s = self.settings
        answer: list = []
        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.client_id}-probe", protocol=paho.MQTTv5)
        if s.address.tls:
            probe.tls_set(ca_certs=s.ca_file)
        probe.on_connect = lambda client, userdata, flags, reason_code, properties: answer.append(reason_code)
        probe.connect(s.address.host, s.address.port, keepalive=10)
        deadline = time.monotonic() + timeout
        try:
            while not answer and time.monotonic() < deadline:
                if probe.loop(timeout=0.5) != paho.MQTT_ERR_SUCCESS:
                    break  # the broker closed the connection without a CONNACK
        finally:
            probe.disconnect()  # also closes the socket
        if not answer:
            log.info("no answer to an MQTT 5 CONNECT within %.0f s", timeout)
            return False
        return answer[0].value != _UNSUPPORTED_PROTOCOL

    @_guarded
    def _on_socket_open(self, client, userdata, sock) -> None:
        # Several small packets go out per command (PUBACK, state, result):
        # with Nagle and delayed ACKs each burst would wait ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @_guarded
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s (retrying)", self.settings.address, reason_code)
            return
        now = time.time()
        resumed = flags.session_present
        self._backlog_age = now - self._offline_since if resumed and self._offline_since is not None else None
        log.info(
            "connected to %s (MQTT %s, %s)",
            self.settings.address,
            "5" if self.mqtt5 else "3.1.1",
            "session resumed" if resumed else "new session",
        )
        # Subscribe before announcing: the broker handles our packets in order,
        # so whoever sees `online` can send a command that will reach us.
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        if self._birth:
            self._fence_mid = self.publish(self._birth.topic, self._birth.payload, retain=self._birth.retain)
        self._on_connect_cb(resumed)

    @_guarded
    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._offline_since is None:
            self._offline_since = time.time()
        self._backlog_age = None
        with self._pending_changed:
            self._pending_changed.notify_all()
        if reason_code.is_failure:
            log.warning("disconnected from %s: %s (reconnecting)", self.settings.address, reason_code)

    @_guarded
    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid == self._fence_mid:
            self._backlog_age = None  # the broker has moved past what it queued for us
            self._offline_since = None
        with self._pending_changed:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._acked_early.add(mid)
            self._pending_changed.notify_all()

    @_guarded
    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for code in reason_codes:
            if code.is_failure:
                log.error("broker refused a subscription: %s", code)

    @_guarded
    def _on_message(self, client, userdata, msg) -> None:
        self._on_message_cb(msg)
