"""``memrl search --optimizer model [--prior RUN]``: Bayesian optimisation with memrl's reward model,
warm from the evaluations a ``memrl train`` run made on other datasets.

Before every trial the reward model (:class:`memrl.evaluation.surrogate.RewardSurrogate`, a
Gaussian process on dataset descriptor + effective mask bits) is fitted on

* the **prior**: every successful real evaluation in ``RUN/evaluations.csv`` of an (amortised)
  ``memrl train`` run, each with its dataset's descriptor in the run's basis
  (``RUN/descriptor.json``), and
* this study's finished trials, with this dataset's descriptor,

and the trial is the candidate with the highest upper confidence bound ``mean + beta x std``
among the masks this study has not asked yet; the first trial with a prior (the zero-shot pick)
takes the highest mean (``first_beta`` 0): with a budget of one it is the answer, so it should
be the model's best guess, not its most hopeful one. The prior is what training the agent bought: on a
new dataset the model starts from what the descriptor says about similar datasets, so its
first proposal is already an informed one (zero evaluations), and each evaluation of the new
dataset corrects it where the descriptor was wrong. Without ``--prior`` it is plain GP Bayesian
optimisation on the mask bits (two random trials first): the control that tells the prior's
value apart from the model's.

The sampler keeps no state of its own (everything is refitted from the study and the prior, the
first random trials are drawn from ``seed`` and the trial number), so ``--resume`` continues the
same sequence without a pickled sampler. The candidates are every action of the space when it
holds at most :data:`MAX_CANDIDATES` (2^16: SD-1.5's 16 blocks), else that many drawn at random
for each trial.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from memrl.errors import MemrlError
from memrl.evaluation.surrogate import TARGETS, RewardSurrogate, SurrogateFeatures, standardise_by_group

#: Above this many actions the candidates of a trial are a random draw of this many.
MAX_CANDIDATES = 2**16
#: Random trials before the model is used, without a prior (a GP needs a few points).
STARTUP_TRIALS = 2


@dataclass
class Prior:
    """The other datasets' evaluations, as model inputs: ``X`` (rows of :class:`SurrogateFeatures`) and rewards ``y``."""

    source: str
    features: SurrogateFeatures
    X: np.ndarray
    y: np.ndarray
    datasets: tuple[str, ...]
    #: Descriptor of the searched dataset in the prior's basis.
    context: np.ndarray
    #: The dataset of each row of ``X`` (the groups of ``target: per_dataset``).
    groups: tuple[str, ...] = ()


