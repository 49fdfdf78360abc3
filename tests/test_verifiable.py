"""scorer=verifiable: exact checks where the expectation is the definition, not_scored elsewhere; the gate
accepts it; its agreement with an LLM judge (kappa, disagreeing items); load-time and plan-time refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.analysis.agreement import cohens_kappa, sweep_agreement, verdict_agreement
from posttrain.analysis.gates import ModelScores, evaluate_gate
from posttrain.benchmarks import BenchmarkError, load_benchmark
from posttrain.benchmarks import instructions as instr
from posttrain.items import Constraint, Expectation, Item, Turn, item_from_dict
from posttrain.records import read_jsonl
from posttrain.scorers import verifiable as v
from tests.helpers import posttrain


def _item(*expects: Expectation | None, iid: str = "x-1", meta: dict[str, Any] | None = None) -> Item:
    return Item(id=iid, category="c", turns=tuple(Turn(f"question {k}", e) for k, e in enumerate(expects)),
                source="test", meta=meta or {})


def _row(item: Item, *replies: str) -> dict[str, Any]:
    return {"item_id": item.id, "model": "m",
            "turns": [{"turn": k, "user": t.user, "reply": r} for k, (t, r) in enumerate(zip(item.turns, replies, strict=True))]}


def _verdict(expect: Expectation, reply: str) -> dict[str, Any]:
    item = _item(expect)
    return v.score_item(item, _row(item, reply))


SPANISH = "El perro duerme en el jardín y la casa es muy grande para la familia."
ENGLISH = "The dog sleeps in the garden and the house is very big for the family."
# (what, expectation, a reply that satisfies it, a reply that does not)
CASES = [
    ("answer in an accepted variant", Expectation(must_include=(("Lisbon", "Lisboa"),), verifiable=True),
     "It is Lisboa.", "It is Porto."),
    ("every entity of a list", Expectation(must_include=(("red",), ("green",), ("blue",)), verifiable=True),
     "red, green and blue", "red and green"),
    ("word limit", Expectation(constraints=(Constraint("max_words", 5),), verifiable=True),
     "Just five words right here.", "These are clearly more than five words in all."),
    ("minimum words", Expectation(constraints=(Constraint("min_words", 4),), verifiable=True),
     "one two three four", "one two"),
    ("numbered list", Expectation(constraints=(Constraint("format", "numbered_list"),), verifiable=True),
     "1. spring\n2. summer", "spring, summer"),
    ("bullet list", Expectation(constraints=(Constraint("format", "bullet_list"),), verifiable=True),
     "- a\n- b", "1. a\n2. b"),
    ("JSON", Expectation(constraints=(Constraint("format", "json"), Constraint("must_match", r'"name"\s*:')),
                         verifiable=True),
     '{"name": "Ana"}', "name: Ana"),
    ("language", Expectation(constraints=(Constraint("language", "es"),), verifiable=True), SPANISH, ENGLISH),
    ("forbidden word", Expectation(must_not_include=("water",), verifiable=True),
     "The sea is blue and deep.", "The sea is salty Water."),
]


@pytest.mark.parametrize(("what", "expect", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_each_check_passes_and_fails(what: str, expect: Expectation, good: str, bad: str) -> None:
    ok, ko = _verdict(expect, good), _verdict(expect, bad)
    assert ok["verdict"] == "pass", ok["rationale"]
    assert ko["verdict"] == "fail", ko["rationale"]
    assert ok["scorer"] == "verifiable" and ok["scorer_version"] == v.VERSION
    assert ok["checks_sha256"] == v.checks_sha256() and len(v.checks_sha256()) == 64
    assert ko["checks"] and not all(c["passed"] for c in ko["checks"])


def test_stale_or_missing_generation_turns_are_an_error_not_a_verdict() -> None:
    expect = Expectation(must_include=(("Lisbon",),), verifiable=True)
    item = _item(None, expect)
    stale = _row(item, "hi", "Lisbon")
    stale["turns"][1]["user"] = "a different question"
    row = v.score_item(item, stale)
    assert row["verdict"] == "error" and "user text differs" in row["error"]
    short = _row(item, "hi", "Lisbon")
    short["turns"] = short["turns"][:1]
    row = v.score_item(item, short)
    assert row["verdict"] == "error" and "has no turn 1" in row["error"]
    assert v.score_item(item, _row(item, "hi", "Lisbon"))["verdict"] == "pass"  # the same row, unspoilt


@pytest.mark.parametrize("reply", ["", "   \n", ":::::"])
def test_an_empty_reply_fails(reply: str) -> None:
    # must_not_include alone would pass an empty reply vacuously
    row = _verdict(Expectation(must_not_include=("water",), verifiable=True), reply)
    assert row["verdict"] == "fail" and row["checks"][0]["name"] == "non_empty"


def test_a_language_it_cannot_tell_is_an_error_not_a_pass() -> None:
    expect = Expectation(must_include=(("claro",),), constraints=(Constraint("language", "es"),), verifiable=True)
    row = _verdict(expect, "Sí, claro.")
    assert row["verdict"] == "error" and "language" in row["error"]
    assert _verdict(expect, "No.")["verdict"] == "fail"  # another check decides it anyway


def test_not_scored_is_recorded_counted_and_named() -> None:
    judged_only = _item(Expectation(notes="any faithful translation"), iid="judge-only")
    mixed = _item(Expectation(must_include=(("Paris",),), verifiable=True), Expectation(notes="polite"), iid="mixed")
    exact = _item(Expectation(must_include=(("Paris",),), verifiable=True), iid="exact")
    items = [judged_only, mixed, exact]
    rows = [_row(judged_only, "x"), _row(mixed, "Rome", "ok"), _row(exact, "Paris")]
    scores = v.score_generations(items, rows)
    assert [r["verdict"] for r in scores] == ["not_scored", "not_scored", "pass"]
    # a conversation is never decided on part of what it asks, even where its verifiable turn fails
    assert [tv["verdict"] for tv in scores[1]["turn_verdicts"]] == ["fail", "not_scored"]
    summary = v.summarise(scores)
    assert summary["n_scored"] == 1
    assert summary["not_scored"] == {"n_items": 2, "n_turns": 2, "items": ["judge-only", "mixed"],
                                     "turns": [{"item_id": "judge-only", "turn": 0}, {"item_id": "mixed", "turn": 1}]}
    assert summary["scorer_instrument"] == v.instrument()


def test_a_selection_without_verifiable_items_is_refused() -> None:
    conv = load_benchmark("conversations", limit=5)
    with pytest.raises(ValueError, match="none of the 5 selected items of conversations is declared verifiable"):
        v.check_scorable(conv.items, benchmark="conversations")
    plan = v.check_scorable(load_benchmark("instructions", split="test").items)
    assert plan["n_items"] == 130 and plan["n_verifiable"] == 102 and len(plan["not_scored"]) == 28


def test_eval_plan_refuses_it_before_any_model_loads(compose: Any) -> None:
    from posttrain.errors import PosttrainError
    from posttrain.stages import eval as eval_stage

    # a model path that does not exist: reaching the model preflight would fail differently
    cfg = compose("stage=eval", "model=tiny_instruct", "model.path=/nonexistent/model", "benchmark=conversations",
                  "scorer=verifiable")
    with pytest.raises(PosttrainError, match=r"declared verifiable.*nothing was loaded or spent"):
        eval_stage.plan(cfg)


def _instruction_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in instr.DATA_PATH.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"notes": "Any correct translation."}, r"declared verifiable but carries notes \('Any correct translation.'\)"),
    ({"must_include": [], "constraints": []}, "states nothing a check can test"),
    ({"verifiable": "yes"}, r"'turns\[0\]\.expect\.verifiable': expected bool"),
])
def test_loading_refuses_a_verifiable_turn_with_judge_only_notes(tmp_path: Path, change: dict[str, Any],
                                                                 message: str) -> None:
    rows = _instruction_rows()
    k, row = next((k, r) for k, r in enumerate(rows) if r["turns"][0]["expect"].get("verifiable"))
    row["turns"][0]["expect"].update(change)
    path = _write(tmp_path / "instructions.jsonl", rows)
    with pytest.raises(BenchmarkError, match=message) as err:
        load_benchmark("instructions", path=str(path))
    if "verifiable" not in change:  # the item and the turn are named, on the row's line
        assert f"item {row['id']!r} turn 0" in str(err.value) and f"{path}:{k + 1}" in str(err.value)


def test_verifiable_is_omitted_when_false_and_round_trips() -> None:
    item = _item(Expectation(must_include=(("a",),)), Expectation(must_include=(("b",),), verifiable=True))
    d = item.to_dict()
    assert "verifiable" not in d["turns"][0]["expect"] and d["turns"][1]["expect"]["verifiable"] is True
    assert item_from_dict(json.loads(json.dumps(d))) == item


def test_the_instruction_benchmark_declares_only_definitions() -> None:
    items = load_benchmark("instructions").items
    for it in items:
        e = it.turns[0].expect
        assert e is not None
        if e.verifiable:
            assert not e.notes
    test = load_benchmark("instructions", split="test").items
    assert sum(v.item_is_verifiable(it) for it in test) == 102
    by_text = {it.turns[0].user: it for it in items}
    past = by_text["Rewrite this sentence in the past tense: 'The baby sleeps all afternoon.'"]
    assert _verdict(past.turns[0].expect, "The baby slept all afternoon.")["verdict"] == "pass"  # type: ignore[arg-type]
    assert _verdict(past.turns[0].expect, "It slept.")["verdict"] == "fail"  # type: ignore[arg-type]
    passive = next(it for it in items if "passive voice" in it.turns[0].user)
    assert not v.item_is_verifiable(passive)  # "same meaning" needs a judge


# --------------------------------------------------------------------------------------------- the gate

DECODING = {"do_sample": False, "max_new_tokens": 64}
BENCH = {"name": "instructions", "split": "test", "limit": None, "n": 130, "sha256": "ab" * 32}


def _scores(model: str, passes: int, n: int = 120, *, scorer: str = "verifiable", n_not: int = 10) -> ModelScores:
    verdicts = {f"i{k:03d}": "pass" if k < passes else "fail" for k in range(n)}
    verdicts |= {f"z{k:03d}": "not_scored" for k in range(n_not)}
    return ModelScores(model=model, verdicts=verdicts, scorer=scorer, decoding=DECODING,
                       instrument=v.instrument() if scorer == "verifiable" else None,
                       benchmark=BENCH | {"n": n + n_not})


def test_the_gate_accepts_the_verifiable_scorer_and_leaves_not_scored_out() -> None:
    gate = evaluate_gate(_scores("raw", 20), _scores("chat", 90), kind="superiority")
    assert gate.verdict == "PASS", gate.reasons
    assert gate.n_paired == 120 and len(gate.dropped["not_scored"]) == 10
    assert gate.base_error_rate == 0.0
    # the same numbers under heuristic triage stay triage only
    triage = evaluate_gate(_scores("raw", 20, scorer="heuristic_triage"), _scores("chat", 90, scorer="heuristic_triage"),
                           kind="superiority")
    assert triage.verdict == "NOT_ELIGIBLE" and any("triage only" in r for r in triage.reasons)


def test_the_gate_refuses_mixed_scorers_and_other_check_definitions() -> None:
    mixed = evaluate_gate(_scores("raw", 20), _scores("chat", 90, scorer="llm"), kind="superiority")
    assert mixed.verdict == "NOT_ELIGIBLE" and any("different scorers" in r for r in mixed.reasons)
    other = _scores("chat", 90)
    other = ModelScores(**{**other.__dict__, "instrument": v.instrument() | {"checks_sha256": "0" * 64}})
    gate = evaluate_gate(_scores("raw", 20), other, kind="superiority")
    assert gate.verdict == "NOT_ELIGIBLE" and any("different check definitions" in r for r in gate.reasons)


# --------------------------------------------------------------------------------------------- agreement


def test_cohens_kappa_hand_worked() -> None:
    """4 both pass, 3 both fail, 2 exact-only, 1 judge-only: p_o = .7, p_e = .6·.5 + .4·.5 = .5, kappa = .4."""
    exact = [True] * 4 + [False] * 3 + [True] * 2 + [False]
    judge = [True] * 4 + [False] * 3 + [False] * 2 + [True]
    assert cohens_kappa(exact, judge) == pytest.approx(0.4)
    from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

    assert sm_kappa([[4, 2], [1, 3]]).kappa == pytest.approx(0.4)
    assert cohens_kappa([True, True], [True, True]) is None  # p_e = 1: undefined
    assert cohens_kappa([], []) is None
    assert cohens_kappa([True, False], [False, True]) == pytest.approx(-1.0)


def test_verdict_agreement_lists_the_disagreeing_items() -> None:
    exact = {"a": "pass", "b": "fail", "c": "pass", "d": "not_scored", "e": "pass"}
    judge = {"a": "pass", "b": "pass", "c": "fail", "d": "pass", "e": "error"}
    out = verdict_agreement(exact, judge)
    assert out["n"] == 3 and out["excluded"] == 2
    assert (out["both_pass"], out["both_fail"], out["exact_pass_judge_fail"], out["exact_fail_judge_pass"]) == (1, 0, 1, 1)
    assert out["observed_agreement"] == pytest.approx(1 / 3)
    # p_exact = 2/3, p_judge = 2/3: p_e = 4/9 + 1/9 = 5/9; kappa = (1/3 - 5/9) / (4/9) = -0.5
    assert out["kappa"] == pytest.approx(-0.5)
    assert out["disagreements"] == [{"item_id": "b", "verifiable": "fail", "judge": "pass"},
                                    {"item_id": "c", "verifiable": "pass", "judge": "fail"}]


def test_sweep_agreement_pairs_jobs_that_scored_the_same_replies() -> None:
    same = {"model": "m", "prompt_format": "raw", "benchmark_info": {"sha256": "s", "split": "test"}}
    rows = [{"item_id": "a", "verdict": "pass", "reply_chars": 3}, {"item_id": "b", "verdict": "fail", "reply_chars": 4}]
    judged = [{"item_id": "a", "verdict": "pass", "reply_chars": 3}, {"item_id": "b", "verdict": "pass", "reply_chars": 4}]
    jobs = [("exact", same | {"scorer": "verifiable"}, rows), ("judge", same | {"scorer": "llm", "judge": "claude"}, judged),
            ("other", same | {"scorer": "llm", "prompt_format": "chat_template"}, judged)]
    out = sweep_agreement(jobs)
    assert len(out) == 1 and out[0]["verifiable"] == "exact" and out[0]["judge"] == "judge"
    assert out[0]["disagreements"] == [{"item_id": "b", "verifiable": "fail", "judge": "pass"}]
    assert out[0]["reply_chars_differ"] == 0


# --------------------------------------------------------------------------------------------- end to end


def test_tiny_model_eval_with_scorer_verifiable_writes_records(tmp_path: Path, posttrain_home: Path,
                                                               shared_cache: Path) -> None:
    run = tmp_path / "run"
    posttrain("stage=eval", "model=tiny_instruct", "benchmark=instructions", "benchmark.split=test",
              "benchmark.limit=12", "scorer=verifiable", "stage.sentinel=false", "generation.max_new_tokens=8",
              "generation.batch_size=12", "tracking=disabled", f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    summary = json.loads((run / "summary.json").read_text())
    scores = read_jsonl(run / "scores.jsonl")
    items = load_benchmark("instructions", split="test", limit=12).items
    expected_not = [it.id for it in items if not v.item_is_verifiable(it)]
    assert summary["scorer"] == "verifiable" and summary["gate_eligible"] is True
    assert summary["scorer_instrument"] == v.instrument()
    assert summary["not_scored"]["items"] == expected_not and summary["n_not_scored"] == len(expected_not)
    assert len(scores) == 12 and {r["scorer"] for r in scores} == {"verifiable"}
    assert [r["item_id"] for r in scores if r["verdict"] == "not_scored"] == expected_not
    assert summary["n_pass"] + summary["n_fail"] + summary["n_error"] == 12 - len(expected_not)
    assert all(r["checks"] for r in scores if r["verdict"] in ("pass", "fail"))


def test_an_llm_judged_run_records_its_agreement_with_the_exact_checks() -> None:
    from posttrain.stages.eval import _verifiable_agreement

    exact = _item(Expectation(must_include=(("Paris",),), verifiable=True), iid="exact")
    judged = _item(Expectation(notes="polite"), iid="judged")
    items, rows = [exact, judged], [_row(exact, "Rome"), _row(judged, "hello")]
    judge = [{"item_id": "exact", "verdict": "pass"}, {"item_id": "judged", "verdict": "pass"}]
    out = _verifiable_agreement(items, rows, judge)
    assert out is not None and out["n"] == 1 and out["excluded"] == 1
    assert out["disagreements"] == [{"item_id": "exact", "verifiable": "fail", "judge": "pass"}]
    assert _verifiable_agreement([judged], [_row(judged, "hello")], judge[1:]) is None


def test_the_comparison_shows_verifiable_vs_judge_agreement() -> None:
    from posttrain.analysis.comparison import JobRecords, build_comparison
    from posttrain.analysis.report import render_markdown

    common = {"model": "m", "model_kind": "instruct", "prompt_format": "raw",
              "benchmark_info": {"name": "instructions", "split": "test", "limit": None, "n": 3, "sha256": "s"}}
    exact = [{"item_id": i, "category": "c", "verdict": vd, "scorer": "verifiable", "reply_chars": 5}
             for i, vd in (("a", "pass"), ("b", "fail"), ("c", "not_scored"))]
    judged = [{"item_id": i, "category": "c", "verdict": vd, "scorer": "llm", "judge": "claude", "reply_chars": 5}
              for i, vd in (("a", "pass"), ("b", "pass"), ("c", "fail"))]
    jobs = [JobRecords("0", common | {"scorer": "verifiable", "scorer_instrument": v.instrument()}, exact),
            JobRecords("1", common | {"scorer": "llm", "judge": "claude"}, judged)]
    comp = build_comparison(jobs, calibration=lambda *a, **k: (False, "uncalibrated", None))
    (block,) = comp["scorer_agreement"]
    assert block["n"] == 2 and block["disagreements"] == [{"item_id": "b", "verifiable": "fail", "judge": "pass"}]
    md = render_markdown(comp)
    assert "## Verifiable scorer vs LLM judge" in md and "`b` (verifiable fail, judge pass)" in md
    exact_model = next(m for m in comp["models"] if m["scorer"] == "verifiable")
    assert exact_model["gate_eligible"] is True and exact_model["n_not_scored"] == 1


def test_rows_decided_by_other_definitions_than_the_summary_are_a_record_defect() -> None:
    from posttrain.analysis.gates import scores_from_records

    item = _item(Expectation(must_include=(("Paris",),), verifiable=True))
    row = v.score_item(item, _row(item, "Paris"))
    summary = {"scorer": "verifiable", "scorer_instrument": v.instrument()}
    def problems(s: dict[str, Any], r: dict[str, Any]) -> list[str]:  # the instrument's, not the cluster map's
        return [p for p in scores_from_records("m", s, [r]).problems if "cluster" not in p and "items.jsonl" not in p]

    assert problems(summary, row) == []
    (problem,) = problems(summary, row | {"checks_sha256": "0" * 64})
    assert "other check definitions" in problem
    (problem,) = problems({"scorer": "verifiable"}, row)
    assert "no scorer_instrument" in problem
