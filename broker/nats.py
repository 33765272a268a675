"""Export the embedded broker's users and access rules as a NATS cluster: one nats-server config per member.

nats-server (2.14 or newer) has an MQTT 3.1.1 listener whose sessions,
retained messages and queued QoS 1 messages live in JetStream streams; with
`stream_replicas` they are replicated across the members, so a device resumes
its session on any member and a retained message is seen from every one.

No user is written into the configs. Every login goes to the auth callout
(`edison-broker nats-auth`, broker/natsauth.py), which checks the password
against the embedded broker's own password file, refuses a client id that
belongs to another user (nats-server alone lets anyone take any session), and
answers with the user's permissions: broker.access's rules, each MQTT filter
written as the NATS subjects the MQTT layer uses for it (`/` -> `.`, `+` -> `*`,
and `a/#` -> `a` and `a.>`). The MQTT layer's own subjects (`$MQTT.sub.>`,
JetStream's API) are used by the server itself: since 2.14 nats-server allows
them without a rule, so none is granted. Users are MQTT only, so a password
cannot be used on the NATS client port to reach subjects or streams directly.

The JetStream limits that decide how many devices fit are written here too,
sized by `--fleet`, never left to a server default (2.15 caps a stream at 1,000
consumers, and every device's persistent QoS 1 subscription is one).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker import passwords
from broker.access import Rules

CLUSTER = "edison"
ACK_WAIT = "5s"
MIN_VERSION = "2.14"  # MQTT clients need no $MQTT rules, and get no others ($MQTT.sub. and pubrel delivery only)
ACCOUNT = "EDISON"  # where every MQTT user is placed, with the JetStream limits below
CALLOUT_ACCOUNT = "AUTH"  # where the callouts log in; nobody else is there
SYSTEM_ACCOUNT = "SYS"
CALLOUT_USER = "edison-auth"
CALLOUT_FILE = "nats-auth.json"  # beside the member configs: what every member's callout needs, secrets included
AUTH_TIMEOUT = 5  # seconds a login may take, the callout's answer included (NATS's default: 2)
DEFAULT_FLEET = 10_000
CONTROLLER_CONSUMERS = 1_000  # consumers left for controllers, bridges and Home Assistant beside the devices
MQTT_STREAMS = 16  # the MQTT layer keeps five streams per account
MAX_ACK_PENDING = 1_024  # QoS 1 messages in flight per subscription (a session may hold 65,535 in all)
JS_API_TIMEOUT = "10s"  # how long a connect waits for each JetStream call (session, one consumer per subscription)
# A level NATS takes as it is: no '.', space, wildcard or '$' (MQTT's names here are [A-Za-z0-9_-]).
_LEVEL = re.compile(r"^[A-Za-z0-9_-]+$")


class ExportError(Exception):
    """A rule NATS cannot express as it is, or options that make no cluster; the message says which."""


@dataclass(frozen=True)
class Member:
    number: int
    host: str  # where its listeners are bound and where the others reach it
    mqtt_port: int
    cluster_port: int
    client_port: int

    @property
    def name(self) -> str:
        """`edison-nats-N`: not `edison-N`, which reads like a device in the logs."""
        return f"{CLUSTER}-nats-{self.number}"

    @property
    def route(self) -> str:
        return host_port(self.host, self.cluster_port)


def host_port(host: str, port: int) -> str:
    """HOST:PORT as nats-server reads it: an IPv6 address in brackets."""
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def members(count: int, host: str, mqtt_port: int, cluster_port: int, client_port: int,
            hosts: Sequence[str] = ()) -> list[Member]:
    """`hosts`: one member per host, each with the same ports; else `count` members on `host`, ports upward."""
    if hosts:
        if len(set(hosts)) != len(hosts):
            raise ExportError(f"a member is given twice: {', '.join(hosts)}")
        return [Member(i + 1, h, mqtt_port, cluster_port, client_port) for i, h in enumerate(hosts)]
    if count < 1:
        raise ExportError("--nodes: at least one member")
    top = max(mqtt_port, cluster_port, client_port) + count - 1
    if top > 65535:
        raise ExportError(f"{count} members need ports up to {top}, past 65535")
    ranges = [range(p, p + count) for p in (mqtt_port, cluster_port, client_port)]
    if any(set(a) & set(b) for i, a in enumerate(ranges) for b in ranges[i + 1:]):
        raise ExportError("the MQTT, cluster and client ports of the members overlap: choose ports further apart")
    return [Member(i + 1, host, mqtt_port + i, cluster_port + i, client_port + i) for i in range(count)]


def subjects(topic_filter: str) -> list[str]:
    """The NATS subjects of an MQTT topic filter, as the MQTT layer uses them; ExportError if it has none."""
    levels = topic_filter.split("/")
    for level in levels:
        if level not in ("+", "#") and not _LEVEL.match(level):
            raise ExportError(f"{topic_filter!r}: the level {level!r} has no NATS subject of its own "
                              "(NATS subjects take levels of letters, digits, '_' and '-' here)")
    subject = ".".join({"+": "*", "#": ">"}.get(level, level) for level in levels)
    if levels[-1] == "#" and len(levels) > 1:
        return [subject[:-2], subject]  # MQTT's a/# matches a too
    return [subject]


def permissions(r: Rules, user: str) -> dict[str, dict[str, list[str]]]:
    """A user's NATS permissions: exactly its MQTT rules; a user without rules may do nothing."""
    result = {}
    for kind, filters in (("publish", r.publish.get(user, [])), ("subscribe", r.subscribe.get(user, []))):
        try:
            allowed = [s for f in filters for s in subjects(f)]
        except ExportError as exc:
            raise ExportError(f"user {user}, {kind} rule {exc}") from None
        result[kind] = {"allow": list(dict.fromkeys(allowed))} if allowed else {"deny": [">"]}
    return result


