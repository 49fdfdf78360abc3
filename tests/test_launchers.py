"""Cluster and multi-GPU configs: the Hydra launchers compose, the accelerate files parse.

Launchers (conf/hydra/launcher/): `slurm` extends the submitit plugin's `submitit_slurm`,
`local_parallel` extends the joblib plugin's `joblib`; each is composed by the real entrypoint in
a subprocess. The accelerate files (accelerate/) are plain accelerate configs: they are read
by accelerate's own loader and launch-argument validation, which needs no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CONF_DIR, REPO

LAUNCHER_DIR = CONF_DIR / "hydra" / "launcher"
ACCELERATE_DIR = REPO / "accelerate"

# What each of our launcher files must put into the composed hydra.launcher node.
EXPECTED: dict[str, dict[str, Any]] = {
    "slurm": {
        "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "gpus_per_node": 1, "timeout_min": 240, "max_num_timeout": 3, "tasks_per_node": 1, "nodes": 1,
        "cpus_per_task": 8, "mem_gb": 64, "additional_parameters": {"requeue": True},
    },
    "local_parallel": {
        "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "n_jobs": 3, "prefer": "processes",
    },
}
PLUGIN_MODULE = {"slurm": "hydra_plugins.hydra_submitit_launcher", "local_parallel": "hydra_plugins.hydra_joblib_launcher"}


def _posttrain(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    # The launcher reads these from the environment: only what the test passes counts.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_SLURM_")}
    full_env = inherited | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"} | (env or {})
    proc = subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True, cwd=REPO,
                          env=full_env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"posttrain {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _launcher_node(name: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The resolved hydra.launcher node as the entrypoint composes it."""
    out = _posttrain(f"hydra/launcher={name}", "model=qwen32b", *extra, "--cfg", "hydra", "-p", "hydra.launcher",
                     "--resolve", env=env)
    node = yaml.safe_load(out.stdout)
    assert isinstance(node, dict), out.stdout
    return node


def test_our_launcher_files_are_the_expected_ones() -> None:
    assert sorted(p.stem for p in LAUNCHER_DIR.glob("*.yaml")) == sorted(EXPECTED)
    # A file named like a plugin config would shadow it (and a `defaults: [<same name>]` inside
    # it includes itself); Hydra 1.3 then merges it into the schema with a deprecation warning.
    for plugin_name in ("submitit_slurm", "submitit_local", "joblib", "basic"):
        assert not (LAUNCHER_DIR / f"{plugin_name}.yaml").exists(), plugin_name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_composes_with_cfg_hydra(name: str) -> None:
    pytest.importorskip(PLUGIN_MODULE[name])
    out = _posttrain(f"hydra/launcher={name}", "model=qwen32b", "--cfg", "hydra")
    assert "launcher:" in out.stdout
    assert EXPECTED[name]["_target_"] in out.stdout
    if name == "slurm":
        assert "gpus_per_node: 1" in out.stdout
        assert "timeout_min: 240" in out.stdout
        assert "partition: ${oc.env:POSTTRAIN_SLURM_PARTITION,gpu}" in out.stdout
    else:
        assert "n_jobs: 3" in out.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_values(name: str) -> None:
    pytest.importorskip(PLUGIN_MODULE[name])
    node = _launcher_node(name)
    for key, value in EXPECTED[name].items():
        assert node[key] == value, (key, node[key])


def test_slurm_partition_comes_from_the_environment() -> None:
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    assert _launcher_node("slurm")["partition"] == "gpu"
    node = _launcher_node("slurm", env={"POSTTRAIN_SLURM_PARTITION": "a6000-test", "POSTTRAIN_SLURM_ACCOUNT": "lab"})
    assert node["partition"] == "a6000-test" and node["account"] == "lab"


def test_slurm_launcher_is_typed_against_the_plugin_schema() -> None:
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    bad_key = _posttrain("hydra/launcher=slurm", "hydra.launcher.partiton=x", "--cfg", "hydra", check=False)
    assert bad_key.returncode != 0 and "partiton" in bad_key.stderr
    bad_type = _posttrain("hydra/launcher=slurm", "hydra.launcher.timeout_min=abc", "--cfg", "hydra", check=False)
    assert bad_type.returncode != 0 and "timeout_min" in bad_type.stderr


