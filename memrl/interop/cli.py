"""``memrl export``, ``memrl units`` and ``memrl datasets`` (logic in :mod:`memrl.interop.export`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_MODEL = os.environ.get("MEMRL_MODEL", "runs/digits-base")


def add_commands(sub: argparse._SubParsersAction) -> None:
    from memrl.interop.export import FORMATS
    from memrl.peft_masking import GRANULARITIES, METHODS

    e = sub.add_parser(
        "export",
        help="export a run's or replay's mask / fine-tuned adapter as JSON, a peft LoraConfig or diffusers LoRA weights",
        description="Export the mask of SOURCE (a memrl train run folder with best_mask.json, a memrl replay folder with "
        "report.json, one of those files, or a mask.json from this command) into the folder --out. "
        "json: mask.json (unit names, bits, selected units, method, lr, dataset, source). "
        "peft: a peft LoraConfig (adapter_config.json) targeting exactly the attention projections (to_q, to_k, to_v, "
        "to_out.0) of the selected units, plus the run's own loha/lokr/oft config in OUT/<method>/. "
        "diffusers: a replay's fine-tuned LoRA weights (pytorch_lora_weights.safetensors) for "
        "StableDiffusionPipeline.load_lora_weights(OUT). Everything is checked before anything is written; "
        "the folder is written atomically.",
    )
    e.add_argument("source", metavar="SOURCE", help="run folder (best_mask.json), replay folder (report.json), or one of those JSON files")
    e.add_argument("--format", required=True, choices=FORMATS, help="what to write: json (the mask), peft (LoraConfig of the selected units) or diffusers (a replay's LoRA weights)")
    e.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --force)")
    e.add_argument("--dataset", default=None, help="a training run's per-dataset best mask for this dataset (default: the overall best)")
    e.add_argument("--pretrained", "--model", dest="pretrained", default=None, help="base model folder whose UNet names the modules (default: env.pretrained of the run's config.yaml, or a replay's model/)")
    e.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    e.add_argument("--json", action="store_true", help="print what was written as JSON")
    e.set_defaults(func=_cmd_export)

    u = sub.add_parser(
        "units",
        help="list a model's maskable units with parameter counts per method",
        description="One row per maskable unit of the model's UNet, in mask order: its parameters and, for each PEFT "
        "method, the parameters that method trains if that unit alone is selected (0: the method has nothing to "
        "train there). The UNet is built from its config without reading weights.",
    )
    u.add_argument("--pretrained", "--model", dest="pretrained", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL}, or $MEMRL_MODEL)")
    u.add_argument("--granularity", default="attention", choices=GRANULARITIES, help="unit granularity: attention (transformer blocks), attention+resnet, or block (default attention)")
    u.add_argument("--methods", default=None, help=f"comma-separated methods to count (default all: {','.join(METHODS)})")
    u.add_argument("--rank", type=int, default=4, help="adapter rank for lora/loha/lokr counts (default 4, as in fine-tuning)")
    u.add_argument("--json", action="store_true", help="print the table as JSON")
    u.set_defaults(func=_cmd_units)

    d = sub.add_parser(
        "datasets",
        help="list the built-in datasets and the formats accepted for your own data",
        description="The built-in dataset variants (with train / held-out sizes), the pretraining split, and the "
        "formats of your own data that --dataset accepts.",
    )
    d.add_argument("--json", action="store_true", help="print the listing as JSON")
    d.set_defaults(func=_cmd_datasets)


def _warn(messages: list[str]) -> None:
    for m in messages:
        print(f"memrl: warning: {m}", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> int:
    from memrl.interop.export import export

    result = export(args.source, args.format, args.out, dataset=args.dataset, pretrained=args.pretrained, force=args.force)
    _warn(result["warnings"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        units = ", ".join(result["selected"]) or "none"
        print(f"exported {result['format']} of {result['source']} ({result['method']}, dataset {result['dataset']}, units: {units})")
        print(f"to {result['out']}: {', '.join(result['files'])}")
    return 0


def _cmd_units(args: argparse.Namespace) -> int:
    from memrl.interop.export import format_unit_table, unit_table

    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    table = unit_table(args.pretrained, args.granularity, methods, rank=args.rank)
    print(json.dumps(table, indent=2) if args.json else format_unit_table(table))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from memrl.interop.export import dataset_listing, format_dataset_listing

    listing = dataset_listing()
    print(json.dumps(listing, indent=2) if args.json else format_dataset_listing(listing))
    return 0
