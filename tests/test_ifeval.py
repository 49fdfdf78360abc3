"""benchmark=ifeval: Google's IFEval file, its checkers offline, and IFEval's strict / loose metrics.

The fixture rows are hand-written in the original file's format (``key``, ``prompt``,
``instruction_id_list``, ``kwargs``), as the MT-Bench tests use hand-written rows of FastChat's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from posttrain.benchmarks import BenchmarkError, load_benchmark
from posttrain.items import Item
from posttrain.records import read_jsonl
from posttrain.scorers.ifeval import instruction_records, metrics, score_item
from tests.helpers import REPO, posttrain

FIXTURE = REPO / "tests" / "fixtures" / "ifeval_input_data.jsonl"
GOOD = {"key": 1, "prompt": "Write a note. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}]}


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_benchmark("ifeval", path=str(FIXTURE))


def _item(bench: Any, key: int) -> Item:
    return next(it for it in bench.items if it.meta["ifeval"]["key"] == key)


# --------------------------------------------------------------------------------------------
# Reading


def test_reads_the_original_format(bench: Any) -> None:
    assert bench.name == "ifeval" and bench.split == "full" and len(bench.items) == 6
    assert bench.sha256 == __import__("hashlib").sha256(FIXTURE.read_bytes()).hexdigest()
    it = _item(bench, 2)
    assert it.id == "ifeval-2" and it.source == "ifeval" and len(it.turns) == 1
    assert it.turns[0].user.startswith("Describe a lighthouse")
    expect = it.turns[0].expect
    assert expect is not None and expect.verifiable and not expect.notes and not expect.constraints
    assert it.meta["ifeval"] == {"key": 2, "instruction_id_list": ["length_constraints:number_sentences",
                                                                   "change_case:english_lowercase"],
                                 "kwargs": [{"relation": "at least", "num_sentences": 3}, {}]}
    # the Hugging Face copy's null kwargs (every key on every instruction) are dropped, as lm-eval does
    assert _item(bench, 6).meta["ifeval"]["kwargs"] == [{"language": "es"}]


def test_limit_and_the_path_setting(bench: Any) -> None:
    assert [it.id for it in load_benchmark("ifeval", path=str(FIXTURE), limit=2).items] == ["ifeval-1", "ifeval-2"]
    with pytest.raises(ValueError, match=r"benchmark\.path=/path/to/input_data\.jsonl"):
        load_benchmark("ifeval")


@pytest.mark.parametrize(("row", "field", "message"), [
    ({**GOOD, "instruction_id_list": ["punctuation:no_semicolon"]}, "instruction_id_list[0]",
     "unknown IFEval instruction id 'punctuation:no_semicolon'"),
    ({**GOOD, "kwargs": [{}, {}]}, "kwargs", "has 2 entries for 1 instructions"),
    ({**GOOD, "kwargs": ["{}"]}, "kwargs[0]", "expected an object"),
    ({**GOOD, "kwargs": [{"num_words": 5}]}, "kwargs[0].num_words", "punctuation:no_comma takes no kwarg"),
    ({**GOOD, "instruction_id_list": ["detectable_format:number_bullet_lists"]}, "kwargs[0].num_bullets",
     "without it the checker would test a randomly drawn value"),
    ({**GOOD, "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 0}]},
     "kwargs[0].num_bullets", "lm-eval drops empty and zero kwargs"),
    ({**GOOD, "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": "3"}]},
     "kwargs[0]", "cannot use these kwargs"),
    ({**GOOD, "instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"relation": "about", "num_words": 50}]}, "kwargs[0]", "cannot use these kwargs"),
    ({**GOOD, "instruction_id_list": []}, "instruction_id_list", "at least one instruction"),
    ({k: v for k, v in GOOD.items() if k != "key"}, "key", "missing required field"),
    ({**GOOD, "key": "1"}, "key", "expected int"),
    ({**GOOD, "prompt": " "}, "prompt", "non-empty string"),
])
def test_malformed_rows_are_refused_with_their_line(tmp_path: Path, row: dict[str, Any], field: str,
                                                    message: str) -> None:
    path = tmp_path / "input_data.jsonl"
    # a good row first, a blank line, then the bad one: the error must name line 3
    path.write_text(json.dumps({**GOOD, "key": 0}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("ifeval", path=str(path))
    assert err.value.line == 3 and err.value.field == field, str(err.value)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


def test_repeated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "input_data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(BenchmarkError, match=r":2: field 'id': duplicate id 'ifeval-1' \(first on line 1\)"):
        load_benchmark("ifeval", path=str(path))


# --------------------------------------------------------------------------------------------
# Scoring one reply: strict vs loose, as IFEval defines them


def test_strict_and_loose_differ_on_a_wrapped_reply(bench: Any) -> None:
    """A lead-in line in capitals fails "all lowercase" strictly; loose drops the first line and passes."""
    reply = "**Sure, here you go:**\nthe lighthouse stands on the rock. its lamp turns all night. ships steer by it."
    r = score_item(_item(bench, 2), reply)
    assert r["key"] == 2 and [i["id"] for i in r["instructions"]] == ["length_constraints:number_sentences",
                                                                      "change_case:english_lowercase"]
    by_id = {i["id"]: i for i in r["instructions"]}
    assert by_id["length_constraints:number_sentences"] == {
        "id": "length_constraints:number_sentences", "kwargs": {"relation": "at least", "num_sentences": 3},
        "strict": True, "loose": True}
    assert by_id["change_case:english_lowercase"]["strict"] is False
    assert by_id["change_case:english_lowercase"]["loose"] is True
    assert r["prompt_strict"] is False and r["prompt_loose"] is True
    assert r["checker"].startswith("lm-eval ")


def test_loose_strips_asterisks(bench: Any) -> None:
    """A one-line reply: dropping a line leaves nothing, so only the asterisk-free variant can pass it."""
    r = score_item(_item(bench, 5), '**{"planet": "Mars"}**')  # "wrap your whole answer in JSON"
    assert r["prompt_strict"] is False and r["prompt_loose"] is True


def test_an_empty_reply_follows_nothing(bench: Any) -> None:
    for key in (1, 2, 3):
        r = score_item(_item(bench, key), "   \n ")
        assert not r["prompt_strict"] and not r["prompt_loose"]
        assert not any(i["strict"] or i["loose"] for i in r["instructions"])


def test_each_checker_can_fail(bench: Any) -> None:
    replies = {
        1: ("Hi Sam please water my plants. Thanks", "Hi Sam, please water my plants."),
        3: ("* apple\n* pear\n* plum\n\nMy favourite is *plum*.", "* apple\n* pear\n\nMy favourite is *plum*."),
        5: ('{"planet": "Mars"}', "Mars"),
        6: ("Hola amigo, ¿cómo estás? Espero que todo vaya muy bien en tu casa.",
            "Hello my friend, how are you? I hope everything is going well at home."),
    }
    for key, (good, bad) in replies.items():
        assert score_item(_item(bench, key), good)["prompt_strict"] is True, key
        assert score_item(_item(bench, key), bad)["prompt_loose"] is False, key


def test_not_an_ifeval_item_is_refused(bench: Any) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="not an IFEval item"):
        score_item(replace(_item(bench, 1), meta={}), "anything")


# --------------------------------------------------------------------------------------------
# Metrics


def _result(key: int, pairs: list[tuple[str, bool, bool]]) -> dict[str, Any]:
    return {"key": key, "prompt_strict": all(s for _, s, _ in pairs), "prompt_loose": all(lo for _, _, lo in pairs),
            "instructions": [{"id": i, "kwargs": {}, "strict": s, "loose": lo} for i, s, lo in pairs],
            "checker": "lm-eval 0.4.13"}


def test_metric_arithmetic_by_hand() -> None:
    """Three prompts, six instructions.

    A: no_comma (strict T, loose T), english_lowercase (F, T)  -> prompt strict F, loose T
    B: no_comma (F, F)                                        -> F, F
    C: no_comma (T, T), json_format (T, T), title (T, T)      -> T, T
    prompt-level strict 1/3, loose 2/3; instruction-level strict (1+0+0+3)/6 = 4/6, loose (2+0+3)/6 = 5/6.
    no_comma: 3 instructions, strict 2, loose 2; english_lowercase: 1, strict 0, loose 1.
    groups: punctuation 3 (2, 2); change_case 1 (0, 1); detectable_format 2 (2, 2).
    """
    results = [
        _result(1, [("punctuation:no_comma", True, True), ("change_case:english_lowercase", False, True)]),
        _result(2, [("punctuation:no_comma", False, False)]),
        _result(3, [("punctuation:no_comma", True, True), ("detectable_format:json_format", True, True),
                    ("detectable_format:title", True, True)]),
    ]
    m = metrics(results)
    assert m["n_prompts"] == 3 and m["n_instructions"] == 6
    assert m["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert m["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert m["inst_level_strict_acc"] == pytest.approx(4 / 6)
    assert m["inst_level_loose_acc"] == pytest.approx(5 / 6)
    assert m["per_instruction"]["punctuation:no_comma"] == {"n": 3, "n_strict": 2, "n_loose": 2,
                                                            "strict_acc": pytest.approx(2 / 3),
                                                            "loose_acc": pytest.approx(2 / 3)}
    assert m["per_instruction"]["change_case:english_lowercase"] == {"n": 1, "n_strict": 0, "n_loose": 1,
                                                                     "strict_acc": 0.0, "loose_acc": 1.0}
    assert list(m["per_instruction"]) == sorted(m["per_instruction"])
    assert {g: (v["n"], v["n_strict"], v["n_loose"]) for g, v in m["per_group"].items()} == {
        "change_case": (1, 0, 1), "detectable_format": (2, 2, 2), "punctuation": (3, 2, 2)}
    assert m["checker"] == "lm-eval 0.4.13"


def test_metrics_of_nothing_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one scored prompt"):
        metrics([])
    with pytest.raises(ValueError, match="lists no instruction"):
        metrics([{"key": 7, "prompt_strict": True, "prompt_loose": True, "instructions": []}])


def test_instruction_records_flatten_score_rows() -> None:
    rows = [{"item_id": "ifeval-1", "model": "m", "ifeval": _result(1, [("punctuation:no_comma", True, True),
                                                                        ("detectable_format:title", False, True)])},
            {"item_id": "other", "model": "m"}]
    recs = instruction_records(rows)
    assert [(r["item_id"], r["instruction_index"], r["instruction_id"], r["strict"], r["loose"]) for r in recs] == [
        ("ifeval-1", 0, "punctuation:no_comma", True, True), ("ifeval-1", 1, "detectable_format:title", False, True)]
    assert all(r["prompt_strict"] is False and r["prompt_loose"] is True for r in recs)


# --------------------------------------------------------------------------------------------
# Offline


def test_checkers_never_download(tmp_path: Path) -> None:
    """A fresh process with no NLTK data anywhere and nltk.download booby-trapped: the checkers load,
    count sentences with NLTK's real English Punkt model (abbreviations do not end sentences) and the
    language check is seeded."""
    code = """
