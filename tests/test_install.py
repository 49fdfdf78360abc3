"""Installable anywhere: the wheel carries the configs and the data, and runs outside the repository.

A copy of the checkout (the files git tracks or would track, as in a clean clone) is built into a
wheel; the wheel is installed into a fresh virtualenv (torch pinned as ``make setup`` pins it, no
package of the repository's .venv), and the installed ``posttrain`` composes a config, runs the
tiny three-way sweep and a model of the user's own (``--config-dir``) from an empty folder outside
the repository. The run folders must land under that folder.

Slow (a few minutes: most of it is pip installing torch, transformers, trl, wandb ... from pip's
cache or index). ``TORCH_SPEC`` overrides the torch pin as it does for ``make setup``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.slow

TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")  # the Makefile's default pin


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}) in {cwd}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _checkout_copy(dest: Path) -> Path:
    """The files of a clean clone plus uncommitted work (tracked and untracked, not ignored)."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    files = [f for f in listed.split("\0") if f and (REPO / f).is_file()]  # a tracked file may be deleted
    assert "pyproject.toml" in files and "conf/config.yaml" in files, "not a posttrain checkout"
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((REPO / rel).read_bytes())
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (the repository gets no build/ folder)."""
    root = tmp_path_factory.mktemp("wheel")
    src = _checkout_copy(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", root / "dist"], cwd=root)
    (whl,) = (root / "dist").glob("posttrain-*.whl")
    return whl


def test_wheel_ships_every_config_and_the_data_and_nothing_of_the_repository(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"posttrain/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    data = {f"posttrain/{p.relative_to(REPO / 'posttrain').as_posix()}"
            for p in (REPO / "posttrain" / "data").iterdir() if p.is_file()}
    assert "posttrain/conf/config.yaml" in configs and "posttrain/data/conversations.jsonl" in data
    assert configs <= names, f"configs missing from the wheel: {sorted(configs - names)}"
    assert "posttrain/conf/__init__.py" in names  # Hydra's pkg:// source needs a package
    assert data <= names, f"data missing from the wheel: {sorted(data - names)}"
    modules = {f"posttrain/{p.relative_to(REPO / 'posttrain').as_posix()}" for p in (REPO / "posttrain").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    stray = sorted(n for n in names if n.split("/")[0] != "posttrain" and not n.split("/")[0].endswith(".dist-info"))
    assert not stray, f"files outside the package in the wheel (tests/, docs/, conf/ ...): {stray}"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    """A fresh virtualenv with the wheel installed the way ``make setup`` installs (torch first, pinned)."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    t0 = time.monotonic()
    # the base interpreter, not this .venv's packages: a real fresh environment (pip's cache is reused)
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], cwd=root)
    _run([py, "-m", "pip", "install", "-q", TORCH_SPEC], cwd=root)
    _run([py, "-m", "pip", "install", "-q", wheel, TORCH_SPEC], cwd=root)
    print(f"fresh venv + wheel install: {time.monotonic() - t0:.0f} s")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
            "TOKENIZERS_PARALLELISM": "false", "POSTTRAIN_HOME": str(root / "home")}
    return {"venv": venv, "root": root, **env}


def _env(installed: dict[str, str | Path]) -> dict[str, str]:
    return {k: str(v) for k, v in installed.items() if k not in {"venv", "root"}}


def _empty_folder(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO)
    return work


def test_installed_package_is_the_wheel_not_the_checkout(installed: dict[str, str | Path], tmp_path: Path) -> None:
    venv = Path(installed["venv"])
    out = _run([venv / "bin" / "python", "-c", "import posttrain, posttrain.conf, torch, hydra; "
                "from posttrain.paths import conf_dir; print(posttrain.__file__, conf_dir(), torch.__version__, "
                "hydra.__file__, sep='\\n')"], cwd=_empty_folder(tmp_path), env=_env(installed)).stdout.split("\n")
    package, conf, torch_version, hydra_file = (Path(out[0]), Path(out[1]), out[2], Path(out[3]))
    site = venv / "lib"
    for path in (package, conf, hydra_file):
        assert path.is_relative_to(site) and not path.is_relative_to(REPO), path
    assert conf == package.parent / "conf" and (conf / "config.yaml").is_file()
    assert torch_version.split("+")[0] == TORCH_SPEC.split("==")[-1]


def test_cfg_job_composes_from_an_empty_folder(installed: dict[str, str | Path], tmp_path: Path) -> None:
    work = _empty_folder(tmp_path)
    out = _run([Path(installed["venv"]) / "bin" / "posttrain", "--cfg", "job", "model=qwen32b", "stage=eval",
                "judge=claude", "scorer=llm"], cwd=work, env=_env(installed), timeout=120).stdout
    cfg = yaml.safe_load(out)
    assert (cfg["model"]["name"], cfg["model"]["path"], cfg["model"]["quantization"]) == ("qwen32b", "Qwen/Qwen2.5-32B",
                                                                                          "nf4")
    assert (cfg["stage"]["name"], cfg["judge"]["name"], cfg["scorer"]["name"]) == ("eval", "claude", "llm")
    assert list(work.iterdir()) == []  # --cfg runs nothing and writes nothing


def test_tiny_three_way_sweep_and_an_own_model_run_from_an_empty_folder(installed: dict[str, str | Path],
                                                                         tmp_path: Path) -> None:
    work, env = _empty_folder(tmp_path), _env(installed)
    posttrain = Path(installed["venv"]) / "bin" / "posttrain"
    t0 = time.monotonic()
    _run([posttrain, "-m", "+experiment=three_way_tiny"], cwd=work, env=env)
    print(f"three_way_tiny sweep from the wheel: {time.monotonic() - t0:.0f} s")
    (sweep,) = work.glob("multirun/*/*/")  # multirun/DATE/TIME/ under the folder it ran in
    comparison = json.loads((sweep / "comparison.json").read_text())
    assert comparison, "empty comparison.json"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").is_file())
    summaries = [json.loads((j / "summary.json").read_text()) for j in jobs]
    assert sorted(s["model"] for s in summaries) == ["tiny_alt_base", "tiny_base", "tiny_instruct"]
    assert all(s["status"] == "finished" and Path(s["sweep"]["output_dir"]).is_relative_to(work.resolve())
               for s in summaries)

    # A model of one's own, added without editing the package: a local HF folder (here the tiny base
    # the sweep built) named in model/my_model.yaml of a config folder outside the package.
    (tiny_base,) = [p for p in (Path(installed["root"]) / "home" / "cache" / "tiny").glob("base-*") if p.is_dir()]
    user_conf = tmp_path / "my-conf"
    (user_conf / "model").mkdir(parents=True)
    (user_conf / "model" / "my_model.yaml").write_text(
        f"defaults: [base_model, _self_]\nname: my_model\npath: {tiny_base}\nkind: base\ndtype: float32\n")
    _run([posttrain, "--config-dir", user_conf, "model=my_model", "benchmark.limit=2", "benchmark.split=pilot",
          "generation.max_new_tokens=4", "stage.sentinel=false", "hydra.run.dir=outputs/mine"], cwd=work, env=env)
    summary = json.loads((work / "outputs" / "mine" / "summary.json").read_text())
    provenance = json.loads((work / "outputs" / "mine" / "provenance.json").read_text())
    assert (summary["status"], summary["model"]) == ("finished", "my_model")
    assert str(tiny_base) in json.dumps(provenance)
