from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from posttrain.records import RunFolderLocked, RunLock, append_jsonl, read_jsonl, write_json


def test_torn_last_line_is_dropped_and_repaired(tmp_path: Path) -> None:
    p = tmp_path / "g.jsonl"
    append_jsonl(p, [{"a": 1}, {"a": 2}])
    with open(p, "a") as f:
        f.write('{"a": 3, "b"')  # a kill mid-write
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    read_jsonl(p, repair=True)
    append_jsonl(p, [{"a": 4}])
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}, {"a": 4}]


@pytest.mark.parametrize("tail", ['{"a": 3, "b"', "x" * 70_000])  # a short and a >64 KiB torn line
def test_append_after_a_torn_tail_cuts_it_first(tmp_path: Path, tail: str) -> None:
    """A killed writer left half a line and the next run appends without reading the file first
    (metrics.jsonl, the ledger): the fragment must not swallow or corrupt the new rows."""
    p = tmp_path / "m.jsonl"
    append_jsonl(p, [{"a": 1}])
    with open(p, "a") as f:
        f.write(tail)
    append_jsonl(p, [{"a": 4}])
    append_jsonl(p, [{"a": 5}])
    assert read_jsonl(p) == [{"a": 1}, {"a": 4}, {"a": 5}]
    assert p.read_text() == '{"a": 1}\n{"a": 4}\n{"a": 5}\n'


def test_append_to_a_file_holding_only_a_torn_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": ')
    append_jsonl(p, [{"a": 1}])
    assert p.read_text() == '{"a": 1}\n'


def test_corruption_in_the_middle_raises_with_line(tmp_path: Path) -> None:
    p = tmp_path / "g.jsonl"
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"g\.jsonl:2"):
        read_jsonl(p)


def test_write_json_is_atomic(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    write_json(p, {"x": 1})
    write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["s.json"]  # no temp files left behind


def test_write_json_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing the temporary file and the rename leaves the previous version whole."""
    import posttrain.records as records

    p = tmp_path / "s.json"
    write_json(p, {"x": 1})
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    def crash(src: str, dst: str) -> None:
        assert synced, "the data must be fsynced before the rename"
        raise OSError("killed before the rename")

    monkeypatch.setattr(records.os, "fsync", fsync)
    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(OSError, match="before the rename"):
        write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["s.json"]


def test_run_lock_excludes_a_second_job(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(RunFolderLocked, match="another posttrain job"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):
        pass
