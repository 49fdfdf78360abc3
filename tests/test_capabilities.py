"""The capability benchmarks (system_prompt, structured_output, length, refusal): loading, splits, byte
identity with their YAML data, refusals of a bad data file; the new exact checks (json_schema,
table_columns, sentence_count, item_count) on hand-written replies; an item's system turn in every
prompt format. All pure and fast: no model, no judge."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from posttrain.benchmarks import CAPABILITY_NAMES, BenchmarkError, load_benchmark
from posttrain.benchmarks import capabilities as cap
from posttrain.config import PromptConfig
from posttrain.errors import ContaminationError
from posttrain.generation.prompts import render_prompt
from posttrain.items import Constraint, Expectation, Item, Turn
from posttrain.scorers import checks
from posttrain.scorers import verifiable as v

DOCS = Path(__file__).parent.parent / "docs" / "benchmarks-data.md"
# name -> (full, test, verifiable items in the full set, clusters): the numbers docs/benchmarks-data.md states.
COUNTS = {"system_prompt": (68, 34, 58, 24), "structured_output": (64, 32, 64, 31), "length": (64, 32, 64, 15),
          "refusal": (64, 32, 0, 64)}
# name -> its current version: a changed output needs a new one (refusal-v2 added explicit_decline)
VERSIONS = {"system_prompt": "system_prompt-v1", "structured_output": "structured_output-v1", "length": "length-v1",
            "refusal": "refusal-v2"}


# ---------------------------------------------------------------- the data files


@pytest.mark.parametrize("name", CAPABILITY_NAMES)
def test_regenerating_gives_identical_bytes(name: str, tmp_path: Path) -> None:
    assert cap.serialize(cap.generate(name)) == cap.data_path(name).read_bytes()
    assert cap.write(name, tmp_path / "x.jsonl").read_bytes() == cap.data_path(name).read_bytes()


@pytest.mark.parametrize("name", CAPABILITY_NAMES)
def test_another_seed_gives_another_set(name: str) -> None:
    assert cap.serialize(cap.generate(name, seed=7)) != cap.data_path(name).read_bytes()


@pytest.mark.parametrize("name", CAPABILITY_NAMES)
def test_counts_splits_and_verifiable_items(name: str) -> None:
    full, test = load_benchmark(name), load_benchmark(name, split="test")
    train = load_benchmark(name, split="train")
    n_full, n_test, n_verifiable, n_clusters = COUNTS[name]
    assert (len(full.items), len(test.items), len(train.items)) == (n_full, n_test, n_full - n_test)
    assert n_full >= 60
    assert sum(v.item_is_verifiable(it) for it in full.items) == n_verifiable
    assert {it.id for it in test.items}.isdisjoint(it.id for it in train.items)
    # every template is in both splits, so a format chosen on train is tested on the same kinds of item
    family = [it.meta["template"].split("/")[0] for it in full.items]
    assert {f for f, it in zip(family, full.items, strict=True) if it in train.items} == set(family)
    assert {f for f, it in zip(family, full.items, strict=True) if it in test.items} == set(family)
    assert len({it.meta["template"] for it in full.items}) == n_clusters
    assert len({tuple(t.user for t in it.turns) + (it.meta.get("system", ""),) for it in full.items}) == n_full
    assert all(it.source == name for it in full.items) and full.version == VERSIONS[name]


def test_docs_record_counts_and_hashes() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    for name in CAPABILITY_NAMES:
        assert hashlib.sha256(cap.data_path(name).read_bytes()).hexdigest() in doc, f"update {name}'s hash in the docs"
        assert f"`{name}`" in doc


def test_clusters_are_the_template_and_its_cluster_slots() -> None:
    data = cap.load_templates("length")
    frames = data.pools["one_word_asks"]
    for it in load_benchmark("length").items:
        if it.category == "one_word":
            name, slot = it.meta["template"].split("/")
            assert name == "one_word" and slot.startswith("ask=")
            assert frames[int(slot.removeprefix("ask="))] in it.turns[0].user
    assert {it.meta["template"] for it in load_benchmark("system_prompt").items if it.category == "forbidden"} == {
        "sys_rivals", "sys_codename", "sys_politics"}


def test_system_prompt_items_carry_their_system_turn_and_never_state_it_in_the_user_turn() -> None:
    items = load_benchmark("system_prompt").items
    assert all(it.meta.get("system") for it in items)
    for it in items:
        for t in it.turns:
            assert it.meta["system"] not in t.user


def test_refusal_items_are_judged_and_structured_length_items_are_exact() -> None:
    refusal = load_benchmark("refusal").items
    assert {it.category for it in refusal} == {"harmful", "lookalike"}
    assert all(it.turns[0].expect.notes and not it.turns[0].expect.verifiable for it in refusal)  # type: ignore[union-attr]
    # the triage heuristic (v2): harmful items expect an explicit decline, look-alikes none; never verifiable
    assert all(it.turns[0].expect.explicit_decline is (it.category == "harmful") for it in refusal)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="none of the 64 selected items of refusal is declared verifiable"):
        v.check_scorable(refusal, benchmark="refusal")
    kinds = {c.kind for name in ("structured_output", "length") for it in load_benchmark(name).items
             for t in it.turns if t.expect for c in t.expect.constraints}
    assert {"json_schema", "table_columns", "sentence_count", "item_count"} <= kinds


def test_verifiable_scorer_accepts_and_decides_a_capability_item() -> None:
    items = load_benchmark("length", split="test").items
    assert v.check_scorable(items, benchmark="length")["n_verifiable"] == len(items)
    item = next(it for it in items if it.category == "n_items")
    n = item.turns[0].expect.constraints[0].value  # type: ignore[union-attr]
    good = "\n".join(f"- thing {k}" for k in range(n))
    bad = "\n".join(f"- thing {k}" for k in range(n + 1))
    for reply, verdict in ((good, "pass"), (bad, "fail")):
        row = {"item_id": item.id, "model": "m", "turns": [{"turn": 0, "user": item.turns[0].user, "reply": reply}]}
        assert v.score_item(item, row)["verdict"] == verdict


# ---------------------------------------------------------------- refusals of a bad data file


def _edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = cap.templates_path(name).read_text(encoding="utf-8")
    assert old in text, old
    p = tmp_path / f"{name}_templates.yaml"
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        ("length", "version: length-v1", "version: 3", "should be a string 'length-v<N>'"),
        ("length", "seed: 2404", "seed: two", "seed"),
        ("length", "category: one_word\n", "category: one_wrd\n", "needs a category"),
        ("length", "count: 16\n    draw: {x: one_word_qs", "count: 1\n    draw: {x: one_word_qs", "should be an int >= 2"),
        ("length", "draw: {x: one_word_qs,", "draw: {x: one_word_q,", "which does not exist"),
        ("length", "    draw: {x: one_word_qs, ask: one_word_asks}", "    draw: {x: one_word_qs, ask: one_word_asks}\n    colour: red",
         "unknown key"),
        ("length", "{x.q} {ask}", "{x.question} {ask}", "has no field 'question'"),
        ("length", "cluster: [ask]", "cluster: [asks]", "should be a list of the template's drawn slots"),
        ("length", "{x.q} {ask}", "{x.q} {asks}", "draws only"),
        ("length", "count: 16\n    draw: {x: one_word_qs", "count: 99\n    draw: {x: one_word_qs", "cannot make 99 distinct"),
        ("length", "{kind: max_words, value: 1,", "{kind: max_words, value: 0,", "word count must be >= 1"),
        ("length", "{kind: sentence_count, value: 1,", "{kind: sentence_count, value: one,", "expected int"),
        ("structured_output", "type: object\n        required: [title", "type: objekt\n        required: [title",
         "not a valid JSON Schema"),
        ("structured_output", "cols: [Country, Capital, Population]", "cols: []", "value': must not be empty"),
        ("refusal", "  lookalike:\n    - {r:", "  lookalikes:\n    - {r:", "does not exist"),
        ("refusal", '    - "Hi there. {x.r}"', '    - "Hi there. {x.r}"\n    - 42', "should be a non-empty str like the pool's other entries"),
        ("refusal", "explicit_decline: true", "explicit_decline: yes please", "field 'turns\\[0\\].expect.explicit_decline': expected bool"),
        ("refusal", "explicit_decline: true", "explicit_decline: true\n          verifiable: true",
         "carries explicit_decline=True: a refusal marker is a heuristic for triage only"),
        ("system_prompt", "        expect:\n          notes: \"The system turn makes",
         "        expect:\n          verifiable: true\n          notes: \"The system turn makes", "carries notes"),
    ],
)
def test_an_invalid_data_file_fails_naming_file_and_key(tmp_path: Path, name: str, old: str, new: str, message: str) -> None:
    path = _edited(tmp_path, name, old, new)
    with pytest.raises(BenchmarkError, match=message) as e:
        cap.generate(name, path=path)
    assert str(path) in str(e.value) and "nothing was generated" in str(e.value)


def test_an_unused_pool_is_a_typo(tmp_path: Path) -> None:
    path = _edited(tmp_path, "length", "pools:\n", "pools:\n  spare: [a, b]\n")
    with pytest.raises(BenchmarkError, match=r"\['spare'\] are drawn by no template"):
        cap.generate("length", path=path)


def test_a_committed_file_with_a_bad_row_fails_on_load(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in cap.data_path("structured_output").read_text(encoding="utf-8").splitlines()]
    rows[2]["turns"][0]["expect"]["constraints"][0]["value"] = {"type": 7}
    p = tmp_path / "so.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"so.jsonl:3: field 'turns\[0\].expect.constraints\[0\].value'"):
        load_benchmark("structured_output", path=str(p))
    rows = [json.loads(line) for line in cap.data_path("system_prompt").read_text(encoding="utf-8").splitlines()]
    rows[2]["meta"]["system"] = "  "
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"field 'meta.system': must be a non-empty string"):
        load_benchmark("system_prompt", path=str(p))


# ---------------------------------------------------------------- the new checks


SCHEMA: dict[str, Any] = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
                          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("reply", "passed", "detail"),
    [
        ('{"name": "Ana", "age": 31}', True, "fits the schema"),
        ('```json\n{"name": "Ana", "age": 31}\n```', True, "fits the schema"),
        ('{"name": "Ana", "age": "31"}', False, "at age: '31' is not of type 'integer'"),
        ('{"name": "Ana"}', False, "'age' is a required property"),
        ('{"name": "Ana", "age": 31, "city": "Porto"}', False, "Additional properties"),
        ('Sure! {"name": "Ana", "age": 31}', False, "not valid JSON"),
        ('```json\n{"name": "Ana", "age": 31}\n```\nThis object has two keys.', False, "text outside it"),
        ("", False, "not valid JSON"),
    ],
)
def test_json_schema_check(reply: str, passed: bool, detail: str) -> None:
    result = checks.check_constraint(reply, Constraint("json_schema", SCHEMA))
    assert (result["passed"], result["name"]) == (passed, "json_schema")
    assert detail in result["detail"]


TABLE = "| Country | Capital |\n|---|---|\n| France | Paris |\n| Japan | Tokyo |"


@pytest.mark.parametrize(
    ("reply", "passed", "detail"),
    [
        (TABLE, True, "2 rows under the 2 stated columns"),
        ("Here you go:\n\n" + TABLE.replace("| Country |", "| **country** |") + "\n\nEnjoy.", True, "2 rows"),
        ("Country | Capital\n:--- | ---:\nFrance | Paris", True, "1 rows"),
        (TABLE.replace("Capital", "City"), False, "header is ['Country', 'City']"),
        ("| Capital | Country |\n|---|---|\n| Paris | France |", False, "expected ['Country', 'Capital']"),
        ("| Country | Capital |\n|---|---|", False, "no data row"),
        ("| Country | Capital |\n|---|---|\n| France | Paris | extra |", False, "do not have 2 cells"),
        ("Country, Capital\nFrance, Paris", False, "no markdown table"),
    ],
)
def test_table_columns_check(reply: str, passed: bool, detail: str) -> None:
    result = checks.check_constraint(reply, Constraint("table_columns", ["Country", "Capital"]))
    assert result["passed"] is passed and detail in result["detail"]


@pytest.mark.parametrize(
    ("reply", "n"),
    [
        ("The sky looks blue because air scatters blue light more than red.", 1),
        ("Water boils at 100 °C at sea level; at 3.5 km it boils lower", 1),
        ("It rains. Then it stops! Why? Nobody knows…", 4),
        ('He said "stop." Then he left.', 2),
        ("First line without a stop\nSecond line without one", 2),
        ("Bees collect nectar.\n\n- They store it.\n- They fan it dry.", 3),
        ("   ", 0),
    ],
)
def test_sentence_count(reply: str, n: int) -> None:
    assert checks.sentence_count(reply) == n
    assert checks.check_constraint(reply, Constraint("sentence_count", 1))["passed"] is (n == 1)


@pytest.mark.parametrize(
    ("reply", "passed"),
    [
        ("- apple\n- pear\n- plum", True),
        ("Here are three:\n1. apple\n2) pear\n3. plum\nEnjoy!", True),
        ("* apple\n* pear", False),
        ("- apple\n- pear\n- plum\n- fig", False),
        ("apple, pear, plum", False),
    ],
)
def test_item_count_check(reply: str, passed: bool) -> None:
    result = checks.check_constraint(reply, Constraint("item_count", 3))
    assert result["passed"] is passed and result["name"] == "item_count:3"


def test_new_kinds_go_through_the_expectation_checks() -> None:
    e = Expectation(constraints=(Constraint("sentence_count", 2), Constraint("item_count", 2)), verifiable=True)
    assert [c["passed"] for c in checks.check_expectation("One. Two.", e)] == [True, False]


# ---------------------------------------------------------------- an item's system turn in every format


SYSTEM = "Always reply in Spanish."
HISTORY = [("Hi there", "Hola"), ("Why is the sky blue?", None)]


@pytest.mark.parametrize("fmt", ["transcript", "instruction_cue", "urial", "raw"])
def test_base_formats_render_the_system_turn_as_a_leading_line(fmt: str) -> None:
    pc = PromptConfig()
    with_system = render_prompt(HISTORY, fmt, pc, kind="base", system=SYSTEM)
    without = render_prompt(HISTORY, fmt, pc, kind="base")
    assert SYSTEM not in without and with_system.count(SYSTEM) == 1
    assert with_system.replace(SYSTEM + "\n\n", "", 1) == without  # a line and a blank line, nothing else moves
    first_user = with_system.index("Hi there")
    assert with_system.index(SYSTEM) < first_user
    if fmt in ("instruction_cue", "raw"):
        assert with_system.startswith(SYSTEM + "\n\n")


def test_the_base_guard_still_reads_the_system_turn() -> None:
    with pytest.raises(ContaminationError, match="base-chat-tokens"):
        render_prompt(HISTORY, "transcript", PromptConfig(), kind="base", system="<|im_start|>system")


def _chat_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def test_chat_template_sends_the_item_system_turn_in_place_of_the_configured_one() -> None:
    pc = PromptConfig(system_prompt="You are a generic assistant.")
    tok = _chat_tokenizer()
    text = render_prompt(HISTORY, "chat_template", pc, kind="instruct", tokenizer=tok, system=SYSTEM)
    assert text.startswith(f"<|system|>{SYSTEM}\n<|user|>Hi there") and "generic" not in text
    assert render_prompt(HISTORY, "chat_template", pc, kind="instruct", tokenizer=tok).startswith(
        "<|system|>You are a generic assistant.")


def test_eval_generation_passes_the_item_system_turn() -> None:
    from types import SimpleNamespace

    from posttrain.stages.eval import generate_conversations

    seen: list[str] = []

    class Backend:
        def generate(self, prompts: list[str], params: Any) -> list[Any]:
            seen.extend(prompts)
            return [SimpleNamespace(text="ok", n_prompt_tokens=1, n_new_tokens=1, finish_reason="stop") for _ in prompts]

    items = [Item("a", "c", (Turn("Q1", Expectation(notes="n")),), meta={"system": SYSTEM}),
             Item("b", "c", (Turn("Q2", Expectation(notes="n")),))]
    gen = SimpleNamespace(batch_size=4, max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0, seed=0)
    generate_conversations(items, Backend(), fmt="transcript", prompt_cfg=PromptConfig(), gen_cfg=gen, kind="base",
                           tokenizer=None, model_name="m", allow_chat_template_on_base=False, fingerprint="f",
                           on_done=lambda rows: None, progress=False)
    assert SYSTEM in seen[0] and SYSTEM not in seen[1]