def account_limits(r: Rules, devices: Sequence[str], fleet: int) -> dict[str, int]:
    """The JetStream limits of the account every MQTT user is placed in, sized for `fleet` devices.

    Every QoS 1 subscription of a persistent session is a consumer on one stream, and nats-server 2.15 caps a
    stream at 1,000 consumers unless the account says otherwise: twice what the fleet's devices hold (a session
    taken over holds its old and new consumers for a moment), plus CONTROLLER_CONSUMERS for everyone else.
    """
    per_device = max(sum(len(subjects(f)) for f in r.subscribe.get(d, [])) for d in devices) if devices else 1
    return {"max_consumers": 2 * fleet * per_device + CONTROLLER_CONSUMERS, "max_streams": MQTT_STREAMS}


def authorization_text(r: Rules, devices: Sequence[str], fleet: int, callout: Callout) -> str:
    """The accounts and the auth callout every member includes: no user is listed, the callout answers for all."""
    limits = ", ".join(f"{k}: {v}" for k, v in account_limits(r, devices, fleet).items())
    lines = [
        "# Generated by edison-broker nats-config from topics.yaml. No user is listed here: every login is",
        "# answered by `edison-broker nats-auth` (one per member, any of them answers), which checks the password",
        "# file and the client id and places the user in the account below with its access rules.",
        "accounts {",
        f"  {ACCOUNT} {{ jetstream {{ {limits} }} }}",
        f"  {CALLOUT_ACCOUNT} {{ users: [ {{ user: {json.dumps(CALLOUT_USER)}, "
        f"password: {json.dumps(passwords.bcrypt_hash(callout.password))} }} ] }}",
        f"  {SYSTEM_ACCOUNT} {{ }}",
        "}",
        f"system_account: {SYSTEM_ACCOUNT}",
        "authorization {",
        "  # seconds a login may take, the callout's answer included (NATS's default: 2)",
        f"  timeout: {AUTH_TIMEOUT}",
        "  auth_callout {",
        f"    issuer: {json.dumps(callout.issuer_public)}",
        f"    account: {CALLOUT_ACCOUNT}",
        f"    auth_users: [ {json.dumps(CALLOUT_USER)} ]",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cluster:
    members: list[Member]
    data: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    fleet: int = DEFAULT_FLEET

    @property
    def replicas(self) -> int:
        return min(3, len(self.members))


@dataclass(frozen=True)
class Callout:
    """The secrets of an export: the account key that signs every login's answer, the callouts' password and the
    routes' password. Exporting again into the same folder keeps them, so members and callouts can be restarted
    one at a time with the new configs (new secrets would cut a restarted member off the others)."""

    issuer_seed: str
    password: str
    route_password: str

    @classmethod
    def new(cls) -> Callout:
        import nkeys

        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT).decode("ascii")
        return cls(seed, secrets.token_urlsafe(24), secrets.token_urlsafe(24))

    @classmethod
    def kept_in(cls, out: Path) -> Callout | None:
        """The secrets of an earlier export into `out`, or None if there is none (or it is not readable)."""
        try:
            data = json.loads((out / CALLOUT_FILE).read_text(encoding="utf-8"))
            return cls(str(data["issuer_seed"]), str(data["password"]), str(data["route_password"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def issuer_public(self) -> str:
        import nkeys

        return str(nkeys.from_seed(self.issuer_seed.encode("ascii")).public_key.decode("ascii"))


def member_text(c: Cluster, m: Member, route_password: str) -> str:
    store = c.data.resolve() / m.name
    others = [o for o in c.members if o != m]
    lines = [
        f"# Generated by edison-broker nats-config: member {m.number} of {len(c.members)} of cluster {CLUSTER!r}.",
        f"# nats-server {MIN_VERSION} or newer; start it with: nats-server -c nats-{m.number}.conf",
        f"# and its auth callout (no login succeeds without one): edison-broker nats-auth nats-{m.number}.conf",
        f"server_name: {json.dumps(m.name)}",
        "# NATS clients: only the auth callout logs in here (every user is MQTT only), so it stays on loopback.",
        f"listen: {json.dumps(f'127.0.0.1:{m.client_port}')}",
        "include ./authorization.conf",
        "",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store))}",
        "}",
        "",
    ]
    if others:  # a cluster block without routes stops JetStream from starting: one member is a single server
        lines += [
            "cluster {",
            f"  name: {json.dumps(CLUSTER)}",
            f"  listen: {json.dumps(m.route)}",
            f"  authorization {{ user: \"route\", password: {json.dumps(route_password)} }}",
            "  routes: [",
            *[f"    {json.dumps(f'nats-route://route:{route_password}@{o.route}')}" for o in others],
            "  ]",
            "}",
            "",
        ]
    lines += [
        "mqtt {",
        f"  listen: {json.dumps(host_port(m.host, m.mqtt_port))}",
        "  # Sessions, retained messages and queued QoS 1 messages, on this many members each.",
        f"  stream_replicas: {c.replicas}",
        "  # A QoS 1 message sent on a connection that dropped before its PUBACK is sent again after this long,",
        "  # on whichever member the client is then (NATS's default: 30 s); clients here acknowledge in milliseconds.",
        f"  ack_wait: {json.dumps(ACK_WAIT)}",
        "  # QoS 1 messages in flight per subscription, and how long a connect waits for each JetStream call.",
        f"  max_ack_pending: {MAX_ACK_PENDING}",
        f"  js_api_timeout: {json.dumps(JS_API_TIMEOUT)}",
    ]
    if c.tls_cert and c.tls_key:
        lines += [f"  tls {{ cert_file: {json.dumps(str(c.tls_cert.resolve()))}, "
                  f"key_file: {json.dumps(str(c.tls_key.resolve()))} }}"]
    lines += ["}"]
    return "\n".join(lines) + "\n"


