"""Training configuration: one YAML file with ``env``, ``ppo`` and ``train`` sections.

Example (``experiments/digits.yaml``)::

    env:                      # memrl.envs.EnvConfig
      datasets: [inverted, thick, rotated, blurred, framed]
      method: lora
      preset: search
    ppo:                      # keyword arguments of stable_baselines3.PPO
      n_steps: 8
      batch_size: 8
    train:                    # TrainSettings
      total_timesteps: 96
      heldout_datasets: [mirrored]
      surrogate:              # SurrogateSettings (memrl.agents.dyna); off by default
        enabled: false
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from memrl.envs.config import EnvConfig
from memrl.errors import MemrlError
from memrl.utils.config import ConfigError, check_fields

#: PPO defaults suited to expensive, short (horizon 1) episodes: small rollouts, many epochs.
DEFAULT_PPO = {
    "n_steps": 8,
    "batch_size": 8,
    "n_epochs": 10,
    "learning_rate": 3e-3,
    "gamma": 0.0,
    "gae_lambda": 1.0,
    "ent_coef": 0.01,
    "clip_range": 0.2,
    "policy_kwargs": {"net_arch": [64, 64]},
}


@dataclass
class SurrogateSettings:
    """``train.surrogate``: Dyna-style training with a learned reward model (:mod:`memrl.agents.dyna`).

    Proposals unlikely to beat the best real reward on their dataset are answered by the model
    (imagined steps) instead of being evaluated; ``evaluations.csv`` and the other records hold
    the real evaluations only. Off by default.
    """

    enabled: bool = False
    #: Distinct real evaluations before the model may imagine a step (its first fit).
    min_real: int = 16
    #: Upper-confidence-bound weight: a proposal is evaluated when mean + kappa * std >= the best
    #: real reward on its dataset (0: only when the mean beats it; larger: more exploration).
    kappa: float = 1.0
    #: Refit the model after this many new distinct real evaluations.
    refit_every: int = 4
    #: Stop training once this many distinct real evaluations have been made (``None``: run
    #: ``total_timesteps`` env steps).
    max_real: int | None = None

    def __post_init__(self) -> None:
        where = "train config"
        check_fields(self, where)
        if self.min_real < 1:
            raise ConfigError(where, f"'min_real' must be >= 1 (real evaluations before the model is used), got {self.min_real}")
        if not self.kappa >= 0:
            raise ConfigError(where, f"'kappa' must be >= 0 (the weight of the uncertainty), got {self.kappa}")
        if self.refit_every < 1:
            raise ConfigError(where, f"'refit_every' must be >= 1, got {self.refit_every}")
        if self.max_real is not None and self.max_real < 1:
            raise ConfigError(where, f"'max_real' must be >= 1 or null (no limit), got {self.max_real}")

    @classmethod
    def from_value(cls, value: object) -> "SurrogateSettings":
        """From the YAML mapping (unknown keys refused, naming the valid ones)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError("train config", f"'surrogate' must be a mapping of keys {', '.join(f.name for f in fields(cls))}, got {value!r}")
        known = [f.name for f in fields(cls)]
        bad = sorted(str(k) for k in value if k not in known)
        if bad:
            raise ConfigError("train config", f"unknown key(s) {', '.join('surrogate.' + k for k in bad)}; valid: {', '.join(known)}")
        try:
            return cls(**value)
        except ConfigError as exc:
            raise ConfigError(exc.where, f"surrogate: {exc.problem}") from None


@dataclass
class TrainSettings:
    """Outer-loop settings (not PPO's own)."""

    total_timesteps: int = 96
    seed: int = 0
    n_envs: int = 1
    vec_env: str = "dummy"  # dummy | subproc
    checkpoint_every: int = 8  # env steps between checkpoints (rounded up to rollout ends)
    heldout_datasets: list[str] = field(default_factory=list)
    random_masks: int = 8  # random masks per dataset for the policy-vs-random comparison
    final_pictures: bool = True  # re-run the best mask once to log its sample grids
    #: Record every evaluation as an Optuna trial (one study per dataset) for optuna-dashboard.
    optuna: bool = True
    #: Optuna storage URL; default ``sqlite:///RUN/optuna.db``.
    optuna_storage: str | None = None
    #: Mirror TensorBoard to other trackers: ``[wandb]`` (needs ``pip install memrl[wandb]``).
    report_to: list[str] = field(default_factory=list)
    #: Weights & Biases project (with ``report_to: [wandb]``).
    wandb_project: str = "memrl"
    #: Dyna-style training with a learned reward model (:class:`SurrogateSettings`).
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    #: Lookup tables holding every mask for some of the run's datasets (exhaustive tables):
    #: TensorBoard shows the best-so-far regret per evaluation on those datasets, and the summary
    #: and ``policy_eval.json`` the policy's regret and rank. ``None``: the ``--lookup`` tables.
    ground_truth: str | None = None

    def __post_init__(self) -> None:
        where = "train config"
        if not isinstance(self.surrogate, SurrogateSettings):  # a YAML mapping
            self.surrogate = SurrogateSettings.from_value(self.surrogate)
        check_fields(self, where)  # types first: ``total_timesteps: "8"`` is one clear line
        if self.total_timesteps < 1:
            raise ConfigError(where, f"'total_timesteps' must be >= 1, got {self.total_timesteps}")
        if self.vec_env not in ("dummy", "subproc"):
            raise ConfigError(where, f"'vec_env' must be 'dummy' or 'subproc', got {self.vec_env!r}")
        if self.n_envs < 1:
            raise ConfigError(where, f"'n_envs' must be >= 1, got {self.n_envs}")
        if self.surrogate.enabled and self.vec_env == "subproc" and self.n_envs > 1:
            raise ConfigError(
                where,
                "'surrogate.enabled' needs every env in one process (one reward model learns from all of them): "
                f"set vec_env: dummy (or n_envs: 1), got vec_env subproc with n_envs {self.n_envs}",
            )
        unknown = sorted(set(self.report_to) - set(REPORT_TO))
        if unknown:
            raise ConfigError(where, f"'report_to' has {', '.join(map(repr, unknown))}; valid: {', '.join(REPORT_TO)}")


