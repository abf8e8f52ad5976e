"""Mirrors of a run's TensorBoard logs in other experiment trackers (``train.report_to``).

Weights & Biases: ``wandb.init(sync_tensorboard=True)`` before any TensorBoard writer exists
makes W&B copy every scalar, image and figure memrl and SB3 log to TensorBoard, so the
dashboards show the same tags (``eval/reward``, ``eval/failures``, ``masks/bit_frequency``, ...).
The W&B run id is kept in ``RUN/wandb_id.txt``, so ``memrl train --resume`` continues the same
W&B run. W&B is an optional extra (``pip install memrl[wandb]``); offline use follows W&B's own
``WANDB_MODE=offline``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memrl.errors import MemrlError
from memrl.utils.io import write_text_atomic


def check_available(names: list[str]) -> None:
    """Refuse, before anything is written, a tracker whose package is not installed."""
    import importlib.util

    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise MemrlError("train.report_to includes 'wandb' but wandb is not installed: pip install 'memrl[wandb]'")


class WandbMirror:
    """Start (or resume) a W&B run that syncs the run folder's TensorBoard logs; ``close`` ends it."""

    def __init__(self, run_dir: str | Path, project: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise MemrlError("train.report_to includes 'wandb' but wandb is not installed: pip install 'memrl[wandb]'") from None
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        self.run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir), config=config, sync_tensorboard=True)
        if not id_file.is_file():
            write_text_atomic(id_file, run_id + "\n")
        self._wandb = wandb

    def close(self) -> None:
        self._wandb.finish()


def start_trackers(names: list[str], run_dir: str | Path, config: dict[str, Any], wandb_project: str = "memrl") -> list:
    """The mirrors named in ``train.report_to`` (started now: before any TensorBoard writer)."""
    out = []
    for name in names:
        if name == "wandb":
            out.append(WandbMirror(run_dir, wandb_project, config))
        else:  # validated by the config; kept for a clear message if called directly
            raise MemrlError(f"unknown tracker {name!r}; valid: wandb")
    return out
