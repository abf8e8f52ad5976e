"""Does spreading the warm start out in mask space help? Chosen on validation members, reported on test members.

    python experiments/proposal_spread.py --policies RUN_S0 RUN_S1 RUN_S2 \\
        [--distances 0 2 3] [--k 4] [--seeds 10] [--budget 32] [--cache FILE] [--markdown FILE] \\
        [--tables ...] [--config ...] [--validation ...] [--datasets ...] [--train-datasets ...]

A warm start enqueues the first ``--k`` proposals of a ranked list (``memrl search --warm-start``
/ ``--warm-start-tables``). A policy's next proposals are close to its first, so when the first
is wrong the next ones are too. :func:`memrl.search.spread.spread` reorders a list so that each
proposal differs from the ones before it in at least ``d`` blocks where possible (``d = 0``: the
list as it is; the first proposal never changes, so the zero-shot pick is untouched).

For each warm-start source (``fixed``: the best fixed masks of the training tables; ``mixture``,
``product``: the ensemble of ``--policies``) and each ``d`` of ``--distances`` this script
measures, on every validation member's table:

* ``walk``: real evaluations down the spread list to within 2% of the optimum (``--warm-start-k K
  --budget K`` evaluates exactly that list);
* ``tpe+warm``: TPE warm-started with the first ``--k`` proposals of the spread list, ``--seeds``
  sampler seeds of ``--budget`` trials each (``memrl search --lookup``): evaluations to within 2%.

The rule, fixed before any number was seen: the (source, d) with the lowest median ``tpe+warm``
count over the validation runs (a run that never gets there counts as ``budget + 1``) wins; ties
go to the lower mean walk, then the smaller ``d``, then the source order above. Only then are the
test members run: the chosen (source, d) against plain TPE and the same source with ``d = 0``
(one-sided Mann-Whitney tests, as in ``bench_transfer.py``). The choice made with each validation
member left out is printed too: as in ``zero_shot_choice.py``, it is settled only when none of
them moves it. TPE runs are cached in ``--cache``
by dataset, warm list, seed and budget, so adding a validation table reruns only its runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ZC = _load("zero_shot_choice")
BT = ZC.BT
BS = ZC.BS
SOURCES = ("fixed", "mixture", "product")


def rule_key(median_hits: float, mean_walk: float, d: int, source_index: int) -> tuple:
    """The order the choice sorts by (lowest first): the validation median, then the walk, then ``d``, then the source."""
    return (median_hits, mean_walk, d, source_index)


def choice(measured: dict[tuple[str, int], dict[str, tuple[int, list[dict]]]], members: list[str], budget: int) -> tuple[str, int]:
    """The rule's (source, d) on ``members`` only. ``measured`` maps (source, d) -> member -> (walk,
    TPE traces with their ``hit``); its sources are ranked in :data:`SOURCES` order."""

    def key(arm: tuple[str, int]) -> tuple:
        traces = [tr for d in members for tr in measured[arm][d][1]]
        med = BS.quantiles([t["hit"] for t in traces], budget)[1]
        walks = [measured[arm][d][0] for d in members]
        return rule_key(med[0] if not med[1] else budget + 1, float(np.mean(walks)), arm[1], SOURCES.index(arm[0]))

    return min(measured, key=key)


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ZC.add_arguments(ap)
    ap.add_argument("--distances", nargs="+", type=int, default=[0, 2, 3], help="minimum Hamming distances between the warm-start proposals to try (0: the list as ranked; 1 is the same, the proposals being distinct)")
    ap.add_argument("--k", type=int, default=4, help="warm-start proposals (memrl search --warm-start-k)")
    ap.add_argument("--seeds", type=int, default=10, help="TPE sampler seeds 0..N-1 per dataset and (source, d)")
    ap.add_argument("--budget", type=int, default=32, help="trials per TPE run")
    ap.add_argument("--cache", default="experiments/results/transfer_committed/proposal_spread.json", help="TPE runs by key (reused when the key matches)")
    args = ap.parse_args(argv)
    from memrl.errors import MemrlError
    from memrl.search.spread import spread
    from memrl.utils.io import write_json_atomic, write_text_atomic

    if any(d < 0 for d in args.distances) or args.k < 1 or args.seeds < 1 or args.budget < args.k:
        print("error: --distances must be >= 0, --k and --seeds >= 1, and --budget >= --k", file=sys.stderr)
        return 2
    try:
        s = ZC.load_setup(args)
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sources = [c for c in SOURCES if c in s.lists]
    distances = sorted(set(args.distances))
    tables = Path(args.tables)
    method = s.env.method
    cache_path = Path(args.cache)
    cache: dict = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    fresh = 0

    def tpe(d: str, warm: list[str] | None, seed: int) -> dict:
        """A TPE run's trace on ``d`` (cached), warm-started with ``warm``."""
        nonlocal fresh
        key = f"{d}|{'-'.join(warm) if warm else 'none'}|seed{seed}|budget{args.budget}"
        if key not in cache:
            proposals = [(b, method, None) for b in warm] if warm else None
            cache[key] = BT.run_tpe(s.env, tables, d, seed, args.budget, proposals=proposals)
            fresh += 1
            if fresh % 20 == 0:
                write_json_atomic(cache_path, cache)
        return cache[key]

    def hits(d: str, truth: dict, warm: list[str] | None) -> list[dict]:
        return [BS.trace(tpe(d, warm, seed), truth, args.budget) for seed in range(args.seeds)]

    def walked(t: dict, lst: list[str]) -> int:
        """The walk down ``lst`` on ``t``; one past the list's end when no mask of it is within 2%."""
        w = ZC.walk(t, lst)
        return len(lst) + 1 if w is None else w

    lines = [ZC.command_line("proposal_spread.py", argv), ""]
    lines.append(
        f"Warm start of {args.k} proposals, then TPE to {args.budget} trials, {args.seeds} sampler seeds per dataset. Sources: fixed (best fixed masks of "
        f"{', '.join(s.train)}), mixture and product (ensemble of {len(s.policies)} policies). d: minimum Hamming distance between proposals "
        f"(memrl.search.spread). Chosen on {', '.join(s.val)} (validation), reported on {', '.join(s.test)} (test). walk: evaluations down the "
        f"spread list to within 2%; tpe+warm: evaluations to within 2%, median [IQR] over the runs."
    )
    lines += ["", "Validation (the choice):", ""]
    head = "| source | d | first proposals on " + next(iter(s.val)) + " | " + " | ".join(f"{d}: walk" for d in s.val) + " | mean walk | tpe+warm median [IQR] |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    #: (source, d) -> validation member -> (walk, TPE traces)
    measured: dict[tuple[str, int], dict[str, tuple[int, list[dict]]]] = {}
    for src in sources:
        for dist in distances:
            spread_lists = {d: spread(s.lists[src][d], dist) for d in s.val}
            measured[(src, dist)] = {d: (walked(t, spread_lists[d]), hits(d, t, spread_lists[d][: args.k])) for d, t in s.val.items()}
            walks = [w for w, _ in measured[(src, dist)].values()]
            traces = [tr for _, trs in measured[(src, dist)].values() for tr in trs]
            first = spread_lists[next(iter(s.val))][: args.k]
            lines.append(f"| {src} | {dist} | {' '.join(first)} | " + " | ".join(map(str, walks)) + f" | {np.mean(walks):.1f} | {BT.hits_median(traces, args.budget)} |")

    chosen = choice(measured, list(s.val), args.budget)
    src, dist = chosen
    loo = {left: choice(measured, [d for d in s.val if d != left], args.budget) for left in s.val} if len(s.val) > 1 else {}
    if ZC.settled(len(s.val), chosen, loo):
        status = " (settled: the same choice whichever one validation member is left out)"
    elif len(s.val) < ZC.SETTLED_AT:
        status = f" ({len(s.val)} validation member(s), fewer than {ZC.SETTLED_AT}: a hint, not a settled rule)"
    else:
        status = " (not settled: the choice moves when one validation member is left out)"
    lines += ["", f"Chosen on validation: **{src}, d = {dist}**" + status, ""]
    if len(s.val) > 1:
        per_member = {arm: {d: BS.quantiles([t["hit"] for t in trs], args.budget)[1][0] for d, (_, trs) in runs.items()} for arm, runs in measured.items()}
        parts = []
        for arm, meds in per_member.items():
            if arm != chosen:
                parts.append(f"{arm[0]}, d = {arm[1]}: {ZC.paired_cell([meds[d] - per_member[chosen][d] for d in s.val], 1)}")
        lines += [
            "Paired against the chosen on the validation members (per-member median tpe+warm evaluations, a run that never gets within 2% counted as "
            f"{args.budget + 1}): the mean excess, its spread, and about how many members a one-sided paired test at 5% would need with 80% power: " + "; ".join(parts),
            "",
        ]
    if loo:
        lines += [
            "Leave one validation member out: "
            + ", ".join(f"without {d} -> {a}, d = {b}" + ("" if (a, b) == chosen else " (moves)") for d, (a, b) in loo.items()),
            "",
        ]

    lines += ["Test (the report):", ""]
    arms = {"tpe": None, f"{src}, d = 0": (src, 0)}
    if dist != 0:
        arms[f"{src}, d = {dist} (chosen)"] = (src, dist)
    if src != "fixed":
        arms["fixed, d = 0"] = ("fixed", 0)
    head = "| arm | " + " | ".join(f"{d}: walk | tpe+warm median" for d in s.test) + " | pooled tpe+warm median [IQR] |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    pooled: dict[str, list[dict]] = {}
    for arm, spec in arms.items():
        row, pooled[arm] = [], []
        for d, t in s.test.items():
            lst = None if spec is None else spread(s.lists[spec[0]][d], spec[1])
            traces = hits(d, t, None if lst is None else lst[: args.k])
            pooled[arm] += traces
            w = "-" if lst is None else str(walked(t, lst))
            row.append(f"{w} | {BT.hits_median(traces, args.budget)}")
        lines.append(f"| {arm} | " + " | ".join(row) + f" | {BT.hits_median(pooled[arm], args.budget)} |")
    write_json_atomic(cache_path, cache)
    chosen_arm = next(a for a, v in arms.items() if v == chosen)
    lines += ["", "Verdict (test):", ""]
    for other in arms:
        if other != chosen_arm:
            lines.append(f"- {chosen_arm} vs {other}: {BT.few_shot_verdict(pooled[chosen_arm], pooled[other], args.budget, goal='fewer evaluations')}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        write_text_atomic(Path(args.markdown), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
