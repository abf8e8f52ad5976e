"""A binary mask over named units: which units' PEFT parameters train (bit 1) and which not (bit 0).

A mask always carries its unit names (docs/design.md, section 2: never a bare bit-string alone), so a
mask saved with one model is checked, not silently misread, against another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from memrl.errors import MemrlError


def _valid(units: Sequence[str]) -> str:
    return ", ".join(units) if units else "(no units)"


@dataclass(frozen=True)
class Mask:
    """``bits[i]`` (0 or 1) says whether ``units[i]`` is selected for fine-tuning.

    Printing: ``all`` (every unit selected), ``none`` (no unit selected: the pretrained model),
    else the selected unit names joined by commas. :meth:`parse` reads all of these back.
    """

    units: tuple[str, ...]
    bits: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(str(u) for u in self.units))
        try:
            object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        except (TypeError, ValueError):
            raise MemrlError(f"mask bits must be 0 or 1, got {self.bits!r}") from None
        if len(self.bits) != len(self.units):
            raise MemrlError(f"mask has {len(self.bits)} bits for {len(self.units)} units: {_valid(self.units)}")
        if any(b not in (0, 1) for b in self.bits):
            raise MemrlError(f"mask bits must be 0 or 1, got {self.bits!r}")
        if len(set(self.units)) != len(self.units):
            raise MemrlError(f"mask unit names repeat: {_valid(self.units)}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_bits(cls, bits: Iterable[int] | str, units: Sequence[str]) -> "Mask":
        """From a sequence of 0/1 (or a ``"0101..."`` string), one per unit, in unit order."""
        return cls(tuple(units), tuple(int(b) if not isinstance(b, str) else _bit(b, units) for b in bits))

    @classmethod
    def parse(cls, spec: str, units: Sequence[str]) -> "Mask":
        """Read ``all``, ``none``, a bit string of exactly ``len(units)`` chars, or comma-separated names."""
        units = tuple(units)
        text = (spec or "").strip()
        if not text:
            raise MemrlError(f"empty mask; give all, none, a {len(units)}-bit string or unit names from: {_valid(units)}")
        if text.lower() == "all":
            return cls(units, (1,) * len(units))
        if text.lower() == "none":
            return cls(units, (0,) * len(units))
        if set(text) <= {"0", "1"}:
            if len(text) != len(units):
                raise MemrlError(
                    f"mask bit string {text!r} has {len(text)} bits, expected {len(units)} (one per unit: {_valid(units)})"
                )
            return cls(units, tuple(int(c) for c in text))
        names = [n.strip() for n in text.split(",")]
        names = [n for n in names if n]
        unknown = [n for n in names if n not in units]
        if unknown or not names:
            raise MemrlError(f"unknown mask unit(s) {', '.join(unknown) or repr(text)}; valid units: {_valid(units)}")
        chosen = set(names)
        return cls(units, tuple(int(u in chosen) for u in units))

    # -- views ----------------------------------------------------------------------------------
    @property
    def bitstring(self) -> str:
        """The bits as a ``"0110..."`` string in unit order."""
        return "".join(str(b) for b in self.bits)

    @property
    def selected(self) -> tuple[str, ...]:
        """Names of the units whose bit is 1, in unit order."""
        return tuple(u for u, b in zip(self.units, self.bits) if b)

    @property
    def is_none(self) -> bool:
        """True when no unit is selected (nothing trains: the pretrained model)."""
        return not any(self.bits)

    @property
    def is_all(self) -> bool:
        """True when every unit is selected (and there is at least one unit)."""
        return bool(self.bits) and all(self.bits)

    def __str__(self) -> str:
        if self.is_none:
            return "none"
        if self.is_all:
            return "all"
        return ",".join(self.selected)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: unit names, bits, and the selected names (redundant, for people reading it)."""
        return {"units": list(self.units), "bits": list(self.bits), "selected": list(self.selected)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], units: Sequence[str] | None = None) -> "Mask":
        """Inverse of :meth:`to_dict`; with ``units``, also check the mask was made for those units."""
        try:
            mask = cls(tuple(data["units"]), tuple(data["bits"]))
        except (KeyError, TypeError):
            raise MemrlError("mask dict needs 'units' (list of names) and 'bits' (list of 0/1)") from None
        if units is not None and tuple(units) != mask.units:
            raise MemrlError(f"mask was made for units {_valid(mask.units)}; this model has: {_valid(tuple(units))}")
        return mask


def _bit(c: str, units: Sequence[str]) -> int:
    if c not in ("0", "1"):
        raise MemrlError(f"mask bits must be 0 or 1, got {c!r} (units: {_valid(units)})")
    return int(c)
