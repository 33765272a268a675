"""`edison-broker nats-config`: the files it writes and what it refuses. The cluster itself runs in
test_nats_cluster.py."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from broker import nats
from broker.access import Rules, rules
from node.config import parse
from testkit.users import TOPICS, copy_users, edison_broker


def test_mqtt_filters_become_the_subjects_the_mqtt_layer_uses():
    assert nats.subjects("edison/edison-t/+/set") == ["edison.edison-t.*.set"]
    assert nats.subjects("edison/#") == ["edison", "edison.>"]  # MQTT's a/# matches a too
    assert nats.subjects("#") == [">"]
    r = rules(parse(TOPICS))
    assert nats.permissions(r, "edison-t") == {
        "publish": {"allow": ["edison.edison-t", "edison.edison-t.>", "homeassistant.*.edison-t",
                              "homeassistant.*.edison-t.>"]},
        "subscribe": {"allow": ["edison.edison-t.*.set", "homeassistant.status"]}}
    assert nats.permissions(r, "stranger") == {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}


@pytest.mark.parametrize("topic_filter", ["edison/a.b/set", "edison//set", "/edison", "edison/$x"])
def test_a_rule_nats_cannot_express_fails_the_export(topic_filter):
    r = Rules({"odd": [topic_filter]}, {})
    with pytest.raises(nats.ExportError, match=r"user odd, subscribe rule .*has no NATS subject of its own"):
        nats.permissions(r, "odd")


def test_one_config_per_member_on_one_host_the_accounts_they_share_and_the_callouts_file(tmp_path, user_files):
    topics, passwd = copy_users(user_files, tmp_path)
    done = edison_broker("nats-config", "--config", str(topics), "--passwd", str(passwd), "--data",
                         str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--mqtt-port", "2883",
                         "--fleet", "5000")
    assert done.returncode == 0, done.stderr
    assert "user stranger has a password but no access rule" in done.stderr
    assert "MQTT on mqtt://127.0.0.1:2883, mqtt://127.0.0.1:2884, mqtt://127.0.0.1:2885" in done.stderr
    assert f"edison-broker nats-auth {tmp_path / 'out' / 'nats-1.conf'}" in done.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["authorization.conf", "nats-1.conf", "nats-2.conf", "nats-3.conf", "nats-auth.json"]
    second = (tmp_path / "out" / "nats-2.conf").read_text()
    assert 'server_name: "edison-nats-2"' in second and 'listen: "127.0.0.1:6223"' in second
    assert "@127.0.0.1:6222" in second and "@127.0.0.1:6224" in second and "@127.0.0.1:6223" not in second
    assert "stream_replicas: 3" in second and 'listen: "127.0.0.1:4223"' in second
    assert f'store_dir: "{(tmp_path / "data").resolve()}/edison-nats-2"' in second
    assert "max_ack_pending: 1024" in second and 'js_api_timeout: "10s"' in second
    auth = (tmp_path / "out" / "authorization.conf").read_text()
    # each device holds two QoS 1 subjects (its /set filter and Home Assistant's status): 2 x 5,000 x 2 + 1,000
    assert "EDISON { jetstream { max_consumers: 21000, max_streams: 16 } }" in auth
    assert '"edison-auth", password: "$2b$11$' in auth and "auth_callout" in auth and "pw-" not in auth
    callouts = json.loads((tmp_path / "out" / "nats-auth.json").read_text())
    assert callouts["passwd"] == str(passwd.resolve()) and callouts["issuer_seed"].startswith("SA")
    assert callouts["members"] == {f"edison-nats-{n}": f"nats://127.0.0.1:{4221 + n}" for n in (1, 2, 3)}
    assert callouts["permissions"]["edison-t"] == nats.permissions(rules(parse(TOPICS)), "edison-t")
    assert callouts["permissions"]["stranger"] == {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
    assert "pw-" not in json.dumps(callouts)
    for f in (tmp_path / "out").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_members_on_their_own_hosts_with_tls_and_a_single_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = nats.Cluster(nats.members(3, "127.0.0.1", 8883, 6222, 4222, ["a.example", "b.example"]),
                           tmp_path, Path("cert.pem"), Path("key.pem"))
    text = nats.member_text(cluster, cluster.members[1], "secret")
    assert 'listen: "b.example:8883"' in text and '"nats-route://route:secret@a.example:6222"' in text
    # relative paths as given on the command line, written absolute: the member starts from any directory
    assert "stream_replicas: 2" in text and f'cert_file: "{tmp_path}/cert.pem"' in text
    with pytest.raises(nats.ExportError, match="overlap"):
        nats.members(3, "127.0.0.1", 6222, 6223, 4222)
    single = nats.Cluster(nats.members(1, "127.0.0.1", 1883, 6222, 4222), tmp_path)
    assert "cluster {" not in nats.member_text(single, single.members[0], "secret")  # nats-server refuses it


def test_the_export_names_what_it_cannot_read(tmp_path, user_files):
    topics, _ = copy_users(user_files, tmp_path)
    done = edison_broker("nats-config", "--config", str(topics), "--passwd", str(tmp_path / "nope" / "passwd"),
                         "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--fleet", "0")
    assert done.returncode == 2 and "--fleet: at least one device" in done.stderr


def test_exporting_again_keeps_the_secrets_so_members_restart_one_at_a_time(tmp_path, user_files):
    topics, passwd = copy_users(user_files, tmp_path)
    args = ("nats-config", "--config", str(topics), "--passwd", str(passwd), "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"))
    assert edison_broker(*args).returncode == 0
    first = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert edison_broker(*args, "--fleet", "20000").returncode == 0
    again = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert again["nats-2.conf"] == first["nats-2.conf"] and again["nats-auth.json"] == first["nats-auth.json"]
    assert "max_consumers: 81000" in again["authorization.conf"]


def test_members_on_ipv6_addresses_are_written_as_nats_server_reads_them(tmp_path):
    cluster = nats.Cluster(nats.members(2, "::1", 1883, 6222, 4222), tmp_path)
    text = nats.member_text(cluster, cluster.members[0], "secret")
    assert 'listen: "[::1]:1883"' in text and '"nats-route://route:secret@[::1]:6223"' in text
