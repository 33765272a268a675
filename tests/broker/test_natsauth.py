"""The NATS cluster's auth callout without a server: its JWTs, its rules, its answers and its start.

The callout answering real members is in test_nats_cluster.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from pathlib import Path

import nacl.signing
import nkeys
import pytest

from broker import natsauth
from broker.login import FIRST_DELAY
from testkit.users import USERS, copy_users, edison_broker

SERVER_ID = "NSERVERIDNOTCHECKEDHERE"


@pytest.fixture
def exported(tmp_path, user_files) -> Path:
    topics, passwd = copy_users(user_files, tmp_path)
    done = edison_broker("nats-config", "--config", str(topics), "--passwd", str(passwd), "--data",
                         str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "out" / "nats-2.conf"


def request(user: str, password: str, client_id: str, kind: str = "mqtt", version: str = "2.15.1") -> bytes:
    """An authorization request as a member sends it, signed with a server key of its own."""
    server = nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_SERVER))
    user_key = nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
    claims = {"jti": "x", "iat": int(time.time()), "iss": server.public_key.decode(), "sub": "A",
              "aud": natsauth.REQUEST_AUDIENCE, "exp": int(time.time()) + 5,
              "nats": {"server_id": {"name": "edison-nats-2", "host": "127.0.0.1", "id": SERVER_ID, "version": version},
                       "user_nkey": user_key.public_key.decode(),
                       "client_info": {"host": "192.0.2.7", "id": 9, "user": user, "kind": "Client", "type": kind,
                                       "mqtt_id": client_id},
                       "connect_opts": {"user": user, "pass": password, "protocol": 0},
                       "type": "authorization_request", "version": 2}}
    return natsauth.encode(claims, server.sign).encode()


def verified(token: str, issuer: str) -> dict:
    """The claims of a JWT whose ed25519 signature is the issuer's (checked here with PyNaCl, not the callout)."""
    head, body, signature = token.split(".")
    raw = base64.b32decode(issuer + "=" * (-len(issuer) % 8))[1:-2]  # prefix byte, key, CRC-16
    nacl.signing.VerifyKey(raw).verify(f"{head}.{body}".encode(), base64.urlsafe_b64decode(signature + "=="))
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {"typ": "JWT", "alg": "ed25519-nkey"}
    return natsauth.decode(token)


def issuer(callout: natsauth.Callout) -> str:
    return nkeys.from_seed(callout.settings.issuer_seed.encode()).public_key.decode()


def answer(callout: natsauth.Callout, req: bytes) -> dict:
    token = asyncio.run(callout.answer(req))
    assert token is not None
    return verified(token, issuer(callout))


@pytest.fixture
def callout(exported) -> natsauth.Callout:
    return natsauth.Callout(natsauth.Settings.load(exported))


def test_a_device_is_placed_in_the_account_with_its_rules_and_mqtt_only(callout):
    req = request("edison-t", USERS["edison-t"], "edison-t")
    response = answer(callout, req)
    asked = natsauth.decode(req.decode())
    assert response["sub"] == asked["nats"]["user_nkey"] and response["aud"] == SERVER_ID
    assert response["nats"]["type"] == "authorization_response" and "error" not in response["nats"]
    user = verified(response["nats"]["jwt"], issuer(callout))
    assert user["sub"] == asked["nats"]["user_nkey"] and user["aud"] == "EDISON" and user["name"] == "edison-t"
    rights = user["nats"]
    assert rights["allowed_connection_types"] == ["MQTT"] and rights["type"] == "user"
    assert rights["sub"] == {"allow": ["edison.edison-t.*.set", "homeassistant.status"]}
    assert "edison.edison-t.>" in rights["pub"]["allow"]


@pytest.mark.parametrize("user,password,client_id,kind,why", [
    ("laptop", USERS["laptop"], "edison-t", "mqtt", "client id 'edison-t' belongs to user edison-t"),
    ("stranger", USERS["stranger"], "edison-t-2", "mqtt", "client id 'edison-t-2' belongs to user edison-t"),
    ("edison-u", USERS["edison-u"], "edison-t", "mqtt", "client id 'edison-t' belongs to user edison-t"),
    ("laptop", "hunter2-guess", "laptop-1", "mqtt", "wrong user name or password"),
    ("nobody", "pw", "nobody", "mqtt", "wrong user name or password"),
    ("", "", "anon", "mqtt", "wrong user name or password"),
    ("laptop", USERS["laptop"], "", "nats", "only MQTT clients may log in"),
])
def test_refusals_say_why_and_name_no_password(callout, caplog, user, password, client_id, kind, why):
    response = answer(callout, request(user, password, client_id, kind))
    assert response["nats"]["error"] == why and "jwt" not in response["nats"]
    assert why in caplog.text and (not password or password not in caplog.text)


