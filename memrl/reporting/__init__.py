"""What the outer loops write and what a person reads: the run's records, figures and report.

* :mod:`memrl.reporting.records` ``evaluations.csv``, ``pareto.csv``, ``best_mask.json`` (written
  by ``memrl train``, and by ``memrl search`` to come)
* :mod:`memrl.reporting.plots`   figures (matplotlib, headless) for TensorBoard and the report
* :mod:`memrl.reporting.report`  ``memrl report``: one HTML or Markdown page per run folder
* :mod:`memrl.reporting.cli`     the ``memrl report`` subcommand

(plus the mirrors of the record in other tools: ``optuna_store``, ``trackers``)

This layer sits below :mod:`memrl.agents` and imports only :mod:`memrl.metrics`,
:mod:`memrl.utils` and :mod:`memrl.errors`.
"""


def build_report(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    """See :func:`memrl.reporting.report.build_report` (imported lazily: matplotlib is slow to load)."""
    from memrl.reporting.report import build_report as _build

    return _build(*args, **kwargs)
