"""Report of a ``memrl train`` run: the policy against random masks, and how training went.

    python experiments/agent_report.py [--run runs/agent] [--block 32] [--figure PATH] [--report PATH]

A thin wrapper over :mod:`memrl.reporting.report` (the same content, and more, is in the page
``memrl report RUN`` writes). Reads only the run folder (``policy_eval.json``,
``evaluations.csv``); computes nothing new. Prints, per dataset, the policy's reward against the
random masks (with their masks, FID and nn_own_rate) and full fine-tuning's FID on the same
budget; for training datasets, how many of the distinct masks tried during training scored better
than the policy's final choice; the mean reward per block of training evaluations; the cost of
fresh evaluations. With ``--figure`` it also saves the mask-bit frequency heatmap (share of each
rollout's proposals per unit); with ``--report`` the whole page (HTML, or Markdown for ``.md``).
"""

from __future__ import annotations

import argparse
import sys

from memrl.errors import MemrlError
from memrl.reporting.report import build_report, save_mask_heatmap, text_summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/agent", help="run folder written by memrl train")
    ap.add_argument("--block", type=int, default=32, help="training evaluations per block for the mean-reward trend")
    ap.add_argument("--rollout", type=int, default=8, help="evaluations per column of the heatmap (PPO n_steps x n_envs)")
    ap.add_argument("--figure", default=None, help="save the mask-bit frequency heatmap here (PNG)")
    ap.add_argument("--report", default=None, help="also write the full report page here (as memrl report RUN --out PATH)")
    args = ap.parse_args(argv)

    try:
        print(text_summary(args.run, block=args.block))
        if args.figure:
            save_mask_heatmap(args.run, args.figure, rollout=args.rollout)
            print(f"wrote {args.figure}")
        if args.report:
            print(f"wrote {build_report(args.run, args.report, block=args.block, rollout=args.rollout)}")
    except MemrlError as exc:
        print(f"agent_report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
