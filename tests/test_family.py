"""The seeded dataset family (memrl.data.family): determinism, ranges, disjointness, spread."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from memrl.data import digits, family
from memrl.data.loaders import load_dataset
from memrl.envs.descriptor import duplication_rate
from memrl.errors import MemrlError

ALL_IDS = [i for a, b in family.RANGES.values() for i in range(a, b)]


def test_same_id_identical_in_process():
    a, b = family.member(5), family.member(5)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.heldout.images, b.heldout.images)
    assert a.train.captions == b.train.captions and a.heldout.captions == b.heldout.captions
    # returned tensors are fresh: modifying one does not change the cache
    a.train.images.zero_()
    assert not torch.equal(a.train.images, family.member(5).train.images)
    assert family.member(5).name == "family/5"


def test_same_id_identical_in_subprocess():
    code = "from memrl.data import family; print(family.member(17).fingerprint(), family.member(90).fingerprint())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ))
    assert out.stdout.split() == [family.member(17).fingerprint(), family.member(90).fingerprint()]


def test_different_ids_differ():
    prints = {family.member(i).fingerprint() for i in range(0, 112, 7)}
    assert len(prints) == len(range(0, 112, 7))
    assert family.describe(0) != family.describe(1)


def test_ranges_partition_and_refusal():
    spans = sorted(family.RANGES.values())
    assert spans[0][0] == 0 and spans[-1][1] == 112
    assert all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))
    assert [family.split_of(i) for i in (0, 63, 64, 79, 80, 111)] == ["train", "train", "validation", "validation", "test", "test"]
    for bad in (-1, 112, 999):
        with pytest.raises(MemrlError, match="train 0..63"):
            family.split_of(bad)
    with pytest.raises(MemrlError, match="train 0..63, validation 64..79, test 80..111"):
        load_dataset("family:999")
    with pytest.raises(MemrlError, match="integer"):
        load_dataset("family:abc")
    with pytest.raises(MemrlError):
        family.member(True)


def test_load_dataset_dispatch_matches_member():
    d = load_dataset("family:3")
    m = family.member(3)
    assert d.name == "family/3"
    assert torch.equal(d.train.images, m.train.images) and d.train.captions == m.train.captions
    assert load_dataset("family:3", image_size=32).train.images.shape[-1] == 32


def test_every_member_well_formed_and_disjoint():
    for i in ALL_IDS:
        d = family.member(i)
        for part in (d.train, d.heldout):
            assert part.images.shape[1:] == (1, digits.IMAGE_SIZE, digits.IMAGE_SIZE)
            assert part.images.dtype == torch.float32
            assert float(part.images.min()) >= -1 and float(part.images.max()) <= 1
            assert all(part.captions)
        assert len(d.heldout) >= 192
        train_rows = {r.numpy().tobytes() for r in d.train.images}
        assert not any(r.numpy().tobytes() in train_rows for r in d.heldout.images), i
        # the held-out digits are other digits than the training digits
        p = family._plan(i)
        assert not set(p["heldout_idx"].tolist()) & set(p["base_idx"].tolist())


def _scalars(ds) -> tuple[float, float, float]:
    n = len(ds.train)
    return np.log(n), duplication_rate(ds.train.images), len(set(ds.train.captions)) / n


def test_descriptor_scalars_vary_more_than_builtins():
    fam = np.array([_scalars(family.member(i)) for i in family.ids("train")])
    built = np.array([_scalars(digits.variant_splits(v)) for v in digits.VARIANTS])
    fam_sd, built_sd = fam.std(0), built.std(0)
    thresholds = np.array([0.3, 0.1, 0.1])  # log size, duplication rate, distinct-caption share
    assert (fam_sd > thresholds).all(), fam_sd
    assert (fam_sd > built_sd).all(), (fam_sd, built_sd)
    # the built-ins really are (nearly) constant on these: none of them reaches its threshold
    assert (built_sd < thresholds).all(), built_sd


def test_describe_agrees_with_data():
    styles = set()
    for i in ALL_IDS:
        info, d = family.describe(i), family.member(i)
        assert info["name"] == d.name == f"family/{i}"
        assert info["split"] == family.split_of(i)
        assert info["n_train"] == len(d.train) and info["n_heldout"] == len(d.heldout)
        assert 2 <= len(info["style"]) <= 4 and all(t["name"] in family.TRANSFORMS for t in info["style"])
        assert info["n_private_train"] + info["n_resampled"] + info["n_duplicates"] == info["n_train"]
        assert sum(info["heldout_sources"].values()) == info["n_heldout"]
        classes = {int(c.split(",")[0].split()[1]) for c in d.train.captions + d.heldout.captions}
        assert classes <= set(info["classes"])
        held_classes = {int(c.split(",")[0].split()[1]) for c in d.heldout.captions}
        assert held_classes == set(info["classes"])
        rich = ["," in c for c in d.train.captions + d.heldout.captions]
        if info["caption_style"] == "terse":
            assert not any(rich)
        elif info["caption_style"] == "rich":
            assert all(rich)
        else:
            assert any(rich) and not all(rich)
        styles.add(info["caption_style"])
    assert styles == set(family.CAPTION_STYLES)
    # members that need more training digits than the pool gives resample with jitter, and some
    # held-out sets reach into the public split
    infos = [family.describe(i) for i in ALL_IDS]
    assert any(x["n_resampled"] > 0 for x in infos)
    assert any(x["heldout_sources"]["public/heldout"] > 0 for x in infos)


def test_generation_is_fast():
    import time

    family._build.cache_clear()
    t = time.perf_counter()
    family.member(42)
    assert time.perf_counter() - t < 1.0
