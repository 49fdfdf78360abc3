"""The budget ledger: GPU-hours and API dollars of every run, against a cap.

The ledger is an append-only JSONL file shared by all runs (default
``$POSTTRAIN_HOME/ledger.jsonl``), locked while written so that the jobs of a multirun add
up correctly. A run estimates its cost before it starts and refuses to start when the estimate
exceeds what remains; after it ends, it appends what it actually spent.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from posttrain.records import append_jsonl, read_jsonl


class BudgetExceeded(RuntimeError):
    """The estimated cost of a run exceeds what remains of the budget. Nothing was spent."""


@dataclass(frozen=True)
class Spend:
    run_dir: str
    stage: str
    model: str
    gpu_type: str
    gpu_hours: float  # wall hours x number of GPUs
    gpu_usd: float
    api_usd: float
    note: str = ""

    @property
    def total_usd(self) -> float:
        return self.gpu_usd + self.api_usd


def gpu_cost(wall_seconds: float, num_gpus: int, price_per_gpu_hour: float) -> tuple[float, float]:
    """GPU-hours and dollars: e.g. 1.5 h wall x 1 GPU x $0.79/GPU-h = 1.5 GPU-h, $1.185."""
    gpu_hours = wall_seconds / 3600.0 * max(num_gpus, 0)
    return gpu_hours, gpu_hours * price_per_gpu_hour


class Ledger:
    def __init__(self, path: str | Path, cap_usd: float):
        self.path = Path(path)
        self.cap_usd = float(cap_usd)

    def _lock(self) -> Any:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=60)

    def entries(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def spent_usd(self) -> float:
        return sum(float(e.get("total_usd", 0.0)) for e in self.entries())

    def remaining_usd(self) -> float:
        return self.cap_usd - self.spent_usd()

    def check(self, estimate_usd: float, *, what: str) -> float:
        """Raise BudgetExceeded when ``estimate_usd`` exceeds the remainder; return the remainder."""
        remaining = self.remaining_usd()
        if estimate_usd > remaining + 1e-12:
            raise BudgetExceeded(
                f"budget: {what} is estimated at ${estimate_usd:,.2f} but only ${remaining:,.2f} of the "
                f"${self.cap_usd:,.2f} cap remains (ledger {self.path}). Nothing was started or spent. "
                "Raise budget.cap_usd, shrink the run (benchmark.limit, generation.max_new_tokens, "
                "stage.max_steps), or point budget.ledger_path at another ledger."
            )
        return remaining

    def record(self, spend: Spend) -> dict[str, Any]:
        row = asdict(spend) | {"total_usd": spend.total_usd, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self._lock():
            append_jsonl(self.path, [row])
        return row


def spend_series(entries: list[dict[str, Any]], cap_usd: float) -> list[dict[str, float]]:
    """The ledger as a cumulative series: one point per row, with the cap on every point.

    ``budget/entry`` is the row number (1-based), the x axis of the budget panels. E.g. rows of
    $1.50 and $0.25 under a $10 cap give cum_usd 1.50, 1.75 and remaining_usd 8.50, 8.25.
    """
    out: list[dict[str, float]] = []
    gpu_hours = gpu_usd = api_usd = 0.0
    for i, e in enumerate(entries, start=1):
        gpu_hours += float(e.get("gpu_hours", 0.0))
        gpu_usd += float(e.get("gpu_usd", 0.0))
        api_usd += float(e.get("api_usd", 0.0))
        total = gpu_usd + api_usd
        out.append({"budget/entry": i, "budget/cum_gpu_hours": gpu_hours, "budget/cum_gpu_usd": gpu_usd,
                    "budget/cum_api_usd": api_usd, "budget/cum_usd": total, "budget/cap_usd": float(cap_usd),
                    "budget/remaining_usd": float(cap_usd) - total})
    return out


def run_spend(entry: dict[str, Any]) -> dict[str, float]:
    """One ledger row as this run's budget metrics."""
    return {"budget/run_gpu_hours": float(entry.get("gpu_hours", 0.0)),
            "budget/run_gpu_usd": float(entry.get("gpu_usd", 0.0)),
            "budget/run_api_usd": float(entry.get("api_usd", 0.0)),
            "budget/run_usd": float(entry.get("gpu_usd", 0.0)) + float(entry.get("api_usd", 0.0))}
