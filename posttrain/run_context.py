"""What a stage is handed: its plan (decided before anything is loaded) and its run context.

On the ground floor so that both the stages and the training code they call can name these types
without importing the stages (an arrow back up the flow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Plan:
    """What a stage will do, decided before anything is loaded or spent."""

    estimate_usd: float
    estimate_gpu_hours: float = 0.0
    estimate_api_usd: float = 0.0
    notes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # handed to run()


@dataclass
class RunContext:
    """What a stage's run() gets.

    ``run_dir`` takes this process's records. Under ``accelerate launch``/``torchrun`` with several
    processes, rank 0 writes into the run folder and every other rank into a private scratch folder,
    with ``train_dir`` pointing it at the run folder; ``shared_dir`` (the run folder, for every rank)
    holds what the ranks share: the training data, which rank 0 prepares first, and the checkpoints.
    """

    run_dir: Path
    cache_dir: Path
    tracker: Any
    plan: Plan
    sweep: dict[str, Any]
    api_usd: float = 0.0  # added to by stages as they spend (judge calls)
    train_dir: Path | None = None  # set only for a rank > 0: the run folder rank 0 writes

    @property
    def is_main(self) -> bool:
        """Rank 0, or the only process: the one that writes into the run folder."""
        return self.train_dir is None

    @property
    def shared_dir(self) -> Path:
        """Where the training data and checkpoints live (the same folder for every rank)."""
        return self.train_dir or self.run_dir


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` from accelerate/torchrun; 1 otherwise)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)
