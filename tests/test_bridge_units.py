"""The bridge's pure parts: matching, line splitting, X's back-off schedule, rules, remembered post ids."""

from __future__ import annotations

import json

import pytest

from broker.bridge import matching
from broker.bridge.backoff import Backoff
from broker.bridge.state import SeenPosts
from broker.bridge.x_api import Skipped, XError, split_lines
from broker.bridge.config import BridgeConfig
from tests.xstream import BODY_429, BODY_429_CAP, BODY_429_CONNECTIONS, post

CONFIG = BridgeConfig(allow=["k_yone"], triggers=[
    {"phrase": "L Chika", "device": "edison-1", "output": "led", "command": "BLINK"},
    {"phrase": "Fish & Chips <3", "device": "edison-1", "output": "led", "command": "ON"},
])
ALLOWED = {"1001"}


def verdict(**kwargs) -> matching.Verdict:
    message = post(kwargs.pop("id", "5"), kwargs.pop("text", "L Chika"), kwargs.pop("author", "1001"), "k_yone",
                   **kwargs)
    return matching.judge(matching.parse_post(message), CONFIG, ALLOWED)


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
    nfd = BridgeConfig(allow=["k_yone"], triggers=[{"phrase": "Café", "device": "d", "output": "o", "command": "ON"}])
    message = matching.parse_post(post("6", "Cafe\u0301", "1001", "k_yone"))
    assert matching.judge(message, nfd, ALLOWED).trigger is not None


def test_reply_mentions_are_removed_only_when_replies_are_included():
    assert verdict(text="@edison @k_yone L Chika", kind="replied_to").reason.startswith("reply")
    cfg = CONFIG.model_copy(update={"include_replies": True})
    reply = matching.parse_post(post("7", "@edison @k_yone L Chika", "1001", "k_yone", kind="replied_to"))
    assert matching.judge(reply, cfg, ALLOWED).trigger is not None
    not_reply = matching.parse_post(post("8", "@edison L Chika", "1001", "k_yone"))
    assert matching.judge(not_reply, cfg, ALLOWED).reason == "no trigger"


def test_stranger_retweet_and_quote_are_refused():
    assert verdict(author="666").reason == "not allowed"
    assert verdict(kind="retweeted").reason == "retweet"
    assert verdict(kind="quoted").reason.startswith("quote")


def test_long_post_uses_note_tweet_text_and_username_comes_from_the_author_not_the_first_user():
    message = post("9", "L Chi…", "1001", "k_yone", kind="quoted", note="L Chika")
    parsed = matching.parse_post(message)
    assert parsed.text == "L Chika" and parsed.username == "k_yone" and parsed.quote


def test_message_without_author_id_is_refused_with_a_reason():
    message = post("10", "L Chika", "1001", "k_yone")
    del message["data"]["author_id"]
    with pytest.raises(matching.NotAPost, match="author_id"):
        matching.parse_post(message)


def test_odd_shapes_do_not_break_parsing():
    message = post("11", "L Chika", "1001", "k_yone")
    message["data"]["referenced_tweets"] = 5
    message["includes"] = {"users": "nobody"}
    message["unknown_key"] = {"x": 1}
    parsed = matching.parse_post(message)
    assert parsed.username is None and not parsed.retweet
    assert matching.judge(parsed, CONFIG, ALLOWED).trigger is not None


def test_commands_for_triggers():
    blink = BridgeConfig(allow=["a"], triggers=[
        {"phrase": "x", "device": "d", "output": "o", "command": "blink", "count": 2, "on_time": 0.1}]).triggers[0]
    assert matching.command(blink) == {"effect": "blink", "count": 2, "on_time": 0.1}
    assert matching.command(CONFIG.triggers[1]) == {"state": "ON"}


def test_rules_use_ids_and_split_to_fit_the_length_limit():
    ids = [str(10**18 + i) for i in range(40)]
    rules = matching.build_rules(ids, 512)
    assert len(rules) > 1 and all(len(r) <= 512 and r.endswith(") -is:retweet") for r in rules)
    assert sorted(i for r in rules for i in r[1:r.index(")")].replace("from:", "").split(" OR ")) == sorted(ids)
    assert matching.build_rules(["1001"], 512) == ["(from:1001) -is:retweet"]
    with pytest.raises(ValueError, match="too short"):
        matching.build_rules(ids, 20)


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
    b = Backoff()
    assert [b.network() for _ in range(3)] == [0.25, 0.5, 0.75]
    assert [b.network() for _ in range(70)][-1] == 16.0
    assert [b.http() for _ in range(8)] == [5, 10, 20, 40, 80, 160, 320, 320]
    assert [b.too_many() for _ in range(3)] == [60, 120, 240]
    b.connected()
    assert b.http() == 5 and b.too_many() == 60 and b.network() == 16.0  # network waits for a healthy run


def test_established_drop_reconnects_at_once_but_a_flapping_server_gets_backed_off():
    b = Backoff(scale=0.01, healthy_after=30)
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
        seen.add(str(100 + i))
    seen.close()
    again = SeenPosts(tmp_path / "s", limit=3)
    assert [p in again for p in ("107", "108", "109", "106")] == [True, True, True, False]
    assert len((tmp_path / "s" / "seen-posts.txt").read_text().split()) < 6
