"""memrl.search.spread: a ranked list of proposals reordered to explore, its first item kept."""

from __future__ import annotations

import itertools

import pytest

from memrl.errors import MemrlError
from memrl.search.spread import hamming, spread


def test_hamming_counts_differing_blocks_and_refuses_masks_of_two_spaces():
    assert hamming("0011111", "1101111") == 3
    assert hamming("0000", "0000") == 0
    with pytest.raises(MemrlError, match="different lengths"):
        hamming("001", "0011")


def test_distance_zero_is_the_identity_and_a_negative_one_is_refused():
    ranked = ["1101111", "1101101", "1100111", "0011111"]
    assert spread(ranked, 0) == ranked
    with pytest.raises(MemrlError, match=">= 0"):
        spread(ranked, -1)


def test_spread_takes_far_proposals_first_then_the_skipped_ones_in_order():
    # the ensemble's list on family:82 (close to each other), then a far mask
    ranked = ["1101101", "1101111", "1100111", "1100101", "0011010", "0010010"]
    out = spread(ranked, 2)
    assert out[0] == ranked[0]  # the zero-shot pick never moves
    assert sorted(out) == sorted(ranked)  # a permutation: nothing lost, nothing added
    # pass d=2 in list order: 1101101; 1101111 (1 away) skipped; 1100111 (2 away) taken; 1100101 (1 from
    # 1101101) skipped; 0011010 taken; 0010010 (1 from 0011010) skipped; then d=1: 1101111, 1100101 and 0010010
    assert out == ["1101101", "1100111", "0011010", "1101111", "1100101", "0010010"]


def test_the_first_pass_is_a_maximal_spread_prefix():
    """The items taken before the distance is first relaxed are each ``d`` or more from all before
    them, and no later item is ``d`` or more from all of them (else the pass would have taken it)."""
    ranked = ["".join(b) for b in itertools.product("01", repeat=4)]
    for d in (1, 2, 3):
        out = spread(ranked, d)
        assert sorted(out) == sorted(ranked)
        floors = [min(hamming(out[i], out[j]) for j in range(i)) for i in range(1, len(out))]
        j = next((i + 1 for i, f in enumerate(floors) if f < d), len(out))
        assert j >= 2 and all(f >= d for f in floors[: j - 1])
        assert all(min(hamming(x, y) for y in out[:j]) < d for x in out[j:])
    assert spread(ranked, 4)[:2] == ["0000", "1111"]


def test_spread_reads_the_bits_of_any_item():
    items = [("1100", "lora"), ("1101", "lora"), ("0011", "lora")]
    assert spread(items, 2, bits=lambda x: x[0]) == [("1100", "lora"), ("0011", "lora"), ("1101", "lora")]
