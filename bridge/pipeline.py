"""The one pipeline every source feeds: one log line and at most one command per post.

After `matching.judge` (allow-list, kind of post, trigger) come the checks
that need state: duplicates (by command id, across reconnects and restarts),
expiry and the rate limit per account per network. An accepted post's command
is made safe (the outbox in --state) before the post counts as acted on, then
handed to MQTT. Sources run in threads of their own; posts go through here
one at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from bridge import matching
from bridge.config import NETWORKS, BridgeConfig
from bridge.publisher import Publisher
from bridge.state import Outgoing, SeenPosts
from node.config import Config
from node.topics import DeviceTopics

log = logging.getLogger(__name__)
RATE_WINDOW = 60.0


def network_log(network: str) -> logging.Logger:
    """Each network logs under its own name (bridge.x, bridge.bluesky, bridge.mastodon)."""
    return logging.getLogger(f"bridge.{network}")


class Pipeline:
    def __init__(self, topics: Config, config: BridgeConfig, publisher: Publisher, seen: SeenPosts) -> None:
        self.topics = topics
        self.config = config
        self.publisher = publisher
        self.seen = seen
        self.allowed = {network: matching.Allowed() for network in NETWORKS}
        self._recent: dict[tuple[str, str], deque[float]] = defaultdict(deque)  # (network, author) -> accept times
        self._lock = threading.Lock()
        self._stopped = False
        for out in publisher.pending():  # kept by a run that stopped before recording the post as seen
            if out.id not in seen:
                seen.add(out.id)

    def allow(self, network: str, account_id: str) -> None:
        with self._lock:
            self.allowed[network].ids.add(account_id)

    def stop(self) -> None:
        """No post is handled after this returns (one being handled is finished first)."""
        with self._lock:
            self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def handle(self, post: matching.Post, done: Callable[[], None] | None = None) -> bool:
        """Decide on one post and log the verdict; True if it became a command. Never raises.

        `done` runs once the post is dealt with (ignored, or its command safe), before `stop` can
        return: a source moves its stream position there, so a post is never skipped on restart.
        """
        with self._lock:
            if self._stopped:
                return False
            try:
                out = self._decide(post)
                if done is not None:
                    done()
            except OSError as exc:
                network_log(post.network).error("post %s from %s NOT acted on: its command cannot be kept in the "
                                                "state directory (%s)", post.id, post.who, exc)
                return False
            except Exception:  # noqa: BLE001 - input never ends the bridge
                network_log(post.network).exception("error handling post %s (skipped, stream kept)", post.id)
                return False
        if out is None:
            return False
        self.publisher.flush()
        return True

    def _decide(self, post: matching.Post) -> Outgoing | None:
        log = network_log(post.network)
        verdict = matching.judge(post, self.config, self.allowed[post.network])
        if verdict.trigger is None:
            log.info("post %s from %s ignored: %s", post.id, post.who, verdict.reason)
            return None
        if post.command_id in self.seen:
            log.info("post %s from %s ignored: duplicate (already acted on)", post.id, post.who)
            return None
        now = time.time()
        made = min(post.time, now) if post.time is not None else now
        expires = made + self.config.expiry
        if expires <= now:
            log.info("post %s from %s ignored: expired (posted %.0f s ago, expiry %g s)", post.id, post.who,
                     now - made, self.config.expiry)
            return None
        recent = self._recent[(post.network, post.author_id)]
        mono = time.monotonic()
        while recent and recent[0] <= mono - RATE_WINDOW:
            recent.popleft()
        if len(recent) >= self.config.rate_limit:
            log.info("post %s from %s ignored: rate-limited (%d commands in the last minute)", post.id, post.who,
                     self.config.rate_limit)
            return None
        trigger = verdict.trigger
        topic = DeviceTopics(self.topics.prefix, trigger.device).set(trigger.output)
        source: dict[str, Any] = {"via": post.network, **post.source}
        body = {**matching.command(trigger), "id": post.command_id, "expires": round(expires, 3), "source": source}
        out = Outgoing(topic, body)
        self.publisher.keep(out)  # safe from here on: the post counts as acted on
        self.seen.add(post.command_id)
        recent.append(mono)
        log.info("post %s from %s accepted: %r -> %s", post.id, post.who, trigger.phrase, topic)
        return out
