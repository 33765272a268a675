"""The bridge's pure parts: matching, line splitting, back-off schedules, X rules, what --state keeps."""

from __future__ import annotations

from dataclasses import replace

import json
from typing import Any

import pytest

from bridge import matching
from bridge.backoff import ExponentialBackoff, XBackoff
from bridge.config import BridgeConfig
from bridge.matching import Post
from bridge.sources import Skipped, split_lines
from bridge.sources.bluesky import parse_commit, subscribe_url
from bridge.sources.mastodon import Event, html_to_text, parse_status, sse_events
from bridge.sources.x import NotAPost, XError, build_rules, parse_post
from bridge.state import Cursors, Outbox, Outgoing, SeenPosts
from tests.jetstream import post_event
from tests.xstream import BODY_429, BODY_429_CAP, BODY_429_CONNECTIONS, post

CONFIG = BridgeConfig.of(dict(allow=["k_yone"], triggers=[
    {"phrase": "L Chika", "device": "edison-1", "output": "led", "command": "BLINK"},
    {"phrase": "Fish & Chips <3", "device": "edison-1", "output": "led", "command": "ON"},
]))
ALLOWED = matching.Allowed({"1001"})


def verdict(**kwargs) -> matching.Verdict:
    message = post(kwargs.pop("id", "5"), kwargs.pop("text", "L Chika"), kwargs.pop("author", "1001"), "k_yone",
                   **kwargs)
    return matching.judge(parse_post(message), CONFIG, ALLOWED)


@pytest.mark.parametrize("text", ["L Chika", "l chika", "  L CHIKA \n", "\tL Chika\t"])
def test_trigger_matches_whole_text_whatever_the_case_and_surrounding_space(text):
    trigger = verdict(text=text).trigger
    assert trigger is not None and trigger.phrase == "L Chika"


@pytest.mark.parametrize("text,reason", [
    ("L Chika please", "no trigger"), ("say L Chika", "no trigger"), ("L  Chika", "no trigger"),
])
def test_phrase_must_be_the_whole_text(text, reason):
    assert verdict(text=text).reason == reason


def test_html_entities_and_nfd_text_are_normalised_for_matching():
    trigger = verdict(text="Fish &amp; Chips &lt;3").trigger
    assert trigger is not None and trigger.command == "ON"
    nfd = BridgeConfig.of(dict(allow=["k_yone"], triggers=[{"phrase": "Café", "device": "d", "output": "o",
                                                           "command": "ON"}]))
    message = parse_post(post("6", "Cafe\u0301", "1001", "k_yone"))
    assert matching.judge(message, nfd, ALLOWED).trigger is not None


def test_reply_mentions_are_removed_only_when_replies_are_included():
    assert verdict(text="@edison @k_yone L Chika", kind="replied_to").reason.startswith("reply")
    cfg = replace(CONFIG, include_replies=True)
    reply = parse_post(post("7", "@edison @k_yone L Chika", "1001", "k_yone", kind="replied_to"))
    assert matching.judge(reply, cfg, ALLOWED).trigger is not None
    not_reply = parse_post(post("8", "@edison L Chika", "1001", "k_yone"))
    assert matching.judge(not_reply, cfg, ALLOWED).reason == "no trigger"


def test_stranger_retweet_and_quote_are_refused():
    assert verdict(author="666").reason == "not allowed"
    assert verdict(kind="retweeted").reason == "retweet"
    assert verdict(kind="quoted").reason.startswith("quote")


def test_long_post_uses_note_tweet_text_and_username_comes_from_the_author_not_the_first_user():
    message = post("9", "L Chi…", "1001", "k_yone", kind="quoted", note="L Chika")
    parsed = parse_post(message)
    assert parsed.text == "L Chika" and parsed.author == "k_yone" and parsed.quote


def test_message_without_author_id_is_refused_with_a_reason():
    message = post("10", "L Chika", "1001", "k_yone")
    del message["data"]["author_id"]
    with pytest.raises(NotAPost, match="author_id"):
        parse_post(message)


