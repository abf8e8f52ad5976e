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


# ---------------------------------------------------------------------- 3. --feature-net
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def write_shapes_folder(folder, n: int, unique: bool, offset: int = 0, size: int = 32):  # noqa: ANN001, ANN201
    """An imagefolder (``metadata.csv`` with file_name, text) of ``n`` RGB PNGs: coloured squares
    and discs on a noisy light background. ``unique``: one caption per image, else one per class."""
    import csv

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.RandomState(offset + i)
        colour, shape = list(COLOURS)[i % 4], ("square", "disc")[(i // 4) % 2]
        img = (np.full((size, size, 3), 235) + rng.randint(0, 15, (size, size, 3))).astype(np.uint8)
        cy, cx = rng.randint(size // 3, size - size // 3, 2)
        r = rng.randint(size // 6, size // 4)
        yy, xx = np.mgrid[:size, :size]
        inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r) if shape == "square" else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = COLOURS[colour]
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
        rows.append({"file_name": f"img{i:03d}.png", "text": f"a {colour} {shape}" + (f" number {i}" if unique else "")})
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file_name", "text"])
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.fixture(scope="session")
def rgb_data(tmp_path_factory):
    """``(public folder with class-level captions, private folder with unique captions)``.

    The private folder has 40 images: the seeded 30% held out (12) is above the 8 FID needs, and
    the quick preset's 4 memorization probes come from the 28 training images."""
    root = tmp_path_factory.mktemp("rgb")
    return write_shapes_folder(root / "public", 32, unique=False, offset=1000, size=48), write_shapes_folder(root / "private", 40, unique=True)


@pytest.fixture(scope="session")
def rgb_feature_net(rgb_data, tmp_path_factory):
    """``memrl feature-net`` on the public folder (the documented offline fallback for RGB data)."""
    from memrl.cli import main

    out = tmp_path_factory.mktemp("fn") / "feature_net"
    assert main(["feature-net", "--data", str(rgb_data[0]), "--out", str(out), "--epochs", "5", "--no-progress"]) == 0
    return out


def test_feature_net_command_trains_on_public_rgb(rgb_feature_net, rgb_data, tmp_path, capsys):
    from memrl.cli import main
    from memrl.models.feature_net import FeatureNet

    net = FeatureNet.from_pretrained(rgb_feature_net)
    assert net.config["channels"] == 3 and net.config["num_classes"] == 8  # one class per distinct caption
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 64) and net(torch.zeros(2, 1, 20, 20)).shape == (2, 64)
    # distinct captions are no class labels: refused, naming the way out
    assert main(["feature-net", "--data", str(rgb_data[1]), "--out", str(tmp_path / "fn")]) == 2
    assert "captions that repeat" in capsys.readouterr().err and not (tmp_path / "fn").exists()


MODULE = '''
import torch
from torch import nn


class Trunk(nn.Module):
    """A domain network: features = pooled conv output; ``features`` is its trunk (not the embedding)."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.num_features = 8

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


def make():
    return Trunk(0)


def other():
    return Trunk(1)


def no_width():
    return nn.Identity()
'''


def test_module_feature_net_is_used_everywhere_and_keyed(tiny_sd_dir, rgb_data, rgb_feature_net, tmp_path, monkeypatch):
    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.evaluation import Evaluator
    from memrl.metrics import memorization as mm

    (tmp_path / "domain_fn.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    ev = Evaluator(tiny_sd_dir, feature_net="domain_fn:make")
    assert ev.feature_net_hash.startswith("module-") and ev.feature_net.num_features == 8
    data = load_dataset(rgb_data[1], ev.image_size, ev.image_channels)
    x = data.train.images[:5]
    with torch.no_grad():
        want = ev.feature_net.net(x).double().numpy()
    # nearest neighbours and the descriptor see the module's forward (8-d), not its .features trunk
    assert mm.image_features(x, ev.feature_net) == pytest.approx(want)
    assert DescriptorBasis.fit(ev.feature_net, [data], k=4).components.shape == (4, 8)
    # the hash is the spec and the weights: the same again, another for other weights or a folder
    assert Evaluator(tiny_sd_dir, feature_net="domain_fn:make").feature_net_hash == ev.feature_net_hash
    assert Evaluator(tiny_sd_dir, feature_net="domain_fn:other").feature_net_hash != ev.feature_net_hash
    folder = Evaluator(tiny_sd_dir, feature_net=rgb_feature_net)
    assert folder.feature_net_hash not in (ev.feature_net_hash, None) and not folder.feature_net_hash.startswith("module-")
    for spec, msg in (("domain_fn:nothing", "has no nothing"), ("domain_fn:no_width", "num_features"), ("no_such_pkg.mod:make", "cannot import")):
        with pytest.raises(MemrlError, match=msg):
            Evaluator(tiny_sd_dir, feature_net=spec)


def test_missing_feature_net_names_the_flag(tiny_sd_dir, rgb_data, tmp_path, capsys):
    from memrl.cli import main

    rc = main(["evaluate", "--pretrained", str(tiny_sd_dir), "--dataset", str(rgb_data[1]), "--method", "lora", "--mask", "all", "--preset", "quick", "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pass --feature-net FOLDER or module:callable" in err[0]
    assert not (tmp_path / "o").exists()


def test_feature_net_flag_on_every_command(capsys):
    from memrl.agents.cli import _cmd_train  # noqa: F401  (the flag's target is checked through the config below)
    from memrl.cli import build_parser
    from memrl.envs.config import EnvConfig
    from memrl.utils.config import ConfigError

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for cmd in ("evaluate", "train", "search", "replay"):
        assert any("--feature-net" in a.option_strings for a in sub.choices[cmd]._actions), cmd
    assert EnvConfig.from_dict({"feature_net": "pkg.mod:make"}).feature_net == "pkg.mod:make"
    with pytest.raises((ConfigError, MemrlError), match="feature_net"):
        EnvConfig(feature_net=" ")


def test_search_flag_sets_env_feature_net(tiny_sd_dir, tmp_path, monkeypatch):
    """``memrl search --feature-net`` reaches env.feature_net (what the evaluator is built with)."""
    import memrl.search.run as run

    seen = {}

    def fake_search(cfg, out, **kw):  # noqa: ANN001, ANN003, ANN202
        seen["env"] = cfg.env
        return {}

    monkeypatch.setattr(run, "search", fake_search)
    from memrl.cli import main

    assert main(["search", "--dataset", "inverted", "--feature-net", "pkg.mod:make", "--out", str(tmp_path / "s"), "--json"]) == 0
    assert seen["env"].feature_net == "pkg.mod:make"


# ---------------------------------------------------------------------- 4. quick evaluation, RGB folder, tiny SD
def test_quick_evaluation_on_rgb_folder_with_tiny_sd(tiny_sd_dir, rgb_data, rgb_feature_net, tmp_path, capsys):
    import math

    from memrl.cli import main

    out = tmp_path / "eval"
    args = ["evaluate", "--pretrained", str(tiny_sd_dir), "--feature-net", str(rgb_feature_net), "--dataset", str(rgb_data[1])]
    args += ["--method", "lora", "--mask", "0000000000000011", "--preset", "quick", "--out", str(out), "--json", "--device", "cpu"]
    args += ["--set", "n_fid_samples=16", "inference_steps=3", "gens_per_prompt=2", "finetune.steps=4"]  # seconds on one core
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["fid_n_real"] == 12 and res["memorization_set"] == 4 and res["mask_units"] == ["up_blocks.3.attentions.1", "up_blocks.3.attentions.2"]
    for key in ("fid", "kid", "amd", "nn_own_rate", "replication_rate", "reward"):
        assert math.isfinite(res[key]), key
    assert 0 < res["trainable_fraction"] < 0.01 and (out / "samples.png").is_file()
    assert json.loads((out / "result.json").read_text())["fid"] == res["fid"]


# ---------------------------------------------------------------------- 5. what replay writes loads in diffusers
def test_replay_writer_output_loads_in_diffusers(tiny_sd_dir, rgb_data, tmp_path):
    """``memrl replay`` saves its Stage-2 fine-tune with :func:`save_finetuned` (driving replay itself
    needs a trained policy); on an SD base OUT/model is a StableDiffusionPipeline and OUT/adapter's
    LoRA, loaded into the base pipeline, gives the merged model's UNet."""
    from diffusers import PNDMScheduler

    from memrl.agents.replay import save_finetuned
    from memrl.data.loaders import load_dataset
    from memrl.peft_masking import Mask
    from memrl.training.finetune import FinetuneConfig, finetune

    base = DiffusionModel.from_pretrained(tiny_sd_dir)
    data = load_dataset(rgb_data[1], base.image_size, base.image_channels)
    mask = Mask.parse("0000000000000011", enumerate_units(base.unet, "attention"))
    ft = finetune(base, data, mask, FinetuneConfig(method="lora", steps=3, batch_size=8, n_mem=2, n_repeats=2))
    written = save_finetuned(ft, tmp_path)
    assert written == {"adapter": str(tmp_path / "adapter"), "model": str(tmp_path / "model")}
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    merged = _sd_pipeline(tmp_path / "model")
    assert isinstance(merged.scheduler, PNDMScheduler)
    img = merged("a red square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 32, 32, 3)

    pipe = _sd_pipeline(tiny_sd_dir)
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g), torch.tensor([500, 20])
    with torch.no_grad():
        before = pipe.unet(x, t, ctx).sample
        pipe.load_lora_weights(str(tmp_path / "adapter"))
        after = pipe.unet(x, t, ctx).sample
        want = merged.unet(x, t, ctx).sample
    assert not torch.allclose(before, after, atol=1e-6)  # the LoRA changed the UNet
    assert torch.allclose(after, want, atol=1e-4)  # ... into the merged model


# ---------------------------------------------------------------------- resolution
def test_a_resolution_below_the_native_size_trains_and_samples_there(tiny_sd_dir):
    """SD 1.5 is 512 px natively and the published runs fine-tuned it at 224: the latent side
    follows the resolution asked, the UNet (convolutional) handles a side that does not halve
    evenly, and the setting enters the cache key only when given."""
    from memrl.evaluation import Evaluator

    native = DiffusionModel.from_pretrained(tiny_sd_dir)
    assert native.image_size == 32 and native.vae_factor == 2
    model = DiffusionModel.from_pretrained(tiny_sd_dir).set_resolution(40)  # 20 x 20 latents: 20 -> 10 -> 5 -> 3
    assert model.image_size == 40 and model.latent_shape == (4, 20, 20)
    with torch.no_grad():
        img = model.generate(["a cat"], num_inference_steps=2, guidance_scale=1.0, seed=0)
    assert img.shape == (1, 3, 40, 40) and torch.isfinite(img).all()
    with pytest.raises(MemrlError, match="multiple of the VAE factor 2"):
        model.set_resolution(41)
    assert model.set_resolution(None).image_size == 32
    ev = Evaluator(tiny_sd_dir, feature_net=None if (tiny_sd_dir / "feature_net").is_dir() else _rgb_feature_net(tiny_sd_dir.parent), resolution=40)
    assert ev.model.image_size == 40
    from memrl.data.loaders import load_dataset
    from memrl.evaluation import preset

    data = load_dataset("inverted", 40, 3)
    cfg = preset("quick").with_method("lora", None, 0)
    assert ev.request(data, ev.parse_mask("all"), cfg)["resolution"] == 40
    ev.resolution = None  # what an evaluator at the native size asks: no resolution entry
    assert "resolution" not in ev.request(data, ev.parse_mask("all"), cfg)


def _rgb_feature_net(root):  # noqa: ANN001, ANN202
    from memrl.models.feature_net import FeatureNet

    out = root / "fn-rgb"
    if not out.is_dir():
        FeatureNet(channels=3).save_pretrained(out)
    return out


# ---------------------------------------------------------------------- hub ids
def test_a_hub_id_offline_with_nothing_cached_is_one_line_naming_the_way_out(monkeypatch, tmp_path):
    from memrl.models.pipeline import resolve_model_location

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MemrlError, match=r"model 'someone/sd-model' is not a local folder.*save_pretrained\(FOLDER\)") as exc:
        resolve_model_location("someone/sd-model")
    assert "\n" not in str(exc.value)
    # a local folder (even one whose name looks like a hub id) is used as it is, and a missing one is left to the loader's error
    local = tmp_path / "owner" / "name"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_location("owner/name") == local.relative_to(tmp_path)
    assert resolve_model_location(str(tmp_path / "nowhere")) == tmp_path / "nowhere"


# ---------------------------------------------------------------------- replay end to end
@pytest.mark.slow
def test_memrl_replay_on_the_tiny_sd_pipeline_writes_a_pipeline_diffusers_samples_from(tiny_sd_dir, rgb_data, rgb_feature_net, tmp_path, capsys):
    """A policy trained for two steps on the tiny SD pipeline (its own RGB folder, its feature
    network), replayed with `memrl replay` on another folder whose captions repeat (one per
    class, as real sheets have): OUT/model loads in StableDiffusionPipeline and samples, and
    OUT/adapter's LoRA loads into the base pipeline."""
    from memrl.agents.config import TrainConfig
    from memrl.agents.train import train
    from memrl.cli import main

    tiny = {"finetune": {"steps": 3, "batch_size": 8, "n_mem": 2, "n_repeats": 2}, "n_fid_samples": 16, "inference_steps": 2,
            "gens_per_prompt": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1, "fid_bootstrap": 0}  # fmt: skip
    env = {"pretrained": str(tiny_sd_dir), "feature_net": str(rgb_feature_net), "datasets": [str(rgb_data[1])], "method": "lora",
           "preset": "quick", "eval_overrides": tiny, "seed": 0}  # fmt: skip
    run = tmp_path / "run"
    cfg = TrainConfig.from_dict(
        {"env": env, "ppo": {"n_steps": 2, "batch_size": 2, "n_epochs": 1},
         "train": {"total_timesteps": 2, "checkpoint_every": 2, "random_masks": 0, "optuna": False, "final_pictures": False}}  # fmt: skip
    )
    train(cfg, run, progress=False, echo=lambda _s: None)
    other = write_shapes_folder(tmp_path / "hospital-b", 40, unique=False, offset=500)  # class-level captions, which repeat
    out = tmp_path / "replay"
    assert main(["replay", "--policy", str(run / "policy.zip"), "--dataset", str(other), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    pipe = _sd_pipeline(out / "model")
    img = pipe("a red square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 32, 32, 3) and torch.isfinite(torch.as_tensor(img)).all()
    base = _sd_pipeline(tiny_sd_dir)
    base.load_lora_weights(str(out / "adapter"))  # the adapter, for users who keep their base pipeline
    report = json.loads((out / "report.json").read_text())
    assert len(report["mask_bits"]) == 16 and report["saved"]["model"] == str(out / "model")
    assert report["metrics"]["memorization_set"] == 2 and 0 <= report["metrics"]["nn_own_rate"] <= 1
