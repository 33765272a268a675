"""The real node on a real 3-member NATS cluster (the `nats-config` export) on 127.0.0.1.

Across members: the node on member 1, a laptop on member 2, a Home-Assistant-like
subscriber on member 3. Failover: member 1 is killed under the node while
commands flow; each is carried out exactly once (counted on the pin trace by
command id), a command queued while the node was offline survives the loss of
another member, and the killed member rejoins.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
from collections import Counter
from collections.abc import Iterator

import pytest
import trustme

from testkit.cluster import NatsCluster
from testkit.mqtt import Probe
from testkit.node import DEVICE, NodeRunner
from testkit.procs import TIMEOUT, read_trace
from testkit.tcpproxy import SilentPort
from testkit.users import USERS

SET = f"edison/{DEVICE}/led/set"
STATUS = f"edison/{DEVICE}/status"
NODE_ENV = {"MQTT_PASSWORD": USERS[DEVICE]}


def on(cluster: NatsCluster, member: int, user: str, **kwargs) -> Probe:
    return Probe(cluster.broker(member), username=user, password=USERS[user], **kwargs)


def carried(nodes: NodeRunner) -> Counter[str]:
    return Counter(c["id"] for c in read_trace(nodes.trace) if c.get("id"))


@pytest.fixture
def cluster(tmp_path, user_files) -> Iterator[NatsCluster]:
    """A cluster of the test's own: these tests kill members."""
    c = NatsCluster(tmp_path, user_files)
    yield c
    c.close()


def test_commands_state_status_and_discovery_cross_members(nats_cluster, tmp_path, user_files):
    silent = SilentPort()  # listed first: the node moves past it after the connect timeout
    nodes = NodeRunner(nats_cluster.broker(1), tmp_path, user_files[0])
    laptop = on(nats_cluster, 2, "laptop")
    ha = on(nats_cluster, 3, "watcher")
    try:
        ha.subscribe("edison/#", "homeassistant/#")
        node = nodes.start("--connect-timeout", "2", env=NODE_ENV, wait_online=ha,
                           brokers=[silent.url, *nats_cluster.urls])
        node.wait_for_line(rf"no answer from {silent.url} within 2 s \(trying {nats_cluster.url(1)} now\)")
        node.wait_for_line(rf"connected to {nats_cluster.url(1)} \(MQTT 3\.1\.1, ")
        ha.wait_for(f"homeassistant/light/{DEVICE}/led/config")
        laptop.publish(SET, json.dumps({"state": "ON", "id": "across"}))
        assert ha.result(DEVICE, "across") == {"id": "across", "output": "led", "ok": True, "state": "ON"}
        ha.wait_for(f"edison/{DEVICE}/led/state", "ON")
        late = on(nats_cluster, 3, "watcher")  # retained messages are in the cluster, not in one member
        late.subscribe("edison/#", "homeassistant/#")
        retained = {(m.topic, m.text) for m in late.barrier() if m.retain}
        assert {(STATUS, "online"), (f"edison/{DEVICE}/led/state", "ON")} <= retained
        assert any(t == f"homeassistant/light/{DEVICE}/led/config" for t, _ in retained)
        late.close()
        bridge = on(nats_cluster, 1, "bridge")  # the bridge's rights hold across members too
        bridge.subscribe("edison/+/result")
        laptop.publish(SET, json.dumps({"state": "OFF", "id": "seen-by-bridge"}))
        assert bridge.result(DEVICE, "seen-by-bridge")["state"] == "OFF"
        bridge.close()
    finally:
        nodes.stop_all()
        laptop.close()
        ha.close()
        silent.close()


