"""Run the real entrypoint in a subprocess, offline, with an isolated POSTTRAIN_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Session-wide results of expensive fixtures, keyed by name. pytest imports a test file as its own
# module, and another file importing a fixture from it gets a second fixture; this module is one.
SESSION_RUNS: dict[str, Any] = {}


def posttrain(*overrides: str, home: Path, cache: Path, env: dict[str, str] | None = None,
              timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "POSTTRAIN_HOME": str(home),
                             "TOKENIZERS_PARALLELISM": "false"} | (env or {})
    proc = subprocess.run([sys.executable, "-m", "posttrain", f"cache_dir={cache}", *overrides],
                          capture_output=True, text=True, cwd=REPO, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"posttrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def files_with_secrets(*roots: Path, secrets: tuple[str, ...] | None = None) -> list[Path]:
    """Every file under ``roots`` that contains one of ``secrets`` (default: the canary API keys)."""
    from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI

    needles = [s.encode() for s in (secrets or (CANARY_ANTHROPIC, CANARY_OPENAI))]
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if p.is_file() and any(n in p.read_bytes() for n in needles)]
