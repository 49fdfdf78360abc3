"""Deterministic checks, heuristic triage and scorer diagnostics."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import stats as sps

from posttrain.items import Constraint, Expectation, Item, Turn
from posttrain.scorers.checks import (
    check_constraint,
    check_expectation,
    check_format,
    check_language,
    check_must_include,
    check_must_not_include,
    detect_language,
    word_count,
)
from posttrain.scorers.diagnostics import LENGTH_AUC_FLAG, length_bias, spot_check_sample
from posttrain.scorers.triage import triage_generations, triage_item

SCORE_KEYS = {
    "item_id", "category", "model", "verdict", "scorer", "judge", "judge_provider", "judge_model",
    "template_version", "template_sha256", "turn_verdicts", "checks", "rationale", "input_tokens", "output_tokens", "cost_usd",
    "n_parse_failures", "n_api_errors", "reply_chars", "error",
}  # fmt: skip


# ------------------------------------------------------------------------------------------
# Entities
# ------------------------------------------------------------------------------------------


def test_must_include_groups_variants_case_accents_and_word_boundaries() -> None:
    groups = (("Lisbon", "Lisboa"), ("Málaga",))
    assert check_must_include("We fly to LISBOA, then malaga.", groups)["passed"]
    res = check_must_include("We fly to Lisbon.", groups)
    assert not res["passed"] and "Málaga" in res["detail"]
    # Word boundaries: "Rome" is not in "Romeo", and a variant with symbols still matches.
    assert not check_must_include("Romeo and Juliet", (("Rome",),))["passed"]
    assert check_must_include("I like C++ a lot", (("C++",),))["passed"]
    assert check_must_include("New   York is big", (("new york",),))["passed"]
    assert check_must_include("anything", ())["passed"]


def test_must_not_include() -> None:
    res = check_must_not_include("You said peanuts were fine.", ("peanuts", "shellfish"))
    assert not res["passed"] and "peanuts" in res["detail"]
    assert check_must_not_include("Try the shellfishy soup? No: pasta.", ("shellfish",))["passed"]
    assert not check_must_not_include("Zürich it is.", ("zurich",))["passed"]


# ------------------------------------------------------------------------------------------
# Constraints
# ------------------------------------------------------------------------------------------


def test_word_count_is_whitespace_tokens() -> None:
    assert word_count("Hello, world!  How are\nyou?") == 5
    assert word_count("   ") == 0


def test_max_and_min_words() -> None:
    assert check_constraint("one two three", Constraint("max_words", 3))["passed"]
    assert not check_constraint("one two three four", Constraint("max_words", 3))["passed"]
    assert check_constraint("one two three", Constraint("min_words", 3))["passed"]
    assert not check_constraint("one two", Constraint("min_words", 3))["passed"]


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("bullet_list", "Options:\n- tea\n* coffee\n• water", "- only one bullet\nplain text"),
        ("numbered_list", "Steps:\n1. boil\n2) pour", "1. one\nand then more"),
        ("json", '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
        ("json", '  {"city": "Lisbon"}  ', "Here is JSON: {}"),
        ("single_line", "  Just one line.  \n", "Line one.\nLine two."),
        ("all_caps", "YES, 42 TIMES!", "YES, mostly"),
        ("no_commas", "No commas here.", "One, two."),
    ],
)
def test_formats(fmt: str, good: str, bad: str) -> None:
    assert check_format(good, fmt)["passed"], check_format(good, fmt)
    assert not check_format(bad, fmt)["passed"], check_format(bad, fmt)


def test_unknown_format_or_kind_raises() -> None:
    with pytest.raises(ValueError, match="format"):
        check_format("x", "haiku")
    with pytest.raises(ValueError, match="kind"):
        check_constraint("x", Constraint("rhymes", True))  # type: ignore[arg-type]


def test_must_match_and_no_match_case_insensitive() -> None:
    assert check_constraint("Total: 42 EUR", Constraint("must_match", r"\d+\s*eur"))["passed"]
    assert not check_constraint("Total: 42", Constraint("must_match", r"eur"))["passed"]
    assert not check_constraint("As an AI model", Constraint("no_match", r"as an ai"))["passed"]
    assert check_constraint("Sure.", Constraint("no_match", r"as an ai"))["passed"]


SHORT_TEXTS = {
    "en": "Yes, of course. Lisbon is the capital of Portugal and it has many old neighbourhoods.",
    "es": "Sí, claro. Lisboa es la capital de Portugal y tiene muchos barrios antiguos.",
    "fr": "Oui, bien sûr. Lisbonne est la capitale du Portugal et elle a beaucoup de vieux quartiers.",
    "de": "Ja, natürlich. Lissabon ist die Hauptstadt von Portugal und hat viele alte Viertel.",
    "it": "Sì, certo. Lisbona è la capitale del Portogallo e ha molti quartieri antichi.",
    "pt": "Sim, claro. Lisboa é a capital de Portugal e tem muitos bairros antigos.",
}


@pytest.mark.parametrize("lang", sorted(SHORT_TEXTS))
def test_language_detection_on_short_texts(lang: str) -> None:
    assert detect_language(SHORT_TEXTS[lang])[0] == lang
    assert check_language(SHORT_TEXTS[lang], lang)["passed"]
    others = [o for o in SHORT_TEXTS if o != lang]
    for other in others:
        assert not check_language(SHORT_TEXTS[lang], other)["passed"], (lang, other)


def test_language_is_conservative_when_it_cannot_tell() -> None:
    assert check_language("Lisboa, obviously!", "es")["passed"]  # < 5 words
    assert check_language("Paris Berlin Madrid Rome Vienna Prague", "fr")["passed"]  # no stopwords
    assert check_language("The answer is the same.", "ja")["passed"]  # unsupported code
    assert detect_language("ok")[0] is None


def test_check_expectation_lists_every_stated_check() -> None:
    exp = Expectation(
        must_include=(("Lisbon",),),
        must_not_include=("Porto",),
        constraints=(Constraint("max_words", 50), Constraint("format", "no_commas")),
        notes="judge hint only",
    )
    names = [c["name"] for c in check_expectation("Lisbon is lovely.", exp)]
    assert names == ["must_include", "must_not_include", "max_words:50", "format:no_commas"]
    assert check_expectation("anything", Expectation(notes="only notes")) == []


# ------------------------------------------------------------------------------------------
# Triage
# ------------------------------------------------------------------------------------------


def _item(constraints: tuple[Constraint, ...] = ()) -> Item:
    return Item(
        id="trip-001",
        category="preference_recall",
        turns=(
            Turn(user="I'm allergic to peanuts. Plan a day in Lisbon for me."),
            Turn(user="Something else?"),
            Turn(
                user="Where was I going, and what should I avoid at dinner?",
                expect=Expectation(
                    must_include=(("Lisbon", "Lisboa"), ("peanut", "peanuts")),
                    must_not_include=("Porto",),
                    constraints=constraints,
                ),
            ),
        ),
    )


def _gen(item: Item, final_reply: str, model: str = "tiny_base") -> dict:
    replies = ["Sure, here is a plan.", "Maybe a museum.", final_reply]
    return {
        "item_id": item.id,
        "category": item.category,
        "source": item.source,
        "model": model,
        "prompt_format": "transcript",
        "turns": [
            {"turn": i, "user": t.user, "prompt_sha256": "0" * 64, "reply": r,
             "n_prompt_tokens": 10, "n_new_tokens": 10, "finish_reason": "stop"}
            for i, (t, r) in enumerate(zip(item.turns, replies, strict=True))
        ],
    }  # fmt: skip


LONG_CORRECT = (
    "You are going to Lisbon, and at dinner you should avoid peanuts, since you told me you are allergic. "
    + "Ask the waiter about satay sauces and desserts; many pastries are safe but check the labels. " * 25
)


def test_correct_2000_char_reply_passes() -> None:
    item = _item()
    reply = LONG_CORRECT[:2000]
    assert len(reply) == 2000 and word_count(reply) > 300
    row = triage_item(item, _gen(item, reply))
    assert set(row) == SCORE_KEYS
    assert row["verdict"] == "pass", row["rationale"]
    assert row["reply_chars"] == 2000
    assert (row["scorer"], row["judge"], row["judge_provider"], row["judge_model"], row["template_version"],
            row["template_sha256"]) == ("heuristic_triage", None, None, None, "triage-v3", None)  # fmt: skip
    assert row["cost_usd"] == 0 and row["input_tokens"] == 0 and row["error"] is None
    assert [tv["turn"] for tv in row["turn_verdicts"]] == [2]
    assert all(c["turn"] == 2 for c in row["checks"])


def test_forbidden_entity_fails() -> None:
    item = _item()
    row = triage_item(item, _gen(item, "You're off to Lisbon, not Porto; skip the peanuts."))
    assert row["verdict"] == "fail"
    assert "Porto" in row["rationale"]
    failed = [c for c in row["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["must_not_include"]


def test_word_limit_only_when_the_item_has_one() -> None:
    reply = LONG_CORRECT[:2000]
    unconstrained = _item()
    assert triage_item(unconstrained, _gen(unconstrained, reply))["verdict"] == "pass"
    limited = _item((Constraint("max_words", 60),))
    row = triage_item(limited, _gen(limited, reply))
    assert row["verdict"] == "fail"
    assert [c["name"] for c in row["checks"] if not c["passed"]] == ["max_words:60"]
    short = "Lisbon, and avoid peanuts."
    assert triage_item(limited, _gen(limited, short))["verdict"] == "pass"


def test_triage_errors_on_stale_or_uncheckable_items() -> None:
    item = _item()
    gen = _gen(item, "Lisbon; no peanuts.")
    gen["turns"][2]["user"] = "a different question"
    assert triage_item(item, gen)["verdict"] == "error"
    notes_only = Item(id="x", category="c", turns=(Turn(user="hi", expect=Expectation(notes="be kind")),))
    row = triage_item(
        notes_only, {"item_id": "x", "model": "m", "turns": [{"turn": 0, "user": "hi", "reply": "hello"}]}
    )
    assert row["verdict"] == "error" and "llm scorer" in row["error"]


def test_triage_generations_pairs_by_id_and_names_missing() -> None:
    a = _item()
    b = Item(id="trip-002", category="c", turns=a.turns)
    rows = [_gen(b, "Lisbon, no peanuts."), _gen(a, "Porto!")]
    out = triage_generations([a, b], rows)
    assert [(r["item_id"], r["verdict"]) for r in out] == [("trip-001", "fail"), ("trip-002", "pass")]
    with pytest.raises(ValueError, match="trip-002"):
        triage_generations([a, b], rows[1:])


# ------------------------------------------------------------------------------------------
# Diagnostics
# ------------------------------------------------------------------------------------------

# A fixed table with ties and a weak length effect: (reply_chars, verdict).
TABLE = [
    (120, "pass"), (340, "fail"), (560, "pass"), (560, "fail"), (800, "pass"), (950, "pass"),
    (1000, "fail"), (1200, "pass"), (1500, "fail"), (1500, "pass"), (2100, "fail"), (90, "pass"),
    (3000, "fail"), (45, "fail"), (700, "pass"), (2400, "pass"), (610, "error"),
]  # fmt: skip


def _rows(table: list[tuple[int, str]]) -> list[dict]:
    return [{"reply_chars": c, "verdict": v} for c, v in table]


def test_length_bias_matches_scipy() -> None:
    res = length_bias(_rows(TABLE))
    kept = [(c, v) for c, v in TABLE if v != "error"]
    x = np.array([c for c, _ in kept], dtype=float)
    y = np.array([v == "pass" for _, v in kept], dtype=float)
    assert (res["n"], res["n_pass"], res["n_fail"]) == (16, 9, 7)

    pb = sps.pointbiserialr(y, x)
    assert res["point_biserial"]["r"] == pytest.approx(pb.statistic)
    assert res["point_biserial"]["p_value"] == pytest.approx(pb.pvalue)

    fails, passes = x[y == 0], x[y == 1]
    u = sps.mannwhitneyu(fails, passes).statistic
    brute = np.mean([(f > p) + 0.5 * (f == p) for f, p in itertools.product(fails, passes)])
    assert res["auc"] == pytest.approx(u / (len(fails) * len(passes))) == pytest.approx(brute)
    assert res["auc_max"] == pytest.approx(max(brute, 1 - brute))

    edges = np.quantile(x, [0, 0.25, 0.5, 0.75, 1])
    assert [q["high"] for q in res["quartiles"]] == pytest.approx(edges[1:])
    assert sum(q["n"] for q in res["quartiles"]) == 16
    first = res["quartiles"][0]
    assert first["n"] == int((x <= edges[1]).sum())
    assert first["pass_rate"] == pytest.approx(y[x <= edges[1]].mean())

    # Best single threshold by brute force over every cut and both directions.
    best = max(
        max(np.mean((x > t) == (y == 0)), np.mean((x > t) == (y == 1))) for t in [-np.inf, *np.unique(x)]
    )
    assert res["threshold"]["accuracy"] == pytest.approx(best)
    assert res["threshold"]["baseline_accuracy"] == pytest.approx(9 / 16)
    assert not res["flagged"] and res["reason"]


def test_length_bias_flags_perfect_separation() -> None:
    table = [(3000 + 10 * i, "fail") for i in range(12)] + [(200 + 10 * i, "pass") for i in range(12)]
    res = length_bias(_rows(table))
    assert res["auc"] == 1.0 and res["auc_max"] >= LENGTH_AUC_FLAG
    assert res["threshold"]["accuracy"] == 1.0 and res["threshold"]["rule"] == "fail_if_longer"
    assert res["flagged"] and "longer replies fail" in res["reason"]
    # The same separation on too few rows is not flagged.
    assert not length_bias(_rows(table[:5] + table[-5:]))["flagged"]


def test_length_bias_degenerate_cases() -> None:
    assert length_bias([])["n"] == 0
    res = length_bias(_rows([(100, "pass"), (200, "pass"), (300, "pass")]))
    assert res["point_biserial"] is None and res["auc"] is None and not res["flagged"]


def _strata_rows() -> list[dict]:
    sizes = {("recall", "base"): 40, ("recall", "instruct"): 40, ("format", "base"): 15,
             ("format", "instruct"): 4, ("rare", "base"): 1}  # fmt: skip
    return [
        {"id": f"{c}-{m}-{i}", "category": c, "model": m} for (c, m), k in sizes.items() for i in range(k)
    ]


def test_spot_check_sample_is_stratified_and_deterministic() -> None:
    rows = _strata_rows()
    sample = spot_check_sample(rows, 0.2, np.random.default_rng(7))
    assert len(sample) == round(0.2 * len(rows))
    per = Counter((r["category"], r["model"]) for r in sample)
    assert set(per) == {(r["category"], r["model"]) for r in rows}  # every stratum present
    # Proportional: 8 + 8 + 3 + 0.8 + 0.2 ideally; the two singletons cost one of the largest.
    assert sorted([per[("recall", "base")], per[("recall", "instruct")]]) == [7, 8]
    assert per[("format", "base")] == 3 and per[("format", "instruct")] == per[("rare", "base")] == 1
    assert len({r["id"] for r in sample}) == len(sample)
    again = spot_check_sample(rows, 0.2, np.random.default_rng(7))
    assert [r["id"] for r in again] == [r["id"] for r in sample]
    assert spot_check_sample(rows, 0.0, np.random.default_rng(7)) == []
    assert len(spot_check_sample(rows, 1.0, np.random.default_rng(7))) == len(rows)
    # More strata than the target: one each.
    assert len(spot_check_sample(rows, 0.01, np.random.default_rng(0))) == 5
    with pytest.raises(ValueError):
        spot_check_sample(rows, 1.5, np.random.default_rng(0))


def test_notes_only_turn_is_unchecked_and_the_item_decided_on_the_rest() -> None:
    base = _item()
    item = Item(id=base.id, category=base.category,
                turns=(base.turns[0], Turn(user=base.turns[1].user, expect=Expectation(notes="suggest a sight")),
                       base.turns[2]))
    good, bad = triage_item(item, _gen(item, "Lisbon, and avoid peanuts.")), triage_item(item, _gen(item, "Porto!"))
    assert good["verdict"] == "pass" and bad["verdict"] == "fail"
    assert [tv["verdict"] for tv in good["turn_verdicts"]] == ["unchecked", "pass"]
    assert "turn(s) [1] unchecked" in good["rationale"] and good["error"] is None