def test_member_killed_under_the_node_then_a_queued_command_survives_another_loss(cluster, tmp_path, user_files):
    nodes = NodeRunner(cluster.broker(1), tmp_path, user_files[0])
    watcher = on(cluster, 3, "watcher")
    laptop = on(cluster, 2, "laptop", client_id="laptop-failover", mqtt5=False, clean_session=False)
    try:
        watcher.subscribe(STATUS)
        node = nodes.start("--keepalive", "5", env=NODE_ENV, wait_online=watcher, brokers=cluster.urls)
        node.wait_for_line(rf"connected to {cluster.url(1)} ")

        # Commands before, during and after the loss of member 1, which holds the node's connection.
        sent = [f"f{n}" for n in range(30)]
        for n, command_id in enumerate(sent):
            if n == 10:
                cluster.kill(1)
            laptop.publish(SET, json.dumps({"state": "TOGGLE", "id": command_id}))  # PUBACKed by member 2
        watcher.wait_for(STATUS, "online")  # announced again on the new member: no will came from member 1
        node.wait_for_line(rf"disconnected from {cluster.url(1)}: .*\(trying {cluster.url(2)} now\)")
        # member 2 first; if it has not answered within the node's connect timeout (JetStream still electing its
        # leaders after the loss), member 3: either way the session is resumed
        node.wait_for_line(rf"connected to ({re.escape(cluster.url(2))}|{re.escape(cluster.url(3))}) "
                           r"\(MQTT 3\.1\.1, session resumed\)")
        assert node.wait_until(lambda: set(sent) <= set(carried(nodes)), timeout=TIMEOUT)
        counts = carried(nodes)
        assert [n for n in sent if counts[n] != 1] == [], counts  # each exactly once

        # Member 1 rejoins and has what happened meanwhile.
        cluster.start(1)
        rejoined = on(cluster, 1, "watcher")
        rejoined.subscribe(STATUS)
        assert rejoined.wait_for(STATUS).text == "online"
        rejoined.close()

        # Offline, a command is queued; then member 3 dies: the command is still carried out.
        node.signal(signal.SIGTERM)
        assert node.wait(TIMEOUT) == 0
        watcher.wait_for(STATUS, "offline")
        laptop.publish(SET, json.dumps({"state": "TOGGLE", "id": "queued"}))
        watcher.close()
        cluster.kill(3)
        node = nodes.start("--keepalive", "5", env=NODE_ENV, brokers=[cluster.url(3), cluster.url(1)])
        node.wait_for_line(rf"connected to {cluster.url(1)} \(MQTT 3\.1\.1, session resumed\)")
        assert node.wait_until(lambda: carried(nodes)["queued"] == 1, timeout=TIMEOUT), carried(nodes)
    finally:
        nodes.stop_all()
        laptop.close()
        watcher.close()


