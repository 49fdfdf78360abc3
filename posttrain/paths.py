"""Where posttrain finds its shipped configs, and keeps state that outlives a run (ledger, caches).

The config groups live in ``conf/`` at the top of the repository and ship inside the package as
``posttrain.conf`` (setup.py maps the folder), so one lookup serves an editable install, a wheel
and ``pip install git+...`` alike: Hydra reads them through :data:`CONF_SEARCH_PATH`, everything
else through :func:`conf_dir`. Nothing here depends on the current directory or the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

CONF_PACKAGE = "posttrain.conf"
# Hydra's package search path: found through the import system, wherever posttrain is installed.
CONF_SEARCH_PATH = f"pkg://{CONF_PACKAGE}"


def conf_dir() -> Path:
    """The folder of the shipped config groups (``conf/`` of the checkout, or ``posttrain/conf`` of a wheel).

    Raises:
        PosttrainError: the install has no ``posttrain.conf`` package (an editable install made
            before conf/ was shipped as a package); says to reinstall.
    """
    from importlib.util import find_spec

    spec = find_spec(CONF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        from posttrain.errors import PosttrainError

        raise PosttrainError(
            f"the config package {CONF_PACKAGE} is not installed, so no config can be composed: this install of "
            "posttrain predates conf/ being shipped in the package. Reinstall it (`make setup`, or "
            "`pip install -e .` in the repository, or `pip install .`). Nothing was run."
        )
    return Path(next(iter(spec.submodule_search_locations)))


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
