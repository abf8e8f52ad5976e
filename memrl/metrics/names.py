"""The metric names, defined once: results, records, TensorBoard, replay and the CLI read them here."""

from __future__ import annotations

#: Generation quality (lower is better): Frechet and kernel distance on the FID feature network.
QUALITY_METRICS: tuple[str, ...] = ("fid", "kid")

#: Memorization (lower is better); each can be the reward's memorization term (``reward.mem_metric``).
MEM_METRICS: tuple[str, ...] = ("nn_own_rate", "replication_rate", "noise_norm_mean", "extraction_rate")

#: What a report shows of one evaluation: quality, memorization and the mean nearest distance (AMD).
SUMMARY_METRICS: tuple[str, ...] = QUALITY_METRICS + MEM_METRICS + ("amd",)

#: The reward's parts (see :mod:`memrl.evaluation.reward`).
REWARD_FIELDS: tuple[str, ...] = ("reward", "fid_norm", "mem_norm")

#: Cost of an evaluation's mask.
COST_FIELDS: tuple[str, ...] = ("trainable_params", "trainable_fraction")
