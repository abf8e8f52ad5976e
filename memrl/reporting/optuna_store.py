"""The evaluation log as Optuna studies, so optuna-dashboard opens any memrl run.

One study per dataset (named after it) in an Optuna storage (by default SQLite in the run
folder, ``RUN/optuna.db``; any Optuna storage URL works). Each evaluation is one trial, stored
the way the published MemControl code stored its search: the unit bits are the trial's integer
parameters (0/1, named by unit), the PEFT method a categorical parameter, and the two raw
objectives, FID and the memorization metric, its values (both minimised); the reward, learning
rate, trainable fraction, env step and cache hit are user attributes. A failed evaluation is a
``FAIL`` trial with its error.

The evaluation log (``evaluations.csv``) stays the record: :meth:`OptunaStore.sync` rebuilds the
studies from it whenever they disagree (e.g. after ``--resume`` cut the log back to its
checkpoint), so the dashboard never shows a step the run no longer has.

    optuna-dashboard sqlite:///RUN/optuna.db
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

from memrl.errors import MemrlError


def default_storage(run_dir: str | Path) -> str:
    """``sqlite:///RUN/optuna.db`` (absolute path)."""
    return f"sqlite:///{Path(run_dir).resolve() / 'optuna.db'}"


def _float(v) -> float | None:  # noqa: ANN001
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _truthy(v) -> bool:  # noqa: ANN001
    return str(v) in ("True", "true", "1")


class OptunaStore:
    """Writes evaluation-log rows as trials of per-dataset Optuna studies."""

    def __init__(self, storage: str, units: list[str], methods: Iterable[str], mem_metric: str) -> None:
        try:
            import optuna
        except ImportError:  # pragma: no cover - optuna is a dependency
            raise MemrlError("the Optuna record needs optuna: pip install optuna") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.storage_url = storage
        self.storage = optuna.storages.get_storage(storage)
        self.units = list(units)
        self.methods = list(methods)
        self.mem_metric = mem_metric
        self._studies: dict[str, object] = {}

    # ------------------------------------------------------------------ studies
    def study(self, dataset: str):  # noqa: ANN201
        if dataset not in self._studies:
            st = self._optuna.create_study(storage=self.storage, study_name=dataset, directions=["minimize", "minimize"], load_if_exists=True)
            with warnings.catch_warnings():  # experimental in Optuna, stable in use; the dashboard reads it
                warnings.simplefilter("ignore", self._optuna.exceptions.ExperimentalWarning)
                st.set_metric_names(["fid", self.mem_metric])
            st.set_user_attr("units", self.units)
            self._studies[dataset] = st
        return self._studies[dataset]

    def n_trials(self) -> int:
        return sum(s.n_trials for s in self._optuna.get_all_study_summaries(self.storage))

    # ------------------------------------------------------------------ trials
    def _trial(self, row: dict):  # noqa: ANN202
        from optuna.distributions import CategoricalDistribution, IntDistribution
        from optuna.trial import TrialState

        bits = str(row["mask_bits"])
        params: dict = {u: int(b) for u, b in zip(self.units, bits)}
        dists: dict = {u: IntDistribution(0, 1) for u in self.units}
        method = str(row["method"])
        if method in self.methods:
            params["method"] = method
            dists["method"] = CategoricalDistribution(self.methods)
        attrs = {
            "step": int(float(row["step"])),
            "env": int(float(row.get("env") or 0)),
            "mask": str(row.get("mask", "")),
            "lr": _float(row.get("lr")),
            "reward": _float(row.get("reward")),
            "trainable_fraction": _float(row.get("trainable_fraction")),
            "cached": _truthy(row.get("cached")),
        }
        failed = _truthy(row.get("failed"))
        values = None if failed else [_float(row.get("fid")), _float(row.get(self.mem_metric))]
        if values is not None and any(v is None for v in values):
            failed, values = True, None
        if failed:
            attrs["error"] = str(row.get("error", ""))[:500]
        state = TrialState.FAIL if failed else TrialState.COMPLETE
        return self._optuna.trial.create_trial(state=state, values=values, params=params, distributions=dists, user_attrs=attrs)

    def add(self, rows: Iterable[dict]) -> None:
        """Append one trial per row (rows as written to or read from ``evaluations.csv``)."""
        for row in rows:
            self.study(str(row["dataset"])).add_trial(self._trial(row))

    def sync(self, rows: list[dict]) -> None:
        """Make the studies hold exactly ``rows``: rebuild them when the counts disagree."""
        if self.n_trials() == len(rows):
            return
        for summary in self._optuna.get_all_study_summaries(self.storage):
            self._optuna.delete_study(study_name=summary.study_name, storage=self.storage)
        self._studies.clear()
        self.add(rows)
