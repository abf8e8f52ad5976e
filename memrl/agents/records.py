"""Moved to :mod:`memrl.reporting.records`; this name keeps old imports working."""

from memrl.reporting.records import *  # noqa: F401,F403
from memrl.reporting.records import COLUMNS, EvaluationLog, _num, info_to_row, pareto_front, write_best, write_pareto  # noqa: F401