import nltk
def no_download(*a, **k):
    raise SystemExit('nltk.download was called')
nltk.download = no_download
from posttrain.benchmarks.ifeval import checker_registry, punkt_data_dir
reg = checker_registry()
assert len(reg) == 25, len(reg)
assert nltk.data.path[0] == str(punkt_data_dir())
from lm_eval.tasks.ifeval import instructions_util as u
import langdetect
assert langdetect.DetectorFactory.seed == 0
print(u.count_sentences('Dr. Smith met Mr. Jones at 5 p.m. on Jan. 3. They talked. Was it fun? Yes!'))
"""
    env = {"HOME": str(tmp_path), "NLTK_DATA": str(tmp_path / "none"), "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "4"  # a regex splitter would find 8 sentences here
    assert "nltk_data" not in proc.stderr  # nltk prints "[nltk_data] ..." for every download attempt


# --------------------------------------------------------------------------------------------
# End to end


def _check_run(run: Path, n: int) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    m = summary["ifeval"]
    assert m["n_prompts"] == n and m["n_instructions"] >= n
    for key in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["prompt_level_strict_acc"] <= m["prompt_level_loose_acc"]  # loose is an upper bound by definition
    assert m["inst_level_strict_acc"] <= m["inst_level_loose_acc"]
    scores = read_jsonl(run / "scores.jsonl")
    assert len(scores) == n and all(r["scorer"] == "verifiable" and r["ifeval"]["instructions"] for r in scores)
    records = read_jsonl(run / "ifeval.jsonl")
    assert len(records) == m["n_instructions"] == sum(len(r["ifeval"]["instructions"]) for r in scores)
    assert sum(r["strict"] for r in records) == round(m["inst_level_strict_acc"] * len(records))
    # the item verdict is IFEval's prompt-level strict result
    assert sum(r["verdict"] == "pass" for r in scores) == round(m["prompt_level_strict_acc"] * n)
    return summary


@pytest.mark.slow  # a whole eval in a subprocess: about 30 s on a busy 2-core machine
def test_eval_on_ifeval_with_the_tiny_model(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    posttrain("stage=eval", "model=tiny_instruct", "benchmark=ifeval", f"benchmark.path={FIXTURE}",
              "scorer=verifiable", "stage.sentinel=false", "generation.max_new_tokens=12",
              "generation.batch_size=6", f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    summary = _check_run(run, 6)
    assert summary["benchmark_info"]["name"] == "ifeval" and summary["benchmark_info"]["n"] == 6


def test_eval_refuses_a_bad_file_before_loading_a_model(tmp_path: Path, posttrain_home: Path,
                                                        shared_cache: Path) -> None:
    bad = tmp_path / "input_data.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "key": 2, "instruction_id_list": ["nope:x"]}) + "\n")
    run = tmp_path / "run"
    proc = posttrain("stage=eval", "model=tiny_instruct", "benchmark=ifeval", f"benchmark.path={bad}",
                     "scorer=verifiable", f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode == 2 and f"{bad}:2:" in proc.stderr and "unknown IFEval instruction id 'nope:x'" in proc.stderr
    assert "nothing was loaded" in proc.stderr and not (run / "generations.jsonl").exists()


@pytest.mark.real
def test_eval_on_ifeval_with_smollm2(tmp_path: Path, posttrain_home: Path, smollm2_dir: Path) -> None:
    """The issue's command on the real model and the six hand-written rows (about a minute on 2 cores)."""
    run = tmp_path / "run"
    posttrain("stage=eval", "model=smollm2_instruct", "benchmark=ifeval", f"benchmark.path={FIXTURE}",
              "scorer=verifiable", "stage.sentinel=false", "generation.max_new_tokens=96",
              "generation.batch_size=6", f"hydra.run.dir={run}", home=posttrain_home,
              cache=smollm2_dir.parent.parent, timeout=900)
    summary = _check_run(run, 6)
    replies = [t["reply"] for r in read_jsonl(run / "generations.jsonl") for t in r["turns"]]
    assert all(r.strip() for r in replies)  # a real model answers every prompt
    print(json.dumps({k: v for k, v in summary["ifeval"].items() if k != "per_group"}, indent=1))
