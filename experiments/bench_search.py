"""Search baselines on the ground-truth tables: best-so-far reward against evaluations.

    python experiments/bench_search.py [--tables experiments/results/exhaustive] [--datasets family:80 ...]
        [--seeds 10] [--budget 64] [--optimizers ppo ppo+surrogate tpe nsga2 random] [--config experiments/exhaustive.yaml]
        [--out-dir experiments/results] [--markdown FILE] [--fresh]

On every dataset whose lookup table (``TABLES/*.jsonl``, written by ``exhaustive_tables.py``)
holds every mask, each optimizer runs ``--seeds`` times (optimizer seeds 0..N-1: the sampler's or
PPO's own seed; the evaluations are the tables', evaluation seed ``env.seed`` of ``--config``)
with ``--budget`` proposals, every one answered by the table (nothing is fine-tuned):

* ``tpe``, ``nsga2``, ``random``: :func:`memrl.search.run.search` with ``search.lookup`` set,
  ``budget`` trials, sampler seed ``s``, in a temporary run folder;
* ``ppo``: :func:`memrl.agents.train.train` with ``lookup`` (= ``memrl train --lookup TABLES``),
  trained from scratch on that one dataset: the PPO settings of ``experiments/digits.yaml``
  (:data:`memrl.agents.config.DEFAULT_PPO`: rollouts of 8, batch 8, 10 epochs, lr 3e-3, gamma 0,
  entropy 0.01, a 64-64 MLP), ``total_timesteps`` = budget, ``train.seed`` = ``s``, no held-out
  datasets, no random-mask comparison, no final pictures.
* ``ppo+surrogate``: the same with the learned reward model (``train.surrogate``, :data:`SURROGATE`):
  proposals the model deems not promising are answered by it instead of the table, so they cost no
  evaluation; the run stops after ``budget`` distinct real evaluations.

Each run's ``evaluations.csv`` gives its proposals in order. Cost is counted in *distinct masks
evaluated* (the units actually trained): a re-proposed mask is a cache hit and costs no
fine-tune. A run that re-proposes masks evaluates fewer distinct masks than its budget; after its
last new mask its best-so-far stays where it ended.

A reward ``r`` on a table is scored ``(r - r_min) / (r_max - r_min)`` over that table's masks
(1 = the optimum); "within 2%" means a score >= 0.98. Also reported: the absolute regret
``r_max - best``. Per dataset and pooled over datasets: for each optimizer the median number of
distinct evaluations to come within 2% [interquartile range] ("≥" where unfinished runs count as
needing more than the budget), the share of runs that got there within the budget, the mean
normalised best-so-far at 8 / 16 / 32 evaluations and the median regret. The markdown goes to
stdout (and ``--markdown FILE``); the plot (median normalised best-so-far against distinct
evaluations, interquartile band, one line per optimizer, one panel per dataset and one pooled) to
``OUT_DIR/bench_search.png``; every run's proposals to ``OUT_DIR/bench_search.json``, which a
rerun with the same tables, config and settings reuses (``--fresh`` runs everything again).

**A second seed.** Where a table of the next evaluation seed (``env.seed + 1``) holds every mask of a
dataset, each run's *pick* after 8 / 16 / 32 distinct evaluations (the best of them by the rewards
its optimizer saw) is also scored on that seed's table, which no optimizer saw: the median regret
there, beside the seed-0 optimum's own regret on seed 1 (what a search that found the seed-0
optimum ends with; a pick can beat it there by luck) and a uniformly random mask's. A pick scored
on the numbers it was picked by flatters itself (the best of n noisy rewards is biased upward);
this table does not.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPTIMIZERS = ("ppo", "ppo+surrogate", "tpe", "nsga2", "random")
#: ``ppo+surrogate``'s reward model (``train.surrogate``): the first fit after 8 real evaluations;
#: training stops after ``budget`` distinct real evaluations (env steps: up to 8 x the budget).
SURROGATE = {"enabled": True, "min_real": 8, "kappa": 1.0, "refit_every": 4}
#: A score this close to the optimum counts as found.
WITHIN = 0.98
#: Evaluation counts the table reports the mean normalised best-so-far at (those within the budget).
CHECKPOINTS = (8, 16, 32)
COLORS = {"ppo": "tab:red", "ppo+surrogate": "tab:purple", "tpe": "tab:blue", "nsga2": "tab:green", "random": "tab:gray"}
STYLES = {"ppo": "-", "ppo+surrogate": "-", "tpe": "--", "nsga2": "-.", "random": ":"}
RESULTS_NAME = "bench_search"


# ---------------------------------------------------------------------------------------- setup
def load_env(config: str | Path):  # noqa: ANN201
    """The ``env`` section of ``config`` (a ``memrl search`` / ``memrl train`` YAML file)."""
    from memrl.errors import MemrlError
    from memrl.search.config import SearchConfig

    env = SearchConfig.load(config).env
    if len(env.methods) > 1 or len(env.lr_scales) > 1:
        raise MemrlError(f"{config}: the benchmark compares mask searches for one method and learning rate (env.methods / env.lr_scales offer a choice)")
    return env


def table_datasets(tables: Path) -> list[str]:
    """The datasets the tables under ``tables`` hold, as ``load_dataset`` spells them, in table order."""
    from memrl.evaluation.lookup import table_datasets as datasets_of

    return datasets_of(tables)


def ground_truth(ev, env, dataset: str) -> dict | None:  # noqa: ANN001
    """Every mask's reward on ``dataset`` from the tables, evaluated as every outer loop does
    (:func:`memrl.evaluation.ground_truth.ground_truth`); ``None`` when the tables lack a mask (or
    the reference / base rows)."""
    from memrl.data.loaders import load_dataset
    from memrl.evaluation.ground_truth import ground_truth as truth_of

    data = load_dataset(dataset, ev.image_size, ev.image_channels)
    ev.check_data(data)
    gt = truth_of(ev, data, dataset, env.eval_config(), env.method, env.methods, env.lr_scales, env.seed, env.resolved_failure_reward())
    if gt is None:
        return None
    units = list(ev.units)
    ok = gt.ok
    good = [k for k, r in ok.items() if gt.within(r, WITHIN)]
    best = gt.optimum
    return {
        "dataset": dataset,
        "data_name": data.name,
        "masks": gt.n,
        "failed": len(gt.failed),
        "r_max": gt.r_max,
        "r_min": gt.r_min,
        "optimum": [str(_mask(k, units)) for k in best],
        "optimum_bits": best,
        "within": len(good),
        "rewards": dict(gt.rewards),
        "signature": gt.signature,
        "seed": env.seed,
    }


def _mask(bits: str, units: list[str]):  # noqa: ANN202
    from memrl.peft_masking import Mask

    return Mask.from_bits(bits, units)


# ---------------------------------------------------------------------------------------- the runs
def ppo_settings(budget: int) -> dict:
    """PPO for a few dozen samples (``experiments/digits.yaml``'s section); a rollout is never longer than the budget."""
    from memrl.agents.config import DEFAULT_PPO

    ppo = copy.deepcopy(DEFAULT_PPO)
    n = min(int(ppo["n_steps"]), budget)
    ppo.update(n_steps=n, batch_size=min(int(ppo["batch_size"]), n))
    return ppo


def run_search(env, tables: Path, dataset: str, optimizer: str, seed: int, budget: int, folder: Path) -> list[dict]:  # noqa: ANN001
    """One Optuna run (``memrl search --lookup TABLES``); its evaluations in order."""
    from memrl.envs.config import EnvConfig
    from memrl.search.config import SearchConfig, SearchSettings
    from memrl.search.run import search

    e = EnvConfig.from_dict({**env.to_dict(), "datasets": [dataset], "cache": None})
    settings = SearchSettings(optimizer=optimizer, budget=budget, dataset=dataset, seed=seed, lookup=str(tables), final_pictures=False, figures_every=budget)
    search(SearchConfig(env=e, search=settings), folder, progress=False, echo=lambda _s: None)
    return _rows(folder)


def run_ppo(env, tables: Path, dataset: str, seed: int, budget: int, folder: Path, surrogate: bool = False) -> list[dict]:  # noqa: ANN001
    """One PPO run from scratch on ``dataset`` (``memrl train --lookup TABLES``); its evaluations in order.

    ``surrogate``: with the learned reward model (:data:`SURROGATE`; evaluations.csv then holds the
    real evaluations only, and training stops after ``budget`` distinct ones)."""
    from memrl.agents.config import TrainConfig, TrainSettings
    from memrl.agents.train import train
    from memrl.envs.config import EnvConfig

    e = EnvConfig.from_dict({**env.to_dict(), "datasets": [dataset], "cache": None})
    settings = TrainSettings(total_timesteps=budget, seed=seed, checkpoint_every=budget, heldout_datasets=[], random_masks=0, final_pictures=False, optuna=False)
    if surrogate:
        settings = TrainSettings(
            total_timesteps=8 * budget, seed=seed, checkpoint_every=8 * budget, heldout_datasets=[], random_masks=0, final_pictures=False, optuna=False,
            surrogate={**SURROGATE, "max_real": budget},
        )  # fmt: skip
    train(TrainConfig(env=e, ppo=ppo_settings(budget), train=settings), folder, progress=False, echo=lambda _s: None, lookup=tables)
    return _rows(folder)[:budget]  # PPO collects whole rollouts


def _rows(folder: Path) -> list[dict]:
    from memrl.reporting.records import EvaluationLog, is_true

    return [{"mask_bits": r["mask_bits"], "reward": float(r["reward"]), "failed": is_true(r["failed"])} for r in EvaluationLog.read(folder / "evaluations.csv")]


def one_run(env, tables: Path, dataset: str, optimizer: str, seed: int, budget: int) -> list[dict]:  # noqa: ANN001
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        folder = Path(tmp) / "run"
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):  # SB3 / Optuna chatter; the summary is printed below
            if optimizer in ("ppo", "ppo+surrogate"):
                return run_ppo(env, tables, dataset, seed, budget, folder, surrogate=optimizer == "ppo+surrogate")
            return run_search(env, tables, dataset, optimizer, seed, budget, folder)


