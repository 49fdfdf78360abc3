from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.tracking.budget import BudgetExceeded, Ledger, Spend, gpu_cost


def test_gpu_cost_arithmetic() -> None:
    # 1.5 h x 2 GPUs = 3 GPU-h; x $0.79 = $2.37
    hours, usd = gpu_cost(5400, 2, 0.79)
    assert hours == pytest.approx(3.0) and usd == pytest.approx(2.37)


def test_ledger_refuses_a_run_over_the_remainder(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", cap_usd=10.0)
    ledger.record(Spend("r1", "eval", "m", "A6000", 2.0, 1.58, 6.0))
    assert ledger.spent_usd() == pytest.approx(7.58)
    assert ledger.check(2.0, what="x") == pytest.approx(2.42)
    with pytest.raises(BudgetExceeded, match=r"\$3\.00 but only \$2\.42") as info:
        ledger.check(3.0, what="stage=eval model=m")
    assert "budget.cap_usd" in str(info.value) and "Nothing was started or spent" in str(info.value)


def test_spend_series_is_cumulative_with_the_cap_on_every_point() -> None:
    from posttrain.tracking.budget import run_spend, spend_series

    rows = [{"gpu_hours": 1.0, "gpu_usd": 0.79, "api_usd": 0.71}, {"gpu_hours": 0.5, "gpu_usd": 0.395, "api_usd": 0.105}]
    series = spend_series(rows, cap_usd=10.0)
    # $0.79 + $0.71 = $1.50 after row 1; + $0.395 + $0.105 = $2.00 after row 2
    assert [(s["budget/entry"], s["budget/cum_usd"], s["budget/remaining_usd"]) for s in series] == [
        (1, pytest.approx(1.5), pytest.approx(8.5)), (2, pytest.approx(2.0), pytest.approx(8.0))]
    assert [s["budget/cum_gpu_hours"] for s in series] == [1.0, 1.5]
    assert {s["budget/cap_usd"] for s in series} == {10.0}
    assert run_spend(rows[1])["budget/run_usd"] == pytest.approx(0.5)
    assert spend_series([], cap_usd=10.0) == []
