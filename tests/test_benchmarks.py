"""Benchmarks: reproducible generation, counts, context dependencies, validation errors, public readers."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from posttrain.benchmarks import BenchmarkError, load_benchmark
from posttrain.benchmarks import conversations as conv
from posttrain.benchmarks import instructions as instr
from posttrain.items import Item

FIXTURES = Path(__file__).parent / "fixtures"
MTB = FIXTURES / "mt_bench_question.jsonl"
MTB101 = FIXTURES / "mtbench101.jsonl"


def _word_in(variant: str, text: str) -> bool:
    """Case-insensitive whole-word match, as the triage scorer matches must_include variants."""
    return re.search(rf"(?<!\w){re.escape(variant)}(?!\w)", text, re.IGNORECASE) is not None


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def convs() -> tuple[Item, ...]:
    return load_benchmark("conversations").items


# ---------------------------------------------------------------- reproducibility
def test_regenerating_conversations_gives_identical_bytes(tmp_path: Path) -> None:
    assert conv.serialize(conv.generate_conversations()) == conv.DATA_PATH.read_bytes()
    written = conv.write_conversations(tmp_path / "c.jsonl")
    assert written.read_bytes() == conv.DATA_PATH.read_bytes()


def test_regenerating_instructions_gives_identical_bytes() -> None:
    assert instr.serialize(instr.generate_instructions()) == instr.DATA_PATH.read_bytes()


def test_another_seed_gives_another_set() -> None:
    assert conv.serialize(conv.generate_conversations(seed=7)) != conv.DATA_PATH.read_bytes()


# ---------------------------------------------------------------- the templates data file
def _templates_copy(tmp_path: Path, old: str, new: str) -> Path:
    """Copy of conversations_templates.yaml with ``old`` (present exactly once) replaced by ``new``."""
    text = conv.TEMPLATES_PATH.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / "templates.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_the_benchmark_words_come_from_the_data_file(tmp_path: Path) -> None:
    tea = "How long should I steep green tea?"
    copy = _templates_copy(tmp_path, tea, tea)
    assert conv.serialize(conv.generate_conversations(templates_path=copy)) == conv.DATA_PATH.read_bytes()
    edited = _templates_copy(tmp_path, tea, "How long should I steep black tea?")
    out = conv.serialize(conv.generate_conversations(templates_path=edited)).decode("utf-8")
    committed = conv.DATA_PATH.read_text(encoding="utf-8")
    assert "green tea" not in out
    assert out.count("steep black tea") == committed.count("steep green tea") > 0


def test_each_pool_is_its_own_list_per_load() -> None:
    """Slots.deal keys its decks by id(pool): two pools sharing a list would share a deck."""
    first, second = conv.load_templates(), conv.load_templates()
    pools = [getattr(d.pools, f.name) for d in (first, second) for f in dataclasses.fields(conv.Pools)]
    assert len({id(p) for p in pools}) == len(pools)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (  # a template the generator has a function for, absent from the data
            "  mem_pet:\n    category: memory\n",
            "  mem_pets:\n    category: memory\n",
            r"field 'templates\.mem_pet': 'mem_pet' is missing: the generator uses it",
        ),
        (
            '  days: ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]',
            "  days: []",
            r"'pools\.days'.*non-empty",
        ),
        ('- ["10:30", ["10:30"', '- [10:30, ["10:30"', r"'pools\.times\[1\]\[0\]': should be str, got 630"),
        (
            '    category: preferences\n    intro: "Heads',
            '    category: prefs\n    intro: "Heads',
            r"pref_allergy",
        ),
        (
            'intro: "Our {event} is',
            'intro: "Our {event is',
            r"'templates\.cu_meeting_moved\.intro'.*format string",
        ),
    ],
    ids=["template-missing", "empty-pool", "mistyped-entry", "unknown-category", "stray-brace"],
)
def test_an_invalid_templates_file_fails_on_load(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _templates_copy(tmp_path, old, new)
    with pytest.raises(BenchmarkError, match=message) as err:
        conv.load_templates(path)
    assert str(err.value).startswith(str(path)) and "nothing was generated or written" in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'quiz_note: "The {species} is {pet}, {age} {unit} old."',
            'quiz_note: "The {species} is {pet}, {age} {unit} old, from {city}."',
            r"'templates\.mem_pet\.quiz_note': template 'mem_pet', key 'quiz_note' uses placeholder \{city\}, which has no value",
        ),
        (
            "    feed_note: \"'{obj}' is the {species} {pet}; advice must suit a {species}.\"\n",
            "",
            r"template 'mem_pet', key 'feed_note' is missing \(the generator reads it\)",
        ),
    ],
    ids=["placeholder-without-value", "key-missing"],
)
def test_a_text_the_generator_cannot_fill_names_template_and_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = _templates_copy(tmp_path, old, new)
    with pytest.raises(BenchmarkError, match=message) as err:
        conv.generate_conversations(templates_path=path)
    assert str(err.value).startswith(str(path))


def test_sha256_is_the_hash_of_the_file_bytes_and_ignores_split_and_limit() -> None:
    expected = hashlib.sha256(conv.DATA_PATH.read_bytes()).hexdigest()
    full = load_benchmark("conversations")
    assert full.sha256 == expected
    assert load_benchmark("conversations", split="pilot", limit=3).sha256 == expected
    assert full.version == conv.GENERATOR_VERSION == "conv-v2"
    assert full.source_path == str(conv.DATA_PATH)


def test_docs_record_the_current_hashes() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "benchmarks-data.md").read_text(encoding="utf-8")
    for data in (conv.DATA_PATH, instr.DATA_PATH):
        assert hashlib.sha256(data.read_bytes()).hexdigest() in doc, (
            f"update the hash of {data.name} in the docs"
        )


def test_rows_round_trip_through_items() -> None:
    rows = _rows(conv.DATA_PATH)
    items = load_benchmark("conversations").items
    for row, item in zip(rows, items, strict=True):
        expected = {k: v for k, v in row.items() if k not in ("split", "generator_version")}
        assert json.loads(json.dumps(item.to_dict())) == expected


# ---------------------------------------------------------------- counts and structure
def test_conversation_counts(convs: tuple[Item, ...]) -> None:
    assert len(convs) == 200
    assert collections.Counter(it.category for it in convs) == {c: 50 for c in conv.CATEGORIES}
    assert all(3 <= len(it.turns) <= 5 for it in convs)
    assert len({it.id for it in convs}) == 200
    assert all(it.source == "conversations" for it in convs)


def test_pilot_split_is_ten_per_category_and_fixed() -> None:
    pilot = load_benchmark("conversations", split="pilot")
    assert len(pilot.items) == 40 and pilot.split == "pilot"
    assert collections.Counter(it.category for it in pilot.items) == {c: 10 for c in conv.CATEGORIES}
    assert [it.id for it in pilot.items] == [
        it.id for it in load_benchmark("conversations", split="pilot").items
    ]


def test_pilot_covers_every_template() -> None:
    all_items = load_benchmark("conversations").items
    pilot = load_benchmark("conversations", split="pilot").items
    assert {it.meta["template"] for it in pilot} == {it.meta["template"] for it in all_items}


def test_every_last_turn_has_an_expectation(convs: tuple[Item, ...]) -> None:
    for it in convs:
        assert it.turns[-1].expect is not None, it.id
        assert len(it.turns) - 1 in it.judged_turns


def test_templates_are_varied(convs: tuple[Item, ...]) -> None:
    by_cat = collections.defaultdict(set)
    for it in convs:
        by_cat[it.category].add(it.meta["template"])
    assert all(len(t) >= 6 for t in by_cat.values()), by_cat
    assert len({tuple(t.user for t in it.turns) for it in convs}) == 200


def test_final_expectations_are_checkable(convs: tuple[Item, ...]) -> None:
    for it in convs:
        e = it.turns[-1].expect
        assert e is not None and (e.must_include or e.must_not_include or e.constraints), it.id
        assert e.notes, it.id


# ---------------------------------------------------------------- context dependencies
def test_memory_answers_come_from_earlier_turns_not_the_question(convs: tuple[Item, ...]) -> None:
    for it in (i for i in convs if i.category == "memory"):
        earlier = " ".join(t.user for t in it.turns[:-1]).lower()
        final = it.turns[-1]
        assert final.expect is not None and final.expect.must_include, it.id
        for group in final.expect.must_include:
            assert any(v.lower() in earlier for v in group), (it.id, group)
            assert not any(_word_in(v, final.user) for v in group), (it.id, group)


def test_topic_follow_ups_do_not_give_the_answer_away(convs: tuple[Item, ...]) -> None:
    for it in (i for i in convs if i.category == "topic_continuity"):
        final = it.turns[-1]
        assert final.expect is not None and final.expect.must_include, it.id
        for group in final.expect.must_include:
            assert not any(_word_in(v, final.user) for v in group), (it.id, group)


def test_preferences_are_stated_first_and_checked_later(convs: tuple[Item, ...]) -> None:
    for it in (i for i in convs if i.category == "preferences"):
        assert it.turns[0].expect is None, it.id
        assert len(it.judged_turns) >= 1 and 0 not in it.judged_turns


def test_disliked_and_allergen_foods_were_named_earlier(convs: tuple[Item, ...]) -> None:
    for it in convs:
        if it.meta["template"] not in ("pref_diet", "pref_allergy"):
            continue
        first = it.turns[0].user.lower()
        for t in it.turns[1:]:
            if t.expect is not None:
                assert any(v.lower() in first for v in t.expect.must_not_include), it.id


def test_constraint_updates_change_the_rule(convs: tuple[Item, ...]) -> None:
    for it in (i for i in convs if i.category == "constraint_updates"):
        judged = [it.turns[i].expect for i in it.judged_turns]
        first, last = judged[0], judged[-1]
        assert first is not None and last is not None
        assert (first.constraints, first.must_not_include) != (last.constraints, last.must_not_include), it.id


def test_superseded_values_are_forbidden_after_an_update(convs: tuple[Item, ...]) -> None:
    for it in convs:
        if it.meta["template"] in ("cu_meeting_moved", "cu_budget_update"):
            last = it.turns[-1].expect
            assert last is not None and last.must_not_include
            old = last.must_not_include[0]
            assert old in it.turns[0].user and not any(_word_in(old, v) for g in last.must_include for v in g)


# ---------------------------------------------------------------- load_benchmark arguments
def test_limit_takes_the_first_n_after_the_split() -> None:
    pilot = load_benchmark("conversations", split="pilot").items
    assert load_benchmark("conversations", split="pilot", limit=5).items == pilot[:5]
    first8 = load_benchmark("conversations", limit=8).items
    assert collections.Counter(it.category for it in first8) == {c: 2 for c in conv.CATEGORIES}
    assert len(load_benchmark("conversations", limit=10_000).items) == 200


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_rejected(limit: int) -> None:
    with pytest.raises(ValueError, match="benchmark.limit"):
        load_benchmark("conversations", limit=limit)


def test_unknown_name_and_split_list_the_valid_options() -> None:
    with pytest.raises(ValueError, match="conversations.*instructions.*mt_bench.*mt_bench_101"):
        load_benchmark("nope")
    with pytest.raises(ValueError, match="full.*pilot"):
        load_benchmark("conversations", split="test")
    with pytest.raises(ValueError, match="full.*train.*test"):
        load_benchmark("instructions", split="pilot")


# ---------------------------------------------------------------- malformed files
def _broken(tmp_path: Path, line: int, edit: Any) -> Path:
    """Copy of the committed conversations with row ``line`` (1-based) edited in place."""
    rows: list[Any] = _rows(conv.DATA_PATH)[:5]
    rows[line - 1] = edit(rows[line - 1])
    return _write_rows(tmp_path / "broken.jsonl", rows)


_DELETE = object()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Row edit that sets (or, with ``_DELETE``, removes) the dotted ``path``."""

    def edit(row: dict[str, Any]) -> dict[str, Any]:
        obj: Any = row
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            obj = obj[k]
        if value is _DELETE:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value
        return row

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda row: '{"id": "x", "turns": [', "<row>"),
        (lambda row: "[1, 2]", "<row>"),
        (_set("category", _DELETE), "category"),
        (_set("category", "smalltalk"), "category"),
        (_set("category", 3), "category"),
        (_set("turns.0.user", 5), "turns[0].user"),
        (_set("turns", "hello"), "turns"),
        (_set("split", "dev"), "split"),
        (_set("generator_version", _DELETE), "generator_version"),
        (lambda row: row | {"turns": row["turns"][:2]}, "turns"),
        (lambda row: row | {"turns": [row["turns"][0]] * 6}, "turns"),
        (lambda row: row | {"turns": row["turns"][:-1] + [{"user": "hi", "expect": None}]}, "expect"),
        (
            _set("turns.2.expect", {"constraints": [{"kind": "shout", "value": 1}]}),
            "turns[2].expect.constraints[0].kind",
        ),
        (
            _set("turns.2.expect", {"constraints": [{"kind": "max_words", "value": "ten"}]}),
            "turns[2].expect.constraints[0].value",
        ),
        (
            _set("turns.2.expect", {"constraints": [{"kind": "format", "value": "table"}]}),
            "turns[2].expect.constraints[0].value",
        ),
        (
            _set("turns.2.expect", {"constraints": [{"kind": "must_match", "value": "(unclosed"}]}),
            "turns[2].expect.constraints[0].value",
        ),
        (_set("turns.2.expect", {"must_include": ["Paris"]}), "turns[2].expect.must_include[0]"),
        (_set("turns.2.expect", {"must_not_include": [7]}), "turns[2].expect.must_not_include[0]"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path: Path, edit: Any, field: str) -> None:
    path = _broken(tmp_path, 3, edit)
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("conversations", path=str(path))
    assert err.value.line == 3 and err.value.path == str(path)
    assert err.value.field is not None and field in err.value.field
    assert f"{path}:3" in str(err.value) and field in str(err.value)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    rows = _rows(conv.DATA_PATH)[:3]
    path = _write_rows(tmp_path / "dup.jsonl", [rows[0], rows[1], rows[0]])
    with pytest.raises(BenchmarkError, match=r"dup.jsonl:3: field 'id'.*duplicate"):
        load_benchmark("conversations", path=str(path))


