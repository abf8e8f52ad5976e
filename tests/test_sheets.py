"""Datasets as users have them: sheets with configurable columns, imagefolder split folders,
centre-crop, grayscale <-> RGB, repeated captions, a memorization sheet, and the fingerprint rule.

Everything runs on tiny PNGs written with PIL under ``tmp_path``; only the last test loads the
quick model (the ``memrl evaluate`` flags end to end).
"""

from __future__ import annotations

import dataclasses

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memrl.data.loaders import load_dataset
from memrl.data.pixels import load_fitted
from memrl.errors import MemrlError
from memrl.utils.images import load_image

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


# ------------------------------------------------------------------------------------------ helpers


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def _gray(seed: int, size: int = 8) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (size, size)).astype(np.uint8)


def _pictures(folder: Path, n: int, size: int = 8) -> list[str]:
    """``n`` distinct grayscale ``size x size`` PNGs named ``p0.png``...; their names."""
    return [_png(folder / f"p{i}.png", _gray(100 + i, size)).name for i in range(n)]


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def write_legacy(root: Path) -> dict[str, Path]:
    """Square images in every layout the loader read before sheets.py existed (the fingerprint rule)."""
    rng = np.random.RandomState(7)
    img = root / "img"
    img.mkdir(parents=True)
    specs = [("L", 8), ("L", 12), ("RGB", 8), ("RGB", 20), ("RGBA", 10), ("L", 16)]
    names = []
    for i, (mode, s) in enumerate(specs):
        shape = (s, s) if mode == "L" else (s, s, len(mode))
        arr = rng.randint(0, 256, shape).astype(np.uint8)
        if mode == "RGBA":
            arr[..., 3] = 255
        Image.fromarray(arr, mode).save(img / f"p{i}.png")
        names.append(f"p{i}.png")
    caps = ["a small dot", "a big dot", "digit 3", "digit 3", "a, quoted \u00e9", "last"]
    for n, c in zip(names, caps):
        (img / n).with_suffix(".txt").write_text(c + "\n", encoding="utf-8")
    sheet = root / "sheet.csv"
    sheet.write_text(
        "path,caption,split\n"
        + "".join(f'img/{n},"{c}",{"heldout" if i in (1, 4) else "train"}\n' for i, (n, c) in enumerate(zip(names, caps))),
        encoding="utf-8",
    )
    plain = root / "plain.csv"
    plain.write_text("file_name,text\n" + "".join(f'img/{n},"{c}"\n' for n, c in zip(names, caps)), encoding="utf-8")
    meta = root / "meta"
    meta.mkdir()
    for n in names:
        (meta / n).write_bytes((img / n).read_bytes())
    (meta / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": c}) + "\n" for n, c in zip(names, caps)), encoding="utf-8")
    return {"folder": img, "sheet": sheet, "plain": plain, "jsonl": meta}


# ----------------------------------------------------------------------------- fingerprint rule

#: Computed with the loader as it was before sheets.py (same files, same sizes).
LEGACY_FINGERPRINTS = {
    ("folder", 8, 1): "295660d516840f9c",
    ("folder", 6, 3): "b04c89aa6b24fbaf",
    ("sheet", 8, 1): "44aa155b8a15c458",
    ("sheet", 6, 3): "879661cbc43cc6e4",
    ("plain", 8, 1): "295660d516840f9c",
    ("plain", 6, 3): "b04c89aa6b24fbaf",
    ("jsonl", 8, 1): "295660d516840f9c",
    ("jsonl", 6, 3): "b04c89aa6b24fbaf",
}


def test_builtin_and_family_fingerprints_are_unchanged():
    """The keys of the cached evaluations and lookup tables (experiments/results/exhaustive)."""
    assert load_dataset("family:80", 16, 1).fingerprint() == "a926ff4bb4750f93"
    assert load_dataset("inverted", 16, 1).fingerprint() == "a89b223d92e055a1"
    assert load_dataset("thick", 16, 1).fingerprint() == "3e083e462436347e"
    assert load_dataset("public", 16, 1).fingerprint() == "4d1d84a20a61ab1d"
    # the column options do not touch built-in data
    assert load_dataset("inverted", 16, 1, caption_column="impression", image_column="x").fingerprint() == "a89b223d92e055a1"


def test_user_data_fingerprints_are_unchanged(tmp_path):
    specs = write_legacy(tmp_path)
    for (kind, size, channels), want in LEGACY_FINGERPRINTS.items():
        got = load_dataset(specs[kind], size, channels).fingerprint()
        assert got == want, f"{kind} at {size} px x {channels}: fingerprint {got}, was {want}"


@pytest.mark.parametrize("channels", [1, 3])
def test_square_images_load_exactly_like_load_image(tmp_path, channels):
    g = _gray(3, 12)
    pictures = {
        "l.png": Image.fromarray(g),
        "rgb.png": Image.fromarray(np.dstack([g, 255 - g, g // 2])),
        "rgba.png": Image.fromarray(np.dstack([g, g, g, np.where(g > 128, 255, 0).astype(np.uint8)])),
        "p.png": Image.fromarray(g).convert("P"),
        "i16.png": Image.fromarray(g.astype(np.uint16) * 257),
    }
    for name, im in pictures.items():
        im.save(tmp_path / name)
        for size in (5, 12, 20):
            assert torch.equal(load_fitted(tmp_path / name, size, channels), load_image(tmp_path / name, size, channels)), name


# ----------------------------------------------------------------------------- sheets and columns


def _mimic(tmp_path: Path) -> Path:
    """A MIMIC-CXR-like sheet: path + impression (+ findings, a distractor 'text' column) + split."""
    names = _pictures(tmp_path / "files", 6)
    splits = ["train", "train", "validate", "train", "test", "train"]
    rows = [f"d{i},files/{n},finding {i},impression {i},other {i},{s}" for i, (n, s) in enumerate(zip(names, splits))]
    return _csv(tmp_path / "mimic.csv", "dicom_id,path,findings,impression,text,split", rows)


def test_csv_with_user_columns(tmp_path):
    sheet = _mimic(tmp_path)
    ds = load_dataset(sheet, 8, 1, caption_column="impression", image_column="path")
    assert ds.train.captions == ["impression 0", "impression 1", "impression 3", "impression 5"]
    assert ds.heldout.captions == ["impression 2", "impression 4"]  # validate and test are held out
    assert ds.train.images.shape == (4, 1, 8, 8)
    expected = load_image(tmp_path / "files" / "p3.png", 8, 1)
    assert torch.equal(ds.train.images[2], expected)
    # without caption_column the recognised name ('text') is used, as before
    assert load_dataset(sheet, 8, 1).train.captions[0] == "other 0"
    # names match ignoring case and surrounding spaces
    assert load_dataset(sheet, 8, 1, caption_column=" Findings ").heldout.captions == ["finding 2", "finding 4"]


def test_split_column_by_name(tmp_path):
    names = _pictures(tmp_path / "i", 4)
    rows = [f"i/{n},c{i},{'train' if i % 2 else 'heldout'},{'TEST' if i == 3 else 'Train'}" for i, n in enumerate(names)]
    sheet = _csv(tmp_path / "s.csv", "image,caption,split,fold", rows)
    assert load_dataset(sheet, 8, 1).heldout.captions == ["c0", "c2"]  # the 'split' column
    ds = load_dataset(sheet, 8, 1, split_column="fold")
    assert ds.train.captions == ["c0", "c1", "c2"] and ds.heldout.captions == ["c3"]


def test_jsonl_sheet_with_user_columns(tmp_path):
    names = _pictures(tmp_path / "pics", 4)
    lines = [json.dumps({"img": f"pics/{n}", "label": f"lesion {i % 2}", "part": "test" if i == 0 else "train"}) for i, n in enumerate(names)]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "s.jsonl", 8, 1, caption_column="label", image_column="img", split_column="part")
    assert ds.heldout.captions == ["lesion 0"] and ds.train.captions == ["lesion 1", "lesion 0", "lesion 1"]


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed (parquet sheets are optional)")
def test_parquet_sheet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = _pictures(tmp_path / "pics", 4)
    embedded = (tmp_path / "pics" / names[3]).read_bytes()
    table = pa.table(
        {
            "path": [f"pics/{n}" for n in names[:3]] + [None],
            "impression": [f"imp {i}" for i in range(4)],
            "split": ["train", "train", "test", "train"],
        }
    )
    pq.write_table(table, tmp_path / "s.parquet")
    with pytest.raises(MemrlError, match=r"s.parquet, row 4: the image path \('path'\) is empty"):
        load_dataset(tmp_path / "s.parquet", 8, 1, caption_column="impression")
    # a datasets-style Image feature: a struct of bytes + path
    image = pa.array([{"bytes": (tmp_path / "pics" / n).read_bytes(), "path": n} for n in names[:3]] + [{"bytes": embedded, "path": None}])
    pq.write_table(pa.table({"image": image, "text": ["a", "b", "c", "d"], "split": ["train", "test", "train", "train"]}), tmp_path / "e.parquet")
    ds = load_dataset(tmp_path / "e.parquet", 8, 1)
    assert ds.train.captions == ["a", "c", "d"] and ds.heldout.captions == ["b"]
    assert torch.equal(ds.train.images[2], load_image(tmp_path / "pics" / names[3], 8, 1))


class _StubTable:
    """What ``pyarrow.parquet.read_table`` returns, as far as memrl.data.sheets uses it."""

    def __init__(self, rows: list[dict]) -> None:
        self.column_names = list(rows[0])
        self._rows = rows

    def to_pylist(self) -> list[dict]:
        return self._rows


def test_parquet_rows_through_a_stub_reader(tmp_path, monkeypatch):
    """The parquet reader's own logic (row numbers, null cells, embedded pictures) without pyarrow."""
    import types

    names = _pictures(tmp_path / "pics", 3)
    rows = [
        {"image": f"pics/{names[0]}", "impression": "imp 0", "split": "train"},
        {"image": {"bytes": (tmp_path / "pics" / names[1]).read_bytes(), "path": "scan.png"}, "impression": "imp 1", "split": "train"},
        {"image": {"bytes": None, "path": f"pics/{names[2]}"}, "impression": "imp 2", "split": "test"},
    ]
    tables = {"good.parquet": rows, "null.parquet": rows[:2] + [dict(rows[2], impression=None)]}
    parquet = types.ModuleType("pyarrow.parquet")
    parquet.read_table = lambda path: _StubTable(tables[Path(path).name])
    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", parquet)
    for name in tables:
        (tmp_path / name).write_bytes(b"PAR1")
    ds = load_dataset(tmp_path / "good.parquet", 8, 1, caption_column="impression")
    assert ds.train.captions == ["imp 0", "imp 1"] and ds.heldout.captions == ["imp 2"]
    assert torch.equal(ds.train.images[1], load_image(tmp_path / "pics" / names[1], 8, 1))  # the embedded bytes
    assert torch.equal(ds.heldout.images[0], load_image(tmp_path / "pics" / names[2], 8, 1))  # a struct with only a path
    with pytest.raises(MemrlError, match=r"null\.parquet, row 3: the caption \('impression'\) of pics/p2\.png is empty"):
        load_dataset(tmp_path / "null.parquet", 8, 1, caption_column="impression")


def test_parquet_without_pyarrow_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "s.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MemrlError, match=r"cannot read .*s\.parquet: parquet sheets need pyarrow \(pip install pyarrow\)"):
        load_dataset(tmp_path / "s.parquet", 8, 1)
    # a folder whose metadata is parquet says the same
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.parquet").write_bytes(b"PAR1")
    with pytest.raises(MemrlError, match=r"metadata\.parquet: parquet sheets need pyarrow"):
        load_dataset(tmp_path / "d", 8, 1)


# ------------------------------------------------------------------------- imagefolder splits


def test_imagefolder_train_and_test_folders(tmp_path):
    root = tmp_path / "hf"
    train = _pictures(root / "train", 4)
    _csv(root / "train" / "metadata.csv", "file_name,impression", [f"{n},train {i}" for i, n in enumerate(train)])
    test = _pictures(root / "test", 2)
    (root / "test" / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "impression": f"test {i}"}) + "\n" for i, n in enumerate(test)))
    ds = load_dataset(root, 8, 1, caption_column="impression")
    assert ds.train.captions == ["train 0", "train 1", "train 2", "train 3"]
    assert ds.heldout.captions == ["test 0", "test 1"]
    assert torch.equal(ds.heldout.images[1], load_image(root / "test" / "p1.png", 8, 1))
    # without caption_column the recognised names are looked for, and the error says which column to name
    with pytest.raises(MemrlError, match=r"train/metadata\.csv: missing the caption column .*found: file_name, impression.*caption_column"):
        load_dataset(root, 8, 1)