# ---------------------------------------------------------------------------------------- scoring
def next_seed_truth(ev, env, dataset: str) -> dict | None:  # noqa: ANN001
    """:func:`ground_truth` on the table of the next evaluation seed (``env.seed + 1``): the numbers
    no optimizer run on ``env.seed`` saw; ``None`` when there is no complete one."""
    return ground_truth(ev, env.with_(seed=env.seed + 1), dataset)


def pick_after(rows: list[dict], k: int) -> str | None:
    """The mask a run would pick after ``k`` distinct evaluations: the best reward among them
    (``None`` for a run without any)."""
    seen: dict[str, float] = {}
    for r in rows:
        if r["mask_bits"] not in seen:
            if len(seen) == k:
                break
            seen[r["mask_bits"]] = r["reward"]
    return max(seen, key=seen.get) if seen else None


def held_out_regrets(runs: list[list[dict]], truth2: dict, checkpoints: list[int]) -> dict[int, list[float]]:
    """Per checkpoint ``n``: each run's pick after ``n`` distinct evaluations, its regret on the
    second seed's table ``truth2`` (``r_max - r`` there)."""
    out: dict[int, list[float]] = {}
    for n in checkpoints:
        picks = [pick_after(rows, n) for rows in runs]
        out[n] = [truth2["r_max"] - truth2["rewards"][b] for b in picks if b is not None]
    return out


