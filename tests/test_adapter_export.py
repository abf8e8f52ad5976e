"""Saved peft adapters load back with peft's / diffusers' own API and give the fine-tuned model.

For every adapter method: apply it to the tiny UNet with a partial mask, make the adapter weights
non-zero, save with :func:`memrl.peft_masking.export.save_adapter`, load into a fresh copy of the
base UNet with ``PeftModel.from_pretrained`` (and, for lora, diffusers' ``load_lora_adapter``),
and compare outputs with the in-memory adapted model and the merged model. A load that silently
skips tensors (wrong key prefix: peft and diffusers only warn) fails here.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from memrl.errors import MemrlError
from memrl.models.tiny import TinyModelConfig, build_unet
from memrl.peft_masking import PEFT_ADAPTER_METHODS, Mask, apply_peft, enumerate_units, get_method
from memrl.peft_masking.export import (
    DIFFUSERS_LORA_WEIGHTS_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    has_adapter,
    save_adapter,
)
from memrl.peft_masking.merge import merged_state_dict

UNITS_SELECTED = "down_blocks.2.attentions.0,up_blocks.1.attentions.1"
ATOL = 1e-5


def fresh_unet() -> nn.Module:
    torch.manual_seed(0)
    return build_unet(TinyModelConfig()).eval()


def output(unet: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 16, generator=g)
    c = torch.randn(2, 5, 64, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 600]), encoder_hidden_states=c).sample


def adapted(method: str):
    """(unet, result): ``method`` on two attention units, adapter weights moved off their init."""
    unet = fresh_unet()
    mask = Mask.parse(UNITS_SELECTED, enumerate_units(unet))
    result = apply_peft(unet, mask, method)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in result.trainable:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return unet, result


def adapter_keys(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed by UNet module path (a PeftModel's ``base_model.model.`` dropped)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k.removeprefix("base_model.model."): v.detach() for k, v in state.items()}


def assert_same_tensors(loaded: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert saved, "nothing was saved"
    assert set(loaded) == set(saved), (sorted(set(saved) - set(loaded))[:3], sorted(set(loaded) - set(saved))[:3])
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k


@pytest.mark.parametrize("method", PEFT_ADAPTER_METHODS)
def test_adapter_loads_back_with_peft_and_diffusers(method, tmp_path):
    from peft import PeftModel

    base = output(fresh_unet())
    unet, result = adapted(method)
    in_memory = output(unet)
    assert (in_memory - base).abs().max() > 1e-3, "the adapter must change the output, or an empty load would pass"

    folder = tmp_path / "adapter"
    written = save_adapter(unet, result, folder)
    expected = {PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME} | ({DIFFUSERS_LORA_WEIGHTS_NAME} if method == "lora" else set())
    assert set(written) == expected == {p.name for p in folder.iterdir()}
    assert json.loads((folder / PEFT_CONFIG_NAME).read_text())["peft_type"] == {"lora": "LORA", "loha": "LOHA", "lokr": "LOKR", "oft": "OFT"}[method]
    peft_file = load_file(str(folder / PEFT_WEIGHTS_NAME))
    assert peft_file and all(k.startswith("base_model.model.") for k in peft_file)
    saved = {k.removeprefix("base_model.model."): v for k, v in peft_file.items()}
    assert_same_tensors(saved, adapter_keys(unet, "memrl"))

    # the merged model (what replay writes as OUT/model); merging changes `unet` in place, so last
    fresh = fresh_unet()
    fresh.load_state_dict(merged_state_dict(unet, result, list(fresh.state_dict())), strict=True)
    merged = output(fresh)
    assert torch.allclose(merged, in_memory, atol=ATOL)

    # peft: PeftModel.from_pretrained into a fresh base UNet, no missing adapter keys
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(fresh_unet(), str(folder))
    assert not [w for w in caught if "adapter keys" in str(w.message)], [str(w.message) for w in caught]
    assert_same_tensors(adapter_keys(model, "default"), saved)
    loaded = output(model)
    assert torch.allclose(loaded, in_memory, atol=ATOL), (loaded - in_memory).abs().max()
    assert torch.allclose(loaded, merged, atol=ATOL)
    check = model.load_adapter(str(folder), adapter_name="check")  # the load result from_pretrained does not return
    assert list(check.missing_keys) == [] and list(check.unexpected_keys) == []

    if method == "lora":
        # diffusers: the pipeline LoRA file ("unet." keys, config in its metadata)
        with safe_open(str(folder / DIFFUSERS_LORA_WEIGHTS_NAME), "pt") as f:
            keys = list(f.keys())
            meta = json.loads(f.metadata()["lora_adapter_metadata"])
        assert keys and all(k.startswith("unet.") for k in keys)
        assert meta["unet.r"] == 4 and meta["unet.peft_type"] == "LORA"
        target = fresh_unet()
        # (the model-level loader needs the file name or use_safetensors=True: it tries .bin otherwise)
        target.load_lora_adapter(str(folder), prefix="unet", weight_name=DIFFUSERS_LORA_WEIGHTS_NAME, adapter_name="memrl")
        assert_same_tensors(adapter_keys(target, "memrl"), saved)
        assert torch.allclose(output(target), in_memory, atol=ATOL)

        # and the pipeline entry point's two steps (pipe.load_lora_weights does exactly these)
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        state, alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(str(folder), return_lora_metadata=True)
        target = fresh_unet()
        StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, target, adapter_name="memrl", metadata=metadata)
        assert_same_tensors(adapter_keys(target, "memrl"), saved)
        assert torch.allclose(output(target), in_memory, atol=ATOL)


def test_unprefixed_keys_would_be_caught(tmp_path):
    """The old format (keys without base_model.model.) loads nothing: the check above sees it."""
    from peft import PeftModel
    from safetensors.torch import save_file

    unet, result = adapted("loha")
    save_adapter(unet, result, tmp_path)
    state = load_file(str(tmp_path / PEFT_WEIGHTS_NAME))
    save_file({k.removeprefix("base_model.model."): v for k, v in state.items()}, str(tmp_path / PEFT_WEIGHTS_NAME))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(fresh_unet(), str(tmp_path))
    assert [w for w in caught if "missing adapter keys" in str(w.message)]
    assert torch.allclose(output(model), output(fresh_unet()), atol=1e-6)  # silently the base model


@pytest.mark.parametrize("method", ["attention", "difffit", "svdiff", "full"])
def test_no_adapter_to_save(method, tmp_path):
    unet = fresh_unet()
    result = apply_peft(unet, Mask.parse(UNITS_SELECTED, enumerate_units(unet)), method)
    assert not get_method(method).peft_adapter and not has_adapter(unet, result)
    with pytest.raises(MemrlError, match="not a peft adapter"):
        save_adapter(unet, result, tmp_path / "a")


def test_mask_without_projections_has_no_adapter(tmp_path):
    unet = fresh_unet()
    blocks = enumerate_units(unet, "block")
    result = apply_peft(unet, Mask.parse("down_blocks.0,up_blocks.2", blocks), "lora", granularity="block")
    assert result.trainable_params == 0 and not has_adapter(unet, result)
    with pytest.raises(MemrlError, match="no lora adapter"):
        save_adapter(unet, result, tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("method", ["lora", "oft"])
def test_replay_save_finetuned_writes_loadable_adapter(method, quick_model_dir, tmp_path):
    """``memrl replay``'s OUT/adapter loads onto the pretrained UNet and matches OUT/model."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    from memrl.agents.replay import save_finetuned
    from memrl.models.pipeline import DiffusionModel

    model_dir, _ = quick_model_dir
    model = DiffusionModel.from_pretrained(model_dir)
    units = enumerate_units(model.unet, "block")
    result = apply_peft(model.unet, Mask.parse("down_blocks.0,mid_block,up_blocks.1", units), method, granularity="block")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in result.trainable:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    in_memory = output(model.unet)
    written = save_finetuned(SimpleNamespace(model=model, peft=result), tmp_path)
    assert set(written) == {"adapter", "model"}
    base_unet = lambda: UNet2DConditionModel.from_pretrained(model_dir / "unet").eval()  # noqa: E731
    assert (output(base_unet()) - in_memory).abs().max() > 1e-3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(base_unet(), written["adapter"])
    assert not [w for w in caught if "adapter keys" in str(w.message)]
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "model" / "unet").eval()
    assert torch.allclose(output(loaded), in_memory, atol=ATOL)
    assert torch.allclose(output(merged), in_memory, atol=ATOL)
