"""The run's record of evaluations: ``evaluations.csv``, ``pareto.csv`` and ``best_mask.json``.

One CSV row per environment step (= one evaluation, fresh or answered from the cache), appended
and fsynced as it happens, so an interrupted run keeps every finished evaluation. ``--resume``
truncates the file back to the last checkpoint and the replayed steps are appended again (as
cache hits: the evaluations themselves are not redone).

The outer loops (``memrl train``, and ``memrl search`` to come) write through this module;
:mod:`memrl.reporting.report` reads the same files back. ``memrl.agents.records`` re-exports it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from memrl.metrics.names import COST_FIELDS, DIAGNOSTIC_FIELDS, REWARD_FIELDS, SUMMARY_METRICS
from memrl.utils.io import write_json_atomic, write_text_atomic

__all__ = ["COLUMNS", "EvaluationLog", "info_to_row", "is_true", "pareto_front", "write_best", "write_pareto"]

#: ``mask``/``mask_bits`` name the units actually trained; ``proposed_mask_bits`` is the agent's
#: proposal and ``empty_units`` the proposed units where the method had nothing to train.
COLUMNS = [
    "step", "env", "dataset", "method", "mask", "mask_bits", "proposed_mask_bits", "empty_units", "lr",
    *REWARD_FIELDS, *SUMMARY_METRICS, *DIAGNOSTIC_FIELDS, *COST_FIELDS,
    "cached", "failed", "error", "seconds",
]  # fmt: skip


def is_true(value: object) -> bool:
    """A boolean CSV cell (``cached``, ``failed``) as written by :func:`info_to_row`: ``True``/``true``/``1``."""
    return str(value).strip() in ("True", "true", "1")


def info_to_row(step: int, env_index: int, info: dict, reward: float) -> dict:
    row = {c: info.get(c, "") for c in COLUMNS}
    row["empty_units"] = ",".join(info.get("empty_units") or [])
    row.update({"step": step, "env": env_index, "reward": reward, "cached": bool(info.get("cached", False)), "failed": bool(info.get("failed", False))})
    return row


class EvaluationLog:
    """Append-only CSV of evaluations with crash-safe appends and resume truncation."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = self.read(self.path) if self.path.is_file() else []

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def append(self, rows: list[dict]) -> None:
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow(r)
            f.flush()
            os.fsync(f.fileno())
        self.rows.extend({k: str(v) for k, v in r.items()} for r in rows)

    def truncate(self, n_rows: int) -> None:
        """Keep the first ``n_rows`` complete rows (drops rows after a checkpoint and a torn last line)."""
        rows = self.rows[:n_rows]
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
        write_text_atomic(self.path, buf.getvalue())
        self.rows = rows

    # ------------------------------------------------------------------ summaries
    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if str(r.get("failed")) not in ("True", "true", "1") and r.get("fid") not in ("", None)]

    def best(self) -> dict | None:
        ok = self.ok_rows()
        return max(ok, key=lambda r: float(r["reward"])) if ok else None

    def best_per_dataset(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for r in self.ok_rows():
            d = r["dataset"]
            if d not in out or float(r["reward"]) > float(out[d]["reward"]):
                out[d] = r
        return out


def pareto_front(rows: list[dict], mem_metric: str) -> list[dict]:
    """Distinct (dataset, method, mask, lr) evaluations not dominated in (FID, MEM), per dataset."""
    uniq: dict[tuple, dict] = {}
    for r in rows:
        uniq.setdefault((r["dataset"], r["method"], r["mask_bits"], r["lr"]), r)
    front = []
    by_ds: dict[str, list[dict]] = {}
    for r in uniq.values():
        by_ds.setdefault(r["dataset"], []).append(r)
    for ds, rs in by_ds.items():
        pts = np.array([[float(r["fid"]), float(r[mem_metric])] for r in rs])
        for i, r in enumerate(rs):
            dominated = np.any(np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1))
            if not dominated:
                front.append(r)
    return sorted(front, key=lambda r: (r["dataset"], float(r["fid"])))


def write_pareto(path: str | Path, rows: list[dict], mem_metric: str) -> list[dict]:
    import io

    front = pareto_front(rows, mem_metric)
    cols = ["dataset", "method", "mask", "mask_bits", "lr", "fid", mem_metric, "reward", "trainable_fraction"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in front:
        w.writerow({c: r.get(c, "") for c in cols})
    write_text_atomic(path, buf.getvalue())
    return front


def _num(v):  # noqa: ANN001, ANN202
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def write_best(path: str | Path, log: EvaluationLog, units: list[str]) -> dict | None:
    best = log.best()
    if best is None:
        return None

    def entry(r: dict) -> dict:
        bits = r["mask_bits"]
        return {
            "dataset": r["dataset"],
            "method": r["method"],
            "lr": _num(r["lr"]),
            "mask_bits": bits,
            "mask_units": [u for u, b in zip(units, bits) if b == "1"],
            "metrics": {k: _num(r[k]) for k in ("reward", *SUMMARY_METRICS, *COST_FIELDS)},
        }

    doc = {"units": units, **entry(best), "per_dataset": {d: entry(r) for d, r in log.best_per_dataset().items()}}
    write_json_atomic(path, doc)
    return doc
