"""Memorization metrics on tiny, fixed inputs (CPU, a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memrl.data.digits import public_splits, variant_splits
from memrl.errors import MemrlError
from memrl.metrics.memorization import (
    DEFAULT_EXTRACTION_THRESHOLD,
    PIXELS,
    calibrate_threshold,
    extraction_attack,
    image_features,
    nearest_neighbours,
    nn_memorization,
    noise_norm_score,
    tile_l2_distance,
)
from memrl.models.feature_net import FeatureNet
from memrl.models.pipeline import DiffusionModel
from memrl.models.tiny import TinyModelConfig, build_scheduler, build_text_encoder, build_unet
from memrl.models.tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def splits():
    return variant_splits("thick")


@pytest.fixture(scope="module")
def random_feature_net() -> FeatureNet:
    torch.manual_seed(0)
    return FeatureNet().eval()


@pytest.fixture(scope="module")
def tiny_model() -> DiffusionModel:
    torch.manual_seed(0)
    tok = WordTokenizer.from_corpus(["digit 1 bold", "digit 2 thin"])
    cfg = TinyModelConfig()
    return DiffusionModel(build_unet(cfg), build_text_encoder(cfg, tok), tok, build_scheduler(cfg))


def _noisy(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# --------------------------------------------------------------------------- nearest neighbours
@pytest.mark.parametrize("extractor", ["pixels", "feature_net"])
def test_nn_memorization_copies_and_heldout(splits, random_feature_net, extractor) -> None:
    ext = PIXELS if extractor == "pixels" else random_feature_net
    train, held = splits.train.images, splits.heldout.images
    f_train = image_features(train, ext)
    n = train.shape[0]

    copies = nn_memorization(image_features(train.clone(), ext), np.arange(n), f_train, threshold=0.99)
    assert copies["nn_own_rate"] == 1.0
    assert copies["replication_rate"] == 1.0
    assert copies["amd"] == pytest.approx(0.0, abs=1e-9)
    assert copies["mean_nn_similarity"] == pytest.approx(1.0)
    assert copies["nn_index"] == list(range(n))

    owner = np.arange(held.shape[0]) % n
    thr = calibrate_threshold(image_features(held, ext), f_train, quantile=0.5)
    other = nn_memorization(image_features(held, ext), owner, f_train, threshold=thr)
    assert other["nn_own_rate"] <= 0.1
    assert other["replication_rate"] <= 0.1
    assert other["amd"] > 0
    assert other["mean_nn_similarity"] < 1.0
    assert len(other["nn_index"]) == held.shape[0]


def test_nearest_neighbours_and_threshold(splits) -> None:
    f_train = image_features(splits.train.images)
    f_held = image_features(splits.heldout.images)
    idx, sim = nearest_neighbours(f_held, f_train)
    assert idx.shape == sim.shape == (f_held.shape[0],)
    assert np.all((idx >= 0) & (idx < f_train.shape[0]))
    # Brute-force check of the similarity.
    a = f_held / np.linalg.norm(f_held, axis=1, keepdims=True)
    b = f_train / np.linalg.norm(f_train, axis=1, keepdims=True)
    np.testing.assert_allclose(sim, (a @ b.T).max(axis=1), atol=1e-9)

    qs = [0.0, 0.25, 0.5, 0.95, 1.0]
    thr = [calibrate_threshold(f_held, f_train, q) for q in qs]
    assert all(-1.0 <= t <= 1.0 for t in thr)
    assert all(x <= y for x, y in zip(thr, thr[1:]))
    assert thr[0] == pytest.approx(sim.min()) and thr[-1] == pytest.approx(sim.max())
    with pytest.raises(MemrlError):
        calibrate_threshold(f_held, f_train, 1.5)


def test_nn_memorization_rejects_bad_owner(splits) -> None:
    f = image_features(splits.train.images[:5])
    with pytest.raises(MemrlError):
        nn_memorization(f, [0, 1, 2], f, 0.9)
    with pytest.raises(MemrlError):
        nn_memorization(f, [0, 1, 2, 3, 5], f, 0.9)


def test_feature_extractor_mode_restored(splits, random_feature_net) -> None:
    random_feature_net.train()
    f = image_features(splits.train.images[:4], random_feature_net)
    assert random_feature_net.training
    random_feature_net.eval()
    assert f.shape == (4, random_feature_net.num_features)
    np.testing.assert_allclose(f, image_features(splits.train.images[:4], random_feature_net.features))


# --------------------------------------------------------------------------- extraction
def test_tile_l2_distance_properties(splits) -> None:
    x = splits.train.images[:6]
    d = tile_l2_distance(x, x)
    assert d.shape == (6, 6)
    assert torch.all(d.diagonal() == 0)
    assert torch.allclose(d, d.T)
    assert torch.all(d[~torch.eye(6, dtype=torch.bool)] > 0)
    # A single changed pixel dominates its tile: RMS over the 4x4 = 16-pixel tile.
    y = x[:1].clone()
    y[0, 0, 0, 0] += 0.8
    assert tile_l2_distance(x[:1], y).item() == pytest.approx(0.8 / 4)
    assert tile_l2_distance(x[:2], x[:3]).shape == (2, 3)


def test_extraction_attack_positive_negative_mixed(splits) -> None:
    train = splits.train.images[:4]
    copies = [torch.stack([_noisy(img, 0.03, 10 * p + k) for k in range(4)]) for p, img in enumerate(train)]
    pos = extraction_attack(copies, train)
    assert pos["extraction_rate"] == 1.0
    assert pos["extracted"] == [True] * 4
    assert pos["n_matching_train"] == [4] * 4
    assert max(pos["min_train_distance"]) < DEFAULT_EXTRACTION_THRESHOLD

    others = public_splits().heldout.images[:16].view(4, 4, *train.shape[1:])  # P x G x C x H x W
    neg = extraction_attack(others, train)
    assert neg["extraction_rate"] == 0.0 and neg["extracted"] == [False] * 4
    rnd = torch.rand(4, 4, *train.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert extraction_attack(rnd, train)["extraction_rate"] == 0.0

    # Prompt 0: extracted; 1: only 2 copies (< min_matches); 2: 3 copies; 3: none.
    mixed = [
        copies[0],
        torch.cat([copies[1][:2], others[1][:2]]),
        torch.cat([copies[2][:3], others[2][:1]]),
        others[3],
    ]
    res = extraction_attack(mixed, train)
    assert res["extracted"] == [True, False, True, False]
    assert res["extraction_rate"] == pytest.approx(0.5)
    assert res["n_matching_train"] == [4, 2, 3, 0]


def test_extraction_requires_generations_to_match_each_other(splits) -> None:
    # Three generations each match the training image but not one another (different tiles altered).
    img = splits.train.images[:1]
    gens = img.repeat(3, 1, 1, 1).clone()
    gens[0, 0, :4, :4] += 0.1
    gens[1, 0, :4, :4] -= 0.1
    gens[2, 0, 4:8, :4] += 0.1
    thr = 0.15
    assert torch.all(tile_l2_distance(gens, img) < thr)
    assert tile_l2_distance(gens[:1], gens[1:2]).item() == pytest.approx(0.2)
    assert extraction_attack([gens], img, threshold=thr)["extracted"] == [False]
    assert extraction_attack([gens], img, threshold=thr, min_matches=2)["extracted"] == [True]
    with pytest.raises(MemrlError):
        extraction_attack([gens, gens], img)


# --------------------------------------------------------------------------- noise norm
def test_noise_norm_score(tiny_model, splits) -> None:
    images = splits.train.images[:3]
    caps = ["digit 1 bold", "digit 2 thin", "digit 1 thin"]
    kw = dict(timesteps=(100, 500, 900), n_noise=2, seed=3)
    tiny_model.train()
    tiny_model.text_encoder.eval()
    a = noise_norm_score(tiny_model, images, caps, **kw)
    assert tiny_model.training and tiny_model.unet.training and not tiny_model.text_encoder.training
    tiny_model.eval()
    b = noise_norm_score(tiny_model, images, caps, **kw)
    assert set(a) == {"noise_norm_mean", "noise_norm_max", "noise_norm_per_item"}
    assert a == b
    assert len(a["noise_norm_per_item"]) == 3
    assert all(v > 0 for v in a["noise_norm_per_item"])
    assert a["noise_norm_max"] == max(a["noise_norm_per_item"])
    assert a["noise_norm_mean"] == pytest.approx(np.mean(a["noise_norm_per_item"]))
    # Chunking does not change the result (beyond float rounding); another seed does.
    c = noise_norm_score(tiny_model, images, caps, batch_size=5, **kw)
    np.testing.assert_allclose(c["noise_norm_per_item"], a["noise_norm_per_item"], rtol=1e-4)
    d = noise_norm_score(tiny_model, images, caps, timesteps=kw["timesteps"], n_noise=2, seed=4)
    assert d["noise_norm_per_item"] != a["noise_norm_per_item"]

    # The empty caption is the unconditional prompt: exactly zero. Item i's noise does not
    # depend on how many pairs are scored, so item 1 matches the run above.
    z = noise_norm_score(tiny_model, images[:2], ["", caps[1]], **kw)
    assert z["noise_norm_per_item"][0] == 0.0
    assert z["noise_norm_per_item"][1] == pytest.approx(a["noise_norm_per_item"][1], rel=1e-4)
    with pytest.raises(MemrlError):
        noise_norm_score(tiny_model, images, caps[:2])
    with pytest.raises(MemrlError):
        noise_norm_score(tiny_model, images, caps, timesteps=(1000,))
