"""The scalar reward the agent maximises: memorization-penalised FID (docs/design.md, section 'Reward')."""

from __future__ import annotations

from memrl.evaluation.config import RewardConfig


def reward(metrics: dict, reference: dict, cfg: RewardConfig) -> dict:
    """``r = max(floor, -(FID/FID_ref + lam * MEM/MEM_ref) - mu * trainable_fraction)``.

    ``reference`` is the full fine-tuning run with the same budget, so the reference itself scores
    ``-(1 + lam) - mu``. Both raw objectives are returned too, for Pareto analysis.
    """
    fid_ref = max(float(reference["fid"]), cfg.fid_ref_floor)
    mem_ref = max(float(reference[cfg.mem_metric]), cfg.mem_ref_floor)
    fid_term = float(metrics["fid"]) / fid_ref
    mem_term = float(metrics[cfg.mem_metric]) / mem_ref
    raw = -(fid_term + cfg.lam * mem_term) - cfg.mu * float(metrics["trainable_fraction"])
    return {
        "reward": max(raw, float(cfg.floor)),
        "reward_unclipped": raw,
        "fid_norm": fid_term,
        "mem_norm": mem_term,
        "mem_metric": cfg.mem_metric,
        "fid_ref": fid_ref,
        "mem_ref": mem_ref,
    }
