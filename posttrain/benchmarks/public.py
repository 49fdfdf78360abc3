"""Readers for the user's copies of public multi-turn benchmarks: MT-Bench and MT-Bench-101.

The files are not redistributed with this package; ``benchmark.path`` points at the user's copy
of the original file, read as is:

- MT-Bench (FastChat ``question.jsonl``): ``{"question_id": int, "category": str, "turns": [str, ...]}``
  (an optional ``reference`` is ignored). Every turn is judged, so every turn carries an
  :class:`~posttrain.items.Expectation` with no deterministic checks, only judge notes.
- MT-Bench-101 (``mtbench101.jsonl``): ``{"task": str, "id": int, "history": [{"user": str, "bot": str}]}``.
  The bot replies are golden history: the model answers each user turn after the golden
  earlier replies, and only the last turn is judged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.benchmarks import (
    Benchmark,
    BenchmarkError,
    RowChecker,
    check_unique_ids,
    read_jsonl,
    sha256_hex,
)
from posttrain.items import Expectation, Item, Turn

SPLITS: tuple[str, ...] = ("full",)
MT_BENCH_READER = "fastchat-question-v1"
MT_BENCH_101_READER = "mtbench101-v1"
MT_BENCH_NOTES = "MT-Bench: judge helpfulness and correctness of this turn"


def _require_path(path: str | Path | None, example: str) -> Path:
    if path is None or not str(path).strip():
        raise ValueError(f"this benchmark reads your copy of the original file: set benchmark.path={example}")
    return Path(path).expanduser()


def mt_bench_item(row: dict[str, Any], check: RowChecker) -> Item:
    """Validate one FastChat MT-Bench row and build its item.

    Args:
        row: The decoded JSON object.
        check: Checker bound to the file and line.

    Returns:
        Item ``mtb-<question_id>`` with one judged turn per question turn.

    Raises:
        BenchmarkError: A missing or ill-typed field.
    """
    qid = check.get(row, "question_id", int, "question_id")
    category = check.nonempty_str(row, "category", "category")
    texts = check.str_list(check.get(row, "turns", list, "turns"), "turns", nonempty=True)
    expect = Expectation(notes=MT_BENCH_NOTES)
    return Item(
        id=f"mtb-{qid}",
        category=category,
        turns=tuple(Turn(t, expect) for t in texts),
        source="mt_bench",
        meta={"question_id": qid},
    )


def mt_bench_101_item(row: dict[str, Any], check: RowChecker) -> Item:
    """Validate one MT-Bench-101 row and build its item.

    Args:
        row: The decoded JSON object.
        check: Checker bound to the file and line.

    Returns:
        Item ``mtb101-<task>-<id>``: every turn has its golden reply, only the last is judged.

    Raises:
        BenchmarkError: A missing or ill-typed field.
    """
    task = check.nonempty_str(row, "task", "task")
    rid = check.get(row, "id", int, "id")
    history = check.get(row, "history", list, "history")
    if not history:
        raise check.fail("history", "must have at least one turn")
    turns = []
    for i, h in enumerate(history):
        if not isinstance(h, dict):
            raise check.fail(f"history[{i}]", f"expected an object, got {type(h).__name__}")
        user = check.nonempty_str(h, "user", f"history[{i}].user")
        bot = check.get(h, "bot", str, f"history[{i}].bot")
        turns.append(Turn(user=user, golden_reply=bot))
    last = turns[-1]
    turns[-1] = Turn(
        last.user,
        Expectation(
            notes=f"MT-Bench-101 task {task}: judge this final turn for the "
            f"ability the task tests, given the golden history."
        ),
        last.golden_reply,
    )
    return Item(
        id=f"mtb101-{task}-{rid}",
        category=task,
        turns=tuple(turns),
        source="mt_bench_101",
        meta={"task": task, "row_id": rid},
    )


def _load(name: str, path: Path, builder: Any, version: str) -> Benchmark:
    raw, rows = read_jsonl(path)
    if not rows:
        raise BenchmarkError(path, "file has no rows")
    items = [builder(row, RowChecker(path, line)) for line, row in rows]
    check_unique_ids(items, [line for line, _ in rows], path)
    return Benchmark(
        name=name,
        split="full",
        items=tuple(items),
        sha256=sha256_hex(raw),
        source_path=str(path),
        version=version,
    )


def load_mt_bench(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
    """Read FastChat MT-Bench ``question.jsonl`` (only split "full")."""
    del split  # validated by load_benchmark; public sets have no splits of their own
    return _load("mt_bench", _require_path(path, "/path/to/question.jsonl"), mt_bench_item, MT_BENCH_READER)


def load_mt_bench_101(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
    """Read MT-Bench-101 ``mtbench101.jsonl`` (only split "full")."""
    del split
    return _load(
        "mt_bench_101",
        _require_path(path, "/path/to/mtbench101.jsonl"),
        mt_bench_101_item,
        MT_BENCH_101_READER,
    )
