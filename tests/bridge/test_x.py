"""edison-bridge as a process, between the local X stream stand-in and real brokers (and the real node)."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator

import pytest

from bridge.sources.x import XError, build_rules, parse_post
from bridge.state import Outbox
from node import __version__
from testkit.brokers import start_mosquitto
from testkit.mqtt import Probe
from testkit.node import DEVICE, TOPICS_YAML, NodeRunner
from testkit.procs import TIMEOUT, Proc, free_port, python_cmd, read_trace
from testkit.standins.base import CLOSE, STALL
from testkit.standins.xstream import (
    BODY_401,
    BODY_429,
    BODY_429_CAP,
    BODY_429_CONNECTIONS,
    BODY_503,
    OPERATIONAL_DISCONNECT,
    RESET,
    TOKEN,
    post,
)
from testkit.tcpproxy import TcpProxy
from tests.bridge.rig import SCALE, SET_TOPIC, STALL_TIMEOUT, BridgeRunner, delays, set_ids
from tests.bridge.rig import X_ALLOWED as ALLOWED
from tests.bridge.rig import X_STRANGER as STRANGER

BRIDGE_YAML = TOPICS_YAML + f"""\
bridge:
  allow: [k_yone]
  triggers:
    - {{phrase: L Chika, device: {DEVICE}, output: led, command: BLINK}}
  stall_timeout: {STALL_TIMEOUT}
