from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.budget import BudgetExceeded, Ledger, Spend, gpu_cost


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
