"""Does the learned policy beat search? Zero-shot and few-shot on datasets with ground truth.

    python experiments/bench_transfer.py --policies runs/amortised-s0 runs/amortised-s1 runs/amortised-s2 \\
        [--tables experiments/results/exhaustive] [--datasets family:80 ...] [--seeds 10] [--budget 32] \\
        [--warm-k 4] [--config experiments/exhaustive.yaml] [--pooled-prior] [--out-dir experiments/results] [--markdown FILE] [--fresh]

Each policy is a ``memrl train`` run folder (or its ``policy.zip``), trained on other datasets
(the family's training members); the datasets here are ones it never saw (by default every
*test* member of the family whose table under ``--tables`` holds every mask). Every evaluation is
answered from the tables (nothing is fine-tuned), so each row below costs no GPU or CPU hours.
Cost is counted in *distinct masks evaluated*.

Per dataset, with the table of the evaluation seed (``env.seed`` of ``--config``) as ground truth:

* **zero-shot**: the policy's deterministic mask for the dataset's descriptor (``memrl replay``
  without ``--budget``): its regret (``r_max - r``) and rank percentile (rank / masks; the optimum
  is 1/128), per policy seed, and their median;
* **ensemble** (two or more policies): the zero-shot mask of the policies as one
  (:class:`memrl.envs.ensemble.PolicyEnsemble`), by the ``mixture`` rule (averaged probabilities:
  ``memrl replay``'s default) and the ``product`` rule; the goals are scored for the mixture;
* **best fixed mask**: the single mask with the best mean reward over the *training* members'
  tables (what a user without a policy would pick from the same data): regret and rank;
* **random**: a uniformly random mask's expected regret and rank percentile;
* **TPE@k** (k = 4, 8, 16): Optuna's TPE from scratch on the dataset, its best after ``k`` distinct
  evaluations (median regret over ``--seeds`` sampler seeds);
* **few-shot** curves (best-so-far against distinct evaluations, ``--budget`` trials): TPE from
  scratch (``tpe``); TPE whose first ``--warm-k`` trials are the policy's most probable proposals
  (``tpe+policy``: ``memrl search --warm-start``, ``memrl replay --budget``), over every policy
  seed and sampler seed; with two or more policies, TPE warm-started with their ensemble's
  (``mixture``: averaged probabilities, ``memrl replay --policy A B C``) most probable proposals
  (``tpe+ensemble``); TPE whose first trials are the ``--warm-k`` best fixed masks
  (``tpe+fixed``: the fair control for a warm start); and uniform random search. "Within 2%" is a
  normalised score ``(r - r_min) / (r_max - r_min) >= 0.98``; the table gives the median number of
  distinct evaluations to get there (">" where more than half the runs did not within the budget);
  ``model+prior``: ``memrl search --optimizer model --prior RUN``, Bayesian optimisation with
  memrl's reward model fitted on a training run's real evaluations of the training members
  (``--priors``, default the policies' runs) plus the new dataset's trials: its first trial is the
  reward model's zero-shot pick, reported beside the policy's. It is deterministic given the
  prior (one run per prior); ``model``: the same without a prior (plain GP Bayesian
  optimisation, ``--seeds`` runs), the control for what the prior adds; ``model+pooled``
  (``--pooled-prior``, two or more priors): one run with every prior's evaluations pooled
  (``--prior A B C``).

Where a second seed's table exists for a dataset (``env.seed + 1``), the zero-shot masks and TPE's
picks are also scored on it: a reward on a seed the picker never saw (TPE picked its best by the
first seed's numbers, so its regret there flatters it).

**Cost**: the real evaluations each policy's training spent (distinct dataset-mask pairs in its
``evaluations.csv``), the evaluations TPE needs per new dataset to come within 2%, and how many
new datasets it takes before training has paid for itself (when the policy saves any).

The markdown goes to stdout (and ``--markdown``); the plot to ``OUT_DIR/bench_transfer.png``; every
run's proposals to ``OUT_DIR/bench_transfer.json`` (reused by a rerun with the same tables,
policies and settings unless ``--fresh``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS_NAME = "bench_transfer"
TPE_AT = (4, 8, 16)
FEW_SHOT = ("tpe", "tpe+policy", "tpe+ensemble", "tpe+fixed", "model+prior", "model+pooled", "model", "random")
#: How the ensemble of the --policies combines them: the first is its zero-shot and warm-start rule (memrl replay's default), the others are reported beside it.
ENSEMBLE_RULES = ("mixture", "product")
COLORS = {"tpe": "tab:blue", "tpe+policy": "tab:red", "tpe+ensemble": "tab:brown", "tpe+fixed": "tab:green", "model+prior": "tab:purple", "model+pooled": "tab:pink", "model": "tab:orange", "random": "tab:gray"}
STYLES = {"tpe": "--", "tpe+policy": "-", "tpe+ensemble": "-", "tpe+fixed": "-.", "model+prior": "-", "model+pooled": "-.", "model": "--", "random": ":"}


def _bench_search():  # noqa: ANN202
    """experiments/bench_search.py (its ground truth, search runs and traces are reused here)."""
    spec = importlib.util.spec_from_file_location("bench_search", HERE / "bench_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BS = _bench_search()
WITHIN = BS.WITHIN


# ---------------------------------------------------------------------------------------- setup
def policy_path(p: str | Path) -> Path:
    p = Path(p)
    return p / "policy.zip" if p.is_dir() else p


def training_cost(policy_zip: Path) -> int:
    """Distinct (dataset, mask, method, lr) the policy's training evaluated: what it cost in real evaluations."""
    from memrl.reporting.records import EvaluationLog, is_true

    log = policy_zip.parent / "evaluations.csv"
    if not log.is_file():
        return 0
    rows = EvaluationLog.read(log)
    return len({(r["dataset"], r["mask_bits"], r.get("method"), r.get("lr")) for r in rows if not is_true(r.get("imagined"))})


def lookup_evaluator(tables: Path, env, policies: Sequence) -> "LookupEvaluator":  # noqa: ANN001, F821
    """The lookup evaluator of ``tables`` with a feature network (the tables', else the env's or a
    policy's model's) to describe datasets, checked to fit every policy (one MemrlError if not)."""
    from memrl.evaluation.lookup import LookupEvaluator

    ev = LookupEvaluator.from_dir(tables)
    if ev.feature_net is None:
        for fn in [Path(env.pretrained) / "feature_net"] + [Path(p.env.pretrained) / "feature_net" for p in policies]:
            if fn.is_dir():
                ev.set_feature_net(fn)
                break
    ev.require_feature_net()
    for p in policies:
        p.check_fits(ev)
    return ev