"""


def allowed_post(post_id: str, text: str = "L Chika", **kwargs) -> dict:
    return post(post_id, text, ALLOWED, "k_yone", **kwargs)


@pytest.fixture
def bridges(tmp_path, xserver) -> Iterator[BridgeRunner]:
    runner = BridgeRunner(tmp_path, BRIDGE_YAML, ["--x-api-url", xserver.url], {"X_BEARER_TOKEN": TOKEN})
    yield runner
    runner.stop_all()


def test_allowed_trigger_blinks_the_pin(broker, probe, nodes, bridges, xserver):
    nodes.start(wait_online=probe)
    bridge = bridges.start(broker.url)
    xserver.wait_streaming()
    xserver.push(allowed_post("2001"))
    command = probe.wait_for(SET_TOPIC)
    body = command.json()
    assert body["effect"] == "blink" and body["id"] == "x:2001"
    assert body["source"] == {"via": "x", "account_id": ALLOWED, "post_id": "2001", "username": "k_yone"}
    assert body["expires"] > time.time()
    if broker.mqtt5:
        assert 0 < command.properties.MessageExpiryInterval <= 300
        assert ("x_username", "k_yone") in command.properties.UserProperty
    assert probe.result(DEVICE, "x:2001")["ok"] is True
    for state in ["ON", "OFF"] * 3:  # the output's blink pattern: 3 times on and off
        probe.wait_for(f"edison/{DEVICE}/led/state", state)
    assert [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20] == [1, 0] * 3
    bridge.wait_for_line(r"post 2001 from @k_yone \(1001\) accepted: 'L Chika' -> edison/edison-t/led/set")


def test_strangers_retweets_other_text_and_duplicates_do_nothing(mosquitto, listener, bridges, xserver):
    bridge = bridges.start(mosquitto.url)
    xserver.wait_streaming()
    bridge.wait_for_line(r"connected to mqtt://")
    xserver.push(post("3001", "L Chika", STRANGER, "stranger"), allowed_post("3002", kind="retweeted"),
                 allowed_post("3003", "L Chika!!"), allowed_post("3004"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:3004")
    for pattern in (r"post 3001 from @stranger \(666\) ignored: not allowed", r"post 3002 .* ignored: retweet",
                    r"post 3003 .* ignored: no trigger"):
        bridge.wait_for_line(pattern)
    xserver.push(OPERATIONAL_DISCONNECT, CLOSE)  # X ends the stream, then delivers 3004 again
    xserver.wait_streaming(2)
    xserver.push(allowed_post("3004"), allowed_post("3005"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:3005")
    bridge.wait_for_line(r"post 3004 .* ignored: duplicate")
    bridge.wait_for_line(r"X ended the stream: operational-disconnect.*reconnecting in 0 s")
    assert set_ids(listener) == ["x:3004", "x:3005"]


def test_usernames_become_ids_and_only_own_stale_rules_are_deleted(mosquitto, bridges, xserver):
    foreign = xserver.add_rule("cats has:images", "another-app")
    untagged = xserver.add_rule("from:999", None)
    xserver.add_rule("(from:999) -is:retweet", "edison-bridge")
    bridge = bridges.start(mosquitto.url)
    xserver.wait_streaming()
    bridge.wait_for_line(r"account @k_yone is id 1001")
    assert ("GET", "/2/users/by", {"usernames": ["k_yone"]}) in xserver.requests
    assert sorted((r["value"], r.get("tag")) for r in xserver.rules.values()) == [
        ("(from:1001) -is:retweet", "edison-bridge"), ("cats has:images", "another-app"), ("from:999", None)]
    assert foreign in xserver.rules and untagged in xserver.rules
    stream_query = next(q for m, path, q in xserver.requests if path == "/2/tweets/search/stream")
    assert stream_query["tweet.fields"] == ["author_id,created_at,referenced_tweets,note_tweet"]
    assert stream_query["expansions"] == ["author_id"] and stream_query["user.fields"] == ["username"]
    assert xserver.user_agents == {f"edison-bridge/{__version__}"}


def test_unknown_account_stops_the_start_naming_it(mosquitto, bridges, xserver):
    bridges.config.write_text(BRIDGE_YAML.replace("allow: [k_yone]", "allow: [k_yone, nobody_here]"))
    bridge = bridges.start(mosquitto.url)
    assert bridge.wait() == 2
    assert "unknown X account(s) in bridge.allow: nobody_here" in bridge.output


@pytest.mark.parametrize("where", ["lookup", "stream"])
def test_refused_token_exits_non_zero(mosquitto, bridges, xserver, where):
    if where == "lookup":
        bridge = bridges.start(mosquitto.url, env={"X_BEARER_TOKEN": "wrong"})
    else:
        xserver.plan((401, BODY_401))
        bridge = bridges.start(mosquitto.url)
    assert bridge.wait() == 3
    assert re.search(r"X refused the bearer token \(HTTP 401 Unauthorized", bridge.output)
    assert "wrong" not in bridge.output and TOKEN not in bridge.output


def test_faults_follow_x_reconnect_schedule(mosquitto, listener, bridges, xserver):
    xserver.plan((503, BODY_503), (503, BODY_503), (503, BODY_503), (429, BODY_429), (429, BODY_429),
                 None, None, None)
    bridge = bridges.start(mosquitto.url)
    xserver.wait_streaming()
    expected = [5, 10, 20, 60, 120, 0.25, 0.5, 0.75]  # HTTP: 5 s doubling; 429: 60 s doubling; network: +250 ms
    assert delays(bridge) == pytest.approx([d * SCALE for d in expected])
    gaps = [b[0] - a[0] for a, b in zip(xserver.attempts, xserver.attempts[1:], strict=False)]
    assert all(gap >= d * SCALE * 0.9 for gap, d in zip(gaps, expected, strict=False)), gaps

    # In-stream error: reconnect at once. Stall (no keep-alive for stall_timeout): drop and reconnect.
    xserver.push(OPERATIONAL_DISCONNECT, CLOSE)
    xserver.wait_streaming(2)
    xserver.push(STALL)
    xserver.wait_streaming(3, timeout=STALL_TIMEOUT + TIMEOUT)
    bridge.wait_for_line(rf"stalled: no data or keep-alive for {STALL_TIMEOUT:g} s after .*; reconnecting in 0 s")
    # Rules gone (409 on connect): sync them again, reconnect with the HTTP back-off (reset by the last 200).
    xserver.rules.clear()
    xserver.push(CLOSE)
    xserver.wait_streaming(4)
    bridge.wait_for_line(r"no stream rules \(HTTP 409 Conflict: You must define rules.*reconnecting in 0.05 s")
    assert [r["value"] for r in xserver.rules.values()] == ["(from:1001) -is:retweet"]
    xserver.push(allowed_post("5001"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:5001")


def test_usage_cap_waits_long_and_sigterm_still_exits_promptly(mosquitto, bridges, xserver):
    xserver.plan((429, BODY_429_CAP))
    bridge = bridges.start(mosquitto.url)
    bridge.wait_for_line(r"X MONTHLY USAGE CAP REACHED")
    bridge.wait_for_line(rf"usage cap .*reconnecting in {3600 * SCALE:g} s")
    started = time.monotonic()
    bridge.signal(signal.SIGTERM)
    assert bridge.wait() == 0
    assert time.monotonic() - started < 5


def test_bad_lines_are_skipped_without_losing_the_connection(mosquitto, listener, bridges, xserver):
    bridge = bridges.start(mosquitto.url)
    xserver.wait_streaming()
    xserver.push(b"x" * ((1 << 20) + 100) + b"\r\n", b"not json\r\n", b"[1,2]\r\n",
                 allowed_post("6001", text="L Chika \u2028"))  # U+2028 inside a post must not split the line
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:6001")
    bridge.wait_for_line(r"skipped a stream line: line of 1048678 bytes is over the 1048576-byte limit")
    bridge.wait_for_line(r"skipped a stream line that is not JSON")
    assert len(xserver.attempts) == 1
    xserver.push(b'{"data":{"id":"6002","text":"L Ch', CLOSE)  # truncated before a clean end of stream
    xserver.wait_streaming(2)
    bridge.wait_for_line(r"stream ended inside a line \(33 bytes")
    xserver.push(b'{"data":{"id":"6003"', RESET)  # TCP reset mid-line
    xserver.wait_streaming(3)
    xserver.push(allowed_post("6004"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:6004")
    assert set_ids(listener) == ["x:6001", "x:6004"]


def test_post_while_broker_unreachable_is_published_when_it_returns(mosquitto, listener, bridges, xserver):
    proxy = TcpProxy(mosquitto.port)
    proxy.up()
    try:
        bridge = bridges.start(f"mqtt://127.0.0.1:{proxy.port}")
        xserver.wait_streaming()
        bridge.wait_for_line(r"connected to mqtt://")
        proxy.down()
        bridge.wait_for_line(r"disconnected from mqtt://")
        xserver.push(allowed_post("7001"))
        bridge.wait_for_line(r"broker unreachable: command x:7001 .* kept \(1 pending\)")
        proxy.up()
        listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:7001", timeout=TIMEOUT + 30)
    finally:
        proxy.down()


def test_restarted_bridge_does_not_act_twice(mosquitto, listener, bridges, xserver):
    first = bridges.start(mosquitto.url)
    xserver.wait_streaming()
    xserver.push(allowed_post("8001"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:8001")
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert time.monotonic() - started < 5
    second = bridges.start(mosquitto.url)
    second.wait_for_line(r"1 post id\(s\) already acted on")
    xserver.wait_streaming(2)
    xserver.push(allowed_post("8001"), allowed_post("8002"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:8002")
    second.wait_for_line(r"post 8001 .* ignored: duplicate")
    assert set_ids(listener) == ["x:8001", "x:8002"]


def test_stdin_source_from_a_shell_pipe(mosquitto, listener, tmp_path, bridges):
    bridges.config.write_text(BRIDGE_YAML + "  rate_limit: 1\n")
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps(p) + "\n" for p in (
        post("9001", "L Chika", STRANGER, "stranger"), allowed_post("9002", "l chika"),
        allowed_post("9003"), allowed_post("9004", created_at="2020-01-01T00:00:00.000Z"))))
    command = " ".join(python_cmd("bridge", "--source", "stdin", "--config", str(bridges.config),
                                  "--broker", mosquitto.url, "--state", str(tmp_path / "stdin-state")))
    proc = Proc(["sh", "-c", f"cat {posts} | {command}"], tmp_path / "stdin.log", env={"X_BEARER_TOKEN": ""})
    assert proc.wait() == 0, proc.output
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == "x:9002")
    assert "post 9001 from @stranger (666) ignored: not allowed" in proc.output
    assert re.search(r"post 9003 .* ignored: rate-limited", proc.output)
    assert re.search(r"post 9004 .* ignored: expired", proc.output)
    assert set_ids(listener) == ["x:9002"]


def test_stdin_post_while_the_broker_is_down_is_published_by_the_next_run(tmp_path, bridges, mosquitto_bin):
    """Regression: the post was recorded as acted on, the command lost with the process, the post then a duplicate."""
    port = free_port()
    posts = tmp_path / "posts.jsonl"
    posts.write_text(json.dumps(allowed_post("9101")) + "\n")

    def run_bridge(name: str) -> Proc:
        command = " ".join(python_cmd("bridge", "--source", "stdin", "--config", str(bridges.config),
                                      "--broker", f"mqtt://127.0.0.1:{port}", "--state", str(bridges.state),
                                      "--drain-timeout", "0.3"))
        return Proc(["sh", "-c", f"{command} < {posts}"], tmp_path / f"{name}.log", env={"MQTT_USERNAME": "bridge"})

    first = run_bridge("down")
    assert first.wait() == 1, first.output
    assert re.search(r"not connected to the broker yet: command x:9101 for edison/edison-t/led/set kept", first.output)
    assert re.search(r"1 command\(s\) not yet acknowledged by the broker are kept in .*pending-commands.jsonl",
                     first.output)

    broker = start_mosquitto(tmp_path, mosquitto_bin, port=port)
    listener = Probe(broker)
    nodes = NodeRunner(broker, tmp_path, bridges.config)
    try:
        listener.subscribe("edison/#")
        nodes.start(wait_online=listener)
        second = run_bridge("up")  # the same post again, as a user would retry
        assert second.wait() == 0, second.output
        assert "post 9101 from @k_yone (1001) ignored: duplicate" in second.output
        assert "broker unreachable" not in second.output  # it was up all along: the command waited for the connection
        assert listener.result(DEVICE, "x:9101")["ok"] is True
        for state in ["ON", "OFF"] * 3:
            listener.wait_for(f"edison/{DEVICE}/led/state", state)
        listener.barrier()
        assert set_ids(listener) == ["x:9101"]
        assert [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20] == [1, 0] * 3
        assert len(Outbox(bridges.state)) == 0  # nothing left for a third run to send again
    finally:
        nodes.stop_all()
        listener.close()
        broker.proc.stop()


def test_the_bridge_moves_to_the_next_broker_when_the_first_is_down(mosquitto, listener, tmp_path, bridges):
    posts = tmp_path / "posts.jsonl"
    posts.write_text(json.dumps(allowed_post("9101")) + "\n")
    down = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    command = " ".join(python_cmd("bridge", "--source", "stdin", "--config", str(bridges.config),
                                  "--broker", down, "--broker", mosquitto.url, "--state", str(tmp_path / "state")))
    proc = Proc(["sh", "-c", f"cat {posts} | {command}"], tmp_path / "stdin.log", env={"X_BEARER_TOKEN": ""})
    assert proc.wait() == 0, proc.output
    assert set_ids(listener) == ["x:9101"]
    assert f"cannot reach {down}" in proc.output


# -- posts, rules and errors as X sends them, without a process ------------------------------------------------------

def test_long_post_uses_note_tweet_text_and_username_comes_from_the_author_not_the_first_user():
    message = post("9", "L Chi…", "1001", "k_yone", kind="quoted", note="L Chika")
    parsed = parse_post(message)
    assert parsed.text == "L Chika" and parsed.author == "k_yone" and parsed.quote


def test_rules_use_ids_and_split_to_fit_the_length_limit():
    ids = [str(10**18 + i) for i in range(40)]
    rules = build_rules(ids, 512)
    assert len(rules) > 1 and all(len(r) <= 512 and r.endswith(") -is:retweet") for r in rules)
    assert sorted(i for r in rules for i in r[1:r.index(")")].replace("from:", "").split(" OR ")) == sorted(ids)
    assert build_rules(["1001"], 512) == ["(from:1001) -is:retweet"]
    with pytest.raises(ValueError, match="too short"):
        build_rules(ids, 20)


def test_error_kinds_from_x_problem_bodies():
    assert XError(429, BODY_429).kind == "too-many"
    assert XError(429, BODY_429_CONNECTIONS).kind == "too-many"
    assert XError(429, BODY_429_CAP).kind == "usage-cap"
    assert XError(403, {}).kind == "auth" and XError(503, "oops").kind == "http"
