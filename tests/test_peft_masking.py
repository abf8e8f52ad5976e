"""Mask-restricted PEFT: unit names, mask parsing, and that only selected units' parameters move."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memrl.errors import MemrlError
from memrl.models.tiny import TinyModelConfig, build_unet
from memrl.peft_masking import (
    GRANULARITIES,
    METHOD_REGISTRY,
    METHODS,
    PEFT_ADAPTER_METHODS,
    Mask,
    MethodSpec,
    adapter_state_dict,
    apply_peft,
    enumerate_units,
    get_method,
    load_adapter_state_dict,
    peft_state_dict,
    trainable_units,
    unit_of,
)

UNITS = [
    "down_blocks.1.attentions.0",
    "down_blocks.2.attentions.0",
    "mid_block.attentions.0",
    "up_blocks.0.attentions.0",
    "up_blocks.0.attentions.1",
    "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
]
PARTIAL = ("down_blocks.2.attentions.0", "up_blocks.1.attentions.1")


def fresh_unet() -> nn.Module:
    torch.manual_seed(0)
    return build_unet(TinyModelConfig()).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 16, generator=g)
    t = torch.tensor([10, 600])
    c = torch.randn(2, 5, 64, generator=g)
    noise = torch.randn(2, 1, 16, 16, generator=g)
    return x, t, c, noise


def output(unet: nn.Module) -> torch.Tensor:
    x, t, c, _ = inputs()
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=c).sample


def train_steps(unet: nn.Module, result, steps: int = 3) -> None:
    x, t, c, noise = inputs()
    opt = torch.optim.AdamW(result.param_groups(0.01), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=c).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()


def snapshot(unet: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


# -- units ---------------------------------------------------------------------------------------
def test_default_units_order_and_names():
    assert enumerate_units(fresh_unet()) == UNITS


def test_granularities():
    unet = fresh_unet()
    both = enumerate_units(unet, "attention+resnet")
    assert len(both) == 18 and set(UNITS) <= set(both)
    assert both[:5] == [
        "down_blocks.0.resnets.0",
        "down_blocks.1.resnets.0",
        "down_blocks.1.attentions.0",
        "down_blocks.2.resnets.0",
        "down_blocks.2.attentions.0",
    ]
    assert both[5:8] == ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    assert enumerate_units(unet, "block") == [
        "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2",
    ]
    with pytest.raises(MemrlError, match="attention\\+resnet"):
        enumerate_units(unet, "layers")


def test_units_sort_numerically():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attentions = nn.ModuleList([nn.Linear(1, 1)])

    fake = nn.Module()
    fake.up_blocks = nn.ModuleList([Block() for _ in range(12)])
    fake.down_blocks = nn.ModuleList([Block() for _ in range(3)])
    names = enumerate_units(fake)
    assert names == [f"down_blocks.{i}.attentions.0" for i in range(3)] + [f"up_blocks.{i}.attentions.0" for i in range(12)]
    assert unit_of("up_blocks.1.attentions.0.weight", names) == "up_blocks.1.attentions.0"
    assert unit_of("up_blocks.10.attentions.0.weight", names) == "up_blocks.10.attentions.0"
    assert unit_of("conv_in.weight", names) is None


# -- masks ---------------------------------------------------------------------------------------
def test_mask_parse_and_print_round_trip():
    m = Mask.parse(" up_blocks.1.attentions.1 ,down_blocks.2.attentions.0 ", UNITS)
    assert m.selected == PARTIAL
    assert m.bitstring == "0100001"
    assert str(m) == ",".join(PARTIAL)
    assert Mask.parse(str(m), UNITS) == m
    assert Mask.parse("0100001", UNITS) == m
    assert Mask.from_bits([0, 1, 0, 0, 0, 0, 1], UNITS) == m
    assert Mask.from_bits("0100001", UNITS) == m
    assert Mask.from_dict(m.to_dict()) == m
    assert Mask.from_dict(m.to_dict(), UNITS) == m
    for spec, text, bits in [("all", "all", "1" * 7), ("ALL", "all", "1" * 7), ("none", "none", "0" * 7), ("0000000", "none", "0" * 7), ("1111111", "all", "1" * 7)]:
        mm = Mask.parse(spec, UNITS)
        assert str(mm) == text and mm.bitstring == bits
        assert Mask.parse(str(mm), UNITS) == mm
    assert Mask.parse("none", UNITS).selected == ()


@pytest.mark.parametrize("spec", ["0101", "01010101", "down_blocks.9.attentions.0", "mid_block.attentions.0,nope", "", "  ", ","])
def test_mask_errors_list_valid_units(spec):
    with pytest.raises(MemrlError) as err:
        Mask.parse(spec, UNITS)
    assert all(u in str(err.value) for u in UNITS)
    assert "\n" not in str(err.value)


def test_mask_invalid_construction():
    with pytest.raises(MemrlError):
        Mask(tuple(UNITS), (0, 1))
    with pytest.raises(MemrlError):
        Mask.from_bits([0, 2, 0, 0, 0, 0, 0], UNITS)
    with pytest.raises(MemrlError, match="made for units"):
        Mask.from_dict(Mask.parse("all", UNITS).to_dict(), UNITS[:3])


# -- methods -------------------------------------------------------------------------------------
def test_unknown_method_and_mismatched_mask():
    unet = fresh_unet()
    with pytest.raises(MemrlError, match="lora.*svdiff"):
        apply_peft(unet, Mask.parse("all", UNITS), "dora")
    with pytest.raises(MemrlError, match="do not match"):
        apply_peft(unet, Mask.parse("all", UNITS[:3]), "lora")
    apply_peft(unet, Mask.parse("all", UNITS), "attention")
    with pytest.raises(MemrlError, match="already applied"):
        apply_peft(unet, Mask.parse("all", UNITS), "attention")


@pytest.mark.parametrize("method", METHODS)
def test_only_selected_units_change(method):
    unet = fresh_unet()
    mask = Mask.parse(",".join(PARTIAL), UNITS)
    result = apply_peft(unet, mask, method)
    assert result.trainable_params == sum(p.numel() for _, p in result.trainable) > 0
    assert 0 < result.trainable_fraction < 1
    assert sum(result.per_unit.values()) == result.trainable_params and result.outside_units == 0
    assert all(result.per_unit[u] > 0 for u in PARTIAL)
    assert result.unet_params == sum(p.numel() for p in fresh_unet().parameters())
    before = snapshot(unet)
    train_steps(unet, result)
    after = snapshot(unet)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed
    assert all(unit_of(k, UNITS) in PARTIAL for k in changed), [k for k in changed if unit_of(k, UNITS) not in PARTIAL]
    for u in PARTIAL:
        assert any(unit_of(k, UNITS) == u for k in changed), u
    report = result.report()
    assert report["method"] == method and report["selected"] == list(PARTIAL) and report["bits"] == "0100001"


def test_full_all_trains_everything():
    unet = fresh_unet()
    result = apply_peft(unet, Mask.parse("all", UNITS), "full")
    assert result.trainable_params == result.unet_params and result.trainable_fraction == 1.0
    assert result.outside_units > 0
    before = snapshot(unet)
    train_steps(unet, result, steps=1)
    after = snapshot(unet)
    assert not torch.equal(before["conv_in.weight"], after["conv_in.weight"])
    assert not torch.equal(before["time_embedding.linear_1.weight"], after["time_embedding.linear_1.weight"])


@pytest.mark.parametrize("method", METHODS)
def test_mask_none_trains_nothing(method):
    unet = fresh_unet()
    result = apply_peft(unet, Mask.parse("none", UNITS), method)
    assert result.trainable == [] and result.trainable_params == 0 and result.trainable_fraction == 0.0
    assert result.param_groups(0.01) == []
    assert not any(p.requires_grad for p in unet.parameters())
    assert torch.equal(output(unet), output(fresh_unet()))


@pytest.mark.parametrize("method", [*PEFT_ADAPTER_METHODS, "svdiff", "difffit"])
def test_output_unchanged_at_init(method):
    ref = output(fresh_unet())
    unet = fresh_unet()
    apply_peft(unet, Mask.parse("all", UNITS), method)
    assert torch.allclose(output(unet), ref, atol=1e-5)


@pytest.mark.parametrize("granularity,method", [("block", "svdiff"), ("attention+resnet", "difffit"), ("block", "lora")])
def test_other_granularities_output_unchanged(granularity, method):
    ref = output(fresh_unet())
    unet = fresh_unet()
    units = enumerate_units(unet, granularity)
    result = apply_peft(unet, Mask.parse("all", units), method, granularity=granularity)
    assert result.trainable_params > 0 and result.outside_units == 0
    assert torch.allclose(output(unet), ref, atol=1e-5)


def test_difffit_scales_start_at_one_without_decay():
    unet = fresh_unet()
    result = apply_peft(unet, Mask.parse(",".join(PARTIAL), UNITS), "difffit")
    scales = [(n, p) for n, p in result.trainable if n in result.scale_names]
    assert len(scales) == 2 * 3  # per unit: attn1, attn2, ff
    assert all(n in result.no_decay_names and torch.equal(p, torch.ones_like(p)) for n, p in scales)
    assert {n for n, _ in scales} == result.scale_names
    decayed = [g for g in result.param_groups(0.1) if g["weight_decay"] > 0]
    assert all(p is not s for g in decayed for p in g["params"] for _, s in scales)
    assert "down_blocks.2.attentions.0.transformer_blocks.0.attn1.difffit_scale" in unet.state_dict()


def test_lora_targets_only_projections_of_selected_units():
    unet = fresh_unet()
    result = apply_peft(unet, Mask.parse("mid_block.attentions.0", UNITS), "lora", rank=2)
    names = result.trainable_names
    assert len(names) == 2 * 8  # A and B for q, k, v, out of attn1 and attn2
    assert all(n.startswith("mid_block.attentions.0.") and ".lora_" in n for n in names)
    assert result.per_unit["mid_block.attentions.0"] == 8 * (2 * 64 + 64 * 2)
    assert all(k.startswith("mid_block.attentions.0.") for k in peft_state_dict(unet))


@pytest.mark.parametrize("method", ["lora", "svdiff", "difffit", "attention"])
def test_adapter_state_dict_round_trip(method):
    mask = Mask.parse(",".join(PARTIAL), UNITS)
    unet = fresh_unet()
    result = apply_peft(unet, mask, method)
    train_steps(unet, result, steps=2)
    saved = adapter_state_dict(unet, result)
    assert set(saved) == set(result.trainable_names)
    other = fresh_unet()
    apply_peft(other, mask, method)
    assert not torch.allclose(output(other), output(unet))
    load_adapter_state_dict(other, saved)
    assert torch.allclose(output(other), output(unet), atol=1e-6)
    with pytest.raises(MemrlError, match="lacks"):
        load_adapter_state_dict(fresh_unet(), {"nope.weight": torch.zeros(1)})


def test_sd15_layout_has_16_attention_units():
    """SD 1.5's block layout (default diffusers block types, 2 layers per block), shrunk in width."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8, 8, 8), layers_per_block=2,
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=4,
    )
    units = enumerate_units(unet)
    expected = (
        [f"down_blocks.{b}.attentions.{i}" for b in range(3) for i in range(2)]
        + ["mid_block.attentions.0"]
        + [f"up_blocks.{b}.attentions.{i}" for b in range(1, 4) for i in range(3)]
    )
    assert units == expected and len(units) == 16


