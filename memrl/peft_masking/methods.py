"""Apply a PEFT method to a diffusers UNet, restricted by a :class:`Mask` over named units.

:func:`apply_peft` freezes the whole UNet, then calls the method's apply function (its entry in
:data:`memrl.peft_masking.registry.METHOD_REGISTRY`, where the methods are described) to make
trainable only the method's parameters inside the selected units (docs/design.md, section 2: bit 0 =
*none* of that unit's parameters train). :func:`trainable_units` says in which units a method
has anything to train at all.

The all-zero mask is valid with every method: nothing trains (the pretrained model).

State-dict keys change under some methods (the unit prefix is always kept, see
:func:`memrl.peft_masking.units.unit_of`): peft wraps a target ``to_q`` so its weight becomes
``to_q.base_layer.weight`` plus ``to_q.lora_A.memrl.weight`` / ``to_q.lora_B.memrl.weight``;
svdiff turns ``to_q.weight`` into ``to_q.parametrizations.weight.original`` plus
``to_q.parametrizations.weight.0.delta`` (U, S, Vh are non-persistent buffers); difffit adds
``<module>.difffit_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from memrl.errors import MemrlError
from memrl.peft_masking.mask import Mask
from memrl.peft_masking.registry import (
    ADAPTER_NAME,
    METHODS,  # noqa: F401 - re-exported (derived from the registry)
    PEFT_ADAPTER_METHODS,
    SCALE_NAME,  # noqa: F401 - re-exported (merge.py)
    ApplyContext,
    SpectralShift,  # noqa: F401 - re-exported
    get_method,
    is_norm,
)
from memrl.peft_masking.units import enumerate_units, unit_of

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
    spec = get_method(method)
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
    ctx = ApplyContext(
        unet=unet,
        mask=mask,
        spec=spec,
        modules=dict(unet.named_modules()),
        rank=rank,
        lora_alpha=float(lora_alpha) if lora_alpha is not None else float(rank),
        adapter_kwargs=dict(adapter_kwargs or {}),
    )
    spec.apply(ctx)
    unet.__dict__[_APPLIED_ATTR] = method
    return _result(unet, mask, method, unet_params, ctx.scale_names, ctx.hooks)


def trainable_units(
    unet: nn.Module,
    units: Iterable[str] | Mask | None,
    method: str,
    granularity: str = "attention",
) -> tuple[str, ...]:
    """The units (of ``units``, in their order) in which ``method`` has anything to train.

    ``units``: unit names of ``enumerate_units(unet, granularity)`` (``None``: all of them; a
    :class:`Mask`: its selected units). E.g. lora/loha/lokr/oft/attention have nothing to train
    in a unit without attention projections (``down_blocks.0`` of the embedded model at block
    granularity). Agrees with ``apply_peft(...).per_unit[u] > 0``; ``unet`` is the base UNet
    (it is only inspected, never changed).
    """
    spec = get_method(method)
    valid = tuple(enumerate_units(unet, granularity))
    if units is None:
        names = valid
    elif isinstance(units, Mask):
        names = units.selected
    else:
        names = tuple(units)
    unknown = [u for u in names if u not in valid]
    if unknown:
        raise MemrlError(
            f"unknown {granularity!r} unit(s) {', '.join(unknown)}; valid: {', '.join(valid) or '(none)'}"
        )
    modules = dict(unet.named_modules())
    return tuple(u for u in names if spec.has_params(modules[u]))


def _result(unet: nn.Module, mask: Mask, method: str, unet_params: int, scale_names: set[str], hooks: list[Any]) -> PeftResult:
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    no_decay = set(scale_names)
    for mname, m in unet.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.requires_grad and (pname == "bias" or is_norm(m)):
                no_decay.add(f"{mname}.{pname}" if mname else pname)
    per_unit = {u: 0 for u in mask.units}
    outside = 0
    for n, p in trainable:
        u = unit_of(n, mask.units)
        if u is None:
            outside += p.numel()
        else:
            per_unit[u] += p.numel()
    leaked = [u for u, b in zip(mask.units, mask.bits) if not b and per_unit[u]]
    if leaked or (outside and not (get_method(method).whole_unet_with_all_mask and mask.is_all)):
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
    """The peft adapter's tensors as ``get_peft_model_state_dict`` gives them (adapter name stripped,
    e.g. ``...to_q.lora_A.weight``, no ``base_model.model.`` prefix), for the peft methods.

    To write an adapter that peft or diffusers load back, use
    :func:`memrl.peft_masking.export.save_adapter`.
    """
    from peft import get_peft_model_state_dict

    if ADAPTER_NAME not in (getattr(unet, "peft_config", None) or {}):
        raise MemrlError(f"this UNet has no peft adapter (methods with one: {', '.join(PEFT_ADAPTER_METHODS)}, non-empty mask)")
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
