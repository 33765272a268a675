"""The bridge's tests run against a Mosquitto of their own with a listener, and the local stand-in of each network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.brokers import start_mosquitto
from testkit.mqtt import Broker, Probe
from testkit.standins.jetstream import HandleResolver, JetstreamServer
from testkit.standins.mastodon import TOKEN as MASTODON_TOKEN
from testkit.standins.mastodon import MastodonServer
from testkit.standins.xstream import XStreamServer
from tests.bridge.rig import (
    KYONE_DID,
    KYONE_HANDLE,
    MASTODON_ACCOUNTS,
    NETWORKS_YAML,
    STRANGER_DID,
    X_ALLOWED,
    X_STRANGER,
    BridgeRunner,
    bluesky_args,
    mastodon_args,
)
from tests.requires import need_mosquitto


@pytest.fixture
def mosquitto(tmp_path) -> Iterator[Broker]:
    """One MQTT 5 broker for the tests whose subject is a network's side."""
    broker = start_mosquitto(tmp_path, need_mosquitto())
    yield broker
    broker.proc.stop()


@pytest.fixture
def listener(mosquitto) -> Iterator[Probe]:
    probe = Probe(mosquitto)
    probe.subscribe("edison/#")
    yield probe
    probe.close()


@pytest.fixture
def xserver() -> Iterator[XStreamServer]:
    server = XStreamServer({"k_yone": X_ALLOWED, "stranger": X_STRANGER}, keepalive=0.3).start()
    yield server
    server.stop()


@pytest.fixture
def jetstream() -> Iterator[JetstreamServer]:
    server = JetstreamServer().start()
    yield server
    server.stop()


@pytest.fixture
def resolver() -> Iterator[HandleResolver]:
    server = HandleResolver({KYONE_HANDLE: KYONE_DID, "stranger.bsky.social": STRANGER_DID})
    yield server
    server.stop()


@pytest.fixture
def mastodon() -> Iterator[MastodonServer]:
    server = MastodonServer(MASTODON_ACCOUNTS)
    yield server
    server.stop()


@pytest.fixture
def bluesky_bridges(tmp_path, jetstream, resolver) -> Iterator[BridgeRunner]:
    runner = BridgeRunner(tmp_path, NETWORKS_YAML, bluesky_args(jetstream, resolver), {})
    yield runner
    runner.stop_all()


@pytest.fixture
def mastodon_bridges(tmp_path, mastodon) -> Iterator[BridgeRunner]:
    runner = BridgeRunner(tmp_path, NETWORKS_YAML, mastodon_args(mastodon), {"MASTODON_ACCESS_TOKEN": MASTODON_TOKEN})
    yield runner
    runner.stop_all()
