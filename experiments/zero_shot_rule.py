"""Which rule should the reward model's zero-shot pick follow? Leave-one-member-out on training members.

    python experiments/zero_shot_rule.py --run experiments/results/priors/amortised-s0-177 \\
        [--tables experiments/results/exhaustive] [--betas 0 0.5 1 2] [--targets raw per_dataset] [--markdown FILE]

With a prior (``memrl search --optimizer model --prior RUN``, ``memrl replay --budget K
--optimizer model``) the reward model's first trial on a new dataset is its zero-shot pick. Two
rules are natural: the highest posterior **mean** (the best guess: what Bayesian optimisation
recommends when no more evaluations follow) and the highest upper confidence bound **mean +
beta x std** (what it evaluates when more follow). The test tables must not settle this, so it
is settled here on the *training* members alone, by leave-one-member-out: for each training
member ``m`` of the run, the model (descriptor + mask, the run's descriptor basis) is fitted on
the run's real evaluations of every *other* member and picks a mask for ``m`` by each rule.
``--targets`` also compares what the model is fitted on (``search.model_target``): the raw
rewards, or each member's rewards standardised by its own mean and spread (``per_dataset``).

The pick is scored on ``m``'s candidates:

* **all masks**, when ``m`` has a complete exhaustive table (regret and rank against it);
* otherwise the masks the run evaluated on ``m`` (its real rewards): a smaller, PPO-chosen
  candidate set, but the same one for every rule.

Regret is divided by the spread of the candidates' rewards (best minus mean), because members
differ in scale by a factor of ten; the rank is a percentile (1/n is the best). Nothing is
fine-tuned; it runs in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BC = _load("bench_context")
BS = BC.BS


def rule_name(beta: float) -> str:
    return "mean" if beta == 0 else f"mean+{beta:g}std"


def score(cands: dict[str, float], pick: str) -> tuple[float, float]:
    """Normalised regret ``(best - r) / (best - mean)`` and rank percentile of ``pick`` among ``cands``."""
    r = np.asarray(list(cands.values()))
    best, spread = float(r.max()), float(r.max() - r.mean())
    rank = 1 + int(np.sum(r > cands[pick]))
    return (best - cands[pick]) / spread if spread > 0 else 0.0, rank / len(r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, nargs="+", help="an amortised memrl train run folder (evaluations.csv, descriptor.json); several (agent seeds): their evaluations pooled, the first one's descriptor basis")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl): a training member with a complete table is scored on all masks")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables and the run were made with")
    ap.add_argument("--betas", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0], help="rules to compare: 0 is the posterior mean, beta > 0 is mean + beta x std")
    ap.add_argument("--targets", nargs="+", default=["raw"], help="what the model is fitted on: raw rewards and/or per_dataset (each member's rewards standardised)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the reward model's optimiser restarts")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    args = ap.parse_args(argv)
    t0 = time.time()

    from memrl.data.loaders import load_dataset
    from memrl.errors import MemrlError
    from memrl.evaluation.surrogate import TARGETS, RewardSurrogate, SurrogateFeatures, standardise_by_group

    run, tables = [Path(r) for r in args.run], Path(args.tables)
    run_name = " + ".join(map(str, run))
    try:
        env, ev, net, basis, rows = BC.run_inputs(run, tables, args.config)
        members = sorted({d for d, _, _ in rows})
        data = {d: load_dataset(d, ev.image_size, ev.image_channels) for d in members}
        truths = {d: t for d in members if ev.holds(data[d]) and (t := BS.ground_truth(ev, env, d)) is not None}
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(members) < 3:
        print(f"error: {run_name} evaluated {len(members)} member(s); leave-one-out needs at least 3", file=sys.stderr)
        return 2

    bad = [t for t in args.targets if t not in TARGETS]
    if bad:
        print(f"error: --targets {bad[0]!r} is not one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    desc = {d: basis.describe(net, data[d]) for d in members}
    feats = SurrogateFeatures(basis.dim, len(ev.units))
    rules = [(t, b) for t in args.targets for b in args.betas]
    names = [rule_name(b) if len(args.targets) == 1 else f"{t}/{rule_name(b)}" for t, b in rules]
    regrets: dict[str, list[float]] = {n: [] for n in names}
    ranks: dict[str, list[float]] = {n: [] for n in names}
    lines = [
        f"Leave-one-member-out on the {len(members)} training members of `{run_name}` ({len(rows)} real evaluations): the reward model "
        f"fitted on the other members picks a mask for the left-out one by each rule. Normalised regret = (best - r) / (best - mean) "
        f"over the candidates; rank as a fraction of the candidates.",
        "",
        "| member | candidates | " + " | ".join(f"{n}: regret (rank)" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for m in members:
        X = feats.matrix([(desc[d], b, env.method) for d, b, _ in rows if d != m])
        y = np.asarray([r for d, _, r in rows if d != m])
        groups = [d for d, _, _ in rows if d != m]
        models = {t: RewardSurrogate(seed=args.seed).fit(X, standardise_by_group(y, groups) if t == "per_dataset" else y) for t in args.targets}
        if m in truths:
            cands, kind = dict(truths[m]["rewards"]), f"all {len(truths[m]['rewards'])} (table)"
        else:
            own: dict[str, list[float]] = {}
            for d, b, r in rows:
                if d == m:
                    own.setdefault(b, []).append(r)
            cands = {b: float(np.mean(v)) for b, v in own.items()}
            kind = f"{len(cands)} evaluated"
        if len(cands) < 2:
            continue
        masks = sorted(cands)
        preds = {t: model.predict(feats.matrix([(desc[m], b, env.method) for b in masks])) for t, model in models.items()}
        cells = []
        for (target, beta), n in zip(rules, names):
            mean, std = preds[target]
            pick = masks[int(np.argmax(mean + beta * std))]
            reg, rank = score(cands, pick)
            regrets[n].append(reg)
            ranks[n].append(rank)
            cells.append(f"{reg:.2f} ({rank:.2f}) `{pick}`")
        lines.append(f"| {m} | {kind} | " + " | ".join(cells) + " |")
    summary = {n: (float(np.mean(regrets[n])), float(np.median(ranks[n]))) for n in names}
    lines += ["", "| rule | mean normalised regret | median rank fraction |", "|---|---|---|"]
    lines += [f"| {n} | {r:.3f} | {k:.2f} |" for n, (r, k) in summary.items()]
    best = min(summary, key=lambda n: summary[n][0])
    lines += ["", f"Lowest mean normalised regret over {len(regrets[names[0]])} left-out members: **{best}**."]
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
