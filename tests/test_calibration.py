"""Human calibration round trip: export a sample, label it, import, kappa, is_calibrated.

Binding to the instrument (model, template hash, item count) and ``posttrain-calibrate status`` are
tested in tests/test_judge_validity.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.inter_rater import cohens_kappa

from posttrain.items import Constraint, Expectation, Item, Turn
from posttrain.judges.calibration import (
    CSV_COLUMNS,
    CalibrationError,
    default_store_dir,
    export_sample,
    import_labels,
    instrument_key,
    is_calibrated,
    main,
    read_calibration,
)

SECRET = "JUDGE-RATIONALE-7f3a"
SHA = "ab" * 32  # the template sha256 the score rows record


def _instrument(judge: str = "claude") -> dict[str, str]:
    return {"provider": "anthropic" if judge == "claude" else "openai", "model": f"{judge}-model",
            "template_version": "conv-judge-v1", "template_sha256": SHA}
CATEGORIES = ("recall", "format", "update")


def _item(i: int) -> Item:
    return Item(
        id=f"conv-{i:03d}",
        category=CATEGORIES[i % 3],
        turns=(
            Turn(user=f"My favourite city is City{i}. Remember it."),
            Turn(
                user="Which city did I name? Answer in one line.",
                expect=Expectation(
                    must_include=((f"City{i}", f"Town{i}"),),
                    must_not_include=("Paris",),
                    constraints=(Constraint("format", "single_line"), Constraint("max_words", 20)),
                ),
            ),
        ),
    )


def _verdict(model: str, i: int) -> str:
    # A fixed, varied pattern so that both verdicts occur in every model.
    return "pass" if (i * 7 + len(model)) % 3 else "fail"


def _write_run(root: Path, name: str, model: str, judge: str = "claude", n_items: int = 12) -> Path:
    run = root / name
    run.mkdir(parents=True)
    items = [_item(i) for i in range(n_items)]
    gens, scores = [], []
    for it in items:
        gens.append(
            {
                "item_id": it.id, "category": it.category, "source": "conversations", "model": model,
                "prompt_format": "transcript",
                "turns": [
                    {"turn": k, "user": t.user, "prompt_sha256": "0" * 64, "reply": f"Reply {k} by {model}.",
                     "n_prompt_tokens": 5, "n_new_tokens": 5, "finish_reason": "stop"}
                    for k, t in enumerate(it.turns)
                ],
            }
        )  # fmt: skip
        i = int(it.id.split("-")[1])
        verdict = "error" if i == n_items - 1 else _verdict(model, i)
        scores.append(
            {
                "item_id": it.id, "category": it.category, "model": model, "verdict": verdict,
                "scorer": "llm", "judge": judge, "judge_provider": _instrument(judge)["provider"],
                "judge_model": f"{judge}-model", "template_version": "conv-judge-v1", "template_sha256": SHA,
                "turn_verdicts": [{"turn": 1, "verdict": verdict, "checks": [], "rationale": SECRET}],
                "checks": [], "rationale": SECRET, "input_tokens": 100, "output_tokens": 20,
                "cost_usd": 0.001, "n_parse_failures": 0, "n_api_errors": 0, "reply_chars": 20,
                "error": None if verdict != "error" else "api error",
            }
        )  # fmt: skip
    for fname, rows in (("generations.jsonl", gens), ("scores.jsonl", scores), ("items.jsonl", items)):
        lines = [json.dumps(r.to_dict() if isinstance(r, Item) else r) for r in rows]
        (run / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        _write_run(tmp_path, "run_base", "tiny_base"),
        _write_run(tmp_path, "run_instruct", "tiny_instruct"),
    ]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_export_hides_the_verdict_and_is_readable(runs: list[Path], tmp_path: Path) -> None:
    out = export_sample(runs, tmp_path / "label" / "sample.csv", n=16, seed=3)
    text = out.read_text(encoding="utf-8-sig")
    rows = _read_csv(out)
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 16 and len({r["sample_id"] for r in rows}) == 16
    assert {(r["category"], r["model"]) for r in rows} == {
        (c, m) for c in CATEGORIES for m in ("tiny_base", "tiny_instruct")
    }
    assert all(r["item_id"] != "conv-011" for r in rows)  # error verdicts are skipped
    # Nothing of the judge's output reaches the labeller.
    assert SECRET not in text and "claude" not in text and "verdict" not in text.lower()
    assert all(v not in ("pass", "fail") for r in rows for v in r.values())
    assert all(r["human_label"] == "" and r["notes"] == "" for r in rows)
    conv = rows[0]["conversation"]
    assert conv.startswith("=== Turn 1 ===\nUSER: My favourite city")
    assert "\n\nASSISTANT: Reply 0" in conv and "Turn 2  <<< TURN UNDER TEST" in conv
    assert "Turn 2: The reply mentions City" in rows[0]["expectations"]
    assert "does not mention Paris; is a single line; is at most 20 words." in rows[0]["expectations"]

    key = json.loads(Path(f"{out}.key.json").read_text())
    assert set(key["samples"]) == {r["sample_id"] for r in rows}
    entry = key["samples"][rows[0]["sample_id"]]
    assert entry["judge"] == "claude" and entry["template_version"] == "conv-judge-v1"
    assert entry["judge_verdict"] in ("pass", "fail")
    # Deterministic given the seed.
    again = export_sample(runs, tmp_path / "again.csv", n=16, seed=3)
    assert _read_csv(again) == rows


def test_round_trip_kappa_matches_statsmodels(runs: list[Path], tmp_path: Path) -> None:
    out = export_sample(runs, tmp_path / "sample.csv", n=20, seed=1)
    rows = _read_csv(out)
    judge_of = {("run_base" if m == "tiny_base" else "run_instruct", f"conv-{i:03d}"): _verdict(m, i)
                for m in ("tiny_base", "tiny_instruct") for i in range(12)}  # fmt: skip
    spellings = {"pass": ["pass", "PASS", "1", "y", "Yes"], "fail": ["fail", "Fail", "0", "n", "no"]}
    table = np.zeros((2, 2), dtype=int)  # rows: human (pass, fail), columns: judge (pass, fail)
    for k, r in enumerate(rows):
        judge = judge_of[(r["run"], r["item_id"])]
        human = judge if k % 4 else ("fail" if judge == "pass" else "pass")  # every 4th disagrees
        r["human_label"] = f" {spellings[human][k % 5]} "
        table[("pass", "fail").index(human), ("pass", "fail").index(judge)] += 1
    _write_csv(out, rows)

    store = tmp_path / "store"
    res = import_labels(out, store_dir=store)
    expected = cohens_kappa(table)
    assert res["n"] == len(rows) == table.sum()
    assert res["table"] == table.tolist()
    assert res["kappa"] == pytest.approx(expected.kappa)
    assert res["ci95"] == pytest.approx([expected.kappa_low, expected.kappa_upp])
    assert res["agreement"] == pytest.approx(np.trace(table) / table.sum())

    key = instrument_key(_instrument())
    assert key == "anthropic__claude-model__conv-judge-v1__" + SHA[:12] and res["key"] == key
    stored = read_calibration(store / f"{key}.json")
    assert stored["instrument"] == _instrument() and stored["n"] == res["n"]
    assert stored["kappa"] == pytest.approx(expected.kappa) and stored["date"].endswith("+00:00")
    assert len(stored["labels"]) == res["n"]  # the labels are kept, beside the judge's verdicts
    ok, reason = is_calibrated(store, _instrument(), min_kappa=expected.kappa - 0.01, min_items=res["n"])
    assert ok, reason
    ok, reason = is_calibrated(store, _instrument(), min_kappa=expected.kappa + 0.01, min_items=res["n"])
    assert not ok and reason == f"calibration {key}: kappa {expected.kappa:.2f} < gate.min_kappa {expected.kappa + 0.01:.2f}"


def test_invalid_or_empty_label_names_row_and_sample(runs: list[Path], tmp_path: Path) -> None:
    out = export_sample(runs, tmp_path / "sample.csv", n=8, seed=0)
    rows = _read_csv(out)
    for r in rows:
        r["human_label"] = "pass"
    rows[2]["human_label"] = "maybe"
    rows[5]["human_label"] = "  "
    _write_csv(out, rows)
    with pytest.raises(CalibrationError) as exc:
        import_labels(out, store_dir=tmp_path / "store")
    msg = str(exc.value)
    assert f"row 4 (sample_id={rows[2]['sample_id']})" in msg and "'maybe'" in msg
    assert f"row 7 (sample_id={rows[5]['sample_id']}): human_label is empty" in msg
    assert not (tmp_path / "store").exists()


def test_mixed_judges_are_refused(runs: list[Path], tmp_path: Path) -> None:
    other = _write_run(tmp_path, "run_gpt", "tiny_base", judge="gpt4")
    with pytest.raises(CalibrationError, match="mix judges"):
        export_sample([*runs, other], tmp_path / "s.csv")
    # A key edited by hand to mix judges is refused at import too.
    out = export_sample(runs, tmp_path / "s.csv", n=6, seed=0)
    rows = _read_csv(out)
    for r in rows:
        r["human_label"] = "fail"
    _write_csv(out, rows)
    key_path = Path(f"{out}.key.json")
    key = json.loads(key_path.read_text())
    key["samples"][rows[0]["sample_id"]]["judge_model"] = "gpt4-model"
    key_path.write_text(json.dumps(key))
    with pytest.raises(CalibrationError, match="mixes judges"):
        import_labels(out, store_dir=tmp_path / "store")


def test_is_calibrated_thresholds(runs: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    ok, reason = is_calibrated(store, _instrument())
    assert not ok and reason.startswith(
        f"no calibration for anthropic claude-model conv-judge-v1 (template sha256 {SHA[:12]}): "
        "`posttrain-calibrate export"
    )
    out = export_sample(runs, tmp_path / "s.csv", n=22, seed=0)
    rows = _read_csv(out)
    key = json.loads(Path(f"{out}.key.json").read_text())["samples"]
    for k, r in enumerate(rows):  # agrees with the judge except on the first three rows
        v = key[r["sample_id"]]["judge_verdict"]
        r["human_label"] = v if k >= 3 else ("fail" if v == "pass" else "pass")
    _write_csv(out, rows)
    res = import_labels(out, store_dir=store)
    assert is_calibrated(store, _instrument(), min_kappa=0.0, min_items=res["n"])[0]
    assert not is_calibrated(store, _instrument(), min_kappa=0.99, min_items=res["n"])[0]
    assert not is_calibrated(store, {**_instrument(), "template_version": "conv-judge-v2"}, min_kappa=0.0,
                             min_items=1)[0]  # each template needs its own


def test_cli_round_trip_and_bad_input(runs: list[Path], tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    assert default_store_dir() == tmp_path / "home" / "calibrations"
    out = tmp_path / "cli.csv"
    assert main(["export", *map(str, runs), "--out", str(out), "--n", "10", "--seed", "2"]) == 0
    assert "posttrain-calibrate import" in capsys.readouterr().out
    rows = _read_csv(out)
    for r in rows:
        r["human_label"] = "pass" if int(r["item_id"][-3:]) % 2 else "fail"
    _write_csv(out, rows)
    assert main(["import", str(out)]) == 0
    assert "kappa" in capsys.readouterr().out
    assert (tmp_path / "home" / "calibrations" / f"{instrument_key(_instrument())}.json").is_file()

    assert main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
    rows[0]["human_label"] = "perhaps"
    _write_csv(out, rows)
    assert main(["import", str(out), "--store", str(tmp_path / "s2")]) == 2
    assert "row 2" in capsys.readouterr().err
