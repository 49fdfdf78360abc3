"""Benchmarks: load a named benchmark as a tuple of :class:`~posttrain.items.Item`.

Every benchmark file is JSONL. Loading hashes the exact bytes read (so a run records which
file it evaluated), validates every row before building items (so a bad row fails at load time
with its line number, not halfway through generation) and then applies ``split`` and ``limit``.

Submodules are imported inside :func:`load_benchmark` rather than at the top of this file: they
import :class:`BenchmarkError` and the validators from here, and importing them lazily keeps the
package free of import cycles and of work at import time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from posttrain.items import ConstraintKind, Item, item_from_dict, verifiability_problems

# The generated capability benchmarks (posttrain/benchmarks/capabilities.py), one data file each.
CAPABILITY_NAMES: tuple[str, ...] = ("system_prompt", "structured_output", "length", "refusal")
BENCHMARK_NAMES: tuple[str, ...] = (
    "conversations", "instructions", "mt_bench", "mt_bench_101", "ifeval", *CAPABILITY_NAMES
)
CONSTRAINT_KINDS: tuple[str, ...] = get_args(ConstraintKind)
FORMAT_VALUES: tuple[str, ...] = (
    "bullet_list",
    "numbered_list",
    "json",
    "single_line",
    "all_caps",
    "no_commas",
)
_LANGUAGE_CODE = re.compile(r"^[a-z]{2}$")


class BenchmarkError(ValueError):
    """A benchmark file that is missing, unreadable or has a malformed row.

    Attributes:
        path: The file concerned.
        line: 1-based line number of the offending row, or None for file-level problems.
        field: Dotted path of the offending field (``turns[2].expect.constraints[0].value``),
            or None for file-level problems.
    """

    def __init__(self, path: str | Path, message: str, *, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path if line is None else f"{self.path}:{line}"
        what = "" if field is None else f" field '{field}':"
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark.

    Attributes:
        name: Benchmark name ("conversations", "instructions", "mt_bench", "mt_bench_101", "ifeval", or a
            capability benchmark of :data:`CAPABILITY_NAMES`).
        split: The split applied.
        items: The items after split and limit, in file order.
        sha256: Hex SHA-256 of the exact file bytes read (the whole file, before split/limit).
        source_path: The file read.
        version: Generator version of the rows, or the reader version for public files.
    """

    name: str
    split: str
    items: tuple[Item, ...]
    sha256: str
    source_path: str
    version: str


