"""memrl's results in other tools' formats, and listings of what memrl can work with.

* :func:`export` (``memrl export``): a training run's best mask (``RUN/best_mask.json``) or a
  replay's mask and fine-tuned adapter (``OUT/report.json``) as a plain JSON mask, a peft
  ``LoraConfig`` folder targeting the attention projections of the selected units, or a diffusers
  LoRA folder (``StableDiffusionPipeline.load_lora_weights``).
* :func:`unit_table` (``memrl units``): a model's maskable units with their parameter counts and
  what each method would train in each unit.
* :func:`dataset_listing` (``memrl datasets``): the built-in dataset variants and the user formats.

The logic lives in :mod:`memrl.interop.export`, the argparse commands in :mod:`memrl.interop.cli`.
"""

from memrl.interop.export import (
    FORMATS,
    MASK_FILE,
    MASK_FORMAT,
    ExportSource,
    dataset_listing,
    export,
    load_unet_structure,
    read_source,
    unit_table,
)

__all__ = [
    "FORMATS",
    "MASK_FILE",
    "MASK_FORMAT",
    "ExportSource",
    "dataset_listing",
    "export",
    "load_unet_structure",
    "read_source",
    "unit_table",
]
