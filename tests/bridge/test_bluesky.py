"""edison-bridge --source bluesky as a process, between a local Jetstream and real brokers (and the real node)."""

from __future__ import annotations

import json
import re
import signal
from typing import Any

import pytest

from bridge.matching import Post
from bridge.sources.bluesky import parse_commit, subscribe_url
from testkit.node import DEVICE
from testkit.procs import TIMEOUT, free_port, read_trace
from testkit.standins.jetstream import DROP, identity_event, now_us, post_event
from testkit.tcpproxy import TcpProxy
from tests.bridge.rig import (
    KYONE_DID,
    KYONE_HANDLE,
    NETWORKS_YAML,
    SCALE,
    SET_TOPIC,
    STALL_TIMEOUT,
    STRANGER_DID,
    BridgeRunner,
    bluesky_args,
    delays,
    set_ids,
)

POST = "app.bsky.feed.post"


def accepted(rkey: str) -> str:
    return rf"bridge.bluesky: post {rkey} from @{re.escape(KYONE_HANDLE)} \({KYONE_DID}\) accepted"


def test_allowed_post_blinks_the_led(broker, probe, nodes, bluesky_bridges, jetstream, resolver):
    nodes.start(wait_online=probe)
    bridge = bluesky_bridges.start(broker.url)
    jetstream.wait_subscribed()
    query = jetstream.queries[0]
    assert query["wantedCollections"] == [POST] and query["wantedDids"] == [KYONE_DID]
    # A first run starts from now (5 s before, as every resume), so a post made after any later stop is replayed.
    assert 0 < now_us() - int(query["cursor"][0]) < 5_000_000 + TIMEOUT * 1_000_000
    assert resolver.requests == [KYONE_HANDLE]
    jetstream.publish(post_event(KYONE_DID, "3l3qo2vuowo2b", "l chika"))
    command = probe.wait_for(SET_TOPIC)
    body = command.json()
    assert body["effect"] == "blink" and body["id"] == f"bsky:{KYONE_DID}/3l3qo2vuowo2b"
    assert body["source"] == {"via": "bluesky", "did": KYONE_DID, "handle": KYONE_HANDLE,
                              "uri": f"at://{KYONE_DID}/{POST}/3l3qo2vuowo2b"}
    if broker.mqtt5:
        assert ("bluesky_did", KYONE_DID) in command.properties.UserProperty
    assert probe.result(DEVICE, body["id"])["ok"] is True
    for state in ["ON", "OFF"] * 3:
        probe.wait_for(f"edison/{DEVICE}/led/state", state)
    assert [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20] == [1, 0] * 3
    bridge.wait_for_line(accepted("3l3qo2vuowo2b") + r": 'L Chika' -> edison/edison-t/led/set")


