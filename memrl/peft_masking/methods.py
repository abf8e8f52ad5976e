"""Apply a PEFT method to a diffusers UNet, restricted by a :class:`Mask` over named units.

:func:`apply_peft` freezes the whole UNet, then makes trainable only the method's parameters
inside the selected units (DESIGN.md section 2: bit 0 = *none* of that unit's parameters train).
Methods (:data:`METHODS`):

* ``lora`` (and ``loha``, ``lokr``, ``oft``): a peft adapter, added with diffusers'
  ``unet.add_adapter`` under the name :data:`ADAPTER_NAME`, on the attention projections
  (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of ``attn1`` and ``attn2``) of the selected units,
  targeted by exact module names so no other unit is touched. Output is unchanged at init.
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

The all-zero mask is valid with every method: nothing trains (the pretrained model).

State-dict keys change under some methods (the unit prefix is always kept, see
:func:`memrl.peft_masking.units.unit_of`): peft wraps a target ``to_q`` so its weight becomes
``to_q.base_layer.weight`` plus ``to_q.lora_A.memrl.weight`` / ``to_q.lora_B.memrl.weight``;
svdiff turns ``to_q.weight`` into ``to_q.parametrizations.weight.original`` plus
``to_q.parametrizations.weight.0.delta`` (U, S, Vh are non-persistent buffers); difffit adds
``<module>.difffit_scale``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from memrl.errors import MemrlError
from memrl.peft_masking.mask import Mask
from memrl.peft_masking.units import enumerate_units, unit_of

METHODS: tuple[str, ...] = ("lora", "loha", "lokr", "oft", "attention", "difffit", "svdiff", "full")
PEFT_ADAPTER_METHODS: tuple[str, ...] = ("lora", "loha", "lokr", "oft")
ADAPTER_NAME = "memrl"
SCALE_NAME = "difffit_scale"

_PROJ_RE = re.compile(r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$")
_APPLIED_ATTR = "_memrl_peft_method"


@dataclass
class PeftResult:
    """What :func:`apply_peft` made trainable, for the optimizer and the trainable-parameter report."""

    method: str
    mask: Mask
    trainable: list[tuple[str, nn.Parameter]]
    no_decay_names: set[str]
    scale_names: set[str]
    unet_params: int
    per_unit: dict[str, int]
    outside_units: int = 0
    hooks: list[Any] = field(default_factory=list, repr=False)

    @property
    def trainable_params(self) -> int:
        """Number of trainable scalars (adapter parameters included)."""
        return sum(p.numel() for _, p in self.trainable)

    @property
    def trainable_fraction(self) -> float:
        """``trainable_params / unet_params``, with ``unet_params`` the base UNet before any adapter."""
        return self.trainable_params / self.unet_params if self.unet_params else 0.0

    @property
    def trainable_names(self) -> list[str]:
        return [n for n, _ in self.trainable]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decayed weights, and scales/biases/norms with weight decay 0.

        Empty groups are left out; with nothing trainable (mask ``none``) the list is empty and
        there is nothing to optimize.
        """
        decay = [p for n, p in self.trainable if n not in self.no_decay_names]
        keep = [p for n, p in self.trainable if n in self.no_decay_names]
        groups = []
        if decay:
            groups.append({"params": decay, "weight_decay": float(weight_decay)})
        if keep:
            groups.append({"params": keep, "weight_decay": 0.0})
        return groups

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: method, mask, counts, per-unit trainable counts."""
        return {
            "method": self.method,
            "mask": str(self.mask),
            "selected": list(self.mask.selected),
            "bits": self.mask.bitstring,
            "trainable_params": self.trainable_params,
            "unet_params": self.unet_params,
            "trainable_fraction": self.trainable_fraction,
            "per_unit": dict(self.per_unit),
            "outside_units": self.outside_units,
            "scale_params": sum(p.numel() for n, p in self.trainable if n in self.scale_names),
        }


# -- helpers ------------------------------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix


def _attention_projections(unit: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(full name, module) of the q/k/v/out Linear projections inside one unit."""
    return [
        (_join(unit, rel), m)
        for rel, m in module.named_modules()
        if rel and _PROJ_RE.search(rel) and isinstance(m, nn.Linear)
    ]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)) or "Norm" in type(module).__name__