def _run_rows(run: Path, methods: Sequence[str]) -> list[tuple[str, str, str, float | None, float]]:
    """A run's successful evaluations as ``(dataset, mask_bits, method, lr, reward)``."""
    rows = []
    with open(run / "evaluations.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r.get("failed") == "True" or not r.get("reward") or not r.get("mask_bits"):
                continue
            lr = float(r["lr"]) if r.get("lr") not in (None, "", "None") else None
            rows.append((r["dataset"], r["mask_bits"], r.get("method") or methods[0], lr, float(r["reward"])))
    return rows


def load_prior(run: str | Path | Sequence[str | Path], evaluator: Any, data: Any, dataset: str, units: Sequence[str], methods: Sequence[str], lr_scales: bool) -> Prior:
    """The prior of ``--prior RUN``: RUN's successful evaluations and descriptor basis, and the
    descriptor of ``data`` (the dataset ``dataset`` names) in that basis (through the evaluator's feature network). Refused when RUN is not a
    train run, evaluated other units, or already evaluated the searched dataset (its rewards would
    be in the prior: not a new dataset).

    Several runs (agent seeds of one config, ``--prior A B C``) pool their evaluations: each
    (dataset, mask, method, lr) once, its reward the mean over the runs that evaluated it (with a
    shared cache they are the same evaluation). They must share one descriptor basis (the seeds
    of one config do: it is fitted on the training members' images, not on the agent's draws)."""
    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis

    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    if not runs:
        raise MemrlError("--prior: no run given")
    basis = None
    pooled: dict[tuple, list[float]] = {}
    for r_ in runs:
        csv_path, basis_path = r_ / "evaluations.csv", r_ / "descriptor.json"
        if not csv_path.is_file() or not basis_path.is_file():
            raise MemrlError(f"--prior {r_}: not a memrl train run folder (needs evaluations.csv and descriptor.json)")
        b_ = DescriptorBasis.load(basis_path)
        if basis is None:
            basis = b_
        elif not all(np.array_equal(getattr(basis, f), getattr(b_, f)) for f in ("mean", "components", "scale")):
            raise MemrlError(f"--prior {runs[0]} and {r_} describe datasets in different bases (their descriptor.json differ): pool runs of one memrl train config")
        for d, b, m, lr, reward in _run_rows(r_, methods):
            pooled.setdefault((d, b, m, lr), []).append(reward)
    run = runs[0] if len(runs) == 1 else ", ".join(str(r_) for r_ in runs)
    rows = [(*key, float(np.mean(v))) for key, v in pooled.items()]
    if not rows:
        raise MemrlError(f"--prior {run}: evaluations.csv holds no successful evaluation yet")
    bad = sorted({b for _, b, _, _, _ in rows if len(b) != len(units)})
    if bad:
        raise MemrlError(f"--prior {run}: its masks have {len(bad[0])} bits, this search has {len(units)} units ({', '.join(units)}); use a run on the same model and granularity")
    name = dataset  # as the run's evaluations.csv names datasets: the spec given (inverted, family:80, a folder)
    if name in {d for d, *_ in rows}:
        raise MemrlError(f"--prior {run} evaluated {name} itself: a prior is other datasets' evaluations (search a dataset the run did not train on)")
    require = getattr(evaluator, "require_feature_net", None)
    net = require() if callable(require) else getattr(evaluator, "feature_net", None)
    if net is None:
        raise MemrlError(f"--prior {run}: {type(evaluator).__name__} has no feature network to describe {name}")
    descriptors = {d: basis.describe(net, load_dataset(d, evaluator.image_size, evaluator.image_channels)) for d in sorted({d for d, *_ in rows})}
    features = SurrogateFeatures(basis.dim, len(units), methods, lr_scales)
    X = features.matrix([(descriptors[d], b, m, lr) for d, b, m, lr, _ in rows])
    y = np.asarray([r for *_, r in rows], dtype=float)
    return Prior(str(run), features, X, y, tuple(descriptors), basis.describe(net, data), tuple(d for d, *_ in rows))


def model_sampler(seed: int, space: dict, params_at: Callable[[int], dict], n_actions: int, decode: Callable[[dict], tuple[str, str, float | None]], features: SurrogateFeatures, prior: Prior | None = None, beta: float = 1.0, first_beta: float = 0.0, target: str = "raw"):  # noqa: ANN201
    """The Optuna sampler of ``--optimizer model`` (see the module docstring).

    ``space``: the trial's distributions (every parameter is chosen at once, from one action);
    ``params_at(k)``: the parameters of action ``k``; ``decode(params)``: ``(bits, method, lr)``
    of a trial's parameters; ``features``: the model's inputs (with ``prior``: the prior's);
    ``beta``: the upper confidence bound's weight on the standard deviation; ``first_beta``: the
    same for the zero-shot trial (with a prior, before this study has a finished trial);
    ``target``: ``raw`` fits the rewards as they are, ``per_dataset`` standardises them within each
    dataset first (the prior's members one by one, this study's trials as one more group;
    :func:`memrl.evaluation.surrogate.standardise_by_group`), so that wide-range members do not
    drown the narrow ones."""
    if target not in TARGETS:
        raise MemrlError(f"model sampler: unknown target {target!r}; valid: {', '.join(TARGETS)}")
    from optuna.samplers import BaseSampler
    from optuna.trial import TrialState

    context = prior.context if prior is not None else np.zeros(0)
    # the prior's targets, fixed for the whole study: standardised once, not before every trial
    prior_y = None if prior is None else standardise_by_group(prior.y, prior.groups) if target == "per_dataset" else prior.y

    class RewardModelSampler(BaseSampler):
        def __init__(self) -> None:
            self.seed, self.beta, self.first_beta, self.prior = int(seed), float(beta), float(first_beta), prior
            self._rows: dict[tuple, np.ndarray] = {}  # model inputs by parameters: decoded once, not every trial
            self._every: list[dict] | None = None  # every action's parameters, when the space is enumerated

        def infer_relative_search_space(self, study, trial) -> dict:  # noqa: ANN001
            return dict(space)

        def sample_relative(self, study, trial, search_space) -> dict:  # noqa: ANN001
            return self._choose(study, trial) if search_space else {}

        def _row(self, params: dict) -> np.ndarray:
            key = tuple(sorted(params.items()))
            if key not in self._rows:
                bits, method, lr = decode(params)
                self._rows[key] = features.row(context, bits, method, lr)
            return self._rows[key]

        def _choose(self, study, trial) -> dict:  # noqa: ANN001
            rng = np.random.default_rng([self.seed, trial.number])
            if n_actions <= MAX_CANDIDATES:
                if self._every is None:
                    self._every = [params_at(k) for k in range(n_actions)]
                pool = self._every
            else:
                pool = [params_at(int(k)) for k in np.unique(rng.integers(0, n_actions, MAX_CANDIDATES))]
            trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params]
            asked = {tuple(sorted(t.params.items())) for t in trials}
            cands = [p for p in pool if tuple(sorted(p.items())) not in asked]
            if not cands:  # every candidate asked: repeat one (the cache answers)
                return params_at(int(rng.integers(n_actions)))
            done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
            if self.prior is None and len(done) < STARTUP_TRIALS:
                return cands[int(rng.integers(len(cands)))]
            X = np.asarray([self._row(t.params) for t in done]).reshape(len(done), features.dim)
            y = np.asarray([t.values[0] for t in done], dtype=float)
            if target == "per_dataset":
                y = standardise_by_group(y, [None] * len(y))
            if self.prior is not None:
                X, y = np.vstack([self.prior.X, X]), np.concatenate([prior_y, y])
            model = RewardSurrogate(seed=self.seed).fit(X, y)
            mean, std = model.predict(np.asarray([self._row(p) for p in cands]))
            beta = self.first_beta if not done else self.beta
            return cands[int(np.argmax(mean + beta * std))]

        def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
            raise MemrlError(f"the model sampler chooses every parameter at once; {param_name!r} is not in the search space it was given")

    return RewardModelSampler()
