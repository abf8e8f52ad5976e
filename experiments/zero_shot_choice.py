"""Which zero-shot pick should ship? Chosen on validation members' tables, then reported on test members.

    python experiments/zero_shot_choice.py --policies RUN_S0 RUN_S1 RUN_S2 \\
        [--tables experiments/results/exhaustive] [--config experiments/exhaustive.yaml] \\
        [--validation family:64 ...] [--datasets family:80 ...] [--train-datasets family:0 family:1] [--markdown FILE] [--plot PNG]

``bench_transfer.py`` scores every zero-shot rule on the test members, so a rule chosen by those
numbers (the ensemble's ``mixture`` default was) is not a blind choice. This script makes the
choice where it belongs: on *validation* members of the family (``family:64-79``: never trained
on, never reported as a result) that have an exhaustive table, and only then looks at the test
members. The candidates are what a user of memrl could ship for a new dataset with no evaluation:

* ``fixed``: the best fixed mask, the best mean reward over the training members' tables;
* ``mixture`` and ``product``: the ensemble of all ``--policies`` (``memrl replay --policy A B C
  [--ensemble product]``), when there are two or more;
* each single policy's deterministic mask (``memrl replay --policy A``).

The rule, fixed before any validation table existed: the candidate with the lowest mean
*normalised* regret over the validation members wins, the regret divided by the table's best
minus its mean reward (members differ in scale tenfold); ties go to the earlier candidate in
the order above (the fixed mask first: it needs no policy). The choice counts as settled only
with ``SETTLED_AT`` or more members *and* the same winner whichever one member is left out (the
report prints each leave-one-out choice). The report gives each candidate's
regret and rank on the validation and test tables (on the next evaluation seed and the mean of
both where those tables exist), the goals of the issue for the chosen one, and how far down each
candidate's ranked list one must walk, one real evaluation per mask, to come within 2% of the
optimum (``memrl search --warm-start ... --warm-start-k K --budget K`` evaluates exactly that
list; for ``fixed``, the training tables' order). Everything is answered from the tables: it
runs in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
#: Fewer validation members than this and the report says the choice is a hint, not a settled rule.
#: A count alone is not enough: the choice is settled only when it also survives leaving out any
#: one validation member (see :func:`leave_one_out`).
SETTLED_AT = 3


def _bench_transfer():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_transfer", HERE / "bench_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BT = _bench_transfer()
BS = BT.BS


normalised_regret = BT.normalised_regret  # (r_max - r) / (r_max - mean); defined where bench_context can use it too


def walk(truth: dict, ranked: list[str]) -> int | None:
    """1-based position of the first mask of ``ranked`` within 2% of ``truth``'s optimum (its
    normalised score, as every few-shot figure counts it); ``None`` when none of them is."""
    span = truth["r_max"] - truth["r_min"]
    for i, bits in enumerate(ranked):
        r = truth["rewards"].get(bits)
        if r is not None and (span == 0 or (r - truth["r_min"]) / span >= BS.WITHIN):
            return i + 1
    return None


def choose(scores: dict[str, float]) -> str:
    """The candidate with the lowest score; ties go to the earliest (``scores`` is in candidate order)."""
    best = min(scores.values())
    return next(name for name, s in scores.items() if s <= best + 1e-12)


def leave_one_out(per_member: dict[str, dict[str, float]]) -> dict[str, str]:
    """The choice made with each validation member left out in turn.

    ``per_member`` maps candidate -> member -> normalised regret (candidates in candidate order).
    Returns member -> the candidate :func:`choose` picks from the other members' mean; empty with
    fewer than two members (leaving one out would leave nothing to choose on)."""
    members = list(next(iter(per_member.values())))
    if len(members) < 2:
        return {}
    return {
        left: choose({name: float(np.mean([v for d, v in scores.items() if d != left])) for name, scores in per_member.items()})
        for left in members
    }


def settled(n_members: int, chosen: str, loo: dict[str, str]) -> bool:
    """Whether the choice counts as settled: at least :data:`SETTLED_AT` validation members, and the
    same candidate chosen whichever one member is left out."""
    return n_members >= SETTLED_AT and all(c == chosen for c in loo.values())


def members_needed(diffs: list[float], alpha: float = 0.05, power: float = 0.8) -> float | None:
    """How many validation members a one-sided paired test would need to tell two candidates apart
    at level ``alpha`` with ``power``, if the per-member differences ``diffs`` (one candidate's
    normalised regret minus the other's) keep their mean and spread: ``((z_a + z_b) sd / mean)^2``
    (normal approximation). ``inf`` when the mean difference is 0, ``None`` with fewer than two
    members (no spread to measure). With a handful of members the spread is itself a rough
    estimate: read the answer as an order of magnitude."""
    from scipy.stats import norm

    x = np.asarray(diffs, dtype=float)
    if len(x) < 2:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if abs(mean) < 1e-12:
        return float("inf")
    return float(((norm.ppf(1 - alpha) + norm.ppf(power)) * sd / abs(mean)) ** 2)


def paired_cell(diffs: list[float], digits: int) -> str:
    """``+mean (sd s, ~N members)`` of per-member differences: the mean excess over the chosen
    candidate, its spread and :func:`members_needed` (at least 2), as both choice reports print it."""
    need = members_needed(diffs)
    n = "∞" if need == float("inf") else str(max(2, int(np.ceil(need))))
    return f"{np.mean(diffs):+.{digits}f} (sd {np.std(diffs, ddof=1):.{digits}f}, ~{n} members)"


def plot_choice(per_member: dict[str, dict[str, float]], chosen: str, out: Path) -> None:
    """Grouped bars of each candidate's normalised regret per validation member and on their mean
    (the chosen candidate outlined), written atomically to ``out`` (PNG): where one member's bar
    towers over the rest, that member decides the choice."""
    import io

    import matplotlib

    from memrl.utils.io import write_bytes_atomic

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_member)
    members = list(next(iter(per_member.values())))
    groups = [*members, "mean"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.3 + 1.1 * len(groups) * max(1, len(names) / 4), 3.6))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        y = [per_member[name][d] for d in members] + [float(np.mean(list(per_member[name].values())))]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, y, width, label=name + (" (chosen)" if name == chosen else ""),
               edgecolor="black" if name == chosen else "none", linewidth=1.2)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel("normalised regret\n(0 = optimum, 1 = an average mask)")
    ax.set_title("zero-shot candidates on the validation members", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue())


class Setup(NamedTuple):
    """Everything the choice reads: the env, the policies, and each candidate's ranked masks per dataset."""

    env: object
    policies: list
    val: dict[str, dict]
    test: dict[str, dict]
    test2: dict[str, dict]
    train: dict[str, dict]
    fixed_list: list[str]
    #: candidate name -> dataset -> its masks on the dataset, its zero-shot pick first
    lists: dict[str, dict[str, list[str]]]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags that say which policies, tables and members; shared with ``proposal_spread.py``."""
    ap.add_argument("--policies", nargs="+", required=True, help="memrl train run folders (or their policy.zip), agent seeds of one config")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with")
    ap.add_argument("--validation", nargs="+", default=None, help="datasets the choice is made on (default: every validation member of the family with a complete table)")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets the choice is reported on (default: every test member of the family with a complete table)")
    ap.add_argument("--train-datasets", nargs="+", default=None, help="datasets whose tables give the fixed mask (default: every training member with a complete table)")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")


def load_setup(args: argparse.Namespace) -> Setup:
    """Load the tables and policies named by ``args`` and rank every candidate's masks on each
    validation and test member. Raises :class:`~memrl.errors.MemrlError` with the one line to print."""
    from memrl.data.loaders import load_dataset
    from memrl.envs.ensemble import PolicyEnsemble
    from memrl.envs.policy import TrainedPolicy
    from memrl.errors import MemrlError

    tables = Path(args.tables)
    if not tables.is_dir() or not any(tables.rglob("*.jsonl")):
        raise MemrlError(f"no lookup tables (*.jsonl) under {tables}")
    env = BS.load_env(args.config)
    policies = [TrainedPolicy.load(BT.policy_path(p)) for p in args.policies]
    ev = BT.lookup_evaluator(tables, env, policies)
    ensembles = {rule: PolicyEnsemble(policies, rule) for rule in BT.ENSEMBLE_RULES} if len(policies) > 1 else {}
    names = BS.table_datasets(tables)
    val_names = args.validation or [d for d in names if BT.split_of(d) == "validation"]
    test_names = args.datasets or [d for d in names if BT.split_of(d) == "test"]
    train_names = args.train_datasets or [d for d in names if BT.split_of(d) == "train"]

    def truths_of(ds: list[str], explicit: bool) -> dict[str, dict]:
        out = {}
        for d in ds:
            t = BS.ground_truth(ev, env, d)
            if t is None and explicit:
                raise MemrlError(f"{d}: the tables under {tables} do not hold every mask for {args.config}'s env (seed {env.seed})")
            if t is not None:
                out[d] = t
        return out

    val = truths_of(val_names, args.validation is not None)
    test = truths_of(test_names, args.datasets is not None)
    test2 = {d: t for d in test if (t := BS.next_seed_truth(ev, env, d)) is not None}
    train = truths_of(train_names, args.train_datasets is not None)
    if not val:
        raise MemrlError(f"no validation member has a complete table under {tables}: make one with experiments/exhaustive_tables.py --datasets family:64")
    if not test:
        raise MemrlError(f"no test dataset has a complete table under {tables}")
    if not train:
        raise MemrlError(f"no training member has a complete table under {tables}: the fixed mask needs one (--train-datasets)")
    overlap = sorted(set(val) & set(test))
    if overlap:
        raise MemrlError(f"{', '.join(overlap)} is both a validation and a test dataset: choose on one set, report on the other")
    leaked = sorted((set(val) | set(test)) & {d for p in policies for d in p.env.datasets})
    if leaked:
        raise MemrlError(f"the policies were trained on {', '.join(leaked)}: choose and report on datasets they never saw")

    fixed_list = [m for m, _ in BT.best_fixed(train)]
    candidates: dict[str, object] = {"fixed": None, **ensembles}
    for p in policies:
        candidates[f"policy {Path(p.path).parent.name}"] = p

    # each dataset loaded and described by each policy once; an ensemble takes its members' descriptors
    descs = {}
    for d in [*val, *test]:
        data = load_dataset(d, ev.image_size, ev.image_channels)
        descs[d] = [p.describe(ev, data) for p in policies]

    def ranked(name: str, d: str) -> list[str]:
        """The candidate's masks on ``d``, its zero-shot pick first."""
        c = candidates[name]
        if c is None:
            return fixed_list
        desc = descs[d] if isinstance(c, PolicyEnsemble) else descs[d][policies.index(c)]
        return [x.mask.bitstring for x in c.ranked(ev, desc)]

    lists = {name: {d: ranked(name, d) for d in [*val, *test]} for name in candidates}
    return Setup(env, policies, val, test, test2, train, fixed_list, lists)


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as the report quotes it."""
    return f"`python experiments/{script}" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)) + "`"


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--plot", default=None, help="also draw each candidate's normalised regret per validation member to this PNG")
    args = ap.parse_args(argv)
    from memrl.errors import MemrlError

    try:
        s = load_setup(args)
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env, policies, val, test, test2, train, fixed_list, lists = s.env, s.policies, s.val, s.test, s.test2, s.train, s.fixed_list, s.lists

    def cell(t: dict, bits: str) -> str:
        return f"{t['r_max'] - t['rewards'][bits]:.3f} [{BT.rank_of(t, t['rewards'][bits])}]"

    def walk_cell(t: dict, ranked_: list[str]) -> str:
        w = walk(t, ranked_)
        return str(w) if w is not None else f">{len(ranked_)}"

    lines = [command_line("zero_shot_choice.py", argv), ""]
    lines.append(
        f"{len(policies)} policies ({', '.join(str(p.path) for p in policies)}); fixed mask `{fixed_list[0]}` (best mean reward over the training tables of "
        f"{', '.join(train)}). Chosen on {', '.join(val)} (validation), reported on {', '.join(test)} (test). Regret [rank of {next(iter(val.values()))['masks']}]; "
        "normalised regret: regret / (best - mean reward of the table); walk: real evaluations down the candidate's ranked list to within 2% of the optimum."
    )
    lines += ["", "Validation (the choice):", ""]
    head = "| candidate | " + " | ".join(f"{d}: regret [rank] | walk" for d in val) + " | mean normalised regret |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    per_member = {name: {d: normalised_regret(t, lists[name][d][0]) for d, t in val.items()} for name in lists}
    val_score = {name: float(np.mean(list(scores.values()))) for name, scores in per_member.items()}
    chosen = choose(val_score)
    loo = leave_one_out(per_member)
    for name in lists:
        mark = f"**{name}** (chosen)" if name == chosen else name
        lines.append(f"| {mark} | " + " | ".join(f"{cell(t, lists[name][d][0])} | {walk_cell(t, lists[name][d])}" for d, t in val.items()) + f" | {val_score[name]:.3f} |")
    lines += ["", "Test (the report):", ""]
    views = [(f"seed {env.seed}", test)]
    if test2:
        views += [(f"seed {env.seed + 1}", test2), ("mean of both", {d: BT.two_seed_mean(test[d], test2[d]) for d in test2})]
    head = "| candidate | " + " | ".join(f"{d}: regret [rank] | walk" for d in test) + " | " + " | ".join(f"{v}: mean regret | median rank" for v, _ in views) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for name in lists:
        row = [f"{cell(t, lists[name][d][0])} | {walk_cell(t, lists[name][d])}" for d, t in test.items()]
        summary[name] = {}
        for v, view in views:
            picks = {d: lists[name][d][0] for d in view}
            regret = float(np.mean([view[d]["r_max"] - view[d]["rewards"][b] for d, b in picks.items()]))
            rank = float(np.median([BT.rank_of(view[d], view[d]["rewards"][b]) / view[d]["masks"] for d, b in picks.items()]))
            summary[name][v] = (regret, rank)
            row.append(f"{regret:.3f} | {100 * rank:.1f}%")
        mark = f"**{name}** (chosen)" if name == chosen else name
        lines.append(f"| {mark} | " + " | ".join(row) + " |")
    lines += ["", "Verdict:", ""]
    if settled(len(val), chosen, loo):
        status = ". Settled: the same choice whichever one member is left out"
    elif len(val) < SETTLED_AT:
        status = f". {len(val)} validation member(s), fewer than {SETTLED_AT}: a hint, not a settled rule"
    else:
        status = ". Not settled: the choice moves when one member is left out"
    lines.append(
        f"- chosen on validation: **{chosen}** (mean normalised regret {val_score[chosen]:.3f} on {len(val)} member(s); "
        + ", ".join(f"{n} {s:.3f}" for n, s in val_score.items() if n != chosen)
        + ")"
        + status
    )
    if len(val) > 1:
        parts = []
        for n in lists:
            if n == chosen:
                continue
            parts.append(f"{n} {paired_cell([per_member[n][d] - per_member[chosen][d] for d in val], 3)}")
        lines.append(
            f"- paired against **{chosen}** on the validation members, each candidate's mean excess normalised regret, its spread over the members, and about how "
            "many members a one-sided paired test at 5% would need to separate the two with 80% power at that mean and spread: " + ", ".join(parts)
        )
    if loo:
        lines.append(
            "- leave one validation member out: "
            + ", ".join(f"without {d} -> {c}" + ("" if c == chosen else " (moves)") for d, c in loo.items())
        )
    for v, _ in views:
        regret, rank = summary[chosen][v]
        fixed_regret = summary["fixed"][v][0]
        if chosen == "fixed":
            vs = "it is the fixed mask: no policy ships zero-shot"
        else:
            vs = f"fixed mask {fixed_regret:.3f} -> {'beats it' if regret < fixed_regret else 'does not beat it'}"
        lines.append(f"- test, {v}: mean regret {regret:.3f} ({vs}); median rank {100 * rank:.1f}% -> top-10% goal {'met' if rank <= 0.10 else 'not met'}")
    walks = {name: [walk(t, lists[name][d]) for d, t in test.items()] for name in lists}
    lines.append(
        "- walk down the ranked list to within 2% (test, seed "
        + str(env.seed)
        + "), median over the test datasets: "
        + ", ".join(f"{n} {float(np.median([w if w is not None else np.inf for w in ws])):g}" for n, ws in walks.items())
    )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        from memrl.utils.io import write_text_atomic

        write_text_atomic(Path(args.markdown), text)
    if args.plot:
        plot_choice(per_member, chosen, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