def test_missing_file_is_a_benchmark_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(BenchmarkError, match="nope.jsonl.*not found"):
        load_benchmark("conversations", path=str(missing))


def test_a_valid_subset_loads_from_a_custom_path(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "ok.jsonl", _rows(conv.DATA_PATH)[:4] + [""])
    bench = load_benchmark("conversations", path=str(path))
    assert len(bench.items) == 4 and bench.source_path == str(path)


# ---------------------------------------------------------------- instructions
def test_instruction_splits_and_counts() -> None:
    full = load_benchmark("instructions").items
    test = load_benchmark("instructions", split="test").items
    train = load_benchmark("instructions", split="train").items
    assert len(test) == 130 and len(train) + len(test) == len(full)
    assert 280 <= len(full) <= 320
    assert set(collections.Counter(it.category for it in full)) == set(instr.KINDS)
    assert set(collections.Counter(it.category for it in test)) == set(instr.KINDS)
    for it in full:
        assert len(it.turns) == 1 and it.turns[0].expect is not None and it.source == "instructions"
    assert load_benchmark("instructions").version == "instr-v2"


def test_no_duplicate_instruction_texts() -> None:
    texts = [" ".join(it.turns[0].user.lower().split()) for it in load_benchmark("instructions").items]
    assert len(texts) == len(set(texts))


