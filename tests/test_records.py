from __future__ import annotations

import json
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


def test_run_lock_excludes_a_second_job(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(RunFolderLocked, match="another posttrain job"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):
        pass
