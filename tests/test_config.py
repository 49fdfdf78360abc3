"""Composition: every option of every group composes; typos and bad values fail early."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, REPO

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in {"experiment", "hydra"})


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes(compose, group: str, option: str) -> None:
    extra = ["judge.model=served-model", "judge.base_url=http://127.0.0.1:1/v1"] if option == "openai_compatible" else []
    cfg = compose(f"{group}={option}", *extra)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg[group] is not None


def test_experiments_compose(compose) -> None:
    for exp in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        cfg = compose(f"+experiment={exp}")
        assert cfg.model.name


def test_unknown_key_fails_at_composition(compose) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="model.kindd"):
        compose("model.kindd=base")


def test_wrong_type_fails_at_composition(compose) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="batch_size"):
        compose("generation.batch_size=abc")


def test_training_key_on_eval_stage_is_a_typo(compose) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="stage.max_steps"):
        compose("stage=eval", "stage.max_steps=3")


@pytest.mark.parametrize(
    "override,needle",
    [
        ("generation.max_new_tokens=0", "generation.max_new_tokens"),
        ("generation.max_new_tokens=-5", "generation.max_new_tokens"),
        ("benchmark.limit=0", "benchmark.limit"),
        ("gate.base_max_success=1.5", "gate.base_max_success"),
        ("gate.mcnemar_alpha=-0.1", "gate.mcnemar_alpha"),
        ("model.revision=main", "model.revision"),
        ("budget.cap_usd=-1", "budget.cap_usd"),
        ("judge.price_input_per_mtok=-3", "judge.price_input_per_mtok"),
        ("prompt.format=chatml", "prompt.format"),
        ("model.trust_remote_code=true", "trust_remote_code"),
        ("judge.spot_check=2", "judge.spot_check"),
    ],
)
def test_validate_names_the_setting(compose, override: str, needle: str) -> None:
    from posttrain.config import ConfigError, validate

    cfg = compose(override)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        validate(cfg)
    assert "nothing was loaded or spent" in str(info.value)


def test_defaults_validate(compose) -> None:
    from posttrain.config import validate

    validate(compose())


def test_cfg_job_is_fast_and_imports_nothing_heavy() -> None:
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "posttrain", "--cfg", "job", "model=qwen32b", "stage=eval", "judge=claude", "scorer=llm"],
        capture_output=True, text=True, check=True,
    )
    elapsed = time.time() - t0
    assert "Qwen/Qwen2.5-32B" in out.stdout and "nf4" in out.stdout
    assert elapsed < 10, elapsed  # ~1 s here; generous for a loaded CI machine
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, posttrain.cli, posttrain.config; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch','transformers','anthropic','openai','wandb','trl','peft'}))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_unknown_model_lists_options() -> None:
    out = subprocess.run([sys.executable, "-m", "posttrain", "model=no_such_model"], capture_output=True, text=True)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "qwen32b_instruct" in text and "tiny_base" in text


def test_real_model_configs(compose) -> None:
    expected = {"qwen32b": ("Qwen/Qwen2.5-32B", "base"), "qwen32b_instruct": ("Qwen/Qwen2.5-32B-Instruct", "instruct"),
                "llama8b": ("meta-llama/Llama-3.1-8B", "base")}
    for name, (path, kind) in expected.items():
        cfg = compose(f"model={name}")
        assert (cfg.model.path, cfg.model.kind, cfg.model.quantization) == (path, kind, "nf4")
        assert cfg.model.requires_gpu and cfg.model.gpu_price_per_hour > 0


def test_configs_are_found_as_the_package_the_entrypoint_uses() -> None:
    """One lookup (pkg://posttrain.conf) for wheel and editable installs; here it is this checkout's conf/."""
    from posttrain.paths import CONF_SEARCH_PATH, conf_dir

    assert CONF_SEARCH_PATH == "pkg://posttrain.conf"
    assert conf_dir() == REPO / "conf" and (conf_dir() / "config.yaml").is_file()


def _readme_model_example() -> str:
    """The README's example of a model config of one's own (so the documented YAML is the tested one)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    (example,) = [b for b in blocks if b.startswith("# my-conf/model/my_model.yaml")]
    return example


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_own_model_config_from_a_folder_outside_the_package(tmp_path: Path, how: str) -> None:
    (tmp_path / "my-conf" / "model").mkdir(parents=True)
    (tmp_path / "my-conf" / "model" / "my_model.yaml").write_text(_readme_model_example())
    where = (["--config-dir", "my-conf"] if how == "--config-dir"
             else [f"hydra.searchpath=[file://{tmp_path / 'my-conf'}]"])
    cmd = [sys.executable, "-m", "posttrain", "--cfg", "job", "model=my_model", "stage=eval"]
    out = subprocess.run([*cmd, *where], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = OmegaConf.create(out.stdout).model
    assert (model.name, model.path, model.kind) == ("my_model", "/data/models/my-llama-sft", "instruct")
    assert model.dtype == "bfloat16" and model.quantization is None  # the schema's fields, filled from the YAML
    without = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert without.returncode != 0 and "my_model" in without.stderr  # only that folder provides it
