"""Mask-restricted parameter-efficient fine-tuning of a diffusers UNet (docs/design.md, section 2).

``enumerate_units`` names the maskable units, ``Mask`` is a binary mask over them, the methods
are the entries of ``METHOD_REGISTRY`` (``get_method``), and ``apply_peft`` makes one method's
parameters trainable inside the selected units only; ``trainable_units`` says in which units a
method has anything to train. ``memrl.peft_masking.export.save_adapter`` writes a peft adapter
that peft / diffusers load back.
"""

from memrl.peft_masking.mask import Mask
from memrl.peft_masking.methods import (
    PeftResult,
    adapter_state_dict,
    apply_peft,
    load_adapter_state_dict,
    peft_state_dict,
    trainable_units,
)
from memrl.peft_masking.registry import (
    ADAPTER_NAME,
    METHOD_REGISTRY,
    METHODS,
    PEFT_ADAPTER_METHODS,
    MethodSpec,
    get_method,
)
from memrl.peft_masking.units import GRANULARITIES, enumerate_units, unit_of

__all__ = [
    "ADAPTER_NAME",
    "GRANULARITIES",
    "METHODS",
    "METHOD_REGISTRY",
    "PEFT_ADAPTER_METHODS",
    "Mask",
    "MethodSpec",
    "PeftResult",
    "adapter_state_dict",
    "apply_peft",
    "enumerate_units",
    "get_method",
    "load_adapter_state_dict",
    "peft_state_dict",
    "trainable_units",
    "unit_of",
]