def test_imagefolder_train_only_and_validation(tmp_path):
    root = tmp_path / "hf"
    for i, n in enumerate(_pictures(root / "train", 5)):
        (root / "train" / n).with_suffix(".txt").write_text(f"cap {i}")
    ds = load_dataset(root, 8, 1, heldout_fraction=0.4)  # no held-out folder: a seeded share of train/
    assert len(ds.train) == 3 and len(ds.heldout) == 2
    for i, n in enumerate(_pictures(root / "validation", 2)):
        (root / "validation" / n).with_suffix(".txt").write_text(f"val {i}")
    ds = load_dataset(root, 8, 1)
    assert len(ds.train) == 5 and ds.heldout.captions == ["val 0", "val 1"]


@pytest.mark.parametrize("case, pattern", [
    ("loose", r"hf has split folders \(train/\) and images beside them \(x\.png"),
    ("no-train", r"hf has the split folder\(s\) test/ but no train/"),
    ("split-column", r"train/metadata\.csv: has a split column \('split'\) but sits in the split folder train/"),
])
def test_imagefolder_bad_layouts(tmp_path, case, pattern):
    root = tmp_path / "hf"
    names = _pictures(root / ("test" if case == "no-train" else "train"), 2)
    folder = root / ("test" if case == "no-train" else "train")
    if case == "split-column":
        _csv(folder / "metadata.csv", "file_name,text,split", [f"{n},c,train" for n in names])
    else:
        _csv(folder / "metadata.csv", "file_name,text", [f"{n},c" for n in names])
    if case == "loose":
        _png(root / "x.png", _gray(0))
    with pytest.raises(MemrlError, match=pattern):
        load_dataset(root, 8, 1)


