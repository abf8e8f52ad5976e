"""Does the cheap `search` preset rank masks the way the `default` preset does?

    OMP_NUM_THREADS=1 python experiments/preset_correlation.py --dataset family:80 --masks 10

Every optimiser and the agent maximise the reward on the ``search`` preset (100 fine-tuning steps,
fewer samples) because the ``default`` preset costs about three times as much. That is only sound
if the cheap ranking predicts the expensive one. This script draws ``--masks`` distinct masks
(seeded; never ``none``, always ``all``) of ``--method`` at ``--granularity``, evaluates each on
both presets with the same seed through one cache (resumable; the ``search`` evaluations are the
ones the exhaustive tables hold when ``--cache`` is that run's cache), and prints the Spearman and
Kendall rank correlations of the reward, FID and ``nn_own_rate`` between the presets, with every
mask's two rewards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="family:80", help="dataset (a family member, built-in, folder or CSV)")
    ap.add_argument("--masks", type=int, default=10, help="distinct masks drawn (plus all)")
    ap.add_argument("--method", default="lora", help="PEFT method")
    ap.add_argument("--granularity", default="attention", help="maskable units")
    ap.add_argument("--seed", type=int, default=0, help="evaluation seed (both presets)")
    ap.add_argument("--draw-seed", type=int, default=0, help="seed of the mask draw")
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder")
    ap.add_argument("--cache", default="runs/preset_correlation/evaluations.sqlite", help="evaluation cache (resumable)")
    ap.add_argument("--presets", nargs=2, default=["search", "default"], metavar=("CHEAP", "FULL"), help="the two presets compared")
    ap.add_argument("--cheap-steps", type=int, default=None, metavar="N", help="fine-tuning steps of the CHEAP preset (e.g. --presets search search --cheap-steps 25: how well a short fine-tune, the screen of memrl search --screen-steps, ranks masks like the full one)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args(argv)

    from scipy.stats import kendalltau, spearmanr

    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator, preset
    from memrl.peft_masking import Mask

    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(args.model, cache=args.cache, granularity=args.granularity)
    data = load_dataset(args.dataset, ev.image_size, ev.image_channels)
    n = len(ev.units)
    can = set(ev.trainable_units(args.method))
    rng = np.random.default_rng(args.draw_seed)
    masks: list[str] = ["".join("1" if u in can else "0" for u in ev.units)]
    while len(masks) < args.masks + 1:
        bits = "".join(str(int(b)) if u in can else "0" for u, b in zip(ev.units, rng.integers(0, 2, n)))
        if "1" in bits and bits not in masks:
            masks.append(bits)
        if len(masks) >= 2 ** len(can):
            break

    t0 = time.time()
    from dataclasses import replace

    cheap, full = args.presets
    cheap_cfg = preset(cheap)
    if args.cheap_steps is not None:
        cheap = f"{cheap}@{args.cheap_steps}"
        cheap_cfg = replace(cheap_cfg, finetune=replace(cheap_cfg.finetune, steps=args.cheap_steps))
    res: dict[str, dict[str, dict]] = {cheap: {}, full: {}}  # one entry when a preset is compared with itself
    for name, cfg in ((cheap, cheap_cfg), (full, preset(full))):
        for bits in masks:
            r = ev.evaluate(data, args.method, Mask.from_bits([int(c) for c in bits], ev.units), cfg, seed=args.seed)
            res[name][bits] = r
            print(f"[{time.time() - t0:6.0f}s] {name:<7} {bits} reward {r['reward']:.3f} fid {r['fid']:.1f}{' (cached)' if r.get('cached') else ''}", file=sys.stderr, flush=True)

    argv = sys.argv[1:] if argv is None else argv
    cmd = "OMP_NUM_THREADS=1 python experiments/preset_correlation.py" + (" " + " ".join(argv) if argv else "")
    lines = [
        f"# {cheap} vs {full}" + ("" if args.cheap_steps else " preset"),
        "",
        f"`{cmd}`",
        "",
        f"Dataset `{args.dataset}`, method `{args.method}` at `{args.granularity}` granularity, seed {args.seed}, {len(masks)} masks.",
        "",
        "| metric | Spearman | Kendall |",
        "|---|---|---|",
    ]
    for metric in ("reward", "fid", "nn_own_rate"):
        a = [res[cheap][m][metric] for m in masks]
        b = [res[full][m][metric] for m in masks]
        lines.append(f"| {metric} | {spearmanr(a, b).statistic:.3f} | {kendalltau(a, b).statistic:.3f} |")
    cost = {name: float(np.median([r.get("computed_seconds") or r["seconds"] for r in res[name].values()])) for name in (cheap, full)}
    lines += ["", f"Median seconds per evaluation (as computed, cache hits at their original cost): {cheap} {cost[cheap]:.1f}, {full} {cost[full]:.1f} (ratio {cost[cheap] / cost[full]:.2f})."]
    lines += ["", f"| mask | {cheap} reward | {full} reward | {cheap} FID | {full} FID |", "|---|---|---|---|---|"]
    for bits in sorted(masks, key=lambda m: -res[cheap][m]["reward"]):
        s, d = res[cheap][bits], res[full][bits]
        lines.append(f"| `{bits}` | {s['reward']:.3f} | {d['reward']:.3f} | {s['fid']:.1f} | {d['fid']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
