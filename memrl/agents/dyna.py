"""Dyna-style training: PPO learns from real evaluations and from a reward model's imagined ones.

A real step of :class:`~memrl.envs.mask_selection.MaskSelectionEnv` is one fine-tune (~30 s). Most
proposals of a learning policy are not worth one: they are unlikely to beat the best mask found
on the dataset so far. :class:`DynaWrapper` sits around the env and, for each proposal, either
lets the env evaluate it (a **real** step) or answers it with the reward model's mean (an
**imagined** step, :mod:`memrl.evaluation.surrogate`), without evaluating. The rule
(:meth:`DynaModel.decide`), for the proposal's (dataset, effective mask, method, learning rate):

1. evaluated for real before in this run: real (the evaluation cache answers it for free);
2. fewer than ``min_real`` distinct real evaluations so far: real (the model needs data);
3. no successful real evaluation on this dataset yet: real (nothing to compare with);
4. promising or uncertain, ``mean + kappa * std >=`` the best real reward on the dataset so far
   (an upper confidence bound): real;
5. otherwise imagined: the predicted mean, clipped to the reward range ``[reward.floor, 0]``.

The model is refitted on the real evaluations when their count reaches ``min_real``, then every
``refit_every`` new ones: with ``n`` distinct real evaluations the model in use is the one fitted
on the first ``min_real + refit_every * floor((n - min_real) / refit_every)`` of them. Failed
evaluations count (they were spent) but are left out of the fit (their reward is a penalty, not
a measurement). The fit is a deterministic function of the evaluations in order, so a resumed run
rebuilds the model from ``evaluations.csv`` (:meth:`DynaWrapper.restore`) and continues exactly
as an uninterrupted one: nothing of it is stored in the checkpoint.

Every wrapped env of one process shares one :class:`DynaModel` (``n_envs`` > 1 in a
``DummyVecEnv``): each learns from all real evaluations.

``info`` of a step: ``imagined`` (bool), ``surrogate_mean`` / ``surrogate_std`` (the prediction
made *before* the step's result was known; ``None`` before the model's first fit or for a
repeat), ``surrogate_reason`` (``repeat``, ``warmup``, ``new dataset``, ``promising`` or, for an
imagined step, ``not promising``), ``surrogate_new`` (a real step that added a distinct
evaluation) and ``surrogate_real_evaluations`` (distinct real evaluations so far). An imagined
step's ``info`` also names the proposal like a real one (``dataset``, ``mask``, ``mask_bits``,
``method``, ``lr``, ...) but carries no metric: it was not evaluated.

After an imagined step the observation is built like after a real one: the proposal's bits, then
``[fid_norm, mem_norm, trainable_fraction, reward, t / horizon]``. With ``horizon`` > 1 the
three metrics are predicted by models of their own (fitted on the same schedule); with horizon 1
(the common case) the step ends the episode, that observation is never acted on, and they are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from memrl.evaluation.surrogate import RewardSurrogate, SurrogateFeatures
from memrl.errors import MemrlError

#: Metrics of the observation that an imagined step of a horizon > 1 episode predicts.
AUX_METRICS = ("fid_norm", "mem_norm", "trainable_fraction")


@dataclass(frozen=True)
class Decision:
    """Whether a proposal is evaluated for real, why, and the model's prediction for it."""

    real: bool
    reason: str
    mean: float | None = None
    std: float | None = None


def resolved_lr(method: str, lr: float | None) -> float:
    """The learning rate an evaluation runs with (``None``: the method's default), as the
    evaluation record writes it: the ``lr`` of a proposal's key."""
    from memrl.training.finetune import FinetuneConfig

    return FinetuneConfig(method=method, lr=lr).resolved_lr()