def test_odd_shapes_do_not_break_parsing():
    message = post("11", "L Chika", "1001", "k_yone")
    message["data"]["referenced_tweets"] = 5
    message["includes"] = {"users": "nobody"}
    message["unknown_key"] = {"x": 1}
    parsed = parse_post(message)
    assert parsed.author is None and parsed.kind == "post"
    assert matching.judge(parsed, CONFIG, ALLOWED).trigger is not None


def test_commands_for_triggers():
    blink = BridgeConfig.of(dict(allow=["a"], triggers=[
        {"phrase": "x", "device": "d", "output": "o", "command": "blink", "count": 2, "on_time": 0.1}])).triggers[0]
    assert matching.command(blink) == {"effect": "blink", "count": 2, "on_time": 0.1}
    assert matching.command(CONFIG.triggers[1]) == {"state": "ON"}


def test_rules_use_ids_and_split_to_fit_the_length_limit():
    ids = [str(10**18 + i) for i in range(40)]
    rules = build_rules(ids, 512)
    assert len(rules) > 1 and all(len(r) <= 512 and r.endswith(") -is:retweet") for r in rules)
    assert sorted(i for r in rules for i in r[1:r.index(")")].replace("from:", "").split(" OR ")) == sorted(ids)
    assert build_rules(["1001"], 512) == ["(from:1001) -is:retweet"]
    with pytest.raises(ValueError, match="too short"):
        build_rules(ids, 20)


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


def test_backoff_follows_x_schedule():
    b = XBackoff()
    assert [b.network() for _ in range(3)] == [0.25, 0.5, 0.75]
    assert [b.network() for _ in range(70)][-1] == 16.0
    assert [b.http() for _ in range(8)] == [5, 10, 20, 40, 80, 160, 320, 320]
    assert [b.too_many() for _ in range(3)] == [60, 120, 240]
    b.connected()
    assert b.http() == 5 and b.too_many() == 60 and b.network() == 16.0  # network waits for a healthy run


def test_established_drop_reconnects_at_once_but_a_flapping_server_gets_backed_off():
    b = XBackoff(scale=0.01, healthy_after=30)
    assert b.dropped(lasted=100) == 0
    assert b.dropped(lasted=1) == 0
    assert b.dropped(lasted=1) == pytest.approx(0.0025)
    assert b.dropped(lasted=31) == 0 and b.dropped(lasted=1) == 0


def test_error_kinds_from_x_problem_bodies():
    assert XError(429, BODY_429).kind == "too-many"
    assert XError(429, BODY_429_CONNECTIONS).kind == "too-many"
    assert XError(429, BODY_429_CAP).kind == "usage-cap"
    assert XError(403, {}).kind == "auth" and XError(503, "oops").kind == "http"


def test_seen_posts_survive_reopening_and_stay_bounded(tmp_path):
    seen = SeenPosts(tmp_path / "s", limit=3)
    for i in range(10):
        seen.add(f"bsky:did:plc:a/{100 + i}")
    seen.close()
    again = SeenPosts(tmp_path / "s", limit=3)
    assert [f"bsky:did:plc:a/{p}" in again for p in (107, 108, 109, 106)] == [True, True, True, False]
    assert len((tmp_path / "s" / "seen-posts.txt").read_text().split()) < 6


def test_seen_posts_written_before_other_networks_are_x_posts(tmp_path):
    (tmp_path / "seen-posts.txt").write_text("1861234567890\nx:42\n\nnot an id\n")
    seen = SeenPosts(tmp_path)
    assert "x:1861234567890" in seen and "x:42" in seen and len(seen) == 2


def test_exponential_backoff_doubles_to_a_minute_with_jitter_and_resets_after_a_healthy_run():
    b = ExponentialBackoff(healthy_after=30)
    delays = [b.failed() for _ in range(9)]
    for delay, step in zip(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60], strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays[-3:])) > 1  # jittered, not in step with other clients
    assert b.dropped(lasted=31) == 0 and b.dropped(lasted=1) == 0
    assert 0.5 <= b.dropped(lasted=1) <= 1  # a second quick drop: back-off from the start again


