"""From a stream message to a verdict: is this post a command, and if not, why not.

Pure functions only (dicts in, values out) so every kind of post can be
tested without a network. The text is normalised for matching only; ids are
never touched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from broker.bridge.config import BridgeConfig, Trigger

_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))  # &amp; last: "&amp;lt;" means "&lt;"
_LEADING_MENTIONS = re.compile(r"^(?:@[A-Za-z0-9_]{1,15}\s+)+")


class NotAPost(ValueError):
    """The message has `data` but not the fields a post must carry."""


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    author_id: str
    username: str | None  # display only; everything is keyed on author_id
    created_at: str | None
    retweet: bool
    reply: bool
    quote: bool


def parse_post(message: dict[str, Any]) -> Post:
    """A post from a stream message that has `data` (extra and missing optional fields tolerated)."""
    data = message.get("data")
    if not isinstance(data, dict):
        raise NotAPost("`data` is not an object")
    post_id, author_id = data.get("id"), data.get("author_id")
    if not isinstance(post_id, str) or not post_id.isdigit():
        raise NotAPost(f"post id {post_id!r} is not a numeric string")
    if not isinstance(author_id, str) or not author_id.isdigit():
        raise NotAPost(f"post {post_id}: author_id {author_id!r} is missing or not numeric (tweet.fields lacks author_id?)")
    note = data.get("note_tweet")
    text = note.get("text") if isinstance(note, dict) and isinstance(note.get("text"), str) else data.get("text")
    if not isinstance(text, str):
        raise NotAPost(f"post {post_id}: no text")
    # OAS 2.167 spells these *_posts; the data dictionary and the live API *_tweets.
    refs = _list(data.get("referenced_tweets", data.get("referenced_posts")))
    kinds = {r.get("type") for r in refs if isinstance(r, dict)}
    includes = message.get("includes") if isinstance(message.get("includes"), dict) else {}
    users = {u.get("id"): u.get("username") for u in _list(includes.get("users")) if isinstance(u, dict)}
    return Post(
        id=post_id,
        text=text,
        author_id=author_id,
        username=users.get(author_id),
        created_at=data.get("created_at") if isinstance(data.get("created_at"), str) else None,
        retweet="retweeted" in kinds,
        reply="replied_to" in kinds or isinstance(data.get("in_reply_to_user_id"), str),
        quote="quoted" in kinds,
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


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


def judge(post: Post, config: BridgeConfig, allowed_ids: set[str], allowed_names: frozenset[str] = frozenset()) -> Verdict:
    """Allow-list, post kind and phrase; duplicates, rate and age are the caller's (they need state).

    `allowed_names` (lower case) is only for posts read without the X API, where
    usernames cannot be resolved to ids.
    """
    by_name = bool(allowed_names) and (post.username or "").lower() in allowed_names
    if post.author_id not in allowed_ids and not by_name:
        return Verdict(None, "not allowed")
    if post.retweet:
        return Verdict(None, "retweet")
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


def build_rules(user_ids: list[str], max_length: int) -> list[str]:
    """`(from:a OR from:b) -is:retweet` rules, each within max_length characters, covering every id once."""
    def rule(ids: list[str]) -> str:
        return f"({' OR '.join(f'from:{i}' for i in ids)}) -is:retweet"

    rules: list[str] = []
    batch: list[str] = []
    for user_id in sorted(set(user_ids), key=lambda i: (len(i), i)):
        if len(rule([user_id])) > max_length:
            raise ValueError(f"rule_max_length {max_length} is too short for even one account ({user_id})")
        if batch and len(rule([*batch, user_id])) > max_length:
            rules.append(rule(batch))
            batch = []
        batch.append(user_id)
    if batch:
        rules.append(rule(batch))
    return rules