class DynaModel:
    """The shared part of Dyna: the run's real evaluations, the reward model fitted on them, and
    the rule that decides whether a proposal is evaluated (see the module docstring).

    ``reward_range``: ``(low, high)`` an imagined reward is clipped to; ``aux``: also predict
    :data:`AUX_METRICS` (for the observation of a horizon > 1 episode).
    """

    def __init__(
        self,
        features: SurrogateFeatures,
        min_real: int = 16,
        kappa: float = 1.0,
        refit_every: int = 4,
        seed: int = 0,
        reward_range: tuple[float, float] = (-20.0, 0.0),
        aux: bool = False,
    ) -> None:
        if int(min_real) < 1:
            raise MemrlError(f"surrogate min_real must be >= 1, got {min_real}")
        if not float(kappa) >= 0:
            raise MemrlError(f"surrogate kappa must be >= 0, got {kappa}")
        if int(refit_every) < 1:
            raise MemrlError(f"surrogate refit_every must be >= 1, got {refit_every}")
        self.features = features
        self.min_real = int(min_real)
        self.kappa = float(kappa)
        self.refit_every = int(refit_every)
        self.seed = int(seed)
        self.reward_range = (float(reward_range[0]), float(reward_range[1]))
        self.aux = bool(aux)
        self._keys: set[tuple] = set()
        self._x: list[np.ndarray] = []  # one per distinct real evaluation, in order
        self._y: list[float | None] = []  # its reward, None when it failed
        self._aux: list[dict[str, float] | None] = []
        self._best: dict[str, float] = {}
        self._fitted_on = -1
        self.model: RewardSurrogate | None = None
        self.aux_models: dict[str, RewardSurrogate] = {}
        #: |prediction - reward| of each new successful real evaluation predicted before it was seen
        self.errors: list[float] = []

    # ------------------------------------------------------------------ the record
    @staticmethod
    def key(dataset: str, mask_bits: str, method: str, lr: float) -> tuple:
        """What makes two proposals one evaluation: dataset, effective mask, method, learning rate."""
        return (str(dataset), str(mask_bits), str(method), float(lr))

    @property
    def n_real(self) -> int:
        """Distinct real evaluations so far (failed ones included)."""
        return len(self._x)

    def seen(self, key: tuple) -> bool:
        return key in self._keys

    def best(self, dataset: str) -> float | None:
        """The best successful real reward on ``dataset`` so far (``None``: none yet)."""
        return self._best.get(dataset)

    @staticmethod
    def recorded(reward: float) -> float:
        """``reward`` as the run records it: a float32 (what the vectorised env hands PPO and the
        evaluation record writes), so a model rebuilt from ``evaluations.csv`` sees the same numbers."""
        return float(np.float32(reward))

    def add(self, key: tuple, x: np.ndarray, reward: float, failed: bool, metrics: dict | None = None) -> bool:
        """Record one real evaluation; ``False`` (and nothing recorded) when its key was seen before."""
        if key in self._keys:
            return False
        reward = self.recorded(reward)
        self._keys.add(key)
        self._x.append(np.asarray(x, dtype=np.float64))
        ok = not failed and np.isfinite(reward)
        self._y.append(float(reward) if ok else None)
        aux = None
        if ok and self.aux and metrics is not None:
            try:
                aux = {k: float(metrics[k]) for k in AUX_METRICS}
            except (KeyError, TypeError, ValueError):
                aux = None
        self._aux.append(aux)
        if ok:
            d = key[0]
            self._best[d] = max(self._best.get(d, -np.inf), float(reward))
        return True

    # ------------------------------------------------------------------ the model
    def fit_size(self, n: int | None = None) -> int:
        """How many of the first real evaluations the model in use is fitted on (0: no model yet)."""
        n = self.n_real if n is None else n
        if n < self.min_real:
            return 0
        return self.min_real + self.refit_every * ((n - self.min_real) // self.refit_every)

    def _ensure_fitted(self) -> bool:
        m = self.fit_size()
        if m == 0:
            return False
        if m != self._fitted_on:
            self._fitted_on = m
            ok = [i for i in range(m) if self._y[i] is not None]
            self.model = RewardSurrogate(self.seed).fit(np.stack([self._x[i] for i in ok]), np.asarray([self._y[i] for i in ok])) if ok else None
            self.aux_models = {}
            if self.aux:
                have = [i for i in ok if self._aux[i] is not None]
                if have:
                    X = np.stack([self._x[i] for i in have])
                    self.aux_models = {k: RewardSurrogate(self.seed).fit(X, np.asarray([self._aux[i][k] for i in have])) for k in AUX_METRICS}
        return self.model is not None

    def predict(self, x: np.ndarray) -> tuple[float, float] | None:
        """The reward model's ``(mean, std)`` at ``x``, or ``None`` while there is no model."""
        if not self._ensure_fitted():
            return None
        mean, std = self.model.predict(np.asarray(x)[None, :])
        return float(mean[0]), float(std[0])

    def predict_metrics(self, x: np.ndarray) -> dict[str, float]:
        """The predicted :data:`AUX_METRICS` at ``x`` (0 for each without a model)."""
        self._ensure_fitted()
        return {k: float(self.aux_models[k].predict(np.asarray(x)[None, :])[0][0]) if k in self.aux_models else 0.0 for k in AUX_METRICS}

    def clip(self, reward: float) -> float:
        lo, hi = self.reward_range
        return float(min(max(reward, lo), hi))

    # ------------------------------------------------------------------ the rule
    def decide(self, dataset: str, key: tuple, x: np.ndarray) -> Decision:
        """Real or imagined, for one proposal (see the module docstring for the rule)."""
        if key in self._keys:
            return Decision(True, "repeat")
        if self.n_real < self.min_real:
            return Decision(True, "warmup")
        pred = self.predict(x)
        if pred is None:  # every real evaluation so far failed: nothing to learn from
            return Decision(True, "warmup")
        mean, std = pred
        best = self.best(dataset)
        if best is None:
            return Decision(True, "new dataset", mean, std)
        if mean + self.kappa * std >= best:
            return Decision(True, "promising", mean, std)
        return Decision(False, "not promising", mean, std)

    def observe(self, decision: Decision, key: tuple, x: np.ndarray, reward: float, failed: bool, metrics: dict | None = None) -> bool:
        """Record a real step's result after ``decision``; keeps the out-of-sample error. Returns
        whether it added a distinct evaluation."""
        new = self.add(key, x, reward, failed, metrics)
        reward = self.recorded(reward)
        if new and decision.mean is not None and not failed and np.isfinite(reward):
            self.errors.append(abs(float(decision.mean) - reward))
        return new

    @property
    def mean_abs_error(self) -> float | None:
        return float(np.mean(self.errors)) if self.errors else None

    def restore(self, records: Sequence[tuple[str, tuple, np.ndarray, float, bool, dict | None]]) -> None:
        """Rebuild from the run's real evaluations in order (``(dataset, key, x, reward, failed,
        metrics)``), deciding each as the run did, so the model, the best rewards and the
        out-of-sample errors are those of an uninterrupted run. Only on an empty model."""
        if self._x:
            raise MemrlError("DynaModel.restore needs an empty model (it rebuilds a run from its start)")
        for dataset, key, x, reward, failed, metrics in records:
            decision = self.decide(dataset, key, x)
            if decision.real:  # always so for a recorded step, unless the record was made otherwise
                self.observe(decision, key, x, reward, failed, metrics)
            else:
                self.add(key, x, reward, failed, metrics)

    def summary(self) -> dict:
        return {
            "real_evaluations": self.n_real,
            "failed_real_evaluations": sum(1 for y in self._y if y is None),
            "fitted_on": self.fit_size(),
            "mean_abs_error": self.mean_abs_error,
            "predicted_evaluations": len(self.errors),
            "kernel": self.model.kernel if self.model is not None else None,
        }


class DynaWrapper(gym.Wrapper):
    """Around a :class:`~memrl.envs.mask_selection.MaskSelectionEnv`: each step is real or imagined
    by ``model``'s rule (see the module docstring). Put it directly around the env and other
    wrappers (``Monitor``) outside it: a wrapper in between would not see the imagined steps."""

    def __init__(self, env: gym.Env, model: DynaModel) -> None:
        super().__init__(env)
        from memrl.envs.mask_selection import MaskSelectionEnv

        if not isinstance(env.unwrapped, MaskSelectionEnv):
            raise MemrlError(f"DynaWrapper wraps a MaskSelectionEnv, got {type(env.unwrapped).__name__}")
        self.model = model
        self.real_steps = 0
        self.imagined_steps = 0

    # ------------------------------------------------------------------ proposals
    def proposal(self, action) -> dict:  # noqa: ANN001
        """What ``action`` proposes on the current dataset: its bits, effective mask, method,
        learning rate, key and surrogate features."""
        from memrl.peft_masking import Mask

        base = self.env.unwrapped
        bits, method, lr = base.decode(action)
        proposed = Mask.from_bits([int(b) for b in bits], base.evaluator.units)
        trained, empty = base.evaluator.effective_mask(method, proposed)
        dataset = base.dataset_name
        lr_used = resolved_lr(method, lr)
        return {
            "bits": bits,
            "proposed": proposed,
            "trained": trained,
            "empty": empty,
            "method": method,
            "lr": lr,
            "dataset": dataset,
            "key": self.model.key(dataset, trained.bitstring, method, lr_used),
            "lr_used": lr_used,
            "x": self.model.features.row(base.descriptor(dataset), trained.bitstring, method, lr),
        }

    def step(self, action):  # noqa: ANN001, ANN201
        p = self.proposal(action)
        d = self.model.decide(p["dataset"], p["key"], p["x"])
        if not d.real:
            self.imagined_steps += 1
            return self.imagine(p, d)
        obs, reward, terminated, truncated, info = self.env.step(action)
        info.setdefault("lr", p["lr_used"])  # a failed evaluation's info has none; the record needs it
        failed = bool(info.get("failed"))
        new = self.model.observe(d, p["key"], p["x"], float(reward), failed, info)
        self.real_steps += 1
        info.update(
            {
                "imagined": False,
                "surrogate_mean": d.mean,
                "surrogate_std": d.std,
                "surrogate_reason": d.reason,
                "surrogate_new": new,
                "surrogate_real_evaluations": self.model.n_real,
            }
        )
        return obs, reward, terminated, truncated, info

    def imagine(self, p: dict, d: Decision):  # noqa: ANN201
        """The imagined step of proposal ``p``: the env advances as after a real step (same
        step count, observation and termination), with the model's reward and no evaluation."""
        base = self.env.unwrapped
        reward = self.model.clip(float(d.mean))
        horizon = base.config.horizon
        metrics = self.model.predict_metrics(p["x"]) if horizon > 1 else dict.fromkeys(AUX_METRICS, 0.0)
        last = [metrics["fid_norm"], metrics["mem_norm"], metrics["trainable_fraction"], reward]
        obs, t = self.advance(p["bits"], last)
        trained = p["trained"]
        info: dict[str, Any] = {
            "dataset": p["dataset"],
            "mask": str(trained),
            "mask_bits": trained.bitstring,
            "mask_units": list(trained.selected),
            "proposed_mask_bits": p["proposed"].bitstring,
            "empty_units": list(p["empty"]),
            "method": p["method"],
            "lr": p["lr_used"],
            "failed": False,
            "step_in_episode": t,
            "imagined": True,
            "surrogate_mean": d.mean,
            "surrogate_std": d.std,
            "surrogate_reason": d.reason,
            "surrogate_new": False,
            "surrogate_real_evaluations": self.model.n_real,
        }
        return obs, reward, t >= horizon, False, info

    def advance(self, bits: np.ndarray, last: Sequence[float]) -> tuple[np.ndarray, int]:
        """Move the env one step without evaluating, the way ``MaskSelectionEnv.step`` does after
        an evaluation (:meth:`MaskSelectionEnv.advance`). Returns the new observation and step count."""
        base = self.env.unwrapped
        obs = base.advance(bits, last)
        return obs, base._t

    # ------------------------------------------------------------------ resume
    def restore(self, rows: Sequence[dict]) -> int:
        """Rebuild the shared model from a run's ``evaluations.csv`` rows (real evaluations, in
        order), as if the run had just made them; returns the distinct real evaluations."""
        from memrl.reporting.records import is_true

        base = self.env.unwrapped
        records = []
        for r in rows:
            dataset, method = str(r["dataset"]), str(r["method"])
            lr = float(r["lr"]) if str(r.get("lr", "")).strip() not in ("", "None") else resolved_lr(method, None)
            x = self.model.features.row(base.descriptor(dataset), str(r["mask_bits"]), method, lr)
            failed = is_true(r.get("failed"))
            reward = float(r["reward"]) if str(r.get("reward", "")).strip() else float("nan")
            metrics = {k: r.get(k) for k in AUX_METRICS}
            records.append((dataset, self.model.key(dataset, str(r["mask_bits"]), method, lr), x, reward, failed, metrics))
        self.model.restore(records)
        return self.model.n_real


def model_for_config(env_cfg, n_units: int, descriptor_dim: int, min_real: int = 16, kappa: float = 1.0, refit_every: int = 4, seed: int = 0) -> DynaModel:  # noqa: ANN001
    """A :class:`DynaModel` for the proposals of envs built from ``env_cfg`` (an
    :class:`~memrl.envs.config.EnvConfig`) over ``n_units`` units with ``descriptor_dim``-entry
    descriptors: their features (method one-hot and learning-rate scale when the action space
    chooses them), the reward range ``[reward.floor, 0]``, and metric models when ``horizon`` > 1."""
    features = SurrogateFeatures(descriptor_dim, n_units, list(env_cfg.methods), lr_scales=len(env_cfg.lr_scales) > 1)
    floor = float(env_cfg.eval_config().reward.floor)
    return DynaModel(features, min_real=min_real, kappa=kappa, refit_every=refit_every, seed=seed, reward_range=(floor, 0.0), aux=env_cfg.horizon > 1)


def model_for(env: gym.Env, min_real: int = 16, kappa: float = 1.0, refit_every: int = 4, seed: int = 0) -> DynaModel:
    """A :class:`DynaModel` for ``env``'s proposals (a :class:`MaskSelectionEnv`, possibly wrapped)."""
    base = env.unwrapped
    return model_for_config(base.config, base.n_units, base.basis.dim, min_real, kappa, refit_every, seed)


__all__ = ["AUX_METRICS", "Decision", "DynaModel", "DynaWrapper", "model_for", "model_for_config", "resolved_lr"]
