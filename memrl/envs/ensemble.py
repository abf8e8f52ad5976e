"""Several trained policies (agent seeds of one ``memrl train`` config) proposing as one.

Why: agent seeds of the same config disagree. On the committed model's four test members the
three seeds' zero-shot masks rank 6/69/3, 13/60/70, 126/3/7 and 97/54/76 of 128: each run's map
from descriptor to mask is mostly its own exploration history, and one seed can pick a mask whose
fine-tune collapses. Averaging their action distributions keeps what they agree on and outvotes
one seed's outlier, at the cost of training each seed.

A :class:`PolicyEnsemble` has the interface of :class:`memrl.envs.policy.TrainedPolicy` that
``memrl replay`` and ``memrl search --warm-start`` use (``env``, ``check_fits``, ``describe``,
``deterministic``, ``ranked``), so either takes one policy or several (:func:`load_policy`). Two
rules combine the members' distributions at the zero-shot observation:

* ``mixture`` (default): the average of the members' probabilities, ``p(a) = mean_i p_i(a)`` (as
  deep ensembles average predictive distributions). A mask one member is sure of and the others
  find plausible wins; a mask only one member likes needs that member to be very sure.
* ``product``: the normalised product ``p(a) ~ prod_i p_i(a)`` (a product of experts; for
  independent action dimensions it is again independent per dimension, its logits the sum of the
  members'). A mask any member finds implausible loses.

Each member describes the dataset in its own descriptor basis, so :meth:`PolicyEnsemble.describe`
returns one descriptor per member and :meth:`~PolicyEnsemble.ranked` takes that list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memrl.envs.config import EnvConfig
from memrl.envs.policy import BEAM_LIMIT, BEAM_START, ENUMERATE_LIMIT, Proposal, TrainedPolicy, distinct, joint_beam, joint_by_probability
from memrl.errors import MemrlError
from memrl.evaluation.space import n_actions

#: How an ensemble combines its members' action distributions (see the module docstring).
ENSEMBLE_RULES = ("mixture", "product")
#: Env fields the members must share: they decide what an action means and how it is evaluated.
#: A large space's first beam is this many actions per proposal asked for (then it grows fourfold).
WIDTH_PER_PROPOSAL = 4
SHARED_ENV_FIELDS = ("pretrained", "method", "methods", "lr_scales", "preset", "eval_overrides", "reward", "seed", "granularity", "resolution", "feature_net", "failure_reward")


class PolicyEnsemble:
    """Policies of one ``memrl train`` config (e.g. its agent seeds) whose distributions are combined by ``rule``."""

    def __init__(self, members: Sequence[TrainedPolicy], rule: str = "mixture") -> None:
        if rule not in ENSEMBLE_RULES:
            raise MemrlError(f"unknown ensemble rule {rule!r}; valid: {', '.join(ENSEMBLE_RULES)}")
        members = list(members)
        if len(members) < 2:
            raise MemrlError(f"an ensemble needs two or more policies, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            differ = [f for f in SHARED_ENV_FIELDS if getattr(m.env, f) != getattr(first.env, f)]
            if m.n_units != first.n_units:
                differ.insert(0, f"unit count ({m.n_units} vs {first.n_units})")
            if differ:
                raise MemrlError(
                    f"policies {first.path} and {m.path} cannot be one ensemble: their runs differ in {', '.join(differ)} "
                    "(ensemble runs of one memrl train config, e.g. its train.seed values)"
                )
        self.members = members
        self.rule = rule

    @classmethod
    def load(cls, policies: Sequence[str | Path], rule: str = "mixture") -> "PolicyEnsemble":
        """Each ``RUN/policy.zip`` with its run folder (:meth:`TrainedPolicy.load`), checked to be one config."""
        return cls([TrainedPolicy.load(p) for p in policies], rule)

    # ------------------------------------------------------------------ what replay and search read
    @property
    def env(self) -> EnvConfig:
        """The members' shared env settings (the first member's section)."""
        return self.members[0].env

    @property
    def path(self) -> Path:
        """The first member's policy file (``paths`` lists them all)."""
        return self.members[0].path

    @property
    def paths(self) -> list[Path]:
        return [m.path for m in self.members]

    @property
    def n_units(self) -> int:
        return self.members[0].n_units

    def check_fits(self, evaluator: Any) -> None:
        for m in self.members:
            m.check_fits(evaluator)

    def describe(self, evaluator: Any, data: Any) -> list[np.ndarray]:
        """One descriptor per member, each in that member's basis."""
        return [m.describe(evaluator, data) for m in self.members]

    def to_dict(self) -> dict:
        return {"policies": [str(p) for p in self.paths], "rule": self.rule}

    # ------------------------------------------------------------------ proposals
    def _tables(self, descriptors: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        if len(descriptors) != len(self.members):
            raise MemrlError(f"the ensemble has {len(self.members)} policies, got {len(descriptors)} descriptors (one per policy: PolicyEnsemble.describe)")
        return [m.log_prob_tables(m.observation(d)) for m, d in zip(self.members, descriptors)]

    def deterministic(self, evaluator: Any, descriptors: Sequence[np.ndarray]) -> Proposal:
        """The ensemble's own proposal: the mode of the combined distribution."""
        return self.ranked(evaluator, descriptors, k=1)[0]

    def ranked(self, evaluator: Any, descriptors: Sequence[np.ndarray], k: int | None = None) -> list[Proposal]:
        """The ensemble's proposals, most probable first under the combined distribution, distinct
        in what they train (as :meth:`TrainedPolicy.ranked`; the first is the mode, marked
        ``deterministic``). ``log_prob`` is the combined log-probability of the proposal's action.

        Spaces of at most :data:`~memrl.envs.policy.ENUMERATE_LIMIT` actions are ranked exactly by
        enumeration. Larger ones: ``product`` by the exact beam search over its per-dimension
        distribution; ``mixture`` from the union of each member's ``W`` most probable actions, a
        list that is exact while its scores stay above the best an action outside every member's
        top ``W`` can reach (the mean of the members' ``W``-th probabilities); ``W`` grows fourfold
        until ``k`` proposals are certain, up to :data:`~memrl.envs.policy.BEAM_LIMIT`.
        """
        self.check_fits(evaluator)
        if k is not None and k < 1:
            raise MemrlError(f"the number of proposals must be >= 1, got {k}")
        tables = self._tables(descriptors)
        dims = [len(t) for t in tables[0]]
        total = n_actions(dims)
        lead = self.members[0]

        def propose(action: Sequence[int], logp: float, deterministic: bool = False) -> Proposal:
            return lead._proposal(evaluator, action, logp, deterministic=deterministic)

        if self.rule == "product":
            summed = [np.sum([t[j] for t in tables], axis=0) for j in range(len(dims))]
            combined = [s - np.logaddexp.reduce(s) for s in summed]  # normalised per dimension
            mode = [int(np.argmax(t)) for t in combined]
            first = propose(mode, float(sum(t[a] for t, a in zip(combined, mode))), deterministic=True)
            width = total if total <= ENUMERATE_LIMIT else min(BEAM_LIMIT, max(BEAM_START, WIDTH_PER_PROPOSAL * (k or BEAM_LIMIT)))
            while True:
                candidates = joint_by_probability(combined) if total <= ENUMERATE_LIMIT else joint_beam(combined, width)
                out = distinct(first, candidates, propose, k)
                if total <= ENUMERATE_LIMIT or (k is not None and len(out) >= k) or width >= BEAM_LIMIT:
                    return out
                width = min(BEAM_LIMIT, 4 * width)

        # mixture
        log_m = np.log(len(tables))
        if total <= ENUMERATE_LIMIT:
            scored = _mixture_all(tables, log_m)
            action, logp = next(iter(scored))
            return distinct(propose(action, logp, deterministic=True), scored[1:], propose, k)
        width = min(BEAM_LIMIT, max(BEAM_START, WIDTH_PER_PROPOSAL * (k or BEAM_LIMIT)))
        while True:
            scored, bound = _mixture_of_beams(tables, width, log_m)
            action, logp = scored[0]
            out = distinct(propose(action, logp, deterministic=True), scored[1:], propose, k)
            sure = [p for p in out if p.log_prob >= bound]
            if width >= BEAM_LIMIT:
                return out
            if k is not None and len(sure) >= k:
                return sure[:k]
            width = min(BEAM_LIMIT, 4 * width)


def _joint_log_probs(tables: list[np.ndarray]) -> np.ndarray:
    """Every joint action's log-probability, flat in C order (an action's index as in ``np.unravel_index``)."""
    joint = np.zeros(())
    for t in tables:
        joint = np.add.outer(joint, t)
    return joint.reshape(-1)


def _mixture_all(member_tables: list[list[np.ndarray]], log_m: float) -> list[tuple[list[int], float]]:
    """Every joint action with its mixture log-probability, most probable first (ties: action order)."""
    dims = [len(t) for t in member_tables[0]]
    mix = np.logaddexp.reduce(np.stack([_joint_log_probs(t) for t in member_tables]), axis=0) - log_m
    return [([int(a) for a in np.unravel_index(int(i), dims)], float(mix[i])) for i in np.argsort(-mix, kind="stable")]


def _mixture_of_beams(member_tables: list[list[np.ndarray]], width: int, log_m: float) -> tuple[list[tuple[list[int], float]], float]:
    """The union of each member's ``width`` most probable actions scored by the mixture, most
    probable first, and the bound no action outside the union reaches."""
    union: dict[tuple[int, ...], None] = {}
    lasts = []
    for tables in member_tables:
        top = list(joint_beam(tables, width))
        lasts.append(top[-1][1] if len(top) >= width else -np.inf)
        for a, _ in top:
            union.setdefault(tuple(a), None)
    actions = list(union)
    idx = np.array(actions, np.int64)
    lp = np.stack([sum(t[j][idx[:, j]] for j in range(idx.shape[1])) for t in member_tables])
    mix = np.logaddexp.reduce(lp, axis=0) - log_m
    order = np.argsort(-mix, kind="stable")
    bound = float(np.logaddexp.reduce(np.array(lasts)) - log_m)
    return [(list(actions[i]), float(mix[i])) for i in order], bound


def load_policy(policies: str | Path | Sequence[str | Path], rule: str = "mixture") -> TrainedPolicy | PolicyEnsemble:
    """One policy file as a :class:`TrainedPolicy`; two or more as a :class:`PolicyEnsemble` combined by ``rule``."""
    if isinstance(policies, (str, Path)):
        policies = [policies]
    policies = list(policies)
    if not policies:
        raise MemrlError("no policy given: name RUN/policy.zip of a memrl train run (or several, for an ensemble)")
    if rule not in ENSEMBLE_RULES:
        raise MemrlError(f"unknown ensemble rule {rule!r}; valid: {', '.join(ENSEMBLE_RULES)}")
    if len(policies) == 1:
        return TrainedPolicy.load(policies[0])
    return PolicyEnsemble.load(policies, rule)


__all__ = ["ENSEMBLE_RULES", "PolicyEnsemble", "load_policy"]
