"""Report of a ``memrl train`` run: the policy against random masks, and how training went.

    python experiments/agent_report.py [--run runs/agent] [--block 32] [--figure PATH]

Reads only the run folder (``policy_eval.json``, ``evaluations.csv``); computes nothing new.
Prints, per dataset, the policy's reward against the random masks (with their masks, FID and
nn_own_rate) and full fine-tuning's FID on the same budget; for training datasets, how many of
the distinct masks tried during training scored better than the policy's final choice; the mean
reward per block of training evaluations; the cost of fresh evaluations. With ``--figure`` it
also saves the mask-bit frequency heatmap (share of each rollout's proposals per unit).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/agent", help="run folder written by memrl train")
    ap.add_argument("--block", type=int, default=32, help="training evaluations per block for the mean-reward trend")
    ap.add_argument("--rollout", type=int, default=8, help="evaluations per column of the heatmap (PPO n_steps x n_envs)")
    ap.add_argument("--figure", default=None, help="save the mask-bit frequency heatmap here (PNG)")
    args = ap.parse_args()

    run = Path(args.run)
    evals = json.loads((run / "policy_eval.json").read_text())
    with open(run / "evaluations.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    print(f"| dataset | held-out | policy reward | random mean ± std (n) | policy mask | policy FID / nn_own_rate | full-FT FID | masks tried in training scoring better |")
    print("|---|---|---|---|---|---|---|---|")
    for name, c in evals.items():
        tried = {r["mask_bits"]: float(r["reward"]) for r in rows if r["dataset"] == name and r.get("failed") != "True"}
        better = f"{sum(v > c['policy_reward'] for v in tried.values())} of {len(tried)}" if tried else "-"
        full_fid = c.get("full_finetune_fid")
        print(
            f"| {name} | {'yes' if c['heldout'] else 'no'} | {c['policy_reward']:.3f} | {c['random_reward_mean']:.3f} ± {c['random_reward_std']:.3f} ({c['random_masks']}) | "
            f"{c['policy_mask']} | {c['policy_fid']:.1f} / {c['policy_nn_own_rate']:.3f} | {full_fid if full_fid is None else f'{full_fid:.1f}'} | {better} |"
        )
    print("\nrandom masks per dataset (mask: reward, FID, nn_own_rate):")
    for name, c in evals.items():
        rs = c.get("random", [])
        print(f"  {name}: " + "; ".join(f"{r['mask']}: {r['reward']:.3f}, {r['fid']:.1f}, {r['nn_own_rate']:.3f}" for r in rs))
        if rs:
            nn = [r["nn_own_rate"] for r in rs]
            print(f"    nn_own_rate of the random masks: {min(nn):.3f} to {max(nn):.3f}")

    rewards = np.array([float(r["reward"]) for r in rows])
    blocks = [rewards[i : i + args.block].mean() for i in range(0, len(rewards), args.block)]
    print(f"\nmean training reward per block of {args.block} evaluations: " + ", ".join(f"{b:.3f}" for b in blocks))
    fresh = np.array([float(r["seconds"]) for r in rows if r["cached"] == "False"])
    if fresh.size:
        print(f"fresh evaluations: {fresh.size} of {len(rows)}, {fresh.min():.1f} to {fresh.max():.1f} s, mean {fresh.mean():.1f} s")

    if args.figure:
        from memrl.agents import plots

        units = json.loads((run / "best_mask.json").read_text())["units"]
        bits = np.array([[int(b) for b in r["mask_bits"]] for r in rows])
        freq = np.stack([bits[i : i + args.rollout].mean(0) for i in range(0, len(bits), args.rollout)], axis=1)
        steps = list(range(args.rollout, len(bits) + args.rollout, args.rollout))[: freq.shape[1]]
        plots.save(plots.mask_frequency_heatmap(freq, units, steps), args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
