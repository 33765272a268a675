"""edison-bridge --source mastodon as a process, between a local Mastodon instance and real brokers (and the node)."""

from __future__ import annotations

import re
import signal
import time

from bridge.sources import Skipped
from bridge.sources.mastodon import Event, html_to_text, sse_events
from testkit.node import DEVICE
from testkit.procs import TIMEOUT, read_trace
from testkit.standins.base import CLOSE, STALL
from testkit.standins.mastodon import TOKEN
from tests.bridge.rig import MASTODON_MENTION, NETWORKS_YAML, SCALE, SET_TOPIC, STALL_TIMEOUT, delays, set_ids

KYONE, FRIEND, STRANGER = "201", "202", "203"


def command_id(mastodon, status: dict) -> str:
    return f"mastodon:{mastodon.host}/{status['id']}"


def test_allowed_post_blinks_the_led(broker, probe, nodes, mastodon_bridges, mastodon):
    nodes.start(wait_online=probe)
    bridge = mastodon_bridges.start(broker.url)
    mastodon.wait_streaming()
    assert mastodon.following == {KYONE}  # the bot followed the allowed account, so its posts reach the stream
    assert ("GET", "/api/v1/accounts/relationships", {"id[]": [KYONE]}) in mastodon.requests
    bridge.wait_for_line(r"bridge.mastodon: now following @kyone")
    status = mastodon.post("kyone", "L Chika")
    command = probe.wait_for(SET_TOPIC)
    body = command.json()
    assert body["effect"] == "blink" and body["id"] == command_id(mastodon, status)
    assert body["source"] == {"via": "mastodon", "account_id": KYONE, "acct": "kyone", "status_id": status["id"],
                              "url": status["url"]}
    if broker.mqtt5:
        assert ("mastodon_acct", "kyone") in command.properties.UserProperty
    assert probe.result(DEVICE, body["id"])["ok"] is True
    for state in ["ON", "OFF"] * 3:
        probe.wait_for(f"edison/{DEVICE}/led/state", state)
    assert [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20] == [1, 0] * 3
    bridge.wait_for_line(rf"bridge.mastodon: post {status['id']} from @kyone \({KYONE}\) accepted: 'L Chika' -> "
                         r"edison/edison-t/led/set")


def test_strangers_reblogs_replies_quotes_edits_and_deletes_do_nothing(mosquitto, listener, mastodon_bridges,
                                                                        mastodon):
    mastodon.following.add(FRIEND)  # the bot also follows someone who is not allowed
    bridge = mastodon_bridges.start(mosquitto.url)
    mastodon.wait_streaming()
    bridge.wait_for_line(r"connected to mqtt://")
    friends = mastodon.post("friend@other.example", "L Chika")
    mastodon.post("stranger", "L Chika")  # not followed: never on the home timeline
    earlier = mastodon.post("kyone", "hello")
    statuses = [mastodon.post("kyone", reblog_of=friends["id"]),
                mastodon.post("kyone", "L Chika", reply_to=friends["id"]),
                mastodon.post("kyone", "L Chika", quote_of=friends["id"])]
    mastodon.edit(earlier["id"], "L Chika")
    mastodon.delete(earlier["id"])
    last = mastodon.post("kyone", "<p>L Chika</p>", html_content="<p>L <b>Chika</b></p>")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, last))
    for pattern in (rf"post {friends['id']} from @friend@other.example \({FRIEND}\) ignored: not allowed",
                    rf"post {earlier['id']} .* ignored: no trigger", rf"post {statuses[0]['id']} .* ignored: reblog",
                    rf"post {statuses[1]['id']} .* ignored: reply \(include_replies is false\)",
                    rf"post {statuses[2]['id']} .* ignored: quote \(include_quotes is false\)",
                    rf"post {earlier['id']} .* ignored: edit", rf"status {earlier['id']} was deleted: nothing to do",
                    rf"post {last['id']} from @kyone \({KYONE}\) accepted"):
        bridge.wait_for_line(pattern)
    assert "@stranger" not in bridge.output
    listener.barrier()
    assert set_ids(listener) == [command_id(mastodon, last)]