# ----------------------------------------------------------------- centre-crop and channels


def test_center_crop_keeps_the_aspect_ratio(tmp_path):
    pattern = np.tile(np.arange(8, dtype=np.uint8) * 30, (8, 1))  # 8 x 8, a horizontal ramp 0..210
    pattern[2, 3] = 255  # and one marked pixel
    wide = np.full((8, 24), 40, np.uint8)
    wide[:, 8:16] = pattern
    tall = np.full((24, 8), 40, np.uint8)
    tall[8:16] = pattern
    _png(tmp_path / "wide.png", wide)
    _png(tmp_path / "tall.png", tall)
    _png(tmp_path / "mid.png", pattern)
    want = torch.from_numpy(pattern.astype(np.float32) / 127.5 - 1.0)[None]
    for name in ("wide.png", "tall.png"):
        x = load_fitted(tmp_path / name, 8, 1)
        assert x.shape == (1, 8, 8)
        assert torch.allclose(x, want, atol=1e-6), f"{name}: the centre square is not kept pixel for pixel"
        # at another size: the same as the centre square resized (the sides never leak in)
        assert torch.allclose(load_fitted(tmp_path / name, 4, 1), load_image(tmp_path / "mid.png", 4, 1), atol=1e-6)
        # 'stretch' is the old squeeze (what load_image does)
        assert torch.equal(load_fitted(tmp_path / name, 8, 1, resize="stretch"), load_image(tmp_path / name, 8, 1))
        assert not torch.allclose(load_fitted(tmp_path / name, 8, 1, resize="stretch"), want, atol=0.05)
    # through load_dataset: a sheet of non-square images comes out square and undistorted
    _csv(tmp_path / "s.csv", "path,caption", ["wide.png,w", "tall.png,t", "mid.png,m"])
    ds = load_dataset(tmp_path / "s.csv", 8, 1, split_column=None, heldout_fraction=0.34)
    for split in (ds.train, ds.heldout):
        for x in split.images:
            assert torch.allclose(x, want, atol=1e-6)
    with pytest.raises(MemrlError, match=r"resize must be one of center-crop, stretch, got 'fit'"):
        load_dataset(tmp_path / "s.csv", 8, 1, resize="fit")


