"""``memrl search``'s configuration: the train config's ``env`` section plus a ``search`` section.

A ``memrl train`` YAML file works as it is (its ``ppo`` and ``train`` sections are PPO's and are
ignored here), so a search baseline evaluates exactly what the agent's steps evaluate: the same
method(s), learning-rate scales, preset, overrides, reward and evaluation seed. The run folder's
``config.yaml`` holds the effective ``env`` and ``search`` sections; ``--resume`` reads it back::

    env:                      # memrl.envs.EnvConfig (as in memrl train)
      pretrained: runs/digits-base
      datasets: [inverted]
      method: difffit
      granularity: block
      preset: search
    search:                   # SearchSettings
      optimizer: tpe
      budget: 32
      dataset: inverted
      seed: 0
      warm_start: runs/agent/policy.zip   # optional: the policy's top proposals are the first trials
      warm_start_k: 4
      # warm_start_spread: 2  # proposals differ in at least 2 blocks where the list allows
      # warm_start_tables: experiments/results/exhaustive   # or: the best fixed masks of other datasets' tables
      screen_steps: 25        # optional: multi-fidelity, a 25-step fine-tune screens every trial
      screen_eta: 3           # and only the best third of the screened trials get the full budget
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from memrl.envs.config import EnvConfig
from memrl.envs.ensemble import ENSEMBLE_RULES
from memrl.errors import MemrlError
from memrl.evaluation.surrogate import TARGETS
from memrl.search.optimizers import OPTIMIZERS
from memrl.utils.config import ConfigError, check_fields

#: Sections of a ``memrl train`` config that a search reads past (PPO's own).
IGNORED_SECTIONS = ("ppo", "train")


@dataclass
class SearchSettings:
    """What the search does (the ``search`` section; every field is also a ``memrl search`` flag)."""

    #: ``tpe``, ``nsga2``, ``random`` or ``exhaustive`` (:mod:`memrl.search.optimizers`).
    optimizer: str = "tpe"
    #: Trials (= evaluations, cache hits included). ``None``: 32, or the whole space for ``exhaustive``.
    budget: int | None = None
    #: The dataset searched on. ``None``: the env's only dataset.
    dataset: str | None = None
    #: The sampler's seed (the evaluations are seeded by ``env.seed``, as the agent's steps are).
    seed: int = 0
    #: Optuna storage URL; ``None``: ``sqlite:///RUN/optuna.db``.
    storage: str | None = None
    #: A lookup table folder (:class:`memrl.evaluation.lookup.LookupEvaluator`) answering instead of
    #: the model; ``None``: the real evaluator on ``env.pretrained``.
    lookup: str | None = None
    #: Re-evaluate the best mask once at the end for its pictures (real evaluator only).
    final_pictures: bool = True
    #: Trials between the TensorBoard figures (bit frequency, Pareto scatter).
    figures_every: int = 8
    #: A trained policy (``RUN/policy.zip`` of ``memrl train``, its run folder beside it): its
    #: ``warm_start_k`` most probable proposals on the dataset, distinct in what they train, are
    #: enqueued as the first trials (:class:`memrl.envs.policy.TrainedPolicy`). Enqueued once, when
    #: the run starts (``--resume`` does not enqueue again). Not with ``exhaustive``. A list of
    #: two or more policies (agent seeds of one config) warm-starts with their ensemble's
    #: proposals (:class:`memrl.envs.ensemble.PolicyEnsemble`, combined by ``warm_start_ensemble``).
    warm_start: str | list[str] | None = None
    #: How an ensemble ``warm_start`` combines its policies: ``mixture`` (their probabilities
    #: averaged) or ``product`` (multiplied and normalised).
    warm_start_ensemble: str = "mixture"
    #: A folder of lookup tables (exhaustive tables of *other* datasets): the ``warm_start_k``
    #: masks with the best mean reward over every dataset they hold in full with the run's
    #: settings, the searched dataset left out (:func:`memrl.evaluation.ground_truth.best_fixed_masks`),
    #: are enqueued as the first trials. The best fixed masks: on the family's test members this
    #: warm start reached 2% of the optimum sooner than a policy's (experiments/README.md, "Does the
    #: learned policy beat search?"). Not with ``warm_start`` (give one warm start) or ``exhaustive``.
    warm_start_tables: str | None = None
    #: How many of the policy's (or the tables') proposals the warm start enqueues (at most the budget).
    warm_start_k: int = 4
    #: The minimum Hamming distance (blocks that differ) between the warm start's proposals: the
    #: ranked list is reordered by :func:`memrl.search.spread.spread` (greedy in rank order, the
    #: distance relaxed only when the list runs out) before the first ``warm_start_k`` are taken,
    #: so they explore instead of repeating the first proposal's neighbours. The first proposal is
    #: always the list's first. 0: the list as ranked (``experiments/proposal_spread.py`` measures
    #: the distances on the family's validation and test members).
    warm_start_spread: int = 0
    #: A folder of lookup tables holding every mask for the dataset with the run's settings (an
    #: exhaustive search's table): TensorBoard then shows the best-so-far mask's regret per trial
    #: (``regret/<dataset>``) and the summary its regret and rank. ``None``: the ``lookup`` folder
    #: when there is one (silently nothing when it lacks a mask).
    ground_truth: str | None = None
    #: Multi-fidelity (successive halving, Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`):
    #: every trial is first evaluated with this many fine-tuning steps (the rest of the evaluation
    #: as configured, the reward against a full fine-tune of the same short budget); only a trial
    #: whose screen reward is in the best ``1 / screen_eta`` of the screens so far gets the full
    #: evaluation, the others end ``PRUNED``. ``None``: no screen. Not with nsga2 (Optuna prunes
    #: single-objective studies only) or exhaustive.
    screen_steps: int | None = None
    #: The screen's reduction factor: about one trial in ``screen_eta`` is promoted to the full budget.
    screen_eta: int = 3
    #: ``optimizer: model`` only: a ``memrl train`` run folder whose evaluations on other datasets
    #: (with their descriptors) the reward model starts from (:mod:`memrl.search.model_sampler`).
    #: ``None``: plain Bayesian optimisation on this dataset alone.
    #: Several runs (agent seeds of one config) pool their evaluations.
    prior: str | list[str] | None = None
    #: ``optimizer: model`` only: the upper confidence bound's weight on the model's standard deviation.
    model_beta: float = 1.0
    #: ``optimizer: model`` with a ``prior`` only: the same weight for the first trial, the model's
    #: zero-shot pick on the new dataset. 0 (default): the best posterior mean, the best guess when
    #: the budget may be a single evaluation (leave-one-member-out on the training members,
    #: ``experiments/zero_shot_rule.py``, found neither rule consistently better).
    model_first_beta: float = 0.0
    #: ``optimizer: model`` only: what the reward model is fitted on. ``raw``: the rewards as they
    #: are; ``per_dataset``: each dataset's rewards standardised by its own mean and spread (the
    #: prior's members differ in scale by a factor of ten; ``experiments/zero_shot_rule.py
    #: --targets raw per_dataset`` compares the two on the training members).
    model_target: str = "raw"

    def __post_init__(self) -> None:
        where = "search config"
        check_fields(self, where)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(where, f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(where, f"'budget' must be >= 1, got {self.budget}")
        if self.figures_every < 1:
            raise ConfigError(where, f"'figures_every' must be >= 1, got {self.figures_every}")
        if self.warm_start_k < 1:
            raise ConfigError(where, f"'warm_start_k' must be >= 1, got {self.warm_start_k}")
        if isinstance(self.warm_start_spread, bool) or not isinstance(self.warm_start_spread, int) or self.warm_start_spread < 0:
            raise ConfigError(where, f"'warm_start_spread' must be an integer >= 0 (the minimum Hamming distance between warm-start proposals; 0: as ranked), got {self.warm_start_spread!r}")
        if self.screen_steps is not None:
            if isinstance(self.screen_steps, bool) or not isinstance(self.screen_steps, int) or self.screen_steps < 1:
                raise ConfigError(where, f"'screen_steps' must be an integer >= 1 (fine-tuning steps of the screen) or null, got {self.screen_steps!r}")
            if self.optimizer in ("nsga2", "exhaustive"):
                raise ConfigError(where, f"'screen_steps' needs a single-objective sampler that skips pruned trials (tpe, random): {self.optimizer} {'optimises two objectives, which Optuna does not prune' if self.optimizer == 'nsga2' else 'evaluates every mask in full'}")
        if isinstance(self.screen_eta, bool) or not isinstance(self.screen_eta, int) or self.screen_eta < 2:
            raise ConfigError(where, f"'screen_eta' must be an integer >= 2 (one screened trial in screen_eta gets the full budget), got {self.screen_eta!r}")
        if isinstance(self.prior, list):
            if not self.prior or any(not r.strip() for r in self.prior):
                raise ConfigError(where, f"'prior' {self.prior!r} holds no run or an empty path; give memrl train run folders (or leave it out)")
            if len(self.prior) == 1:
                self.prior = self.prior[0]
        if self.prior is not None and self.optimizer != "model":
            raise ConfigError(where, f"'prior' ({self.prior}) is the reward model's starting data: it needs optimizer model, not {self.optimizer}")
        if self.model_target not in TARGETS:
            raise ConfigError(where, f"unknown model_target {self.model_target!r}; valid: {', '.join(TARGETS)}")
        for name in ("model_beta", "model_first_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(where, f"'{name}' must be a number >= 0 (0: the model's best mean), got {value!r}")
        if isinstance(self.warm_start, list):
            if not self.warm_start or any(not w.strip() for w in self.warm_start):
                raise ConfigError(where, f"'warm_start' {self.warm_start!r} holds no policy or an empty path; give policy.zip files written by memrl train (or leave it out)")
            if len(self.warm_start) == 1:
                self.warm_start = self.warm_start[0]  # one policy: no ensemble
        elif self.warm_start is not None and not self.warm_start.strip():
            raise ConfigError(where, "'warm_start' is empty; give the path of a policy.zip written by memrl train (or leave it out)")
        if self.warm_start_ensemble not in ENSEMBLE_RULES:
            raise ConfigError(where, f"unknown warm_start_ensemble {self.warm_start_ensemble!r}; valid: {', '.join(ENSEMBLE_RULES)}")
        if self.warm_start_tables is not None and not str(self.warm_start_tables).strip():
            raise ConfigError(where, "'warm_start_tables' is empty; give a folder of lookup tables of other datasets (or leave it out)")
        if self.warm_start is not None and self.warm_start_tables is not None:
            raise ConfigError(where, f"give one warm start: 'warm_start' (a policy, {self.warm_start}) or 'warm_start_tables' (the best fixed masks of {self.warm_start_tables}), not both")
        for name in ("warm_start", "warm_start_tables"):
            value = getattr(self, name)
            if value is not None and not OPTIMIZERS[self.optimizer].warm_start:
                able = ", ".join(o.name for o in OPTIMIZERS.values() if o.warm_start)
                raise ConfigError(
                    where,
                    f"'{name}' ({value}) needs an optimizer that takes enqueued trials ({able}): {self.optimizer} visits every mask once in a fixed order",
                )


@dataclass
class SearchConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    search: SearchSettings = field(default_factory=SearchSettings)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "SearchConfig":
        if not isinstance(d, dict):
            raise MemrlError(f"{source}: expected a mapping with sections env, search (a memrl train config's ppo and train are ignored)")
        unknown = sorted(str(k) for k in set(d) - {"env", "search", *IGNORED_SECTIONS})
        if unknown:
            raise MemrlError(f"{source}: unknown section(s) {', '.join(unknown)}; valid: env, search (and a train config's ppo, train, ignored)")
        env = EnvConfig.from_dict(d.get("env") or {}, source=f"{source} [env]")
        s = d.get("search") or {}
        if not isinstance(s, dict):
            raise MemrlError(f"{source} [search]: expected a mapping of search fields, got {s!r}")
        known = {f.name for f in fields(SearchSettings)}
        bad = sorted(str(k) for k in set(s) - known)
        if bad:
            raise MemrlError(f"{source} [search]: unknown field(s) {', '.join(bad)}; valid: {', '.join(sorted(known))}")
        try:
            search = SearchSettings(**s)
        except ConfigError as exc:
            raise exc.at(f"{source} [search]") from None
        return cls(env=env, search=search)

    @classmethod
    def load(cls, path: str | Path) -> "SearchConfig":
        from memrl.utils.config import read_yaml_file

        return cls.from_dict(read_yaml_file(path), source=str(Path(path)))

    def to_dict(self) -> dict:
        return {"env": self.env.to_dict(), "search": asdict(self.search)}

    def save(self, path: str | Path) -> None:
        import yaml

        from memrl.utils.io import write_text_atomic

        write_text_atomic(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ------------------------------------------------------------------ resolved values
    def dataset(self) -> str:
        """The dataset searched on: ``search.dataset``, else the env's only one."""
        if self.search.dataset:
            return self.search.dataset
        if len(self.env.datasets) == 1:
            return self.env.datasets[0]
        raise MemrlError(f"memrl search evaluates one dataset; pass --dataset (the config's env.datasets lists {', '.join(self.env.datasets)})")

    def methods(self) -> list[str]:
        """The methods the search proposes (``env.methods``, else ``env.method``)."""
        return list(self.env.methods) if self.env.methods else [self.env.method]

    def mem_metric(self) -> str:
        return str(self.env.eval_config().reward.mem_metric)
