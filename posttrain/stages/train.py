"""SFT, DPO and DPO-only (issue 6). Not built yet: the stages exist so configs compose."""

from __future__ import annotations

from typing import Any

from posttrain.errors import NotBuiltYet
from posttrain.stages import Plan, RunContext


def plan(cfg: Any) -> Plan:
    raise NotBuiltYet(
        f"stage={cfg.stage.name} is not built yet (training lands with issue 6). Nothing was loaded or spent. "
        "Run stage=eval meanwhile."
    )


def run(cfg: Any, ctx: RunContext) -> dict[str, Any]:  # pragma: no cover - plan() refuses first
    raise NotBuiltYet(f"stage={cfg.stage.name} is not built yet")