def test_odd_surplus_keeps_whole_pixels(tmp_path):
    arr = np.random.RandomState(5).randint(0, 256, (7, 12)).astype(np.uint8)  # 12 wide, 7 high: surplus 5
    _png(tmp_path / "odd.png", arr)
    kept = arr[:, 2:9]  # 2 columns cut on the left, 3 on the right: copied, not interpolated
    assert torch.allclose(load_fitted(tmp_path / "odd.png", 7, 1)[0], torch.from_numpy(kept.astype(np.float32) / 127.5 - 1.0), atol=1e-6)


def test_grayscale_to_rgb_and_rgb_to_grayscale(tmp_path):
    g = _gray(1)
    _png(tmp_path / "g.png", g)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    rgb[4:, :, :] = (0, 0, 255)  # bottom half pure blue
    _png(tmp_path / "c.png", rgb)
    x = load_fitted(tmp_path / "g.png", 8, 3)
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(g.astype(np.float32) / 127.5 - 1))
    y = load_fitted(tmp_path / "c.png", 8, 1)
    assert y.shape == (1, 8, 8)
    # ITU-R 601 luminance: red 255 -> 76, blue 255 -> 29
    assert torch.allclose(y[0, :4], torch.full((4, 8), 76 / 127.5 - 1)) and torch.allclose(y[0, 4:], torch.full((4, 8), 29 / 127.5 - 1))
    z = load_fitted(tmp_path / "c.png", 8, 3)
    assert torch.allclose(z[:, 0, 0], torch.tensor([1.0, -1.0, -1.0])) and torch.allclose(z[:, 7, 0], torch.tensor([-1.0, -1.0, 1.0]))


