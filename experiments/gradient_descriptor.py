"""Does the pretrained model's gradient on a dataset say which units to fine-tune? A model-aware descriptor, tested on the tables.

    python experiments/gradient_descriptor.py [--tables experiments/results/exhaustive] \\
        [--config experiments/exhaustive.yaml] [--datasets D ...] [--batches 16] [--batch-size 32] \\
        [--seeds 0 1] [--permutations 9999] [--out FILE.json] [--markdown FILE]

The descriptor the policy sees (:mod:`memrl.envs.descriptor`) describes the *images*: feature
statistics, size, duplication. It says nothing of how the pretrained model meets them, and
``descriptor_similarity.py`` found that it does not predict which masks transfer between
datasets. The quantity a mask acts on is the model: which units the new data pulls on. This
computes, for every dataset with a complete table, before any fine-tuning:

* per maskable unit, the mean squared gradient per weight of the denoising loss on the
  training images, taken on the weights the method adapts (for lora, the attention q/k/v/out
  projections): a diagonal-Fisher proxy of how much that unit would move. Its log, centred over
  the units, is the *gradient profile*: which units this dataset pulls hardest, relative to the
  others. The vector also holds the log of the mean loss (how far the data is from pretraining).
* the same on a second noise seed (``--seeds``), so the report says how reliable a profile is.

and asks of the tables:

* **per unit, across datasets**: does a dataset's gradient on unit ``u`` (its deviation from the
  datasets' mean) go with how much switching ``u`` on helps there (the unit's *marginal effect*:
  the mean normalised reward of the masks with ``u`` on minus those with it off, also as a
  deviation from the datasets' mean)? Both are double-centred, so what is left is the
  mask x dataset part, the only part a descriptor can add to a fixed mask. One Spearman
  correlation over every (dataset, unit) cell, with a permutation p-value that relabels the
  datasets' profiles (rows move together).
* ``--out`` writes the vectors as JSON, which ``descriptor_similarity.py --vectors FILE`` tests
  the way it tests the policy's descriptor (Mantel test, nearest-table rules against the fixed mask).

The gradient costs ``batches`` forward and backward passes per dataset and seed (about a minute
for a dozen datasets on one CPU thread); nothing is fine-tuned.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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


DS = _load("descriptor_similarity")
BS = DS.BS
BT = DS.BT


def unit_weights(unet, units: Sequence[str], method: str) -> dict[str, list]:  # noqa: ANN001
    """The weights ``method`` adapts in each unit: the attention projections' weights for the
    methods that act on them (lora, loha, lokr, oft, attention), every parameter of the unit otherwise."""
    from memrl.peft_masking.registry import apply_adapter, apply_attention, attention_projections, get_method

    on_projections = get_method(method).apply in (apply_adapter, apply_attention)
    out = {}
    for u in units:
        module = unet.get_submodule(u)
        proj = [m.weight for _, m in attention_projections(u, module)]
        out[u] = proj if on_projections and proj else list(module.parameters())
    return out


def unit_gradients(model, data, units: Sequence[str], method: str, batches: int, batch_size: int, seed: int) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """``(mean squared gradient per weight of each unit, mean loss)`` of the pretrained model's
    denoising loss on ``batches`` seeded batches of ``data``'s training images (with replacement)."""
    import torch

    from memrl.training.losses import epsilon_loss

    unet = model.unet
    unet.requires_grad_(False)
    unet.eval()
    weights = unit_weights(unet, units, method)
    flat = [w for u in units for w in weights[u]]
    for w in flat:
        w.requires_grad_(True)
    sizes = [sum(w.numel() for w in weights[u]) for u in units]
    gen = torch.Generator().manual_seed(seed)
    train = data.train
    sq = np.zeros(len(units))
    losses = []
    try:
        for _ in range(batches):
            idx = torch.randint(0, len(train), (min(batch_size, len(train)),), generator=gen).tolist()
            with torch.no_grad():
                images = torch.stack([train.images[i] for i in idx]).to(model.device)
                latents = model.to_latents(images)
                ctx = model.encode_prompts([train.captions[i] for i in idx])
            loss = epsilon_loss(unet, model.scheduler, latents, ctx, gen)
            grads = torch.autograd.grad(loss, flat)
            pos = 0
            for j, u in enumerate(units):
                n = len(weights[u])
                sq[j] += float(sum(g.double().pow(2).sum() for g in grads[pos : pos + n]))
                pos += n
            losses.append(float(loss.detach()))
    finally:
        for w in flat:
            w.requires_grad_(False)
    return sq / batches / np.asarray(sizes, float), float(np.mean(losses))