def best_fixed(truths: dict[str, dict]) -> list[tuple[str, float]]:
    """Masks by their mean reward over ``truths`` (the training members' tables), best first
    (:func:`memrl.evaluation.ground_truth.best_fixed_masks`, what ``memrl search --warm-start-tables`` enqueues)."""
    from memrl.evaluation.ground_truth import GroundTruth, best_fixed_masks

    return [(m, float(r)) for m, r in best_fixed_masks([GroundTruth(d, t["rewards"]) for d, t in truths.items()])]


def rank_of(truth: dict, reward: float) -> int:
    return 1 + sum(1 for r in truth["rewards"].values() if r > reward)


def normalised_regret(truth: dict, bits: str) -> float:
    """``(r_max - r) / (r_max - mean)`` of ``bits`` on ``truth``: 0 at the optimum, 1 for an average mask."""
    rewards = np.asarray(list(truth["rewards"].values()), dtype=float)
    spread = float(truth["r_max"] - rewards.mean())
    return 0.0 if spread == 0 else float((truth["r_max"] - truth["rewards"][bits]) / spread)


def load_vectors(path: str | Path) -> dict[str, np.ndarray]:
    """``{dataset: vector}`` from a JSON object of equal-length number lists (MemrlError naming the
    file and the first bad entry otherwise)."""
    import json

    from memrl.errors import MemrlError

    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise MemrlError(f"{p}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise MemrlError(f"{p}: expected a JSON object {{dataset: [numbers]}}, got {type(raw).__name__}")
    out: dict[str, np.ndarray] = {}
    for d, v in raw.items():
        try:
            vec = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            vec = np.empty(0)
        if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
            raise MemrlError(f"{p}: entry {d!r}: expected a non-empty list of finite numbers")
        out[d] = vec
    sizes = {v.size for v in out.values()}
    if len(sizes) > 1:
        raise MemrlError(f"{p}: vectors of different lengths {sorted(sizes)}; expected one length")
    return out


def picks_regret(rows: list[dict], truth2: dict, ks: Sequence[int]) -> dict[int, float]:
    """The regret on ``truth2`` (a second seed's table) of the mask a run picks after ``k`` distinct
    evaluations, for each ``k`` in ``ks``: the pick is made by the run's own (first seed's) rewards."""
    return {k: truth2["r_max"] - truth2["rewards"][BS.pick_after(rows, k)] for k in ks}


def two_seed_mean(t1: dict, t2: dict) -> dict:
    """The per-mask mean of two seeds' rewards (the masks both tables hold), as a truth for :func:`rank_of`."""
    rewards = {b: (r + t2["rewards"][b]) / 2 for b, r in t1["rewards"].items() if b in t2["rewards"]}
    r_max = max(rewards.values())
    return {"rewards": rewards, "r_max": r_max, "masks": len(rewards), "optimum_bits": sorted(b for b, r in rewards.items() if r == r_max)}


def split_of(dataset: str) -> str:
    if dataset.startswith("family:"):
        from memrl.data.family import split_of as family_split

        return family_split(int(dataset.split(":", 1)[1]))
    return "built-in"


# ---------------------------------------------------------------------------------------- runs
def run_tpe(env, tables: Path, dataset: str, seed: int, budget: int, proposals=None, optimizer: str = "tpe", prior: str | list[str] | None = None) -> list[dict]:  # noqa: ANN001
    """One ``memrl search --lookup`` run (TPE, random or model), optionally warm-started with ``proposals`` (or, for model, a ``prior`` run)."""
    from memrl.envs.config import EnvConfig
    from memrl.search.config import SearchConfig, SearchSettings
    from memrl.search.run import search

    e = EnvConfig.from_dict({**env.to_dict(), "datasets": [dataset], "cache": None})
    settings = SearchSettings(optimizer=optimizer, budget=budget, dataset=dataset, seed=seed, lookup=str(tables), final_pictures=False, figures_every=budget, prior=prior)
    with tempfile.TemporaryDirectory(prefix="bench_transfer_") as tmp, contextlib.redirect_stdout(io.StringIO()):
        folder = Path(tmp) / "run"
        search(SearchConfig(env=e, search=settings), folder, progress=False, echo=lambda _s: None, proposals=proposals)
        return BS._rows(folder)


# ---------------------------------------------------------------------------------------- report
def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def few_shot_verdict(ours: list[dict], theirs: list[dict], budget: int, goal: str = "met", alpha: float = 0.05) -> str:
    """Verdict of "``ours`` reaches within 2% in fewer distinct evaluations than ``theirs``": the
    medians, and a one-sided Mann-Whitney U test on the runs' counts (a run that never got there
    counts as ``budget + 1``: ties among those are exact, since all are "more than the budget").
    A lower median alone is not a win: with a few datasets and ten sampler seeds the IQRs often
    overlap, so the goal is only called met when the test agrees (``p < alpha``)."""
    from scipy.stats import mannwhitneyu

    a = [budget + 1 if t["hit"] is None else t["hit"] for t in ours]
    b = [budget + 1 if t["hit"] is None else t["hit"] for t in theirs]
    qa, qb = BS.quantiles([t["hit"] for t in ours], budget)[1], BS.quantiles([t["hit"] for t in theirs], budget)[1]
    p = float(mannwhitneyu(a, b, alternative="less").pvalue) if a and b and len(set(a + b)) > 1 else 1.0
    if qa[0] < qb[0] and not qa[1] and p < alpha:
        return f"{goal} (one-sided Mann-Whitney p = {p:.3f}, {len(a)} vs {len(b)} runs)"
    if qa[0] < qb[0] and not qa[1]:
        return f"lower median, not a demonstrated difference (one-sided Mann-Whitney p = {p:.2f}, {len(a)} vs {len(b)} runs) -> not met"
    return f"not met (one-sided Mann-Whitney p = {p:.2f})"


def held_out_comparison(ours: list[float], theirs: list[float], alpha: float = 0.05) -> str:
    """``ours`` vs ``theirs``: normalised regrets on a second seed (lower is better), their medians
    and a one-sided Mann-Whitney U test that ours are lower; "better" only when ``p < alpha``."""
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(ours, theirs, alternative="less").pvalue) if ours and theirs and len(set(ours + theirs)) > 1 else 1.0
    verdict = "better" if np.median(ours) < np.median(theirs) and p < alpha else "not shown better"
    return f"{np.median(ours):.2f} vs {np.median(theirs):.2f}, {verdict} (p = {p:.3f})"