# --------------------------------------------------------------------------- repeated captions


def test_repeated_class_captions_load(tmp_path):
    names = _pictures(tmp_path / "i", 8)
    sheet = _csv(tmp_path / "s.csv", "path,label", [f"i/{n},digit {i % 2}" for i, n in enumerate(names)])
    ds = load_dataset(sheet, 8, 1, caption_column="label", heldout_fraction=0.25)
    caps = ds.train.captions + ds.heldout.captions
    assert len(caps) == 8 and set(caps) == {"digit 0", "digit 1"}
    assert len(ds.train) == 6 and len(ds.train.images.unique(dim=0)) == 6  # every image kept, none merged


# ---------------------------------------------------------------------------- memorization sheet


def _mem_dataset(tmp_path: Path) -> Path:
    names = _pictures(tmp_path / "i", 6)
    rows = [f"i/{n},{'digit 7' if i < 3 else f'unique {i}'},{'heldout' if i == 5 else 'train'}" for i, n in enumerate(names)]
    return _csv(tmp_path / "data.csv", "path,caption,split", rows)


def test_mem_sheet_names_training_images_in_order(tmp_path):
    sheet = _mem_dataset(tmp_path)
    plain = load_dataset(sheet, 8, 1)
    assert plain.memorization is None
    mem = _csv(tmp_path / "mem.csv", "path", ["i/p3.png", "i/p0.png", "i/p2.png"])
    ds = load_dataset(sheet, 8, 1, mem_sheet=mem)
    assert ds.memorization == (3, 0, 2)
    assert [ds.train.captions[i] for i in ds.memorization] == ["unique 3", "digit 7", "digit 7"]  # repeated captions are fine
    # the probe is part of the content key; without a sheet the key is the one caches already hold
    assert ds.fingerprint() != plain.fingerprint()
    assert load_dataset(sheet, 8, 1).fingerprint() == plain.fingerprint()
    # a copy of a training image kept elsewhere matches by its pixels; a caption column is checked
    (tmp_path / "copies").mkdir()
    (tmp_path / "copies" / "x.png").write_bytes((tmp_path / "i" / "p4.png").read_bytes())
    _csv(tmp_path / "copies" / "mem.csv", "file_name,text", ["x.png,unique 4", "../i/p1.png,digit 7"])
    assert load_dataset(sheet, 8, 1, mem_sheet=tmp_path / "copies" / "mem.csv").memorization == (4, 1)
    # the dataset's image_column names the memorization sheet's column too
    _csv(tmp_path / "data2.csv", "picture,caption", [f"i/p{i}.png,c {i}" for i in range(6)])
    _csv(tmp_path / "mem2.csv", "picture", ["i/p1.png"])
    ds2 = load_dataset(tmp_path / "data2.csv", 8, 1, image_column="picture", heldout_fraction=0.2, mem_sheet=tmp_path / "mem2.csv")
    assert ds2.train.captions[ds2.memorization[0]] == "c 1"
    with pytest.raises(MemrlError, match=r"mem2\.csv: missing the image path column \(expected one of: path, file_name"):
        load_dataset(sheet, 8, 1, mem_sheet=tmp_path / "mem2.csv")


