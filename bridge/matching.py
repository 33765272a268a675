"""From a post to a verdict: is this post a command, and if not, why not.

A source turns its network's events into `Post`s; from here on every network
is the same. Pure functions only, so every kind of post can be tested without
a network. The text is normalised for matching only; ids are never touched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.config import BridgeConfig, Trigger

_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))  # &amp; last: "&amp;lt;" means "&lt;"
# @name (X), @handle.domain (Bluesky), @user or @user@domain (Mastodon)
_LEADING_MENTIONS = re.compile(r"^(?:@[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?(?:@[A-Za-z0-9.-]+)?\s+)+")
REPOST_WORD = {"x": "retweet", "bluesky": "repost", "mastodon": "reblog"}


@dataclass(frozen=True)
class Post:
    """One post (or repost, or edit) as every source reports it."""

    network: str  # x | bluesky | mastodon
    id: str  # the network's id of the post, as logged
    command_id: str  # the command's id and the key of the duplicate check: x:<id>, bsky:<did>/<rkey>, ...
    author_id: str  # stable account id: the allow-list and the rate limit key on it
    author: str | None  # username, handle or acct: display only
    text: str
    time: float | None  # unix time the post was made (the service's clock where there is one)
    kind: str = "post"  # post | repost | edit
    reply: bool = False
    quote: bool = False
    source: Mapping[str, str] = field(default_factory=dict, hash=False)  # the command's `source`, besides `via`

    @property
    def who(self) -> str:
        return f"@{self.author} ({self.author_id})" if self.author else self.author_id


@dataclass
class Allowed:
    """The accounts of one network whose posts may act: stable ids, or (stdin only) lower-case names."""

    ids: set[str] = field(default_factory=set)
    names: frozenset[str] = frozenset()

    def __contains__(self, post: Post) -> bool:
        return post.author_id in self.ids or bool(self.names) and (post.author or "").lower() in self.names


def normalise(text: str, reply: bool = False) -> str:
    """What a phrase is compared with: entities unescaped, NFC, a reply's leading @mentions gone, trimmed, folded."""
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = unicodedata.normalize("NFC", text).strip()
    if reply:
        text = _LEADING_MENTIONS.sub("", text).strip()
    return text.casefold()


@dataclass(frozen=True)
class Verdict:
    trigger: Trigger | None
    reason: str  # why not, when trigger is None


def judge(post: Post, config: BridgeConfig, allowed: Allowed) -> Verdict:
    """Allow-list, post kind and phrase; duplicates, rate and age are the caller's (they need state)."""
    if post not in allowed:
        return Verdict(None, "not allowed")
    if post.kind == "repost":
        return Verdict(None, REPOST_WORD.get(post.network, "repost"))
    if post.kind != "post":
        return Verdict(None, post.kind)
    if post.reply and not config.include_replies:
        return Verdict(None, "reply (include_replies is false)")
    if post.quote and not config.include_quotes:
        return Verdict(None, "quote (include_quotes is false)")
    text = normalise(post.text, reply=post.reply)
    for trigger in config.triggers:
        if normalise(trigger.phrase) == text:
            return Verdict(trigger, "")
    return Verdict(None, "no trigger")


def command(trigger: Trigger) -> dict[str, Any]:
    """The body of the JSON command for a trigger (the caller adds id, expires and source)."""
    if trigger.command != "BLINK":
        return {"state": trigger.command}
    params = {k: getattr(trigger, k) for k in ("count", "on_time", "off_time") if getattr(trigger, k) is not None}
    return {"effect": "blink", **params}
