"""Configuration of the mask-selection environment (one plain dataclass, YAML-friendly)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

from memrl.errors import MemrlError

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
    cache: str | None = None
    granularity: str = "attention"
    descriptor_components: int = 8
    failure_reward: float = -5.0
    #: Put run-time facts in ``info`` (``cached``, ``seconds``, ``timings``). They differ between
    #: two identical steps (the second is a cache hit), so strict determinism checks turn this off.
    info_runtime: bool = True

    def __post_init__(self) -> None:
        if not self.datasets:
            raise MemrlError("env config: 'datasets' is empty; list at least one dataset (built-in name, folder or CSV)")
        if self.horizon < 1:
            raise MemrlError(f"env config: 'horizon' must be >= 1, got {self.horizon}")
        from memrl.peft_masking import METHODS

        for m in [self.method, *self.methods]:
            if m not in METHODS:
                raise MemrlError(f"env config: unknown method {m!r}; valid: {', '.join(METHODS)}")
        if any(s <= 0 for s in self.lr_scales):
            raise MemrlError(f"env config: 'lr_scales' must be positive, got {self.lr_scales}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "EnvConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MemrlError(f"{source}: unknown env field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def eval_config(self):  # noqa: ANN201
        """The :class:`memrl.evaluation.EvalConfig` of one step: ``preset`` + ``eval_overrides`` + ``reward``."""
        from memrl.evaluation import preset

        cfg = preset(self.preset)
        ov = dict(self.eval_overrides)
        ft = ov.pop("finetune", {})
        try:
            if ft:
                cfg = replace(cfg, finetune=replace(cfg.finetune, **ft))
            if self.reward:
                cfg = replace(cfg, reward=replace(cfg.reward, **self.reward))
            if ov:
                cfg = replace(cfg, **ov)
        except TypeError as exc:
            raise MemrlError(f"env config: bad eval_overrides/reward field ({exc})") from None
        return cfg

    def with_(self, **kw) -> "EnvConfig":
        return replace(self, **kw)
