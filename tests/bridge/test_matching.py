"""Matching a post to a trigger: whole text, any case, normalised; replies, retweets, quotes and strangers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge import matching
from bridge.config import BridgeConfig
from bridge.sources.mastodon import parse_status
from bridge.sources.x import NotAPost, parse_post
from testkit.standins.xstream import post
from tests.bridge.rig import MASTODON_MENTION

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


def test_message_without_author_id_is_refused_with_a_reason():
    message = post("10", "L Chika", "1001", "k_yone")
    del message["data"]["author_id"]
    with pytest.raises(NotAPost, match="author_id"):
        parse_post(message)


def test_commands_for_triggers():
    blink = BridgeConfig.of(dict(allow=["a"], triggers=[
        {"phrase": "x", "device": "d", "output": "o", "command": "blink", "count": 2, "on_time": 0.1}])).triggers[0]
    assert matching.command(blink) == {"effect": "blink", "count": 2, "on_time": 0.1}
    assert matching.command(CONFIG.triggers[1]) == {"state": "ON"}


@pytest.mark.parametrize("text", ["@kyone.bsky.social L Chika", "@bot @kyone@mastodon.social L Chika"])
def test_a_replys_leading_mentions_of_every_network_are_removed(text):
    assert matching.normalise(text, reply=True) == "l chika"
    assert matching.normalise("@k_yone, L Chika", reply=True) == "@k_yone, l chika"




def test_a_mastodon_reply_matches_once_its_mentions_are_gone_when_replies_are_included():
    status = {"id": "11", "account": {"id": "201", "acct": "kyone"}, "content": MASTODON_MENTION,
              "in_reply_to_id": "10", "created_at": "2024-01-01T00:00:00.000Z", "reblog": None}
    reply = parse_status(status, "mastodon.social")
    assert reply.reply and reply.time == 1704067200.0 and reply.command_id == "mastodon:mastodon.social/11"
    allowed = matching.Allowed({"201"})
    assert matching.judge(reply, CONFIG, allowed).reason.startswith("reply")
    assert matching.judge(reply, replace(CONFIG, include_replies=True), allowed).trigger is not None
    reblog = parse_status({**status, "in_reply_to_id": None, "reblog": {"id": "9"}}, "mastodon.social")
    assert matching.judge(reblog, CONFIG, allowed).reason == "reblog"


def test_odd_shapes_do_not_break_parsing():
    message = post("11", "L Chika", "1001", "k_yone")
    message["data"]["referenced_tweets"] = 5
    message["includes"] = {"users": "nobody"}
    message["unknown_key"] = {"x": 1}
    parsed = parse_post(message)
    assert parsed.author is None and parsed.kind == "post"
    assert matching.judge(parsed, CONFIG, ALLOWED).trigger is not None
