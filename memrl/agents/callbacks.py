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

from memrl.reporting import plots
from memrl.reporting.records import EvaluationLog, info_to_row, write_best, write_pareto
from memrl.metrics.names import SUMMARY_METRICS
from memrl.utils.io import atomic_dir

SCALARS = ("reward", *SUMMARY_METRICS)


class EvaluationRecordCallback(BaseCallback):
    """Writes every evaluation to ``evaluations.csv``, TensorBoard and (with ``optuna``) the Optuna
    record; keeps best/pareto files current.

    TensorBoard tags (``RUN/tb/memrl``): ``eval/<metric>`` per successful evaluation,
    ``eval/trainable_pct``, ``eval/best_reward``, ``eval/cache_hit_rate``, ``eval/failures`` (the
    running count of failed evaluations; their penalised reward is in ``evaluations.csv``);
    figures ``masks/bit_frequency`` (heatmap over rollouts) and ``pareto/scatter``.
    """

    def __init__(self, run_dir: Path, log: EvaluationLog, writer, units: list[str], mem_metric: str, history: dict | None = None, optuna=None) -> None:  # noqa: ANN001
        super().__init__()
        self.optuna = optuna  # a memrl.reporting.optuna_store.OptunaStore, or None
        self.run_dir = Path(run_dir)
        self.log = log
        self.writer = writer
        self.units = list(units)
        self.mem_metric = mem_metric
        self.history = history if history is not None else {"freq": [], "steps": []}
        self._rollout_bits: list[np.ndarray] = []
        best = log.best()
        self.best_reward = float(best["reward"]) if best else -np.inf
        self.n_cached = sum(1 for r in log.rows if str(r.get("cached")) == "True")
        self.n_failed = sum(1 for r in log.rows if str(r.get("failed")) == "True")

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        rewards = self.locals.get("rewards", np.zeros(len(infos)))
        rows = []
        for i, (info, r) in enumerate(zip(infos, rewards)):
            if "mask_bits" not in info:
                continue
            step = self.num_timesteps - len(infos) + i + 1
            rows.append(info_to_row(step, i, info, float(r)))
            self._rollout_bits.append(np.array([int(b) for b in info["mask_bits"]]))
            self.n_cached += int(bool(info.get("cached")))
            w = self.writer
            if info.get("failed"):
                self.n_failed += 1
                w.add_scalar("eval/failures", self.n_failed, step)
            else:
                for k in SCALARS:
                    v = float(r) if k == "reward" else info.get(k)
                    if v is not None:
                        w.add_scalar(f"eval/{k}", float(v), step)
                w.add_scalar("eval/trainable_pct", 100.0 * float(info["trainable_fraction"]), step)
                if float(r) > self.best_reward:
                    self.best_reward = float(r)
            if np.isfinite(self.best_reward):
                w.add_scalar("eval/best_reward", self.best_reward, step)
            w.add_scalar("eval/cache_hit_rate", self.n_cached / max(1, len(self.log.rows) + len(rows)), step)
        if rows:
            self.log.append(rows)
            write_best(self.run_dir / "best_mask.json", self.log, self.units)
            if self.optuna is not None:
                self.optuna.add(rows)
        return True

    def _on_rollout_end(self) -> None:
        if self._rollout_bits:
            self.history["freq"].append(np.mean(self._rollout_bits, axis=0).tolist())
            self.history["steps"].append(int(self.num_timesteps))
            self._rollout_bits = []
            freq = np.array(self.history["freq"]).T
            self.writer.add_figure("masks/bit_frequency", plots.mask_frequency_heatmap(freq, self.units, self.history["steps"]), self.num_timesteps)
        ok = self.log.ok_rows()
        if ok:
            front = write_pareto(self.run_dir / "pareto.csv", ok, self.mem_metric)
            self.writer.add_figure("pareto/scatter", plots.pareto_scatter(ok, front, self.mem_metric), self.num_timesteps)
        self.writer.flush()


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
