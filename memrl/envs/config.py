"""Configuration of the mask-selection environment (one plain dataclass, YAML-friendly)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

from memrl.errors import MemrlError
from memrl.utils.config import ConfigError, apply_overrides, check_fields

DEFAULT_MODEL = os.environ.get("MEMRL_MODEL", "runs/digits-base")


@dataclass
class EnvConfig:
    """What an episode is: which datasets, which PEFT method(s), which evaluation budget.

    ``methods`` / ``lr_scales`` with more than one entry add a discrete action dimension each
    (the action space becomes ``MultiDiscrete``); otherwise the action is ``MultiBinary(n_units)``.
    ``lr_scales`` multiply the chosen method's default learning rate.
    """

    pretrained: str = DEFAULT_MODEL
    datasets: list[str] = field(default_factory=lambda: ["inverted", "thick", "rotated", "blurred", "framed"])
    method: str = "lora"
    methods: list[str] = field(default_factory=list)
    lr_scales: list[float] = field(default_factory=list)
    preset: str = "search"
    eval_overrides: dict = field(default_factory=dict)
    reward: dict = field(default_factory=dict)
    horizon: int = 1
    seed: int = 0
    device: str = "cpu"
    #: Evaluation cache: an SQLite file, ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``
    #: (shared by several machines); ``None``: the run folder's ``evaluations.sqlite``.
    cache: str | None = None
    #: Run each evaluation in a Ray actor (``pip install 'memrl[ray]'``): ``{address, num_gpus,
    #: num_cpus}`` (:class:`memrl.evaluation.remote.RayOptions`; ``{}`` for a local instance on
    #: the CPU). ``None``: in this process. Across machines ``cache`` must be a ``postgresql://`` URL.
    ray: dict | None = None
    granularity: str = "attention"
    descriptor_components: int = 8
    #: Reward of a failed evaluation (diverged fine-tune, non-finite samples). ``None``: one below
    #: the reward floor (``reward.floor``, default -20), so a failure never beats a real result.
    failure_reward: float | None = None
    #: Also put run-time facts in ``info`` (``cached``, ``seconds``, ``computed_seconds``,
    #: ``timings``). Off by default: they differ between two identical steps (the second is a
    #: cache hit), which Gymnasium's determinism check rejects. ``memrl train`` turns it on for
    #: its evaluation log.
    info_runtime: bool = False
    #: Column names of user datasets given as sheets (CSV / JSON lines / parquet, or an image
    #: folder's metadata file), e.g. MIMIC-CXR's ``impression`` and ``path``. ``None``: the
    #: recognised names (see :mod:`memrl.data.sheets`). Built-in and family datasets ignore them.
    caption_column: str | None = None
    image_column: str | None = None
    split_column: str | None = None
    #: Memorization sheet per dataset (``{dataset spec: sheet of training images}``): the probe
    #: uses those images, in that order. Keys must be in ``datasets``.
    mem_sheets: dict[str, str] = field(default_factory=dict)
    #: Feature network of FID/KID, nearest neighbours and the dataset descriptor: a memrl
    #: feature-network folder or an importable ``package.module:callable`` (a user's domain model,
    #: see :func:`memrl.evaluation.evaluator.load_feature_net`). ``None``: ``PRETRAINED/feature_net``.
    #: Its content hash is part of every cache key.
    feature_net: str | None = None
    #: Train and sample at this many pixels instead of the model's native size (SD 1.5 is 512; the
    #: published MemControl runs used 224); a multiple of the VAE factor. ``None``: native.
    resolution: int | None = None

    def __post_init__(self) -> None:
        """Check types first (a YAML ``horizon: "2"`` or ``datasets: inverted`` is one clear line),
        then values, then build :meth:`eval_config` once so a bad ``eval_overrides`` / ``reward``
        fails here, before any run folder is written, not at the first step."""
        where = "env config"
        check_fields(self, where)
        if not self.datasets:
            raise ConfigError(where, "'datasets' is empty; list at least one dataset (built-in name, folder or CSV)")
        if self.horizon < 1:
            raise ConfigError(where, f"'horizon' must be >= 1, got {self.horizon}")
        from memrl.evaluation.config import PRESETS
        from memrl.peft_masking import METHODS

        for m in [self.method, *self.methods]:
            if m not in METHODS:
                raise ConfigError(where, f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        if any(not s > 0 for s in self.lr_scales):
            raise ConfigError(where, f"'lr_scales' must be positive, got {self.lr_scales}")
        for name in ("caption_column", "image_column", "split_column"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(where, f"{name!r} must be a column name, got {value!r}; leave it out for the recognised names")
        if self.feature_net is not None and not self.feature_net.strip():
            raise ConfigError(where, f"'feature_net' must be a folder or package.module:callable, got {self.feature_net!r}; leave it out for PRETRAINED/feature_net")
        if self.resolution is not None and not self.resolution > 0:
            raise ConfigError(where, f"'resolution' must be a positive number of pixels, got {self.resolution!r}; leave it out for the model's native size")
        stray = sorted(k for k in self.mem_sheets if k not in self.datasets)
        if stray:
            raise ConfigError(where, f"'mem_sheets' names {', '.join(map(repr, stray))}, not in 'datasets' ({', '.join(self.datasets)})")
        if self.cache is not None:
            from memrl.evaluation.cache import open_backend

            open_backend(self.cache)  # its form (a path or a URL), not whether the server answers
        if self.ray is not None:
            from memrl.evaluation.remote import RayOptions

            RayOptions.from_dict(self.ray)  # its keys and values (Ray itself is needed only to evaluate)
        if self.preset not in PRESETS:
            raise ConfigError(where, f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        self.eval_config()  # checks eval_overrides and reward key by key

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "EnvConfig":
        """Build from a YAML mapping; every error names ``source`` (e.g. ``FILE [env]``)."""
        if not isinstance(d, dict):
            raise MemrlError(f"{source}: expected a mapping of env fields, got {type(d).__name__} {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise MemrlError(f"{source}: unknown env field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        try:
            return cls(**d)
        except ConfigError as exc:
            raise exc.at(source) from None

    def to_dict(self) -> dict:
        return asdict(self)

    def eval_config(self):  # noqa: ANN201
        """The :class:`memrl.evaluation.EvalConfig` of one step: ``preset`` + ``eval_overrides`` + ``reward``.

        Both mappings are checked key by key against the dataclasses they fill (EvalConfig, its
        ``finetune`` FinetuneConfig and ``reward`` RewardConfig): an unknown key is refused with the
        valid ones listed, a wrong type names its path (``eval_overrides.finetune.steps``).
        """
        from memrl.evaluation import preset

        where = "env config"
        cfg = apply_overrides(preset(self.preset), self.eval_overrides, "eval_overrides", where)
        if self.reward:
            cfg = replace(cfg, reward=apply_overrides(cfg.reward, self.reward, "reward", where))
        return cfg

    def resolved_failure_reward(self) -> float:
        """The failed step's reward: the configured one, or one below the reward floor."""
        floor = float(self.eval_config().reward.floor)
        if self.failure_reward is None:
            return floor - 1.0
        if float(self.failure_reward) >= floor:
            raise MemrlError(
                f"env config: failure_reward ({self.failure_reward}) must be below the reward floor ({floor}), "
                "or a failed step could beat a real one"
            )
        return float(self.failure_reward)

    def dataset_options(self, spec: str) -> dict:
        """Keyword arguments of :func:`memrl.data.loaders.load_dataset` for the dataset ``spec``."""
        return {
            "caption_column": self.caption_column,
            "image_column": self.image_column,
            "split_column": self.split_column,
            "mem_sheet": self.mem_sheets.get(spec),
        }

    def with_(self, **kw) -> "EnvConfig":
        return replace(self, **kw)


def _register_override_schemas() -> None:
    """``--set env.eval_overrides.*`` / ``env.reward.*`` are checked against these dataclasses."""
    from memrl.evaluation.config import EvalConfig, RewardConfig
    from memrl.utils.overrides import register_mapping_schema

    register_mapping_schema(EnvConfig, "eval_overrides", EvalConfig)
    register_mapping_schema(EnvConfig, "reward", RewardConfig)


_register_override_schemas()
