"""The PEFT methods, one :class:`MethodSpec` each, in :data:`METHOD_REGISTRY` (the single source of truth).

Everything memrl knows about a method lives in its entry: its name and a one-line description,
its default learning rate (read by :meth:`memrl.training.finetune.FinetuneConfig.resolved_lr`),
the function that applies it inside the selected units (called by
:func:`memrl.peft_masking.apply_peft`), whether a unit holds anything it can train
(:func:`memrl.peft_masking.trainable_units`), and whether it is a peft adapter and in which
format its adapter is exported (:func:`memrl.peft_masking.export.save_adapter`). :data:`METHODS`
and :data:`PEFT_ADAPTER_METHODS` are derived from the registry; adding a method means adding one
entry (and its apply function) here.

The methods (docs/design.md, section 2: bit 0 = *none* of that unit's parameters train):

* ``lora``, ``loha``, ``lokr``, ``oft``: a peft adapter, added with diffusers'
  ``unet.add_adapter`` under the name :data:`ADAPTER_NAME`, on the attention projections
  (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of ``attn1`` and ``attn2``) of the selected units,
  targeted by exact module names so no other unit is touched. Output is unchanged at init. A unit
  without attention projections (e.g. ``down_blocks.0`` of the embedded model at block
  granularity) has nothing to train.
* ``attention``: the existing q/k/v/out projection weights and biases of the selected units.
* ``difffit``: biases and normalization parameters of the selected units, plus new per-channel
  scales (init 1) on the output of each attention, feed-forward and resnet residual branch
  (``conv2``), applied by forward hooks. Scales go in ``no_decay_names`` so weight decay does not
  pull them to 0. Output is unchanged at init.
* ``svdiff``: spectral shifts. For every Linear and Conv2d weight of the selected units the SVD
  ``W = U diag(S) V^T`` is taken once at wrap time (buffers) and a learnable ``delta`` (init 0)
  gives ``W' = U diag(ReLU(S + delta)) V^T``, computed as ``W + U diag(ReLU(S+delta) - S) V^T``
  so the output at init is exactly the original's. Done with ``torch.nn.utils.parametrize``.
* ``full``: every parameter of the selected units; with the all-ones mask, the ENTIRE UNet
  (including conv_in, the time embedding, resnets and conv_out outside any unit): the memorizing
  baseline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from memrl.errors import MemrlError
from memrl.peft_masking.mask import Mask

ADAPTER_NAME = "memrl"
SCALE_NAME = "difffit_scale"

#: How a peft adapter is exported (:mod:`memrl.peft_masking.export`): ``diffusers-lora`` is
#: diffusers' LoRA file (``pytorch_lora_weights.safetensors``, loaded by ``load_lora_weights`` /
#: ``load_lora_adapter``; peft's format is written beside it); ``peft`` is peft's own format
#: (``adapter_config.json`` + ``adapter_model.safetensors``, loaded by ``PeftModel.from_pretrained``).
ExportFormat = Literal["diffusers-lora", "peft"]
EXPORT_FORMATS: tuple[str, ...] = ("diffusers-lora", "peft")

_PROJ_RE = re.compile(r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$")


# -- what an apply function gets ----------------------------------------------------------------
@dataclass
class ApplyContext:
    """Inputs and outputs of one method's apply function (built by :func:`apply_peft`).

    The UNet is already frozen; the apply function makes its method's parameters trainable inside
    ``mask.selected`` (adding adapters, scales or parametrizations as needed) and records the
    difffit-style scales it adds in ``scale_names`` and its forward hooks in ``hooks``.
    """

    unet: nn.Module
    mask: Mask
    spec: "MethodSpec"
    modules: dict[str, nn.Module]
    rank: int = 4
    lora_alpha: float = 4.0
    adapter_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scale_names: set[str] = field(default_factory=set)
    hooks: list[Any] = field(default_factory=list)

    @property
    def selected(self) -> tuple[str, ...]:
        return self.mask.selected


@dataclass(frozen=True)
class MethodSpec:
    """One PEFT method: everything memrl needs to train, count, tune and export it.

    * ``apply(ctx)``: makes the method's parameters trainable inside ``ctx.mask.selected``.
    * ``has_params(unit_module)``: whether the method has anything to train inside that unit
      (the same answer as ``apply_peft(...).per_unit[unit] > 0``).
    * ``peft_adapter``: the method is a peft adapter (``unet.add_adapter``); ``adapter_config(rank,
      alpha)`` gives its peft config class and default options, ``export`` its adapter file format.
    * ``whole_unet_with_all_mask``: with the all-ones mask it trains the whole UNet, also outside
      the units (only ``full``: the memorizing baseline).
    """

    name: str
    description: str
    default_lr: float
    apply: Callable[[ApplyContext], None] = field(repr=False)
    has_params: Callable[[nn.Module], bool] = field(repr=False)
    peft_adapter: bool = False
    export: ExportFormat | None = None
    adapter_config: Callable[[int, float], tuple[type, dict[str, Any]]] | None = field(default=None, repr=False)
    whole_unet_with_all_mask: bool = False

    def __post_init__(self) -> None:
        if not (self.default_lr > 0):
            raise ValueError(f"method {self.name}: default_lr must be > 0, got {self.default_lr}")
        if self.peft_adapter != (self.export is not None) or self.peft_adapter != (self.adapter_config is not None):
            raise ValueError(f"method {self.name}: a peft adapter needs export and adapter_config, other methods neither")
        if self.export is not None and self.export not in EXPORT_FORMATS:
            raise ValueError(f"method {self.name}: unknown export format {self.export!r}; valid: {', '.join(EXPORT_FORMATS)}")


# -- helpers ------------------------------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix


def attention_projections(unit: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(full name, module) of the q/k/v/out Linear projections inside one unit."""
    return [
        (_join(unit, rel), m)
        for rel, m in module.named_modules()
        if rel and _PROJ_RE.search(rel) and isinstance(m, nn.Linear)
    ]


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)) or "Norm" in type(module).__name__


