"""Moved to :mod:`memrl.reporting.plots`; this name keeps old imports working."""

from memrl.reporting.plots import *  # noqa: F401,F403
from memrl.reporting.plots import mask_frequency_heatmap, pareto_scatter, plt, save  # noqa: F401
