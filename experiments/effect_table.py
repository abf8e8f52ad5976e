"""The paper's effect on the embedded default: memorization and quality per method and mask.

    python experiments/effect_table.py [--model runs/digits-base] [--dataset inverted] [--seeds 0 1 2]

For each seed: the base model (mask ``none``: no fine-tuning), full fine-tuning, and each PEFT
method (its own default, tuned learning rate, the same step budget) with mask ``all`` and with
partial masks. Every evaluation goes through the cache (``--cache``), so an interrupted run
resumes where it stopped. Prints a markdown table (mean +- std over seeds) and writes it with
the raw results to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from memrl.data.loaders import load_dataset
from memrl.evaluation import Evaluator, preset
from memrl.evaluation.cache import request_key
from memrl.metrics.names import QUALITY_METRICS, SUMMARY_METRICS
from memrl.utils.io import write_json_atomic, write_text_atomic

#: what the table prints per row, in print order (the metric names come from memrl.metrics.names)
METRICS = (*QUALITY_METRICS, "nn_own_rate", "replication_rate", "extraction_rate", "text_guidance_auc", "reward")
assert set(METRICS) <= {*SUMMARY_METRICS, "reward"}
COLUMNS = (*METRICS, "trainable_fraction")


def named_masks(units: tuple[str, ...]) -> dict[str, str]:
    """Partial masks by name: the whole up path, its last two blocks, its last block."""
    up = [u for u in units if u.startswith("up_blocks")]
    blocks = sorted({".".join(u.split(".")[:2]) for u in up})
    last2 = [u for u in up if ".".join(u.split(".")[:2]) in blocks[-2:]]
    last = [u for u in up if ".".join(u.split(".")[:2]) == blocks[-1]]
    return {"up": ",".join(up), "up (last 2 blocks)": ",".join(last2), "up (last block)": ",".join(last)}


def rows_for(units: tuple[str, ...], methods: list[str]) -> list[tuple[str, str, str]]:
    nm = named_masks(units)
    rows = [("base (no fine-tuning)", "full", "none"), ("full", "full", "all"), ("full", "full", nm["up (last 2 blocks)"]), ("full", "full", nm["up (last block)"])]
    for m in methods:
        rows += [(m, m, "all"), (m, m, nm["up"]), (m, m, nm["up (last 2 blocks)"])]
    return rows


def mask_label(spec: str, units: tuple[str, ...]) -> str:
    names = {v: k for k, v in named_masks(units).items()}
    return names.get(spec, spec)


def row_key(label: str, spec: str, units: tuple[str, ...]) -> str:
    """A table row's name, e.g. ``difffit | up (last 2 blocks)``."""
    return f"{label} | {mask_label(spec, units)}"