def test_strangers_reposts_replies_quotes_edits_and_deletes_do_nothing(mosquitto, listener, bluesky_bridges,
                                                                        jetstream):
    bridge = bluesky_bridges.start(mosquitto.url)
    jetstream.wait_subscribed()
    bridge.wait_for_line(r"connected to mqtt://")
    # Jetstream's own filters keep these away...
    jetstream.publish(post_event(STRANGER_DID, "a1"), post_event(KYONE_DID, "a2", collection="app.bsky.feed.repost"))
    # ...and the bridge checks again every event a server sends anyway.
    jetstream.push_raw(post_event(STRANGER_DID, "b1", time_us=now_us()),
                       post_event(KYONE_DID, "b2", collection="app.bsky.feed.repost", time_us=now_us()))
    jetstream.publish(post_event(KYONE_DID, "c1", reply=True),
                      post_event(KYONE_DID, "c2", embed="app.bsky.embed.record"),
                      post_event(KYONE_DID, "c3", embed="app.bsky.embed.recordWithMedia"),
                      post_event(KYONE_DID, "c4", operation="update"), post_event(KYONE_DID, "c5", operation="delete"),
                      identity_event(KYONE_DID, "kyone.example.org"), post_event(KYONE_DID, "c6"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/c6")
    for pattern in (rf"post b1 from {STRANGER_DID} ignored: not allowed", r"post b2 .* ignored: repost",
                    r"post c1 .* ignored: reply \(include_replies is false\)",
                    r"post c2 .* ignored: quote \(include_quotes is false\)", r"post c3 .* ignored: quote",
                    r"post c4 .* ignored: edit", rf"app.bsky.feed.post delete of c5 by @{KYONE_HANDLE}.*nothing to do",
                    rf"account @{KYONE_HANDLE} \({KYONE_DID}\) is now @kyone.example.org",
                    rf"post c6 from @kyone.example.org \({KYONE_DID}\) accepted"):
        bridge.wait_for_line(pattern)
    assert "post a1" not in bridge.output and "post a2" not in bridge.output
    listener.barrier()
    assert set_ids(listener) == [f"bsky:{KYONE_DID}/c6"]


def test_posts_made_while_away_are_replayed_once_and_never_when_expired(mosquitto, listener, bluesky_bridges,
                                                                         jetstream):
    first = bluesky_bridges.start(mosquitto.url)
    jetstream.wait_subscribed()
    jetstream.publish(post_event(KYONE_DID, "d1"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/d1")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    # The bridge was away for 400 s (its last stream position is that old): a post made just after it left has
    # expired by now (expiry 300 s), one made a moment ago has not.
    cursors = bluesky_bridges.state / "cursors.json"
    left = now_us() - 400_000_000
    cursors.write_text(json.dumps({**json.loads(cursors.read_text()), "bluesky": left}))
    jetstream.publish(post_event(KYONE_DID, "d2", time_us=left + 1_000_000), post_event(KYONE_DID, "d3"))
    second = bluesky_bridges.start(mosquitto.url)
    jetstream.wait_subscribed(2)
    assert int(jetstream.queries[1]["cursor"][0]) == left - 5_000_000  # a few seconds before the last event seen
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/d3")
    line = second.wait_for_line(r"post d2 .* ignored: expired \(posted \d+ s ago, expiry 300 s\)")
    age = int(re.search(r"posted (\d+) s ago", line).group(1))  # type: ignore[union-attr]
    assert 399 <= age <= 399 + TIMEOUT, line  # posted 399 s before the bridge came back, however slow its start
    second.wait_for_line(r"post d1 .* ignored: duplicate \(already acted on\)")

    # Disconnected, not stopped: the service is away, a post is made, the bridge comes back through the cursor.
    jetstream.refuse(503)
    jetstream.close_all()
    second.wait_for_line(r"refused the subscription: HTTP 503")
    jetstream.publish(post_event(KYONE_DID, "d4"))
    jetstream.refuse(None)
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/d4")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0

    third = bluesky_bridges.start(mosquitto.url)  # replays d3 and d4 (within the margin): duplicates, not commands
    third.wait_for_line(r"post d4 .* ignored: duplicate \(already acted on\)")
    listener.barrier()
    assert set_ids(listener) == [f"bsky:{KYONE_DID}/{rkey}" for rkey in ("d1", "d3", "d4")]


def test_dropped_refused_and_stalled_connections_reconnect_per_the_schedule(mosquitto, listener, tmp_path,
                                                                            jetstream, resolver):
    dead = f"ws://127.0.0.1:{free_port()}/subscribe"  # nothing listens: the bridge moves on to the next instance
    proxy = TcpProxy(jetstream.port)
    proxy.up()
    runner = BridgeRunner(tmp_path, NETWORKS_YAML, [*bluesky_args(jetstream, resolver), "--bluesky-jetstream", dead],
                          {})
    try:
        runner.args[runner.args.index(jetstream.url)] = f"ws://127.0.0.1:{proxy.port}/subscribe"
        bridge = runner.start(mosquitto.url)
        jetstream.wait_subscribed()
        jetstream.publish(post_event(KYONE_DID, "e1"))
        listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/e1")

        # An established connection drops: reconnect at once. It drops again at once (accepted, then closed):
        # 1 s. Refused (503): 2 s, and the next instance, where nothing listens: 4 s; 503 again: 8 s; nothing: 16 s.
        jetstream.plan(DROP, 503, 503)
        jetstream.close_all()
        jetstream.wait_subscribed(3, timeout=TIMEOUT + 60 * SCALE)
        got = delays(bridge, "bridge.bluesky")
        assert got[0] == 0 and len(got) == 6, bridge.output
        for delay, step in zip(got[1:], [1, 2, 4, 8, 16], strict=True):
            assert step * SCALE / 2 <= delay <= step * SCALE, got
        assert len(re.findall(r"bridge.bluesky: stream: network error: .*Connection refused", bridge.output)) == 2
        assert len(re.findall(r"refused the subscription: HTTP 503", bridge.output)) == 2

        # The server has the third subscription before the bridge has its answer: freezing the proxy now would
        # stall the handshake (a handshake time-out, not the keepalive this is about). Wait for the bridge's word.
        assert bridge.wait_until(lambda: bridge.output.count("bluesky: stream: connected to") >= 3), bridge.output
        proxy.freeze()  # silent both ways, never closed: only the pings can tell (TCP would wait for minutes)
        bridge.wait_for_line(r"bridge.bluesky: stream: connection lost: .*keepalive ping timeout",
                             timeout=TIMEOUT + STALL_TIMEOUT)
        jetstream.wait_subscribed(4)
        jetstream.publish(post_event(KYONE_DID, "e2"))
        listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/e2")
    finally:
        runner.stop_all()
        proxy.down()


def test_garbage_frames_are_skipped_and_the_connection_kept(mosquitto, listener, bluesky_bridges, jetstream):
    bridge = bluesky_bridges.start(mosquitto.url)
    jetstream.wait_subscribed()
    jetstream.push_raw("not json", b"\x00\x01binary", "[1, 2]", "x" * ((1 << 20) + 1),
                       {"did": KYONE_DID, "kind": "commit", "commit": {"operation": "create"}},
                       {"did": KYONE_DID, "kind": "commit", "commit": {"rkey": "f0", "collection": POST,
                                                                       "operation": "create", "record": 5}},
                       {"kind": "unheard-of"})
    jetstream.publish(post_event(KYONE_DID, "f1"))
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == f"bsky:{KYONE_DID}/f1")
    for pattern in (r"skipped a frame \(8 characters\): Expecting value", r"skipped a binary frame of 8 bytes",
                    r"skipped a frame \(6 characters\): not a JSON object",
                    r"skipped a frame of 1048577 characters: over the 1048576 limit",
                    r"skipped a frame .*commit without rkey", r"skipped a frame .*post f0 has no record text"):
        bridge.wait_for_line(pattern)
    assert len(jetstream.queries) == 1


def test_an_unknown_handle_stops_the_start_naming_it(mosquitto, bluesky_bridges):
    bluesky_bridges.config.write_text(NETWORKS_YAML.replace(f"bluesky: [{KYONE_HANDLE}]",
                                                            f"bluesky: [{KYONE_HANDLE}, nobody.bsky.social]"))
    bridge = bluesky_bridges.start(mosquitto.url)
    assert bridge.wait() == 2
    assert "unknown Bluesky handle in bridge.allow.bluesky: nobody.bsky.social" in bridge.output


# -- Jetstream's subscription and commits, without a process ---------------------------------------------------------

def test_jetstream_subscription_repeats_each_parameter():
    url = subscribe_url("wss://jetstream2.us-east.bsky.network/subscribe", ["did:plc:a", "did:web:b.example"], 17)
    assert url == ("wss://jetstream2.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post"
                   "&wantedDids=did%3Aplc%3Aa&wantedDids=did%3Aweb%3Ab.example&maxMessageSizeBytes=1048576&cursor=17")


def test_bluesky_commits_become_posts_edits_and_reposts():
    handles = {"did:plc:a": "a.bsky.social"}

    def commit(**kwargs: Any) -> Post:
        found = parse_commit(post_event("did:plc:a", "3k", **kwargs), handles)
        assert found is not None
        return found

    new = commit(text="L Chika", time_us=1_725_911_162_329_308)
    assert (new.kind, new.text, new.author, new.time, new.command_id) == (
        "post", "L Chika", "a.bsky.social", 1_725_911_162.329308, "bsky:did:plc:a/3k")
    assert new.source == {"did": "did:plc:a", "handle": "a.bsky.social", "uri": "at://did:plc:a/app.bsky.feed.post/3k"}
    assert commit(reply=True).reply
    assert commit(embed="app.bsky.embed.recordWithMedia").quote
    assert not commit(embed="app.bsky.embed.images").quote
    assert commit(operation="update").kind == "edit"
    assert commit(collection="app.bsky.feed.repost").kind == "repost"
    assert parse_commit(post_event("did:plc:a", "3k", operation="delete"), handles) is None
    assert parse_commit(post_event("did:plc:a", "3k", collection="app.bsky.feed.like"), handles) is None
    with pytest.raises(TypeError, match="no record text"):
        parse_commit({"did": "did:plc:a", "commit": {"rkey": "3k", "collection": "app.bsky.feed.post",
                                                     "operation": "create"}}, handles)
