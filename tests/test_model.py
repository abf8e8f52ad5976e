import json
import shutil

import pytest
import torch

from memrl.errors import MemrlError
from memrl.models.pipeline import DiffusionModel


def test_save_load_round_trip(quick_model_dir, tmp_path):
    folder, _ = quick_model_dir
    m = DiffusionModel.from_pretrained(folder)
    m.save_pretrained(tmp_path / "copy")
    m2 = DiffusionModel.from_pretrained(tmp_path / "copy")
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x1 = m.generate(["digit 3"] * 3, num_inference_steps=4, seed=7)
    x2 = m2.generate(["digit 3"] * 3, num_inference_steps=4, seed=7)
    assert torch.equal(x1, x2)
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert sorted(p.name for p in (tmp_path / "copy" / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_sampling_shape_range_and_seed(quick_model_dir):
    m = DiffusionModel.from_pretrained(quick_model_dir[0])
    x = m.generate(["digit 1", "digit 2, bold strokes", ""], num_inference_steps=5, guidance_scale=2.0, seed=1)
    assert x.shape == (3, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1
    # batch size does not change the samples; the seed does
    y = m.generate(["digit 1", "digit 2, bold strokes", ""], num_inference_steps=5, guidance_scale=2.0, seed=1, batch_size=1)
    assert torch.allclose(x, y, atol=1e-5)
    z = m.generate(["digit 1", "digit 2, bold strokes", ""], num_inference_steps=5, guidance_scale=2.0, seed=2)
    assert not torch.allclose(x, z)


def test_empty_prompt_list_is_an_error(quick_model_dir):
    m = DiffusionModel.from_pretrained(quick_model_dir[0])
    with pytest.raises(MemrlError, match="no prompts"):
        m.generate([])


def test_missing_and_incomplete_folders(tmp_path, quick_model_dir):
    with pytest.raises(MemrlError, match="does not exist"):
        DiffusionModel.from_pretrained(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(quick_model_dir[0], broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(MemrlError, match="missing text_encoder/"):
        DiffusionModel.from_pretrained(broken)
    broken2 = tmp_path / "broken2"
    shutil.copytree(quick_model_dir[0], broken2)
    (broken2 / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MemrlError, match="cannot load model folder"):
        DiffusionModel.from_pretrained(broken2)


def test_latent_seam_with_a_tiny_vae(quick_model_dir):
    """A folder with vae/ is a latent model: generate() decodes to pixels (the SD path's seam)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    base = DiffusionModel.from_pretrained(quick_model_dir[0])
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    cfg = dict(base.unet.config)
    cfg.update(in_channels=2, out_channels=2, sample_size=8)
    unet = UNet2DConditionModel.from_config(cfg)
    m = DiffusionModel(unet, base.text_encoder, base.tokenizer, base.scheduler, vae)
    assert m.image_size == 16 and m.image_channels == 1
    x = m.generate(["digit 1"], num_inference_steps=2)
    assert x.shape == (1, 1, 16, 16)
    lat = m.to_latents(torch.zeros(1, 1, 16, 16))
    assert lat.shape == (1, 2, 8, 8)