def versus_full(raw: dict[str, list[dict]], fid_ratio: float = 1.2, cut: float = 0.5) -> list[str]:
    """Each row against full fine-tuning (``full | all``): FID ratio and nn_own_rate cut of the
    seed means, and on how many seeds the row alone met both bars (MemControl's criterion)."""
    full = raw.get("full | all")
    if not full:
        return []
    out = [
        f"Against full fine-tuning (ratio of seed means; last column: seeds on which the row had FID <= {fid_ratio}x full's and >= {100 * cut:.0f}% lower nn_own_rate):",
        "",
        "| method | mask | FID vs full | nn_own_rate cut vs full | seeds meeting both |",
        "|---|---|---|---|---|",
    ]
    f_fid = np.mean([r["fid"] for r in full])
    f_mem = np.mean([r["nn_own_rate"] for r in full])
    by_seed = {r["seed"]: r for r in full}
    for key, rs in raw.items():
        if key == "full | all":
            continue
        met = sum(
            r["fid"] <= fid_ratio * by_seed[r["seed"]]["fid"] and r["nn_own_rate"] <= (1 - cut) * by_seed[r["seed"]]["nn_own_rate"]
            for r in rs
            if r["seed"] in by_seed
        )
        label, mlabel = key.split(" | ")
        ratio = np.mean([r["fid"] for r in rs]) / f_fid
        reduction = 1 - np.mean([r["nn_own_rate"] for r in rs]) / max(f_mem, 1e-9)
        out.append(f"| {label} | {mlabel} | {ratio:.2f}x | {100 * reduction:.0f}% | {met}/{len(rs)} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder")
    ap.add_argument("--dataset", default="inverted", help="fine-tuning dataset (built-in variant, folder or CSV)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (fine-tuning, sampling, metrics)")
    ap.add_argument("--methods", nargs="+", default=["lora", "attention", "difffit", "svdiff"], help="PEFT methods")
    ap.add_argument("--preset", default="default", help="evaluation preset")
    ap.add_argument("--cache", default="runs/effect/evaluations.sqlite", help="evaluation cache (resumable)")
    ap.add_argument("--out", default="experiments/results/effect_table", help="output prefix (.md and .json)")
    ap.add_argument("--granularity", default="block", help="maskable units: block (default here: the tiny model has no attention at 16x16), attention, attention+resnet")
    ap.add_argument("--device", default="cpu", help="torch device")
    ap.add_argument("--finetune-steps", type=int, default=None, help="override the preset's fine-tuning steps (a longer or shorter budget for every row)")
    ap.add_argument("--only", nargs="*", default=None, metavar="LABEL", help="keep only these standard rows, by 'method | mask label' (e.g. 'full | all'); --extra rows are always kept")
    ap.add_argument("--extra", nargs="*", default=[], metavar="METHOD:MASK", help="extra rows, e.g. a mask found by memrl train: difffit:up_blocks.1,up_blocks.2")
    args = ap.parse_args(argv)

    ev = Evaluator(args.model, device=args.device, cache=args.cache, granularity=args.granularity)
    data = load_dataset(args.dataset, ev.model.image_size, ev.model.image_channels)
    units = ev.units
    plan = rows_for(units, args.methods)
    if args.only is not None:
        plan = [(label, method, spec) for label, method, spec in plan if row_key(label, spec, units) in args.only]
    cfg = preset(args.preset)
    if args.finetune_steps is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, steps=args.finetune_steps))
    budget = f"{args.preset}" + (f", {args.finetune_steps} fine-tuning steps" if args.finetune_steps is not None else "")
    for item in args.extra:
        method, _, spec = item.partition(":")
        if not spec:
            ap.error(f"--extra {item!r}: expected METHOD:MASK")
        plan.append((method, method, str(ev.parse_mask(spec))))  # validates the mask, names its units
    raw: dict[str, list[dict]] = {}
    out = Path(args.out)
    # rows already in --out's JSON are kept, not recomputed, when their full request matches
    # (model, feature network, data, method, trained units, lr, budget, seed, library versions,
    # reference run and reward settings): the table can grow by --extra rows without redoing the
    # rest, and a changed model or config never reprints a stale row (delete the file to redo all)
    known: dict[str, dict] = {}
    if out.with_suffix(".json").is_file():
        prev = json.loads(out.with_suffix(".json").read_text())
        known = {r["reuse_key"]: r for rs in prev.get("results", {}).values() for r in rs if "reuse_key" in r}
    reused = 0
    t0 = time.time()
    for seed in args.seeds:
        for label, method, spec in plan:
            trained, empty = ev.effective_mask(method, ev.parse_mask(spec))
            key = row_key(label, str(trained), units)  # labelled by the units actually trained
            rcfg = cfg.with_method(method, None, seed)
            reuse_key = request_key({
                "row": ev.request(data, trained, rcfg),
                "reference": ev.request(data, ev.parse_mask("all"), cfg.with_method("full", None, seed)),
                "reward": asdict(cfg.reward),
            })
            if reuse_key in known:
                raw.setdefault(key, []).append(known[reuse_key])
                reused += 1
                continue
            r = ev.evaluate(data, method, spec, cfg, seed=seed)
            row = {k: r[k] for k in (*COLUMNS, "lr", "trainable_params", "seed", "cached", "seconds")}
            row.update({"units_trained": r["mask_units"], "empty_units": r["empty_units"], "reuse_key": reuse_key})
            raw.setdefault(key, []).append(row)
            note = f" (nothing to train in {', '.join(empty)})" if empty else ""
            print(f"[{time.time() - t0:7.1f}s] seed {seed} {key:<34} fid {r['fid']:8.2f} nn_own {r['nn_own_rate']:.3f} repl {r['replication_rate']:.3f} reward {r['reward']:.3f}{' (cached)' if r['cached'] else ''}{note}", flush=True)
    if reused:
        print(f"reused {reused} row(s) of {out.with_suffix('.json')} (same full request)")

    lines = [
        f"Dataset `{data.name}`, units `{args.granularity}`, preset `{budget}`, seeds {args.seeds} (mean ± std over seeds). "
        f"Lower is better for every metric except reward.",
        "",
        "| method | mask | lr | trainable % | FID | KID | nn_own_rate | replication | extraction | text-guidance AUC | reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, rs in raw.items():
        label, mlabel = key.split(" | ")
        ms = {c: (np.mean([r[c] for r in rs]), np.std([r[c] for r in rs])) for c in COLUMNS}
        lr = "-" if label.startswith("base") else f"{rs[0]['lr']:g}"
        lines.append(
            f"| {label} | {mlabel} | {lr} | {100 * ms['trainable_fraction'][0]:.2f} | "
            + " | ".join(f"{ms[c][0]:.3f} ± {ms[c][1]:.3f}" if c != "fid" else f"{ms[c][0]:.2f} ± {ms[c][1]:.2f}" for c in METRICS)
            + " |"
        )
    lines += ["", *versus_full(raw)]
    table = "\n".join(lines) + "\n"
    print(table)
    write_text_atomic(out.with_suffix(".md"), table)
    write_json_atomic(out.with_suffix(".json"), {"dataset": data.name, "preset": budget, "seeds": args.seeds, "units": list(units), "results": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