def test_outbox_keeps_unacknowledged_commands_across_reopening_and_skips_a_torn_line(tmp_path):
    box = Outbox(tmp_path)
    for i in range(3):
        box.add(Outgoing("edison/d/led/set", {"id": f"x:{i}", "expires": 1.0, "effect": "blink"}))
    box.remove("x:1")
    box.remove("x:unknown")
    box.close()
    with open(tmp_path / "pending-commands.jsonl", "a") as f:
        f.write('{"topic": "edison/d/led/set", "comm')  # the process died while writing
    again = Outbox(tmp_path)
    assert [o.id for o in again] == ["x:0", "x:2"] and "x:2" in again
    assert next(iter(again)).command == {"id": "x:0", "expires": 1.0, "effect": "blink"}
    for i in range(40):
        again.add(Outgoing("t", {"id": f"y:{i}", "expires": 1.0}))
        again.remove(f"y:{i}")
    assert len((tmp_path / "pending-commands.jsonl").read_text().splitlines()) < 70  # compacted, not 82 lines


def test_cursors_survive_reopening_and_an_unreadable_file_starts_afresh(tmp_path):
    cursors = Cursors(tmp_path, min_interval=3600)
    cursors.set("bluesky", 1)  # the first write is immediate
    cursors.set("bluesky", 2)  # within min_interval: kept in memory until flush
    assert Cursors(tmp_path).get("bluesky") == 1
    cursors.flush()
    assert Cursors(tmp_path).get("bluesky") == 2
    (tmp_path / "cursors.json").write_text("{torn")
    assert Cursors(tmp_path).get("bluesky") is None


@pytest.mark.parametrize("text", ["@kyone.bsky.social L Chika", "@bot @kyone@mastodon.social L Chika"])
def test_a_replys_leading_mentions_of_every_network_are_removed(text):
    assert matching.normalise(text, reply=True) == "l chika"
    assert matching.normalise("@k_yone, L Chika", reply=True) == "@k_yone, l chika"


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


MENTION = ('<p><span class="h-card" translate="no"><a href="https://mastodon.social/@bot" class="u-url mention">'
           '@<span>bot</span></a></span> L Chika</p>')


def test_mastodon_html_becomes_text():
    assert html_to_text("<p>Fish &amp; Chips &lt;3</p><p>line<br>break</p>") == "Fish & Chips <3\n\nline\nbreak"
    assert html_to_text(MENTION) == "@bot L Chika"
    link = ('<p><a href="https://example.com/x"><span class="invisible">https://</span>'
            '<span class="ellipsis">example.com/</span><span class="invisible">x</span></a></p>')
    assert html_to_text(link) == "https://example.com/x"


def test_a_mastodon_reply_matches_once_its_mentions_are_gone_when_replies_are_included():
    status = {"id": "11", "account": {"id": "201", "acct": "kyone"}, "content": MENTION, "in_reply_to_id": "10",
              "created_at": "2024-01-01T00:00:00.000Z", "reblog": None}
    reply = parse_status(status, "mastodon.social")
    assert reply.reply and reply.time == 1704067200.0 and reply.command_id == "mastodon:mastodon.social/11"
    allowed = matching.Allowed({"201"})
    assert matching.judge(reply, CONFIG, allowed).reason.startswith("reply")
    assert matching.judge(reply, replace(CONFIG, include_replies=True), allowed).trigger is not None
    reblog = parse_status({**status, "in_reply_to_id": None, "reblog": {"id": "9"}}, "mastodon.social")
    assert matching.judge(reblog, CONFIG, allowed).reason == "reblog"


def test_server_sent_events_are_assembled_from_lines():
    lines: list[bytes | Skipped] = [
        b":)", b"event: update", b"data: {\"a\":", b"data: 1}", b"", b":thump", b"event: delete", b"data:42", b"",
        b"event: update", Skipped("too long"), b"", b"data: no event name", b""]
    events = list(sse_events(iter(lines)))
    assert events == [Event("update", '{"a":\n1}'), Event("delete", "42"), Skipped("too long"),
                      Event("message", "no event name")]
