"""The capability benchmarks: seeded, versioned generators of items written as data, and their loader.

Four benchmarks probe what post-training is said to add beyond following a simple instruction
(docs/benchmarks-data.md, "The capability benchmarks"): ``system_prompt`` (a persona, a language, a
forbidden topic or a format set by the item's system turn and tested by its user turns),
``structured_output`` (JSON that fits a stated schema, a markdown table with stated columns),
``length`` (one word, one sentence, a stated number of items or sentences) and ``refusal`` (clearly
harmful requests to decline, and safe look-alikes to answer).

Each benchmark's words live in ``<name>_templates.yaml`` beside this module: its version, seed and
categories, slot pools, and templates (a category, how many items, which pools to draw slots from, which
slots make an item's cluster, an optional system turn and the user turns with their expectations). This module is the logic, the same
for all four: a typed loader that validates the file, the seeded dealing of slots (``Slots``, shared
with the conversation benchmark), placeholder filling, the train/test split and the file I/O.

Placeholders: ``{slot}`` or ``{slot.field}`` names a drawn pool entry (or one of its fields). A string
that is exactly one placeholder is replaced by the value itself, so a list of accepted variants, an int
count or a whole JSON schema can be drawn from a pool; inside longer text the value is written as text
(a list of strings joined by ", ").
Braces that do not start with a letter (``\\d{3}`` in a pattern) are left alone.

Regenerate the committed files with ``python -m posttrain.benchmarks.capabilities``; bump the
``version`` in the YAML file whenever its output changes (the byte-identity test fails until the
committed file matches).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.benchmarks import (
    CAPABILITY_NAMES,
    Benchmark,
    BenchmarkError,
    RowChecker,
    load_generated,
    validate_item_row,
)
from posttrain.benchmarks.conversations import Slots
from posttrain.items import Item, Turn, expectation_from_dict, verifiability_problems

SPLITS: tuple[str, ...] = ("full", "train", "test")
ROW_SPLITS: tuple[str, ...] = ("train", "test")
MIN_TURNS, MAX_TURNS = 1, 3
HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent / "data"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)(?:\.(\w+))?\}")
_TOP_KEYS = {"version", "seed", "categories", "pools", "templates"}
_TEMPLATE_KEYS = {"category", "count", "draw", "cluster", "system", "turns"}


def data_path(name: str) -> Path:
    """The committed JSONL file of benchmark ``name``."""
    return DATA_DIR / f"{name}.jsonl"


def templates_path(name: str) -> Path:
    """The YAML data file the benchmark ``name`` is generated from."""
    return HERE / f"{name}_templates.yaml"


def _data_error(source: Path, message: str, where: str | None = None) -> BenchmarkError:
    return BenchmarkError(source, f"{message} (fix the data file; nothing was generated or written)", field=where)


# ---------------------------------------------------------------- the data file, typed
@dataclass(frozen=True)
class Template:
    """One template: ``count`` items of ``category``, slots drawn from pools, an optional system turn."""

    name: str
    category: str
    count: int
    draw: dict[str, str]  # slot name -> pool name
    cluster: tuple[str, ...]  # slots whose drawn entry, with the template, makes an item's cluster
    system: str | None
    turns: list[dict[str, Any]]  # {"user": str, "expect": dict | None}, placeholders unfilled


@dataclass(frozen=True)
class CapabilityData:
    """A loaded ``<name>_templates.yaml``."""

    name: str
    version: str
    seed: int
    categories: tuple[str, ...]
    pools: dict[str, list[Any]]
    templates: list[Template]
    source: Path


def _expect(cond: bool, source: Path, message: str, where: str) -> None:
    if not cond:
        raise _data_error(source, message, where)


def load_templates(name: str, path: str | Path | None = None) -> CapabilityData:
    """Read and validate one capability benchmark's data file.

    Args:
        name: The benchmark (one of :data:`~posttrain.benchmarks.CAPABILITY_NAMES`).
        path: The YAML file (the packaged ``<name>_templates.yaml`` by default).

    Raises:
        BenchmarkError: Naming the file and the key that is missing, unknown, empty or mistyped: a pool
            whose entries differ in shape, a template drawing from a pool that does not exist, a pool no
            template uses (a typo), a category without a template. Nothing is generated before this passes.
    """
    import yaml  # only generation needs it; loading the committed JSONL does not

    source = Path(path) if path is not None else templates_path(name)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise _data_error(source, f"cannot read the {name} templates: {e}") from None
    _expect(isinstance(raw, dict) and set(raw) == _TOP_KEYS, source,
            f"should be a mapping with exactly the keys {sorted(_TOP_KEYS)}", "<file>")
    _expect(isinstance(raw["version"], str) and raw["version"].startswith(f"{name}-v"), source,
            f"should be a string '{name}-v<N>', got {raw['version']!r}", "version")
    _expect(type(raw["seed"]) is int, source, f"should be an int, got {raw['seed']!r}", "seed")
    cats = raw["categories"]
    _expect(isinstance(cats, list) and bool(cats) and all(isinstance(c, str) and c for c in cats)
            and len(set(cats)) == len(cats), source, f"should be a list of distinct names, got {cats!r}", "categories")

    pools = raw["pools"]
    _expect(isinstance(pools, dict) and bool(pools), source, "should be a non-empty mapping", "pools")
    for pname, entries in pools.items():
        where = f"pools.{pname}"
        _expect(isinstance(entries, list) and bool(entries), source, "should be a non-empty list", where)
        first = entries[0]
        for i, entry in enumerate(entries):
            if isinstance(first, dict):  # every entry has the same fields, so a template can rely on them
                _expect(isinstance(entry, dict) and set(entry) == set(first), source,
                        f"should be a mapping with the fields {sorted(first)}, got {entry!r:.120}", f"{where}[{i}]")
            else:  # plain values, all of one type (a stray int among phrasings is a slip)
                _expect(type(first) in (str, int) and type(entry) is type(first) and entry != "", source,
                        f"should be a non-empty {type(first).__name__} like the pool's other entries, got {entry!r:.120}",
                        f"{where}[{i}]")

    raw_templates = raw["templates"]
    _expect(isinstance(raw_templates, dict) and bool(raw_templates), source, "should be a non-empty mapping",
            "templates")
    templates: list[Template] = []
    used: set[str] = set()
    for tname, t in raw_templates.items():
        where = f"templates.{tname}"
        _expect(isinstance(t, dict), source, "should be a mapping", where)
        unknown = sorted(set(t) - _TEMPLATE_KEYS)
        _expect(not unknown, source, f"unknown key(s) {unknown}; valid: {sorted(_TEMPLATE_KEYS)}", where)
        _expect(t.get("category") in cats, source, f"needs a category, one of {cats}; got {t.get('category')!r}",
                f"{where}.category")
        count = t.get("count")
        _expect(type(count) is int and count >= 2, source, f"should be an int >= 2 (one item per split at least), "
                f"got {count!r}", f"{where}.count")
        draw = t.get("draw", {})
        _expect(isinstance(draw, dict), source, "should be a mapping of slot -> pool", f"{where}.draw")
        for slot, pool in draw.items():
            _expect(pool in pools, source, f"slot '{slot}' draws from pool {pool!r}, which does not exist",
                    f"{where}.draw.{slot}")
        used |= set(draw.values())
        cluster = t.get("cluster", [])
        _expect(isinstance(cluster, list) and all(c in draw for c in cluster), source,
                f"should be a list of the template's drawn slots {sorted(draw)}, got {cluster!r}", f"{where}.cluster")
        system = t.get("system")
        _expect(system is None or (isinstance(system, str) and bool(system.strip())), source,
                "should be a non-empty string or absent", f"{where}.system")
        turns = t.get("turns")
        _expect(isinstance(turns, list) and MIN_TURNS <= len(turns) <= MAX_TURNS, source,
                f"should be a list of {MIN_TURNS} to {MAX_TURNS} turns", f"{where}.turns")
        for i, turn in enumerate(turns):
            _expect(isinstance(turn, dict) and set(turn) <= {"user", "expect"} and isinstance(turn.get("user"), str),
                    source, "should be a mapping with a 'user' string and an optional 'expect'", f"{where}.turns[{i}]")
        templates.append(Template(tname, t["category"], count, dict(draw), tuple(cluster), system, turns))
    unused = sorted(set(pools) - used)
    _expect(not unused, source, f"pool(s) {unused} are drawn by no template (a typo?)", "pools")
    empty = [c for c in cats if not any(t.category == c for t in templates)]
    _expect(not empty, source, f"categories {empty} have no template", "categories")
    return CapabilityData(name, raw["version"], raw["seed"], tuple(cats), pools, templates, source)


# ---------------------------------------------------------------- filling a template
def _fill(value: Any, slots: Mapping[str, Any], where: str, source: Path, depth: int = 0) -> Any:
    """``value`` with its placeholders filled from ``slots`` (see the module docstring).

    A drawn string may itself hold placeholders (a phrasing frame "Explain {topic} in one sentence."
    drawn from a pool); it is filled in turn, to a depth of 3, so a frame that names itself fails.
    """
    if depth > 3:
        raise _data_error(source, "placeholders nest more than 3 deep (a pool entry naming itself?)", where)
    if isinstance(value, list):
        return [_fill(v, slots, f"{where}[{i}]", source, depth) for i, v in enumerate(value)]
    if isinstance(value, dict):
        # Keys are filled too (a schema's property names can be drawn), and must stay strings.
        return {str(_fill(k, slots, where, source, depth)): _fill(v, slots, f"{where}.{k}", source, depth)
                for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def lookup(m: re.Match[str]) -> Any:
        slot, fld = m.group(1), m.group(2)
        if slot not in slots:
            raise _data_error(source, f"uses placeholder {m.group(0)}, but the template draws only "
                              f"{sorted(slots) or 'nothing'}", where)
        entry = slots[slot]
        if fld is not None and (not isinstance(entry, dict) or fld not in entry):
            raise _data_error(source, f"uses placeholder {m.group(0)}, but the pool entry has no field '{fld}'", where)
        found = entry if fld is None else entry[fld]
        return _fill(found, slots, where, source, depth + 1) if isinstance(found, str) else found

    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return lookup(whole)

    def as_text(m: re.Match[str]) -> str:
        v = lookup(m)
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return ", ".join(v)  # a list of names in a sentence: "Country, Capital, Population"
        if type(v) not in (str, int):
            raise _data_error(source, f"writes {m.group(0)} inside text, but its value is {type(v).__name__}", where)
        return str(v)

    return _PLACEHOLDER.sub(as_text, value)


def _draw(rng: Slots, data: CapabilityData, t: Template) -> dict[str, Any]:
    """One entry per slot; slots that share a pool get distinct entries."""
    by_pool: dict[str, list[str]] = {}
    for slot, pool in t.draw.items():
        by_pool.setdefault(pool, []).append(slot)
    out: dict[str, Any] = {}
    for pool, names in by_pool.items():
        out.update(zip(names, rng.deal(data.pools[pool], len(names)), strict=True))
    return out


def _cluster_id(data: CapabilityData, t: Template, slots: Mapping[str, Any]) -> str:
    """The item's cluster: the template, plus the pool position of each of its ``cluster`` slots.

    Items that share a cluster are not independent evidence (the same phrasing, the same schema); the
    gate's cluster-robust intervals read it from ``meta["template"]`` (analysis/gates.py item_cluster).
    """
    parts = [t.name]
    for slot in t.cluster:
        pool = data.pools[t.draw[slot]]
        parts.append(f"{slot}={next(i for i, e in enumerate(pool) if e is slots[slot])}")
    return "/".join(parts)


def _template_items(rng: Slots, data: CapabilityData, t: Template) -> list[tuple[str | None, list[Turn], str]]:
    """``t.count`` distinct (system, turns, cluster) triples; a pool too small for the count fails, naming
    the template."""
    seen: set[tuple[str, ...]] = set()
    out: list[tuple[str | None, list[Turn], str]] = []
    where = f"templates.{t.name}"
    for _ in range(t.count):
        for _ in range(500):
            slots = _draw(rng, data, t)
            system = None if t.system is None else _fill(t.system, slots, f"{where}.system", data.source)
            turns = [Turn(user=_fill(turn["user"], slots, f"{where}.turns[{i}].user", data.source),
                          expect=expectation_from_dict(_fill(turn.get("expect"), slots,
                                                             f"{where}.turns[{i}].expect", data.source)))
                     for i, turn in enumerate(t.turns)]
            key = (system or "", *(turn.user for turn in turns))
            if key not in seen:
                break
        else:
            raise _data_error(data.source, f"template '{t.name}' cannot make {t.count} distinct items from its "
                              "pools: lower its count or add pool entries", f"{where}.count")
        seen.add(key)
        out.append((system, turns, _cluster_id(data, t, slots)))
    return out


# ---------------------------------------------------------------- generation
def generate(name: str, *, seed: int | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Generate the rows of capability benchmark ``name``.

    Args:
        name: One of :data:`~posttrain.benchmarks.CAPABILITY_NAMES`.
        seed: Overrides the data file's seed (for tests: another seed gives another set).
        path: The YAML data file (the packaged one by default).

    Returns:
        Rows of ``Item.to_dict()`` plus ``split`` ("train"/"test") and ``generator_version``. Half of
        each template's items (rounded down) are ``test``, chosen by the seed, so both splits cover every
        template. Categories are interleaved so ``limit=N`` gives a balanced smoke set. ``meta.template``
        is the item's cluster (:func:`_cluster_id`): ``one_word/ask=2`` is template ``one_word`` with the
        third entry of the pool its ``ask`` slot draws from.

    Raises:
        BenchmarkError: The data file is invalid, a placeholder has no value, or a generated item is not a
            valid row (checked by the loader's own validation, before anything is written).
    """
    data = load_templates(name, path)
    rng = Slots(data.seed if seed is None else seed)
    per_cat: dict[str, list[dict[str, Any]]] = {c: [] for c in data.categories}
    for t in data.templates:
        made = _template_items(rng, data, t)
        test = set(rng.sample(range(len(made)), len(made) // 2))
        for k, (system, turns, cluster) in enumerate(made):
            rows = per_cat[t.category]
            meta: dict[str, Any] = {"template": cluster} | ({"system": system} if system is not None else {})
            item = Item(id=f"{t.category}-{len(rows) + 1:03d}", category=t.category, turns=tuple(turns),
                        source=name, meta=meta)
            row = item.to_dict() | {"split": "test" if k in test else "train", "generator_version": data.version}
            _validate(row, item, data, t)
            rows.append(row)
    longest = max(len(v) for v in per_cat.values())
    return [per_cat[c][i] for i in range(longest) for c in data.categories if i < len(per_cat[c])]


def _validate(row: dict[str, Any], item: Item, data: CapabilityData, t: Template) -> None:
    """The loader's checks, at generation time, so a bad template fails before a file is written."""
    try:
        validate_item_row(json.loads(json.dumps(row)), RowChecker(data.source, 0), categories=data.categories,
                          min_turns=MIN_TURNS, max_turns=MAX_TURNS, splits=ROW_SPLITS)
    except BenchmarkError as e:
        detail = str(e).removeprefix(f"{e.path}:{e.line}:").strip()  # the row's field and problem
        raise _data_error(data.source, f"template '{t.name}' makes an invalid item {item.id}: {detail}",
                          f"templates.{t.name}") from None
    if problems := verifiability_problems(item):
        raise _data_error(data.source, f"template '{t.name}': " + "; ".join(problems), f"templates.{t.name}")


def serialize(rows: list[dict[str, Any]]) -> bytes:
    """The exact file bytes: one sorted-key JSON object per line, UTF-8, trailing newline."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def write(name: str, path: str | Path | None = None) -> Path:
    """Generate and write benchmark ``name``'s JSONL file; returns the path written."""
    p = Path(path) if path is not None else data_path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(serialize(generate(name)))
    return p


def loader(name: str) -> Callable[..., Benchmark]:
    """The ``load(split=..., path=...)`` function of benchmark ``name``, as ``load_benchmark`` calls it."""

    def load(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
        """Load and validate the packaged file (or ``path``); the accepted categories are the data file's."""
        # Reading the YAML for its categories costs milliseconds; PyYAML comes with Hydra (omegaconf).
        return load_generated(name, path or data_path(name), split=split, categories=load_templates(name).categories,
                              min_turns=MIN_TURNS, max_turns=MAX_TURNS, row_splits=ROW_SPLITS)

    return load


def main() -> None:
    """Regenerate every packaged capability file and print its hash."""
    from posttrain.benchmarks import sha256_hex

    for name in CAPABILITY_NAMES:
        p = write(name)
        version = load_templates(name).version
        print(f"wrote {p} ({version}, sha256 {sha256_hex(p.read_bytes())})")


if __name__ == "__main__":
    main()
