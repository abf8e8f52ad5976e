"""Tune the learning rates and the sampling guidance on **validation** members of the family.

    OMP_NUM_THREADS=1 python experiments/validation_tuning.py

(defaults: ``--datasets family:64 family:65 family:66 --methods lora full --lr-scales 0.3 1 3
--guidance 1.5 2.0 --preset search --granularity attention --mask all --seeds 0``.)

The learning rates in ``memrl/peft_masking/registry.py`` and the 2.0 guidance of every preset were
first chosen on built-in variants whose held-out images also served for reporting. This probe
repeats the choice on validation members only (ids 64-79 of ``family:N``; see ``memrl datasets``),
so nothing reported on test members (80-111) was tuned on them.

For every guidance scale, method and learning rate (the method's default times each scale), the
mask ``all`` is evaluated on every validation dataset with :class:`memrl.evaluation.Evaluator`
(through the SQLite cache: an interrupted probe resumes, a rerun reprints at once). The reward is
against full fine-tuning at its default learning rate with the same guidance, budget and seed.

Choices printed at the end:

* per PEFT method, the learning rate with the highest mean reward over datasets and seeds;
* for ``full`` (the reward's reference), the learning rate with the lowest mean FID, if it beats
  the default by more than the mean half-width of the FID bootstrap intervals (else the default);
* first (stage 1) the guidance scale whose fine-tuned models, every method at its current default
  learning rate, have the lowest mean FID; then (stage 2) the learning rates at that guidance.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from memrl.data.loaders import load_dataset
from memrl.errors import EvaluationFailed
from memrl.evaluation import Evaluator, preset
from memrl.peft_masking import METHODS, get_method


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["family:64", "family:65", "family:66"], help="validation datasets (family ids 64-79)")
    ap.add_argument("--methods", nargs="+", default=["lora", "full"], choices=list(METHODS), help="methods to tune")
    ap.add_argument("--lr-scales", type=float, nargs="+", default=[0.3, 1.0, 3.0], help="multiples of each method's default learning rate")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0], help="guidance scales to compare")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning / sampling seeds")
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder (memrl pretrain)")
    ap.add_argument("--preset", default="search", choices=["quick", "search", "default"], help="evaluation budget")
    ap.add_argument("--mask", default="all", help="units to train")
    ap.add_argument("--granularity", default="attention", help="maskable units")
    ap.add_argument("--cache", default="runs/validation_tuning/evaluations.sqlite", help="evaluation cache (resumable)")
    ap.add_argument("--out", default="experiments/results/validation_tuning.md", help="markdown file for the table")
    ap.add_argument("--device", default="cpu", help="torch device")
    args = ap.parse_args(argv)

    from memrl.data.family import split_of

    for d in args.datasets:
        if not d.startswith("family:") or split_of(int(d.split(":", 1)[1])) != "validation":
            print(f"validation_tuning.py: error: --datasets: {d!r} is not a validation member of the family (family:64 .. family:79)", file=sys.stderr)
            return 2

    t0 = time.time()
    ev = Evaluator(args.model, device=args.device, cache=args.cache, granularity=args.granularity)
    data = {d: load_dataset(d, ev.model.image_size, ev.model.image_channels) for d in args.datasets}
    base = preset(args.preset)

    def evaluate(g: float, method: str, scale: float) -> dict:
        cfg = replace(base, guidance_scale=g)
        lr = get_method(method).default_lr * scale
        row = {"guidance": g, "method": method, "lr": lr, "scale": scale, "runs": [], "failed": 0}
        for name, ds in data.items():
            for seed in args.seeds:
                try:
                    r = ev.evaluate(ds, method, args.mask, cfg, lr=lr, seed=seed)
                except EvaluationFailed as exc:
                    row["failed"] += 1
                    print(f"[{time.time() - t0:7.0f}s] g {g} {method} lr {lr:g} {name} seed {seed} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                row["runs"].append(r)
                print(
                    f"[{time.time() - t0:7.0f}s] g {g} {method:<5} lr {lr:<8g} {name:<10} seed {seed} fid {r['fid']:7.2f} "
                    f"nn_own {r['nn_own_rate']:.3f} reward {r['reward']:.3f}{' (cached)' if r.get('cached') else ''}",
                    file=sys.stderr,
                    flush=True,
                )
        return row

    def score(row: dict) -> float:
        if row["failed"] or not row["runs"]:
            return -float("inf")
        if row["method"] == "full":
            return -_mean([r["fid"] for r in row["runs"]])
        return _mean([r["reward"] for r in row["runs"]])

    # Stage 1: the guidance scale, every method at its current default learning rate.
    rows = [evaluate(g, m, 1.0) for g in args.guidance for m in args.methods]
    guidance_fid = {g: _mean([r["fid"] for row in rows if row["guidance"] == g for r in row["runs"]]) for g in args.guidance}
    best_g = min(guidance_fid, key=lambda g: guidance_fid[g])
    # Paired check: the same (method, dataset, seed) under each guidance (same fine-tune, same noise).
    paired: dict[float, int] = {g: 0 for g in args.guidance}
    n_pairs = 0
    for m in args.methods:
        per_g = {row["guidance"]: {(r["dataset"], r["seed"]): r["fid"] for r in row["runs"]} for row in rows if row["method"] == m}
        for k in set.intersection(*(set(v) for v in per_g.values())):
            n_pairs += 1
            paired[min(per_g, key=lambda g: per_g[g][k])] += 1
    # Stage 2: the learning rates at the chosen guidance.
    rows += [evaluate(best_g, m, s) for m in args.methods for s in args.lr_scales if s != 1.0]
    best: dict[str, dict] = {}
    for row in rows:
        if row["guidance"] == best_g and (row["method"] not in best or score(row) > score(best[row["method"]])):
            best[row["method"]] = row
    # A learning rate replaces the default only when it wins by more than the noise: for full, by
    # more than the mean half-width of the rows' FID bootstrap intervals.
    kept: dict[str, str] = {}
    for m, row in list(best.items()):
        default = next(r for r in rows if r["guidance"] == best_g and r["method"] == m and r["scale"] == 1.0)
        if row is default or m != "full":
            continue
        half = _mean([(r["fid_ci_high"] - r["fid_ci_low"]) / 2 for r in row["runs"] + default["runs"]])
        gain = _mean([r["fid"] for r in default["runs"]]) - _mean([r["fid"] for r in row["runs"]])
        if gain <= half:
            kept[m] = f"full: lr {row['lr']:g} has mean FID {gain:.2f} lower than the default {default['lr']:g}, inside the bootstrap half-width {half:.2f}: default kept"
            best[m] = default

    cmd = "OMP_NUM_THREADS=1 python experiments/validation_tuning.py" + (" " + " ".join(argv) if argv else "")
    lines = [
        "# Tuning on validation members",
        "",
        f"`{cmd}`",
        "",
        f"Model `{args.model}`, datasets {', '.join(f'`{d}`' for d in args.datasets)} (validation members), preset `{args.preset}`, "
        f"mask `{args.mask}` at `{args.granularity}` granularity, seeds {args.seeds}; means over datasets and seeds. "
        "Reward against full fine-tuning at its default learning rate with the same guidance. "
        "Chosen (bold): per PEFT method the highest mean reward; for `full` (the reference) the lowest mean FID, if it beats the default by more than the mean half-width of the FID bootstrap intervals.",
        "",
        "| guidance | method | lr | FID | KID | nn_own_rate | reward | reward per dataset |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = row["runs"]
        lr = f"{row['lr']:g}"
        if best.get(row["method"]) is row:
            lr = f"**{lr}**"
        if not runs:
            lines.append(f"| {row['guidance']:g} | {row['method']} | {lr} | diverged | - | - | - | {row['failed']} failed |")
            continue
        per = " / ".join(f"{r['reward']:.2f}" for r in runs) + (f" ({row['failed']} failed)" if row["failed"] else "")
        lines.append(
            f"| {row['guidance']:g} | {row['method']} | {lr} | {_mean([r['fid'] for r in runs]):.2f} | {_mean([r['kid'] for r in runs]):.4f} | "
            f"{_mean([r['nn_own_rate'] for r in runs]):.3f} | {_mean([r['reward'] for r in runs]):.3f} | {per} |"
        )
    lines += [
        "",
        "Stage 1 (every method at its default learning rate), mean FID per guidance: "
        + ", ".join(f"{g:g}: {v:.2f}" for g, v in guidance_fid.items()) + f"; chosen guidance **{best_g:g}**, "
        f"lowest FID in {paired[best_g]} of {n_pairs} paired (method, dataset, seed) comparisons.",
        "Stage 2 (learning rates at that guidance): " + ", ".join(f"{m} {best[m]['lr']:g}" for m in args.methods) + ".",
        *(f"{v}." for v in kept.values()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
