"""Do datasets that look alike to the descriptor want the same masks? A test on the complete tables.

    python experiments/descriptor_similarity.py [--run experiments/results/priors/committed-s0] \\
        [--tables experiments/results/exhaustive] [--config experiments/exhaustive.yaml] [--datasets D ...] \\
        [--k 3] [--permutations 9999] [--markdown FILE] [--plot PNG]

A policy (or a reward model) beats the best fixed mask on a new dataset only if what it sees of the
dataset, the descriptor, says which masks are good there. Every earlier check asked that through a
learner (PPO, a Gaussian process) and could not tell a descriptor without signal from a learner
that failed to use it. This asks it of the tables alone, with no learner in the way:

* **Mantel test.** For every pair of datasets with a complete table: their descriptor distance and
  how badly each one's best mask does on the other (the *transfer regret*, normalised regret
  averaged both ways). If the descriptor carries what the masks need, near pairs transfer better:
  a positive Spearman correlation over the pairs. Its p-value permutes the datasets' labels on one
  matrix (pairs are not independent; the permutation respects that).
* **Nearest-table rule, leave-one-out.** Each dataset's zero-shot pick is the best mask of the
  nearest *other* table by descriptor (``nearest``), or the best mean over the ``k`` nearest
  (``k-nearest``), against the same pool's best fixed mask (lowest mean normalised regret,
  ``fixed``; and ``fixed (raw)``, the best mean raw reward, the rule ``bench_transfer.py`` uses),
  a random other table's best mask (``random table``, the expectation: the control that says
  whether *choosing by descriptor* beats choosing a table blindly) and the best other table in
  hindsight (``best table``, what a perfect similarity measure could reach by copying a table).
  Test members (family split ``test``) choose only among non-test tables, so their rows are a
  held-out score; every other member is left out of a pool of the non-test tables.

Distances are Euclidean on the descriptor (the run's ``descriptor.json`` basis, what the policy
sees) after each dimension is standardised over the datasets compared (no rewards are used, so no
answer leaks; without it the descriptor's scalars would weigh by their units). Regret is normalised
per table, ``(r_max - r) / (r_max - mean)`` (0 at the optimum, 1 for an average mask), because the
members' reward scales differ tenfold. Nothing is fine-tuned; it runs in under a minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ZS = _load("zero_shot_choice")
BT = ZS.BT
BS = ZS.BS

RULES = ("nearest", "k-nearest", "fixed", "fixed (raw)", "random table", "best table")


def best_mask(truth: dict) -> str:
    """The table's optimum (ties to the larger bit string, so every rule breaks them alike)."""
    return max(truth["rewards"].items(), key=lambda kv: (kv[1], kv[0]))[0]


def transfer_matrix(truths: dict[str, dict], names: Sequence[str]) -> np.ndarray:
    """``R[i, j]``: the normalised regret on ``names[i]`` of ``names[j]``'s best mask (0 on the diagonal)."""
    return np.asarray([[ZS.normalised_regret(truths[a], best_mask(truths[b])) for b in names] for a in names])


def standardised(desc: np.ndarray) -> np.ndarray:
    """Each column of ``desc`` (datasets x dimensions) to zero mean and unit spread over the rows;
    a dimension that does not vary is dropped (it tells no dataset apart)."""
    sd = desc.std(0)
    keep = sd > 1e-12
    return (desc[:, keep] - desc[:, keep].mean(0)) / sd[keep]


def distances(desc: np.ndarray) -> np.ndarray:
    """Euclidean distance between every pair of rows."""
    diff = desc[:, None, :] - desc[None, :, :]
    return np.sqrt((diff**2).sum(-1))


def generator_vector(dataset: str) -> np.ndarray | None:
    """What the family drew for member ``dataset`` (:func:`memrl.data.family.describe`), as numbers:
    log training size, duplication level, share of digit classes, share of rich captions and one
    on/off flag per style transform. A descriptor can at best recover these; ``None`` for a
    dataset outside the family."""
    if not dataset.startswith("family:"):
        return None
    from memrl.data import family

    p = family.describe(family.parse_spec(dataset))
    used = {t["name"] for t in p["style"]}
    share = {"terse": 0.0, "rich": 1.0}.get(p["caption_style"], p["rich_caption_share"])
    return np.asarray([np.log(p["n_train"]), p["duplication"], len(p["classes"]) / 10, share, *(float(t in used) for t in family.TRANSFORMS)], dtype=float)