def test_posts_made_while_away_are_backfilled_once_and_never_when_expired(mosquitto, listener, mastodon_bridges,
                                                                           mastodon):
    mastodon.following.update({KYONE, FRIEND})
    first = mastodon_bridges.start(mosquitto.url)
    mastodon.wait_streaming()
    g1 = mastodon.post("kyone")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, g1))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    # While the bridge is down: an expired post, 45 posts of a friend (more than one page), a fresh post.
    g2 = mastodon.post("kyone", created_at=time.time() - 400, stream=False)
    for i in range(45):
        mastodon.post("friend@other.example", f"post {i}", stream=False)
    g3 = mastodon.post("kyone", stream=False)
    second = mastodon_bridges.start(mosquitto.url)
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, g3))
    second.wait_for_line(rf"post {g2['id']} .* ignored: expired \(posted (399|40\d) s ago, expiry 300 s\)")
    second.wait_for_line(rf"backfill: 47 status\(es\) since {g1['id']} from the home timeline")
    pages = [q for q in mastodon.home_requests() if "min_id" in q]
    first_page = pages.index({"min_id": [g1["id"]], "limit": ["40"]})
    assert len(pages[first_page:]) >= 3  # 40 statuses, 7 more by the Link rel="prev", then none

    # Disconnected, not stopped: the streaming server goes away, a post is made, the backfill finds it.
    mastodon.refuse_streams(503)
    mastodon.push(CLOSE)
    second.wait_for_line(r"bridge.mastodon: stream: HTTP error \(HTTP 503: planned failure\)")
    g4 = mastodon.post("kyone")  # no stream is open: only the home timeline has it
    mastodon.refuse_streams(None)
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, g4))
    second.signal(signal.SIGTERM)
    assert second.wait() == 0

    third = mastodon_bridges.start(mosquitto.url)
    mastodon.wait_streaming(4)
    g5 = mastodon.post("kyone")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, g5))
    listener.barrier()
    assert set_ids(listener) == [command_id(mastodon, s) for s in (g1, g3, g4, g5)]
    assert third.popen.poll() is None


def test_dropped_refused_stalled_and_rate_limited_streams_reconnect_per_the_schedule(mosquitto, listener,
                                                                                     mastodon_bridges, mastodon):
    mastodon.following.add(KYONE)
    mastodon.post("kyone", "hello")  # the home timeline is not empty: backfills have a status to start from
    bridge = mastodon_bridges.start(mosquitto.url)
    mastodon.wait_streaming()
    # Closed: at once. Refused twice: 1 s, then 2 s (jittered to the upper half).
    mastodon.plan("/api/v1/streaming/user", 503, 503)
    mastodon.push(CLOSE)
    mastodon.wait_streaming(2, timeout=TIMEOUT + 10 * SCALE)
    got = delays(bridge, "bridge.mastodon")
    assert got[0] == 0 and len(got) == 3, bridge.output
    for delay, step in zip(got[1:], [1, 2], strict=True):
        assert step * SCALE / 2 <= delay <= step * SCALE, got

    started = time.monotonic()
    mastodon.push(STALL)  # open, but not even a heartbeat
    bridge.wait_for_line(rf"stream: stalled: no data or heartbeat for {STALL_TIMEOUT:g} s", timeout=TIMEOUT + 5)
    assert time.monotonic() - started >= STALL_TIMEOUT * 0.9

    mastodon.wait_streaming(3)
    s1 = mastodon.post("kyone")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, s1))

    mastodon.plan("/api/v1/timelines/home", 429)  # the next request for the home timeline is rate-limited
    mastodon.push(CLOSE)  # (it is that of the backfill after this reconnect, or of the one still running)
    line = bridge.wait_for_line(r"rate-limited \(HTTP 429: Too many requests\); waiting until X-RateLimit-Reset")
    found = re.search(r"reconnecting in ([0-9.]+) s", line)
    assert found is not None
    waited = float(found.group(1))
    assert 0 < waited <= 0.5  # the stand-in resets its limit 0.5 s after the 429, not the back-off
    s2 = mastodon.post("kyone")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, s2))