def profile(sq: np.ndarray, loss: float) -> np.ndarray:
    """The descriptor vector: log10 mean squared gradient per unit, centred over the units, then
    log10 of the mean loss."""
    lg = np.log10(np.maximum(sq, 1e-30))
    return np.concatenate([lg - lg.mean(), [np.log10(max(loss, 1e-30))]])


def normalised_scores(truth: dict) -> dict[str, float]:
    """Each mask's ``(r - mean) / (r_max - mean)``: 1 at the optimum, 0 for an average mask (one
    minus the normalised regret), so tables of different reward scales average fairly."""
    r = np.asarray(list(truth["rewards"].values()), float)
    spread = float(truth["r_max"] - r.mean())
    return {m: (v - r.mean()) / (spread if spread > 0 else 1.0) for m, v in truth["rewards"].items()}


def marginal_effects(truth: dict, n_units: int) -> np.ndarray:
    """Per unit, the mean normalised reward ``(r - mean) / (r_max - mean)`` of the masks with the
    unit's bit on minus those with it off (bit ``i`` of the bit string is unit ``i``; see
    :func:`normalised_scores`)."""
    scores = normalised_scores(truth)
    masks = list(scores)
    z = np.asarray([scores[m] for m in masks])
    bits = np.asarray([[int(c) for c in m] for m in masks])
    if bits.shape[1] != n_units:
        raise ValueError(f"masks of {bits.shape[1]} bits for {n_units} units")
    return np.asarray([z[bits[:, i] == 1].mean() - z[bits[:, i] == 0].mean() for i in range(n_units)])


def double_centred(x: np.ndarray) -> np.ndarray:
    """``x`` (datasets x units) less its row and column means (plus the grand mean): the
    dataset x unit interaction."""
    return x - x.mean(0, keepdims=True) - x.mean(1, keepdims=True) + x.mean()


