"""One MQTT connection that stays up, on paho-mqtt: the node's link to its brokers (the bridge uses it too).

paho does the protocol; this module adds what a device behind NAT needs and
paho leaves to the caller: several broker addresses with failover between
them (node.reconnect's policy), a CONNACK deadline, a persistent session that
resumes on any member of a cluster, birth and Last Will messages,
resubscribing on every connect, MQTT 5 with a fallback to 3.1.1 learnt per
address, TCP_NODELAY and TCP_QUICKACK, callbacks that can never kill the network thread, one
log line per failed attempt, and a flush of pending publishes before a clean
disconnect. One thread of its own runs paho's network loop and the
reconnects. It is the only module that imports paho: callers see node.link's
Message and Link.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from node.link import Acknowledged, Incoming, Message, Session
from node.reconnect import ReconnectPolicy
from node.secret import SecretError, secret

__all__ = ["DEFAULT_BROKER", "PROTOCOLS", "BrokerAddress", "Credentials", "LinkError", "LinkSettings", "Message",
           "MqttLink", "parse_brokers"]

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "5", "3.1.1")
IDLE_WAKE = 10.0  # seconds at most between idle wake-ups of the network loop (a quarter of the keep-alive if less)
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason: Unsupported Protocol Version (paho maps 3.1.1's code 1 to it)
_EARLY_ACKS = 64  # PUBACKs kept for publish() calls that have not returned yet; one is waited for in microseconds
_REFUSED_LOGIN = (134, 135)  # Bad user name or password, Not authorized (paho maps 3.1.1's 4 and 5 to them)
# A broker that holds back its answer to failed logins (edison-broker: up to 30 s) outlasts the connect timeout: once
# an address held back its CONNACK or refused the login, its next CONNACK is waited for this long.
HELD_LOGIN_WAIT = 35.0
# Connections that end this soon after they came up, twice in a row, look like another client taking the session.
SHORT_LIVED = 5.0


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
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise LinkError(f"broker URL {url!r}: MQTT has no paths; expected mqtt://host[:port]")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise LinkError(f"broker URL {url!r} has an invalid port") from None
        return cls(parts.hostname, port, parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_brokers(values: str | Iterable[str] | None) -> tuple[BrokerAddress, ...]:
    """Broker URLs as `--broker` gives them: repeated, comma-separated, or both; None is the default broker."""
    if values is None:
        values = [DEFAULT_BROKER]
    elif isinstance(values, str):
        values = [values]
    urls = [url.strip() for value in values for url in value.split(",") if url.strip()]
    if not urls:
        raise LinkError("no broker URL given")
    addresses = tuple(BrokerAddress.parse(url) for url in urls)
    if len(set(addresses)) != len(addresses):
        raise LinkError(f"a broker is given twice: {', '.join(urls)}")
    return addresses


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        """MQTT_USERNAME with MQTT_PASSWORD, or MQTT_PASSWORD_FILE naming a file that holds it."""
        username = env.get("MQTT_USERNAME") or None
        try:
            password = secret("MQTT_PASSWORD", env)
        except SecretError as exc:
            raise LinkError(str(exc)) from None
        if password and not username:
            raise LinkError("a password is set but MQTT_USERNAME is not")
        return cls(username, password)


@dataclass(frozen=True)
class LinkSettings:
    """`brokers`: one address, or several tried in turn (parse_brokers makes them from `--broker`)."""

    brokers: BrokerAddress | tuple[BrokerAddress, ...]
    credentials: Credentials = Credentials()
    protocol: str = "auto"
    ca_file: str | None = None
    keepalive: int = 60
    session_expiry: int = 86400  # MQTT 5: how long the broker keeps the session while we are away
    connect_timeout: float = 10.0  # seconds from opening the connection to the broker's CONNACK

    @property
    def addresses(self) -> tuple[BrokerAddress, ...]:
        return (self.brokers,) if isinstance(self.brokers, BrokerAddress) else self.brokers

    def __post_init__(self) -> None:
        if not self.addresses:
            raise LinkError("no broker address given")
        if self.protocol not in PROTOCOLS:
            raise LinkError(f"protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if not self.connect_timeout > 0:
            raise LinkError(f"connect timeout {self.connect_timeout}: expected a number of seconds above 0")
        tls = {a.tls for a in self.addresses}
        if len(tls) > 1:
            raise LinkError("give either mqtt:// or mqtts:// brokers, not both: the same client serves them all")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise LinkError(f"CA file {self.ca_file} does not exist")
        if self.ca_file and tls != {True}:
            raise LinkError("a CA file is only used with mqtts:// broker URLs")


_Method = TypeVar("_Method", bound=Callable[..., None])


def _guarded(method: _Method) -> _Method:
    """paho ends its network loop when a callback raises: log instead and carry on."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (connection kept)", method.__name__)

    return wrapper  # type: ignore[return-value]


