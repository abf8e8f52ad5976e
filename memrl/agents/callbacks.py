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

    Real evaluations only: an imagined step (``info["imagined"]``, :mod:`memrl.agents.dyna`) was
    not evaluated and is left out (:class:`SurrogateCallback` counts it).
    """

    def __init__(self, run_dir: Path, log: EvaluationLog, writer, units: list[str], mem_metric: str, history: dict | None = None, optuna=None, ground_truth=None) -> None:  # noqa: ANN001
        super().__init__()
        self.optuna = optuna  # a memrl.reporting.optuna_store.OptunaStore, or None
        self.run_dir = Path(run_dir)
        self.log = log
        self.writer = writer
        self.units = list(units)
        self.mem_metric = mem_metric
        self.board = EvaluationBoard(writer, self.units, mem_metric, log.rows, history, ground_truth=ground_truth)
        self.history = self.board.history

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        rewards = self.locals.get("rewards", np.zeros(len(infos)))
        rows = []
        for i, (info, r) in enumerate(zip(infos, rewards)):
            if "mask_bits" not in info or info.get("imagined"):
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


class SurrogateCallback(BaseCallback):
    """TensorBoard tags of Dyna-style training (``train.surrogate``, :mod:`memrl.agents.dyna`), and
    its ``max_real`` stop.

    Tags (``RUN/tb/memrl``, x axis: the env step): ``surrogate/imagined_share`` (imagined steps
    over all steps so far), ``surrogate/real_evaluations`` (distinct real evaluations so far) and
    ``surrogate/abs_error`` (|prediction - reward| of each new real evaluation, predicted before
    its result was known). Training stops (``_on_step`` returns ``False``) once ``max_real``
    distinct real evaluations have been made.

    ``model``: the run's :class:`~memrl.agents.dyna.DynaModel`; ``real_steps``: the real steps
    recorded before this run's ``learn`` (a resumed run's ``evaluations.csv`` rows), so the share
    continues where it stood.
    """

    def __init__(self, writer, model, real_steps: int = 0, max_real: int | None = None) -> None:  # noqa: ANN001
        super().__init__()
        self.writer = writer
        self.dyna = model
        self.real_steps = int(real_steps)
        self.imagined_steps = 0
        self.max_real = max_real

    def _on_training_start(self) -> None:
        self.imagined_steps = max(0, int(self.num_timesteps) - self.real_steps)

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        rewards = self.locals.get("rewards", np.zeros(len(infos)))
        for i, (info, r) in enumerate(zip(infos, rewards)):
            if "imagined" not in info:
                continue
            step = self.num_timesteps - len(infos) + i + 1
            if info["imagined"]:
                self.imagined_steps += 1
            else:
                self.real_steps += 1
                mean = info.get("surrogate_mean")
                if info.get("surrogate_new") and mean is not None and not info.get("failed"):
                    self.writer.add_scalar("surrogate/abs_error", abs(float(mean) - float(r)), step)
            total = self.real_steps + self.imagined_steps
            self.writer.add_scalar("surrogate/imagined_share", self.imagined_steps / max(1, total), step)
            self.writer.add_scalar("surrogate/real_evaluations", self.dyna.n_real, step)
        return self.max_real is None or self.dyna.n_real < self.max_real


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
