"""Figures for TensorBoard, the run folder and ``memrl report`` (matplotlib, headless).

Every function takes plain rows/arrays and returns a figure; :func:`save` writes and closes it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["mask_frequency_heatmap", "pareto_by_dataset", "pareto_scatter", "reward_curves", "save"]


def mask_frequency_heatmap(freq: np.ndarray, units: list[str], steps: list[int]):  # noqa: ANN201
    """Units x rollouts heatmap of how often the agent switched each unit on."""
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(steps) + 2.5), 0.35 * len(units) + 1.2))
    im = ax.imshow(freq, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(units)), units, fontsize=7)
    tick = max(1, len(steps) // 10)
    ax.set_xticks(range(0, len(steps), tick), [str(s) for s in steps[::tick]], fontsize=7)
    ax.set_xlabel("env steps")
    ax.set_title("share of proposals training each unit")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def pareto_scatter(rows: list[dict], front: list[dict], mem_metric: str):  # noqa: ANN201
    """FID vs memorization of every distinct evaluation, the front highlighted, per dataset colour."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    datasets = sorted({r["dataset"] for r in rows})
    colours = plt.cm.tab10(np.linspace(0, 1, max(10, len(datasets))))
    for i, d in enumerate(datasets):
        rs = [r for r in rows if r["dataset"] == d]
        ax.scatter([float(r["fid"]) for r in rs], [float(r[mem_metric]) for r in rs], s=14, alpha=0.4, color=colours[i], label=d)
        fr = sorted((r for r in front if r["dataset"] == d), key=lambda r: float(r["fid"]))
        if fr:
            ax.plot([float(r["fid"]) for r in fr], [float(r[mem_metric]) for r in fr], "-o", ms=4, color=colours[i])
    ax.set_xlabel("FID (lower is better)")
    ax.set_ylabel(f"{mem_metric} (lower is better)")
    ax.set_title("evaluations and Pareto fronts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto_by_dataset(rows: list[dict], front: list[dict], mem_metric: str, best: dict[str, dict] | None = None):  # noqa: ANN201
    """One FID-vs-memorization panel per dataset (their FID scales differ): every distinct
    evaluation, its Pareto front joined, and the best-reward evaluation ringed."""
    datasets = sorted({r["dataset"] for r in rows})
    n = max(1, len(datasets))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    colours = plt.cm.tab10(np.linspace(0, 1, max(10, n)))
    for i, d in enumerate(datasets):
        ax = axes[i // cols][i % cols]
        rs = [r for r in rows if r["dataset"] == d]
        ax.scatter([float(r["fid"]) for r in rs], [float(r[mem_metric]) for r in rs], s=14, alpha=0.45, color=colours[i], label="evaluations")
        fr = sorted((r for r in front if r["dataset"] == d), key=lambda r: float(r["fid"]))
        if fr:
            ax.plot([float(r["fid"]) for r in fr], [float(r[mem_metric]) for r in fr], "-o", ms=4, color=colours[i], label="Pareto front")
        b = (best or {}).get(d)
        if b is not None:
            ax.scatter([float(b["fid"])], [float(b[mem_metric])], s=90, facecolors="none", edgecolors="black", linewidths=1.4, label="best reward")
        ax.set_title(d, fontsize=9)
        ax.set_xlabel("FID (lower is better)", fontsize=8)
        ax.set_ylabel(f"{mem_metric} (lower is better)", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6)
    for j in range(len(datasets), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    return fig


def reward_curves(curves: dict[str, dict[str, list]]):  # noqa: ANN201
    """Per dataset, over env steps: each evaluation's reward (dots), the best-so-far reward (steps)
    and the regret against the best found in the run (``best - best_so_far``).

    ``curves[dataset]`` holds ``steps``/``rewards`` (every successful evaluation) and
    ``best_so_far``/``regret`` (same length).
    """
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    datasets = sorted(curves)
    colours = plt.cm.tab10(np.linspace(0, 1, max(10, len(datasets))))
    for i, d in enumerate(datasets):
        c = curves[d]
        if not c["steps"]:
            continue
        ax.scatter(c["steps"], c["rewards"], s=8, alpha=0.3, color=colours[i])
        ax.step(c["steps"], c["best_so_far"], where="post", color=colours[i], label=d)
        ax2.step(c["steps"], c["regret"], where="post", color=colours[i], label=d)
    ax.set_xlabel("env step")
    ax.set_ylabel("reward (dots) / best so far (line)")
    ax.set_title("reward per dataset", fontsize=9)
    ax2.set_xlabel("env step")
    ax2.set_ylabel("best in run - best so far")
    ax2.set_title("regret against the best found in the run", fontsize=9)
    for a in (ax, ax2):
        a.tick_params(labelsize=7)
        if datasets:
            a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:  # noqa: ANN001
    fig.savefig(path, dpi=110)
    plt.close(fig)