@pytest.mark.parametrize("rows, pattern", [
    (["i/p0.png", "i/p5.png"], r"memorization sheet .*mem\.csv, line 3: i/p5\.png is a held-out image"),
    (["i/p0.png", "other.png"], r"memorization sheet .*mem\.csv, line 3: other\.png is not in the training set"),
    (["i/p1.png", "i/p1.png"], r"memorization sheet .*mem\.csv, line 3: i/p1\.png is listed twice \(first at .*line 2\)"),
    (["i/nope.png"], r"mem\.csv, line 2: image .*nope\.png \('path'\) does not exist"),
])
def test_mem_sheet_errors(tmp_path, rows, pattern):
    sheet = _mem_dataset(tmp_path)
    _png(tmp_path / "other.png", _gray(999))
    _csv(tmp_path / "mem.csv", "path", rows)
    with pytest.raises(MemrlError, match=pattern):
        load_dataset(sheet, 8, 1, mem_sheet=tmp_path / "mem.csv")


def test_mem_sheet_caption_mismatch_missing_file_and_builtin(tmp_path):
    sheet = _mem_dataset(tmp_path)
    _csv(tmp_path / "mem.csv", "path,caption", ["i/p3.png,unique 3", "i/p4.png,wrong"])
    with pytest.raises(MemrlError, match=r"mem\.csv, line 3: the caption \('caption'\) of i/p4\.png is 'wrong', but the training set captions it 'unique 4'"):
        load_dataset(sheet, 8, 1, mem_sheet=tmp_path / "mem.csv")
    with pytest.raises(MemrlError, match=r"memorization sheet .*none\.csv not found"):
        load_dataset(sheet, 8, 1, mem_sheet=tmp_path / "none.csv")
    with pytest.raises(MemrlError, match=r"dataset 'inverted' is built in"):
        load_dataset("inverted", 16, 1, mem_sheet=tmp_path / "mem.csv")


def test_the_probe_never_silently_ignores_a_mem_sheet(tmp_path, monkeypatch):
    """``memrl evaluate --mem-sheet`` goes on only if fine-tuning probes exactly the sheet's images."""
    from memrl.evaluation import preset
    from memrl.evaluation.cli import check_mem_sheet
    from memrl.training.finetune import training_set

    sheet = _mem_dataset(tmp_path)
    _csv(tmp_path / "mem.csv", "path", ["i/p4.png", "i/p1.png"])
    ds = load_dataset(sheet, 8, 1, mem_sheet=tmp_path / "mem.csv")
    cfg = preset("quick")
    train, used = training_set(ds, cfg.finetune)
    assert list(used) == [4, 1]  # the sheet's images, in its order (it holds fewer than n_mem)
    assert sum(c == ds.train.captions[4] for c in train.captions) >= cfg.finetune.n_repeats  # and they are repeated in training
    check_mem_sheet(ds, cfg, "mem.csv")  # accepted
    one = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, n_mem=1))
    assert training_set(ds, one.finetune)[1] == [4]  # n_mem cuts the sheet to its first rows
    # a fine-tune that probed other images would be refused, not silently reported under the sheet's name
    import memrl.training.finetune as ft

    def ignores_sheet(data, c):  # noqa: ANN001, ANN202
        return train, ft.memorization_indices(data.train, c.n_mem)

    monkeypatch.setattr(ft, "training_set", ignores_sheet)
    with pytest.raises(MemrlError, match=r"--mem-sheet mem\.csv: fine-tuning in this version does not use a memorization sheet"):
        check_mem_sheet(ds, cfg, "mem.csv")
    check_mem_sheet(load_dataset(sheet, 8, 1), cfg, None)  # no sheet: nothing to check


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, kwargs, pattern", [
    ("column", {"caption_column": "impression"}, r"s\.csv: missing the caption column 'impression' \(your caption_column\); found: path, caption, split"),
    ("image-column", {"image_column": "dicom"}, r"s\.csv: missing the image path column 'dicom' \(your image_column\)"),
    ("split-column", {"split_column": "fold"}, r"s\.csv: missing the split column 'fold' \(your split_column\)"),
    ("missing-image", {}, r"s\.csv, line 3: image .*gone\.png \('path'\) does not exist"),
    ("empty-caption", {}, r"s\.csv, line 4: the caption \('caption'\) of i/p2\.png is empty"),
    ("unknown-split", {}, r"s\.csv, line 2: the split \('split'\) must be train or heldout \(also accepted: .*test.*\), got 'holdout'"),
    ("empty-column-name", {"caption_column": " "}, r"caption_column must be a non-empty column name, got ' '"),
])
def test_bad_sheets_are_one_clear_error(tmp_path, case, kwargs, pattern):
    names = _pictures(tmp_path / "i", 3)
    rows = [f"i/{n},cap {i},train" for i, n in enumerate(names)] + ["i/p0.png,again,heldout"]
    if case == "missing-image":
        rows[1] = "i/gone.png,cap 1,train"
    elif case == "empty-caption":
        rows[2] = "i/p2.png,  ,train"
    elif case == "unknown-split":
        rows[0] = "i/p0.png,cap 0,holdout"
    sheet = _csv(tmp_path / "s.csv", "path,caption,split", rows)
    with pytest.raises(MemrlError, match=pattern) as err:
        load_dataset(sheet, 8, 1, **kwargs)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- config and CLI


