"""Stages, by name. Each module has ``plan(cfg) -> Plan`` (checks and cost estimate, loads
nothing) and ``run(cfg, ctx) -> dict`` (the work; returns the stage's metrics for summary.json).
Modules are imported only when their stage runs, so composing a config stays fast."""

from __future__ import annotations

import importlib
from types import ModuleType

from posttrain.run_context import Plan, RunContext, world_size

__all__ = ["STAGES", "Plan", "RunContext", "stage_module", "world_size"]

STAGES: dict[str, str] = {
    "eval": "posttrain.stages.eval",
    "sft": "posttrain.stages.train",
    "dpo": "posttrain.stages.train",
    "dpo_only": "posttrain.stages.train",
}


def stage_module(name: str) -> ModuleType:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {sorted(STAGES)}")
    return importlib.import_module(STAGES[name])
