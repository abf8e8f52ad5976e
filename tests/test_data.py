import numpy as np
import pytest
import torch
from PIL import Image

from memrl.data import digits
from memrl.data.loaders import load_dataset
from memrl.errors import MemrlError


def test_splits_are_deterministic_and_disjoint():
    names = ["public/train", "public/heldout"] + [f"{v}/{s}" for v in digits.VARIANTS for s in ("train", "heldout")]
    seen: set[int] = set()
    for n in names:
        idx = digits.split_indices(n)
        assert len(set(idx.tolist())) == len(idx)
        assert not (seen & set(idx.tolist())), f"{n} overlaps another split"
        seen |= set(idx.tolist())
        np.testing.assert_array_equal(idx, digits.split_indices(n))
    assert len(digits.split_indices("public/train")) == 850
    assert len(digits.split_indices("inverted/train")) == 70


def test_images_range_and_shape():
    pub = digits.public_splits()
    assert pub.train.images.shape == (850, 1, 16, 16)
    assert pub.train.images.min() >= -1 and pub.train.images.max() <= 1
    for v in digits.VARIANTS:
        ds = digits.variant_splits(v)
        assert ds.train.images.shape[1:] == (1, 16, 16)
        assert ds.train.images.min() >= -1 and ds.train.images.max() <= 1


def test_variants_are_other_domains():
    """Each style transform moves images far from the public (original) style."""
    pub = digits.public_splits().train.images
    for v in digits.VARIANTS:
        ds = digits.variant_splits(v)
        raw = digits.upsample(digits._raw()[0][digits.split_indices(f"{v}/train")])
        diff = (ds.train.images - raw).abs().mean().item()
        assert diff > 0.05, f"variant {v} barely changes images ({diff:.3f})"
    assert pub.mean() < -0.3  # dark background in the public style


def test_captions_are_measured_and_mostly_distinct():
    caps = digits.all_captions()
    labels = digits._raw()[1]
    assert all(c.startswith(f"digit {int(k)},") for c, k in zip(caps, labels))
    assert len(set(caps)) / len(caps) > 0.6
    for v in digits.VARIANTS:
        tc = digits.variant_splits(v).train.captions
        assert len(set(tc)) / len(tc) > 0.85
    # the same image gets the same caption in any split
    assert digits.public_splits().train.captions[:5] == digits.public_splits().train.captions[:5]


def test_fingerprint_changes_with_content():
    a = digits.variant_splits("inverted")
    b = digits.variant_splits("thick")
    assert a.fingerprint() == digits.variant_splits("inverted").fingerprint()
    assert a.fingerprint() != b.fingerprint()


def _write_images(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        Image.fromarray((rng.rand(20, 20) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return [f"im{i}.png" for i in range(n)]


def test_folder_with_sidecar_captions(tmp_path):
    files = _write_images(tmp_path / "d")
    for i, f in enumerate(files):
        (tmp_path / "d" / f).with_suffix(".txt").write_text(f"caption {i}\n")
    ds = load_dataset(tmp_path / "d", heldout_fraction=0.34)
    assert len(ds.train) + len(ds.heldout) == 6 and len(ds.heldout) == 2
    assert ds.train.images.shape[1:] == (1, 16, 16)
    assert all(c.startswith("caption") for c in ds.train.captions)
    again = load_dataset(tmp_path / "d", heldout_fraction=0.34)
    assert again.train.captions == ds.train.captions


def test_csv_with_split_column(tmp_path):
    files = _write_images(tmp_path / "img")
    rows = ["path,caption,split"] + [f"img/{f},report {i},{'heldout' if i < 2 else 'train'}" for i, f in enumerate(files)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "data.csv", image_size=8, channels=3)
    assert ds.heldout.captions == ["report 0", "report 1"]
    assert ds.train.images.shape == (4, 3, 8, 8)


def test_metadata_csv_folder(tmp_path):
    files = _write_images(tmp_path / "d", 4)
    (tmp_path / "d" / "metadata.csv").write_text("file_name,text\n" + "".join(f"{f},t{i}\n" for i, f in enumerate(files)))
    ds = load_dataset(tmp_path / "d")
    assert sorted(ds.train.captions + ds.heldout.captions) == ["t0", "t1", "t2", "t3"]


@pytest.mark.parametrize(
    "setup, pattern",
    [
        ("missing", "not found"),
        ("empty", "is empty"),
        ("nocol", "missing the caption column"),
        ("badimg", "cannot read image"),
        ("nocaption", "no caption for"),
    ],
)
def test_bad_input_gives_clear_errors(tmp_path, setup, pattern):
    if setup == "missing":
        spec = tmp_path / "nope"
    elif setup == "empty":
        (tmp_path / "e").mkdir()
        spec = tmp_path / "e"
    elif setup == "nocol":
        _write_images(tmp_path / "i", 2)
        (tmp_path / "x.csv").write_text("path,label\ni/im0.png,1\ni/im1.png,2\n")
        spec = tmp_path / "x.csv"
    elif setup == "badimg":
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "a.png").write_text("not an image")
        (tmp_path / "b" / "a.txt").write_text("cap")
        (tmp_path / "b" / "c.png").write_text("not an image")
        (tmp_path / "b" / "c.txt").write_text("cap")
        spec = tmp_path / "b"
    else:
        _write_images(tmp_path / "n", 2)
        spec = tmp_path / "n"
    with pytest.raises(MemrlError, match=pattern):
        load_dataset(spec)


def test_builtin_names_resolve():
    a = load_dataset("inverted")
    b = load_dataset("digits/inverted")
    assert torch.equal(a.train.images, b.train.images)
    with pytest.raises(MemrlError, match="not a built-in variant"):
        load_dataset("no-such-variant")
