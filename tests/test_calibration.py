"""Human calibration round trip: export a sample, label it, import, kappa, is_calibrated.

Binding to the instrument (model, template hash, item count) and ``posttrain-calibrate status`` are
tested in tests/test_judge_validity.py.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
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


# ---------------------------------------------------------------------------------------------
# migrate: a retired judge's labelled conversations re-scored by a new judge (loopback server)


def _labelled_store(tmp_path: Path, old_overrides: list[str], n: int = 30) -> tuple[Path, Path]:
    """A run folder of ``n`` conversations (even ones answered well) and the old judge's calibration.

    The humans label the good replies pass and the others fail; the old judge agreed on all but two.
    """
    from posttrain.judges.calibration import _judge_from_overrides, kappa_from_labels
    from posttrain.judges.prompt import INSTRUMENT_ROW_FIELDS, judge_instrument
    from posttrain.records import write_json

    run = tmp_path / "run"
    run.mkdir()
    items = [Item(id=f"conv-{i:03d}", category="recall", turns=(
        Turn(user=f"I moved to City{i} last spring."),
        Turn(user="Which city do I live in?", expect=Expectation(must_include=((f"City{i}",),))))) for i in range(n)]
    replies = [f"You live in City{i}." if i % 2 == 0 else "I do not know, sorry." for i in range(n)]
    (run / "items.jsonl").write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    (run / "generations.jsonl").write_text("".join(json.dumps({
        "item_id": it.id, "category": it.category, "source": it.source, "model": "m-instruct",
        "prompt_format": "chat_template", "turns": [
            {"turn": t, "user": it.turns[t].user, "prompt_sha256": "0" * 64, "reply": r, "n_prompt_tokens": 5,
             "n_new_tokens": 5, "finish_reason": "stop"} for t, r in enumerate(["Nice.", reply])]}) + "\n"
        for it, reply in zip(items, replies, strict=True)))
    old = _judge_from_overrides(old_overrides, "--from")
    inst = judge_instrument(old)
    labels = [{"sample_id": f"s{i + 1:03d}", "run": "run", "run_dir": str(run), "item_id": it.id,
               "model": "m-instruct", "category": "recall", "judge": "claude",
               **{f: inst[k] for k, f in INSTRUMENT_ROW_FIELDS.items()},
               "judge_verdict": ("pass" if i % 2 == 0 else "fail") if i not in (3, 8) else ("pass" if i == 3 else "fail"),
               "human_label": "pass" if i % 2 == 0 else "fail"} for i, it in enumerate(items)]
    store = tmp_path / "calibrations"
    csv_path = tmp_path / "sample.csv"
    csv_path.write_text("sample_id,human_label\n" + "".join(f"{lab['sample_id']},{lab['human_label']}\n"
                                                           for lab in labels))
    record = {"key": instrument_key(inst), "instrument": inst, "judge": "claude", **kappa_from_labels(labels),
              "date": "2026-06-01T00:00:00+00:00", "source_csv": str(csv_path), "labels": labels}
    write_json(store / f"{record['key']}.json", record)
    return store, csv_path


OLD = ["judge=claude", "judge.model=claude-sonnet-4-5", "judge.prices_for=claude-sonnet-4-5"]


@pytest.mark.usefixtures("judge_keys")
def test_migrate_refuses_a_new_judge_that_disagrees_with_the_humans_and_writes_nothing(tmp_path: Path) -> None:
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from llm_server import FakeLLMServer, sensible_verdict

    from posttrain.judges.calibration import migrate
    from posttrain.tracking.budget import BudgetExceeded

    store, _ = _labelled_store(tmp_path, OLD)
    before = sorted(p.name for p in store.iterdir())

    def strict_judge(prompt: str) -> dict:
        """Fails every fourth good reply (City0, City4, ...): a judge the humans would not trust."""
        m = re.search(r"You live in City(\d+)\.", prompt)
        return sensible_verdict(prompt, force=False) if m and int(m.group(1)) % 4 == 0 else sensible_verdict(prompt)

    with FakeLLMServer(verdict_fn=strict_judge) as srv:
        to = ["judge=gpt4", f"judge.base_url={srv.openai_url}", "judge.concurrency=4"]
        with pytest.raises(BudgetExceeded, match="Nothing was started or spent"):  # the cost is checked first
            migrate(OLD, to, store_dir=store, cap_usd=0.0001, backoff_base_s=0.001)
        assert srv.model_calls == 0 and sum(srv.counts.values()) == 0
        res = migrate(OLD, to, store_dir=store, backoff_base_s=0.001)
        assert srv.model_calls == 30
    assert res["written"] is False and res["path"] is None and res["record"] is None
    # hand-worked: humans 15 pass / 15 fail; the new judge fails 8 of the 15 good replies (City0, 4, ..., 28)
    # p_o = 22/30, p_e = 0.5 x 7/30 + 0.5 x 23/30 = 0.5, kappa = (22/30 - 0.5) / 0.5 = 0.467
    assert res["n"] == 30 and res["kappa"] == pytest.approx(7 / 15)
    assert "kappa 0.47 against the human labels < gate.min_kappa 0.70" in res["reason"]
    assert sorted(d["item_id"] for d in res["disagreements"]) == [f"conv-{i:03d}" for i in range(0, 30, 4)]
    assert all(d["human_label"] == "pass" and d["judge_verdict"] == "fail" for d in res["disagreements"])
    assert res["kappa_vs_old"] is not None and res["kappa_vs_old"] < 0.7
    assert sorted(p.name for p in store.iterdir()) == before  # nothing written


@pytest.mark.usefixtures("judge_keys")
def test_migrate_writes_a_calibration_with_lineage_when_the_new_judge_agrees(tmp_path: Path, capsys) -> None:
    import hashlib
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from llm_server import FakeLLMServer

    from posttrain.judges.calibration import _judge_from_overrides, calibration_status, list_calibrations
    from posttrain.judges.prompt import judge_instrument

    store, csv_path = _labelled_store(tmp_path, OLD)
    [old] = list_calibrations(store)
    with FakeLLMServer() as srv:  # the sensible grader: agrees with the humans
        to = ["judge=gpt4", f"judge.base_url={srv.openai_url}"]
        code = main(["migrate", "--from", *OLD, "--to", *to, "--store", str(store)])
        out = capsys.readouterr().out
        assert code == 0 and srv.model_calls == 30 and srv.count("GET /v1/models/{id} openai") == 1  # preflight
    assert "kappa against the human labels 1.00 on n=30" in out and "wrote" in out
    new_inst = judge_instrument(_judge_from_overrides(to, "--to"))
    st = calibration_status(store, new_inst)
    assert st["applies"] is True and st["n"] == 30 and st["kappa"] == pytest.approx(1.0)
    [new] = [c for c in list_calibrations(store) if c["key"] != old["key"]]
    lineage = new["lineage"]
    assert lineage["migrated_from"] == old["key"] and lineage["old_instrument"] == old["instrument"]
    assert lineage["labels_sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert datetime.fromisoformat(lineage["date"]).date() == datetime.now(UTC).date()
    assert lineage["kappa_vs_old_judge"] == pytest.approx(old["kappa"])  # the old judge missed 2 of 30
    assert new["instrument"]["provider"] == "openai" and new["instrument"]["model"] == "gpt-6.2-sol"
    assert [lab["human_label"] for lab in new["labels"]] == [lab["human_label"] for lab in old["labels"]]
    # the old judge's calibration is untouched
    assert read_calibration(Path(old["path"]))["labels"] == old["labels"]