def peft_config(spec: MethodSpec, targets: list[str], rank: int, alpha: float, extra: Mapping[str, Any]):  # noqa: ANN201
    """The peft config of an adapter method on exactly ``targets``; ``extra`` overrides its defaults."""
    if spec.adapter_config is None:
        raise MemrlError(f"{spec.name} is not a peft adapter method")
    cls, kwargs = spec.adapter_config(rank, alpha)
    kwargs = {**kwargs, **dict(extra)}
    try:
        return cls(target_modules=targets, **kwargs)
    except (TypeError, ValueError) as e:
        raise MemrlError(f"bad adapter options for {spec.name}: {e}") from None


def _apply_scale(output: Any, scale: torch.Tensor) -> Any:
    """Multiply the channel dim of a hooked output (dim 1 of 4-D maps, last dim of token tensors)."""
    if isinstance(output, tuple):
        return (_apply_scale(output[0], scale),) + tuple(output[1:])
    shape = [1] * output.ndim
    shape[1 if output.ndim == 4 else output.ndim - 1] = -1
    return output * scale.view(shape).to(output.dtype)


def _scale_hook(module: nn.Module, args: Any, output: Any) -> Any:
    return _apply_scale(output, getattr(module, SCALE_NAME))


def scale_sites(unit: str, root: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """Where difffit puts its scales: (full module name, module, channels) per residual branch."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    sites = []
    for rel, m in root.named_modules():
        name = _join(unit, rel)
        if isinstance(m, Attention) and isinstance(m.to_out[0], nn.Linear):
            sites.append((name, m, m.to_out[0].out_features))
        elif isinstance(m, FeedForward):
            last = [x for x in m.modules() if isinstance(x, nn.Linear)][-1]
            sites.append((name, m, last.out_features))
        elif isinstance(m, ResnetBlock2D):
            sites.append((_join(name, "conv2"), m.conv2, m.conv2.out_channels))
    return sites


class SpectralShift(nn.Module):
    """SVDiff parametrization of one weight: ``W' = U diag(ReLU(S + delta)) V^T``, delta init 0.

    The SVD of the weight (reshaped to ``out x rest`` for convolutions) is taken once here and kept
    as non-persistent buffers (they are recomputed from the base weight when the method is applied
    again). ``forward`` returns ``W + U diag(ReLU(S + delta) - S) V^T``: the same matrix in exact
    arithmetic, and bit-exact ``W`` at init.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().reshape(weight.shape[0], -1).float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        self.register_buffer("U", u, persistent=False)
        self.register_buffer("S", s, persistent=False)
        self.register_buffer("Vh", vh, persistent=False)
        self.delta = nn.Parameter(torch.zeros_like(s))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        shift = torch.relu(self.S + self.delta) - self.S
        update = (self.U * shift) @ self.Vh
        return original + update.reshape(original.shape).to(original.dtype)


# -- apply functions: one per method (or family) -------------------------------------------------
def apply_adapter(ctx: ApplyContext) -> None:
    """lora/loha/lokr/oft: one peft adapter on the attention projections of the selected units."""
    targets = [name for u in ctx.selected for name, _ in attention_projections(u, ctx.modules[u])]
    if targets:
        cfg = peft_config(ctx.spec, targets, ctx.rank, ctx.lora_alpha, ctx.adapter_kwargs)
        ctx.unet.add_adapter(cfg, adapter_name=ADAPTER_NAME)


def apply_attention(ctx: ApplyContext) -> None:
    """The existing q/k/v/out projection weights and biases of the selected units."""
    for u in ctx.selected:
        for _, proj in attention_projections(u, ctx.modules[u]):
            proj.requires_grad_(True)


def apply_difffit(ctx: ApplyContext) -> None:
    """Biases, norms and new per-channel output scales (forward hooks) of the selected units."""
    for u in ctx.selected:
        for _, m in ctx.modules[u].named_modules():
            for pname, p in m.named_parameters(recurse=False):
                if pname == "bias" or is_norm(m):
                    p.requires_grad_(True)
        for name, site, channels in scale_sites(u, ctx.modules[u]):
            ref = next(site.parameters())
            site.register_parameter(SCALE_NAME, nn.Parameter(torch.ones(channels, device=ref.device, dtype=ref.dtype)))
            ctx.hooks.append(site.register_forward_hook(_scale_hook))
            ctx.scale_names.add(f"{name}.{SCALE_NAME}")


def apply_svdiff(ctx: ApplyContext) -> None:
    """A spectral shift on every Linear and Conv2d weight of the selected units."""
    for u in ctx.selected:
        for _, m in list(ctx.modules[u].named_modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                parametrize.register_parametrization(m, "weight", SpectralShift(m.weight))


def apply_full(ctx: ApplyContext) -> None:
    """Every parameter of the selected units; the whole UNet with the all-ones mask."""
    if ctx.mask.is_all:
        ctx.unet.requires_grad_(True)
    else:
        for u in ctx.selected:
            ctx.modules[u].requires_grad_(True)


# -- has_params: does a unit hold anything the method trains? ------------------------------------
def has_attention_projection(unit_module: nn.Module) -> bool:
    """An attention q/k/v/out Linear inside (also one already wrapped by peft)."""
    for rel, m in unit_module.named_modules():
        if rel and _PROJ_RE.search(rel):
            if isinstance(m, nn.Linear) or isinstance(getattr(m, "base_layer", None), nn.Linear):
                return True
    return False


def has_difffit_params(unit_module: nn.Module) -> bool:
    """A bias, a norm parameter or a residual branch to scale inside."""
    for m in unit_module.modules():
        for pname, _ in m.named_parameters(recurse=False):
            if pname == "bias" or is_norm(m):
                return True
    return bool(scale_sites("", unit_module))


def has_linear_or_conv(unit_module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in unit_module.modules())


def has_any_param(unit_module: nn.Module) -> bool:
    return any(True for _ in unit_module.parameters())


# -- peft configs of the adapter methods ---------------------------------------------------------
def _lora_config(rank: int, alpha: float) -> tuple[type, dict[str, Any]]:
    import peft

    return peft.LoraConfig, {"r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "init_lora_weights": True}


def _loha_config(rank: int, alpha: float) -> tuple[type, dict[str, Any]]:
    import peft

    return peft.LoHaConfig, {"r": rank, "alpha": alpha, "init_weights": True}


def _lokr_config(rank: int, alpha: float) -> tuple[type, dict[str, Any]]:
    import peft

    return peft.LoKrConfig, {"r": rank, "alpha": alpha, "init_weights": True}


def _oft_config(rank: int, alpha: float) -> tuple[type, dict[str, Any]]:
    """rank is not used; peft's block size (32) unless adapter_kwargs says otherwise."""
    import peft

    return peft.OFTConfig, {"r": 0, "oft_block_size": 32, "init_weights": True}


# -- the registry -------------------------------------------------------------------------------
# Default learning rates: full, attention, lora, difffit and svdiff were coarse-tuned by hand-run
# probes on the embedded default (inverted variant, default budget, seed 0; experiments/README.md).
# Adapters with few parameters need larger steps to fit a new domain within the same budget.
# loha, lokr and oft: the highest mean reward of a log grid (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), mask
# all, thick variant, search budget, seeds 0 and 1 (both seeds pick the same lr), from
# `python experiments/lr_probe.py --methods loha lokr oft --seeds 0 1`; table in
# experiments/results/lr_probe.md.
_SPECS = (
    MethodSpec(
        name="lora",
        description="low-rank update B @ A on the attention projections (peft LoRA adapter)",
        default_lr=1e-2,
        apply=apply_adapter,
        has_params=has_attention_projection,
        peft_adapter=True,
        export="diffusers-lora",
        adapter_config=_lora_config,
    ),
    MethodSpec(
        name="loha",
        description="low-rank Hadamard-product update on the attention projections (peft LoHa adapter)",
        default_lr=3e-2,  # best reward of the grid 1e-3..1e-1 (1e-1 collapses): experiments/results/lr_probe.md
        apply=apply_adapter,
        has_params=has_attention_projection,
        peft_adapter=True,
        export="peft",
        adapter_config=_loha_config,
    ),
    MethodSpec(
        name="lokr",
        description="low-rank Kronecker-product update on the attention projections (peft LoKr adapter)",
        default_lr=3e-3,  # best reward of the grid 1e-3..1e-1: experiments/results/lr_probe.md
        apply=apply_adapter,
        has_params=has_attention_projection,
        peft_adapter=True,
        export="peft",
        adapter_config=_lokr_config,
    ),
    MethodSpec(
        name="oft",
        description="block-diagonal orthogonal rotation of the attention projections (peft OFT adapter)",
        default_lr=1e-2,  # best reward of the grid 1e-3..1e-1 (3e-2 collapses): experiments/results/lr_probe.md
        apply=apply_adapter,
        has_params=has_attention_projection,
        peft_adapter=True,
        export="peft",
        adapter_config=_oft_config,
    ),
    MethodSpec(
        name="attention",
        description="the existing q/k/v/out projection weights and biases",
        default_lr=2e-3,
        apply=apply_attention,
        has_params=has_attention_projection,
    ),
    MethodSpec(
        name="difffit",
        description="biases, norms and new per-channel scales on each residual branch (DiffFit)",
        default_lr=3e-2,
        apply=apply_difffit,
        has_params=has_difffit_params,
    ),
    MethodSpec(
        name="svdiff",
        description="shifts of the singular values of every Linear and Conv2d weight (SVDiff)",
        default_lr=3e-2,
        apply=apply_svdiff,
        has_params=has_linear_or_conv,
    ),
    MethodSpec(
        name="full",
        description="every parameter of the selected units; with mask 'all' the whole UNet (memorizing baseline)",
        default_lr=5e-4,
        apply=apply_full,
        has_params=has_any_param,
        whole_unet_with_all_mask=True,
    ),
)

METHOD_REGISTRY: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)
PEFT_ADAPTER_METHODS: tuple[str, ...] = tuple(n for n, s in METHOD_REGISTRY.items() if s.peft_adapter)


def get_method(name: str) -> MethodSpec:
    """The registry entry of ``name``; a :class:`MemrlError` listing the valid names otherwise."""
    spec = METHOD_REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise MemrlError(f"unknown PEFT method {name!r}; valid: {', '.join(METHODS)}")
    return spec


def default_lrs() -> dict[str, float]:
    """``{method: default learning rate}`` for every registered method."""
    return {n: s.default_lr for n, s in METHOD_REGISTRY.items()}
