"""Fine-tuning options for scale (memrl/training/finetune.py): mixed precision, gradient
accumulation and gradient checkpointing; what each keeps equal, and how each enters the cache key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from memrl.data.loaders import load_dataset
from memrl.errors import MemrlError
from memrl.evaluation.config import EvalConfig
from memrl.evaluation.evaluator import build_request
from memrl.evaluation.cache import request_key
from memrl.models.pipeline import DiffusionModel
from memrl.peft_masking import Mask, enumerate_units
from memrl.training.finetune import FinetuneConfig, _micro_batches, finetune


@pytest.fixture(scope="module")
def tiny(quick_model_dir):
    model = DiffusionModel.from_pretrained(quick_model_dir[0])
    data = load_dataset("inverted", model.image_size, model.image_channels)
    mask = Mask.parse("1010101", tuple(enumerate_units(model.unet, "attention")))
    cfg = FinetuneConfig(steps=3, batch_size=8, n_mem=4, n_repeats=5, data_size_ratio=0.1)
    return model, data, mask, cfg


def _trained(ft) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {n: p.detach().clone() for n, p in ft.peft.trainable}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("n, parts", [(8, 1), (8, 2), (8, 3), (7, 4), (2, 5)])
def test_micro_batches_cover_the_batch_once_in_order(n, parts):
    slices = _micro_batches(n, parts)
    assert [i for s in slices for i in range(n)[s]] == list(range(n))
    sizes = [len(range(n)[s]) for s in slices]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and len(slices) == min(parts, n)


def test_gradient_accumulation_matches_one_pass_up_to_rounding(tiny):
    """Same samples, noise and timesteps: the weights after 3 steps agree to float rounding, and
    the recorded losses (batch means) too. A different seed moves them far more (the check can fail)."""
    model, data, mask, cfg = tiny
    one = finetune(model, data, mask, cfg)
    four = finetune(model, data, mask, replace(cfg, grad_accumulation=4))
    other_seed = finetune(model, data, mask, replace(cfg, seed=1))
    # (Adam divides by the gradient's running scale, so rounding in near-zero entries shows at 1e-5)
    assert _max_diff(_trained(one), _trained(four)) < 1e-4
    assert four.losses == pytest.approx(one.losses, rel=1e-4)
    assert _max_diff(_trained(one), _trained(other_seed)) > 1e-3


def test_gradient_accumulation_with_the_guidance_filter_weights_by_kept_samples(tiny):
    model, data, mask, cfg = tiny
    cfg = replace(cfg, guidance_filter_threshold=1e9)  # keeps every sample: equal to no filter
    one = finetune(model, data, mask, cfg)
    two = finetune(model, data, mask, replace(cfg, grad_accumulation=2))
    assert two.samples_filtered == 0 and two.samples_seen == one.samples_seen
    assert _max_diff(_trained(one), _trained(two)) < 1e-4


def test_gradient_checkpointing_gives_the_same_weights(tiny):
    model, data, mask, cfg = tiny
    plain = finetune(model, data, mask, cfg)
    ckpt = finetune(model, data, mask, replace(cfg, gradient_checkpointing=True))
    assert _max_diff(_trained(plain), _trained(ckpt)) < 1e-6
    assert not ckpt.model.unet.is_gradient_checkpointing  # switched off again for sampling
    assert not model.unet.is_gradient_checkpointing  # the pretrained model is untouched


def test_bf16_autocast_trains_float32_weights_close_to_float32(tiny):
    model, data, mask, cfg = tiny
    plain = finetune(model, data, mask, cfg)
    bf16 = finetune(model, data, mask, replace(cfg, mixed_precision="bf16"))
    w = _trained(bf16)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())
    diff = _max_diff(_trained(plain), w)
    assert 0 < diff < 0.05  # autocast did run (not bit-identical) and learned the same thing


def test_fp16_on_the_cpu_is_refused_with_the_alternative(tiny):
    model, data, mask, cfg = tiny
    with pytest.raises(MemrlError, match="fp16 needs a CUDA device.*bf16"):
        finetune(model, data, mask, replace(cfg, mixed_precision="fp16"))


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"grad_accumulation": 0}, "grad_accumulation"),
        ({"grad_accumulation": 1.5}, "grad_accumulation"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kw, field):
    with pytest.raises(MemrlError, match=field):
        FinetuneConfig(**kw)


@pytest.mark.parametrize("field, value", [("mixed_precision", "bf16"), ("grad_accumulation", 2), ("gradient_checkpointing", True)])
def test_a_scale_option_keys_the_masked_run_and_reference_but_not_the_base(field, value):
    def key(cfg: EvalConfig) -> str:
        return request_key(build_request("m", "f", ("u0", "u1"), "attention", "d", "10", cfg, {}))

    cfg = EvalConfig()
    on = replace(cfg, finetune=replace(cfg.finetune, **{field: value}))
    assert key(on) != key(cfg)
    assert key(on.without_mitigations()) == key(on)  # the reference keeps it (it trains too)
    assert key(on.without_scale_options()) == key(cfg)  # the base model (nothing trains) drops it


@pytest.mark.slow
def test_a_bf16_evaluation_runs_end_to_end_under_its_own_key(quick_model_dir, tmp_path):
    """Training and sampling under bf16 autocast: finite metrics, float32 samples, its own cache entry."""
    from memrl.evaluation import Evaluator, preset

    ev = Evaluator(quick_model_dir[0], cache=tmp_path / "evals.sqlite")
    data = load_dataset("inverted")
    cfg = preset("quick")
    bf16 = replace(cfg, finetune=replace(cfg.finetune, mixed_precision="bf16"))
    a = ev.evaluate(data, "lora", "1010101", bf16, seed=0)
    assert a["cached"] is False
    assert all(np.isfinite(a[k]) for k in ("fid", "kid", "nn_own_rate", "reward"))
    assert ev.evaluate(data, "lora", "1010101", bf16, seed=0)["cached"] is True
    req = ev.request(data, ev.parse_mask("1010101"), bf16.with_method("lora", None, 0))
    assert req["config"]["finetune"]["mixed_precision"] == "bf16"
