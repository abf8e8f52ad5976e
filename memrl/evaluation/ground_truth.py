"""Ground truth: every mask's reward on a dataset, and how far any proposal is from the optimum.

A dataset has ground truth when an exhaustive table (``memrl search --optimizer exhaustive``,
exported as a lookup table) holds every mask the action space can propose, with the reference and
pretrained-model rows. :func:`ground_truth` evaluates every action through
:func:`memrl.evaluation.protocol.evaluate_proposal`, the code path every outer loop uses (so the
reward is recomputed with the caller's ``lam`` / ``mu`` / memorization metric), and returns a
:class:`GroundTruth`: the optimum, and for any reward its regret (``r_max - r``), its normalised
score ``(r - r_min) / (r_max - r_min)`` (1 = the optimum; "within 2%" is a score >= 0.98) and its
rank among the distinct masks (1 = best; ties share the better rank).

Who reads it: TensorBoard's ``regret/*`` tags of ``memrl train`` and ``memrl search`` (the
best-so-far mask's regret per evaluation), and the benchmarks in ``experiments/``. A regret
measured on the seed the optimiser evaluated with flatters it (it picked its best by those very
numbers); the benchmarks report picks on a second seed's table where one exists.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from memrl.errors import MemrlError
from memrl.evaluation.config import EvalConfig
from memrl.evaluation.protocol import MaskEvaluator, evaluate_proposal
from memrl.evaluation.space import action_dims, decode_action, enumerate_actions

#: A normalised score at least this high counts as "within 2%" of the optimum.
WITHIN = 0.98


@dataclass(frozen=True)
class GroundTruth:
    """Every distinct trained mask's reward on one dataset (``rewards``: mask bits -> reward;
    ``failed``: masks whose evaluation failed, scored with the failure reward)."""

    dataset: str
    rewards: dict[str, float]
    failed: tuple[str, ...] = ()
    signature: str = ""
    _sorted: list[float] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ok:
            raise MemrlError(f"ground truth for {self.dataset}: no mask was evaluated successfully")
        object.__setattr__(self, "_sorted", sorted(self.rewards.values()))

    @property
    def ok(self) -> dict[str, float]:
        """The rewards of the masks whose evaluation succeeded."""
        return {k: r for k, r in self.rewards.items() if k not in self.failed}

    @property
    def r_max(self) -> float:
        return max(self.ok.values())

    @property
    def r_min(self) -> float:
        return min(self.ok.values())

    @property
    def optimum(self) -> list[str]:
        """The mask bits with the best reward (several when tied)."""
        top = self.r_max
        return sorted(k for k, r in self.ok.items() if r == top)

    @property
    def n(self) -> int:
        """Distinct trained masks."""
        return len(self.rewards)

    def regret(self, reward: float) -> float:
        """``r_max - reward`` (0 at the optimum; never negative for a table's own rewards)."""
        return self.r_max - float(reward)

    def score(self, reward: float) -> float:
        """``(reward - r_min) / (r_max - r_min)``: 1 at the optimum, 0 at the worst successful mask."""
        span = self.r_max - self.r_min
        return 1.0 if span == 0 else (float(reward) - self.r_min) / span

    def within(self, reward: float, share: float = WITHIN) -> bool:
        return self.score(reward) >= share

    def rank(self, reward: float) -> int:
        """1 + the number of distinct masks with a strictly better reward."""
        return 1 + len(self._sorted) - bisect.bisect_right(self._sorted, float(reward))

    def percentile(self, reward: float) -> float:
        """``rank / n``: 1/n for the optimum, 1.0 for the worst mask (lower is better)."""
        return self.rank(reward) / self.n

    def reward_of(self, bits: str) -> float:
        if bits not in self.rewards:
            raise MemrlError(f"ground truth for {self.dataset} has no mask {bits} (it holds {self.n} masks over {len(next(iter(self.rewards)))} units)")
        return self.rewards[bits]


def ground_truth(
    evaluator: MaskEvaluator,
    data,  # noqa: ANN001 - DatasetSplits
    dataset: str,
    cfg: EvalConfig,
    method: str,
    methods: Sequence[str] = (),
    lr_scales: Sequence[float] = (),
    seed: int = 0,
    failure_reward: float = -25.0,
) -> GroundTruth | None:
    """Every action's reward on ``data`` (the action space of ``methods`` / ``lr_scales``, as the
    env and ``memrl search`` build it), or ``None`` when ``evaluator`` cannot answer them all
    (a lookup table lacking a mask, the reference or the pretrained-model row).

    Meant for lookup evaluators: with a real :class:`~memrl.evaluation.Evaluator` this fine-tunes
    every mask. Masks that train the same units are one entry (keyed by the trained bits; with
    several methods or learning rates, by ``bits|method|lr``).
    """
    units = list(evaluator.units)
    coverage = getattr(evaluator, "coverage", None)  # a lookup evaluator: a quick check first
    if coverage is not None and not lr_scales:
        for m in list(methods) or [method]:
            c = coverage(data, m, cfg, seed=seed)
            if c["masks"] < c["possible"] or not c["reference"] or not c["base"]:
                return None
    rewards: dict[str, float] = {}
    failed: list[str] = []
    sig = []
    multi = len(methods) > 1 or bool(lr_scales)
    for action in enumerate_actions(action_dims(len(units), methods, lr_scales)):
        bits, m, lr = decode_action(action, len(units), method, methods, lr_scales)
        try:
            reward, info = evaluate_proposal(evaluator, data, dataset, bits, m, lr, cfg, seed, failure_reward)
        except MemrlError:
            if coverage is None:
                raise
            return None
        key = f"{info['mask_bits']}|{m}|{lr}" if multi else info["mask_bits"]
        if key in rewards:
            continue
        rewards[key] = float(reward)
        if info["failed"]:
            failed.append(key)
        sig.append([key, float(reward), info.get("fid"), info.get(str(cfg.reward.mem_metric))])
    if len(failed) == len(rewards):
        return None
    signature = hashlib.sha256(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return GroundTruth(dataset, rewards, tuple(failed), signature)


class GroundTruthBook:
    """Ground truth per dataset name, computed on first use and remembered (``None``: none).

    ``compute(dataset) -> GroundTruth | None`` does the work (e.g. :func:`ground_truth` on a
    lookup evaluator with the run's settings). Used as the ``ground_truth`` of
    :class:`memrl.reporting.board.EvaluationBoard`.
    """

    def __init__(self, compute: Callable[[str], GroundTruth | None]) -> None:
        self._compute = compute
        self._known: dict[str, GroundTruth | None] = {}

    def __call__(self, dataset: str) -> GroundTruth | None:
        if dataset not in self._known:
            self._known[dataset] = self._compute(dataset)
        return self._known[dataset]

    @property
    def datasets(self) -> list[str]:
        """The datasets looked up so far that have ground truth."""
        return [d for d, g in self._known.items() if g is not None]

    @classmethod
    def from_tables(
        cls,
        tables,  # noqa: ANN001 - a LookupEvaluator, or a folder / list of lookup tables
        cfg: EvalConfig,
        method: str,
        methods: Sequence[str] = (),
        lr_scales: Sequence[float] = (),
        seed: int = 0,
        failure_reward: float = -25.0,
    ) -> "GroundTruthBook":
        """Ground truth from lookup tables for a run's evaluation settings: a dataset (named as
        ``load_dataset`` takes it) has ground truth when the tables hold every mask of the action
        space with these settings (:func:`ground_truth`)."""
        from memrl.data.loaders import load_dataset
        from memrl.evaluation.lookup import LookupEvaluator

        if not isinstance(tables, LookupEvaluator):
            tables = LookupEvaluator(tables)  # a folder (every *.jsonl under it) or a list of tables
        ev = tables

        def compute(dataset: str) -> GroundTruth | None:
            try:
                data = load_dataset(dataset, ev.image_size, ev.image_channels)
                ev.check_data(data)
            except MemrlError:
                return None
            return ground_truth(ev, data, dataset, cfg, method, methods, lr_scales, seed, failure_reward)

        return cls(compute)

    @classmethod
    def for_env(cls, tables, env) -> "GroundTruthBook":  # noqa: ANN001
        """:meth:`from_tables` with a run's env settings (an :class:`memrl.envs.config.EnvConfig`:
        its evaluation config, method(s), lr scales, evaluation seed and failure reward)."""
        return cls.from_tables(tables, env.eval_config(), env.method, env.methods, env.lr_scales, env.seed, env.resolved_failure_reward())


def best_fixed_masks(truths: Sequence[GroundTruth]) -> list[tuple[str, float]]:
    """Masks (ground-truth keys: the trained bits, or ``bits|method|lr``) by their mean reward
    over several datasets' ground truth, best first, ties by the key; only masks every one of them
    holds. The first is the best *fixed* mask: what one would ship for a new dataset knowing only
    these datasets, the baseline a learned policy has to beat (``memrl search --warm-start-tables``)."""
    if not truths:
        raise MemrlError("the best fixed masks need the ground truth of at least one dataset")
    common = set.intersection(*(set(t.rewards) for t in truths))
    means = {k: sum(t.rewards[k] for t in truths) / len(truths) for k in common}
    return sorted(means.items(), key=lambda kv: (-kv[1], kv[0]))


__all__ = ["WITHIN", "GroundTruth", "GroundTruthBook", "best_fixed_masks", "ground_truth"]