def mantel(a: np.ndarray, b: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Spearman correlation of two symmetric matrices over their upper triangle, and the one-sided
    permutation p-value for a correlation at least as large: the rows and columns of ``a`` are
    permuted together, as a relabelling of the datasets, ``permutations`` times (seeded); the p-value
    counts the observed labelling too, so it is never 0."""
    from scipy.stats import rankdata

    n = a.shape[0]
    iu = np.triu_indices(n, 1)
    if n < 4:  # 3 datasets have 3 pairs and 6 labellings: no test at all
        raise ValueError(f"a Mantel test needs at least 4 datasets (6 pairs), got {n}")
    # Spearman is Pearson on ranks, and a relabelling only moves a's pairs: rank both once
    ra = np.zeros_like(a, dtype=float)
    ra[iu] = rankdata(a[iu])
    ra = ra + ra.T
    rb = rankdata(b[iu])

    def corr(x: np.ndarray) -> float:
        return float(np.corrcoef(x, rb)[0, 1])

    rho = corr(ra[iu])
    rng = np.random.default_rng(seed)
    hits = 1
    for _ in range(permutations):
        p = rng.permutation(n)
        if corr(ra[p][:, p][iu]) >= rho - 1e-12:
            hits += 1
    return rho, hits / (permutations + 1)


def complete_truths(ev, env, datasets: Sequence[str] | None, tables: Path, config: str) -> dict[str, dict]:  # noqa: ANN001
    """``{dataset: ground truth}`` of ``datasets`` (MemrlError naming one whose table is not
    complete for ``env``), or of every dataset under ``tables`` whose table is."""
    from memrl.errors import MemrlError

    truths: dict[str, dict] = {}
    for d in datasets or BS.table_datasets(tables):
        try:
            t = BS.ground_truth(ev, env, d)
        except MemrlError as exc:
            raise MemrlError(f"--datasets {d}: {exc}") from None
        if t is None and datasets:
            raise MemrlError(f"--datasets {d}: the tables under {tables} do not hold every mask of it for {config}'s env (seed {env.seed})")
        if t is not None:
            truths[d] = t
    return truths


load_vectors = BT.load_vectors  # {dataset: vector} from JSON; shared with bench_context.py --vectors


def neighbours(dist: dict[tuple[str, str], float], target: str, pool: Sequence[str]) -> list[str]:
    """The tables of ``pool`` other than ``target``, nearest first (ties by name)."""
    return sorted((d for d in pool if d != target), key=lambda d: (dist[target, d], d))


def picks(truths: dict[str, dict], by_distance: Sequence[str], k: int) -> dict[str, str | None]:
    """Each deterministic rule's zero-shot mask from the other tables ``by_distance`` (the
    target's :func:`neighbours`); ``random table`` and ``best table`` are expectations, not masks (``None``)."""
    pool = list(by_distance)
    if not pool:
        raise ValueError("no other table to choose from")

    def best_mean(ds: Sequence[str]) -> str:
        common = set.intersection(*(set(truths[d]["rewards"]) for d in ds))
        return min(sorted(common), key=lambda m: float(np.mean([ZS.normalised_regret(truths[d], m) for d in ds])))

    return {
        "nearest": best_mask(truths[by_distance[0]]),
        "k-nearest": best_mean(by_distance[:k]),
        "fixed": best_mean(pool),
        "fixed (raw)": BT.best_fixed({d: truths[d] for d in pool})[0][0],
        "random table": None,
        "best table": None,
    }


def score(truths: dict[str, dict], target: str, pool: Sequence[str], chosen: dict[str, str | None]) -> dict[str, float]:
    """Normalised regret on ``target`` of each rule's pick; for the two expectations, the mean and
    the minimum over ``pool``'s tables (the other tables, never ``target``) of their best mask's normalised regret."""
    per_table = [ZS.normalised_regret(truths[target], best_mask(truths[d])) for d in pool]
    out = {r: ZS.normalised_regret(truths[target], m) for r, m in chosen.items() if m is not None}
    out["random table"] = float(np.mean(per_table))
    out["best table"] = float(np.min(per_table))
    return out


def variance_split(pairs: Sequence[tuple[dict, dict]], masks: Sequence[str] | None = None) -> tuple[float, float, float]:
    """How the variance of z-scored rewards splits, from members each with two evaluation seeds'
    tables (``(seed s, seed s + 1)`` pairs, the same masks): the **shared** mask effect (what one
    fixed mask can exploit), the **mask x dataset** interaction (what a descriptor could exploit at
    best) and the **seed noise** (what no zero-shot rule can), as a two-way random-effects
    decomposition with two replicates per cell (method of moments: each component is the excess
    of its mean square over what the one below it contributes). With ``masks``, over those masks
    only (each table still z-scored over all its masks): where the candidates a zero-shot rule
    chooses among live, the top of the table, the split can differ from the whole table's."""
    if len(pairs) < 2:
        raise ValueError("the split needs at least 2 members with two seeds' tables")
    every = sorted(pairs[0][0]["rewards"])
    masks = every if masks is None else list(masks)

    def z(t: dict) -> np.ndarray:
        r = np.asarray([t["rewards"][m] for m in every], dtype=float)
        pos = {m: i for i, m in enumerate(every)}
        return ((r - r.mean()) / (r.std() or 1.0))[[pos[m] for m in masks]]

    zz = np.asarray([[z(a), z(b)] for a, b in pairs])  # member, seed, mask
    noise = float(((zz[:, 0] - zz[:, 1]) ** 2 / 2).mean())
    cell = zz.mean(1)
    shared_mean = cell.mean(0)
    cell_var = float(((cell - shared_mean) ** 2).sum() / ((len(pairs) - 1) * len(masks)))
    interaction = max(0.0, cell_var - noise / 2)
    shared = max(0.0, float(shared_mean.var(ddof=1)) - cell_var / len(pairs))
    return shared, interaction, noise


def plot_pairs(dist: np.ndarray, transfer: np.ndarray, names: Sequence[str], rho: float, p: float, out: Path) -> None:
    """Scatter of every pair's descriptor distance against its transfer regret (pairs with a test
    member marked), written atomically to ``out`` (PNG). A descriptor that carries the masks'
    preferences draws a rising cloud."""
    import io

    import matplotlib

    from memrl.utils.io import write_bytes_atomic

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    iu = np.triu_indices(n, 1)
    test = np.asarray([BT.split_of(names[i]) == "test" or BT.split_of(names[j]) == "test" for i, j in zip(*iu)])
    x, y = dist[iu], transfer[iu]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.scatter(x[~test], y[~test], s=18, label="pairs of training / validation members")
    if test.any():
        ax.scatter(x[test], y[test], s=18, marker="^", label="pairs with a test member")
    ax.set_xlabel("descriptor distance (standardised dimensions)")
    ax.set_ylabel("transfer regret\n(normalised, both ways averaged)")
    ax.set_title(f"{n} tables: Mantel Spearman {rho:+.2f}, p = {p:.3g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue())


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="experiments/results/priors/committed-s0", help="a memrl train run folder whose descriptor.json gives the descriptor basis (what its policy sees)")
    ap.add_argument("--vectors", default=None, help="a JSON file {dataset: [numbers]} whose vectors replace the run's descriptor (another candidate descriptor, e.g. gradient_descriptor.py's)")
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets compared (default: every dataset with a complete table for the config's seed); at least 4")
    ap.add_argument("--k", type=int, default=3, help="tables the k-nearest rule averages over")
    ap.add_argument("--permutations", type=int, default=9999, help="relabellings of the Mantel test")
    ap.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    ap.add_argument("--plot", default=None, help="also draw every pair's descriptor distance against its transfer regret to this PNG")
    args = ap.parse_args(argv)
    t0 = time.time()

    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.errors import MemrlError
    from memrl.evaluation.lookup import LookupEvaluator

    tables = Path(args.tables)
    try:
        if not tables.is_dir() or not any(tables.rglob("*.jsonl")):
            raise MemrlError(f"no lookup tables (*.jsonl) under {tables}")
        if args.k < 1:
            raise MemrlError(f"--k: expected a positive number of tables, got {args.k}")
        vectors = load_vectors(args.vectors) if args.vectors else None
        basis = None if vectors else DescriptorBasis.load(Path(args.run) / "descriptor.json")
        env = BS.load_env(args.config)
        ev = LookupEvaluator.from_dir(tables)
        if vectors is None:
            if ev.feature_net is None:
                ev.set_feature_net(Path(env.pretrained) / "feature_net")
            net = ev.require_feature_net()
        truths = complete_truths(ev, env, args.datasets, tables, args.config)
        if vectors is not None:
            missing = [d for d in truths if d not in vectors]
            if missing:
                raise MemrlError(f"{args.vectors}: no vector for {', '.join(missing)} (expected one per dataset compared)")
        if len(truths) < 4:
            raise MemrlError(f"{tables}: {len(truths)} complete table(s) for {args.config}'s env (seed {env.seed}); the Mantel test needs at least 4")
        if sum(BT.split_of(d) != "test" for d in truths) < 2:
            raise MemrlError(f"{tables}: fewer than 2 complete tables of non-test datasets; every member chooses among the others (--datasets)")
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    names = list(truths)
    if vectors is not None:
        raw = np.stack([vectors[d] for d in names])
    else:
        raw = np.stack([basis.describe(net, load_dataset(d, ev.image_size, ev.image_channels)) for d in names]).astype(float)
    dmat = distances(standardised(raw))
    dist = {(a, b): float(dmat[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}
    transfer = transfer_matrix(truths, names)
    sym = (transfer + transfer.T) / 2
    from scipy.stats import spearmanr

    masks = sorted(truths[names[0]]["rewards"])
    dissim = 1.0 - spearmanr(np.asarray([[truths[d]["rewards"][m] for m in masks] for d in names]), axis=1).statistic
    rho_t, p_t = mantel(dmat, sym, args.permutations, args.seed)
    rho_s, p_s = mantel(dmat, dissim, args.permutations, args.seed)
    gen = [generator_vector(d) for d in names]
    oracle = mantel(distances(standardised(np.stack(gen))), sym, args.permutations, args.seed) if all(g is not None for g in gen) else None

    pool = [d for d in names if BT.split_of(d) != "test"]
    rows: dict[str, dict[str, float]] = {}
    chosen: dict[str, dict[str, str | None]] = {}
    near: dict[str, str] = {}
    for d in names:
        others = neighbours(dist, d, pool)
        chosen[d] = picks(truths, others, args.k)
        rows[d] = score(truths, d, others, chosen[d])
        near[d] = others[0]

    lines = [
        f"Descriptor similarity against mask preferences on {len(names)} complete tables under `{tables}` (seed {env.seed}); " + (f"vectors of `{args.vectors}`, " if vectors is not None else f"descriptor basis of `{args.run}`, ")
        + "each dimension standardised over these datasets. Normalised regret = (r_max - r) / (r_max - mean): 0 at the optimum, 1 for an average mask; "
        f"[rank] among {len(next(iter(truths.values()))['rewards'])} masks. Each member chooses from the other non-test tables ({len(pool)} in all).",
        "",
        "| dataset (split) | nearest table (distance) | nearest | k-nearest (k = " + str(args.k) + ") | fixed | fixed (raw) | random table (expected) | best table (hindsight) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, sc in rows.items():
        t = truths[d]
        cells = [f"{d} ({BT.split_of(d)})", f"{near[d]} ({dist[d, near[d]]:.2f})"]
        for r in RULES:
            m = chosen[d][r]
            cells.append(f"{sc[r]:.2f}" + (f" [{BT.rank_of(t, t['rewards'][m])}] `{m}`" if m is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")

    def summary(group: list[str], label: str) -> list[str]:
        if not group:
            return []
        means = {r: float(np.mean([rows[d][r] for d in group])) for r in RULES}
        out = [f"- {label} ({len(group)}): mean normalised regret " + ", ".join(f"{r} {v:.3f}" for r, v in means.items()) + "."]
        for other in ("fixed", "random table"):
            diffs = [rows[d]["nearest"] - rows[d][other] for d in group]
            if len(group) >= 2 and np.std(diffs, ddof=1) > 0:
                out.append(f"  nearest minus {other}, per member: {ZS.paired_cell(diffs, 3)}; nearest better on {sum(x < -1e-9 for x in diffs)}, worse on {sum(x > 1e-9 for x in diffs)}.")
        return out

    held = [d for d in rows if BT.split_of(d) == "test"]
    loo = [d for d in rows if BT.split_of(d) != "test"]
    lines += ["", *summary(loo, "leave-one-out over the non-test members"), *summary(held, "held-out test members")]
    lines += [
        f"- Mantel test over {len(names) * (len(names) - 1) // 2} pairs ({args.permutations} relabellings, seed {args.seed}): descriptor distance against transfer regret, "
        f"Spearman {rho_t:+.3f} (one-sided p = {p_t:.3g}); against 1 - Spearman of the two tables' rewards, {rho_s:+.3f} (p = {p_s:.3g}).",
    ]
    if oracle is not None:
        lines.append(
            f"- The family's own parameters (size, duplication, classes, captions, which transforms) in place of the descriptor: Spearman {oracle[0]:+.3f} "
            f"against transfer regret (p = {oracle[1]:.3g}), what a descriptor that recovered them exactly could show."
        )
    ceiling = [(d, t2) for d in rows if (t2 := BS.next_seed_truth(ev, env, d)) is not None]
    if ceiling:
        own = {d: ZS.normalised_regret(t2, best_mask(truths[d])) for d, t2 in ceiling}
        fix = {d: ZS.normalised_regret(t2, chosen[d]["fixed"]) for d, t2 in ceiling}
        nst = {d: ZS.normalised_regret(t2, chosen[d]["nearest"]) for d, t2 in ceiling}
        lines.append(
            f"- Noise ceiling, on the next evaluation seed's table ({', '.join(own)}): the member's *own* seed-{env.seed} optimum has mean normalised regret "
            f"{np.mean(list(own.values())):.3f} (" + ", ".join(f"{v:.2f}" for v in own.values()) + f"), the pool's fixed mask {np.mean(list(fix.values())):.3f} ("
            + ", ".join(f"{v:.2f}" for v in fix.values()) + f"), the nearest table's {np.mean(list(nst.values())):.3f} ("
            + ", ".join(f"{v:.2f}" for v in nst.values()) + "): knowing the dataset exactly, one seed's "
            "table is all a zero-shot rule could copy, and this is how far that copy is from the optimum of a fresh seed."
        )
        if len(ceiling) >= 2:
            split_pairs = [(truths[d], t2) for d, t2 in ceiling]
            parts = variance_split(split_pairs)
            tot = sum(parts) or 1.0
            # the top half by the non-test tables' mean normalised regret: chosen on other data, so not biased toward these members' noise
            order = sorted(truths[pool[0]]["rewards"], key=lambda m: (float(np.mean([ZS.normalised_regret(truths[d], m) for d in pool])), m))
            top = variance_split(split_pairs, order[: len(order) // 2])
            ttot = sum(top) or 1.0
            lines.append(
                f"- Where the reward differences come from (z-scored rewards of those {len(ceiling)} members, two seeds each; variance components): over all masks, shared by every member "
                f"{parts[0] / tot:.0%} (what a fixed mask uses), mask x dataset {parts[1] / tot:.0%} (what a descriptor could use at best), seed noise {parts[2] / tot:.0%} "
                f"(what no zero-shot rule can); over the better half of the masks by the non-test tables' mean (where a zero-shot pick lives), {top[0] / ttot:.0%}, "
                f"{top[1] / ttot:.0%} and {top[2] / ttot:.0%} (absolute {top[0]:.3f}, {top[1]:.3f}, {top[2]:.3f})."
            )
    allm = list(rows)
    gain = float(np.mean([rows[d]["random table"] - rows[d]["nearest"] for d in allm]))
    signal = p_t < 0.05 or p_s < 0.05
    beats = float(np.mean([rows[d]["nearest"] for d in allm])) < float(np.mean([rows[d]["fixed"] for d in allm]))
    lines.append(
        "- Verdict: the descriptor "
        + ("**does** order the pairs by how well their masks transfer (p < 0.05)" if signal else "**does not** detectably order the pairs by how well their masks transfer (p >= 0.05 on both)")
        + f"; choosing the nearest table instead of a random one changes the mean normalised regret by {-gain:+.3f}, and the nearest table's best mask "
        + ("beats" if beats else "does not beat")
        + f" the pool's fixed mask over all {len(allm)} members."
    )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        from memrl.utils.io import write_text_atomic

        write_text_atomic(Path(args.markdown), text + "\n")
    if args.plot:
        plot_pairs(dmat, sym, names, rho_t, p_t, Path(args.plot))
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