def test_plugin_submitit_slurm_name_also_composes() -> None:
    """The plugin's own name composes too, with the plugin's defaults (no GPU requested)."""
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    node = _launcher_node("submitit_slurm")
    assert node["gpus_per_node"] is None and node["partition"] is None


def test_three_way_experiment_on_slurm_composes() -> None:
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    if not (CONF_DIR / "experiment" / "three_way.yaml").exists():
        pytest.skip("conf/experiment/three_way.yaml is not there")
    out = _posttrain("+experiment=three_way", "hydra/launcher=slurm", "--cfg", "hydra")
    assert "mode: MULTIRUN" in out.stdout
    assert "model: qwen32b,qwen32b_instruct,llama8b" in out.stdout
    assert "gpus_per_node: 1" in out.stdout and "timeout_min: 240" in out.stdout


def test_issue_acceptance_command_composes_the_multirun_config() -> None:
    """Hydra 1.3 takes one of -m / --cfg; posttrain turns `-m ... --cfg` into hydra.mode=MULTIRUN."""
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    out = _posttrain("-m", "+experiment=three_way", "hydra/launcher=submitit_slurm", "--cfg", "hydra")
    assert "mode: MULTIRUN" in out.stdout and "model: qwen32b,qwen32b_instruct,llama8b" in out.stdout
    assert EXPECTED["slurm"]["_target_"] in out.stdout
    ours = _posttrain("-m", "+experiment=three_way", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher")
    assert "gpus_per_node: 1" in ours.stdout and "timeout_min: 240" in ours.stdout
    job = _posttrain("--multirun", "model=tiny_base", "--cfg", "job", "-p", "model.name")
    assert job.stdout.strip() == "tiny_base"


def test_multirun_with_cfg_and_a_command_line_sweep_is_refused_with_the_reason() -> None:
    out = _posttrain("-m", "model=tiny_base,tiny_instruct", "--cfg", "job", check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert "--cfg shows the config of one job" in out.stderr and "model=tiny_base,tiny_instruct" in out.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    (["-m", "+experiment=three_way", "--cfg", "hydra"], ["hydra.mode=MULTIRUN", "+experiment=three_way", "--cfg", "hydra"]),
    (["a=1", "--multirun", "--cfg=job"], ["a=1", "hydra.mode=MULTIRUN", "--cfg=job"]),
    (["-m", "hydra.mode=RUN", "-c", "job"], ["hydra.mode=RUN", "-c", "job"]),  # the user's own mode wins
    (["-m", "model=x"], ["-m", "model=x"]),  # a real multirun is untouched
    (["--cfg", "job", "model=x"], ["--cfg", "job", "model=x"]),
])
def test_show_multirun_argv(argv: list[str], expected: list[str]) -> None:
    from posttrain.cli import show_multirun_argv

    assert show_multirun_argv(argv) == expected


def _sweep_config(launcher: dict[str, Any], models: str | None, model: str = "qwen32b") -> Any:
    from omegaconf import OmegaConf

    params = {"model": models} if models else {}
    return OmegaConf.create({"hydra": {"launcher": launcher, "sweeper": {"params": params},
                                       "overrides": {"task": []}}, "model": {"name": model}})


SLURM_TARGET = EXPECTED["slurm"]["_target_"]


@pytest.mark.parametrize(("launcher", "models", "model", "refused"), [
    ({"_target_": SLURM_TARGET, "gpus_per_node": None}, "qwen32b,qwen32b_instruct,llama8b", "qwen32b", True),
    ({"_target_": SLURM_TARGET, "gpus_per_node": 0, "gres": None}, None, "llama8b", True),
    ({"_target_": SLURM_TARGET, "gpus_per_node": 1}, "qwen32b,llama8b", "qwen32b", False),
    ({"_target_": SLURM_TARGET, "gres": "gpu:a100:1"}, None, "qwen32b", False),
    ({"_target_": SLURM_TARGET, "gpus_per_node": None}, "tiny_base,tiny_instruct", "tiny_base", False),  # CPU models
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, "qwen32b", "qwen32b", False),
])
def test_launcher_gpu_problem(launcher: dict[str, Any], models: str | None, model: str, refused: bool) -> None:
    from posttrain.callbacks import launcher_gpu_problem

    problem = launcher_gpu_problem(_sweep_config(launcher, models, model))
    assert (problem is not None) == refused
    if refused:
        assert "hydra/launcher=slurm" in problem and "gpus_per_node=1" in problem and model in problem


