"""The NATS cluster's auth callout: every MQTT login, answered with the user's rights or refused.

nats-server sends each login (user, password, the MQTT client id) as a signed
JWT on `$SYS.REQ.USER.AUTH` to the callout account; one callout runs beside
each member and all of them answer from one queue group, so logins go on while
any callout is up. The answer is a user JWT signed with the export's account
key: the user's permissions from topics.yaml, MQTT connections only. A login is
refused when the password is not the user's in the embedded broker's own
password file (argon2, checked off the event loop, a password that passed once
remembered as a keyed digest, as broker.login does), or when the client id
belongs to another user (broker.access: a user's name, or its name and '-'),
which nats-server alone cannot do: there, anyone may take a device's session.

The JWTs are written here with nkeys rather than a JWT library: the one on PyPI
(nats-jwt) has no authorization request or response claims, and a NATS JWT is
two JSON objects and an ed25519 signature.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.access import Access, Rules
from broker.login import MAX_TRACKED, Passwords, Throttle, network_of
from broker.logs import Squelch, shown
from broker.nats import AUTH_TIMEOUT, CALLOUT_FILE, MIN_VERSION

log = logging.getLogger("edison-broker")

SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE = "edison-auth"  # every member's callout in one group: any of them answers any member's logins
REQUEST_AUDIENCE = "nats-authorization-request"
RECONNECT_WAIT = 1.0  # seconds between attempts to reach the member (nats-py retries forever)
REFUSAL_HOLD = 2.0  # seconds at most a refusal is held back: well within the member's wait (AUTH_TIMEOUT)
LOGIN_RATE, LOGIN_BURST = 5.0, 20  # logins a second of one user from one address, and how many at once
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class CalloutError(Exception):
    """The callout cannot start: its file, its member or its keys are not usable; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A NATS JWT: header and claims as base64url JSON, then the ed25519 signature of both."""
    head_and_claims = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{head_and_claims}.{_b64(sign(head_and_claims.encode('ascii')))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT from the server (it reaches the callout account only from a member); ValueError if
    it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected three parts")
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("nats"), dict):
        raise ValueError("not a JWT of NATS: no `nats` claims")
    return claims


@dataclass(frozen=True)
class Login:
    """What a member asks about one login, from its request JWT."""

    server_id: str
    server_version: str
    user_nkey: str
    user: str
    password: str
    client_id: str
    kind: str  # "mqtt" for MQTT clients
    host: str

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Login:
        nats = claims["nats"]
        if claims.get("aud") != REQUEST_AUDIENCE or nats.get("type") != "authorization_request":
            raise ValueError("not an authorization request")
        server, client = nats.get("server_id") or {}, nats.get("client_info") or {}
        opts = nats.get("connect_opts") or {}
        if not server.get("id") or not nats.get("user_nkey"):
            raise ValueError("an authorization request without its server id or user key")
        return cls(str(server["id"]), str(server.get("version", "")), str(nats["user_nkey"]),
                   str(opts.get("user") or ""), str(opts.get("pass") or ""), str(client.get("mqtt_id") or ""),
                   str(client.get("type") or ""), str(client.get("host") or ""))

    def __str__(self) -> str:
        return f"{shown(self.user) if self.user else '(no user name)'} as client id {shown(self.client_id)} from " \
               f"{self.host or '?'}"


def refusal(login: Login, password_ok: bool, access: Access) -> str | None:
    """Why the login is refused, or None to admit it; pure, so every rule is testable without a server."""
    if login.kind != "mqtt":
        return "only MQTT clients may log in"
    if not password_ok:
        return "wrong user name or password"
    owner = access.client_id_owner(login.client_id)
    if owner is not None and owner != login.user:
        return f"client id {shown(login.client_id)!r} belongs to user {owner}"
    return None


@dataclass(frozen=True)
class Settings:
    """What `nats-config` wrote for the callouts, and which member this one serves."""

    issuer_seed: str
    user: str
    password: str
    account: str
    passwd: Path
    member: str
    url: str
    permissions: dict[str, dict[str, dict[str, list[str]]]]

    @classmethod
    def load(cls, member_conf: Path, passwd: Path | None = None) -> Settings:
        """From a member's nats-N.conf: its server name, and the callouts' file beside it."""
        try:
            text = member_conf.read_text(encoding="utf-8")
            found = re.search(r'^server_name: "([^"]+)"$', text, re.MULTILINE)
            if not found:
                raise CalloutError(f"{member_conf}: no server_name: is it a member config written by nats-config?")
            data = json.loads((member_conf.parent / CALLOUT_FILE).read_text(encoding="utf-8"))
            member = found.group(1)
            url = data["members"].get(member)
            if url is None:
                raise CalloutError(f"{member_conf.parent / CALLOUT_FILE}: no member {member}: export again")
            return cls(data["issuer_seed"], data["user"], data["password"], data["account"],
                       passwd or Path(data["passwd"]), member, url, data["permissions"])
        except OSError as exc:
            raise CalloutError(f"cannot read {exc.filename}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CalloutError(f"{member_conf.parent / CALLOUT_FILE}: not as nats-config writes it ({exc})") from None


class Pace:
    """Logins of one user from one address: LOGIN_BURST at once, then LOGIN_RATE a second (a token bucket).

    Every MQTT login costs a NATS member several JetStream calls, and every QoS 1 subscription a replicated
    consumer; a client reconnecting in a loop would queue everybody's logins behind its own. Held back here, it
    reconnects at the pace of the bucket while devices (each a user of its own) are not held at all.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()  # tokens, when

    def wait(self, user: str, host: str) -> float:
        """Seconds this login must wait for its turn (0: none); the turn is taken."""
        now = self._clock()
        tokens, then = self._buckets.pop((user, host), (float(LOGIN_BURST), now))
        tokens = min(float(LOGIN_BURST), tokens + (now - then) * LOGIN_RATE) - 1
        self._buckets[(user, host)] = (tokens, now)
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return max(0.0, -tokens / LOGIN_RATE)