def zero_shot_goals(rank_pct: list[float], regret: list[float], fixed_regret: list[float], beats_tpe16: int, n: int, tpe: str = "TPE@16") -> list[str]:
    """The issue's three zero-shot goals, one line each with its verdict: the median (over datasets)
    rank percentile in the top 10%, a lower mean regret than the best fixed mask, and at least as
    good as ``tpe`` on at least half of the ``n`` datasets."""
    med_rank = float(np.median(rank_pct))
    out = [f"- zero-shot rank in the top 10% (median over datasets): {med_rank:.1%} -> {'met' if med_rank <= 0.10 else 'not met'}"]
    if fixed_regret:
        zm, fm = float(np.mean(regret)), float(np.mean(fixed_regret))
        out.append(f"- zero-shot mean regret {zm:.3f} vs best fixed mask {fm:.3f} -> {'met' if zm < fm else 'not met'}")
    out.append(f"- zero-shot at least as good as {tpe} on {beats_tpe16} of {n} datasets -> {'met' if beats_tpe16 >= n / 2 else 'not met'}")
    return out


def ensemble_cell(picks: dict[str, dict], regret: str = "regret", rank: str = "rank") -> str:
    """The ensemble's zero-shot regret [rank] per rule, ``mixture; product``."""
    return "; ".join(f"{z[regret]:.3f} [{z[rank]}]" for z in picks.values()) if picks else "n/a"


def hits_median(traces: list[dict], budget: int) -> str:
    q = BS.quantiles([t["hit"] for t in traces], budget)
    return f"{BS._fmt_q(q[1], budget)} [{BS._fmt_q(q[0], budget)}, {BS._fmt_q(q[2], budget)}]"