def test_a_cluster_exported_with_tls_serves_mqtts_on_every_member(tmp_path, user_files):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = [tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")]
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    cluster = NatsCluster(tmp_path, user_files, tls=(paths[0], paths[1], paths[2]))
    nodes = NodeRunner(cluster.broker(1), tmp_path, user_files[0])
    watcher = on(cluster, 3, "watcher", tls_ca=paths[0])
    try:
        watcher.subscribe(STATUS)
        node = nodes.start("--ca-file", str(paths[0]), env=NODE_ENV, wait_online=watcher, brokers=cluster.urls)
        node.wait_for_line(rf"connected to {cluster.url(1)} \(MQTT 3\.1\.1, ")
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        with pytest.raises(ssl.SSLError):  # a client that does not trust the CA gets nowhere
            on(cluster, 2, "watcher", tls_ca=other)
    finally:
        nodes.stop_all()
        watcher.close()
        cluster.close()


def test_the_device_client_id_is_its_own_and_its_queued_command_survives_a_squatter(nats_cluster, tmp_path,
                                                                                  user_files):
    """The auth callout refuses another user's login with the device's client id: nats-server alone would let it
    take the session over, and with it the device's queued commands."""
    nodes = NodeRunner(nats_cluster.broker(1), tmp_path, user_files[0])
    laptop = on(nats_cluster, 2, "laptop")
    watcher = on(nats_cluster, 3, "watcher")
    try:
        watcher.subscribe(STATUS, f"edison/{DEVICE}/+/state")
        node = nodes.start(env=NODE_ENV, wait_online=watcher, brokers=nats_cluster.urls)
        for member, user, client_id in [(1, "laptop", DEVICE), (2, "stranger", DEVICE), (3, "laptop", f"{DEVICE}-x")]:
            with pytest.raises(ConnectionRefusedError, match="Not authorized"):
                on(nats_cluster, member, user, client_id=client_id, clean_session=True)
        laptop.publish(SET, json.dumps({"state": "ON", "id": "online"}))
        assert watcher.wait_for(f"edison/{DEVICE}/led/state", "ON")
        node.signal(signal.SIGTERM)
        assert node.wait(TIMEOUT) == 0
        watcher.wait_for(STATUS, "offline")
        laptop.publish(SET, json.dumps({"state": "TOGGLE", "id": "queued"}))  # PUBACKed: the device's session holds it
        with pytest.raises(ConnectionRefusedError, match="Not authorized"):
            on(nats_cluster, 1, "laptop", client_id=DEVICE, clean_session=True)  # would discard the session's queue
        nodes.start(env=NODE_ENV, wait_online=watcher, brokers=nats_cluster.urls)
        assert nodes.procs[-1].wait_until(lambda: carried(nodes)["queued"] == 1, timeout=TIMEOUT), carried(nodes)
        assert carried(nodes) == Counter({"online": 1, "queued": 1})
        assert "disconnected" not in node.output  # the squatters never ended the device's connection
        callouts = "\n".join(p.output for p in nats_cluster.callouts.values())
        assert f"client id '{DEVICE}' belongs to user {DEVICE}" in callouts
        assert USERS["laptop"] not in callouts and USERS["stranger"] not in callouts  # no password in a log
    finally:
        nodes.stop_all()
        laptop.close()
        watcher.close()


def test_logins_are_refused_while_no_callout_answers_and_any_callout_serves_every_member(cluster, tmp_path,
                                                                                       user_files):
    nodes = NodeRunner(cluster.broker(1), tmp_path, user_files[0])
    laptop = on(cluster, 2, "laptop")
    watcher = on(cluster, 3, "watcher")
    try:
        watcher.subscribe(STATUS, f"edison/{DEVICE}/result")
        nodes.start(env=NODE_ENV, wait_online=watcher, brokers=[cluster.url(1)])
        for n in cluster.numbers:
            cluster.stop_callout(n)
        with pytest.raises(ConnectionRefusedError, match="Not authorized"):
            on(cluster, 1, "watcher")
        cluster.procs[1].wait_for_line(r'authentication error - User "watcher"')
        # Whoever is logged in carries on: a command still reaches the node and is carried out once.
        laptop.publish(SET, json.dumps({"state": "ON", "id": "without-callouts"}))
        assert watcher.result(DEVICE, "without-callouts")["ok"] is True
        # One callout is enough for every member: member 3's answers the logins of member 1 through the routes.
        callout = cluster.start_callout(3)
        callout.wait_for_line(r"answering logins through member edison-nats-3")
        again = on(cluster, 1, "watcher")
        again.close()
        callout.wait_for_line(r"admitted watcher as client id \S+ from 127\.0\.0\.1")
        assert carried(nodes) == Counter({"without-callouts": 1})
    finally:
        nodes.stop_all()
        laptop.close()
        watcher.close()


def test_more_than_a_thousand_qos1_subscriptions_are_granted(tmp_path, user_files):
    """nats-server 2.15 caps a stream at 1,000 consumers unless told otherwise, and every QoS 1 subscription of a
    persistent session is one; the export sizes the limit (--fleet). One member: the limit is the same as on
    three, where each consumer is also a replicated group (their cost is in bench/fleet.py)."""
    cluster = NatsCluster(tmp_path, user_files, size=1)
    sessions = []
    try:
        for n in range(20):
            session = Probe(cluster.broker(1), client_id=f"watcher-{n}", username="watcher",
                            password=USERS["watcher"], clean_session=False)
            sessions.append(session)
            codes = session.subscribe(*(f"edison/ceiling-{n}-{k}/+/state" for k in range(55)), check=False)
            assert [c for c in codes if c.is_failure] == [], f"session {n}: {codes}"
        assert "maximum consumers limit reached" not in cluster.log()
    finally:
        for session in sessions:
            session.close()
        cluster.close()