def held_out_md(truth: dict, truth2: dict, runs: dict[str, list[list[dict]]], checkpoints: list[int]) -> list[str]:
    """The second-seed table of one dataset (see the module docstring)."""
    best0 = truth["optimum_bits"][0]
    uniform = float(np.mean([truth2["r_max"] - r for r in truth2["rewards"].values()]))
    at = " | ".join(f"pick after {n}" for n in checkpoints)
    head = f"| optimizer | {at} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rs in runs.items():
        reg = held_out_regrets(rs, truth2, checkpoints)
        lines.append(f"| {name} | " + " | ".join(f"{np.median(reg[n]):.3f}" for n in checkpoints) + " |")
    lines += [
        "",
        f"Median regret on seed {truth2['seed']} (its optimum {truth2['r_max']:.3f}, `{truth2['optimum_bits'][0]}`) of each run's pick by the seed-{truth['seed']} rewards it saw. "
        f"The seed-{truth['seed']} optimum `{best0}` scores regret {truth2['r_max'] - truth2['rewards'][best0]:.3f} there (where a search that finds it ends up); "
        f"a uniformly random mask {uniform:.3f}.",
    ]
    return lines


def trace(rows: list[dict], truth: dict, budget: int) -> dict:
    """A run's best-so-far against distinct evaluations: ``norm[n-1]`` / ``regret[n-1]`` after ``n``
    distinct masks (held at the final value past the run's last new mask), the distinct count at which
    it came within 2% (``None``: not within the budget) and the proposals that took."""
    span = truth["r_max"] - truth["r_min"]
    seen: set[str] = set()
    best = -math.inf
    norm, regret = [], []
    hit, hit_trial = None, None
    for i, r in enumerate(rows[:budget], start=1):
        best = max(best, r["reward"])
        score = 1.0 if span == 0 else (best - truth["r_min"]) / span
        if r["mask_bits"] not in seen:
            seen.add(r["mask_bits"])
            norm.append(score)
            regret.append(truth["r_max"] - best)
        if hit is None and score >= WITHIN:
            hit, hit_trial = len(seen), i
    distinct = len(norm)
    norm += [norm[-1]] * (budget - distinct)
    regret += [regret[-1]] * (budget - distinct)
    return {"norm": norm, "regret": regret, "hit": hit, "hit_trial": hit_trial, "distinct": distinct}


