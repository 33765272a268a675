"""Topic filters: what an access rule covers, matching, and the subscription and retained trees against matching one by
one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.filters import RetainedTree, SubscriptionTree, covers, filter_problem, matches


@pytest.mark.parametrize("allowed,requested,inside", [
    ("edison/#", "edison/+/led/set", True), ("edison/#", "edison", True), ("edison/#", "#", False),
    ("edison/+/+/set", "edison/d/led/set", True), ("edison/+/+/set", "edison/+/+/set", True),
    ("edison/+/+/set", "edison/+/+/#", False), ("edison/d/+/set", "edison/+/led/set", False),
    ("a/b", "a/b", True), ("a/b", "a/+", False), ("+", "a", True), ("+", "a/b", False),
])
def test_covers(allowed, requested, inside):
    assert covers(allowed, requested) is inside


def test_filters_and_matching():
    assert filter_problem("a/#/b") and filter_problem("a/b+") and filter_problem("") and not filter_problem("+/+/#")
    assert matches("a/#", "a") and matches("+/b", "a/b") and not matches("#", "$SYS/x") and matches("$SYS/#", "$SYS/x")


topic_levels = st.lists(st.sampled_from(["a", "b", "c", "$s"]), min_size=1, max_size=4)


filter_levels = st.lists(st.sampled_from(["a", "b", "+", "$s"]), min_size=1, max_size=4)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(filter_levels, st.booleans(), st.integers(0, 1)), max_size=12), topic_levels)
def test_subscription_tree_agrees_with_matching_one_by_one(subs, levels):
    tree, expected = SubscriptionTree(), []
    topic = "/".join(levels)
    for i, (f_levels, hash_end, _) in enumerate(subs):
        topic_filter = "/".join(f_levels + (["#"] if hash_end else []))
        tree.add(topic_filter, (f"c{i}", topic_filter))
        if matches(topic_filter, topic):
            expected.append((f"c{i}", topic_filter))
    assert sorted(tree.match(topic)) == sorted(expected)
    for i, (f_levels, hash_end, _) in enumerate(subs):
        topic_filter = "/".join(f_levels + (["#"] if hash_end else []))
        tree.remove(topic_filter, (f"c{i}", topic_filter))
    assert tree.match(topic) == [] and not tree._root.children and not tree._root.rest


@settings(max_examples=300, deadline=None)
@given(st.lists(topic_levels, max_size=10), filter_levels, st.booleans())
def test_retained_tree_finds_exactly_the_matching_topics(topics, f_levels, hash_end):
    tree: RetainedTree[int] = RetainedTree()
    for levels in topics:
        tree.set("/".join(levels), 1)
    topic_filter = "/".join(f_levels + (["#"] if hash_end else []))
    found = sorted(t for t, _ in tree.matching(topic_filter))
    assert found == sorted({"/".join(t) for t in topics if matches(topic_filter, "/".join(t))})
    for levels in topics:
        tree.delete("/".join(levels))
    assert len(tree) == 0 and tree._root == {}
