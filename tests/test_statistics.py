"""Honest statistics: FID's bootstrap interval and noise floor, Wen et al.'s sampling-time detection,
the base model's chance level, and memorization probes for datasets whose captions repeat."""

import numpy as np
import pytest
import torch

from memrl.data.dataset import CaptionedImages
from memrl.data.loaders import load_dataset
from memrl.errors import MemrlError
from memrl.evaluation import Evaluator, preset
from memrl.metrics.memorization import nn_memorization, text_guidance_detection
from memrl.metrics.quality import fid_bootstrap, fid_noise_floor, frechet_distance
from memrl.models.pipeline import DiffusionModel
from memrl.training.finetune import memorization_indices, probe_groups


def _gauss(shift: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return r.normal(size=(192, 64)), r.normal(shift, 1.0, size=(96, 64))


def test_frechet_distance_matches_torchmetrics() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Flat(torch.nn.Module):
        num_features = 16

        def forward(self, x):  # noqa: ANN001, ANN202
            return x.flatten(1).double()

    r = np.random.default_rng(0)
    a, b = r.normal(size=(80, 16)), r.normal(0.5, 1.3, size=(60, 16))
    fid = FrechetInceptionDistance(feature=Flat(), normalize=False)
    fid.update(torch.tensor(a).reshape(80, 1, 4, 4).float(), real=True)
    fid.update(torch.tensor(b).reshape(60, 1, 4, 4).float(), real=False)
    assert frechet_distance(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(float(fid.compute()), rel=1e-3)


def test_bootstrap_interval_covers_the_population_fid() -> None:
    # Two Gaussians with a mean shift s in 64-d: the population FID is 64 s^2. The plug-in value
    # is biased upwards at 192 vs 96 samples; the basic interval must cover the truth anyway.
    for shift in (0.0, 0.3, 1.0):
        real, fake = _gauss(shift)
        ci = fid_bootstrap(real, fake, n_boot=200, seed=0)
        truth = 64 * shift**2
        assert ci["fid_ci_low"] <= truth <= ci["fid_ci_high"], (shift, ci)
        assert frechet_distance(real, fake) > truth  # the bias the interval corrects
        assert ci == fid_bootstrap(real, fake, n_boot=200, seed=0)  # seeded
    with pytest.raises(MemrlError, match="n_boot"):
        fid_bootstrap(real, fake, n_boot=0)


def test_noise_floor_is_the_fid_of_two_real_halves() -> None:
    real, fake = _gauss(1.0)
    floor = fid_noise_floor(real, seed=0)
    assert floor == fid_noise_floor(real, seed=0)
    assert 0 < floor < frechet_distance(real, fake)  # a real shift scores above the floor
    perm = np.random.default_rng(0).permutation(192)
    assert floor == pytest.approx(frechet_distance(real[perm[:96]], real[perm[96:]]))


def test_text_guidance_detection_auc() -> None:
    assert text_guidance_detection([3, 4, 5], [0, 1, 2])["text_guidance_auc"] == 1.0
    assert text_guidance_detection([0, 1], [2, 3])["text_guidance_auc"] == 0.0
    d = text_guidance_detection([1, 1], [1, 1, 1])
    assert d["text_guidance_auc"] == 0.5 and d["text_guidance_mem"] == 1.0 and d["text_guidance_heldout"] == 1.0
    with pytest.raises(MemrlError, match="both groups"):
        text_guidance_detection([], [1.0])


def test_generate_returns_the_sampling_trajectory_guidance_norm(quick_model_dir) -> None:
    model = DiffusionModel.from_pretrained(quick_model_dir[0])
    prompts = ["digit 3", "", "digit 7"]
    plain = model.generate(prompts, 3, 2.0, seed=5)
    images, norms = model.generate(prompts, 3, 2.0, seed=5, return_guidance_norms=True)
    assert torch.equal(plain, images)  # measuring changes nothing
    assert norms.shape == (3,) and norms[0] > 0 and norms[2] > 0
    # the empty prompt is the unconditional prediction (zero up to the batch position's rounding)
    assert norms[1] < 1e-4 * norms[0]
    # without guidance the samples are the conditional ones, and the norm is still measured
    _, n1 = model.generate(prompts, 3, 1.0, seed=5, return_guidance_norms=True)
    assert n1[0] > 0 and n1[1] < 1e-4 * n1[0]


def test_memorization_probes_when_captions_repeat() -> None:
    imgs = torch.zeros(10, 1, 4, 4)
    caps = ["digit 1", "digit 2", "digit 1", "unique a", "digit 2", "digit 3", "digit 1", "", "digit 3", "unique b"]
    train = CaptionedImages(imgs, caps, name="t")
    # unique captions first, then one image per caption not used yet, then the rest in order
    assert memorization_indices(train, 2) == [3, 9]
    assert memorization_indices(train, 5) == [3, 9, 0, 1, 5]
    idx = memorization_indices(train, 7)
    assert idx == [3, 9, 0, 1, 5, 2, 4] and 7 not in idx  # an empty caption is never a probe
    groups = probe_groups(caps, idx)
    assert groups[0] == (3,) and groups[2] == (0, 2) and groups[5] == (0, 2) and groups[3] == (1, 4)
    with pytest.raises(MemrlError, match="have a caption, 10 needed"):
        memorization_indices(train, 10)


def test_nn_memorization_counts_a_sibling_probe_as_own() -> None:
    train = np.eye(4)
    gen = np.array([[0, 1.0, 0, 0]])  # a copy of image 1, prompted by probe 0's caption
    alone = nn_memorization(gen, [0], train, threshold=0.5)
    shared = nn_memorization(gen, [0], train, threshold=0.5, gen_owner_groups=[(0, 1)])
    assert alone["nn_own_rate"] == 0.0 and shared["nn_own_rate"] == 1.0 and shared["replication_rate"] == 1.0
    with pytest.raises(MemrlError, match="must hold its owner"):
        nn_memorization(gen, [0], train, threshold=0.5, gen_owner_groups=[(1, 2)])


@pytest.mark.slow
def test_evaluation_reports_intervals_floor_detection_and_chance(quick_model_dir, tmp_path) -> None:
    ev = Evaluator(quick_model_dir[0], cache=tmp_path / "c.sqlite")
    data = load_dataset("family:27")  # 3 classes, class-level captions: 4 probes share captions
    cfg = preset("quick")
    r = ev.evaluate(data, "lora", "all", cfg, seed=0)
    assert r["memorization_shared_captions"] > 0
    assert 0 <= r["fid_ci_low"] <= r["fid_ci_high"] and r["fid_noise_floor"] > 0
    assert 0.0 <= r["text_guidance_auc"] <= 1.0 and r["text_guidance_mem"] > 0
    base = ev.base(data, cfg.with_method("lora", None, 0))
    assert base["trainable_params"] == 0 and r["nn_own_rate_base"] == base["nn_own_rate"]
    assert r["base"]["fid"] == base["fid"]
    again = ev.evaluate(data, "lora", "all", cfg, seed=0)
    assert again["cached"] and again["fid_ci_low"] == r["fid_ci_low"]


def test_fid_prompts_keep_class_level_captions() -> None:
    from memrl.data.dataset import DatasetSplits

    train = CaptionedImages(torch.zeros(4, 1, 4, 4), ["digit 1", "digit 1", "unique", "digit 2"], "t")
    held = CaptionedImages(torch.zeros(3, 1, 4, 4), ["digit 1", "unique", "digit 2"], "h")
    data = DatasetSplits("d", train, held)
    # "unique" names one training image: left out; "digit 1" is a class caption: kept
    assert Evaluator.fid_prompts(data, ["unique", "digit 1"], 4) == ["digit 1", "digit 2", "digit 1", "digit 2"]
