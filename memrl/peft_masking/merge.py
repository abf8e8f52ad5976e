"""Fold a fine-tuned PEFT method back into plain UNet weights.

After fine-tuning, users want a model that diffusers loads directly, without memrl. This module
computes the *effective* weight of every tensor of the original ``UNet2DConditionModel``:

* peft adapters (lora/loha/lokr/oft): merged into their base layers (peft's ``merge``);
* svdiff: the parametrized weight ``U diag(ReLU(S + delta)) V^T``;
* difffit: the per-channel scales multiplied into the weight and bias that produce the scaled
  output (attention ``to_out``, the feed-forward's last linear, the resnet's ``conv2``);
* attention / full: the trained tensors themselves.

The result loads with ``strict=True`` into a fresh UNet built from the same config, so
``UNet2DConditionModel.from_pretrained`` of the saved folder gives the fine-tuned model.
"""

from __future__ import annotations

import torch
from torch import nn

from memrl.peft_masking.methods import SCALE_NAME, PeftResult


def _effective_param(module: nn.Module, pname: str) -> torch.Tensor:
    """The tensor ``module.<pname>`` acts with, through peft wrappers and parametrizations."""
    base = getattr(module, "base_layer", None)
    if base is not None and pname in ("weight", "bias"):
        return _effective_param(base, pname)
    return getattr(module, pname).detach()


def _fold_scale(state: dict[str, torch.Tensor], prefix: str, site: nn.Module, scale: torch.Tensor) -> None:
    """Multiply difffit's output scale of ``site`` into the tensors that produce that output."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention

    if isinstance(site, Attention):
        if getattr(site, "residual_connection", False) or getattr(site, "rescale_output_factor", 1.0) != 1.0:
            raise NotImplementedError(f"cannot fold a difffit scale through {prefix} (residual inside the attention)")
        target = f"{prefix}.to_out.0"
    elif isinstance(site, FeedForward):
        names = [n for n, m in site.named_modules() if isinstance(m, nn.Linear) or hasattr(m, "base_layer")]
        target = f"{prefix}.{names[-1]}"
    else:  # a conv / linear whose output is scaled
        target = prefix
    w, b = f"{target}.weight", f"{target}.bias"
    shape = [-1] + [1] * (state[w].ndim - 1)
    state[w] = state[w] * scale.view(shape).to(state[w].dtype)
    if b in state:
        state[b] = state[b] * scale.to(state[b].dtype)


@torch.no_grad()
def merged_state_dict(unet: nn.Module, result: PeftResult, base_keys: list[str]) -> dict[str, torch.Tensor]:
    """Effective tensors for every key of the original UNet's ``state_dict`` (``base_keys``)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover
        BaseTunerLayer = ()  # type: ignore[assignment]
    for m in unet.modules():
        if BaseTunerLayer and isinstance(m, BaseTunerLayer) and not m.merged:
            m.merge(safe_merge=True)
    modules = dict(unet.named_modules())
    state: dict[str, torch.Tensor] = {}
    for key in base_keys:
        mod_name, _, pname = key.rpartition(".")
        m = modules[mod_name] if mod_name else unet
        state[key] = _effective_param(m, pname).clone()
    for name in result.scale_names:
        site_name = name[: -len(SCALE_NAME) - 1]
        _fold_scale(state, site_name, modules[site_name], getattr(modules[site_name], SCALE_NAME).detach())
    return state
