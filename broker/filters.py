"""MQTT topic names and filters: which are valid, what a filter matches, and whether one filter covers another.

`covers` is what access rules need: a client may subscribe to a filter only if
every topic it can match is one the user may read, so `edison/+/set` is
inside `edison/#` but `#` is not inside `edison/#`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[str, str]  # client id, the filter as it subscribed (a shared one with its $share/GROUP/ prefix)

MAX_LEVELS = 64  # topic levels; real topics have a handful, and deeper ones only cost time


def topic_problem(topic: str) -> str | None:
    """Why `topic` cannot be published to, or None (UTF-8 and U+0000 are checked on the wire)."""
    if not topic:
        return "empty topic [MQTT-4.7.3-1]"
    if "+" in topic or "#" in topic:
        return "wildcard in a topic name [MQTT-3.3.2-2]"
    if topic.count("/") >= MAX_LEVELS:
        return f"topic deeper than {MAX_LEVELS} levels"
    return None


def filter_problem(topic_filter: str) -> str | None:
    """Why `topic_filter` cannot be subscribed to, or None."""
    if not topic_filter:
        return "empty topic filter [MQTT-4.7.3-1]"
    levels = topic_filter.split("/")
    if len(levels) > MAX_LEVELS:
        return f"topic filter deeper than {MAX_LEVELS} levels"
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last [MQTT-4.7.1-2]"
        if "+" in level and level != "+":
            return "'+' must be a whole level [MQTT-4.7.1-3]"
    return None


def shared_filter(topic_filter: str) -> tuple[str | None, str]:
    """(group, filter) of a shared subscription `$share/GROUP/FILTER`; (None, the filter) of any other, and
    ("", the filter) of one that starts with `$share/` but is not a valid shared subscription."""
    if not topic_filter.startswith("$share/"):
        return None, topic_filter
    parts = topic_filter.split("/", 2)
    if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1] or not parts[2]:
        return "", topic_filter
    return parts[1], parts[2]


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` is matched by the (valid) `topic_filter`."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic that `requested` matches is also matched by `allowed` (both valid filters)."""
    a_levels, r_levels = allowed.split("/"), requested.split("/")
    for i, a in enumerate(a_levels):
        if a == "#":
            return True
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if r == "#" or (a != "+" and (r == "+" or r != a)):
            return False
    return len(a_levels) == len(r_levels)


class _Node:
    __slots__ = ("children", "here", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.here: set[Key] = set()  # subscriptions ending at this level
        self.rest: set[Key] = set()  # subscriptions with '#' after this level


class SubscriptionTree:
    """Filters by level, so finding the subscribers of a topic costs its depth, not the number of filters."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, topic_filter: str, key: Key) -> None:
        node, levels = self._root, topic_filter.split("/")
        for level in levels[:-1]:
            node = node.children.setdefault(level, _Node())
        if levels[-1] == "#":
            node.rest.add(key)
        else:
            node.children.setdefault(levels[-1], _Node()).here.add(key)

    def remove(self, topic_filter: str, key: Key) -> None:
        levels = topic_filter.split("/")
        nodes = [self._root]
        for level in levels[:-1]:
            child = nodes[-1].children.get(level)
            if child is None:
                return
            nodes.append(child)
        if levels[-1] == "#":
            nodes[-1].rest.discard(key)
            path = levels[:-1]
        else:
            leaf = nodes[-1].children.get(levels[-1])
            if leaf is None:
                return
            leaf.here.discard(key)
            nodes.append(leaf)
            path = levels
        for depth in range(len(path), 0, -1):  # prune empty branches so churn does not grow the tree
            node = nodes[depth]
            if node.children or node.here or node.rest:
                break
            del nodes[depth - 1].children[path[depth - 1]]

    def match(self, topic: str) -> list[Key]:
        """Every subscription matching `topic` (a client may have several).

        Walked with a stack, not recursion: a topic may have thousands of levels.
        """
        found: list[Key] = []
        levels = topic.split("/")
        last = len(levels) - 1
        dollar = topic.startswith("$")
        take = found.extend

        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            wild = not (dollar and i == 0)  # [MQTT-4.7.2-1]: wildcards at the first level skip $ topics
            if wild:
                take(node.rest)
            for name in (levels[i], "+") if wild else (levels[i],):
                child = node.children.get(name)
                if child is None:
                    continue
                if i == last:
                    take(child.here)
                    take(child.rest)  # 'a/#' also matches 'a'
                else:
                    stack.append((child, i + 1))
        return found


class RetainedTree(Generic[T]):
    """Retained messages by topic level, so a subscription finds its matches without scanning them all."""

    def __init__(self) -> None:
        self._root: dict[str, dict] = {}  # level -> the levels below it
        self._values: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._values)

    def get(self, topic: str) -> T | None:
        return self._values.get(topic)

    def items(self) -> list[tuple[str, T]]:
        return list(self._values.items())

    def set(self, topic: str, value: T) -> None:
        self._values[topic] = value
        node = self._root
        for level in topic.split("/"):
            node = node.setdefault(level, {})

    def delete(self, topic: str) -> None:
        if self._values.pop(topic, None) is None:
            return
        levels = topic.split("/")
        nodes = [self._root]
        for level in levels:
            nodes.append(nodes[-1][level])
        for depth in range(len(levels), 0, -1):
            if nodes[depth] or "/".join(levels[:depth]) in self._values:
                break
            del nodes[depth - 1][levels[depth - 1]]

    def matching(self, topic_filter: str) -> list[tuple[str, T]]:
        """(topic, value) of every retained message that `topic_filter` matches (walked with a stack, not recursion)."""
        found: list[str] = []
        levels = topic_filter.split("/")
        stack: list[tuple[dict, int, tuple[str, ...]]] = [(self._root, 0, ())]
        while stack:
            node, i, prefix = stack.pop()
            if levels[i] == "#":
                if prefix:
                    found.append("/".join(prefix))  # 'a/#' also matches 'a'
                below: list[tuple[dict, tuple[str, ...]]] = [(node, prefix)]
                while below:
                    subtree, at = below.pop()
                    for level, child in subtree.items():
                        found.append("/".join((*at, level)))
                        below.append((child, (*at, level)))
                continue
            names = list(node) if levels[i] == "+" else [levels[i]] if levels[i] in node else []
            for level in names:
                if i == len(levels) - 1:
                    found.append("/".join((*prefix, level)))
                else:
                    stack.append((node[level], i + 1, (*prefix, level)))
        return [(t, self._values[t]) for t in found if t in self._values and matches(topic_filter, t)]