def test_heldout_texts_are_the_test_instructions() -> None:
    held = instr.heldout_texts()
    assert len(held) == 130 and len(set(held)) == 130
    train = {it.turns[0].user for it in load_benchmark("instructions", split="train").items}
    assert not train & set(held)


def test_instruction_expectations_are_checkable() -> None:
    for it in load_benchmark("instructions").items:
        e = it.turns[0].expect
        assert e is not None and (e.must_include or e.must_not_include or e.constraints), it.id


# ---------------------------------------------------------------- public readers
def test_mt_bench_reader_on_fixture() -> None:
    bench = load_benchmark("mt_bench", path=str(MTB))
    assert len(bench.items) == 12 and bench.name == "mt_bench"
    assert bench.sha256 == hashlib.sha256(MTB.read_bytes()).hexdigest()
    first = bench.items[0]
    assert first.id == "mtb-81" and first.category == "writing" and first.source == "mt_bench"
    assert {it.category for it in bench.items} >= {"writing", "roleplay", "reasoning", "math", "coding"}
    for it in bench.items:
        assert it.judged_turns == list(range(len(it.turns)))
        for t in it.turns:
            assert t.golden_reply is None and t.expect is not None
            assert not (t.expect.must_include or t.expect.must_not_include or t.expect.constraints)
            assert t.expect.notes == "MT-Bench: judge helpfulness and correctness of this turn"
    assert len(load_benchmark("mt_bench", path=str(MTB), limit=2).items) == 2


