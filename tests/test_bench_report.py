"""`make bench` reports its targets: the rendered page lists them and a missed one is flagged.

The timing itself runs only in `make bench` (never in a test); these checks use the committed
raw numbers, docs/benchmarks.json.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from typing import Any

from tests.helpers import REPO


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_numbers_meet_the_targets_and_render() -> None:
    bench = _bench()
    results = json.loads((REPO / "docs" / "benchmarks.json").read_text())
    assert all(ok for _, _, ok in bench.targets(results)), bench.targets(results)
    page = bench.render(results)
    assert "## Targets (issue 7)" in page and "**NO**" not in page
    assert results["machine"]["cpu"] in page  # every page says which machine measured it


def test_a_missed_target_is_flagged() -> None:
    bench = _bench()
    results = copy.deepcopy(json.loads((REPO / "docs" / "benchmarks.json").read_text()))
    results["generation"]["with_stop_strings"]["ratio"] = 3.0
    results["judge"]["levels"]["16"]["vs_ideal"] = 1.7
    missed = [name for name, _, ok in bench.targets(results) if not ok]
    assert len(missed) == 2 and "**NO**" in bench.render(results)