#: Trackers ``train.report_to`` can mirror TensorBoard to.
REPORT_TO = ("wandb",)


#: PPO keyword arguments memrl passes itself (``policy``, ``env``: the agent; the rest from
#: ``train.seed`` and the run folder), so the ``ppo`` section may not set them.
PPO_RESERVED = ("policy", "env", "seed", "tensorboard_log", "device", "verbose")


def ppo_keywords() -> list[str]:
    """The keyword arguments the ``ppo`` section may set: those of ``stable_baselines3.PPO``, less
    :data:`PPO_RESERVED` and private ones (read from its signature, so new SB3 versions are followed)."""
    import inspect

    from stable_baselines3 import PPO

    params = inspect.signature(PPO.__init__).parameters
    skip = {"self", *PPO_RESERVED}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(n for n, p in params.items() if n not in skip and not n.startswith("_") and p.kind in kinds)


def check_ppo(ppo: object, source: str) -> dict:
    """The ``ppo`` section as a dict of valid PPO keyword arguments; anything else is refused."""
    if not isinstance(ppo, dict):
        raise MemrlError(f"{source} [ppo]: expected a mapping of stable_baselines3.PPO keyword arguments, got {ppo!r}")
    valid = ppo_keywords()
    reserved = sorted(str(k) for k in ppo if k in PPO_RESERVED)
    if reserved:
        raise MemrlError(
            f"{source} [ppo]: {', '.join(reserved)} cannot be set here (memrl sets {', '.join(PPO_RESERVED)} itself; "
            f"the seed is train.seed); valid: {', '.join(valid)}"
        )
    unknown = sorted(str(k) for k in ppo if k not in valid)
    if unknown:
        raise MemrlError(f"{source} [ppo]: unknown PPO argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return dict(ppo)


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: dict = field(default_factory=lambda: dict(DEFAULT_PPO))
    train: TrainSettings = field(default_factory=TrainSettings)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise MemrlError(f"{source}: expected a mapping with sections env, ppo, train")
        unknown = sorted(set(d) - {"env", "ppo", "train"})
        if unknown:
            raise MemrlError(f"{source}: unknown section(s) {', '.join(unknown)}; valid: env, ppo, train")
        env = EnvConfig.from_dict(d.get("env") or {}, source=f"{source} [env]")
        ppo = dict(DEFAULT_PPO)
        ppo.update(check_ppo(d.get("ppo") or {}, source))
        tr = d.get("train") or {}
        if not isinstance(tr, dict):
            raise MemrlError(f"{source} [train]: expected a mapping of train fields, got {tr!r}")
        known = {f.name for f in fields(TrainSettings)}
        bad = sorted(str(k) for k in set(tr) - known)
        if bad:
            raise MemrlError(f"{source} [train]: unknown field(s) {', '.join(bad)}; valid: {', '.join(sorted(known))}")
        try:
            train = TrainSettings(**tr)
        except ConfigError as exc:
            raise exc.at(f"{source} [train]") from None
        return cls(env=env, ppo=ppo, train=train)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        from memrl.utils.config import read_yaml_file

        return cls.from_dict(read_yaml_file(path), source=str(Path(path)))

    def to_dict(self) -> dict:
        return {"env": self.env.to_dict(), "ppo": dict(self.ppo), "train": asdict(self.train)}

    def save(self, path: str | Path) -> None:
        import yaml

        from memrl.utils.io import write_text_atomic

        write_text_atomic(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def _register_override_schemas() -> None:
    """``--set ppo.*`` is checked against PPO's keyword arguments and their annotations."""
    from memrl.utils.overrides import KeywordSchema, keyword_annotations, register_mapping_schema

    def params() -> dict:
        from stable_baselines3 import PPO

        return keyword_annotations(PPO.__init__, ppo_keywords())

    register_mapping_schema(
        TrainConfig,
        "ppo",
        KeywordSchema("stable_baselines3.PPO arguments", params, lambda: tuple(PPO_RESERVED), note="memrl sets policy, env, seed, tensorboard_log, device and verbose itself (the seed is train.seed)"),
    )


_register_override_schemas()
