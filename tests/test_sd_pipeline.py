"""Stable Diffusion folders: a tiny random SD pipeline (memrl.models.tiny_sd) loads in memrl and in
diffusers, has SD 1.5's 16 attention units, and what memrl writes loads back in diffusers."""

from __future__ import annotations

import json

import pytest
import torch

from memrl.errors import MemrlError
from memrl.models.pipeline import DiffusionModel
from memrl.peft_masking import enumerate_units


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny random StableDiffusionPipeline folder (32 x 32 RGB, SD 1.5's block layout)."""
    from memrl.models.tiny_sd import build_tiny_sd

    out = tmp_path_factory.mktemp("sd") / "tiny-sd"
    build_tiny_sd(out, seed=0)
    return out


def _sd_pipeline(folder):  # noqa: ANN001, ANN202
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)


# ---------------------------------------------------------------------- 1. the tiny pipeline
def test_tiny_sd_loads_in_diffusers_and_samples(tiny_sd_dir):
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    index = json.loads((tiny_sd_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    pipe = _sd_pipeline(tiny_sd_dir)
    assert isinstance(pipe.tokenizer, CLIPTokenizer) and isinstance(pipe.scheduler, PNDMScheduler)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.safety_checker is None
    ids = pipe.tokenizer("the cat").input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "the</w>", "cat</w>", "<|endoftext|>"]
    img = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 32, 32, 3)


def test_tiny_sd_has_sd15_layout_and_is_seeded(tmp_path, tiny_sd_dir):
    from memrl.models.tiny_sd import build_tiny_sd

    unet = build_tiny_sd(None, seed=0).unet
    kinds = [type(b).__name__ for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks)]
    assert kinds == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D", "UNetMidBlock2DCrossAttn", "UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    ref = DiffusionModel.from_pretrained(tiny_sd_dir).unet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in unet.state_dict().items())
    with pytest.raises(MemrlError, match="divisible by 16"):
        build_tiny_sd(None, resolution=24)


def test_tiny_sd_cli(tmp_path, capsys):
    from memrl.models.tiny_sd import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--vae-blocks" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "sd"), "--resolution", "64", "--vae-blocks", "4"]) == 0
    m = DiffusionModel.from_pretrained(tmp_path / "sd")
    assert (m.image_size, m.image_channels, m.latent_shape) == (64, 3, (4, 8, 8))  # SD's x8 VAE
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "bad"), "--resolution", "40"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------- 2. memrl loads SD folders
def test_memrl_loads_the_sd_folder(tiny_sd_dir, tmp_path):
    from diffusers import PNDMScheduler

    m = DiffusionModel.from_pretrained(tiny_sd_dir)
    units = enumerate_units(m.unet, "attention")
    assert len(units) == 16
    assert sum(u.startswith("down_blocks") for u in units) == 6 and sum(u.startswith("up_blocks") for u in units) == 9
    assert (m.image_size, m.image_channels) == (32, 3)
    assert m.scheduler.config.clip_sample is False  # latents are not clipped to [-1, 1]
    assert isinstance(m.saved_scheduler, PNDMScheduler)
    x = m.generate(["a cat", "the thing"], num_inference_steps=2, seed=0)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    # memrl's save keeps the SD index, the CLIP tokenizer and the PNDM scheduler
    m.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"] and index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert index["requires_safety_checker"] is False and index["feature_extractor"] == [None, None]
    pipe = _sd_pipeline(tmp_path / "copy")
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert torch.equal(DiffusionModel.from_pretrained(tmp_path / "copy").generate(["a cat", "the thing"], num_inference_steps=2, seed=0), x)
