"""How much does an ensemble's zero-shot verdict depend on which agent seeds it pools?

    python experiments/ensemble_subsets.py --policies RUN_S0 RUN_S1 RUN_S2 [RUN_S3 ...] \\
        [--tables experiments/results/exhaustive] [--config experiments/exhaustive.yaml] \\
        [--datasets family:80 ...] [--train-datasets family:0 family:1] [--rules mixture product] [--markdown FILE]

For every subset of the ``--policies`` (agent seeds of one ``memrl train`` config), of every size
from 1 (the single policies) to all of them, the subset proposes as one
(:class:`memrl.envs.ensemble.PolicyEnsemble`; a single policy as itself) and its zero-shot mask
on each test dataset is scored on the exhaustive tables: regret and rank on the evaluation seed
of ``--config``, on the next seed where a table exists, and on the mean of both. Per subset size
and rule the report gives the mean over subsets of their mean regret (lowest and highest), how
many subsets beat the best fixed mask (best mean reward over the training members' tables) on
mean regret, and how many meet the top-10% goal on their median rank; then every subset's row. Everything is answered from the
tables: it runs in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import shlex
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _bench_transfer():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_transfer", HERE / "bench_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BT = _bench_transfer()
BS = BT.BS


def score(bits: str, truth: dict) -> tuple[float, int]:
    """Regret and rank of ``bits`` on ``truth``."""
    r = truth["rewards"][bits]
    return truth["r_max"] - r, BT.rank_of(truth, r)


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", required=True, help="memrl train run folders (or their policy.zip), agent seeds of one config")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets to score on (default: every test member of the family with a complete table)")
    ap.add_argument("--train-datasets", nargs="+", default=None, help="datasets whose tables give the best fixed mask (default: every training member with a complete table)")
    ap.add_argument("--rules", nargs="+", default=["mixture", "product"], choices=("mixture", "product"), help="ensemble rules to score (default both)")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    args = ap.parse_args(argv)

    from memrl.data.loaders import load_dataset
    from memrl.envs.ensemble import PolicyEnsemble
    from memrl.envs.policy import TrainedPolicy
    from memrl.errors import MemrlError

    tables = Path(args.tables)
    if not tables.is_dir() or not any(tables.rglob("*.jsonl")):
        print(f"error: no lookup tables (*.jsonl) under {tables}", file=sys.stderr)
        return 2
    try:
        env = BS.load_env(args.config)
        policies = [TrainedPolicy.load(BT.policy_path(p)) for p in args.policies]
        ev = BT.lookup_evaluator(tables, env, policies)
        if len(policies) > 1:
            PolicyEnsemble(policies)  # one clear line when they are not runs of one config
        names = BS.table_datasets(tables)
        test = args.datasets or [d for d in names if BT.split_of(d) == "test"]
        train = args.train_datasets or [d for d in names if BT.split_of(d) == "train"]
        truths = {d: t for d in test if (t := BS.ground_truth(ev, env, d)) is not None}
        truths2 = {d: t for d in truths if (t := BS.next_seed_truth(ev, env, d)) is not None}
        train_truths = {d: t for d in train if (t := BS.ground_truth(ev, env, d)) is not None}
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not truths:
        print(f"error: no test dataset has a complete table under {tables}", file=sys.stderr)
        return 2
    leaked = sorted(set(truths) & {d for p in policies for d in p.env.datasets})
    if leaked:
        print(f"error: the policies were trained on {', '.join(leaked)}: score on datasets they never saw", file=sys.stderr)
        return 2
    fixed = BT.best_fixed(train_truths)[0][0] if train_truths else None
    data = {d: load_dataset(d, ev.image_size, ev.image_channels) for d in truths}
    descs = {d: [p.describe(ev, data[d]) for p in policies] for d in truths}

    def pick(members: tuple[int, ...], rule: str, d: str) -> str:
        if len(members) == 1:
            p = policies[members[0]]
            return p.deterministic(ev, descs[d][members[0]]).mask.bitstring
        ens = PolicyEnsemble([policies[i] for i in members], rule)
        return ens.ranked(ev, [descs[d][i] for i in members], k=1)[0].mask.bitstring

    truths_mean = {d: BT.two_seed_mean(truths[d], truths2[d]) for d in truths2}
    views = [("seed " + str(env.seed), truths)] + ([("seed " + str(env.seed + 1), truths2), ("mean of both", truths_mean)] if truths2 else [])
    n = len(policies)
    lines = ["`python experiments/ensemble_subsets.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)) + "`", ""]
    lines.append(
        f"{n} policies ({', '.join(str(p.path) for p in policies)}); test datasets {', '.join(truths)}; best fixed mask "
        f"{fixed or 'n/a'} (training tables {', '.join(train_truths) or 'none'}). Per subset size and rule: the mean over subsets of their mean regret "
        "over the test datasets (with the lowest and highest), how many subsets have a lower mean regret than the fixed mask, and how many have a median rank "
        "in the top 10%."
    )
    lines.append("")
    fixed_regret = {name: float(np.mean([t["r_max"] - t["rewards"][fixed] for t in view.values()])) if fixed else None for name, view in views}
    head = "| members | rule | subsets | " + " | ".join(f"{name}: mean regret (min-max) | beats fixed | top 10%" for name, _ in views) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    detail: list[str] = []
    for size in range(1, n + 1):
        for rule in (["-"] if size == 1 else args.rules):
            subsets = list(itertools.combinations(range(n), size))
            cells = []
            per_view: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in views}
            for members in subsets:
                picks = {d: pick(members, rule, d) for d in truths}
                row = []
                for name, view in views:
                    regs, ranks = zip(*(score(picks[d], view[d]) for d in view))
                    per_view[name].append((float(np.mean(regs)), float(np.median([r / view[d]["masks"] for r, d in zip(ranks, view)]))))
                    row.append(f"{np.mean(regs):.3f} ({', '.join(str(r) for r in ranks)})")
                detail.append(f"| {', '.join(Path(policies[i].path).parent.name for i in members)} | {rule} | " + " | ".join(row) + " |")
            for name, _ in views:
                regs = [r for r, _ in per_view[name]]
                beats = sum(r < fixed_regret[name] for r in regs) if fixed else 0
                top = sum(k <= 0.10 for _, k in per_view[name])
                cells.append(f"{np.mean(regs):.3f} ({min(regs):.2f}-{max(regs):.2f}) | {beats} of {len(subsets)} | {top} of {len(subsets)}")
            lines.append(f"| {size} | {rule} | {len(subsets)} | " + " | ".join(cells) + " |")
    if fixed:
        lines.append(f"| fixed `{fixed}` | - | - | " + " | ".join(f"{fixed_regret[name]:.3f} | - | -" for name, _ in views) + " |")
    lines.append("")
    lines.append("Every subset: mean regret (ranks per test dataset, in the order " + ", ".join(truths) + "):")
    lines.append("")
    head2 = "| members | rule | " + " | ".join(name for name, _ in views) + " |"
    lines += [head2, "|" + "---|" * (head2.count("|") - 1), *detail, ""]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        from memrl.utils.io import write_text_atomic

        write_text_atomic(Path(args.markdown), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