def plot(panels: list[tuple[str, dict[str, list[dict]], dict]], budget: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    x = np.arange(1, budget + 1)
    for ax, (title, by_method, marks) in zip(axes[0], panels):
        for name, traces in by_method.items():
            y = np.asarray([t["norm"] for t in traces])
            lo, med, hi = np.percentile(y, [25, 50, 75], axis=0)
            ax.plot(x, med, label=name, color=COLORS.get(name), ls=STYLES.get(name, "-"), lw=1.8)
            ax.fill_between(x, lo, hi, color=COLORS.get(name), alpha=0.15, lw=0)
        for label, (score, color, marker) in marks.items():
            if score is not None:
                ax.scatter([1], [score], color=color, marker=marker, s=60, zorder=5, label=label)
        ax.axhline(WITHIN, color="black", lw=0.6, alpha=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("distinct masks evaluated")
        ax.set_xlim(0.5, budget)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best-so-far reward, normalised\n(1 = table optimum; median, IQR band)")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _signature(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", required=True, help="memrl train run folders (or their policy.zip), one per agent seed")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets to test on (default: every test member of the family with a complete table)")
    ap.add_argument("--train-datasets", nargs="+", default=None, help="datasets whose tables give the best fixed mask (default: every training member with a complete table)")
    ap.add_argument("--seeds", type=int, default=10, help="sampler seeds 0..N-1 per few-shot method, dataset (and policy)")
    ap.add_argument("--budget", type=int, default=32, help="trials per few-shot run")
    ap.add_argument("--warm-k", type=int, default=4, help="warm-start proposals (the policy's most probable / the best fixed masks)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with (method, granularity, preset, reward, evaluation seed)")
    ap.add_argument("--priors", nargs="*", default=None, help="memrl train run folders whose real evaluations start the reward model of model+prior (default: the policies' runs; none: leave model+prior out)")
    ap.add_argument(
        "--pooled-prior",
        action="store_true",
        help="also run model+pooled: the reward-model search with every prior's evaluations pooled (--prior A B C); slow on a CPU "
        "(the GP is refitted on all of them before every trial: one fit took 2.6 s on one run's 229 evaluations and 106 s on three "
        "runs' 604, one thread; experiments/bench_prior_fit.py)",
    )
    ap.add_argument("--out-dir", default="experiments/results", help="where bench_transfer.png and bench_transfer.json go")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    ap.add_argument("--fresh", action="store_true", help="run everything again (default: reuse runs in OUT_DIR/bench_transfer.json with the same key)")
    args = ap.parse_args(argv)

    from memrl.data.loaders import load_dataset
    from memrl.envs.policy import TrainedPolicy
    from memrl.errors import MemrlError

    if args.seeds < 1 or args.budget < max(TPE_AT) or args.warm_k < 1:
        print(f"error: --seeds and --warm-k must be >= 1 and --budget >= {max(TPE_AT)}", file=sys.stderr)
        return 2
    tables = Path(args.tables)
    if not tables.is_dir() or not any(tables.rglob("*.jsonl")):
        print(f"error: no lookup tables (*.jsonl) under {tables}", file=sys.stderr)
        return 2
    try:
        env = BS.load_env(args.config)
        policies = [TrainedPolicy.load(policy_path(p)) for p in args.policies]
        ev = lookup_evaluator(tables, env, policies)
        names = BS.table_datasets(tables)
        test_names = args.datasets or [d for d in names if split_of(d) == "test"]
        train_names = args.train_datasets or [d for d in names if split_of(d) == "train"]
        truths, truths2, train_truths = {}, {}, {}
        for d in test_names:
            t = BS.ground_truth(ev, env, d)
            if t is None:
                if args.datasets:
                    raise MemrlError(f"{d}: the tables under {tables} do not hold every mask for {args.config}'s env (seed {env.seed})")
                continue
            truths[d] = t
            t2 = BS.next_seed_truth(ev, env, d)
            if t2 is not None:
                truths2[d] = t2
        for d in train_names:
            t = BS.ground_truth(ev, env, d)
            if t is not None:
                train_truths[d] = t
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not truths:
        print(f"error: no test dataset has a complete table under {tables}: tables pending", file=sys.stderr)
        return 2
    ensembles = {}
    if len(policies) > 1:
        from memrl.envs.ensemble import PolicyEnsemble

        try:
            ensembles = {rule: PolicyEnsemble(policies, rule) for rule in ENSEMBLE_RULES}
        except MemrlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    priors = [Path(p) for p in (args.priors if args.priors is not None else [Path(q.path).parent for q in policies])]
    trained_on = sorted({d for p in policies for d in p.env.datasets})
    leaked = sorted(set(truths) & set(trained_on))
    if leaked:
        print(f"error: the policies were trained on {', '.join(leaked)}: test on datasets they never saw", file=sys.stderr)
        return 2

    fixed = best_fixed(train_truths) if train_truths else []
    fixed_top = [m for m, _ in fixed[: args.warm_k]]
    n_units = len(ev.units)
    method = env.method

    out_dir = Path(args.out_dir)
    raw_path = out_dir / f"{RESULTS_NAME}.json"
    old: dict[str, dict] = {}
    if raw_path.is_file() and not args.fresh:
        old = {r["key"]: r for r in json.loads(raw_path.read_text()).get("runs", [])}
    runs: list[dict] = []
    from memrl.search.config import SearchSettings

    defaults = SearchSettings()  # the reward-model sampler's rules: a saved run made under other defaults is not reused
    cfg_sig = _signature({"env": {k: v for k, v in env.to_dict().items() if k not in ("cache", "datasets", "device")}, "budget": args.budget, "warm_k": args.warm_k,
                          "model_beta": defaults.model_beta, "model_first_beta": defaults.model_first_beta})  # fmt: skip

    def cached(key: str, make) -> list[dict]:  # noqa: ANN001
        rows = old[key]["rows"] if key in old else None
        if rows is None:
            t1 = time.time()
            rows = make()
            print(f"{key}: {len({r['mask_bits'] for r in rows})} distinct masks, best {max(r['reward'] for r in rows):.3f} ({time.time() - t1:.1f} s)", file=sys.stderr, flush=True)
        runs.append({"key": key, "rows": rows})
        return rows

    t0 = time.time()
    per: dict[str, dict] = {}
    for d, truth in truths.items():
        data = load_dataset(d, ev.image_size, ev.image_channels)
        sig = f"table{truth['signature']}|cfg{cfg_sig}"
        res: dict = {"zero_shot": [], "model_zero_shot": [], "traces": {m: [] for m in FEW_SHOT}, "tpe_at": {k: [] for k in TPE_AT}, "tpe_at_seed2": {k: [] for k in TPE_AT}, "picks_seed2": {m: [] for m in FEW_SHOT}}

        def record(method: str, rows: list[dict], res: dict = res, d: str = d, truth: dict = truth) -> None:
            """A few-shot run's best-so-far trace and, with a second seed's table, its picks scored there."""
            res["traces"][method].append(BS.trace(rows, truth, args.budget))
            if d in truths2:
                res["picks_seed2"][method].append(picks_regret(rows, truths2[d], TPE_AT))

        # zero-shot, per policy
        proposals = []
        for p in policies:
            desc = p.describe(ev, data)
            ranked = p.ranked(ev, desc, k=args.warm_k)
            proposals.append(ranked)
            bits = ranked[0].mask.bitstring
            r = truth["rewards"][bits]
            z = {"policy": str(p.path), "mask_bits": bits, "reward": r, "regret": truth["r_max"] - r, "rank": rank_of(truth, r)}
            if d in truths2:
                t2 = truths2[d]
                z["regret_seed2"] = t2["r_max"] - t2["rewards"][bits]
                z["rank_seed2"] = rank_of(t2, t2["rewards"][bits])
            res["zero_shot"].append(z)
        res["ensemble_zero_shot"] = {}
        ens_ranked = None
        for rule, ens in ensembles.items():
            ranked = ens.ranked(ev, ens.describe(ev, data), k=args.warm_k)
            if rule == ENSEMBLE_RULES[0]:
                ens_ranked = ranked
            bits = ranked[0].mask.bitstring
            z = {"mask_bits": bits, "regret": truth["r_max"] - truth["rewards"][bits], "rank": rank_of(truth, truth["rewards"][bits])}
            if d in truths2:
                t2 = truths2[d]
                z["regret_seed2"], z["rank_seed2"] = t2["r_max"] - t2["rewards"][bits], rank_of(t2, t2["rewards"][bits])
            res["ensemble_zero_shot"][rule] = z
        # few-shot runs
        for s in range(args.seeds):
            rows = cached(f"{d}|tpe|seed{s}|{sig}", lambda: run_tpe(env, tables, d, s, args.budget))
            record("tpe", rows)
            for k in TPE_AT:
                pick = BS.pick_after(rows, k)
                res["tpe_at"][k].append(truth["r_max"] - truth["rewards"][pick])
                if d in truths2:
                    res["tpe_at_seed2"][k].append(truths2[d]["r_max"] - truths2[d]["rewards"][pick])
            rows = cached(f"{d}|random|seed{s}|{sig}", lambda: run_tpe(env, tables, d, s, args.budget, optimizer="random"))
            record("random", rows)
            if fixed_top:
                warm = [(m, method, None) for m in fixed_top]
                rows = cached(f"{d}|tpe+fixed|seed{s}|{'-'.join(fixed_top)}|{sig}", lambda: run_tpe(env, tables, d, s, args.budget, proposals=warm))
                record("tpe+fixed", rows)
            for p, ranked in zip(policies, proposals):
                warm = [(q.mask.bitstring, q.method, q.lr) for q in ranked]
                psig = "-".join(w[0] for w in warm)
                rows = cached(f"{d}|tpe+policy|{p.path}|seed{s}|{psig}|{sig}", lambda: run_tpe(env, tables, d, s, args.budget, proposals=warm))
                record("tpe+policy", rows)
            if ens_ranked is not None:
                warm = [(q.mask.bitstring, q.method, q.lr) for q in ens_ranked]
                rows = cached(f"{d}|tpe+ensemble|seed{s}|{'-'.join(w[0] for w in warm)}|{sig}", lambda: run_tpe(env, tables, d, s, args.budget, proposals=warm))
                record("tpe+ensemble", rows)
            rows = cached(f"{d}|model|seed{s}|{sig}", lambda: run_tpe(env, tables, d, s, args.budget, optimizer="model"))
            record("model", rows)
        for prior in priors:  # deterministic given the prior: one run each
            psig = _signature((prior / "evaluations.csv").read_bytes().decode())
            rows = cached(f"{d}|model+prior|{prior}|{psig}|{sig}", lambda: run_tpe(env, tables, d, 0, args.budget, optimizer="model", prior=str(prior)))
            record("model+prior", rows)
            first = rows[0]["mask_bits"]  # rows in trial order: the first is asked with no evaluation of this dataset
            res["model_zero_shot"].append({"prior": str(prior), "mask_bits": first, "reward": truth["rewards"][first], "regret": truth["r_max"] - truth["rewards"][first], "rank": rank_of(truth, truth["rewards"][first])})
        res["pooled_zero_shot"] = None
        if args.pooled_prior and len(priors) > 1:  # every prior's evaluations in one reward model
            psig = _signature([(q / "evaluations.csv").read_bytes().decode() for q in priors])
            rows = cached(f"{d}|model+pooled|{'+'.join(map(str, priors))}|{psig}|{sig}", lambda: run_tpe(env, tables, d, 0, args.budget, optimizer="model", prior=[str(q) for q in priors]))
            record("model+pooled", rows)
            first = rows[0]["mask_bits"]
            res["pooled_zero_shot"] = {"mask_bits": first, "regret": truth["r_max"] - truth["rewards"][first], "rank": rank_of(truth, truth["rewards"][first])}
            if d in truths2:
                t2 = truths2[d]
                res["pooled_zero_shot"].update(regret_seed2=t2["r_max"] - t2["rewards"][first], rank_seed2=rank_of(t2, t2["rewards"][first]))
        if not fixed_top:
            del res["traces"]["tpe+fixed"], res["picks_seed2"]["tpe+fixed"]
        if ens_ranked is None:
            del res["traces"]["tpe+ensemble"], res["picks_seed2"]["tpe+ensemble"]
        if not priors:
            del res["traces"]["model+prior"], res["picks_seed2"]["model+prior"]
        if not (args.pooled_prior and len(priors) > 1):
            del res["traces"]["model+pooled"], res["picks_seed2"]["model+pooled"]
        per[d] = res

    out_dir.mkdir(parents=True, exist_ok=True)
    from memrl.utils.io import write_json_atomic

    keep = {r["key"] for r in runs}
    write_json_atomic(raw_path, {"command": _command(argv), "budget": args.budget, "within": WITHIN, "fixed": fixed[:10], "runs": runs + [r for k, r in old.items() if k not in keep]})

    # ------------------------------------------------------------------ the report
    costs = {str(p.path): training_cost(Path(p.path)) for p in policies}
    lines = [f"`{_command(argv)}`", ""]
    lines.append(
        f"{len(policies)} polic{'y' if len(policies) == 1 else 'ies'} ({', '.join(str(p.path) for p in policies)}), trained on {len(trained_on)} datasets "
        f"({', '.join(trained_on[:6])}{', ...' if len(trained_on) > 6 else ''}); tested on {len(truths)} datasets they never saw. "
        f"Ground truth: the tables under {tables} (evaluation seed {env.seed}; {n_units} units, {method}). "
        f"Best fixed mask: {'the best mean reward over ' + str(len(train_truths)) + ' training tables (' + ', '.join(train_truths) + '): ' + fixed[0][0] if fixed else 'n/a (no training-member table)'}. "
        f"Few-shot: {args.budget} trials, sampler seeds 0..{args.seeds - 1}, warm starts of {args.warm_k}."
    )
    lines.append("")
    ens_head = f" ensemble regret [rank] ({'; '.join(ensembles)}) |" if ensembles else ""
    head = f"| dataset | optimum | zero-shot regret (median; per policy) | zero-shot rank |{ens_head} reward model zero-shot regret [rank] | fixed regret [rank] | random regret [rank %] | " + " | ".join(f"TPE@{k} regret" for k in TPE_AT) + " | zero-shot ≤ TPE@16 |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    summary = {"zero_rank_pct": [], "zero_regret": [], "fixed_regret": [], "beats_tpe16": 0, "model_regret": [], "model_rank_pct": [], "model_beats_tpe16": 0}
    summary2: dict = {"zero_rank_pct": [], "zero_regret": [], "fixed_regret": [], "beats_tpe16": 0, "few_shot": []}  # the same goals on the second seed
    ens_sum = {rule: {"rank_pct": [], "regret": [], "beats": 0} for rule in ensembles}
    ens_sum2 = {rule: {"rank_pct": [], "regret": [], "beats": 0} for rule in ensembles}
    ens_sum_mean = {rule: {"regret": [], "fixed": []} for rule in ensembles}
    for d, res in per.items():
        truth = truths[d]
        n = truth["masks"]
        zr = [z["regret"] for z in res["zero_shot"]]
        zk = [z["rank"] for z in res["zero_shot"]]
        fixed_r = truth["rewards"].get(fixed[0][0]) if fixed else None
        rand_regret = float(np.mean([truth["r_max"] - r for r in truth["rewards"].values()]))
        tpe = {k: float(np.median(v)) for k, v in res["tpe_at"].items()}
        beats = float(np.median(zr)) <= tpe[16]
        summary["zero_rank_pct"].append(float(np.median(zk)) / n)
        summary["zero_regret"].append(float(np.median(zr)))
        summary["beats_tpe16"] += int(beats)
        for rule, z in res["ensemble_zero_shot"].items():
            ens_sum[rule]["rank_pct"].append(z["rank"] / n)
            ens_sum[rule]["regret"].append(z["regret"])
            ens_sum[rule]["beats"] += int(z["regret"] <= tpe[16])
        ens_txt = f" {ensemble_cell(res['ensemble_zero_shot'])} |" if ensembles else ""
        if fixed_r is not None:
            summary["fixed_regret"].append(truth["r_max"] - fixed_r)
        fixed_txt = f"{truth['r_max'] - fixed_r:.3f} [{rank_of(truth, fixed_r)}]" if fixed_r is not None else "n/a"
        mz = res["model_zero_shot"]
        if mz:
            m_reg, m_rank = float(np.median([z["regret"] for z in mz])), float(np.median([z["rank"] for z in mz]))
            summary["model_regret"].append(m_reg)
            summary["model_rank_pct"].append(m_rank / n)
            summary["model_beats_tpe16"] += int(m_reg <= tpe[16])
            model_txt = f"{m_reg:.3f} [{m_rank:.0f}] `{'`, `'.join(z['mask_bits'] for z in mz)}`"
        else:
            model_txt = "n/a"
        lines.append(
            f"| {d} | {truth['r_max']:.3f} ({'; '.join(truth['optimum_bits'])}) | {np.median(zr):.3f} ({', '.join(f'{x:.2f}' for x in zr)}) | "
            f"{np.median(zk):.0f} of {n} ({', '.join(str(x) for x in zk)}) |{ens_txt} {model_txt} | {fixed_txt} | {rand_regret:.3f} [50%] | "
            + " | ".join(f"{tpe[k]:.3f}" for k in TPE_AT)
            + f" | {'yes' if beats else 'no'} |"
        )
    lines.append("")
    if truths2:
        lines.append("On a second evaluation seed (picks scored on numbers their picker never saw):")
        lines.append("")
        head2 = (
            f"| dataset | optimum | zero-shot regret (median; per policy) | zero-shot rank |{ens_head} reward model zero-shot regret [rank] | fixed regret [rank] | "
            + " | ".join(f"TPE@{k} pick's regret" for k in TPE_AT)
            + " | zero-shot ≤ TPE@16's pick |"
        )
        lines += [head2, "|" + "---|" * (head2.count("|") - 1)]
        for d, t2 in truths2.items():
            res, n2 = per[d], t2["masks"]
            zr2 = [z["regret_seed2"] for z in res["zero_shot"]]
            zk2 = [z["rank_seed2"] for z in res["zero_shot"]]
            tpe16 = float(np.median(res["tpe_at_seed2"][16]))
            beats = float(np.median(zr2)) <= tpe16
            summary2["zero_regret"].append(float(np.median(zr2)))
            summary2["zero_rank_pct"].append(float(np.median(zk2)) / n2)
            summary2["beats_tpe16"] += int(beats)
            for rule, z in res["ensemble_zero_shot"].items():
                ens_sum2[rule]["rank_pct"].append(z["rank_seed2"] / n2)
                ens_sum2[rule]["regret"].append(z["regret_seed2"])
                ens_sum2[rule]["beats"] += int(z["regret_seed2"] <= tpe16)
            ens_txt = f" {ensemble_cell(res['ensemble_zero_shot'], 'regret_seed2', 'rank_seed2')} |" if ensembles else ""
            fixed_txt = "n/a"
            if fixed:
                fr = t2["r_max"] - t2["rewards"][fixed[0][0]]
                summary2["fixed_regret"].append(fr)
                fixed_txt = f"{fr:.3f} [{rank_of(t2, t2['rewards'][fixed[0][0]])}]"
            mz = [z["mask_bits"] for z in res["model_zero_shot"]]
            model_txt = (
                f"{np.median([t2['r_max'] - t2['rewards'][b] for b in mz]):.3f} [{np.median([rank_of(t2, t2['rewards'][b]) for b in mz]):.0f}]" if mz else "n/a"
            )
            lines.append(
                f"| {d} | {t2['r_max']:.3f} ({'; '.join(t2['optimum_bits'])}) | {np.median(zr2):.3f} ({', '.join(f'{x:.2f}' for x in zr2)}) | "
                f"{np.median(zk2):.0f} of {n2} ({', '.join(str(x) for x in zk2)}) |{ens_txt} {model_txt} | {fixed_txt} | "
                + " | ".join(f"{np.median(res['tpe_at_seed2'][k]):.3f}" for k in TPE_AT)
                + f" | {'yes' if beats else 'no'} |"
            )
        lines.append("")
        methods2 = list(per[next(iter(truths2))]["picks_seed2"])
        lines.append(
            f"Few-shot on the second seed: median regret there of each method's pick (its best by the first seed's numbers) after {', '.join(map(str, TPE_AT))} "
            "distinct evaluations; the last row is the mean over these datasets:"
        )
        lines.append("")
        head4 = "| dataset | " + " | ".join(f"{m} @{'/'.join(map(str, TPE_AT))}" for m in methods2) + " |"
        lines += [head4, "|" + "---|" * (head4.count("|") - 1)]
        means: dict[str, list[list[float]]] = {m: [] for m in methods2}
        for d in truths2:
            cells = []
            for m in methods2:
                med = [float(np.median([p[k] for p in per[d]["picks_seed2"][m]])) for k in TPE_AT]
                means[m].append(med)
                cells.append(" / ".join(f"{x:.2f}" for x in med))
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        if len(truths2) > 1:
            lines.append("| **mean** | " + " | ".join(" / ".join(f"{x:.2f}" for x in np.mean(means[m], axis=0)) for m in methods2) + " |")
        lines.append("")
        # pooled over datasets: each run's regret divided by its table's expected regret of a random mask
        norm2: dict[str, dict[int, list[float]]] = {m: {k: [] for k in TPE_AT} for m in methods2}
        for d, t2 in truths2.items():
            scale = t2["r_max"] - float(np.mean(list(t2["rewards"].values())))
            for m in methods2:
                for pk in per[d]["picks_seed2"][m]:
                    for k in TPE_AT:
                        norm2[m][k].append(pk[k] / scale if scale > 0 else 0.0)
        for ours, other in (("tpe+policy", "tpe"), ("tpe+policy", "tpe+fixed"), ("tpe+ensemble", "tpe"), ("tpe+ensemble", "tpe+fixed")):
            if ours in norm2 and other in norm2:
                summary2["few_shot"].append(
                    f"{ours} vs {other}, normalised regret of the pick on the second seed (one-sided Mann-Whitney over the runs of {len(truths2)} dataset(s)): "
                    + "; ".join(f"@{k} {held_out_comparison(norm2[ours][k], norm2[other][k])}" for k in TPE_AT)
                )
        lines.append(
            "On the mean of both seeds' rewards (a less noisy truth for the picks made without either seed's numbers: "
            "the zero-shot masks and the fixed mask; TPE picked by seed 0, so it is left out):"
        )
        lines.append("")
        head5 = f"| dataset | optimum | zero-shot regret (median; per policy) | zero-shot rank |{ens_head} reward model zero-shot regret [rank] | fixed regret [rank] |"
        lines += [head5, "|" + "---|" * (head5.count("|") - 1)]
        for d, t2 in truths2.items():
            tm = two_seed_mean(truths[d], t2)
            zb = [z["mask_bits"] for z in per[d]["zero_shot"]]
            zr = [tm["r_max"] - tm["rewards"][b] for b in zb]
            zk = [rank_of(tm, tm["rewards"][b]) for b in zb]
            mz = [z["mask_bits"] for z in per[d]["model_zero_shot"]]
            model_txt = f"{np.median([tm['r_max'] - tm['rewards'][b] for b in mz]):.3f} [{np.median([rank_of(tm, tm['rewards'][b]) for b in mz]):.0f}]" if mz else "n/a"
            fixed_txt = f"{tm['r_max'] - tm['rewards'][fixed[0][0]]:.3f} [{rank_of(tm, tm['rewards'][fixed[0][0]])}]" if fixed else "n/a"
            em = {}
            for rule, z in per[d]["ensemble_zero_shot"].items():
                em[rule] = {"regret": tm["r_max"] - tm["rewards"][z["mask_bits"]], "rank": rank_of(tm, tm["rewards"][z["mask_bits"]])}
                ens_sum_mean[rule]["regret"].append(em[rule]["regret"])
                if fixed:
                    ens_sum_mean[rule]["fixed"].append(tm["r_max"] - tm["rewards"][fixed[0][0]])
            ens_txt = f" {ensemble_cell(em)} |" if ensembles else ""
            lines.append(
                f"| {d} | {tm['r_max']:.3f} ({'; '.join(tm['optimum_bits'])}) | {np.median(zr):.3f} ({', '.join(f'{x:.2f}' for x in zr)}) | "
                f"{np.median(zk):.0f} of {tm['masks']} ({', '.join(str(x) for x in zk)}) |{ens_txt} {model_txt} | {fixed_txt} |"
            )
        lines.append("")
    lines.append("Few-shot: distinct evaluations to within 2% of the optimum, median [IQR] over runs (runs = sampler seeds, times policies for tpe+policy; one per prior for model+prior):")
    lines.append("")
    head3 = "| dataset | " + " | ".join(m for m in FEW_SHOT if any(m in per[d]["traces"] for d in per)) + " |"
    lines += [head3, "|" + "---|" * (head3.count("|") - 1)]
    pooled: dict[str, list[dict]] = {}
    for d, res in per.items():
        lines.append(f"| {d} | " + " | ".join(hits_median(tr, args.budget) for tr in res["traces"].values()) + " |")
        for m, tr in res["traces"].items():
            pooled.setdefault(m, []).extend(tr)
    if len(per) > 1:
        lines.append("| **pooled** | " + " | ".join(hits_median(tr, args.budget) for tr in pooled.values()) + " |")
    lines.append("")

    # goals and cost
    lines.append("Goals:")
    lines += zero_shot_goals(summary["zero_rank_pct"], summary["zero_regret"], summary["fixed_regret"], summary["beats_tpe16"], len(per))
    if summary2["zero_regret"]:
        lines.append(f"- on the second evaluation seed ({len(summary2['zero_regret'])} dataset(s); TPE's picks scored on numbers it never saw):")
        lines += ["  " + x for x in zero_shot_goals(summary2["zero_rank_pct"], summary2["zero_regret"], summary2["fixed_regret"], summary2["beats_tpe16"], len(summary2["zero_regret"]), "TPE@16's pick")]
        lines += [f"  - few-shot: {x}" for x in summary2["few_shot"]]
    for rule in ensembles:
        e = ens_sum[rule]
        lines.append(f"- ensemble of the {len(policies)} policies ({rule}{', the zero-shot rule of memrl replay' if rule == ENSEMBLE_RULES[0] else ''}), evaluation seed {env.seed}:")
        lines += ["  " + x for x in zero_shot_goals(e["rank_pct"], e["regret"], summary["fixed_regret"], e["beats"], len(per))]
        if ens_sum2[rule]["regret"]:
            e2 = ens_sum2[rule]
            lines.append(f"  - on the second evaluation seed ({len(e2['regret'])} dataset(s)):")
            lines += ["    " + x for x in zero_shot_goals(e2["rank_pct"], e2["regret"], summary2["fixed_regret"], e2["beats"], len(e2["regret"]), "TPE@16's pick")]
            em = ens_sum_mean[rule]
            if em["fixed"]:
                lines.append(f"  - on the mean of both seeds: mean regret {float(np.mean(em['regret'])):.3f} vs best fixed mask {float(np.mean(em['fixed'])):.3f}")
    if summary["model_regret"]:
        mm_, mr_ = float(np.mean(summary["model_regret"])), float(np.median(summary["model_rank_pct"]))
        fm_txt = f" vs best fixed mask {float(np.mean(summary['fixed_regret'])):.3f}" if summary["fixed_regret"] else ""
        lines.append(
            f"- reward model zero-shot (model+prior's first trial): rank {mr_:.1%} (median), mean regret {mm_:.3f}{fm_txt}, "
            f"at least as good as TPE@16 on {summary['model_beats_tpe16']} of {len(per)} datasets"
        )
    def med(method: str) -> tuple[float, bool]:
        """A method's pooled median of distinct evaluations to within 2% (and whether it is only a lower bound)."""
        return BS.quantiles([t["hit"] for t in pooled[method]], args.budget)[1]

    pz = [res["pooled_zero_shot"] for res in per.values() if res.get("pooled_zero_shot")]
    if pz:
        n_masks = [truths[d]["masks"] for d, res in per.items() if res.get("pooled_zero_shot")]
        tpe16 = [float(np.median(res["tpe_at"][16])) for res in per.values() if res.get("pooled_zero_shot")]
        lines.append(f"- reward model on the {len(priors)} priors pooled (model+pooled's first trial), evaluation seed {env.seed}:")
        lines += ["  " + x for x in zero_shot_goals([z["rank"] / m for z, m in zip(pz, n_masks)], [z["regret"] for z in pz], summary["fixed_regret"], sum(z["regret"] <= t for z, t in zip(pz, tpe16)), len(pz))]
        if all("regret_seed2" in z for z in pz) and summary2["fixed_regret"]:
            lines.append(f"  - on the second evaluation seed: mean regret {float(np.mean([z['regret_seed2'] for z in pz])):.3f} vs best fixed mask {float(np.mean(summary2['fixed_regret'])):.3f}")
    if "model+pooled" in pooled:
        lines.append(
            f"- few-shot: model+pooled median {BS._fmt_q(med('model+pooled'), args.budget)} vs tpe {BS._fmt_q(med('tpe'), args.budget)} "
            f"-> {few_shot_verdict(pooled['model+pooled'], pooled['tpe'], args.budget)}"
            + (f"; vs tpe+fixed -> {few_shot_verdict(pooled['model+pooled'], pooled['tpe+fixed'], args.budget, goal='better')}" if "tpe+fixed" in pooled else "")
        )
    if "model+prior" in pooled:
        q_mp = BS.quantiles([t["hit"] for t in pooled["model+prior"]], args.budget)[1]
        q_m = BS.quantiles([t["hit"] for t in pooled["model"]], args.budget)[1]
        q_t = BS.quantiles([t["hit"] for t in pooled["tpe"]], args.budget)[1]
        lines.append(
            f"- few-shot: model+prior median {BS._fmt_q(q_mp, args.budget)} vs tpe {BS._fmt_q(q_t, args.budget)} (model without prior {BS._fmt_q(q_m, args.budget)}) "
            f"evaluations to within 2% -> {few_shot_verdict(pooled['model+prior'], pooled['tpe'], args.budget)}"
        )
    q_warm = BS.quantiles([t["hit"] for t in pooled["tpe+policy"]], args.budget)[1]
    q_tpe = BS.quantiles([t["hit"] for t in pooled["tpe"]], args.budget)[1]
    lines.append(f"- few-shot: tpe+policy median {BS._fmt_q(q_warm, args.budget)} vs tpe {BS._fmt_q(q_tpe, args.budget)} evaluations to within 2% -> {few_shot_verdict(pooled['tpe+policy'], pooled['tpe'], args.budget)}")
    if "tpe+ensemble" in pooled:
        q_ens = med("tpe+ensemble")
        lines.append(f"- few-shot: tpe+ensemble median {BS._fmt_q(q_ens, args.budget)} vs tpe {BS._fmt_q(q_tpe, args.budget)} evaluations to within 2% -> {few_shot_verdict(pooled['tpe+ensemble'], pooled['tpe'], args.budget)}")
        if "tpe+fixed" in pooled:
            lines.append(
                f"- control: tpe+ensemble median {BS._fmt_q(q_ens, args.budget)} vs tpe+fixed {BS._fmt_q(med('tpe+fixed'), args.budget)} "
                f"-> {few_shot_verdict(pooled['tpe+ensemble'], pooled['tpe+fixed'], args.budget, goal='the ensemble warm start is better')}"
            )
    if "tpe+fixed" in pooled:  # the fair control for a warm start: does the policy's warm start beat the fixed masks'?
        q_fix = BS.quantiles([t["hit"] for t in pooled["tpe+fixed"]], args.budget)[1]
        lines.append(
            f"- control: tpe+policy median {BS._fmt_q(q_warm, args.budget)} vs tpe+fixed (the {args.warm_k} best fixed masks as the warm start) {BS._fmt_q(q_fix, args.budget)} "
            f"-> {few_shot_verdict(pooled['tpe+policy'], pooled['tpe+fixed'], args.budget, goal='the policy warm start is better')}"
        )
    saved = q_tpe[0] - q_warm[0]
    cost_txt = ", ".join(f"{Path(k).parent.name}: {v}" for k, v in costs.items())
    mean_cost = float(np.mean(list(costs.values())))
    if q_warm[1]:  # the warm start's median is itself only a lower bound: no saving can be claimed
        lines.append(f"- cost: training spent {cost_txt} real evaluations; the warm start's median is not known within the budget, so no saving per new dataset can be claimed")
    elif saved > 0:
        at_least = "at least " if q_tpe[1] else ""  # TPE's median is a lower bound: the saving is at least this
        pays = mean_cost / saved
        lines.append(
            f"- cost: training spent {cost_txt} real evaluations; the warm start saves {at_least}{saved:.1f} per new dataset (median evaluations to within 2%), "
            f"so training has paid for itself after {'at most ' if q_tpe[1] else ''}{math.ceil(pays)} new datasets ({pays:.1f} datasets' savings)"
        )
    else:
        lines.append(f"- cost: training spent {cost_txt} real evaluations; the warm start saves none per new dataset here, so training does not pay for itself on this measure")
    if "tpe+ensemble" in pooled:  # the ensemble costs every member's training
        total = sum(costs.values())
        saved_e = q_tpe[0] - q_ens[0]
        if q_ens[1] or saved_e <= 0:
            lines.append(f"- cost of the ensemble: {total} real evaluations of training (all {len(policies)} policies); its warm start saves none per new dataset that can be claimed here")
        else:
            lines.append(
                f"- cost of the ensemble: {total} real evaluations of training (all {len(policies)} policies); its warm start saves {'at least ' if q_tpe[1] else ''}{saved_e:.1f} "
                f"per new dataset against TPE, so it pays for itself after {'at most ' if q_tpe[1] else ''}{math.ceil(total / saved_e)} new datasets"
            )
    lines.append("")
    png = out_dir / f"{RESULTS_NAME}.png"
    panels = []
    for d, res in per.items():
        truth = truths[d]
        span = truth["r_max"] - truth["r_min"]
        z = float(np.median([(z["reward"] - truth["r_min"]) / span for z in res["zero_shot"]])) if span else 1.0
        marks = {"zero-shot policy": (z, "tab:red", "*")}
        if res["ensemble_zero_shot"] and span:
            marks["zero-shot ensemble"] = ((truth["rewards"][res["ensemble_zero_shot"][ENSEMBLE_RULES[0]]["mask_bits"]] - truth["r_min"]) / span, "tab:brown", "X")
        if res["model_zero_shot"]:
            marks["zero-shot reward model"] = (float(np.median([(z["reward"] - truth["r_min"]) / span for z in res["model_zero_shot"]])) if span else 1.0, "tab:purple", "P")
        if fixed:
            marks["best fixed mask"] = ((truth["rewards"][fixed[0][0]] - truth["r_min"]) / span if span else 1.0, "tab:green", "D")
        panels.append((d, res["traces"], marks))
    plot(panels, args.budget, png)
    lines.append(f"![few-shot best-so-far against distinct evaluations; zero-shot and fixed masks at 1]({png.name})")
    BS.emit("\n".join(lines) + "\n", args.markdown, [png, raw_path], t0)
    return 0


def _command(argv: list[str] | None) -> str:
    return "python experiments/bench_transfer.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
