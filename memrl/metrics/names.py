"""The metric names, defined once: results, records, TensorBoard, replay and the CLI read them here."""

from __future__ import annotations

#: Generation quality (lower is better): Frechet and kernel distance on the FID feature network.
QUALITY_METRICS: tuple[str, ...] = ("fid", "kid")

#: Memorization (lower is better); each can be the reward's memorization term (``reward.mem_metric``).
#: ``text_guidance_auc`` is Wen et al.'s sampling-time detection (0.5 = chance). The training-time
#: ``noise_norm_mean`` is kept as a diagnostic only: it did not separate memorizing from
#: non-memorizing models here (the base model scored 3.47, full fine-tuning 1.83).
MEM_METRICS: tuple[str, ...] = ("nn_own_rate", "replication_rate", "text_guidance_auc", "extraction_rate")

#: Statistics printed beside the metrics: FID's bootstrap interval and noise floor, the base
#: model's ``nn_own_rate`` (chance level), the guidance magnitudes and the training-time noise norm.
DIAGNOSTIC_FIELDS: tuple[str, ...] = (
    "fid_ci_low", "fid_ci_high", "fid_noise_floor", "nn_own_rate_base",
    "text_guidance_mem", "text_guidance_heldout", "noise_norm_mean", "noise_norm_max",
)  # fmt: skip

#: What a report shows of one evaluation: quality, memorization and the mean nearest distance (AMD).
SUMMARY_METRICS: tuple[str, ...] = QUALITY_METRICS + MEM_METRICS + ("amd",)

#: The reward's parts (see :mod:`memrl.evaluation.reward`).
REWARD_FIELDS: tuple[str, ...] = ("reward", "fid_norm", "mem_norm")

#: Cost of an evaluation's mask.
COST_FIELDS: tuple[str, ...] = ("trainable_params", "trainable_fraction")
