"""Mask-restricted parameter-efficient fine-tuning of a diffusers UNet (DESIGN.md section 2).

``enumerate_units`` names the maskable units, ``Mask`` is a binary mask over them, and
``apply_peft`` makes one PEFT method's parameters trainable inside the selected units only.
"""

from memrl.peft_masking.mask import Mask
from memrl.peft_masking.methods import (
    ADAPTER_NAME,
    METHODS,
    PEFT_ADAPTER_METHODS,
    PeftResult,
    adapter_state_dict,
    apply_peft,
    load_adapter_state_dict,
    peft_state_dict,
)
from memrl.peft_masking.units import GRANULARITIES, enumerate_units, unit_of

__all__ = [
    "ADAPTER_NAME",
    "GRANULARITIES",
    "METHODS",
    "PEFT_ADAPTER_METHODS",
    "Mask",
    "PeftResult",
    "adapter_state_dict",
    "apply_peft",
    "enumerate_units",
    "load_adapter_state_dict",
    "peft_state_dict",
    "unit_of",
]