def test_garbage_events_are_skipped_and_the_stream_kept(mosquitto, listener, mastodon_bridges, mastodon):
    bridge = mastodon_bridges.start(mosquitto.url)
    mastodon.wait_streaming()
    mastodon.push(b"event: update\ndata: not json\n\n", b"event: update\ndata: [1]\n\n",
                  b'event: update\ndata: {"id": "5"}\n\n', b"event: update\ndata: " + b"x" * (1 << 20) + b"\n\n",
                  b"event: notification\ndata: {}\n\n", ("update", '{"id": "6", "account": {"id": "201"}}'))
    status = mastodon.post("kyone")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, status))
    for pattern in (r"skipped a update event that is not a status \(8 bytes\)",
                    r"skipped a update event that is not a status \(3 bytes\): not a JSON object",
                    r"skipped a status: a status without id or account",
                    r"skipped a stream line: line of 1048583 bytes is over the 1048576-byte limit",
                    r"skipped a status: status 6: account without id or acct"):
        bridge.wait_for_line(pattern)
    assert sum(1 for _, outcome in mastodon.streams if outcome == "200") == 1


def test_a_refused_token_and_an_unknown_account_stop_the_start(mosquitto, mastodon_bridges):
    bridge = mastodon_bridges.start(mosquitto.url, env={"MASTODON_ACCESS_TOKEN": "wrong-token"})
    assert bridge.wait() == 3
    assert re.search(r"127.0.0.1:\d+ refused the access token \(HTTP 401: The access token is invalid\)",
                     bridge.output)
    assert "wrong-token" not in bridge.output
    mastodon_bridges.config.write_text(NETWORKS_YAML.replace("mastodon: [kyone]", "mastodon: [kyone, nobody]"))
    bridge = mastodon_bridges.start(mosquitto.url)
    assert bridge.wait() == 2
    assert "unknown Mastodon account in bridge.allow.mastodon: nobody" in bridge.output
    assert TOKEN not in bridge.output


def test_without_the_follow_scope_the_bridge_says_whom_to_follow_and_goes_on(mosquitto, listener,
                                                                              mastodon_bridges, mastodon):
    mastodon.scopes.discard("write:follows")
    bridge = mastodon_bridges.start(mosquitto.url)
    mastodon.wait_streaming()
    bridge.wait_for_line(r"the bot account must follow @kyone for their posts to arrive.*no write:follows scope")
    mastodon.following.add(KYONE)  # the user follows it by hand
    status = mastodon.post("kyone")
    listener.wait_for(SET_TOPIC, where=lambda m: m.json()["id"] == command_id(mastodon, status))


# -- Mastodon's HTML and server-sent events, without a process -------------------------------------------------------



def test_mastodon_html_becomes_text():
    assert html_to_text("<p>Fish &amp; Chips &lt;3</p><p>line<br>break</p>") == "Fish & Chips <3\n\nline\nbreak"
    assert html_to_text(MASTODON_MENTION) == "@bot L Chika"
    link = ('<p><a href="https://example.com/x"><span class="invisible">https://</span>'
            '<span class="ellipsis">example.com/</span><span class="invisible">x</span></a></p>')
    assert html_to_text(link) == "https://example.com/x"


def test_server_sent_events_are_assembled_from_lines():
    lines: list[bytes | Skipped] = [
        b":)", b"event: update", b"data: {\"a\":", b"data: 1}", b"", b":thump", b"event: delete", b"data:42", b"",
        b"event: update", Skipped("too long"), b"", b"data: no event name", b""]
    events = list(sse_events(iter(lines)))
    assert events == [Event("update", '{"a":\n1}'), Event("delete", "42"), Skipped("too long"),
                      Event("message", "no event name")]
