"""Maskable units of a diffusers UNet: the named sub-modules a mask switches on or off.

A *unit* is a sub-module of a ``UNet2DConditionModel`` named by its dotted module path. The
search space of the paper has one bit per cross-attention block (``Transformer2DModel``; SD 1.5
has 16 of them); finer or coarser granularities are a configuration choice (docs/design.md, section 2).
Units are found by module path, not by class, so every diffusers UNet2DConditionModel works
(whatever its block types), and the order is stable: down path, mid block, up path, each sorted
numerically (``down_blocks.2`` before ``down_blocks.10``), a block's resnet before its attention
of the same index (the forward order).
"""

from __future__ import annotations

import re

from torch import nn

from memrl.errors import MemrlError

GRANULARITIES: tuple[str, ...] = ("attention", "attention+resnet", "block")

_BLOCK = r"(?P<path>down_blocks|mid_block|up_blocks)(?:\.(?P<block>\d+))?"
_BLOCK_RE = re.compile(rf"^{_BLOCK}$")
_SUB_RE = re.compile(rf"^{_BLOCK}\.(?P<kind>attentions|resnets)\.(?P<sub>\d+)$")
_PATH_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_KIND_RANK = {"resnets": 0, "attentions": 1}


def _is_block(match: re.Match[str]) -> bool:
    """``mid_block`` has no index, ``down_blocks``/``up_blocks`` need one (the ModuleList itself is no unit)."""
    return (match["path"] == "mid_block") == (match["block"] is None)


def _sort_key(name: str) -> tuple[int, int, int, int]:
    m = _SUB_RE.match(name) or _BLOCK_RE.match(name)
    assert m is not None
    kind = m.groupdict().get("kind")
    sub = m.groupdict().get("sub")
    return (
        _PATH_RANK[m["path"]],
        int(m["block"]) if m["block"] is not None else 0,
        int(sub) if sub is not None else -1,
        _KIND_RANK[kind] if kind is not None else -1,
    )


def enumerate_units(unet: nn.Module, granularity: str = "attention") -> list[str]:
    """The maskable unit names of ``unet`` in a stable order (down, mid, up; numeric within each).

    ``"attention"``: each member of a block's ``attentions`` list (a ``Transformer2DModel`` in SD);
    ``"attention+resnet"``: also each member of a block's ``resnets`` list (``ResnetBlock2D``);
    ``"block"``: each top-level ``down_blocks.i``, ``mid_block`` and ``up_blocks.i``.
    """
    if granularity not in GRANULARITIES:
        raise MemrlError(f"unknown unit granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    kinds = {"attention": ("attentions",), "attention+resnet": ("attentions", "resnets")}.get(granularity, ())
    units = []
    for name, _ in unet.named_modules():
        if granularity == "block":
            m = _BLOCK_RE.match(name)
            if m and _is_block(m):
                units.append(name)
        else:
            m = _SUB_RE.match(name)
            if m and _is_block(m) and m["kind"] in kinds:
                units.append(name)
    return sorted(units, key=_sort_key)


def unit_of(name: str, units: tuple[str, ...] | list[str]) -> str | None:
    """The unit that a parameter/buffer/module name (e.g. a ``state_dict`` key) lies in, or None.

    Works for names that peft or a parametrization rewrote (``...to_q.base_layer.weight``,
    ``...to_q.parametrizations.weight.original``), since those keep the unit's path as prefix.
    """
    for unit in units:
        if name == unit or name.startswith(unit + "."):
            return unit
    return None
