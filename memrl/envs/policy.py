"""A trained policy as the environment sees it: ``RUN/policy.zip`` with its env settings and descriptor basis.

``memrl train`` writes the PPO policy (``policy.zip``), the effective config (``config.yaml``) and the
descriptor basis (``descriptor.json``) into one run folder; :class:`TrainedPolicy` loads the three
together, because the policy means nothing without them: the basis turns a dataset into the
observation the policy was trained on, and the env section says how its actions decode (the
method(s) and learning-rate scales of :mod:`memrl.evaluation.space`).

It lives here, in :mod:`memrl.envs`, and reads only the ``env`` section of ``config.yaml`` (as
:class:`~memrl.envs.config.EnvConfig`), so that :mod:`memrl.search` (``--warm-start``) and
:mod:`memrl.agents` (``memrl replay``) can both use it without either importing the other.

What it offers for a dataset it may never have seen:

* :meth:`TrainedPolicy.check_fits`: the policy was trained on the evaluator's unit count (and
  granularity), or one clear error;
* :meth:`TrainedPolicy.describe` / :meth:`TrainedPolicy.observation`: the zero-shot observation
  (descriptor, an empty mask and no metrics yet: what the env shows at ``reset``);
* :meth:`TrainedPolicy.ranked`: the policy's proposals in descending probability under its action
  distribution at that observation, deduplicated by what they train (see the method), the
  deterministic proposal (``model.predict(obs, deterministic=True)``, the zero-shot one) first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from memrl.envs.config import EnvConfig
from memrl.envs.descriptor import DescriptorBasis
from memrl.envs.mask_selection import N_METRICS, action_dims, decode_action, observation
from memrl.errors import MemrlError
from memrl.evaluation.space import n_actions

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from memrl.peft_masking import Mask

#: Spaces of at most this many joint actions are ranked exactly by enumerating every action.
ENUMERATE_LIMIT = 2**16
#: Larger spaces are ranked by a beam search over the dimensions; its width never exceeds this.
BEAM_LIMIT = 2**16
#: The beam's first width (it grows fourfold until enough distinct proposals are found).
BEAM_START = 64


@dataclass(frozen=True)
class Proposal:
    """One proposal of the policy for a dataset.

    ``action`` is the policy's encoded action (:mod:`memrl.evaluation.space`); ``bits`` the mask it
    proposes; ``mask`` what it trains (``evaluator.effective_mask``: the proposal without the units
    where ``method`` trains nothing, listed in ``empty``); ``lr`` ``None`` means the method's
    default; ``log_prob`` the natural log of the action's probability under the policy;
    ``deterministic`` marks the policy's own choice (``predict(..., deterministic=True)``).
    """

    action: tuple[int, ...]
    bits: tuple[int, ...]
    method: str
    lr: float | None
    mask: Mask  # the effective mask
    empty: tuple[str, ...]
    log_prob: float
    deterministic: bool = False

    @property
    def key(self) -> tuple[str, str, float | None]:
        """What the proposal trains: two proposals with the same key are one evaluation."""
        return (self.mask.bitstring, self.method, self.lr)

    def to_dict(self) -> dict:
        return {
            "mask": str(self.mask),
            "mask_bits": self.mask.bitstring,
            "mask_units": list(self.mask.selected),
            "proposed_mask_bits": "".join(str(int(b)) for b in self.bits),
            "empty_units": list(self.empty),
            "method": self.method,
            "lr": self.lr,
            "log_prob": self.log_prob,
            "deterministic": self.deterministic,
        }


def _evaluator_name(evaluator: Any) -> str:
    """How messages name an evaluator: its model folder, its lookup tables, or its type."""
    if getattr(evaluator, "pretrained_dir", None) is not None:
        return f"the model {evaluator.pretrained_dir}"
    tables = getattr(evaluator, "tables", None)
    if tables:
        return f"the lookup tables {', '.join(str(t) for t in tables)}"
    return f"the evaluator ({type(evaluator).__name__})"


class TrainedPolicy:
    """A PPO policy of ``memrl train`` with its run's env settings and descriptor basis (see the module docstring)."""

    def __init__(self, model: Any, env: EnvConfig, basis: DescriptorBasis, path: str | Path) -> None:
        self.model = model
        self.env = env
        self.basis = basis
        self.path = Path(path)

    @classmethod
    def load(cls, policy: str | Path) -> "TrainedPolicy":
        """``RUN/policy.zip`` (loaded on the CPU) with ``RUN/config.yaml``'s env section and ``RUN/descriptor.json``."""
        from stable_baselines3 import PPO

        from memrl.utils.config import read_yaml_file

        p = Path(policy)
        if not p.is_file():
            raise MemrlError(f"policy file {p} not found (memrl train writes RUN/policy.zip)")
        run = p.parent
        config = run / "config.yaml"
        if not config.is_file():
            raise MemrlError(f"{run} has no config.yaml: keep policy.zip in its run folder (with config.yaml and descriptor.json)")
        try:
            model = PPO.load(p, device="cpu")
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign zip
            raise MemrlError(f"cannot load policy {p}: {type(exc).__name__}: {exc}") from None
        doc = read_yaml_file(config)
        if not isinstance(doc, dict) or not isinstance(doc.get("env"), dict):
            raise MemrlError(f"{config} has no env section: not the config.yaml of a memrl train run")
        env = EnvConfig.from_dict(doc["env"], source=f"{config} [env]")
        return cls(model, env, DescriptorBasis.load(run / "descriptor.json"), p)

    # ------------------------------------------------------------------ shapes
    @property
    def n_units(self) -> int:
        """The unit count the policy was trained on (read from its observation size)."""
        return int(self.model.observation_space.shape[0]) - self.basis.dim - N_METRICS

    def check_fits(self, evaluator: Any) -> None:
        """Raise :class:`MemrlError` unless the policy's observation and action match ``evaluator``'s
        units (and, when the evaluator says, the granularity the policy's units were cut at)."""
        n = len(evaluator.units)
        want_obs = self.basis.dim + n + N_METRICS
        got_obs = int(self.model.observation_space.shape[0])
        want_act = len(action_dims(n, self.env))
        got_act = int(np.prod(self.model.action_space.shape))
        if got_obs != want_obs or got_act != want_act:
            raise MemrlError(
                f"policy {self.path} was trained for {got_act - (want_act - n)} units (observation {got_obs}), "
                f"{_evaluator_name(evaluator)} has {n} units (observation {want_obs}); use a policy trained on this model's units"
            )
        granularity = getattr(evaluator, "granularity", None)
        if granularity is not None and granularity != self.env.granularity:
            raise MemrlError(
                f"policy {self.path} was trained on {self.env.granularity!r} units, {_evaluator_name(evaluator)} cuts the UNet "
                f"into {granularity!r} units (the same count, other units); use env.granularity={self.env.granularity}"
            )

    # ------------------------------------------------------------------ observation
    def describe(self, evaluator: Any, data: Any) -> np.ndarray:
        """The dataset's descriptor in the policy's basis, through the evaluator's feature network."""
        require = getattr(evaluator, "require_feature_net", None)
        net = require() if callable(require) else getattr(evaluator, "feature_net", None)
        if net is None:
            raise MemrlError(f"cannot describe dataset {getattr(data, 'name', data)!r} for policy {self.path}: {type(evaluator).__name__} has no feature network")
        return self.basis.describe(net, data)

    def observation(self, descriptor: np.ndarray) -> np.ndarray:
        """The zero-shot observation: the descriptor, an empty mask and no metrics (the env's ``reset``)."""
        n = self.n_units
        return observation(np.asarray(descriptor, np.float32), np.zeros(n, np.float32), np.zeros(N_METRICS, np.float32))

    def log_prob_tables(self, obs: np.ndarray) -> list[np.ndarray]:
        """Per action dimension, the log-probability of each of its values under the policy's
        distribution at ``obs`` (the dimensions are independent: a joint action's log-probability is
        the sum of its entries' table values). MultiBinary: a Bernoulli per bit; MultiDiscrete: a
        Categorical per dimension (bits, then method and learning-rate bucket)."""
        import torch
        from stable_baselines3.common.distributions import BernoulliDistribution, CategoricalDistribution, MultiCategoricalDistribution

        obs_t, _ = self.model.policy.obs_to_tensor(np.asarray(obs, np.float32))
        with torch.no_grad():
            dist = self.model.policy.get_distribution(obs_t)
            if isinstance(dist, BernoulliDistribution):
                logits = dist.distribution.logits[0].double()
                tables = [np.array([float(a), float(b)]) for a, b in zip(torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits))]
            elif isinstance(dist, MultiCategoricalDistribution):
                tables = [torch.log_softmax(c.logits[0].double(), -1).numpy().copy() for c in dist.distribution]
            elif isinstance(dist, CategoricalDistribution):
                tables = [torch.log_softmax(dist.distribution.logits[0].double(), -1).numpy().copy()]
            else:
                raise MemrlError(f"policy {self.path}: cannot rank the actions of a {type(dist).__name__} (expected MultiBinary or MultiDiscrete actions)")
        dims = action_dims(self.n_units, self.env)
        if [len(t) for t in tables] != dims:
            raise MemrlError(f"policy {self.path}: its action distribution has dimensions {[len(t) for t in tables]}, its env config says {dims}")
        return tables

    # ------------------------------------------------------------------ proposals
    def _proposal(self, evaluator: Any, action: Sequence[int], log_prob: float, deterministic: bool = False) -> Proposal:
        from memrl.peft_masking import Mask

        n = len(evaluator.units)
        bits, method, lr = decode_action(np.asarray(action), n, self.env)
        proposed = Mask.from_bits([int(b) for b in bits], evaluator.units)
        mask, empty = evaluator.effective_mask(method, proposed)
        return Proposal(tuple(int(a) for a in action), tuple(int(b) for b in bits), method, lr, mask, tuple(empty), float(log_prob), deterministic)

    def deterministic(self, evaluator: Any, descriptor: np.ndarray) -> Proposal:
        """The policy's own (zero-shot) proposal: ``predict(obs, deterministic=True)`` at the zero-shot observation."""
        obs = self.observation(descriptor)
        action, _ = self.model.predict(obs, deterministic=True)
        action = [int(a) for a in np.asarray(action).reshape(-1)]
        tables = self.log_prob_tables(obs)
        return self._proposal(evaluator, action, sum(float(t[a]) for t, a in zip(tables, action)), deterministic=True)

    def ranked(self, evaluator: Any, descriptor: np.ndarray, k: int | None = None) -> list[Proposal]:
        """The policy's proposals for the dataset described by ``descriptor``, most probable first.

        Proposals are distinct in what they train: actions are decoded and reduced to their
        effective mask (``evaluator.effective_mask``), and two actions with the same effective
        mask, method and learning rate are one proposal, represented by its most probable action
        (``log_prob`` is that action's, not the sum over the group: so the deterministic proposal,
        the mode of the distribution, is also the most probable proposal and comes first with the
        log-probabilities descending after it); ``k`` caps the list (``None``: all).

        A space of at most :data:`ENUMERATE_LIMIT` joint actions is ranked exactly by enumerating
        every action. A larger one by a beam search over the dimensions: since they are
        independent, a beam of width ``W`` holds exactly the ``W`` most probable joint actions; the
        width starts at ``max(BEAM_START, 4 k)`` and grows fourfold, up to :data:`BEAM_LIMIT`, until
        ``k`` distinct proposals are found (so with ``k=None`` the list is the distinct proposals
        among the :data:`BEAM_LIMIT` most probable actions).
        """
        self.check_fits(evaluator)
        if k is not None and k < 1:
            raise MemrlError(f"the number of proposals must be >= 1, got {k}")
        first = self.deterministic(evaluator, descriptor)
        tables = self.log_prob_tables(self.observation(descriptor))
        total = n_actions([len(t) for t in tables])
        width = total if total <= ENUMERATE_LIMIT else min(BEAM_LIMIT, max(BEAM_START, 4 * (k or BEAM_LIMIT)))
        while True:
            candidates = joint_by_probability(tables) if total <= ENUMERATE_LIMIT else joint_beam(tables, width)
            out = distinct(first, candidates, lambda a, lp: self._proposal(evaluator, a, lp), k)
            if total <= ENUMERATE_LIMIT or (k is not None and len(out) >= k) or width >= BEAM_LIMIT:
                return out
            width = min(BEAM_LIMIT, 4 * width)


