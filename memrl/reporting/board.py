"""The TensorBoard view of an evaluation record, the same for every outer loop.

``memrl train`` (through its SB3 callback) and ``memrl search`` write these tags to
``RUN/tb/memrl``:

* scalars per evaluation (x axis: the step, i.e. the evaluation's number): ``eval/<metric>`` for
  the reward and :data:`memrl.metrics.names.SUMMARY_METRICS` of each successful evaluation,
  ``eval/trainable_pct``, ``eval/best_reward`` (the best so far), ``eval/cache_hit_rate`` and
  ``eval/failures`` (the running count of failed evaluations; their penalised reward is in
  ``evaluations.csv``);
* figures (at rollout ends in train, every few trials in search): ``masks/bit_frequency`` (how
  often each unit was selected, one column per period) and ``pareto/scatter``;
* pictures of the best mask, re-evaluated once at the end: ``best/samples`` and
  ``best/nearest_neighbours``;
* with ground truth (``memrl train --lookup`` / ``memrl search --lookup``, or ``--ground-truth
  DIR``; :mod:`memrl.evaluation.ground_truth`), per evaluation on a dataset that has it:
  ``regret/<dataset>`` (the optimum's reward minus the best reward found so far on that dataset),
  ``regret_rank/<dataset>`` (that best mask's rank among all masks, 1 = the optimum) and
  ``regret/mean`` (the mean best-so-far regret over the datasets with ground truth evaluated so
  far). Regret on the seed the run evaluated with flatters the run: it picked by those numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memrl.metrics.names import SUMMARY_METRICS
from memrl.reporting import plots
from memrl.reporting.records import is_true

SCALARS = ("reward", *SUMMARY_METRICS)
#: The pictures of the best mask (file in the re-evaluation's folder -> image tag).
PICTURES = (("samples.png", "best/samples"), ("nearest_neighbours.png", "best/nearest_neighbours"))


class EvaluationBoard:
    """Writes the tags above to a ``SummaryWriter``; ``rows`` are the record's rows so far (a
    resumed run continues its counts, best reward and regrets), ``history`` the bit-frequency
    columns, ``ground_truth`` a callable ``dataset -> GroundTruth | None``
    (:class:`memrl.evaluation.ground_truth.GroundTruthBook`) or ``None``."""

    def __init__(self, writer, units: list[str], mem_metric: str, rows: list[dict] | None = None, history: dict | None = None, ground_truth=None) -> None:  # noqa: ANN001
        self.writer = writer
        self.units = list(units)
        self.mem_metric = mem_metric
        self.history = history if history is not None else {"freq": [], "steps": []}
        self.ground_truth = ground_truth
        self._bits: list[np.ndarray] = []
        rows = rows or []
        ok_rows = [r for r in rows if not is_true(r.get("failed")) and r.get("fid") not in ("", None)]
        ok = [float(r["reward"]) for r in ok_rows]
        self.best_reward = max(ok) if ok else -np.inf
        #: The best successful reward so far on each dataset (what the regret tags measure).
        self.best_by_dataset: dict[str, float] = {}
        for r in ok_rows:
            d = str(r.get("dataset", ""))
            self.best_by_dataset[d] = max(self.best_by_dataset.get(d, -np.inf), float(r["reward"]))
        self.n_cached = sum(1 for r in rows if is_true(r.get("cached")))
        self.n_failed = sum(1 for r in rows if is_true(r.get("failed")))

    def add(self, step: int, info: dict, reward: float, n_total: int) -> None:
        """The scalars of one evaluation; ``n_total``: evaluations recorded so far, this one included."""
        w = self.writer
        self._bits.append(np.array([int(b) for b in info["mask_bits"]]))
        self.n_cached += int(bool(info.get("cached")))
        if info.get("failed"):
            self.n_failed += 1
            w.add_scalar("eval/failures", self.n_failed, step)
        else:
            for k in SCALARS:
                v = float(reward) if k == "reward" else info.get(k)
                if v is not None:
                    w.add_scalar(f"eval/{k}", float(v), step)
            w.add_scalar("eval/trainable_pct", 100.0 * float(info["trainable_fraction"]), step)
            if float(reward) > self.best_reward:
                self.best_reward = float(reward)
            d = str(info.get("dataset", ""))
            self.best_by_dataset[d] = max(self.best_by_dataset.get(d, -np.inf), float(reward))
        if np.isfinite(self.best_reward):
            w.add_scalar("eval/best_reward", self.best_reward, step)
        w.add_scalar("eval/cache_hit_rate", self.n_cached / max(1, n_total), step)
        self._regret(step, str(info.get("dataset", "")))

    def regrets(self) -> dict[str, float]:
        """The best-so-far regret on every dataset evaluated so far that has ground truth."""
        if self.ground_truth is None:
            return {}
        out = {}
        for d, best in self.best_by_dataset.items():
            gt = self.ground_truth(d)
            if gt is not None:
                out[d] = gt.regret(best)
        return out

    def _regret(self, step: int, dataset: str) -> None:
        if self.ground_truth is None or dataset not in self.best_by_dataset:
            return
        gt = self.ground_truth(dataset)
        if gt is None:
            return
        best = self.best_by_dataset[dataset]
        self.writer.add_scalar(f"regret/{dataset}", gt.regret(best), step)
        self.writer.add_scalar(f"regret_rank/{dataset}", gt.rank(best), step)
        self.writer.add_scalar("regret/mean", float(np.mean(list(self.regrets().values()))), step)

    def figures(self, step: int, ok_rows: list[dict], front: list[dict]) -> None:
        """A bit-frequency column for the evaluations since the last call, and the Pareto scatter."""
        if self._bits:
            self.history["freq"].append(np.mean(self._bits, axis=0).tolist())
            self.history["steps"].append(int(step))
            self._bits = []
            freq = np.array(self.history["freq"]).T
            self.writer.add_figure("masks/bit_frequency", plots.mask_frequency_heatmap(freq, self.units, self.history["steps"]), step)
        if ok_rows:
            self.writer.add_figure("pareto/scatter", plots.pareto_scatter(ok_rows, front, self.mem_metric), step)
        self.writer.flush()

    def pictures(self, folder: str | Path, step: int) -> None:
        """The best mask's sample grid and nearest-neighbour pairs, from a re-evaluation's folder."""
        from PIL import Image

        for name, tag in PICTURES:
            p = Path(folder) / name
            if p.is_file():
                img = np.asarray(Image.open(p).convert("RGB"))
                self.writer.add_image(tag, img, step, dataformats="HWC")
