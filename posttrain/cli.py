"""The one entrypoint: ``posttrain [overrides]`` / ``posttrain -m ...`` / ``python -m posttrain``.

Composition imports only Hydra and the schemas, so ``posttrain --cfg job`` answers in about a
second; torch, transformers and the SDKs load when a stage runs.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from posttrain.config import register_configs
from posttrain.job import run_job, user_errors
from posttrain.paths import CONF_SEARCH_PATH, conf_dir

log = logging.getLogger("posttrain")


# The shipped configs are found as a package (pkg://posttrain.conf) in an editable install and a wheel
# alike; a user's own config folder joins them with --config-dir (README: "Your own configs").
@hydra.main(config_path=CONF_SEARCH_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    import errno

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_job(cfg)
    except Exception as exc:
        from hydra.core.hydra_config import HydraConfig

        if str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
            # Let Hydra record the job as failed so the comparison callback still writes what the
            # finished jobs measured; Hydra prints the message and the sweep exits non-zero.
            print(f"posttrain: error in job {getattr(HydraConfig.get().job, 'num', '?')}: {exc}", file=sys.stderr)
            raise
        if isinstance(exc, user_errors()):
            print(f"posttrain: error: {exc}", file=sys.stderr)
            sys.exit(2)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            print(f"posttrain: error: disk full while writing {exc.filename or 'records'} ({exc}). The records "
                  "written before this point are complete; free space and rerun the same command to resume.",
                  file=sys.stderr)
            sys.exit(2)
        raise


_MULTIRUN_FLAGS = ("-m", "--multirun")
_SHOW_FLAGS = ("-c", "--cfg", "--info", "-i")


def show_multirun_argv(argv: list[str]) -> list[str]:
    """Let ``-m ... --cfg job|hydra|all`` show the sweep's config instead of failing.

    Hydra 1.3 accepts only one of ``--multirun``/``--cfg``/``--info`` per command. Asked for both, the
    user wants to see what the sweep would run: drop ``-m`` and compose with ``hydra.mode=MULTIRUN``
    (as an experiment that sets it does), so ``hydra.launcher``, ``hydra.sweep`` and the sweeper
    params show as the sweep will use them. Other command lines are returned unchanged.
    """
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    if not flags & set(_MULTIRUN_FLAGS) or not flags & set(_SHOW_FLAGS):
        return argv
    _refuse_sweep_values_with_cfg([a for a in argv if not a.startswith("-")])
    mode_given = any(a.lstrip("+~").startswith("hydra.mode=") for a in argv)
    out: list[str] = []
    for a in argv:  # the override takes the flag's place: argparse wants the overrides in one run
        if a in _MULTIRUN_FLAGS:
            if not mode_given:
                out.append("hydra.mode=MULTIRUN")
                mode_given = True
        else:
            out.append(a)
    return out


def _refuse_sweep_values_with_cfg(words: list[str]) -> None:
    """``--cfg`` shows one job's config: a command-line sweep (``model=a,b``) has no single value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([w for w in words if "=" in w])
    except Exception:  # not overrides after all (an option's value): Hydra reports what is wrong
        return
    swept = [str(o.input_line) for o in overrides if o.is_sweep_override()]
    if swept:
        print(f"posttrain: error: --cfg shows the config of one job, but {', '.join(swept)} sweep(s) several "
              "values: give one value per key to preview that job (sweeper params set by an experiment, "
              "such as +experiment=three_way, are fine).", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    from posttrain.errors import PosttrainError

    try:
        conf_dir()  # an install without the config package gets a fix, not Hydra's "module not found"
    except PosttrainError as exc:
        print(f"posttrain: error: {exc}", file=sys.stderr)
        sys.exit(2)
    register_configs()
    sys.argv[1:] = show_multirun_argv(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