def distinct(first: Proposal, candidates: Iterable[tuple[list[int], float]], propose: Callable[[list[int], float], Proposal], k: int | None) -> list[Proposal]:
    """``first``, then the proposals of ``candidates`` (actions with their log-probabilities, most
    probable first) whose key is new, up to ``k`` in all (``None``: every one): each group of
    actions that train the same thing is represented by its most probable action."""
    out, seen = [first], {first.key}
    for action, logp in candidates:
        if k is not None and len(out) >= k:
            break
        p = propose(action, logp)
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def joint_by_probability(tables: list[np.ndarray]) -> Iterator[tuple[list[int], float]]:
    """Every joint action with its log-probability, most probable first (ties: in action order)."""
    dims = [len(t) for t in tables]
    joint = np.zeros(())
    for t in tables:
        joint = np.add.outer(joint, t)
    flat = joint.reshape(-1)  # C order: the index of an action is its place in memrl.evaluation.space.action_at
    for idx in np.argsort(-flat, kind="stable"):
        yield [int(a) for a in np.unravel_index(int(idx), dims)], float(flat[idx])


def joint_beam(tables: list[np.ndarray], width: int) -> Iterator[tuple[list[int], float]]:
    """The ``width`` most probable joint actions, most probable first: a beam over the dimensions
    (exact, the dimensions being independent: a prefix of a top-``width`` action is among the
    top-``width`` prefixes, or ``width`` prefixes with its suffix would beat it)."""
    actions = np.zeros((1, 0), np.int64)
    scores = np.zeros(1)
    for t in tables:
        v = len(t)
        cand = (scores[:, None] + t[None, :]).reshape(-1)
        grown = np.concatenate([np.repeat(actions, v, axis=0), np.tile(np.arange(v), len(actions))[:, None]], axis=1)
        keep = np.argsort(-cand, kind="stable")[:width]
        actions, scores = grown[keep], cand[keep]
    for a, s in zip(actions, scores):
        yield [int(x) for x in a], float(s)


__all__ = ["BEAM_LIMIT", "BEAM_START", "ENUMERATE_LIMIT", "Proposal", "TrainedPolicy", "distinct", "joint_beam", "joint_by_probability"]
