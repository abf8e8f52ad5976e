"""What one evaluation does: the fine-tuning budget, the sampling, the metrics and the reward.

Everything that can change a result lives in :class:`EvalConfig`, so its JSON form (plus the
base model, the dataset, the method, the mask, the learning rate and the seed) is the cache key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from memrl.errors import MemrlError
from memrl.training.finetune import FinetuneConfig

MEM_METRICS = ("nn_own_rate", "replication_rate", "noise_norm_mean", "extraction_rate")


@dataclass
class RewardConfig:
    """``r = -(FID/FID_ref + lam * MEM/MEM_ref) - mu * trainable_fraction`` (DESIGN section 4)."""

    lam: float = 1.0
    mu: float = 0.1
    mem_metric: str = "nn_own_rate"
    #: Floors for the reference values, so a reference that barely memorizes cannot blow the reward up.
    mem_ref_floor: float = 0.02
    fid_ref_floor: float = 1e-3

    def __post_init__(self) -> None:
        if self.mem_metric not in MEM_METRICS:
            raise MemrlError(f"unknown memorization metric {self.mem_metric!r}; valid: {', '.join(MEM_METRICS)}")


@dataclass
class EvalConfig:
    """Sampling and metric settings of one evaluation (with its fine-tuning budget)."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    gens_per_prompt: int = 8
    n_fid_samples: int = 120
    inference_steps: int = 20
    guidance_scale: float = 2.0
    sample_batch_size: int = 256
    noise_norm_timesteps: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 900)
    noise_norm_draws: int = 4
    nn_features: str = "pixels"
    #: Features for FID/KID: ``feature_net`` (offline, default) or ``inception`` (needs torch-fidelity + weights).
    fid_features: str = "feature_net"
    replication_quantile: float = 0.95
    extraction_threshold: float = 0.15
    extraction_min_matches: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    def with_method(self, method: str, lr: float | None, seed: int) -> "EvalConfig":
        return replace(self, finetune=replace(self.finetune, method=method, lr=lr, seed=seed))


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
