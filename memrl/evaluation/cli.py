"""``memrl evaluate``: one masked fine-tune and its metrics, as one JSON object."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_MODEL = os.environ.get("MEMRL_MODEL", "runs/digits-base")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from memrl.peft_masking import METHODS

    p = sub.add_parser(
        "evaluate",
        help="fine-tune with one PEFT mask and measure quality, memorization and the reward",
        description="Fine-tune the pretrained model with METHOD inside the units selected by MASK, then measure "
        "FID/KID, the noise-norm score, nearest-neighbour memorization, the extraction attack and the reward "
        "(against full fine-tuning with the same budget, computed once and cached).",
    )
    p.add_argument("--method", required=True, choices=list(METHODS), help="PEFT method applied inside the selected units")
    p.add_argument("--mask", required=True, help="units to train: comma-separated unit names, a bit string, 'all' or 'none'")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's tuned default)")
    p.add_argument("--seed", type=int, default=0, help="seed for fine-tuning, sampling and metrics")
    p.add_argument("--preset", default="default", choices=["quick", "search", "default"], help="budget: default (~1 min on 2 cores), search (~20 s, the agent's training budget) or quick (seconds)")
    p.add_argument("--dataset", default="inverted", help="built-in variant name, image folder or CSV of path + caption (default: inverted)")
    p.add_argument("--pretrained", "--model", dest="pretrained", default=DEFAULT_MODEL, help=f"pretrained model folder (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="folder for the sample grid and the nearest-neighbour picture (and result.json)")
    p.add_argument("--cache", default=None, help="SQLite cache file for evaluations and the reference run (default: OUT/../evaluations.sqlite)")
    p.add_argument("--lam", type=float, default=None, help="reward weight of the memorization term (default 1)")
    p.add_argument("--mu", type=float, default=None, help="reward weight of the trainable fraction (default 0.1)")
    p.add_argument("--mem-metric", default=None, choices=["nn_own_rate", "replication_rate", "noise_norm_mean", "extraction_rate"], help="memorization metric used in the reward (default nn_own_rate)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 4)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ...")
    p.add_argument("--json", action="store_true", help="print only the JSON object (no progress, no summary line)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator, preset
    from memrl.utils.io import write_json_atomic

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.parent / "evaluations.sqlite"
    ev = Evaluator(args.pretrained, device=device, cache=cache)
    data = load_dataset(args.dataset, ev.model.image_size, ev.model.image_channels)
    cfg = preset(args.preset)
    rw = {k: v for k, v in {"lam": args.lam, "mu": args.mu, "mem_metric": args.mem_metric}.items() if v is not None}
    if rw:
        cfg = replace(cfg, reward=replace(cfg.reward, **rw))
    if args.rank is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, rank=args.rank))
    result = ev.evaluate(data, args.method, args.mask, cfg, lr=args.lr, seed=args.seed, out_dir=out, progress=not args.json)
    result.pop("cached", None)
    write_json_atomic(out / "result.json", result)
    print(json.dumps(result))
    return 0
