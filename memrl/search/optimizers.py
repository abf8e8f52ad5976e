"""``memrl search --optimizer NAME``: each name is a seeded Optuna sampler and the study's objectives.

* ``tpe``: :class:`optuna.samplers.TPESampler`, maximising the reward the agent gets;
* ``nsga2``: :class:`optuna.samplers.NSGAIISampler` on the two raw objectives, FID and the
  reward's memorization metric, both minimised (as the MemControl paper searched); the run's best
  point is then picked by the same reward as every other optimizer's;
* ``random``: :class:`optuna.samplers.RandomSampler` (uniform over the action space); the study
  records the reward (the sampler ignores it);
* ``exhaustive``: :class:`ExhaustiveSampler`, every action once in the fixed order of
  :func:`memrl.evaluation.space.action_at` (trial ``k`` is action ``k``); its budget defaults to
  the size of the space (``2 ** n_units`` masks for one method) and never exceeds it.

``--warm-start`` (a trained policy's top proposals enqueued as the first trials) works with every
Optuna sampler above (an enqueued trial is a fixed point the sampler then learns from); not with
``exhaustive``, whose trial ``k`` is action ``k``.

A failed evaluation is a ``FAIL`` trial: the samplers learn nothing from it, and the run's record
gives it the environment's failure reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from memrl.errors import MemrlError

#: Budget of a search that names none (except ``exhaustive``: the whole space); the same number
#: of evaluations as the demo ``memrl train`` run (experiments/digits.yaml).
DEFAULT_BUDGET = 32

#: ``params_at(k)``: the Optuna parameters of the ``k``-th action of the space (what
#: :func:`memrl.evaluation.space.action_to_params` gives for :func:`~memrl.evaluation.space.action_at`).
ParamsAt = Callable[[int], dict]


@dataclass(frozen=True)
class Optimizer:
    """One ``--optimizer``: a sampler factory ``make(seed, params_at, budget)`` and the study's objectives.

    ``stateful``: the sampler carries state between trials (its random generator) that the study
    does not hold, so a resumed run restores the pickled sampler to continue the same sequence.
    """

    name: str
    make: Callable[[int, ParamsAt, int], object]
    multi_objective: bool
    help: str
    stateful: bool = True
    warm_start: bool = True

    def directions(self) -> list[str]:
        """``minimize`` FID and MEM (multi-objective), else ``maximize`` the reward."""
        return ["minimize", "minimize"] if self.multi_objective else ["maximize"]

    def metric_names(self, mem_metric: str) -> list[str]:
        return ["fid", mem_metric] if self.multi_objective else ["reward"]

    def values(self, info: dict, reward: float, mem_metric: str) -> list[float]:
        """What a successful evaluation tells the study."""
        return [float(info["fid"]), float(info[mem_metric])] if self.multi_objective else [float(reward)]

    def budget(self, budget: int | None, n_actions: int) -> int:
        """Trials to run: ``budget``, or the default; ``exhaustive`` never more than the space holds."""
        if self.name == "exhaustive":
            return n_actions if budget is None else min(int(budget), n_actions)
        return DEFAULT_BUDGET if budget is None else int(budget)


def _tpe(seed: int, params_at: ParamsAt, budget: int):  # noqa: ANN202, ARG001
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed)


def nsga2_population(budget: int) -> int:
    """NSGA-II's population for a budget: a quarter of it, between 4 and Optuna's default 50.

    Optuna's default population (50) draws its whole first generation at random, so at budgets of
    32-64 trials NSGA-II would be random search (trial for trial the same as ``random`` with the
    same seed); a quarter of the budget gives it about four generations.
    """
    return max(4, min(50, int(budget) // 4))


def _nsga2(seed: int, params_at: ParamsAt, budget: int):  # noqa: ANN202, ARG001
    from optuna.samplers import NSGAIISampler

    return NSGAIISampler(seed=seed, population_size=nsga2_population(budget))


def _random(seed: int, params_at: ParamsAt, budget: int):  # noqa: ANN202, ARG001
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _exhaustive(seed: int, params_at: ParamsAt, budget: int):  # noqa: ANN202, ARG001
    return exhaustive_sampler(params_at)


def _model(seed: int, params_at: ParamsAt, budget: int):  # noqa: ANN202, ARG001
    raise MemrlError("the model optimizer is built by memrl.search.run.search (it needs the dataset, the evaluator and the prior)")


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("tpe", _tpe, False, "Optuna's TPE sampler, maximising the reward"),
        Optimizer("nsga2", _nsga2, True, "Optuna's NSGA-II on FID and the memorization metric (both minimised); best point by the reward"),
        Optimizer("random", _random, False, "uniformly random proposals (Optuna's RandomSampler)"),
        Optimizer("exhaustive", _exhaustive, False, "every mask once, in order (budget: the whole space)", stateful=False, warm_start=False),
        Optimizer("model", _model, False, "Bayesian optimisation with memrl's reward model (a Gaussian process), warm from --prior RUN's evaluations on other datasets", stateful=False),
    )
}


def get_optimizer(name: str) -> Optimizer:
    if name not in OPTIMIZERS:
        raise MemrlError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def exhaustive_sampler(params_at: ParamsAt):  # noqa: ANN201
    """An Optuna sampler that gives trial ``k`` the parameters ``params_at(k)``: every action once,
    in order, with no state of its own (a resumed study continues where its trials stop)."""
    from optuna.samplers import BaseSampler

    class ExhaustiveSampler(BaseSampler):
        def __init__(self, params_at: ParamsAt) -> None:
            self.params_at = params_at

        def infer_relative_search_space(self, study, trial) -> dict:  # noqa: ANN001
            return {}

        def sample_relative(self, study, trial, search_space) -> dict:  # noqa: ANN001
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
            return self.params_at(trial.number)[param_name]

    return ExhaustiveSampler(params_at)