class Callout:
    """Answers the logins of the cluster: one request at a time on the event loop, password checks on a thread."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        import nkeys

        self.settings = settings
        self._key = nkeys.from_seed(settings.issuer_seed.encode("ascii"))
        self._issuer = self._key.public_key.decode("ascii")
        self._access = Access(Rules({}, {}), settings.permissions)  # rules are the JWT's: only the client id owners
        self._passwords_mtime = -1.0
        self._passwords: Passwords | None = None
        self._throttle = Throttle()
        self._pace = Pace()
        self._clock = clock
        self._old_servers: set[str] = set()
        self._squelch = Squelch()

    def passwords(self) -> Passwords:
        """The password file, read again when it changed (`edison-broker passwd add` needs no restart here)."""
        try:
            mtime = self.settings.passwd.stat().st_mtime
        except OSError as exc:
            if self._passwords is None:
                raise CalloutError(f"cannot read the password file {self.settings.passwd}: {exc.strerror}") from None
            log.warning("cannot read the password file %s (%s): using the users read before",
                        self.settings.passwd, exc.strerror)
            return self._passwords
        if self._passwords is None:
            self._passwords = Passwords(self.settings.passwd)
        elif mtime != self._passwords_mtime:
            self._passwords.reload()
            log.info("read %s again: %d users", self.settings.passwd, len(self._passwords.users))
        self._passwords_mtime = mtime
        return self._passwords

    async def answer(self, request: bytes) -> str | None:
        """The response JWT for one request; None if the request is not one (then it is logged, never answered)."""
        try:
            login = Login.from_claims(decode(request.decode("ascii", errors="replace")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("not an authorization request, left unanswered: %s", exc)
            return None
        self._check_server(login)
        source = network_of(login.host)  # an IPv6 /64 is one address, as on the embedded broker
        passwords = self.passwords()
        if login.user and self._throttle.held(source, login.user):
            # The member waits seconds, not a guesser's queue: refused unchecked until the delay is over.
            self._squelch.warning(f"held {source} {shown(login.user)}", "refused %s unchecked: a login as that user "
                                  "from there failed lately and its delay is not over", login)
            return self._response(login, error=f"logins as {login.user} from {login.host} failed lately: try later")
        with self._throttle.checking(source, login.user or ""):
            password_ok = bool(login.user) and await passwords.check(
                login.user, login.password.encode("utf-8", "surrogatepass"), source)
            why = refusal(login, password_ok, self._access)
            if why is not None:
                passwords.failed(source)
                delays = self._throttle.failed(source, login.user or None)
        if why is None:
            # Paced only once the password is known good: a stranger sending the device's user name with wrong
            # passwords from the device's address must not use up the device's turns.
            turn = self._pace.wait(login.user, source)
            if turn <= REFUSAL_HOLD:
                await asyncio.sleep(turn)
                self._throttle.succeeded(source, login.user)
                log.info("admitted %s", login)
                return self._response(login, jwt=self._user_jwt(login))
            why = f"more than {LOGIN_RATE:g} logins a second from {login.host}"
            delays = self._throttle.failed(source, login.user or None)
        by_address, by_user = delays
        self._squelch.warning(f"refused {source} {shown(login.user)} {why.split(':')[0]}", "refused %s: %s",
                              login, why)
        # Held back like the embedded broker's refusals, within the member's wait for this answer.
        await asyncio.sleep(min(max(by_address, by_user), REFUSAL_HOLD))
        return self._response(login, error=why)

    def _check_server(self, login: Login) -> None:
        version = tuple(int(n) for n in re.findall(r"\d{1,6}", login.server_version[:40])[:2])
        wanted = tuple(int(n) for n in MIN_VERSION.split("."))
        if version and version < wanted and login.server_id not in self._old_servers:
            self._old_servers.add(login.server_id)
            log.error("member %s runs nats-server %s: the export needs %s or newer (MQTT rules differ before it)",
                      login.server_id, login.server_version, MIN_VERSION)

    def _user_jwt(self, login: Login) -> str:
        now = int(self._clock())
        rights = self.settings.permissions.get(login.user, {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}})
        claims = {
            "jti": secrets.token_hex(16), "iat": now, "iss": self._issuer, "sub": login.user_nkey,
            "name": login.user, "aud": self.settings.account,
            "nats": {"pub": rights["publish"], "sub": rights["subscribe"], "subs": -1, "data": -1, "payload": -1,
                     "allowed_connection_types": ["MQTT"], "type": "user", "version": 2},
        }
        return encode(claims, self._key.sign)

    def _response(self, login: Login, jwt: str | None = None, error: str | None = None) -> str:
        body: dict[str, Any] = {"jwt": jwt} if jwt else {"error": error}
        claims = {"jti": secrets.token_hex(16), "iat": int(self._clock()), "iss": self._issuer,
                  "sub": login.user_nkey, "aud": login.server_id,
                  "nats": {**body, "type": "authorization_response", "version": 2}}
        return encode(claims, self._key.sign)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Answer logins for the cluster through `settings.member` until `stop` is set; reconnects forever."""
    import nats
    from nats.aio.msg import Msg

    callout = Callout(settings)
    callout.passwords()  # an unreadable password file stops the start, not the first login

    pending: set[asyncio.Task[None]] = set()

    async def respond(msg: Msg) -> None:
        try:
            response = await asyncio.wait_for(callout.answer(msg.data), AUTH_TIMEOUT)
        except asyncio.TimeoutError:  # the member has given up on this login: nothing to answer
            log.warning("a login was not answered within %d s (password checks queued)", AUTH_TIMEOUT)
            return
        except Exception:  # one bad request must not end the callout: the member refuses that login on time-out
            log.exception("cannot answer a login")
            return
        if response is not None and msg.reply:
            await nc.publish(msg.reply, response.encode("ascii"))

    async def on_request(msg: Msg) -> None:
        """Each login on a task of its own: a password check or a held-back refusal must not hold the others."""
        task = asyncio.create_task(respond(msg))
        pending.add(task)
        task.add_done_callback(pending.discard)

    squelch = Squelch()

    async def on_error(exc: Exception) -> None:
        squelch.warning("error", "member %s at %s: %s", settings.member, settings.url, exc or type(exc).__name__)

    async def on_disconnected() -> None:
        log.warning("lost member %s at %s: its logins go to the other members' callouts until it is back",
                    settings.member, settings.url)

    async def on_reconnected() -> None:
        log.info("answering logins again, through %s (the member of %s or another one it announced)",
                 nc.connected_url.netloc if nc.connected_url else "?", settings.member)

    # nats-py tries the member until it answers (max_reconnect_attempts=-1), at first as after a loss
    connecting = asyncio.ensure_future(nats.connect(
        servers=[settings.url], user=settings.user, password=settings.password, name=f"edison-auth {settings.member}",
        allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT, connect_timeout=5,
        error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        return
    stopping.cancel()
    nc = connecting.result()
    await nc.subscribe(SUBJECT, queue=QUEUE, cb=on_request)
    await nc.flush()
    log.info("answering logins through member %s at %s (password file %s)", settings.member, settings.url,
             settings.passwd)
    try:
        await stop.wait()
    finally:
        if nc.is_connected:
            await nc.drain()  # answers already on their way are sent
        else:
            await nc.close()