def quantiles(values: list[int | None], budget: int, qs=(0.25, 0.5, 0.75)) -> list[tuple[float, bool]]:  # noqa: ANN001
    """Quantiles of evaluation counts where ``None`` (not reached) counts as more than ``budget``:
    ``(value, lower_bound)``; ``lower_bound`` when an unreached run entered the value (then the
    true quantile is at least it)."""
    x = sorted(budget + 1 if v is None else v for v in values)
    out = []
    for q in qs:
        pos = q * (len(x) - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        v = x[lo] + (x[hi] - x[lo]) * (pos - lo)
        out.append((float(v), x[hi] > budget))
    return out


def _fmt_q(q: tuple[float, bool], budget: int) -> str:
    v, bound = q
    if bound and v > budget:
        return f">{budget}"
    text = f"{v:.0f}" if v == int(v) else f"{v:.1f}"
    return f"≥{text}" if bound else text


def summarize(traces: list[dict], budget: int, checkpoints: list[int]) -> dict:
    hits = [t["hit"] for t in traces]
    q = quantiles(hits, budget)
    return {
        "runs": len(traces),
        "reached": sum(h is not None for h in hits),
        "median": q[1],
        "iqr": (q[0], q[2]),
        "at": {n: float(np.mean([t["norm"][n - 1] for t in traces])) for n in checkpoints},
        "regret_at": {n: float(np.median([t["regret"][n - 1] for t in traces])) for n in checkpoints},
        "distinct": float(np.median([t["distinct"] for t in traces])),
        "hits": hits,
    }


def table_md(stats: dict[str, dict], budget: int, checkpoints: list[int]) -> list[str]:
    at = " | ".join(f"score at {n}" for n in checkpoints)
    head = f"| optimizer | evaluations to within 2%: median [IQR] | runs within 2% in the budget | {at} | median regret at {checkpoints[-1]} | distinct masks per run (median) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in stats.items():
        med = _fmt_q(s["median"], budget)
        iqr = f"[{_fmt_q(s['iqr'][0], budget)}, {_fmt_q(s['iqr'][1], budget)}]"
        scores = " | ".join(f"{s['at'][n]:.3f}" for n in checkpoints)
        lines.append(f"| {name} | {med} {iqr} | {s['reached']}/{s['runs']} | {scores} | {s['regret_at'][checkpoints[-1]]:.3f} | {s['distinct']:.0f} |")
    return lines


def ratios_md(stats: dict[str, dict], budget: int) -> str:
    """Median evaluations to within 2% relative to TPE's (when TPE's is known)."""
    if "tpe" not in stats or stats["tpe"]["median"][1] or len(stats) < 2:
        return ""
    base = stats["tpe"]["median"][0]
    parts = []
    for name, s in stats.items():
        if name == "tpe":
            continue
        v, bound = s["median"]
        parts.append(f"{name} {'≥' if bound else ''}{v / base:.2f}x" if not (bound and v > budget) else f"{name} >{budget / base:.2f}x")
    return "Median evaluations to within 2% relative to TPE's: " + ", ".join(parts) + "."


def plot(panels: list[tuple[str, dict[str, list[dict]]]], budget: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    x = np.arange(1, budget + 1)
    for ax, (title, by_opt) in zip(axes[0], panels):
        for name, traces in by_opt.items():
            y = np.asarray([t["norm"] for t in traces])
            lo, med, hi = np.percentile(y, [25, 50, 75], axis=0)
            color = COLORS.get(name)
            ax.plot(x, med, label=name, color=color, ls=STYLES.get(name, "-"), lw=1.8)
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        ax.axhline(WITHIN, color="black", lw=0.6, alpha=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("distinct masks evaluated")
        ax.set_xlim(1, budget)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best-so-far reward, normalised\n(1 = table optimum; median, IQR band)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def _config_signature(env, budget: int) -> str:  # noqa: ANN001
    from memrl.evaluation.evaluator import EVAL_VERSION

    d = {"env": {k: v for k, v in env.to_dict().items() if k not in ("cache", "datasets", "device")}, "ppo": ppo_settings(budget), "eval_version": EVAL_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets to run on (default: every dataset with a complete table)")
    ap.add_argument("--seeds", type=int, default=10, help="optimizer seeds 0..N-1 per optimizer and dataset")
    ap.add_argument("--budget", type=int, default=64, help="proposals per run (trials / PPO env steps); re-proposed masks cost no evaluation")
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with (method, granularity, preset, reward, evaluation seed)")
    ap.add_argument("--out-dir", default="experiments/results", help="where bench_search.png and bench_search.json go")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    ap.add_argument("--fresh", action="store_true", help="run everything again (default: reuse the runs in OUT_DIR/bench_search.json made with the same tables and settings)")
    args = ap.parse_args(argv)

    from memrl.errors import MemrlError
    from memrl.evaluation.lookup import LookupEvaluator

    if args.seeds < 1 or args.budget < 1:
        print("error: --seeds and --budget must be >= 1", file=sys.stderr)
        return 2
    tables = Path(args.tables)
    if not tables.is_dir() or not any(tables.rglob("*.jsonl")):
        print(f"error: no lookup tables (*.jsonl) under {tables}: tables pending", file=sys.stderr)
        return 2
    try:
        env = load_env(args.config)
        ev = LookupEvaluator.from_dir(tables)
        if ev.feature_net is None and (Path(env.pretrained) / "feature_net").is_dir():
            ev.set_feature_net(Path(env.pretrained) / "feature_net")
        names = args.datasets or table_datasets(tables)
        truths = {}
        for d in names:
            t = ground_truth(ev, env, d)
            if t is None:
                msg = f"{d}: the tables under {tables} do not hold every mask (with the reference and base rows) for {args.config}'s env"
                if args.datasets:
                    raise MemrlError(msg)
                print(f"skipped {msg}", file=sys.stderr)
                continue
            truths[d] = t
        truths2 = {d: t2 for d in truths if (t2 := next_seed_truth(ev, env, d)) is not None}
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not truths:
        print(f"error: no dataset has a complete table under {tables}: tables pending", file=sys.stderr)
        return 2

    out_dir = Path(args.out_dir)
    raw_path = out_dir / f"{RESULTS_NAME}.json"
    cfg_sig = _config_signature(env, args.budget)
    old: dict[str, dict] = {}
    if raw_path.is_file():
        old = {r["key"]: r for r in json.loads(raw_path.read_text()).get("runs", [])}
    runs, traces, proposals = [], {}, {}
    t0 = time.time()
    for d, truth in truths.items():
        for opt in args.optimizers:
            for s in range(args.seeds):
                key = f"{d}|{opt}|seed{s}|budget{args.budget}|table{truth['signature']}|cfg{cfg_sig}"
                if opt == "ppo+surrogate":
                    key += "|surrogate" + hashlib.sha256(json.dumps(SURROGATE, sort_keys=True).encode()).hexdigest()[:8]
                rows = None if args.fresh or key not in old else old[key]["rows"]
                if rows is None:
                    t1 = time.time()
                    rows = one_run(env, tables, d, opt, s, args.budget)
                    print(f"{d} {opt} seed {s}: {len(rows)} proposals, {len({r['mask_bits'] for r in rows})} distinct masks, best {max(r['reward'] for r in rows):.3f} ({time.time() - t1:.1f} s)", file=sys.stderr, flush=True)
                runs.append({"key": key, "dataset": d, "optimizer": opt, "seed": s, "rows": rows})
                traces.setdefault(d, {}).setdefault(opt, []).append(trace(rows, truth, args.budget))
                proposals.setdefault(d, {}).setdefault(opt, []).append(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    from memrl.utils.io import write_json_atomic

    kept = [r for k, r in old.items() if k not in {x["key"] for x in runs}]  # other datasets' / settings' runs stay for later reruns
    write_json_atomic(raw_path, {"command": _command(argv), "budget": args.budget, "within": WITHIN, "truth": {d: {k: v for k, v in t.items() if k != "rewards"} for d, t in truths.items()}, "runs": runs + kept})

    checkpoints = [n for n in CHECKPOINTS if n <= args.budget] or [args.budget]
    lines = [f"`{_command(argv)}`", ""]
    lines += [
        f"Cost = distinct masks evaluated (a re-proposed mask is a cache hit: no fine-tune). Each run makes {args.budget} proposals "
        f"(trials / PPO env steps), optimizer seeds 0..{args.seeds - 1}, every evaluation answered from the tables (evaluation seed {env.seed}). "
        f"Score = (r - r_min) / (r_max - r_min) over the table's masks (1 = the optimum); within 2% = score >= {WITHIN}; "
        "a run that never got there counts as needing more than the budget (\"≥\": the quantile includes such runs). "
        "Regret = r_max - best-so-far reward. After a run's last new mask its best-so-far is held.",
        "",
    ]
    pooled = {}
    for d, by_opt in traces.items():
        t = truths[d]
        n_masks = t["masks"] - t["failed"]
        failed = f", {t['failed']} failed" if t["failed"] else ""
        lines.append(
            f"**{d}** ({n_masks} masks{failed}; optimum {t['r_max']:.3f}: "
            f"{'; '.join(t['optimum'])}; r_min {t['r_min']:.3f}; {t['within']} mask{'s' if t['within'] != 1 else ''} within 2%, so uniform sampling without replacement "
            f"needs {(n_masks + 1) / (t['within'] + 1):.1f} evaluations on average)"
        )
        lines.append("")
        stats = {o: summarize(tr, args.budget, checkpoints) for o, tr in by_opt.items()}
        lines += table_md(stats, args.budget, checkpoints)
        r = ratios_md(stats, args.budget)
        lines += ["", r] if r else []
        lines.append("")
        if d in truths2:
            lines += [f"On a second evaluation seed (seed {truths2[d]['seed']}; picks scored on numbers their optimizer never saw):", ""]
            lines += held_out_md(t, truths2[d], proposals[d], checkpoints)
            lines.append("")
        for o, tr in by_opt.items():
            pooled.setdefault(o, []).extend(tr)
    if len(traces) > 1:
        lines += [f"**Pooled** over {len(traces)} datasets ({', '.join(traces)}; {args.seeds} seeds each)", ""]
        stats = {o: summarize(tr, args.budget, checkpoints) for o, tr in pooled.items()}
        lines += table_md(stats, args.budget, checkpoints)
        r = ratios_md(stats, args.budget)
        lines += ["", r] if r else []
        lines.append("")
    png = out_dir / f"{RESULTS_NAME}.png"
    panels = list(traces.items()) + ([(f"pooled ({len(traces)} datasets)", pooled)] if len(traces) > 1 else [])
    plot(panels, args.budget, png)
    lines.append(f"![best-so-far against distinct evaluations]({png.name})")
    emit("\n".join(lines) + "\n", args.markdown, [png, raw_path], t0)
    return 0


def emit(text: str, markdown: str | None, written: list[Path], t0: float) -> None:
    """The report to stdout (and ``markdown``), then what else was written, to stderr."""
    print(text)
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(text)
    print(f"wrote {' and '.join(str(p) for p in written)} ({time.time() - t0:.0f} s)", file=sys.stderr)


def _command(argv: list[str] | None) -> str:
    return "python experiments/bench_search.py" + ("".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
