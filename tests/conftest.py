"""Fixtures every package's tests share: real brokers on 127.0.0.1 (the embedded one, Debian's Mosquitto, the
exported NATS cluster), secured ones with the test users, real node processes. What they are made of is in testkit/,
which the benchmarks use too."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.brokers import start_embedded, start_mosquitto
from testkit.cluster import NatsCluster
from testkit.mqtt import Broker, Probe
from testkit.node import TOPICS_YAML, NodeRunner
from testkit.procs import TIMEOUT, LogLines
from testkit.users import Secured, make_users, start_exported_mosquitto, start_secured_embedded
from tests.requires import need_mosquitto, need_nats_server


@pytest.fixture
def logs() -> Iterator[LogLines]:
    """What the node's modules log, from every thread (blinks, the announcer)."""
    handler = LogLines()
    logger = logging.getLogger("node")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def mosquitto_bin() -> str:
    return need_mosquitto()


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request, tmp_path) -> Iterator[Broker]:
    """Each behaviour test runs once on the embedded broker and once on mosquitto."""
    if request.param == "embedded":
        b = start_embedded(tmp_path)
    else:
        b = start_mosquitto(tmp_path, need_mosquitto())
    yield b
    b.proc.signal(signal.SIGINT)
    try:
        b.proc.wait(TIMEOUT)
    finally:
        b.proc.stop()


@pytest.fixture
def probe_factory(broker) -> Iterator[Callable[..., Probe]]:
    probes: list[Probe] = []

    def make(**kwargs) -> Probe:
        p = Probe(broker, **kwargs)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.close()


@pytest.fixture
def probe(probe_factory) -> Probe:
    """A client subscribed to everything of every device."""
    p = probe_factory()
    p.subscribe("edison/#")
    return p


@pytest.fixture
def topics_file(tmp_path) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(TOPICS_YAML)
    return path


@pytest.fixture
def nodes(broker, tmp_path, topics_file) -> Iterator[NodeRunner]:
    runner = NodeRunner(broker, tmp_path, topics_file)
    yield runner
    runner.stop_all()


@pytest.fixture(scope="session")
def user_files(tmp_path_factory) -> tuple[Path, Path]:
    """topics.yaml and a password file made once with `edison-broker passwd` (argon2 is slow on purpose)."""
    return make_users(tmp_path_factory.mktemp("users"))


@pytest.fixture(params=["embedded", "mosquitto", "nats"])
def secured(request, tmp_path, user_files) -> Iterator[Secured]:
    """The embedded broker, Mosquitto with the exported configuration, or the exported NATS cluster."""
    if request.param == "nats":
        cluster = request.getfixturevalue("nats_cluster")
        topics, passwd = user_files
        yield Secured(cluster.broker(1), topics, passwd, members=tuple(cluster.port(n) for n in cluster.numbers))
        return
    if request.param == "embedded":
        s = start_secured_embedded(tmp_path, user_files)
    else:  # the export gives each user one connection unless the test needs several (its access rules)
        several = request.node.get_closest_marker("several_connections_per_user") is not None
        s = start_exported_mosquitto(tmp_path, user_files, need_mosquitto(),
                                     *(("--several-connections-per-user",) if several else ()))
    yield s
    s.broker.proc.signal(signal.SIGTERM)
    try:
        assert s.broker.proc.wait(TIMEOUT) == 0
    finally:
        s.broker.proc.stop()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory, user_files) -> Iterator[NatsCluster]:
    """Three members shared by a module's tests that kill none of them (sessions and retained messages carry over)."""
    need_nats_server()
    cluster = NatsCluster(tmp_path_factory.mktemp("cluster"), user_files)
    yield cluster
    cluster.close()
