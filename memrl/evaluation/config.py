"""What one evaluation does: the fine-tuning budget, the sampling, the metrics and the reward.

Everything that can change a result lives in :class:`EvalConfig`, so its JSON form (without the
reward settings, plus the base model, the dataset, the method, the mask, the learning rate, the
seed, the library versions and the device) is the cache key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from memrl.errors import MemrlError
from memrl.metrics.names import MEM_METRICS  # re-exported: the reward's memorization choices
from memrl.training.finetune import MITIGATION_FIELDS, SCALE_FIELDS, FinetuneConfig
from memrl.utils.config import ConfigError, check_fields


@dataclass
class RewardConfig:
    """``r = max(floor, -(FID/FID_ref + lam * MEM/MEM_ref) - mu * trainable_fraction)`` (docs/design.md, section 6)."""

    lam: float = 1.0
    mu: float = 0.1
    mem_metric: str = "nn_own_rate"
    #: Floors for the reference values, so a reference that barely memorizes cannot blow the reward up.
    mem_ref_floor: float = 0.02
    fid_ref_floor: float = 1e-3
    #: Rewards are clipped to ``[floor, 0]`` (they are never positive: FID, MEM and the fraction are
    #: >= 0). A failed evaluation scores strictly below ``floor`` (the env's ``failure_reward``), so
    #: it can never beat a real result. The base model on a new domain scores about -10 to -12.
    floor: float = -20.0

    def __post_init__(self) -> None:
        check_fields(self, "reward config")
        if self.mem_metric not in MEM_METRICS:
            raise ConfigError("reward config", f"unknown memorization metric {self.mem_metric!r}; valid: {', '.join(MEM_METRICS)}")
        # Negative weights would reward memorization or large masks; ``not x >= 0`` also refuses NaN.
        for name in ("lam", "mu"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError("reward config", f"{name!r} must be >= 0 (a penalty weight), got {value}")
        # The references are divided by these floors: zero or less would divide by zero or flip signs.
        for name in ("mem_ref_floor", "fid_ref_floor"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError("reward config", f"{name!r} must be > 0, got {value}")


@dataclass
class EvalConfig:
    """Sampling and metric settings of one evaluation (with its fine-tuning budget)."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    gens_per_prompt: int = 8
    n_fid_samples: int = 120
    inference_steps: int = 20
    #: Chosen on validation members (experiments/validation_tuning.py): 1.5 beat 2.0 in 5 of 6 paired comparisons.
    guidance_scale: float = 1.5
    sample_batch_size: int = 256
    noise_norm_timesteps: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 900)
    noise_norm_draws: int = 4
    nn_features: str = "pixels"
    #: Features for FID/KID: ``feature_net`` (offline, default) or ``inception`` (needs torch-fidelity + weights).
    fid_features: str = "feature_net"
    #: Bootstrap resamples for FID's 95% interval (``fid_ci_low``/``fid_ci_high``); 0 turns it off.
    fid_bootstrap: int = 200
    replication_quantile: float = 0.95
    extraction_threshold: float = 0.15
    extraction_min_matches: int = 3

    def __post_init__(self) -> None:
        # Types only (a YAML ``eval_overrides`` typo fails here, not deep inside an evaluation);
        # the nested FinetuneConfig is checked by whoever fills it (EnvConfig.eval_config).
        check_fields(self, "eval config")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_method(self, method: str, lr: float | None, seed: int) -> "EvalConfig":
        return replace(self, finetune=replace(self.finetune, method=method, lr=lr, seed=seed))

    def without_mitigations(self) -> "EvalConfig":
        """This config with the fine-tune's mitigation options off (random words, guidance filter).

        The reward's reference (full fine-tuning) and the base model are evaluated with it: the
        reference stays the plain fine-tune, so rewards with and without a mitigation share one
        scale (and one cached reference), and the base model, which is not fine-tuned, is one
        cache entry whatever the options say.
        """
        return self._finetune_defaults(MITIGATION_FIELDS)

    def without_scale_options(self) -> "EvalConfig":
        """This config with mixed precision, gradient accumulation and checkpointing at their defaults.

        For the base model, which is not fine-tuned: those options only change how training runs,
        so the base stays one cache entry whatever they say. (The reference keeps them: a full
        fine-tune of Stable Diffusion needs them as much as a masked one.)
        """
        return self._finetune_defaults(SCALE_FIELDS)

    def _finetune_defaults(self, fields: tuple[str, ...]) -> "EvalConfig":
        defaults = FinetuneConfig()
        off = {name: getattr(defaults, name) for name in fields}
        if all(getattr(self.finetune, k) == v for k, v in off.items()):
            return self
        return replace(self, finetune=replace(self.finetune, **off))


def preset(name: str) -> EvalConfig:
    """``default`` (~1 minute on 2 CPU cores), ``search`` (about a third of that: the agent's
    training budget) or ``quick`` (seconds; for tests and env checks)."""
    if name == "default":
        return EvalConfig()
    if name == "quick":
        return EvalConfig(
            finetune=FinetuneConfig(steps=12, batch_size=16, n_mem=4, n_repeats=10, data_size_ratio=0.3),
            gens_per_prompt=4,
            n_fid_samples=32,
            inference_steps=6,
            noise_norm_timesteps=(200, 500, 800),
            noise_norm_draws=2,
        )
    if name == "search":
        return EvalConfig(
            finetune=FinetuneConfig(steps=100, batch_size=32, n_mem=8, n_repeats=40),
            gens_per_prompt=6,
            n_fid_samples=96,
            inference_steps=12,
            noise_norm_timesteps=(200, 400, 600, 800),
            noise_norm_draws=2,
        )
    raise MemrlError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")


PRESETS = ("quick", "search", "default")
