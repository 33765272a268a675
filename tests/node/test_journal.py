"""The journal of commands carried out: durable before the effect, bounded, and readable after any crash."""

from __future__ import annotations

import json

import pytest

from node.journal import FILE_NAME, Journal, JournalError, default_directory


def test_started_and_done_survive_a_restart(tmp_path):
    journal = Journal(tmp_path)
    journal.start("a")
    journal.finish("a", {"id": "a", "ok": True, "state": "ON"})
    journal.start("b")  # the process dies before b is done
    journal.close()
    again = Journal(tmp_path)
    a, b = again.get("a"), again.get("b")
    assert a is not None and a.result is not None and b is not None
    assert json.loads(a.result) == {"id": "a", "ok": True, "state": "ON"}
    assert b.result is None and again.get("c") is None
    again.close()


def test_each_record_is_on_disk_when_start_returns(tmp_path):
    journal = Journal(tmp_path)
    journal.start("a")
    assert json.loads((tmp_path / FILE_NAME).read_text().splitlines()[-1])["id"] == "a"  # not in a buffer
    journal.close()


@pytest.mark.parametrize("tail", [b'{"id":"c","t":17', b'{"id":"c","t":1700000000.0,"result":{"ok":tr'])
def test_a_torn_last_line_is_skipped_and_the_file_repaired(tmp_path, caplog, tail):
    journal = Journal(tmp_path)
    journal.start("a")
    journal.close()
    with open(tmp_path / FILE_NAME, "ab") as f:
        f.write(tail)  # a crash in the middle of a write
    again = Journal(tmp_path)
    assert "skipped a torn last line" in caplog.text
    again.start("d")  # appends after a clean line, not glued to the torn one
    again.close()
    third = Journal(tmp_path)
    assert third.get("a") is not None and third.get("d") is not None and third.get("c") is None
    third.close()


def test_unreadable_lines_are_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / FILE_NAME).write_bytes(b'not json\n{"id": 5, "t": 1}\n{"id":"ok","t":1e12}\n\xff\xfe\n')
    journal = Journal(tmp_path)
    assert len(journal) == 1 and journal.get("ok") is not None
    assert "skipped 3 unreadable line(s)" in caplog.text
    journal.close()


def test_ids_are_bounded_by_count_and_age(tmp_path):
    now = [1_000_000.0]
    journal = Journal(tmp_path, limit=3, max_age=100, clock=lambda: now[0])
    for command_id in "abcd":
        journal.start(command_id)
        journal.finish(command_id, {"id": command_id})
        now[0] += 10
    assert [i for i in "abcd" if journal.get(i)] == ["b", "c", "d"]  # the newest 3
    now[0] += 75  # b started 105 s ago, c 95 s ago
    journal.start("e")
    assert [i for i in "abcde" if journal.get(i)] == ["c", "d", "e"]
    journal.close()


def test_the_file_is_compacted_when_it_grows_to_twice_the_limit(tmp_path):
    journal = Journal(tmp_path, limit=5)
    for i in range(20):
        journal.start(str(i))
        journal.finish(str(i), {"id": str(i)})
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert len(lines) < 10
    journal.close()
    again = Journal(tmp_path, limit=5)
    assert [i for i in range(20) if again.get(str(i))] == [15, 16, 17, 18, 19]
    again.close()


def test_a_second_journal_on_the_same_directory_is_refused(tmp_path):
    journal = Journal(tmp_path)
    with pytest.raises(JournalError, match="in use by another edison-node"):
        Journal(tmp_path)
    journal.close()
    Journal(tmp_path).close()  # free again once the first is closed


def test_an_unusable_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match="state directory .*file"):
        Journal(tmp_path / "file" / "state")


def test_default_directory_follows_systemd_then_the_users_state_folder(tmp_path):
    assert str(default_directory("edison-1", {"STATE_DIRECTORY": "/var/lib/edison-node"})) == "/var/lib/edison-node"
    assert default_directory("edison-1", {"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "edison-node" / "edison-1"