def _peft_config(method: str, targets: list[str], rank: int, alpha: float, extra: Mapping[str, Any]):
    import peft

    kwargs: dict[str, Any]
    if method == "lora":
        cls, kwargs = peft.LoraConfig, {"r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "init_lora_weights": True}
    elif method == "loha":
        cls, kwargs = peft.LoHaConfig, {"r": rank, "alpha": alpha, "init_weights": True}
    elif method == "lokr":
        cls, kwargs = peft.LoKrConfig, {"r": rank, "alpha": alpha, "init_weights": True}
    else:  # oft: rank is not used; peft's block size (32) unless adapter_kwargs says otherwise
        cls, kwargs = peft.OFTConfig, {"r": 0, "oft_block_size": 32, "init_weights": True}
    kwargs.update(extra)
    try:
        return cls(target_modules=targets, **kwargs)
    except (TypeError, ValueError) as e:
        raise MemrlError(f"bad adapter options for {method}: {e}") from None


def _apply_scale(output: Any, scale: torch.Tensor) -> Any:
    """Multiply the channel dim of a hooked output (dim 1 of 4-D maps, last dim of token tensors)."""
    if isinstance(output, tuple):
        return (_apply_scale(output[0], scale),) + tuple(output[1:])
    shape = [1] * output.ndim
    shape[1 if output.ndim == 4 else output.ndim - 1] = -1
    return output * scale.view(shape).to(output.dtype)


def _scale_hook(module: nn.Module, args: Any, output: Any) -> Any:
    return _apply_scale(output, getattr(module, SCALE_NAME))


def _scale_sites(unit: str, root: nn.Module) -> list[tuple[str, nn.Module, int]]:
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


# -- the entry point ----------------------------------------------------------------------------
def apply_peft(
    unet: nn.Module,
    mask: Mask,
    method: str,
    *,
    rank: int = 4,
    lora_alpha: float | None = None,
    granularity: str = "attention",
    adapter_kwargs: Mapping[str, Any] | None = None,
) -> PeftResult:
    """Freeze ``unet`` and make trainable only ``method``'s parameters inside ``mask.selected``.

    ``mask.units`` must be ``enumerate_units(unet, granularity)``. ``rank`` and ``lora_alpha``
    (default: ``rank``, i.e. scale 1) configure lora/loha/lokr; ``adapter_kwargs`` are extra
    options for the peft config (e.g. ``oft_block_size``). Modifies ``unet`` in place, once.
    ``full`` with the all-ones mask trains the ENTIRE UNet (also outside the units): the
    memorizing baseline.
    """
    if method not in METHODS:
        raise MemrlError(f"unknown PEFT method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(rank, int) or rank < 1:
        raise MemrlError(f"rank must be a positive integer, got {rank!r}")
    units = tuple(enumerate_units(unet, granularity))
    if mask.units != units:
        raise MemrlError(
            f"mask units do not match this UNet's {granularity!r} units; expected: {', '.join(units) or '(none)'}"
        )
    if unet.__dict__.get(_APPLIED_ATTR):
        raise MemrlError(f"a PEFT method ({unet.__dict__[_APPLIED_ATTR]}) was already applied to this UNet; use a fresh one")

    unet_params = sum(p.numel() for p in unet.parameters())
    unet.requires_grad_(False)
    modules = dict(unet.named_modules())
    selected = mask.selected
    scale_names: set[str] = set()
    hooks: list[Any] = []

    if method in PEFT_ADAPTER_METHODS:
        targets = [name for u in selected for name, _ in _attention_projections(u, modules[u])]
        if targets:
            alpha = float(lora_alpha) if lora_alpha is not None else float(rank)
            unet.add_adapter(_peft_config(method, targets, rank, alpha, adapter_kwargs or {}), adapter_name=ADAPTER_NAME)
    elif method == "attention":
        for u in selected:
            for _, proj in _attention_projections(u, modules[u]):
                proj.requires_grad_(True)
    elif method == "difffit":
        for u in selected:
            for _, m in modules[u].named_modules():
                for pname, p in m.named_parameters(recurse=False):
                    if pname == "bias" or _is_norm(m):
                        p.requires_grad_(True)
            for name, site, channels in _scale_sites(u, modules[u]):
                ref = next(site.parameters())
                site.register_parameter(SCALE_NAME, nn.Parameter(torch.ones(channels, device=ref.device, dtype=ref.dtype)))
                hooks.append(site.register_forward_hook(_scale_hook))
                scale_names.add(f"{name}.{SCALE_NAME}")
    elif method == "svdiff":
        for u in selected:
            for _, m in list(modules[u].named_modules()):
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    parametrize.register_parametrization(m, "weight", SpectralShift(m.weight))
    elif method == "full":
        if mask.is_all:
            unet.requires_grad_(True)
        else:
            for u in selected:
                modules[u].requires_grad_(True)

    unet.__dict__[_APPLIED_ATTR] = method
    return _result(unet, mask, method, unet_params, scale_names, hooks)


def _result(unet: nn.Module, mask: Mask, method: str, unet_params: int, scale_names: set[str], hooks: list[Any]) -> PeftResult:
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    no_decay = set(scale_names)
    for mname, m in unet.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.requires_grad and (pname == "bias" or _is_norm(m)):
                no_decay.add(_join(mname, pname))
    per_unit = {u: 0 for u in mask.units}
    outside = 0
    for n, p in trainable:
        u = unit_of(n, mask.units)
        if u is None:
            outside += p.numel()
        else:
            per_unit[u] += p.numel()
    leaked = [u for u, b in zip(mask.units, mask.bits) if not b and per_unit[u]]
    if leaked or (outside and not (method == "full" and mask.is_all)):
        raise RuntimeError(f"memrl bug: {method} made parameters trainable outside the mask ({leaked or 'outside units'})")
    return PeftResult(method, mask, trainable, no_decay, scale_names, unet_params, per_unit, outside, hooks)


# -- saving and loading the fine-tuned part -----------------------------------------------------
def adapter_state_dict(unet: nn.Module, result: PeftResult) -> dict[str, torch.Tensor]:
    """Copies of just the trainable tensors, keyed as in ``unet.state_dict()`` (a saved adapter).

    To restore: build the same base UNet, ``apply_peft`` with the same mask and method, then
    :func:`load_adapter_state_dict`.
    """
    state = unet.state_dict()
    return {n: state[n].detach().clone() for n, _ in result.trainable}


def load_adapter_state_dict(unet: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load tensors saved by :func:`adapter_state_dict` into a UNet prepared with the same ``apply_peft``."""
    known = set(unet.state_dict())
    unknown = [k for k in state if k not in known]
    if unknown:
        raise MemrlError(
            f"adapter has {len(unknown)} tensor(s) this UNet lacks (e.g. {unknown[0]}); apply the same method and mask first"
        )
    unet.load_state_dict(dict(state), strict=False)


def peft_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The peft adapter in peft/diffusers format (``get_peft_model_state_dict``: adapter name stripped,
    e.g. ``...to_q.lora_A.weight``), for the peft methods; diffusers' ``unet.save_lora_adapter`` also works.
    """
    from peft import get_peft_model_state_dict

    if ADAPTER_NAME not in (getattr(unet, "peft_config", None) or {}):
        raise MemrlError(f"this UNet has no peft adapter (methods with one: {', '.join(PEFT_ADAPTER_METHODS)}, non-empty mask)")
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
