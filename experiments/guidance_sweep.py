"""Prompt accuracy and FID of a pretrained model across classifier-free guidance scales.

    python experiments/guidance_sweep.py [--model runs/digits-base] [--scales 1 1.5 2 2.5 3 4]

Uses the same measurement as ``memrl pretrain`` (:func:`memrl.training.pretrain.measure`: 25
samples per digit for the prompts "digit k", classified by the feature network; FID against
the public held-out split), once per guidance scale. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys

from memrl.models.feature_net import FeatureNet
from memrl.models.pipeline import DiffusionModel
from memrl.training.pretrain import PretrainConfig, measure


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="model folder written by memrl pretrain")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0, 4.0], help="guidance scales")
    ap.add_argument("--seed", type=int, default=0, help="seed of the samples (memrl pretrain measures with its own seed, default 0)")
    args = ap.parse_args()

    model = DiffusionModel.from_pretrained(args.model).eval()
    feature_net = FeatureNet.from_pretrained(f"{args.model}/feature_net").eval()
    print("| guidance | prompt accuracy | FID | samples |")
    print("|---|---|---|---|")
    for g in args.scales:
        m, _ = measure(model, feature_net, PretrainConfig(guidance_scale=g, seed=args.seed))
        print(f"| {g:g} | {m['prompt_accuracy']:.3f} | {m['fid']:.2f} | {m['prompt_samples']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