def read_jsonl(path: str | Path) -> tuple[bytes, list[tuple[int, dict[str, Any]]]]:
    """Read a JSONL file, returning its raw bytes and ``(line_number, row)`` pairs.

    Blank lines are skipped (a trailing newline is not an error); line numbers stay those of the
    file so that errors point at the right place.

    Raises:
        BenchmarkError: Missing file, undecodable text, invalid JSON, or a row that is not an object.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BenchmarkError(p, "file not found") from None
    except OSError as e:
        raise BenchmarkError(p, f"cannot read file: {e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BenchmarkError(p, f"not UTF-8 text: {e}") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(
                p, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno, field="<row>"
            ) from None
        if not isinstance(row, dict):
            raise BenchmarkError(
                p, f"expected a JSON object, got {type(row).__name__}", line=lineno, field="<row>"
            )
        rows.append((lineno, row))
    return raw, rows


class RowChecker:
    """Type checks for one row that raise :class:`BenchmarkError` naming path, line and field."""

    def __init__(self, path: str | Path, line: int):
        self.path = str(path)
        self.line = line

    def fail(self, field: str, message: str) -> BenchmarkError:
        """Build (not raise) the error for ``field``, so callers write ``raise check.fail(...)``."""
        return BenchmarkError(self.path, message, line=self.line, field=field)

    def get(self, obj: dict[str, Any], key: str, types: type | tuple[type, ...], field: str) -> Any:
        """Return ``obj[key]`` after checking it exists and has one of ``types`` (bool is not int)."""
        if key not in obj:
            raise self.fail(field, "missing required field")
        value = obj[key]
        allowed = types if isinstance(types, tuple) else (types,)
        # bool is a subclass of int in Python, but True is never a valid id or word count.
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise self.fail(field, f"expected {names}, got {type(value).__name__} ({value!r:.60})")
        return value

    def nonempty_str(self, obj: dict[str, Any], key: str, field: str) -> str:
        value = self.get(obj, key, str, field)
        if not value.strip():
            raise self.fail(field, "must be a non-empty string")
        return value

    def str_list(self, value: Any, field: str, *, nonempty: bool = False) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list, got {type(value).__name__}")
        if nonempty and not value:
            raise self.fail(field, "must not be empty")
        for i, s in enumerate(value):
            if not isinstance(s, str) or not s.strip():
                raise self.fail(f"{field}[{i}]", f"expected a non-empty string, got {s!r:.60}")
        return value


def _check_constraint(check: RowChecker, c: Any, field: str) -> None:
    if not isinstance(c, dict):
        raise check.fail(field, f"expected an object, got {type(c).__name__}")
    unknown = sorted(set(c) - {"kind", "value", "description"})
    if unknown:
        raise check.fail(f"{field}.{unknown[0]}", "unknown constraint field")
    kind = check.get(c, "kind", str, f"{field}.kind")
    if kind not in CONSTRAINT_KINDS:
        raise check.fail(f"{field}.kind", f"unknown kind {kind!r}; valid: {', '.join(CONSTRAINT_KINDS)}")
    if "description" in c:
        check.get(c, "description", str, f"{field}.description")
    vfield = f"{field}.value"
    if kind in ("max_words", "min_words"):
        value = check.get(c, "value", int, vfield)
        if value < 1:
            raise check.fail(vfield, f"word count must be >= 1, got {value}")
    elif kind == "language":
        value = check.get(c, "value", str, vfield)
        if not _LANGUAGE_CODE.match(value):
            raise check.fail(vfield, f"expected an ISO 639-1 code like 'es', got {value!r}")
    elif kind == "format":
        value = check.get(c, "value", str, vfield)
        if value not in FORMAT_VALUES:
            raise check.fail(vfield, f"unknown format {value!r}; valid: {', '.join(FORMAT_VALUES)}")
    elif kind in ("sentence_count", "item_count"):
        value = check.get(c, "value", int, vfield)
        if value < 1:
            raise check.fail(vfield, f"count must be >= 1, got {value}")
    elif kind == "table_columns":
        check.str_list(check.get(c, "value", list, vfield), vfield, nonempty=True)
    elif kind == "json_schema":
        import jsonschema  # a dependency of the package; only rows with a schema need it

        value = check.get(c, "value", dict, vfield)
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.exceptions.SchemaError as e:
            raise check.fail(vfield, f"not a valid JSON Schema (draft 2020-12): {e.message}") from None
    else:
        value = check.get(c, "value", str, vfield)
        try:
            re.compile(value)
        except re.error as e:
            raise check.fail(vfield, f"invalid regular expression: {e}") from None


def _check_expectation(check: RowChecker, e: Any, field: str) -> None:
    if not isinstance(e, dict):
        raise check.fail(field, f"expected an object or null, got {type(e).__name__}")
    unknown = sorted(set(e) - {"must_include", "must_not_include", "constraints", "notes", "verifiable",
                               "explicit_decline"})
    if unknown:
        raise check.fail(f"{field}.{unknown[0]}", "unknown expectation field")
    groups = e.get("must_include", [])
    if not isinstance(groups, list):
        raise check.fail(f"{field}.must_include", f"expected a list of lists, got {type(groups).__name__}")
    for i, g in enumerate(groups):
        check.str_list(g, f"{field}.must_include[{i}]", nonempty=True)
    check.str_list(e.get("must_not_include", []), f"{field}.must_not_include")
    constraints = e.get("constraints", [])
    if not isinstance(constraints, list):
        raise check.fail(f"{field}.constraints", f"expected a list, got {type(constraints).__name__}")
    for i, c in enumerate(constraints):
        _check_constraint(check, c, f"{field}.constraints[{i}]")
    if "notes" in e:
        check.get(e, "notes", str, f"{field}.notes")
    if "verifiable" in e:
        check.get(e, "verifiable", bool, f"{field}.verifiable")
    if "explicit_decline" in e:  # a triage heuristic (posttrain.scorers.refusal): true, false or absent
        check.get(e, "explicit_decline", bool, f"{field}.explicit_decline")


def validate_item_row(
    row: dict[str, Any],
    check: RowChecker,
    *,
    categories: tuple[str, ...],
    min_turns: int,
    max_turns: int,
    splits: tuple[str, ...],
) -> None:
    """Check one generated-benchmark row (``Item.to_dict()`` plus ``split`` and ``generator_version``).

    Args:
        row: The decoded JSON object.
        check: Checker bound to the file and line, used for every error.
        categories: Accepted ``category`` values.
        min_turns: Fewest user turns allowed.
        max_turns: Most user turns allowed.
        splits: Accepted ``split`` values.

    Raises:
        BenchmarkError: The first problem found, naming its field.
    """
    check.nonempty_str(row, "id", "id")
    category = check.get(row, "category", str, "category")
    if category not in categories:
        raise check.fail("category", f"unknown category {category!r}; valid: {', '.join(categories)}")
    check.get(row, "source", str, "source")
    meta = check.get(row, "meta", dict, "meta")
    if "system" in meta:  # the item's own system turn (generation/prompts.py renders it in every format)
        check.nonempty_str(meta, "system", "meta.system")
    split = check.get(row, "split", str, "split")
    if split not in splits:
        raise check.fail("split", f"unknown split {split!r}; valid: {', '.join(splits)}")
    check.nonempty_str(row, "generator_version", "generator_version")
    turns = check.get(row, "turns", list, "turns")
    if not min_turns <= len(turns) <= max_turns:
        raise check.fail("turns", f"expected {min_turns} to {max_turns} turns, got {len(turns)}")
    for i, t in enumerate(turns):
        tf = f"turns[{i}]"
        if not isinstance(t, dict):
            raise check.fail(tf, f"expected an object, got {type(t).__name__}")
        check.nonempty_str(t, "user", f"{tf}.user")
        if t.get("expect") is not None:
            _check_expectation(check, t["expect"], f"{tf}.expect")
        if "golden_reply" in t:
            check.get(t, "golden_reply", (str, type(None)), f"{tf}.golden_reply")
    if turns[-1].get("expect") is None:
        raise check.fail(f"turns[{len(turns) - 1}].expect", "the last turn must carry an expectation")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def check_unique_ids(items: list[Item], lines: list[int], path: str | Path) -> None:
    """Raise on the first repeated item id: ids key every result table downstream."""
    seen: dict[str, int] = {}
    for item, line in zip(items, lines, strict=True):
        if item.id in seen:
            raise BenchmarkError(
                path, f"duplicate id {item.id!r} (first on line {seen[item.id]})", line=line, field="id"
            )
        seen[item.id] = line


def load_generated(
    name: str,
    path: str | Path,
    *,
    split: str,
    categories: tuple[str, ...],
    min_turns: int,
    max_turns: int,
    row_splits: tuple[str, ...],
) -> Benchmark:
    """Load a file written by one of our generators (conversations, instructions).

    Args:
        name: Benchmark name recorded on the result.
        path: The JSONL file.
        split: "full" for every row, else the value of the rows' ``split`` field to keep.
        categories: Accepted ``category`` values.
        min_turns: Fewest user turns allowed per row.
        max_turns: Most user turns allowed per row.
        row_splits: Accepted values of the rows' ``split`` field.

    Returns:
        The benchmark, with ``version`` taken from the rows' ``generator_version``.

    Raises:
        BenchmarkError: A missing file, a malformed row, mixed generator versions or a repeated id.
    """
    raw, rows = read_jsonl(path)
    if not rows:
        raise BenchmarkError(path, "file has no rows")
    items: list[Item] = []
    lines: list[int] = []
    version = rows[0][1].get("generator_version")
    keep: list[bool] = []
    for lineno, row in rows:
        check = RowChecker(path, lineno)
        validate_item_row(
            row, check, categories=categories, min_turns=min_turns, max_turns=max_turns, splits=row_splits
        )
        if row["generator_version"] != version:
            # One file, one generator: a mix means a hand-edited or concatenated file.
            raise check.fail(
                "generator_version",
                f"{row['generator_version']!r} differs from line {rows[0][0]}'s {version!r}",
            )
        item = item_from_dict(row)
        problems = verifiability_problems(item)
        if problems:  # a verifiable turn must be its own definition (items.verifiability_problems)
            raise check.fail("turns", "; ".join(problems))
        items.append(item)
        lines.append(lineno)
        keep.append(split == "full" or row["split"] == split)
    check_unique_ids(items, lines, path)
    return Benchmark(
        name=name,
        split=split,
        items=tuple(it for it, k in zip(items, keep, strict=True) if k),
        sha256=sha256_hex(raw),
        source_path=str(path),
        version=str(version),
    )


def load_benchmark(
    name: str, *, split: str = "full", limit: int | None = None, path: str | None = None
) -> Benchmark:
    """Load a benchmark by name.

    Args:
        name: One of :data:`BENCHMARK_NAMES`.
        split: "full" or a benchmark-specific split ("pilot" for conversations; "train"/"test" for
            instructions and the capability benchmarks; public sets only have "full").
        limit: Keep only the first ``limit`` items after the split (>= 1); None keeps all.
        path: File to read. Optional for the generated benchmarks (defaults to the packaged file),
            required for the public ones (your copy of the original file).

    Returns:
        The :class:`Benchmark`.

    Raises:
        ValueError: Unknown name or split, a bad ``limit``, or a public benchmark without ``path``.
        BenchmarkError: The file is missing or has a malformed row.
    """
    # Lazy imports: see the module docstring.
    from posttrain.benchmarks import capabilities, conversations, ifeval, instructions, public

    loaders: dict[str, Callable[..., Benchmark]] = {
        "conversations": conversations.load,
        "instructions": instructions.load,
        "mt_bench": public.load_mt_bench,
        "mt_bench_101": public.load_mt_bench_101,
        "ifeval": ifeval.load,
        **{n: capabilities.loader(n) for n in CAPABILITY_NAMES},
    }
    splits = {
        "conversations": conversations.SPLITS,
        "instructions": instructions.SPLITS,
        "mt_bench": public.SPLITS,
        "mt_bench_101": public.SPLITS,
        "ifeval": ifeval.SPLITS,
        **dict.fromkeys(CAPABILITY_NAMES, capabilities.SPLITS),
    }
    if name not in loaders:
        raise ValueError(f"unknown benchmark.name {name!r}; valid: {', '.join(BENCHMARK_NAMES)}")
    if split not in splits[name]:
        raise ValueError(f"unknown benchmark.split {split!r} for {name!r}; valid: {', '.join(splits[name])}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"benchmark.limit must be an integer >= 1 (or null for all items), got {limit!r}")
    bench = loaders[name](split=split, path=path)
    # Every benchmark, generated or public: a turn declared verifiable must be decidable by checks alone.
    for item in bench.items:
        if problems := verifiability_problems(item):
            raise BenchmarkError(bench.source_path, "; ".join(problems), field=f"{item.id}.turns")
    return bench if limit is None else replace(bench, items=bench.items[:limit])


__all__ = [
    "BENCHMARK_NAMES",
    "CAPABILITY_NAMES",
    "Benchmark",
    "BenchmarkError",
    "RowChecker",
    "check_unique_ids",
    "load_benchmark",
    "load_generated",
    "read_jsonl",
    "sha256_hex",
    "validate_item_row",
]