def interaction_test(grad: np.ndarray, effect: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Spearman correlation over every (dataset, unit) cell of the double-centred gradient
    profiles and marginal effects, and its one-sided permutation p-value (the datasets' gradient
    rows are relabelled; the observed labelling counts, so p is never 0)."""
    from scipy.stats import spearmanr

    if grad.shape != effect.shape or grad.shape[0] < 3:
        raise ValueError(f"the interaction test needs matching matrices of at least 3 datasets, got {grad.shape} and {effect.shape}")
    e = double_centred(effect).ravel()

    def rho(g: np.ndarray) -> float:
        return float(spearmanr(double_centred(g).ravel(), e).statistic)

    observed = rho(grad)
    rng = np.random.default_rng(seed)
    hits = 1 + sum(rho(grad[rng.permutation(grad.shape[0])]) >= observed - 1e-12 for _ in range(permutations))
    return observed, hits / (permutations + 1)


def adjusted_pick(truths: dict[str, dict], grads: dict[str, np.ndarray], target: str, pool: Sequence[str]) -> tuple[str, str, float]:
    """``(fixed mask, gradient-adjusted mask, beta)`` for ``target`` from the tables of ``pool``
    (``target`` left out): the fixed mask maximises the pool's mean normalised score; the adjusted
    one adds, for every unit the mask switches on, the unit's predicted dataset x unit effect,
    ``beta`` times the target's gradient (centred over the units) less the pool's mean gradient on
    that unit. ``beta`` is the pool's least-squares slope of double-centred effect on
    double-centred gradient (an additive model of the tables: ``score(mask) ~ sum of the effects
    of its units``), so nothing of the target's table is used."""
    pool = [d for d in pool if d != target]
    if len(pool) < 2:
        raise ValueError(f"the adjusted pick needs at least 2 pool tables besides {target}")
    n = len(grads[target])
    scores = {d: normalised_scores(truths[d]) for d in pool}
    masks = sorted(scores[pool[0]])
    base = {m: float(np.mean([scores[d][m] for d in pool])) for m in masks}
    g = np.stack([grads[d] for d in pool])
    e = np.stack([marginal_effects(truths[d], n) for d in pool])
    dg, de = double_centred(g), double_centred(e)
    denom = float((dg * dg).sum())
    beta = float((dg * de).sum() / denom) if denom > 0 else 0.0
    gt = grads[target] - grads[target].mean()
    inter = beta * (gt - (g - g.mean(1, keepdims=True)).mean(0))

    def adjusted(m: str) -> float:
        return base[m] + float(sum(inter[i] for i, c in enumerate(m) if c == "1"))

    # ties to the larger bit string
    return max(masks, key=lambda m: (base[m], m)), max(masks, key=lambda m: (adjusted(m), m)), beta


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="experiments/results/exhaustive", help="folder of lookup tables (*.jsonl)")
    ap.add_argument("--config", default="experiments/exhaustive.yaml", help="the env the tables were made with (pretrained model, method, granularity)")
    ap.add_argument("--datasets", nargs="+", default=None, help="datasets (default: every dataset with a complete table for the config's seed); at least 3")
    ap.add_argument("--batches", type=int, default=16, help="batches whose gradients are averaged, per dataset and seed")
    ap.add_argument("--batch-size", type=int, default=32, help="training images per batch (drawn with replacement)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds; the first gives the vectors, the others the reliability")
    ap.add_argument("--permutations", type=int, default=9999, help="relabellings of the interaction test")
    ap.add_argument("--out", default=None, help="write {dataset: vector} (first seed) as JSON, for descriptor_similarity.py --vectors")
    ap.add_argument("--markdown", default=None, help="also write the markdown to this file")
    args = ap.parse_args(argv)
    t0 = time.time()

    from memrl.data.loaders import load_dataset
    from memrl.errors import MemrlError
    from memrl.evaluation.lookup import LookupEvaluator
    from memrl.models.pipeline import DiffusionModel
    from memrl.peft_masking.units import enumerate_units
    from memrl.utils.io import write_json_atomic, write_text_atomic

    tables = Path(args.tables)
    try:
        for flag, v in (("--batches", args.batches), ("--batch-size", args.batch_size)):
            if v < 1:
                raise MemrlError(f"{flag}: expected a positive number, got {v}")
        if not tables.is_dir() or not any(tables.rglob("*.jsonl")):
            raise MemrlError(f"no lookup tables (*.jsonl) under {tables}")
        env = BS.load_env(args.config)
        ev = LookupEvaluator.from_dir(tables)
        truths = DS.complete_truths(ev, env, args.datasets, tables, args.config)
        if len(truths) < 3:
            raise MemrlError(f"{tables}: {len(truths)} complete table(s) for {args.config}'s env (seed {env.seed}); the test needs at least 3")
        model = DiffusionModel.from_pretrained(env.pretrained)
        units = enumerate_units(model.unet, env.granularity)
        if tuple(units) != tuple(ev.units):
            raise MemrlError(f"{args.config}: the model {env.pretrained} has units {units}, the tables {list(ev.units)}")
    except MemrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    names = list(truths)
    vec: dict[int, dict[str, np.ndarray]] = {s: {} for s in args.seeds}
    for d in names:
        data = load_dataset(d, ev.image_size, ev.image_channels)
        for s in args.seeds:
            sq, loss = unit_gradients(model, data, units, env.method, args.batches, args.batch_size, s)
            vec[s][d] = profile(sq, loss)
    first = args.seeds[0]
    grad = np.stack([vec[first][d][: len(units)] for d in names])
    effect = np.stack([marginal_effects(truths[d], len(units)) for d in names])
    rho, p = interaction_test(grad, effect, args.permutations, 0)

    from scipy.stats import spearmanr

    lines = [
        f"Gradient profiles of `{env.pretrained}` ({env.method}'s weights in each of {len(units)} units; {args.batches} batches of {args.batch_size}, "
        f"noise seed {first}) against the marginal effect of each unit in {len(names)} complete tables under `{tables}` (seed {env.seed}). "
        "Gradient: log10 mean squared gradient per weight, centred over the units (+ = this dataset pulls the unit harder than its other units). "
        "Effect: mean normalised reward with the unit on minus off (normalised as (r - mean) / (r_max - mean)).",
        "",
        "Units by bit: " + ", ".join(f"{j + 1} `{u}`" for j, u in enumerate(units)) + ".",
        "",
        "| dataset (split) | log10 loss | " + " | ".join(f"bit {j + 1}: gradient / effect" for j in range(len(units))) + " |",
        "|---|---|" + "---|" * len(units),
    ]
    for i, d in enumerate(names):
        cells = [f"{d} ({BT.split_of(d)})", f"{vec[first][d][-1]:.3f}"] + [f"{grad[i, j]:+.2f} / {effect[i, j]:+.2f}" for j in range(len(units))]
        lines.append("| " + " | ".join(cells) + " |")
    mean_rho = float(spearmanr(grad.mean(0), effect.mean(0)).statistic)
    lines += [
        "",
        f"- Shared part (each unit's mean over the datasets): Spearman {mean_rho:+.3f} between mean gradient and mean effect over the {len(units)} units "
        "(whether the units the model pulls hardest are the ones worth switching on everywhere; 7 points, no test).",
        f"- Dataset x unit part (double-centred, {grad.size} cells): Spearman {rho:+.3f}, one-sided p = {p:.3g} ({args.permutations} relabellings of the datasets): "
        + ("a dataset's gradient profile **does** go with which units help it more than usual." if p < 0.05 else "a dataset's gradient profile **does not** detectably say which units help it more than usual."),
    ]
    if len(args.seeds) > 1:
        rel = []
        for s in args.seeds[1:]:
            other = np.stack([vec[s][d][: len(units)] for d in names])
            rel.append(float(spearmanr(double_centred(grad).ravel(), double_centred(other).ravel()).statistic))
        lines.append(
            f"- Reliability: the double-centred profiles of noise seed {first} and seed(s) {', '.join(map(str, args.seeds[1:]))} correlate with Spearman "
            + ", ".join(f"{r:+.3f}" for r in rel)
            + " (near 1: the profile is a property of the dataset, not of the draw)."
        )
    pool = [d for d in names if BT.split_of(d) != "test"]
    if len(pool) >= 3:
        gvec = {d: grad[i] for i, d in enumerate(names)}
        lines += ["", "Zero-shot, from the non-test tables (a test member uses them all; a non-test member the others): the pool's fixed mask (best mean normalised score) "
                  "against the same score plus the gradient-predicted effect of each unit switched on. Normalised regret [rank]; seed 1: on the next evaluation seed's table where there is one.", "",
                  "| dataset (split) | beta | fixed | gradient-adjusted | fixed, seed 1 | adjusted, seed 1 |", "|---|---|---|---|---|---|"]
        res: dict[str, tuple[float, float]] = {}
        res1: dict[str, tuple[float, float]] = {}
        for d in names:
            fixed, adj, beta = adjusted_pick(truths, gvec, d, pool)
            t = truths[d]
            res[d] = (DS.ZS.normalised_regret(t, fixed), DS.ZS.normalised_regret(t, adj))
            cells = [f"{d} ({BT.split_of(d)})", f"{beta:+.3f}"] + [f"{DS.ZS.normalised_regret(t, m):.2f} [{BT.rank_of(t, t['rewards'][m])}] `{m}`" for m in (fixed, adj)]
            t1 = BS.next_seed_truth(ev, env, d)
            if t1 is not None:
                res1[d] = (DS.ZS.normalised_regret(t1, fixed), DS.ZS.normalised_regret(t1, adj))
                cells += [f"{DS.ZS.normalised_regret(t1, m):.2f} [{BT.rank_of(t1, t1['rewards'][m])}]" for m in (fixed, adj)]
            else:
                cells += ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for label, group, table in (("non-test members, leave-one-out", pool, res), ("test members", [d for d in names if d not in pool], res), ("next seed", list(res1), res1)):
            if group:
                f, a = (float(np.mean([table[d][k] for d in group])) for k in (0, 1))
                better = sum(table[d][1] < table[d][0] - 1e-9 for d in group)
                worse = sum(table[d][1] > table[d][0] + 1e-9 for d in group)
                lines.append(f"- {label} ({len(group)}): mean normalised regret fixed {f:.3f}, gradient-adjusted {a:.3f}; adjusted better on {better}, worse on {worse}.")
    lines.append(f"- {time.time() - t0:.0f} s.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_json_atomic(Path(args.out), {d: [round(float(x), 6) for x in vec[first][d]] for d in names})
    if args.markdown:
        write_text_atomic(Path(args.markdown), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
