"""A learned reward model (surrogate): the reward of a proposal, predicted with its uncertainty.

Fitted on the run's real evaluations, it lets :mod:`memrl.agents.dyna` answer proposals that are
unlikely to beat the best one found so far without fine-tuning (an imagined step), and spend real
evaluations on promising or uncertain ones.

Features of one proposal (one row of ``X``, :class:`SurrogateFeatures`):

* the dataset descriptor (:mod:`memrl.envs.descriptor`; the first entries of the observation);
* the bits of the *effective* mask (the units trained: two proposals that train the same
  parameters are one point);
* a one-hot of the PEFT method, when the action space offers more than one;
* the log of the learning-rate scale (the learning rate over the method's default), when it
  offers learning-rate buckets.

The model (:class:`RewardSurrogate`) is scikit-learn's
:class:`~sklearn.gaussian_process.GaussianProcessRegressor` with a constant x ARD Matern-5/2
kernel plus a :class:`~sklearn.gaussian_process.kernels.WhiteKernel`, on standardised inputs and
a normalised target. Why a Gaussian process rather than a bootstrap ensemble of trees or networks:

* its standard deviation is a posterior, not a spread between members: it is small at evaluated
  points (down to the learned noise level) and grows back to the prior's away from them, which is
  exactly the "uncertain" the upper-confidence-bound rule needs; a tree ensemble is as confident
  in a corner nobody evaluated as at its leaves;
* it is at its best with a few dozen to a few hundred points (the cost is cubic in the points,
  a few hundred is milliseconds to a second), the range of a run that spends 30 s per evaluation;
* one length scale per feature (ARD) learns which units and which descriptor entries matter, and
  works on mixed inputs once they are standardised (a binary bit becomes two values, a
  descriptor entry a continuous one); the white noise absorbs the evaluations' own noise (FID on
  a few dozen samples);
* it is deterministic given the data and ``seed`` (the optimiser's restarts are drawn from it),
  so a resumed run refits exactly the model of an uninterrupted one.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from memrl.errors import MemrlError


class SurrogateFeatures:
    """How a proposal ``(descriptor, effective mask bits, method, learning rate)`` becomes a row of ``X``.

    ``methods``: the methods the action space chooses from (a one-hot is added only when there are
    more than one); ``lr_scales``: whether it chooses a learning-rate bucket (then the log of the
    learning rate over the method's default is added; ``lr=None`` is the default, scale 1).
    """

    def __init__(self, descriptor_dim: int, n_units: int, methods: Sequence[str] = (), lr_scales: bool = False) -> None:
        if descriptor_dim < 0 or n_units < 1:
            raise MemrlError(f"surrogate features need descriptor_dim >= 0 and n_units >= 1, got {descriptor_dim} and {n_units}")
        self.descriptor_dim = int(descriptor_dim)
        self.n_units = int(n_units)
        self.methods = tuple(methods) if len(methods) > 1 else ()
        self.lr_scales = bool(lr_scales)

    @property
    def dim(self) -> int:
        return self.descriptor_dim + self.n_units + len(self.methods) + int(self.lr_scales)

    def row(self, descriptor: Sequence[float], bits: Sequence[int] | str, method: str, lr: float | None = None) -> np.ndarray:
        """One proposal's features (``bits`` as 0/1 values or a bitstring such as ``"0101000"``)."""
        d = np.asarray(descriptor, dtype=np.float64).reshape(-1)
        if d.shape[0] != self.descriptor_dim:
            raise MemrlError(f"surrogate features: the descriptor has {d.shape[0]} entries, expected {self.descriptor_dim}")
        b = np.asarray([int(c) for c in bits] if isinstance(bits, str) else bits, dtype=np.float64).reshape(-1)
        if b.shape[0] != self.n_units:
            raise MemrlError(f"surrogate features: the mask has {b.shape[0]} bits, expected {self.n_units}")
        parts = [d, (b > 0).astype(np.float64)]
        if self.methods:
            if method not in self.methods:
                raise MemrlError(f"surrogate features: method {method!r} is not one of {list(self.methods)}")
            parts.append(np.asarray([float(m == method) for m in self.methods]))
        if self.lr_scales:
            parts.append(np.asarray([log_lr_scale(method, lr)]))
        return np.concatenate(parts)

    def matrix(self, proposals: Sequence[tuple]) -> np.ndarray:
        """Rows of :meth:`row` for ``(descriptor, bits, method, lr)`` tuples, stacked."""
        if not proposals:
            return np.zeros((0, self.dim))
        return np.stack([self.row(*p) for p in proposals])


def log_lr_scale(method: str, lr: float | None) -> float:
    """``log(lr / method's default learning rate)``; 0 for ``None`` (the default)."""
    if lr is None:
        return 0.0
    from memrl.training.finetune import FinetuneConfig

    return math.log(float(lr) / FinetuneConfig(method=method).resolved_lr())


#: Targets the reward model can be fitted on (see :func:`standardise_by_group`).
TARGETS = ("raw", "per_dataset")


def standardise_by_group(y: Sequence[float], groups: Sequence[object]) -> np.ndarray:
    """``y`` standardised within each group: ``(y - group mean) / group std``.

    Why: datasets of one family differ in reward *scale* by a factor of ten or more (one member's
    masks span 15 reward points, another's 1.5), so a model fitted on raw rewards across datasets
    spends its fit on the wide ones and reads a narrow member's differences between masks as
    noise. Standardised per dataset, every member says the same thing, *which masks are better
    than its average*, which is all a pick needs (a mask's rank within a dataset is unchanged).
    A group of one value, or of equal values, becomes 0 (its mean): no scale to divide by.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    keys = list(groups)
    if len(keys) != y.shape[0]:
        raise MemrlError(f"standardise_by_group: {y.shape[0]} values but {len(keys)} group labels")
    out = np.zeros_like(y)
    index: dict[object, list[int]] = {}
    for i, k in enumerate(keys):
        index.setdefault(k, []).append(i)
    for rows in index.values():
        v = y[rows]
        sd = float(v.std())
        out[rows] = (v - v.mean()) / sd if sd > 1e-12 else 0.0
    return out


class RewardSurrogate:
    """Gaussian-process regression of the reward on :class:`SurrogateFeatures` rows (see the module
    docstring for why): :meth:`fit` then :meth:`predict` ``-> (mean, std)``.

    ``seed`` seeds the hyperparameter optimiser's restarts (``restarts`` of them after the first
    run from the initial length scales), so two fits on the same data give the same model.
    """

    def __init__(self, seed: int = 0, restarts: int = 1) -> None:
        self.seed = int(seed)
        self.restarts = int(restarts)
        self._gp = None
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None
        self.n_train = 0

    @property
    def fitted(self) -> bool:
        return self._gp is not None

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return (X - self._mu) / self._sd

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RewardSurrogate":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 1:
            raise MemrlError(f"surrogate fit needs X of shape (n, d) and y of shape (n,) with n >= 1, got {X.shape} and {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise MemrlError("surrogate fit: X and y must be finite (leave failed evaluations out)")
        self._mu = X.mean(0)
        sd = X.std(0)
        self._sd = np.where(sd > 1e-12, sd, 1.0)  # a constant column keeps its unit scale
        d = X.shape[1]
        kernel = ConstantKernel(1.0, (1e-3, 1e2)) * Matern(length_scale=np.full(d, 2.0), length_scale_bounds=(5e-2, 1e3), nu=2.5) + WhiteKernel(1e-2, (1e-6, 1.0))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=self.restarts if X.shape[0] > 2 else 0, random_state=self.seed)
        with warnings.catch_warnings():  # a length scale at its bound is expected (an irrelevant unit)
            warnings.simplefilter("ignore")
            gp.fit(self._scaled(X), y)
        self._gp = gp
        self.n_train = int(X.shape[0])
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of the reward at each row of ``X`` (std includes the learned noise)."""
        if self._gp is None:
            raise MemrlError("the surrogate is not fitted yet: call fit(X, y) with real evaluations first")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.shape[1] != self._mu.shape[0]:
            raise MemrlError(f"surrogate predict: X has {X.shape[1]} features, the model was fitted on {self._mu.shape[0]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean, std = self._gp.predict(self._scaled(X), return_std=True)
        return np.asarray(mean, dtype=np.float64), np.maximum(np.asarray(std, dtype=np.float64), 0.0)

    @property
    def kernel(self) -> str:
        """The fitted kernel (learned hyperparameters), for reports."""
        return str(self._gp.kernel_) if self._gp is not None else "(not fitted)"


__all__ = ["TARGETS", "RewardSurrogate", "SurrogateFeatures", "log_lr_scale", "standardise_by_group"]