def test_env_config_dataset_fields(tmp_path):
    from memrl.envs.config import EnvConfig
    from memrl.utils.config import ConfigError

    plain = EnvConfig()
    assert (plain.caption_column, plain.image_column, plain.split_column, plain.mem_sheets) == (None, None, None, {})
    cfg = EnvConfig.from_dict({"datasets": ["inverted", "cxr.csv"], "caption_column": "impression", "image_column": "path", "mem_sheets": {"cxr.csv": "mem.csv"}})
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg  # round trip (what config.yaml holds)
    assert cfg.dataset_options("cxr.csv") == {"caption_column": "impression", "image_column": "path", "split_column": None, "mem_sheet": "mem.csv"}
    assert cfg.dataset_options("inverted")["mem_sheet"] is None
    # an old config without the fields still loads
    assert EnvConfig.from_dict({"datasets": ["inverted"]}).caption_column is None
    with pytest.raises(ConfigError, match=r"caption_column"):
        EnvConfig.from_dict({"caption_column": 3})
    with pytest.raises(ConfigError, match=r"'mem_sheets' names 'other\.csv', not in 'datasets'"):
        EnvConfig.from_dict({"datasets": ["inverted"], "mem_sheets": {"other.csv": "m.csv"}})
    with pytest.raises(ConfigError, match=r"'image_column' must be a column name"):
        EnvConfig.from_dict({"image_column": ""})


def test_evaluate_flags_have_help_and_reach_the_loader():
    from memrl.cli import build_parser
    from memrl.evaluation.cli import dataset_options

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    ev = sub.choices["evaluate"]
    flags = {s: a for a in ev._actions for s in a.option_strings}
    for flag in ("--caption-column", "--image-column", "--split-column", "--mem-sheet"):
        assert flag in flags and flags[flag].help, flag
    args = parser.parse_args(["evaluate", "--method", "lora", "--mask", "all", "--out", "o", "--caption-column", "impression", "--image-column", "path"])
    assert dataset_options(args) == {"caption_column": "impression", "image_column": "path", "split_column": None, "mem_sheet": None}


