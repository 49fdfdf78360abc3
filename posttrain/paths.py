"""Where posttrain keeps state that outlives a run: the budget ledger, calibrations, caches."""

from __future__ import annotations

import os
from pathlib import Path


def posttrain_home() -> Path:
    """``$POSTTRAIN_HOME``, else ``$XDG_DATA_HOME/posttrain``, else ``~/.local/share/posttrain``."""
    if env := os.environ.get("POSTTRAIN_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "posttrain"


def cache_dir(configured: str | None = None) -> Path:
    return Path(configured).expanduser() if configured else posttrain_home() / "cache"


def ledger_path(configured: str | None = None) -> Path:
    return Path(configured).expanduser() if configured else posttrain_home() / "ledger.jsonl"


def calibration_dir() -> Path:
    return posttrain_home() / "calibrations"


def judge_cache_dir(configured: str | None = None) -> Path:
    return Path(configured).expanduser() if configured else posttrain_home() / "judge_cache"
