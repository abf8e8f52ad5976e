"""Does the dataset descriptor help pick a mask for a new dataset? The reward model with and without it.

    python experiments/bench_context.py --run runs/amortised-s0 [--tables experiments/results/exhaustive] \\
        [--datasets family:80 ...] [--config experiments/exhaustive.yaml] [--library family:0 ...] [--markdown FILE]
    python experiments/bench_context.py --library family:0 ... --vectors FILE.json [--target per_dataset]

A policy can only beat the best fixed mask if what tells datasets apart (the descriptor) predicts
which mask is good. This asks that directly, with the real evaluations an amortised ``memrl
train`` run spent on the family's *training* members (``RUN/evaluations.csv``, failures left
out) and the run's own descriptor basis (``RUN/descriptor.json``):

* **with context**: memrl's reward model (:class:`memrl.evaluation.surrogate.RewardSurrogate`, a
  Gaussian process) on descriptor + effective mask bits;
* **without context**: the same model on the mask bits alone (one reward surface for every
  dataset: the data's estimate of a best fixed mask).

For every test member with a complete exhaustive table, each model's zero-shot pick (the mask
with the highest predicted reward among all masks) is scored by the table: regret
(``r_max - r``), rank among the masks and the Spearman correlation of the model's predicted
rewards with the table's (how well it orders masks on a dataset it never saw). Beside them: the
best fixed mask of the training members' tables (when any exist) and a random mask. With
``--library D ...`` the model is fitted on every mask of those datasets' complete tables instead
(the run only gives the descriptor basis): what more evaluations per training member could at
best teach it, a bound on what the amortised run's sparse evaluations leave out. With
``--vectors FILE.json`` (``{dataset: [numbers]}``, e.g. ``gradient_descriptor.py --out``) the
context is those vectors instead of the run's descriptor, so any candidate descriptor is tried in
the reward model itself; with ``--library`` too, no run is needed. Besides raw regret (which the
widest-ranged member dominates) every pick is scored by normalised regret ``(r_max - r) / (r_max
- mean)``, and again on the next evaluation seed's table where one exists (numbers the fit never
saw). Nothing is fine-tuned; it runs in seconds to minutes. The verdict line says which pick has
the lower mean regret.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from typing import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BS = _load("bench_search")
BT = _load("bench_transfer")


def training_rows(run: Path | Sequence[Path]) -> list[tuple[str, str, float]]:
    """``(dataset, effective mask bits, reward)`` of the run's real, successful evaluations. With
    several runs (agent seeds sharing one evaluation cache), their evaluations pooled: a
    dataset-mask pair two runs evaluated is one evaluation (the first run's row), not two."""
    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    rows, seen = [], set()
    for folder in runs:
        with open(folder / "evaluations.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r.get("failed") == "True" or not r.get("reward") or (r["dataset"], r["mask_bits"]) in seen:
                    continue
                seen.add((r["dataset"], r["mask_bits"]))
                rows.append((r["dataset"], r["mask_bits"], float(r["reward"])))
    return rows


def run_inputs(run: Path | Sequence[Path], tables: Path, config: str, describe: bool = True):  # noqa: ANN201
    """``(env, lookup evaluator, feature net, descriptor basis, rows)`` of an amortised run scored
    against the tables: the env the tables were made with, the run's own descriptor basis and its
    successful evaluations (:func:`training_rows`). Several runs: the first run's basis and the
    runs' evaluations pooled. ``describe=False`` (the context comes from elsewhere): no feature
    net or basis is loaded (``None``). :class:`MemrlError` when any is missing."""
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.errors import MemrlError
    from memrl.evaluation.lookup import LookupEvaluator

    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    for folder in runs:  # checked first: a mistyped run folder should not wait for the tables to load
        if not (folder / "evaluations.csv").is_file() or not (folder / "descriptor.json").is_file():
            raise MemrlError(f"{folder}: not a memrl train run folder (needs evaluations.csv and descriptor.json)")
    env = BS.load_env(config)
    ev = LookupEvaluator.from_dir(tables)
    net = basis = None
    if describe:
        if ev.feature_net is None:
            ev.set_feature_net(Path(env.pretrained) / "feature_net")
        net = ev.require_feature_net()
        basis = DescriptorBasis.load(runs[0] / "descriptor.json")
    rows = training_rows(runs)
    if not rows:
        raise MemrlError(f"{', '.join(map(str, runs))}: evaluations.csv has no successful evaluation yet")
    return env, ev, net, basis, rows


def library_truths(ev, env, names: Sequence[str]) -> dict[str, dict]:  # noqa: ANN001
    """Each named dataset's complete table (:func:`bench_search.ground_truth`): what the reward
    model would learn from training members evaluated in full, instead of the ~14 masks per member
    an amortised run evaluates. :class:`MemrlError` when a table is missing or not complete."""
    from memrl.errors import MemrlError

    out = {}
    for d in names:
        try:
            t = BS.ground_truth(ev, env, d)
        except MemrlError as exc:
            raise MemrlError(f"--library {d}: {exc}") from None
        if t is None:
            raise MemrlError(f"--library {d}: the tables do not hold every mask of it for the config's env (seed {env.seed})")
        out[d] = t
    return out


def table_rows(truths: dict[str, dict]) -> list[tuple[str, str, float]]:
    """``(dataset, mask bits, reward)`` of every mask of each table."""
    return [(d, bits, float(r)) for d, t in truths.items() for bits, r in sorted(t["rewards"].items())]


def fit_models(rows: Sequence[tuple[str, str, float]], desc: dict[str, np.ndarray], method: str, target: str, seed: int) -> dict:
    """``{"with context": (features, model), "without context": (features, model)}``: memrl's reward
    model fitted on ``rows`` with each dataset's context ``desc[d]`` + mask bits, and on the mask
    bits alone (the sizes of both come from the rows and contexts). ``target="per_dataset"``
    standardises the rewards within each dataset first."""
    from memrl.evaluation.surrogate import RewardSurrogate, SurrogateFeatures, standardise_by_group

    y = np.asarray([r for _, _, r in rows])
    if target == "per_dataset":  # the argmax on a new dataset does not depend on its scale
        y = standardise_by_group(y, [d for d, _, _ in rows])
    n_units = len(rows[0][1])
    with_ctx, without = SurrogateFeatures(len(desc[rows[0][0]]), n_units), SurrogateFeatures(0, n_units)
    return {
        "with context": (with_ctx, RewardSurrogate(seed=seed).fit(with_ctx.matrix([(desc[d], b, method) for d, b, _ in rows]), y)),
        "without context": (without, RewardSurrogate(seed=seed).fit(without.matrix([((), b, method) for _, b, _ in rows]), y)),
    }


def predict_pick(feats, model, ctx: np.ndarray, masks: Sequence[str], method: str) -> tuple[str, np.ndarray]:  # noqa: ANN001
    """``(the mask of highest predicted mean, the predicted means over masks)`` for a dataset of context ``ctx``."""
    mean, _ = model.predict(feats.matrix([(ctx if feats.descriptor_dim else (), m, method) for m in masks]))
    return masks[int(np.argmax(mean))], mean


def leave_one_out(library: dict[str, dict], rows: Sequence[tuple[str, str, float]], desc: dict[str, np.ndarray], method: str, target: str, seed: int) -> list[str]:
    """Markdown lines: each library member's normalised regret [rank] for the picks of the models
    fitted on the other members' rows (:func:`fit_models`) and for the others' best fixed mask."""
    names = ("with context", "without context", "fixed of the others")
    out = [
        f"Leave-one-out over the {len(library)} library tables: each member scored by the models fitted on the others' rows and by the others' best fixed mask. Normalised regret [rank].",
        "",
        "| left out (split) | " + " | ".join(names) + " |",
        "|---|---|---|---|",
    ]
    res: dict[str, list[float]] = {k: [] for k in names}
    for d, t in library.items():
        masks = sorted(t["rewards"])
        models = fit_models([r for r in rows if r[0] != d], desc, method, target, seed)
        chosen = [predict_pick(feats, model, desc[d], masks, method)[0] for feats, model in models.values()]
        chosen.append(BT.best_fixed({k: v for k, v in library.items() if k != d})[0][0])
        cells = []
        for name, m in zip(names, chosen):
            res[name].append(BT.normalised_regret(t, m))
            cells.append(f"{res[name][-1]:.2f} [{BT.rank_of(t, t['rewards'][m])}] `{m}`")
        out.append(f"| {d} ({BT.split_of(d)}) | " + " | ".join(cells) + " |")
    ctx, fixed = np.asarray(res["with context"]), np.asarray(res["fixed of the others"])
    out += [
        "",
        "Mean normalised regret: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in res.items())
        + f"; with context better than the fixed mask on {int((ctx < fixed - 1e-9).sum())}, worse on {int((ctx > fixed + 1e-9).sum())} of {len(ctx)}.",
    ]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", default=None, help="an amortised memrl train run folder (evaluations.csv, descriptor.json, config.yaml); several (agent seeds): their evaluations pooled, the first one's descriptor basis. Needed unless both --library and --vectors are given")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets to test on (default: every test member with a complete table)")
    ap.add_argument("--train-datasets", nargs="+", default=None, help="datasets whose tables give the best fixed mask (default: every training member with a complete table)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with")
    ap.add_argument("--library", nargs="+", default=None, help="fit the reward model on every mask of these datasets' complete tables (e.g. the training and validation members) instead of the run's evaluations; the run still gives the descriptor basis")
    ap.add_argument("--vectors", default=None, help="JSON {dataset: [numbers]} (e.g. gradient_descriptor.py --out): the context of every dataset, instead of the run's descriptor")
    ap.add_argument("--target", choices=["raw", "per_dataset"], default="raw", help="what the reward model is fitted on: raw rewards, or rewards standardised within each training dataset (memrl.evaluation.surrogate.standardise_by_group: a wide-range member does not dominate the fit)")
    ap.add_argument("--leave-one-out", action="store_true", help="with --library: also score each library member by the models fitted on the other members (and the others' best fixed mask): evidence from members no choice is reported on, beside the few test members")
    ap.add_argument("--seed", type=int, default=0, help="seed of the reward model's optimiser restarts")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    args = ap.parse_args(argv)
    t0 = time.time()

    from memrl.data.loaders import load_dataset
    from memrl.errors import MemrlError
    from memrl.evaluation.lookup import LookupEvaluator

    run, tables = [Path(r) for r in args.run or ()], Path(args.tables)
    run_name = " + ".join(map(str, run))
    try:
        if args.leave_one_out and len(args.library or ()) < 3:
            raise MemrlError(f"--leave-one-out: needs --library with at least 3 datasets, got {len(args.library or ())}")
        vectors = BT.load_vectors(args.vectors) if args.vectors else None  # checked before the tables load
        if not run:
            needs = [w for missing, w in ((not args.library, "the evaluations to fit on (or --library)"), (not args.vectors, "the descriptor basis (or --vectors)")) if missing]
            if needs:
                raise MemrlError(f"--run: a run folder is needed for {' and '.join(needs)}")
            env, ev, rows = BS.load_env(args.config), LookupEvaluator.from_dir(tables), []
        else:
            env, ev, net, basis, rows = run_inputs(run, tables, args.config, describe=not args.vectors)
        names = BS.table_datasets(tables)
        test_names = args.datasets or [d for d in names if BT.split_of(d) == "test"]
        # with a library, the best fixed mask comes from the same tables the model is fitted on
        train_names = args.train_datasets or args.library or [d for d in names if BT.split_of(d) == "train"]
        truths = {d: t for d in test_names if (t := BS.ground_truth(ev, env, d)) is not None}
        library = library_truths(ev, env, args.library) if args.library else {}  # checked before the fixed mask reads the same tables
        if library:
            rows = table_rows(library)
        train_truths = {d: t for d in train_names if (t := library.get(d) or BS.ground_truth(ev, env, d)) is not None}
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not truths:
        print(f"error: no test dataset has a complete table under {tables}", file=sys.stderr)
        return 2
    leak = sorted({d for d, _, _ in rows} & set(truths))
    if leak:
        source = "--library holds" if args.library else f"{run_name} trained on"
        print(f"error: {source} {', '.join(leak)}, a dataset tested here", file=sys.stderr)
        return 2

    described = sorted({d for d, _, _ in rows} | set(truths))
    if vectors is None:
        desc = {d: basis.describe(net, load_dataset(d, ev.image_size, ev.image_channels)) for d in described}
        context = f"descriptor basis of `{run_name}`" if args.library else "descriptor basis of that run"
    else:
        missing = [d for d in described if d not in vectors]
        if missing:
            print(f"error: {args.vectors}: no vector for {', '.join(missing)} (it holds {', '.join(sorted(vectors))})", file=sys.stderr)
            return 2
        desc = {d: vectors[d] for d in described}
        context = f"the vectors of `{args.vectors}`"
    n_units = len(ev.units)
    models = fit_models(rows, desc, env.method, args.target, args.seed)
    fixed = BT.best_fixed(train_truths)[0][0] if train_truths else None

    fitted_on = (
        f"every mask of the complete tables of {', '.join(args.library)} ({len(rows)} rows; {context})"
        if args.library
        else f"{len(rows)} real evaluations of `{run_name}` on {len({d for d, _, _ in rows})} training members ({context})"
    )
    lines = [
        f"Reward model zero-shot on test members, fitted on {fitted_on}" + (", rewards standardised within each dataset" if args.target == "per_dataset" else "")
        + f"; ground truth: the tables under `{tables}` "
        f"(seed {env.seed}). Regret = r_max - r; rank among {n_units and 2 ** n_units} masks; rho = Spearman of predicted vs true rewards over all masks.",
        "",
        "| dataset | with context: regret (rank), rho | without context: regret (rank), rho | best fixed" + (f" `{fixed}`" if fixed else "") + " | random (expected) |",
        "|---|---|---|---|---|",
    ]
    regrets: dict[str, list[float]] = {k: [] for k in (*models, "best fixed", "random")}
    ranks: dict[str, list[int]] = {k: [] for k in (*models, "best fixed")}
    rhos: dict[str, list[float]] = {k: [] for k in models}
    picks: dict[str, dict[str, str]] = {k: {} for k in (*models, "best fixed")}
    for d, t in truths.items():
        masks = sorted(t["rewards"])
        true = np.asarray([t["rewards"][m] for m in masks])
        cells = []
        for name, (feats, model) in models.items():
            pick, mean = predict_pick(feats, model, desc[d], masks, env.method)
            picks[name][d] = pick
            reg = t["r_max"] - t["rewards"][pick]
            regrets[name].append(reg)
            ranks[name].append(BT.rank_of(t, t["rewards"][pick]))
            rhos[name].append(spearman(mean, true))
            cells.append(f"{reg:.3f} ({ranks[name][-1]}), {rhos[name][-1]:.2f} `{pick}`")
        if fixed is not None and fixed in t["rewards"]:
            picks["best fixed"][d] = fixed
            reg = t["r_max"] - t["rewards"][fixed]
            regrets["best fixed"].append(reg)
            ranks["best fixed"].append(BT.rank_of(t, t["rewards"][fixed]))
            cells.append(f"{reg:.3f} ({ranks['best fixed'][-1]})")
        else:
            cells.append("n/a")
        regrets["random"].append(float(t["r_max"] - true.mean()))
        cells.append(f"{regrets['random'][-1]:.3f} ({(len(true) + 1) / 2:.0f})")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    means = {k: float(np.mean(v)) for k, v in regrets.items() if v}
    lines += ["", "Mean regret: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()) + "."]
    lines.append("Median rank: " + ", ".join(f"{k} {float(np.median(v)):g}" for k, v in ranks.items() if v) + "; mean rho: " + ", ".join(f"{k} {float(np.mean(v)):.2f}" for k, v in rhos.items()) + ".")
    lines.append("Mean normalised regret ((r_max - r) / (r_max - mean): 0 at the optimum, 1 for an average mask, so each member counts alike): "
                 + ", ".join(f"{k} {np.mean([BT.normalised_regret(truths[d], m) for d, m in p.items()]):.3f}" for k, p in picks.items() if p) + ".")
    nxt = {d: t1 for d in truths if (t1 := BS.next_seed_truth(ev, env, d)) is not None}
    if nxt:
        lines.append(f"On the next evaluation seed's tables ({', '.join(nxt)}; seed {env.seed + 1}, never fitted on): mean normalised regret "
                     + ", ".join(f"{k} {np.mean([BT.normalised_regret(nxt[d], p[d]) for d in nxt if d in p]):.3f}" for k, p in picks.items() if any(d in p for d in nxt)) + ".")
    if fixed is not None:
        lines.append(f"The best fixed mask (best mean reward) comes from {len(train_truths)} table(s) ({', '.join(train_truths)}), every mask evaluated on each.")
    best = min(means, key=means.get)
    lines.append(f"Verdict: lowest mean regret over {len(truths)} test member(s): **{best}**.")
    if args.leave_one_out:
        lines += ["", *leave_one_out(library, rows, desc, env.method, args.target, args.seed)]
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