def test_evaluate_missing_user_column_through_the_cli(capsys, tmp_path, quick_model_dir):
    from memrl.cli import main

    names = _pictures(tmp_path / "i", 4)
    _csv(tmp_path / "s.csv", "path,findings", [f"i/{n},f {i}" for i, n in enumerate(names)])
    out = tmp_path / "out"
    argv = ["evaluate", "--pretrained", str(quick_model_dir[0]), "--dataset", str(tmp_path / "s.csv"), "--method", "lora", "--mask", "all",
            "--preset", "quick", "--out", str(out), "--device", "cpu", "--json", "--caption-column", "impression"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memrl: error:"), err
    assert "s.csv" in err[0] and "'impression'" in err[0] and "found: path, findings" in err[0]
    assert not out.exists()


def test_env_and_search_read_datasets_with_the_configs_columns(tmp_path, monkeypatch):
    """env.caption_column / image_column reach every dataset load of the env (train, replay) and of memrl search."""
    from types import SimpleNamespace

    from memrl.envs.config import EnvConfig
    from memrl.envs.mask_selection import MaskSelectionEnv

    sheet = _mimic(tmp_path)
    cfg = EnvConfig(datasets=[str(sheet)], caption_column="impression", image_column="path")
    env = SimpleNamespace(_data={}, evaluator=SimpleNamespace(image_size=8, image_channels=1), config=cfg)
    ds = MaskSelectionEnv._dataset(env, str(sheet))
    assert ds.train.captions == ["impression 0", "impression 1", "impression 3", "impression 5"]  # not the distractor 'text' column
    plain = SimpleNamespace(_data={}, evaluator=env.evaluator, config=EnvConfig(datasets=[str(sheet)]))
    assert MaskSelectionEnv._dataset(plain, str(sheet)).train.captions[0] == "other 0"  # today's recognised name: 'text'

    import memrl.data.loaders as loaders
    from memrl.search.config import SearchConfig, SearchSettings
    from memrl.search.run import search

    seen = {}

    class Stop(Exception):
        pass

    def spy(spec, *a, **kw):  # noqa: ANN001, ANN202
        seen.update(kw)
        raise Stop

    class Ev:
        units = ("a", "b")
        image_size, image_channels = 8, 1

    monkeypatch.setattr(loaders, "load_dataset", spy)
    with pytest.raises(Stop):
        search(SearchConfig(env=cfg, search=SearchSettings(optimizer="random", budget=1)), tmp_path / "run", evaluator=Ev(), progress=False, echo=lambda _s: None)
    assert seen["caption_column"] == "impression" and seen["image_column"] == "path"
    assert not (tmp_path / "run").exists()


def test_family_keys_do_not_depend_on_the_cpu_rounding_of_the_pixels():
    """A member's key comes from its definition: pixels that differ in the last bits (another
    CPU's vectorised exp / grid_sample) give the same key; id, size and channels do not."""
    import torch

    from memrl.data import family
    from memrl.data.loaders import _resize

    a = load_dataset("family:80", 16, 1)
    b = family.member(80)
    b.train.images.add_(torch.full_like(b.train.images, 1e-7))  # what another CPU's kernels could differ by
    b = _resize(b, 16, 1)  # what load_dataset does to a member
    assert b.fingerprint() == a.fingerprint()
    keys = {a.fingerprint(), load_dataset("family:81", 16, 1).fingerprint(), load_dataset("family:80", 32, 1).fingerprint(), load_dataset("family:80", 16, 3).fingerprint()}
    assert len(keys) == 4
    # user data keeps its content hash: an edited pixel is another dataset
    c = load_dataset("inverted", 16, 1)
    c.train.images[0, 0, 0, 0] += 0.5
    assert c.fingerprint() != load_dataset("inverted", 16, 1).fingerprint()


def test_family_generator_output_is_unchanged():
    """Guards GENERATOR_VERSION: if a change moves these figures (beyond float rounding between
    CPUs), the members are other data and memrl.data.family.GENERATOR_VERSION must be bumped."""
    import torch

    d = load_dataset("family:80", 16, 1)
    assert tuple(d.train.images.shape) == (35, 1, 16, 16) and len(d.heldout) == 192
    assert d.train.captions[:2] == ["digit 0", "digit 4, medium strokes, right slant, wide, short, balanced, centered"]
    want_train = torch.tensor([0.071262, 0.087300, 0.073164, 0.086119])
    want_held = torch.tensor([0.089958, 0.073600, 0.080091, 0.113426])
    assert torch.allclose(d.train.images.mean(dim=(1, 2, 3))[:4], want_train, atol=1e-5)
    assert torch.allclose(d.heldout.images.mean(dim=(1, 2, 3))[:4], want_held, atol=1e-5)
