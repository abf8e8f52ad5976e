"""Write a fine-tuned peft adapter (lora/loha/lokr/oft) so that peft or diffusers load it back.

The format is the method's registry entry's ``export`` (:class:`memrl.peft_masking.MethodSpec`):

* ``peft`` (loha, lokr, oft): peft's own format, ``adapter_config.json`` +
  ``adapter_model.safetensors`` with the keys ``PeftModel.save_pretrained`` writes
  (``base_model.model.<module>.<tensor>``, adapter name stripped). Load it with::

      from peft import PeftModel
      model = PeftModel.from_pretrained(base_unet, folder)   # base_unet: the pretrained UNet

* ``diffusers-lora`` (lora): diffusers' LoRA file ``pytorch_lora_weights.safetensors`` (the
  layout of ``StableDiffusionPipeline.save_lora_weights``: keys ``unet.<module>.lora_A.weight``,
  the LoRA config in the file's metadata), plus the peft format above in the same folder.
  Load it with any of::

      pipe.load_lora_weights(folder)                  # a StableDiffusionPipeline
      unet.load_lora_adapter(folder, prefix="unet", adapter_name="x",
                             weight_name="pytorch_lora_weights.safetensors")  # a UNet2DConditionModel
      PeftModel.from_pretrained(base_unet, folder)    # peft

  (``load_lora_adapter`` needs ``weight_name`` or ``use_safetensors=True``: by default it looks
  for a ``.bin`` file.)

Module names are the UNet's own, so the adapter fits the same UNet architecture (the pretrained
model it was trained from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from memrl.errors import MemrlError
from memrl.peft_masking.methods import PeftResult
from memrl.peft_masking.registry import ADAPTER_NAME, get_method

#: File names of the two formats.
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
DIFFUSERS_LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: Key prefix of ``PeftModel.save_pretrained`` (the PeftModel's ``base_model.model`` is the UNet).
PEFT_KEY_PREFIX = "base_model.model."
#: Key prefix of a pipeline's UNet LoRA (``StableDiffusionLoraLoaderMixin.unet_name``).
DIFFUSERS_UNET_PREFIX = "unet"


def has_adapter(unet: nn.Module, result: PeftResult) -> bool:
    """True when ``unet`` carries a peft adapter from ``result`` (an adapter method with a mask that targets something)."""
    return get_method(result.method).peft_adapter and ADAPTER_NAME in (getattr(unet, "peft_config", None) or {})


def _adapter_tensors(unet: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    if not state:
        raise MemrlError("the peft adapter has no tensors")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _json_ready(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def _save_peft_format(unet: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> list[str]:
    from safetensors.torch import save_file

    unet.peft_config[ADAPTER_NAME].save_pretrained(str(folder))
    save_file({PEFT_KEY_PREFIX + k: v for k, v in tensors.items()}, str(folder / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    return [PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME]


def _save_diffusers_lora(unet: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> list[str]:
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    metadata = _json_ready(unet.peft_config[ADAPTER_NAME].to_dict())
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        str(folder),
        unet_lora_layers=tensors,
        weight_name=DIFFUSERS_LORA_WEIGHTS_NAME,
        safe_serialization=True,
        unet_lora_adapter_metadata=metadata,
    )
    return [DIFFUSERS_LORA_WEIGHTS_NAME]


def save_adapter(unet: nn.Module, result: PeftResult, folder: str | Path) -> list[str]:
    """Write the peft adapter of ``unet`` (prepared by ``apply_peft`` -> ``result``) into ``folder``.

    The format follows the method's registry entry (module docstring). Returns the file names
    written. :class:`MemrlError` when there is no adapter to save (a method without one, or a
    mask that targets no attention projection): check :func:`has_adapter` first.
    """
    spec = get_method(result.method)
    if not spec.peft_adapter:
        raise MemrlError(f"{spec.name} is not a peft adapter method; its fine-tuned weights are saved merged into the model")
    if not has_adapter(unet, result):
        raise MemrlError(f"this UNet has no {spec.name} adapter (the mask {result.mask} selects no unit with attention projections)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _adapter_tensors(unet)
    written: list[str] = []
    if spec.export == "diffusers-lora":
        written += _save_diffusers_lora(unet, tensors, folder)
    written += _save_peft_format(unet, tensors, folder)
    return written

