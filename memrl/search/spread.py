"""Spread a ranked list of proposals out in mask space, for a warm start that explores.

A warm start (``memrl search --warm-start POLICY`` or ``--warm-start-tables DIR``) enqueues the
first ``warm_start_k`` proposals of a ranked list. A policy's list is ranked by probability, and its
next proposals are close to its first (on the family's test members the ensemble's top four
differed in one or two blocks): when the first is wrong, so are the next ones, and the real
evaluations they cost teach the optimizer little. :func:`spread` reorders the list greedily,
keeping its order otherwise: a proposal is taken when it differs from every proposal taken so far
in at least ``min_distance`` blocks (Hamming distance between the masks); the ones skipped come
back in later passes with the distance relaxed by one, down to 0, so the result is a permutation
of the list and its first item is the list's first (the zero-shot pick is unchanged).

``min_distance=0`` is the identity. The masks compared are the proposals' bitstrings (over the
maskable units, ``1`` = trained), so only proposals of one space can be spread together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from memrl.errors import MemrlError

T = TypeVar("T")


def hamming(a: str, b: str) -> int:
    """The number of blocks in which two masks (bitstrings of one length) differ."""
    if len(a) != len(b):
        raise MemrlError(f"masks {a!r} and {b!r} have different lengths ({len(a)} and {len(b)} units): they are not of one search space")
    return sum(x != y for x, y in zip(a, b))


def spread(items: Sequence[T], min_distance: int, bits: Callable[[T], str] = str) -> list[T]:
    """``items`` reordered so that each one taken differs from all taken before it in at least
    ``min_distance`` blocks where possible (greedy, in the list's order; the rest in passes with
    the distance relaxed by one). ``bits`` maps an item to its mask's bitstring."""
    if min_distance < 0:
        raise MemrlError(f"the minimum Hamming distance between proposals must be >= 0, got {min_distance}")
    left = list(items)
    if min_distance == 0 or len(left) < 2:
        return left
    taken: list[T] = []
    masks: list[str] = []
    for d in range(min_distance, -1, -1):
        rest = []
        for item in left:
            b = bits(item)
            if all(hamming(b, m) >= d for m in masks):
                taken.append(item)
                masks.append(b)
            else:
                rest.append(item)
        left = rest
        if not left:
            break
    return taken
