"""Figures for TensorBoard and the run folder (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def save(fig, path) -> None:  # noqa: ANN001
    fig.savefig(path, dpi=110)
    plt.close(fig)
