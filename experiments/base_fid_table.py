"""Base model vs full fine-tuning FID on every built-in variant (the domain shift is real).

    python experiments/base_fid_table.py [--model runs/digits-base] [--preset default] [--seed 0]

For each variant: FID/KID of the pretrained model (mask ``none``: no fine-tuning) and of full
fine-tuning on the variant's private split, both against the variant's held-out real images.
Through the cache, so a rerun is instant. Prints a markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import sys

from memrl.data.loaders import builtin_names, load_dataset
from memrl.evaluation import Evaluator, preset
from memrl.utils.io import write_text_atomic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder")
    ap.add_argument("--preset", default="default", help="evaluation preset")
    ap.add_argument("--seed", type=int, default=0, help="seed")
    ap.add_argument("--cache", default="runs/effect/evaluations.sqlite", help="evaluation cache")
    ap.add_argument("--out", default="experiments/results/base_fid_table.md", help="markdown output")
    ap.add_argument("--device", default="cpu", help="torch device")
    args = ap.parse_args()

    ev = Evaluator(args.model, device=args.device, cache=args.cache)
    lines = [
        f"Preset `{args.preset}`, seed {args.seed}; FID on the feature network's 64-d features against each variant's held-out images.",
        "",
        "| variant | train images | held-out | base FID | base KID | full-FT FID | full-FT KID | base / full FID | base nn_own_rate | full-FT nn_own_rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in builtin_names():
        data = load_dataset(name, ev.model.image_size, ev.model.image_channels)
        base = ev.evaluate(data, "full", "none", preset(args.preset), seed=args.seed, with_reward=False)
        full = ev.evaluate(data, "full", "all", preset(args.preset), seed=args.seed, with_reward=False)
        lines.append(
            f"| {name} | {len(data.train)} | {len(data.heldout)} | {base['fid']:.2f} | {base['kid']:.3f} | "
            f"{full['fid']:.2f} | {full['kid']:.3f} | {base['fid'] / max(full['fid'], 1e-9):.1f}x | "
            f"{base['nn_own_rate']:.3f} | {full['nn_own_rate']:.3f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    write_text_atomic(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
