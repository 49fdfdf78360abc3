"""`make run` decides something real (issue 19 §4): the demo's experiment, its evidence floor, and what it prints.

The demo itself (SmolLM2 on 130 items x 3 formats, about 5 minutes) is not run here: its wall time
is a `make bench` figure (bench/demo.py). These tests check, quickly, what makes its verdict able to
be PASS or FAIL rather than NOT_ELIGIBLE for lack of evidence, and the summary `make run` prints.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from posttrain.analysis.gates import thresholds_from
from posttrain.benchmarks import load_benchmark
from tests.helpers import REPO


def _bench_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_is_smollm2_on_the_held_out_instructions_under_three_formats(compose: Any) -> None:
    cfg = compose("+experiment=formats_smollm2")
    assert (cfg.model.name, cfg.benchmark.name, cfg.benchmark.split, cfg.benchmark.limit) == (
        "smollm2_instruct", "instructions", "test", None)
    assert cfg.scorer.name == "verifiable" and cfg.generation.do_sample is False
    assert [(p.treatment, p.control, p.kind) for p in cfg.gate.primary] == [
        ("smollm2_instruct@chat_template", "smollm2_instruct@instruction_cue", "superiority")]
    sweep = (REPO / "conf" / "experiment" / "formats_smollm2.yaml").read_text()
    assert "prompt: chat_template,instruction_cue,raw" in sweep


def test_the_demo_has_enough_verifiable_items_to_decide(compose: Any) -> None:
    """Every arm answers the same items, so the primary pair has as many paired items as the test
    split has verifiable ones (unless an item errors): that must reach the gate's min_paired."""
    cfg = compose("+experiment=formats_smollm2")
    items = load_benchmark("instructions", split=cfg.benchmark.split, limit=cfg.benchmark.limit, path=None).items
    verifiable = [it for it in items if all(t.expect is None or t.expect.verifiable for t in it.turns)
                  and any(t.expect is not None and t.expect.verifiable for t in it.turns)]
    assert len(items) == 130
    assert len(verifiable) >= thresholds_from(cfg.gate).required_paired >= 100


def test_the_conversation_demo_is_kept_for_make_run_conversations(compose: Any) -> None:
    cfg = compose("+experiment=formats_smollm2_conversations")
    assert (cfg.model.name, cfg.benchmark.name, cfg.scorer.name) == ("smollm2_instruct", "conversations",
                                                                    "heuristic_triage")
    makefile = (REPO / "Makefile").read_text()
    assert "posttrain -m +experiment=formats_smollm2_conversations" in makefile
    assert "run-conversations: setup" in makefile and "posttrain -m +experiment=formats_smollm2\n" in makefile


def _comparison() -> dict[str, Any]:
    chat, cue = "smollm2_instruct@chat_template", "smollm2_instruct@instruction_cue"
    return {
        "models": [{"model": chat, "n_pass": 30, "n_fail": 72, "n_error": 0, "n_not_scored": 28,
                    "success_rate": 30 / 102, "truncation": {"turns": 130, "length_stopped": 52, "rate": 0.4}},
                   {"model": cue, "n_pass": 9, "n_fail": 93, "n_error": 0, "n_not_scored": 28,
                    "success_rate": 9 / 102, "truncation": {"turns": 130, "length_stopped": 13, "rate": 0.1}}],
        "pairs": [{"a": chat, "b": cue, "family": "primary", "n_paired": 102, "a_only": 24, "b_only": 3,
                   "mcnemar_p": 3.1e-5, "cluster_p": 4e-5, "cohens_h": -0.54, "truncation_rates": [0.4, 0.1],
                   "truncation_flagged": True}],
        "primary": {"pairs": [{"treatment": chat, "control": cue, "kind": "superiority"}]},
        "gate": {"verdict": "PASS", "kind": "superiority", "reasons": []},
    }


def test_make_run_prints_the_verdict_with_treatment_minus_control() -> None:
    lines = _bench_module("show_replies").gate_lines(_comparison())
    text = "\n".join(lines)
    assert "smollm2_instruct@chat_template: 30/102 pass (29.4%), 28 not scored, 0 error; truncated 52/130 turns (40.0%)" in text
    # the pair ran as (chat, cue) with h = h(cue) - h(chat); the summary shows treatment - control
    assert ("only smollm2_instruct@chat_template passes 24, only smollm2_instruct@instruction_cue passes 3; "
            "McNemar p = 3.1e-05, cluster p = 4e-05, Cohen's h = 0.54; truncation 40.0% vs 10.0% (FLAGGED") in text
    assert lines[-1] == "  gate (superiority): PASS"


def test_the_bench_page_says_what_the_demo_found_and_under_which_load(tmp_path: Path) -> None:
    demo = _bench_module("demo")
    record = {"wall_s": 290.0, "cpu_s": 410.0, "cores": 2, "loadavg_before": 3.2, "loadavg_after": 3.9,
              "other_load_share": 0.45, "exit_status": 0, "date": "2026-12-02 13:30", "sweep": "multirun/x/y",
              "found": demo.found(_comparison())}
    page = "\n".join(demo.render(record))
    assert "**290 s** wall time" in page and "**Measured under load**" in page and "45%" in page
    assert "| smollm2_instruct@chat_template | 30 / 102 | 0.294 | 28 | 0.400 (52/130) |" in page
    assert "Gate on the pre-registered pair: **PASS**" in page
    assert demo.targets(record) == [("`make run` wall time <= 5 min (2 cores)", "290 s", True),
                                    ("`make run` gate verdict is PASS or FAIL", "PASS", True)]
    slow = record | {"wall_s": 400.0, "found": {**record["found"], "verdict": "NOT_ELIGIBLE"}}
    assert [ok for _, _, ok in demo.targets(slow)] == [False, False]