def callout_text(c: Cluster, rules: Rules, passwd: Path, callout: Callout) -> str:
    """What every member's callout reads: the signing key, its login, the password file, the members, the rules."""
    users = sorted(set(passwords.names(passwd)) | set(rules.users))
    return json.dumps({
        "issuer_seed": callout.issuer_seed,
        "user": CALLOUT_USER,
        "password": callout.password,
        "route_password": callout.route_password,
        "account": ACCOUNT,
        "passwd": str(passwd.resolve()),
        "members": {m.name: f"nats://127.0.0.1:{m.client_port}" for m in c.members},
        "permissions": {user: permissions(rules, user) for user in users},
    }, indent=2) + "\n"


def export(c: Cluster, rules: Rules, devices: Sequence[str], passwd: Path, out: Path) -> list[Path]:
    """Write nats-N.conf per member, the authorization.conf they include and the callouts' file; the written paths."""
    if bool(c.tls_cert) != bool(c.tls_key):
        raise ExportError("TLS needs both --tls-cert and --tls-key")
    if c.fleet < 1:
        raise ExportError("--fleet: at least one device")
    passwords.read(passwd)  # a password file that cannot be read fails here, not at the first login
    callout = Callout.kept_in(out) or Callout.new()
    callout_json = callout_text(c, rules, passwd, callout)  # refuses an inexpressible rule before writing anything
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "authorization.conf", out / CALLOUT_FILE]
    passwords.write_private(written[0], authorization_text(rules, devices, c.fleet, callout))
    passwords.write_private(written[1], callout_json)
    for m in c.members:
        path = out / f"nats-{m.number}.conf"
        passwords.write_private(path, member_text(c, m, callout.route_password))
        written.append(path)
    c.data.mkdir(parents=True, exist_ok=True, mode=0o700)
    return written