# -- the method registry -------------------------------------------------------------------------
def test_registry_is_the_single_source():
    from memrl.training.finetune import DEFAULT_LR, FinetuneConfig

    assert METHODS == tuple(METHOD_REGISTRY) == ("lora", "loha", "lokr", "oft", "attention", "difffit", "svdiff", "full")
    assert PEFT_ADAPTER_METHODS == ("lora", "loha", "lokr", "oft")
    for name, spec in METHOD_REGISTRY.items():
        assert isinstance(spec, MethodSpec) and spec.name == name and get_method(name) is spec
        assert spec.description and "\n" not in spec.description
        assert spec.default_lr > 0 and DEFAULT_LR[name] == spec.default_lr
        assert FinetuneConfig(method=name).resolved_lr() == spec.default_lr
        assert FinetuneConfig(method=name, lr=0.123).resolved_lr() == 0.123
        assert (spec.export is not None) == spec.peft_adapter == (name in PEFT_ADAPTER_METHODS)
    assert get_method("lora").export == "diffusers-lora"
    assert {get_method(m).export for m in ("loha", "lokr", "oft")} == {"peft"}
    assert [n for n, s in METHOD_REGISTRY.items() if s.whole_unet_with_all_mask] == ["full"]
    with pytest.raises(MemrlError, match="unknown PEFT method 'dora'; valid: lora, loha, lokr, oft, attention, difffit, svdiff, full"):
        get_method("dora")
    with pytest.raises(MemrlError, match="lora.*full"):
        FinetuneConfig(method="dora").resolved_lr()
    with pytest.raises(Exception):
        get_method("lora").default_lr = 1.0  # frozen


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", METHODS)
def test_trainable_units_agree_with_apply_peft(method, granularity):
    units = enumerate_units(fresh_unet(), granularity)
    can = trainable_units(fresh_unet(), units, method, granularity)
    assert can == tuple(u for u in units if u in set(can))  # in the units' order
    assert trainable_units(fresh_unet(), None, method, granularity) == can
    result = apply_peft(fresh_unet(), Mask.parse("all", units), method, granularity=granularity)
    assert can == tuple(u for u, n in result.per_unit.items() if n > 0)
    if method in (*PEFT_ADAPTER_METHODS, "attention"):
        # no attention projection, nothing to train: the 16x16 blocks (DownBlock2D, UpBlock2D), the resnets
        no_attention = {"down_blocks.0", "up_blocks.2"} if granularity == "block" else {u for u in units if ".resnets." in u}
        assert can == tuple(u for u in units if u not in no_attention)
    else:
        assert can == tuple(units)


def test_trainable_units_subset_and_errors():
    unet = fresh_unet()
    blocks = enumerate_units(unet, "block")
    assert trainable_units(unet, ["up_blocks.2", "down_blocks.0", "mid_block"], "lora", "block") == ("mid_block",)
    assert trainable_units(unet, Mask.parse("down_blocks.0,up_blocks.1", blocks), "oft", "block") == ("up_blocks.1",)
    assert trainable_units(unet, ["down_blocks.0"], "difffit", "block") == ("down_blocks.0",)
    with pytest.raises(MemrlError, match="valid: down_blocks.0"):
        trainable_units(unet, ["down_blocks.9"], "lora", "block")
    with pytest.raises(MemrlError, match="unknown PEFT method"):
        trainable_units(unet, None, "dora", "block")
    # a UNet that already carries an adapter is inspected the same way
    apply_peft(unet, Mask.parse("all", blocks), "lora", granularity="block")
    assert trainable_units(unet, None, "lora", "block") == trainable_units(fresh_unet(), None, "lora", "block")
