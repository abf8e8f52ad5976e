"""Shared fixtures. Everything runs offline on the CPU; an accidental hub lookup fails at once."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def quick_model_dir(tmp_path_factory):
    """A model folder from ``pretrain --quick`` (seconds; structure is real, quality is not)."""
    from memrl.training.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("models") / "quick"
    metrics = pretrain(PretrainConfig.quick(seed=0), out, progress=False)
    return out, metrics
