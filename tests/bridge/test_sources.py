"""What every source shares: never lost across a broker outage and a restart; several networks in one process."""

from __future__ import annotations

import json
import re
import signal

import pytest

from bridge.sources import Skipped, split_lines
from testkit.mqtt import Probe
from testkit.standins.base import CLOSE
from testkit.standins.jetstream import post_event
from testkit.standins.mastodon import TOKEN as MASTODON_TOKEN
from testkit.standins.xstream import TOKEN as X_TOKEN
from testkit.standins.xstream import post
from testkit.tcpproxy import TcpProxy
from tests.bridge.rig import (
    KYONE_DID,
    NETWORKS_YAML,
    SET_TOPIC,
    X_ALLOWED,
    BridgeRunner,
    bluesky_args,
    mastodon_args,
    set_ids,
)

ENV = {"X_BEARER_TOKEN": X_TOKEN, "MASTODON_ACCESS_TOKEN": MASTODON_TOKEN}


class Networks:
    """The three stand-ins, and how to make an allowed account post on each."""

    def __init__(self, xserver, jetstream, resolver, mastodon) -> None:
        self.xserver, self.jetstream, self.resolver, self.mastodon = xserver, jetstream, resolver, mastodon

    def args(self, network: str) -> list[str]:
        return {"x": ["--source", "x", "--x-api-url", self.xserver.url],
                "bluesky": bluesky_args(self.jetstream, self.resolver),
                "mastodon": mastodon_args(self.mastodon)}[network]

    def wait_streaming(self, network: str, count: int = 1) -> None:
        {"x": self.xserver.wait_streaming, "bluesky": self.jetstream.wait_subscribed,
         "mastodon": self.mastodon.wait_streaming}[network](count)

    def post(self, network: str, key: str) -> str:
        """An allowed account posts the trigger; the id of its command."""
        if network == "x":
            self.xserver.push(post(key, "L Chika", X_ALLOWED, "k_yone"))
            return f"x:{key}"
        if network == "bluesky":
            self.jetstream.publish(post_event(KYONE_DID, key))
            return f"bsky:{KYONE_DID}/{key}"
        status = self.mastodon.post("kyone")
        return f"mastodon:{self.mastodon.host}/{status['id']}"


@pytest.fixture
def networks(xserver, jetstream, resolver, mastodon) -> Networks:
    mastodon.following.add("201")
    return Networks(xserver, jetstream, resolver, mastodon)


@pytest.mark.parametrize("network", ["x", "bluesky", "mastodon"])
def test_a_post_while_the_broker_is_down_survives_a_restart_and_is_published_once(network, networks, mosquitto,
                                                                                  listener, tmp_path):
    runner = BridgeRunner(tmp_path, NETWORKS_YAML, networks.args(network), ENV)
    proxy = TcpProxy(mosquitto.port)
    proxy.up()
    try:
        first = runner.start(f"mqtt://127.0.0.1:{proxy.port}")
        networks.wait_streaming(network)
        first.wait_for_line(r"connected to mqtt://")
        proxy.down()
        first.wait_for_line(r"disconnected from mqtt://")
        command_id = networks.post(network, "7001")
        first.wait_for_line(rf"broker unreachable: command {re.escape(command_id)} for {SET_TOPIC} kept \(1 pending\)")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
        assert "1 command(s) not yet acknowledged by the broker are kept in" in first.output

        proxy.up()
        second = runner.start(f"mqtt://127.0.0.1:{proxy.port}")
        second.wait_for_line(r"1 command\(s\) kept from an earlier run in .*: publishing when the broker is reachable")
        listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id)
        networks.wait_streaming(network, 2)  # Bluesky replays the post and Mastodon backfills it: duplicates
        later = networks.post(network, "7002")
        listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == later)
        listener.barrier()
        assert set_ids(listener) == [command_id, later]  # sent 2, received 2: none lost, none doubled
    finally:
        runner.stop_all()
        proxy.down()


def test_one_process_follows_several_networks_each_on_its_own_connection(networks, mosquitto, listener: Probe,
                                                                          tmp_path):
    runner = BridgeRunner(tmp_path, NETWORKS_YAML, [*networks.args("x"), *networks.args("bluesky"),
                                                    *networks.args("mastodon")], ENV)
    try:
        bridge = runner.start(mosquitto.url)
        for network in ("x", "bluesky", "mastodon"):
            networks.wait_streaming(network)
        bridge.wait_for_line(r"connected to mqtt://")
        ids = [networks.post(network, f"800{i}") for i, network in enumerate(("x", "bluesky", "mastodon"))]
        remaining = set(ids)
        while remaining:  # in whatever order the networks deliver
            remaining.discard(listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] in remaining).json()["id"])
        for network in ("x", "bluesky", "mastodon"):
            bridge.wait_for_line(rf"INFO bridge.{network}: post .* accepted")

        networks.mastodon.push(CLOSE)  # one network's connection drops: only its source reconnects
        networks.mastodon.wait_streaming(2)
        again = networks.post("bluesky", "8003")
        listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == again)
        assert len(networks.jetstream.queries) == 1 and len(networks.xserver.attempts) == 1
        assert re.search(r"WARNING bridge.mastodon: stream: the server closed the stream .*reconnecting in 0 s",
                         bridge.output)
        listener.barrier()
        assert sorted(set_ids(listener)) == sorted([*ids, again])
    finally:
        runner.stop_all()


# -- splitting a stream into lines -----------------------------------------------------------------------------------

def _lines(chunks, max_line=1 << 20):
    return list(split_lines(iter(chunks), max_line))


def test_lines_are_split_on_bytes_across_chunks_and_u2028_stays_inside_a_post():
    text = json.dumps({"data": {"text": "a\u2028b\u0085c"}}, ensure_ascii=False).encode()
    chunks = [text[:5], text[5:] + b"\r", b"\n\r\n", b"{}\r\n"]
    assert _lines(chunks) == [text, b"", b"{}"]


def test_oversize_and_truncated_lines_are_reported_and_the_next_line_survives():
    out = _lines([b"x" * 30, b"y" * 30, b"\r\n{}\r\n", b'{"data":'], max_line=40)
    assert isinstance(out[0], Skipped) and "over the 40-byte limit" in out[0].reason
    assert out[1] == b"{}"
    assert isinstance(out[2], Skipped) and "ended inside a line" in out[2].reason