def test_slurm_sweep_without_gpus_is_refused_before_submission(tmp_path: Path) -> None:
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    sweep = tmp_path / "sweep"
    out = _posttrain("-m", "+experiment=three_way", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}",
                     check=False)
    assert out.returncode == 2, out.stderr
    assert "requests no GPU" in out.stderr and "Nothing was submitted" in out.stderr
    assert not (sweep / ".submitit").exists()


def test_slurm_launcher_renders_the_expected_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Push the composed launcher through submitit's own parameter handling, as SlurmLauncher.launch does."""
    pytest.importorskip(PLUGIN_MODULE["slurm"])
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    params = _launcher_node("slurm", env={"POSTTRAIN_SLURM_PARTITION": "a6000-test"})
    params.pop("_target_")
    # submitit refuses to build a SLURM executor where `srun` is not on PATH: a stub is enough here.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    folder = tmp_path / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    assert executor._executor.max_num_timeout == 3
    script = _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=str(folder),
                                 **executor._executor.parameters)
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=a6000-test", "#SBATCH --time=240",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB", "export HF_HUB_OFFLINE=1"):
        assert line in script, (line, script)
    assert "--account" not in script  # null unless POSTTRAIN_SLURM_ACCOUNT is set


# --------------------------------------------------------------------------------------------
# accelerate configs

ACCELERATE_FILES = {"multi_gpu": "MULTI_GPU", "fsdp_qlora": "FSDP"}


def test_accelerate_files_are_the_expected_ones() -> None:
    assert sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(ACCELERATE_FILES)


@pytest.mark.parametrize("name", sorted(ACCELERATE_FILES))
def test_accelerate_yaml_parses_with_expected_keys(name: str) -> None:
    path = ACCELERATE_DIR / f"{name}.yaml"
    text = path.read_text()
    assert f"accelerate launch --config_file accelerate/{name}.yaml -m posttrain stage=" in text
    cfg = yaml.safe_load(text)
    assert cfg["distributed_type"] == ACCELERATE_FILES[name]
    assert cfg["compute_environment"] == "LOCAL_MACHINE"
    assert cfg["num_machines"] == 1 and cfg["num_processes"] >= 2
    assert cfg["use_cpu"] is False
    if name == "multi_gpu":
        assert cfg["mixed_precision"] == "bf16"
        assert "fsdp_config" not in cfg
    else:
        fsdp = cfg["fsdp_config"]
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
        assert fsdp["fsdp_sync_module_states"] is True  # accelerate requires it with cpu_ram_efficient_loading
        assert fsdp["fsdp_use_orig_params"] is False
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        # No class named: accelerate wraps _no_split_modules (Qwen2DecoderLayer / LlamaDecoderLayer).
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp
        assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"


@pytest.mark.parametrize("name", sorted(ACCELERATE_FILES))
def test_accelerate_accepts_the_file(name: str) -> None:
    """accelerate's loader rejects unknown top-level keys; its launch validation maps the rest."""
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ACCELERATE_DIR / f"{name}.yaml"
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.distributed_type.value == ACCELERATE_FILES[name]

    parser = launch_command_parser()
    option_names = {a.dest for a in parser._actions}
    for key in (yaml.safe_load(path.read_text()).get("fsdp_config") or {}):
        assert key in option_names, f"{key} is not an `accelerate launch` option; accelerate would ignore it"
    args = parser.parse_args(["--config_file", str(path), "-m", "posttrain", "stage=sft", "model=qwen32b",
                              "hydra.run.dir=outputs/sft_test"])
    args, _, _ = _validate_launch_command(args)
    assert args.module and args.training_script == "posttrain"
    assert args.training_script_args == ["stage=sft", "model=qwen32b", "hydra.run.dir=outputs/sft_test"]
    assert args.num_processes == 2
    if name == "multi_gpu":
        assert args.multi_gpu and not args.use_fsdp and args.mixed_precision == "bf16"
    else:
        assert args.use_fsdp and not args.multi_gpu
        assert args.fsdp_cpu_ram_efficient_loading is True and args.fsdp_use_orig_params is False
        from accelerate.utils.launch import prepare_multi_gpu_env

        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_USE_FSDP"] == "true"
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
        assert env["FSDP_USE_ORIG_PARAMS"] == "false"
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