def test_mt_bench_101_reader_on_fixture() -> None:
    bench = load_benchmark("mt_bench_101", path=str(MTB101))
    assert len(bench.items) == 12
    rows = _rows(MTB101)
    for row, it in zip(rows, bench.items, strict=True):
        assert it.id == f"mtb101-{row['task']}-{row['id']}" and it.category == row["task"]
        assert it.source == "mt_bench_101"
        assert [t.user for t in it.turns] == [h["user"] for h in row["history"]]
        assert [t.golden_reply for t in it.turns] == [h["bot"] for h in row["history"]]
        assert it.judged_turns == [len(it.turns) - 1]
        last = it.turns[-1].expect
        assert last is not None and row["task"] in last.notes


@pytest.mark.parametrize(
    ("name", "hint"), [("mt_bench", "question.jsonl"), ("mt_bench_101", "mtbench101.jsonl")]
)
def test_public_benchmarks_need_a_path(name: str, hint: str) -> None:
    with pytest.raises(ValueError, match=rf"set benchmark.path=/path/to/{re.escape(hint)}"):
        load_benchmark(name)


@pytest.mark.parametrize(
    ("name", "row", "field"),
    [
        ("mt_bench", {"question_id": 1, "category": "math"}, "turns"),
        ("mt_bench", {"question_id": "1", "category": "math", "turns": ["hi"]}, "question_id"),
        ("mt_bench", {"question_id": 1, "category": "math", "turns": ["hi", 3]}, "turns[1]"),
        ("mt_bench", {"question_id": 1, "turns": ["hi"]}, "category"),
        ("mt_bench_101", {"task": "CM", "id": 1, "history": [{"user": "hi"}]}, "history[0].bot"),
        ("mt_bench_101", {"task": "CM", "history": [{"user": "hi", "bot": "yo"}]}, "id"),
        ("mt_bench_101", {"task": "CM", "id": 1, "history": []}, "history"),
        ("mt_bench_101", {"task": 5, "id": 1, "history": [{"user": "hi", "bot": "yo"}]}, "task"),
    ],
)
def test_public_readers_name_line_and_field(
    tmp_path: Path, name: str, row: dict[str, Any], field: str
) -> None:
    src = MTB if name == "mt_bench" else MTB101
    lines = src.read_text(encoding="utf-8").splitlines()
    path = _write_rows(tmp_path / "pub.jsonl", [lines[0], json.dumps(row)])
    with pytest.raises(BenchmarkError) as err:
        load_benchmark(name, path=str(path))
    assert err.value.line == 2 and err.value.field == field
    assert f"{path}:2" in str(err.value)


def test_public_readers_report_bad_json_and_missing_files(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "q.jsonl", [MTB.read_text(encoding="utf-8").splitlines()[0], "{oops"])
    with pytest.raises(BenchmarkError, match=r"q.jsonl:2: .*invalid JSON"):
        load_benchmark("mt_bench", path=str(path))
    with pytest.raises(BenchmarkError, match="missing.jsonl.*not found"):
        load_benchmark("mt_bench_101", path=str(tmp_path / "missing.jsonl"))