def _incoming(msg: paho.MQTTMessage) -> Incoming:
    props = msg.properties  # None on MQTT 3.1.1
    return Incoming(
        msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
        response_topic=getattr(props, "ResponseTopic", None) or None,
        correlation_data=getattr(props, "CorrelationData", None) or None,
        expiry=getattr(props, "MessageExpiryInterval", None),
        user_properties=tuple(tuple(p) for p in getattr(props, "UserProperty", ())),
        dup=bool(msg.dup),
    )


def _properties(message: Message) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if message.response_topic:
        props.ResponseTopic = message.response_topic
    if message.correlation_data:
        props.CorrelationData = message.correlation_data
    if message.expiry is not None:
        props.MessageExpiryInterval = message.expiry
    if message.user_properties:
        props.UserProperty = list(message.user_properties)
    return props


def _written_by_the_network_thread(client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
    return None


class _Failed(Exception):
    """An attempt that got no usable connection; the message names the address and says why."""

    def __init__(self, message: str, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.level = level


class MqttLink:
    """node.link.Link on paho-mqtt: connects to the first broker that answers, fails over, resumes its session.

    `persistent=False` asks for a session that ends with the connection (for
    one-off clients such as `--forget`), on MQTT 5 and 3.1.1 alike.
    """

    def __init__(self, settings: LinkSettings, client_id: str, persistent: bool = True) -> None:
        self.settings = settings
        self.client_id = client_id
        self.persistent = persistent
        self._addresses = settings.addresses
        self._session = Session()
        fixed = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}.get(settings.protocol)
        self._versions: dict[BrokerAddress, MQTTProtocolVersion] = {a: fixed for a in self._addresses} if fixed else {}
        self._version = fixed or paho.MQTTv5  # of the connection being made or up
        self._address = self._addresses[0]
        # mid -> topic and callback of QoS 1 publishes the broker has not acknowledged
        self._pending: dict[int, tuple[str, Acknowledged | None]] = {}
        self._acked_early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() back to its caller
        self._pending_changed = threading.Condition()
        self._offline_since: float | None = None
        self._backlog_age: float | None = None
        self._fence_mid: int | None = None
        self._connack: ReasonCode | None = None  # the answer to the connection being made
        self._holding: set[BrokerAddress] = set()  # addresses that held back a CONNACK or refused the login
        self._up_since = 0.0  # monotonic time the connection came up
        self._short_lived = 0  # connections in a row that ended within SHORT_LIVED of coming up
        self._disconnect_reason = "connection lost"
        self._subscribing: dict[int, str] = {}  # SUBSCRIBE message id -> its filter, until the SUBACK
        self._refused: str | None = None  # a subscription the broker refused on this connection
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = self._new_client()

    @property
    def mqtt5(self) -> bool:
        return self._version == paho.MQTTv5

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self, session: Session) -> None:
        """Connect in the background, and reconnect (to the same or another broker) whenever the connection drops."""
        self._session = session
        self._client = self._new_client()  # the will is part of the client
        log.info("connecting to %s as %s", ", ".join(map(str, self._addresses)), self.client_id)
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def publish(self, message: Message, on_acknowledged: Acknowledged | None = None) -> int | None:
        # Never hold a lock of ours while calling paho: its network loop calls
        # on_publish while holding paho's own locks.
        props = _properties(message) if self.mqtt5 and message.has_properties else None
        try:
            info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain,
                                        properties=props)
        except ValueError as exc:  # e.g. a response topic with wildcards
            log.warning("publish to %r not queued: %s", message.topic, exc)
            return None
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish to %s not queued: %s", message.topic, paho.error_string(info.rc))
            return None
        if message.qos == 0:
            return None
        with self._pending_changed:
            early = self._acked_early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = (message.topic, on_acknowledged)
        if early is not None:
            self._acknowledged(message.topic, on_acknowledged, early)
        return info.mid

    def backlog_age(self) -> float | None:
        return self._backlog_age

    def stop(self, final: Sequence[Message] = (), timeout: float = 1.0) -> bool:
        if self.connected:  # otherwise the broker has published our will already
            for message in final:
                self.publish(message)
        with self._pending_changed:
            self._pending_changed.wait_for(lambda: not self._pending or not self.connected, timeout)
            flushed = not self._pending
        self._stopping.set()
        self._client.disconnect()  # the network loop sends DISCONNECT, then ends
        if self._thread is not None:
            self._thread.join(timeout)
        return flushed

    # -- the network thread ----------------------------------------------

    def _run(self) -> None:
        """Attempts, one address at a time, as the reconnect policy says; each failure is one log line."""
        policy = ReconnectPolicy(len(self._addresses))
        while not self._stopping.is_set():
            index, wait = policy.next()
            if wait and self._stopping.wait(wait):
                return
            address = self._addresses[index]
            try:
                self._attempt(address)
            except _Failed as failure:
                policy.failed(index)
                level, text = failure.level, str(failure)
            else:
                policy.lost(index)
                level, text = logging.WARNING, f"disconnected from {address}: {self._disconnect_reason}"
                text += self._takeover_hint()
            if self._stopping.is_set():
                return
            log.log(level, "%s (%s)", text, self._next_text(address, *policy.next()))

    def _takeover_hint(self) -> str:
        """Two clients with one client id take the session from each other, each connection lasting a moment.

        Neither the embedded broker (MQTT 3.1.1) nor Mosquitto 2.0 says why it closed the connection."""
        self._short_lived = self._short_lived + 1 if time.monotonic() - self._up_since < SHORT_LIVED else 0
        if self._short_lived >= 2:
            return (f"; connections keep ending within {SHORT_LIVED:g} s: another client with client id "
                    f"{self.client_id!r} (a second node for this device?) would take the session from us each time")
        return ""

    def _next_text(self, tried: BrokerAddress, index: int, wait: float) -> str:
        address = self._addresses[index]
        if address == tried:
            return f"retrying in {wait:.1f} s"
        return f"trying {address} {'now' if not wait else f'in {wait:.1f} s'}"

    def _attempt(self, address: BrokerAddress) -> None:
        """One connection to `address`, kept until it drops; _Failed if it never came up."""
        version = self._versions.get(address)
        if version is None:
            version = self._versions[address] = paho.MQTTv5 if self._speaks_mqtt5(address) else paho.MQTTv311
            if version == paho.MQTTv311:
                log.info("broker %s does not speak MQTT 5: using MQTT 3.1.1", address)
        self._address, self._connack, self._refused = address, None, None
        self._use_version(version)
        try:
            self._connect(address)
        except OSError as exc:
            raise _Failed(f"cannot reach {address}: {exc}") from None
        self._await_connack(address)
        self._up_since = time.monotonic()
        # Idle, paho's loop wakes only to keep the connection alive: a publish or a stop wakes it at once.
        wake = min(IDLE_WAKE, self.settings.keepalive / 4) if self.settings.keepalive else IDLE_WAKE
        while self._client.loop(timeout=wake) == paho.MQTT_ERR_SUCCESS:
            pass
        if self._refused:  # connected but deaf: a failed attempt, backed off like one
            raise _Failed(f"broker {address} refused the subscription to {self._refused}", logging.ERROR)

    def _connect(self, address: BrokerAddress) -> None:
        client, s = self._client, self.settings
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry if self.persistent else 0
            client.connect_async(address.host, address.port, s.keepalive, clean_start=not self.persistent,
                                 properties=props)
        else:
            client.connect_async(address.host, address.port, s.keepalive)
        client.reconnect()  # TCP (and TLS) within connect_timeout, then CONNECT

    def _await_connack(self, address: BrokerAddress) -> None:
        """The broker's answer to the login. One that held its answer back before is waited for as long as a
        broker holds back the refusal of a wrong password, so the node's user hears the refusal itself."""
        held = address in self._holding
        wait = max(self.settings.connect_timeout, HELD_LOGIN_WAIT) if held else self.settings.connect_timeout
        deadline = time.monotonic() + wait
        rc = paho.MQTT_ERR_SUCCESS
        while self._connack is None and rc == paho.MQTT_ERR_SUCCESS and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drop_socket()
                self._holding.add(address)
                why = "" if held else (
                    ": it took the connection but did not answer the login (busy, or holding back the refusal of a "
                    f"wrong password, as edison-broker does for up to 30 s): next time it gets {HELD_LOGIN_WAIT:g} s")
                raise _Failed(f"no CONNACK from {address} within {wait:g} s{why}")
            rc = self._client.loop(timeout=min(1.0, remaining))
        answer = self._connack
        if answer is not None and not answer.is_failure:
            self._holding.discard(address)
            return
        if self._stopping.is_set():
            self._drop_socket()
            raise _Failed(f"stopped while connecting to {address}")
        if answer is not None:
            if answer.value == _UNSUPPORTED_PROTOCOL:
                self._versions.pop(address, None)  # ask again next time: another broker may answer there now
            if answer.value in _REFUSED_LOGIN:
                self._holding.add(address)  # its next refusal may come after a delay: wait for it
            raise _Failed(f"broker {address} refused the connection{self._refusal_hint(answer)}: {answer}",
                          logging.ERROR)
        if rc == paho.MQTT_ERR_PROTOCOL:  # MQTT 3.1.1 refused as an unacceptable protocol version
            self._versions.pop(address, None)
            raise _Failed(f"broker {address} refused MQTT 3.1.1 (unacceptable protocol version)", logging.ERROR)
        raise _Failed(f"broker {address} closed the connection before its CONNACK ({paho.error_string(rc)})"
                      f"{self._tls_hint(address)}")

    def _tls_hint(self, address: BrokerAddress) -> str:
        """A plain connection closed unanswered: if the port speaks TLS, it is a TLS listener given as mqtt://."""
        if address.tls:
            return ""
        import ssl  # paho has imported it already

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only: does it speak TLS at all?
        try:
            with socket.create_connection((address.host, address.port), self.settings.connect_timeout) as sock, \
                    context.wrap_socket(sock, server_hostname=address.host):
                return f": it speaks TLS, so give it as mqtts://{address.host}:{address.port}"
        except OSError:  # ssl.SSLError included: not TLS either
            return ""

    def _drop_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._client.loop(timeout=0)  # paho notices the closed socket and resets its state

    def _speaks_mqtt5(self, address: BrokerAddress) -> bool:
        """Ask with a bare, throw-away MQTT 5 CONNECT: own client id, no will, no credentials.

        amqtt 0.12 never answers an MQTT 5 CONNECT that carries a will or a
        user name, so the refusal cannot be waited for on the real connection.
        A broker that wants credentials still answers in its own version; one
        that closes the connection without a CONNACK speaks 3.1.1 only; one
        that says nothing within the connect timeout is a failed attempt.
        """
        answer: list[ReasonCode] = []
        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.client_id}-probe", protocol=paho.MQTTv5,
                            reconnect_on_failure=False)
        probe.connect_timeout = self.settings.connect_timeout
        if address.tls:
            probe.tls_set(ca_certs=self.settings.ca_file)
        probe.on_connect = lambda client, userdata, flags, reason_code, properties: answer.append(reason_code)
        try:
            probe.connect(address.host, address.port, keepalive=10)
        except OSError as exc:
            raise _Failed(f"cannot reach {address}: {exc}") from None
        deadline = time.monotonic() + self.settings.connect_timeout
        try:
            while not answer and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Failed(f"no answer from {address} within {self.settings.connect_timeout:g} s")
                if probe.loop(timeout=min(0.5, remaining)) != paho.MQTT_ERR_SUCCESS:
                    break  # closed: with a refusal (answer), or without a CONNACK (MQTT 3.1.1 only)
        finally:
            probe.disconnect()  # also closes the socket
        return bool(answer) and answer[0].value != _UNSUPPORTED_PROTOCOL

    # -- paho plumbing -------------------------------------------------

    def _new_client(self) -> paho.Client:
        s = self.settings
        # Made as an MQTT 3.1.1 client so it holds its clean_session; _use_version sets the version per attempt.
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311,
                             clean_session=not self.persistent, reconnect_on_failure=False)
        client.connect_timeout = s.connect_timeout
        if s.credentials.username:
            client.username_pw_set(s.credentials.username, s.credentials.password)
        if s.addresses[0].tls:
            client.tls_set(ca_certs=s.ca_file)
        will = self._session.will
        if will:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_socket_open = self._on_socket_open
        # Only the network thread writes to the socket (as with paho's loop_start): a publish from another
        # thread queues its packet and wakes the loop, instead of writing, and failing, on its own.
        client.on_socket_register_write = _written_by_the_network_thread
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _use_version(self, version: MQTTProtocolVersion) -> None:
        """The MQTT version of the next CONNECT, on the same client, so queued publishes go to the next broker.

        paho reads its version on each (re)connect and packs queued publishes
        when it sends them; it switches it itself on a disconnected client
        (its fallback from 3.1.1 to 3.1), which is what is done here.
        """
        self._version = version
        self._client._protocol = version

    def _refusal_hint(self, reason_code: ReasonCode) -> str:
        if reason_code.value not in _REFUSED_LOGIN:
            return ""
        user = self.settings.credentials.username
        return f" as user {user!r}" if user else " (MQTT_USERNAME is not set)"

    def _acknowledged(self, topic: str, callback: Acknowledged | None, reason_code: ReasonCode) -> None:
        refusal = str(reason_code) if reason_code.is_failure else None
        if refusal:
            log.warning("the broker refused the publish to %s: %s", topic, refusal)
        if callback is not None:
            callback(refusal)

    @_guarded
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        # Several small packets go out per command (PUBACK, state, result):
        # with Nagle and delayed ACKs each burst would wait ~40 ms.
        if isinstance(sock, socket.socket):  # TCP, and TLS over it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(sock)

    @_guarded
    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        self._connack = reason_code
        if reason_code.is_failure:
            return  # the network thread logs it, with what it tries next
        now = time.time()
        resumed = flags.session_present
        self._backlog_age = now - self._offline_since if resumed and self._offline_since is not None else None
        log.info(
            "connected to %s (MQTT %s, %s)",
            self._address,
            "5" if self.mqtt5 else "3.1.1",
            "session resumed" if resumed else "new session",
        )
        # Subscribe before announcing: the broker handles our packets in order,
        # so whoever sees `online` can send a command that will reach us.
        self._subscribing.clear()
        for topic in self._session.subscriptions:
            mid = client.subscribe(topic, qos=1)[1]
            if mid is not None:
                self._subscribing[mid] = topic
        if self._session.birth:
            self._fence_mid = self.publish(self._session.birth)
        self._session.on_connect(resumed)

    @_guarded
    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        if self._offline_since is None:
            self._offline_since = time.time()
        self._backlog_age = None
        self._disconnect_reason = str(reason_code) if reason_code.is_failure else "connection closed"
        with self._pending_changed:
            self._pending_changed.notify_all()

    @_guarded
    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        _quickack(client.socket())
        if mid == self._fence_mid:
            self._backlog_age = None  # the broker has moved past what it queued for us
            self._offline_since = None
        with self._pending_changed:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._acked_early[mid] = reason_code
                if len(self._acked_early) > _EARLY_ACKS:  # QoS 0 publishes end up here too: keep the newest
                    del self._acked_early[next(iter(self._acked_early))]
            self._pending_changed.notify_all()
        if pending is not None:
            self._acknowledged(*pending, reason_code)

    @_guarded
    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        """A refused subscription leaves the client deaf to its commands: leave, and try again as after a failure.

        An access rule refuses for good (the attempts back off to 30 s, each logged); a NATS member whose
        JetStream did not answer in time refuses once.
        """
        topic = self._subscribing.pop(mid, "?")
        refused = [code for code in reason_codes if code.is_failure]
        if refused and not self._stopping.is_set():
            self._refused = f"{topic} ({refused[0]})"
            client.disconnect()

    @_guarded
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        _quickack(client.socket())
        self._session.on_message(_incoming(msg))


def _quickack(sock: object) -> None:
    """Acknowledge what the broker sent at once, not 40 ms later.

    A broker with Nagle on (Mosquitto's default) holds its next packet to us
    (the next command) until we acknowledge its last one (the PUBACK of our
    state publish); Linux delays that ACK when we have nothing to send.
    TCP_QUICKACK sends a pending ACK when set and does not stay on, so it is
    set again after every packet read.
    """
    if isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK"):  # Linux only
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:  # the connection is closing
            pass
