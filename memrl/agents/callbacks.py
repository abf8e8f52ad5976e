"""SB3 callbacks of ``memrl train``: the evaluation record + TensorBoard, and checkpoints.

Kept out of the training loop (SB3 style): the loop is ``PPO.learn``; everything memrl adds hooks
in here.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from memrl.reporting.board import SCALARS, EvaluationBoard  # noqa: F401  (SCALARS: kept importable)
from memrl.reporting.records import EvaluationLog, info_to_row, write_best, write_pareto
from memrl.utils.io import atomic_dir


class EvaluationRecordCallback(BaseCallback):
    """Writes every evaluation to ``evaluations.csv``, TensorBoard and (with ``optuna``) the Optuna
    record; keeps best/pareto files current.

    TensorBoard tags (``RUN/tb/memrl``): those of :class:`memrl.reporting.board.EvaluationBoard`
    (``eval/<metric>`` per successful evaluation, ``eval/trainable_pct``, ``eval/best_reward``,
    ``eval/cache_hit_rate``, ``eval/failures``; figures ``masks/bit_frequency`` (heatmap over
    rollouts) and ``pareto/scatter`` at every rollout's end), the same as ``memrl search`` writes.
    """

    def __init__(self, run_dir: Path, log: EvaluationLog, writer, units: list[str], mem_metric: str, history: dict | None = None, optuna=None) -> None:  # noqa: ANN001
        super().__init__()
        self.optuna = optuna  # a memrl.reporting.optuna_store.OptunaStore, or None
        self.run_dir = Path(run_dir)
        self.log = log
        self.writer = writer
        self.units = list(units)
        self.mem_metric = mem_metric
        self.board = EvaluationBoard(writer, self.units, mem_metric, log.rows, history)
        self.history = self.board.history

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        rewards = self.locals.get("rewards", np.zeros(len(infos)))
        rows = []
        for i, (info, r) in enumerate(zip(infos, rewards)):
            if "mask_bits" not in info:
                continue
            step = self.num_timesteps - len(infos) + i + 1
            rows.append(info_to_row(step, i, info, float(r)))
            self.board.add(step, info, float(r), len(self.log.rows) + len(rows))
        if rows:
            self.log.append(rows)
            write_best(self.run_dir / "best_mask.json", self.log, self.units)
            if self.optuna is not None:
                self.optuna.add(rows)
        return True

    def _on_rollout_end(self) -> None:
        ok = self.log.ok_rows()
        front = write_pareto(self.run_dir / "pareto.csv", ok, self.mem_metric) if ok else []
        self.board.figures(self.num_timesteps, ok, front)


class ResumableCheckpointCallback(BaseCallback):
    """Saves ``RUN/checkpoint/`` (policy + RNG states + env states + record length) between rollouts.

    Written at rollout start (after the policy update), atomically: a kill -9 at any moment leaves
    either the previous or the new checkpoint. With every RNG restored, a resumed run proposes the
    same masks as the interrupted one, so the evaluations finished after the checkpoint come back
    from the cache instead of being recomputed.
    """

    def __init__(self, run_dir: Path, every: int, log: EvaluationLog, record: EvaluationRecordCallback) -> None:
        super().__init__()
        self.dir = Path(run_dir) / "checkpoint"
        self.every = max(1, int(every))
        self.log = log
        self.record = record
        self.last = None

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self.last >= self.every:
            self.save()

    def _on_step(self) -> bool:
        return True

    def save(self) -> None:
        venv = self.model.get_env()
        state = {
            "num_timesteps": int(self.num_timesteps),
            "rows": len(self.log.rows),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "env_states": venv.env_method("get_state"),
            "history": self.record.history,
        }
        with atomic_dir(self.dir) as tmp:
            self.model.save(tmp / "policy.zip")
            with open(tmp / "state.pkl", "wb") as f:
                pickle.dump(state, f)
        self.last = self.num_timesteps


def load_checkpoint(run_dir: Path) -> dict | None:
    d = Path(run_dir) / "checkpoint"
    if not (d / "policy.zip").is_file() or not (d / "state.pkl").is_file():
        return None
    with open(d / "state.pkl", "rb") as f:
        state = pickle.load(f)
    state["policy"] = d / "policy.zip"
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
