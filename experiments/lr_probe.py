"""Learning-rate probe: FID, nn_own_rate and reward per (method, learning rate), mask ``all``.

    OMP_NUM_THREADS=1 python experiments/lr_probe.py --methods loha lokr oft --lrs 1e-3 3e-3 1e-2 3e-2 1e-1 --seeds 0 1

(defaults: ``--model runs/digits-base --dataset thick --preset search --seeds 0 --granularity block
--cache runs/lr_probe/evaluations.sqlite --out experiments/results/lr_probe.md``.)

For each method, every learning rate of the (log) grid is evaluated once per seed with
:class:`memrl.evaluation.Evaluator` (fine-tune inside mask ``all``, then the quality and
memorization metrics and the reward against full fine-tuning with the same budget and seed).
Every evaluation goes through the SQLite cache, so an interrupted probe resumes where it stopped
and a rerun reprints the table at once. A fine-tune that diverges counts as a failed seed.

The markdown table (mean ± std over the seeds) is printed and written to ``--out``; the best
learning rate per method (the highest mean reward among those with no failed seed) is in bold.
Those are the ``default_lr`` values of loha, lokr and oft in ``memrl/peft_masking/registry.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from memrl.data.loaders import load_dataset
from memrl.errors import EvaluationFailed
from memrl.evaluation import Evaluator, preset
from memrl.peft_masking import METHODS, get_method

DEFAULTS = {
    "model": "runs/digits-base",
    "dataset": "thick",
    "preset": "search",
    "mask": "all",
    "granularity": "block",
    "cache": "runs/lr_probe/evaluations.sqlite",
    "out": "experiments/results/lr_probe.md",
}


def _stat(values: list[float], spec: str) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(float(np.mean(vals)), spec)} ± {format(float(np.std(vals)), spec)}"


def _command(args: argparse.Namespace) -> str:
    cmd = f"OMP_NUM_THREADS=1 python experiments/lr_probe.py --methods {' '.join(args.methods)} --lrs {' '.join(f'{x:g}' for x in args.lrs)}"
    if args.seeds != [0]:
        cmd += " --seeds " + " ".join(str(s) for s in args.seeds)
    for k, default in DEFAULTS.items():
        if getattr(args, k) != default:
            cmd += f" --{k} {getattr(args, k)}"
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["loha", "lokr", "oft"], choices=list(METHODS), help="PEFT methods to probe")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1], help="learning-rate grid (log spaced)")
    ap.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0], help="fine-tuning / sampling seeds (default 0)")
    ap.add_argument("--model", default=DEFAULTS["model"], help="pretrained model folder (memrl pretrain)")
    ap.add_argument("--dataset", default=DEFAULTS["dataset"], help="dataset: built-in variant, image folder or CSV (default thick)")
    ap.add_argument("--preset", default=DEFAULTS["preset"], choices=["quick", "search", "default"], help="evaluation budget (default search)")
    ap.add_argument("--mask", default=DEFAULTS["mask"], help="units to train (default all)")
    ap.add_argument("--granularity", default=DEFAULTS["granularity"], help="maskable units: block (as in experiments/), attention, attention+resnet")
    ap.add_argument("--cache", default=DEFAULTS["cache"], help="evaluation cache (resumable)")
    ap.add_argument("--out", default=DEFAULTS["out"], help="markdown file for the table")
    ap.add_argument("--device", default="cpu", help="torch device")
    args = ap.parse_args(argv)

    t0 = time.time()
    ev = Evaluator(args.model, device=args.device, cache=args.cache, granularity=args.granularity)
    data = load_dataset(args.dataset, ev.model.image_size, ev.model.image_channels)
    cfg = preset(args.preset)

    rows: list[dict] = []
    refs: dict[int, dict] = {}
    for method in args.methods:
        for lr in args.lrs:
            row: dict = {"method": method, "lr": lr, "runs": [], "failed": 0}
            for seed in args.seeds:
                try:
                    r = ev.evaluate(data, method, args.mask, cfg, lr=lr, seed=seed)
                except EvaluationFailed as exc:
                    row["failed"] += 1
                    print(f"[{time.time() - t0:7.1f}s] {method:<9} lr {lr:<8g} seed {seed} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                refs[seed] = r.get("reference", refs.get(seed))
                row["runs"].append(r)
                print(
                    f"[{time.time() - t0:7.1f}s] {method:<9} lr {lr:<8g} seed {seed} fid {r['fid']:8.2f} "
                    f"nn_own {r['nn_own_rate']:.3f} reward {r['reward']:.3f}{' (cached)' if r.get('cached') else ''}",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(row)

    best: dict[str, float] = {}
    for method in args.methods:
        ok = [x for x in rows if x["method"] == method and x["runs"] and not x["failed"]]
        if ok:
            best[method] = max(ok, key=lambda x: float(np.mean([r["reward"] for r in x["runs"]])))["lr"]

    n = len(args.seeds)
    ref_text = "; ".join(
        f"seed {s}: FID {refs[s]['fid']:.2f}, nn_own_rate {refs[s]['nn_own_rate']:.3f}" for s in args.seeds if refs.get(s)
    )
    lines = [
        "# Learning-rate probe",
        "",
        f"`{_command(args)}`",
        "",
        f"Model `{args.model}`, dataset `{data.name}`, preset `{args.preset}`, seeds {args.seeds}, mask `{args.mask}`, "
        f"units `{args.granularity}`; " + ("mean ± std over the seeds. " if n > 1 else "")
        + f"Reward against full fine-tuning (lr {get_method('full').default_lr:g}) with the same budget and seed"
        + (f" ({ref_text})" if ref_text else "") + ". "
        "Higher reward is better; the best learning rate per method (highest mean reward, no failed seed) is in bold.",
        "",
        "| method | lr | FID | nn_own_rate | reward | reward per seed | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lr = f"{x['lr']:g}"
        if best.get(x["method"]) == x["lr"]:
            lr = f"**{lr}**"
        runs = x["runs"]
        per_seed = " / ".join(f"{r['reward']:.2f}" for r in runs) + (f" ({x['failed']} diverged)" if x["failed"] else "")
        if not runs:
            lines.append(f"| {x['method']} | {lr} | diverged | - | - | {x['failed']} diverged | - |")
            continue
        lines.append(
            f"| {x['method']} | {lr} | {_stat([r['fid'] for r in runs], '.2f')} | {_stat([r['nn_own_rate'] for r in runs], '.3f')} | "
            f"{_stat([r['reward'] for r in runs], '.3f')} | {per_seed} | {_stat([r.get('final_loss') for r in runs], '.4f')} |"
        )
    lines += ["", "Best (highest mean reward): " + (", ".join(f"{m} {lr:g}" for m, lr in best.items()) or "none") + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
