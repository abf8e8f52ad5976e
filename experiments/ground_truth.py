"""What the exhaustive tables say: best masks, how much they differ, the best fixed mask, seed noise.

    python experiments/ground_truth.py            # reads experiments/results/exhaustive/*.csv

Each table is the ``evaluations.csv`` of one ``memrl search --optimizer exhaustive`` run
(``experiments/exhaustive_tables.py``): every proposed mask of one method on one dataset with one
evaluation seed. Masks that train the same units (``mask_bits``) are one evaluation and are
counted once. Printed (and written to ``--out``):

* per table: the best mask, its reward, how many masks lie within 2% of the optimum (normalised
  score ``(r - r_min) / (r_max - r_min) >= 0.98``), the reward and rank of ``all`` and of the
  base model (``none``), and the reward spread;
* how different the best masks are across datasets (Hamming distances between them);
* the best **fixed** mask: the mask with the best mean reward over the *training* members'
  seed-0 tables, and its regret and rank on every other table (if it is the optimum everywhere,
  a policy is not needed, and this says so);
* seed noise, where a dataset has tables for two seeds: the rank correlation of the masks'
  rewards, and the seed-0 optimum's rank and regret on the other seed (a reward reported on a
  seed the optimiser did not see).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

NAME = re.compile(r"^(?P<dataset>.+)_(?P<method>[a-z]+)_seed(?P<seed>\d+)$")


def load_tables(folder: Path) -> dict[tuple[str, str, int], dict[str, dict]]:
    """``{(dataset, method, seed): {mask_bits: row}}`` from every ``NAME.csv`` (failed rows kept with their reward)."""
    tables: dict[tuple[str, str, int], dict[str, dict]] = {}
    for path in sorted(folder.glob("*.csv")):
        m = NAME.match(path.stem)
        if not m:
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        by_mask: dict[str, dict] = {}
        for r in rows:
            r["reward"] = float(r["reward"])
            by_mask.setdefault(r["mask_bits"], r)
        tables[(rows[0]["dataset"], m["method"], int(m["seed"]))] = by_mask
    return tables


def split_of(dataset: str) -> str:
    if dataset.startswith("family:"):
        from memrl.data.family import split_of as family_split

        return family_split(int(dataset.split(":", 1)[1]))
    return "built-in"


def ranks(rewards: dict[str, float]) -> dict[str, int]:
    """1 = best; ties share the better rank."""
    ordered = sorted(rewards.values(), reverse=True)
    return {k: 1 + ordered.index(v) for k, v in rewards.items()}


def normalised(r: float, rewards: dict[str, float]) -> float:
    lo, hi = min(rewards.values()), max(rewards.values())
    return 1.0 if hi == lo else (r - lo) / (hi - lo)


def hamming(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b))


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def report(tables: dict[tuple[str, str, int], dict[str, dict]], command: str) -> str:
    lines = ["# Exhaustive ground truth", "", f"`{command}`", ""]
    if not tables:
        return "\n".join(lines + ["No tables yet.", ""])
    units = None
    rewards = {k: {b: r["reward"] for b, r in t.items()} for k, t in tables.items()}
    lines += [
        "| dataset | split | method | seed | masks | best mask | best reward | within 2% | `all`: reward (rank) | base: reward (rank) | worst |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best: dict[tuple[str, str, int], str] = {}
    for k, rw in sorted(rewards.items(), key=lambda kv: (kv[0][2], split_of(kv[0][0]), kv[0][0])):
        dataset, method, seed = k
        rk = ranks(rw)
        b = max(rw, key=lambda m: rw[m])
        best[k] = b
        units = units or tables[k][b]["mask"]
        n = len(rw)
        near = sum(normalised(v, rw) >= 0.98 for v in rw.values())
        all_bits = max(rw, key=lambda m: m.count("1"))  # the largest trainable mask = "all" after reduction
        none = "0" * len(b)
        base = f"{rw[none]:.2f} ({rk[none]})" if none in rw else "-"
        lines.append(
            f"| {dataset} | {split_of(dataset)} | {method} | {seed} | {n} | `{b}` {tables[k][b]['mask']} | {rw[b]:.3f} | {near} | "
            f"{rw[all_bits]:.3f} ({rk[all_bits]}) | {base} | {min(rw.values()):.2f} |"
        )
    lines += ["", "Masks are `mask_bits` over the units in `memrl units` order; ranks are among the distinct trained masks (1 = best)."]

    # The statistics beside the rewards (evaluation version 3 columns).
    if all("fid_ci_low" in next(iter(t.values())) for t in tables.values()):
        lines += [
            "",
            "**Statistics** (over the table's distinct masks; `none` is the base model):",
            "",
            "| table | FID noise floor | median FID | median FID 95% half-width | nn_own_rate: base (chance) / masks min-max | text_guidance_auc: base / `all` / masks min-max |",
            "|---|---|---|---|---|---|",
        ]
        for k in sorted(tables, key=lambda k: (k[2], split_of(k[0]), k[0])):
            t = {b: r for b, r in tables[k].items() if r.get("failed") not in ("True", "true", "1")}
            f = lambda col: [float(r[col]) for r in t.values() if r.get(col) not in (None, "")]  # noqa: E731
            none = "0" * len(next(iter(t)))
            all_bits = max(t, key=lambda m: m.count("1"))
            half = [(float(r["fid_ci_high"]) - float(r["fid_ci_low"])) / 2 for r in t.values() if r.get("fid_ci_low") not in (None, "")]
            nn, auc = f("nn_own_rate"), f("text_guidance_auc")
            base_nn = t[none]["nn_own_rate"] if none in t else "-"
            base_auc = float(t[none]["text_guidance_auc"]) if none in t else float("nan")
            lines.append(
                f"| {k[0]} seed {k[2]} | {float(next(iter(t.values()))['fid_noise_floor']):.1f} | {np.median(f('fid')):.1f} | {np.median(half):.1f} | "
                f"{float(base_nn):.3f} / {min(nn):.3f}-{max(nn):.3f} | {base_auc:.3f} / {float(t[all_bits]['text_guidance_auc']):.3f} / {min(auc):.3f}-{max(auc):.3f} |"
            )

    # What the best masks share.
    lines += [
        "",
        "**Structure** (unit names by bit position, as in `mask`):",
        "",
        "| table | reward vs units trained (Pearson r) | units in every top-8 mask | units in no top-8 mask |",
        "|---|---|---|---|",
    ]
    for k in sorted(rewards, key=lambda k: (k[2], split_of(k[0]), k[0])):
        rw = rewards[k]
        n_bits = len(next(iter(rw)))
        single = lambda i: "0" * i + "1" + "0" * (n_bits - i - 1)  # noqa: E731
        names = [tables[k][single(i)]["mask"] if single(i) in tables[k] else f"bit {i}" for i in range(n_bits)]
        top = sorted(rw, key=lambda m: -rw[m])[:8]
        every = [names[i] for i in range(n_bits) if all(m[i] == "1" for m in top)]
        never = [names[i] for i in range(n_bits) if all(m[i] == "0" for m in top)]
        r = float(np.corrcoef([m.count("1") for m in rw], [rw[m] for m in rw])[0, 1]) if len(rw) > 2 else float("nan")
        lines.append(f"| {k[0]} seed {k[2]} | {r:.2f} | {', '.join(every) or '-'} | {', '.join(never) or '-'} |")

    # How different are the best masks?
    seed0 = {k: b for k, b in best.items() if k[2] == 0}
    keys = sorted(seed0)
    if len(keys) > 1:
        d = [hamming(seed0[a], seed0[b]) for i, a in enumerate(keys) for b in keys[i + 1 :]]
        distinct = len(set(seed0.values()))
        lines += [
            "",
            f"**Best masks across datasets (seed 0)**: {distinct} distinct best masks over {len(keys)} tables; "
            f"pairwise Hamming distance mean {np.mean(d):.2f}, max {max(d)} (of {len(seed0[keys[0]])} bits).",
        ]

    # The best fixed mask on the training members.
    train = [k for k in keys if split_of(k[0]) == "train"]
    if train:
        common = set.intersection(*(set(rewards[k]) for k in train))
        mean = {m: float(np.mean([rewards[k][m] for k in train])) for m in common}
        fixed = max(mean, key=lambda m: mean[m])
        lines += [
            "",
            f"**Best fixed mask** (best mean reward over the {len(train)} training-member table(s) "
            f"{', '.join(k[0] for k in train)}): `{fixed}`, mean reward {mean[fixed]:.3f}.",
            "",
            "| table | split | fixed mask's reward | its rank | regret vs the table's optimum | normalised score |",
            "|---|---|---|---|---|---|",
        ]
        everywhere = True
        for k in sorted(rewards, key=lambda k: (k[2], split_of(k[0]), k[0])):
            rw = rewards[k]
            if fixed not in rw:
                continue
            rk = ranks(rw)
            everywhere &= rk[fixed] == 1
            lines.append(
                f"| {k[0]} seed {k[2]} | {split_of(k[0])} | {rw[fixed]:.3f} | {rk[fixed]} of {len(rw)} | {max(rw.values()) - rw[fixed]:.3f} | {normalised(rw[fixed], rw):.3f} |"
            )
        lines.append("")
        if everywhere:
            lines.append("The fixed mask is the optimum on every table: on these datasets a policy is not needed.")
        else:
            lines.append("The fixed mask is not the optimum everywhere: the regret column is what a per-dataset choice can gain.")

    # Seed noise.
    by_ds: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    for (dataset, method, seed), rw in rewards.items():
        by_ds[(dataset, method)][seed] = rw
    pairs = [(k, v) for k, v in sorted(by_ds.items()) if 0 in v and len(v) > 1]
    if pairs:
        lines += [
            "",
            "**Seed noise** (the same masks evaluated with another seed):",
            "",
            "| dataset | seeds | Spearman rank correlation | seed-0 optimum on the other seed: rank, regret, normalised | mean abs reward change |",
            "|---|---|---|---|---|",
        ]
        for (dataset, method), per in pairs:
            for s, other in sorted(per.items()):
                if s == 0:
                    continue
                common = sorted(set(per[0]) & set(other))
                rho = spearman([per[0][m] for m in common], [other[m] for m in common])
                b0 = max(common, key=lambda m: per[0][m])
                rk = ranks({m: other[m] for m in common})
                delta = float(np.mean([abs(per[0][m] - other[m]) for m in common]))
                lines.append(
                    f"| {dataset} | 0 vs {s} | {rho:.3f} | {rk[b0]} of {len(common)}, {max(other[m] for m in common) - other[b0]:.3f}, "
                    f"{normalised(other[b0], {m: other[m] for m in common}):.3f} | {delta:.3f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of NAME.csv tables (DATASET_METHOD_seedS.csv)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    folder = Path(args.tables)
    if not folder.is_dir():
        print(f"ground_truth.py: error: --tables: no folder {folder}", file=sys.stderr)
        return 2
    cmd = "python experiments/ground_truth.py" + (" " + " ".join(argv) if argv else "")
    text = report(load_tables(folder), cmd)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