@pytest.mark.parametrize("user,client_id", [("laptop", "laptop"), ("laptop", "laptop-phone"), ("laptop", "x1"),
                                            ("edison-t", "edison-t"), ("stranger", "stranger-7")])
def test_client_ids_nobody_else_owns_are_free(callout, user, client_id):
    assert "jwt" in answer(callout, request(user, USERS[user], client_id))["nats"]


def test_a_user_added_later_logs_in_without_a_restart_and_a_changed_password_is_checked_again(callout, exported):
    passwd = callout.settings.passwd
    assert "error" in answer(callout, request("late", "late-pw", "late"))["nats"]
    assert edison_broker("passwd", "--passwd", str(passwd), "add", "late", "--stdin",
                         stdin="late-pw\n").returncode == 0
    assert "jwt" in answer(callout, request("late", "late-pw", "late"))["nats"]
    assert edison_broker("passwd", "--passwd", str(passwd), "add", "late", "--stdin",
                         stdin="changed\n").returncode == 0
    assert "error" in answer(callout, request("late", "late-pw", "late"))["nats"]  # the remembered one is gone


def test_what_is_not_a_request_is_logged_and_left_unanswered(callout, caplog):
    for junk in (b"", b"not a jwt", b"a.b.c", b"e30.e30.e30"):
        assert asyncio.run(callout.answer(junk)) is None
    assert "not an authorization request, left unanswered" in caplog.text


def test_an_old_member_is_named_once(callout, caplog):
    for _ in range(2):
        answer(callout, request("laptop", USERS["laptop"], "laptop", version="2.10.4"))
    assert caplog.text.count("runs nats-server 2.10.4: the export needs 2.14 or newer") == 1


def test_the_callout_refuses_to_start_on_what_it_cannot_use(tmp_path, exported):
    missing = edison_broker("nats-auth", str(tmp_path / "nats-9.conf"))
    assert missing.returncode == 2 and f"cannot read {tmp_path / 'nats-9.conf'}" in missing.stderr
    no_file = edison_broker("nats-auth", str(exported), "--passwd", str(tmp_path / "gone"))
    assert no_file.returncode == 2 and f"cannot read the password file {tmp_path / 'gone'}" in no_file.stderr
    (exported.parent / "nats-auth.json").write_text("{}")
    broken = edison_broker("nats-auth", str(exported))
    assert broken.returncode == 2 and "nats-auth.json: not as nats-config writes it" in broken.stderr


def test_one_user_from_one_address_is_paced_and_nobody_else_waits_for_it():
    now = [0.0]
    pace = natsauth.Pace(lambda: now[0])
    assert [pace.wait("churner", "192.0.2.7") for _ in range(natsauth.LOGIN_BURST)] == [0.0] * natsauth.LOGIN_BURST
    assert pace.wait("churner", "192.0.2.7") == pytest.approx(1 / natsauth.LOGIN_RATE)
    assert pace.wait("churner", "192.0.2.8") == 0.0 and pace.wait("edison-t", "192.0.2.7") == 0.0
    now[0] += 10.0  # the bucket fills again, up to the burst
    assert [pace.wait("churner", "192.0.2.7") for _ in range(natsauth.LOGIN_BURST)] == [0.0] * natsauth.LOGIN_BURST


def test_wrong_passwords_with_the_device_name_are_checked_once_per_delay_and_use_up_no_turns(callout, monkeypatch):
    """A stranger behind the device's own address, sending its user name with wrong passwords as fast as it can: one
    guess per delay is checked, the others are refused unchecked; once the delay is over the device logs in, its
    turns untouched (only logins whose password is good are paced)."""
    monkeypatch.setattr(natsauth, "REFUSAL_HOLD", 0.0)  # refusals are held back: not what this test is about
    now = [1000.0]
    monkeypatch.setattr(callout._throttle, "_clock", lambda: now[0])
    errors = [answer(callout, request("edison-t", f"guess-{n}", "edison-t"))["nats"]["error"]
              for n in range(natsauth.LOGIN_BURST + 5)]
    assert "failed lately" not in errors[0] and all("failed lately" in e for e in errors[1:]), errors[:3]
    assert "error" in answer(callout, request("edison-t", USERS["edison-t"], "edison-t"))["nats"]  # still held
    now[0] += FIRST_DELAY  # the one checked guess's delay
    assert "jwt" in answer(callout, request("edison-t", USERS["edison-t"], "edison-t"))["nats"]
