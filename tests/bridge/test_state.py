"""What --state keeps across a restart: seen posts, the outbox of unacknowledged commands, the cursors."""

from __future__ import annotations

from bridge.state import Cursors, Outbox, Outgoing, SeenPosts


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
