"""Resolve a dataset specification to :class:`~memrl.data.dataset.DatasetSplits`.

Accepted specifications:

* a built-in variant of the embedded digits: ``inverted``, ``digits/inverted``, ... (see
  :data:`memrl.data.digits.VARIANTS`), or ``public`` for the pretraining split;
* an **image folder**: images plus captions, either in ``metadata.csv`` / ``metadata.jsonl``
  (columns ``file_name`` and ``text``, the Hugging Face *imagefolder* convention) or in a
  ``.txt`` file beside each image with the same stem;
* a **CSV file** of image path + caption (MIMIC-CXR style), paths relative to the CSV's folder.
  Column names default to ``path``/``caption`` (``file_name``/``image`` and ``text``/``report``
  are recognised too).

User data has no separate held-out split unless a ``split`` column says so (values ``train`` /
``heldout``); otherwise a seeded ``heldout_fraction`` of the images is held out for FID.
Every problem (missing path, empty folder, unreadable image, missing column) is a one-line
:class:`~memrl.errors.MemrlError` naming the file and what was expected.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from memrl.data import digits
from memrl.data.dataset import CaptionedImages, DatasetSplits
from memrl.errors import MemrlError
from memrl.utils.images import load_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PATH_COLUMNS = ("path", "file_name", "image", "filename")
CAPTION_COLUMNS = ("caption", "text", "report", "prompt")


def builtin_names() -> list[str]:
    return list(digits.VARIANTS)


def load_dataset(
    spec: str | Path,
    image_size: int = digits.IMAGE_SIZE,
    channels: int = 1,
    heldout_fraction: float = 0.3,
    seed: int = 0,
) -> DatasetSplits:
    """Load the dataset named by ``spec`` at the model's image size and channel count."""
    s = str(spec)
    name = s[len("digits/") :] if s.startswith("digits/") else s
    if name in digits.VARIANTS:
        return _resize(digits.variant_splits(name), image_size, channels)
    if name == "public":
        return _resize(digits.public_splits(), image_size, channels)
    path = Path(s).expanduser()
    if not path.exists():
        raise MemrlError(
            f"dataset {s!r} not found: not a built-in variant ({', '.join(digits.VARIANTS)}) and no such file or folder"
        )
    if path.is_dir():
        paths, captions, splits = _scan_folder(path)
    elif path.suffix.lower() == ".csv":
        paths, captions, splits = _read_csv(path)
    else:
        raise MemrlError(f"dataset {path} is a file but not a .csv (expected an image folder or a CSV of path + caption)")
    images = torch.stack([load_image(p, image_size, channels) for p in paths])
    return _split(path.name or s, images, captions, splits, heldout_fraction, seed)


def _resize(ds: DatasetSplits, size: int, channels: int) -> DatasetSplits:
    def fix(c: CaptionedImages) -> CaptionedImages:
        x = c.images
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
        return CaptionedImages(x, c.captions, c.name)

    return DatasetSplits(ds.name, fix(ds.train), fix(ds.heldout))


def _scan_folder(folder: Path) -> tuple[list[Path], list[str], list[str] | None]:
    for meta in ("metadata.csv", "metadata.jsonl"):
        if (folder / meta).is_file():
            if meta.endswith(".csv"):
                return _read_csv(folder / meta)
            return _read_jsonl(folder / meta)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise MemrlError(f"image folder {folder} is empty: no images ({', '.join(IMAGE_EXTENSIONS)}) and no metadata.csv/jsonl")
    captions = []
    for p in images:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise MemrlError(
                f"image folder {folder}: no caption for {p.name} (expected {txt.name}, or a metadata.csv with columns file_name,text)"
            )
        captions.append(txt.read_text().strip())
    return images, captions, None


def _pick(columns: list[str], options: tuple[str, ...], source: Path, what: str) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for o in options:
        if o in lower:
            return lower[o]
    raise MemrlError(f"{source}: missing the {what} column (expected one of: {', '.join(options)}; found: {', '.join(columns) or 'none'})")


def _rows_to_lists(rows: list[dict], source: Path) -> tuple[list[Path], list[str], list[str] | None]:
    if not rows:
        raise MemrlError(f"{source} has no rows")
    cols = list(rows[0].keys())
    pcol = _pick(cols, PATH_COLUMNS, source, "image path")
    ccol = _pick(cols, CAPTION_COLUMNS, source, "caption")
    scol = next((c for c in cols if c.strip().lower() == "split"), None)
    paths, caps, splits = [], [], []
    for i, r in enumerate(rows, start=2):
        p = Path(str(r[pcol]).strip())
        p = p if p.is_absolute() else source.parent / p
        if not p.is_file():
            raise MemrlError(f"{source}, row {i}: image {p} does not exist")
        paths.append(p)
        caps.append(str(r[ccol] or "").strip())
        if scol:
            v = str(r[scol]).strip().lower()
            if v not in ("train", "heldout"):
                raise MemrlError(f"{source}, row {i}: split must be 'train' or 'heldout', got {v!r}")
            splits.append(v)
    return paths, caps, (splits if scol else None)


def _read_csv(path: Path) -> tuple[list[Path], list[str], list[str] | None]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MemrlError(f"cannot read CSV {path}: {exc}") from None
    return _rows_to_lists(rows, path)


def _read_jsonl(path: Path) -> tuple[list[Path], list[str], list[str] | None]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MemrlError(f"{path}, line {i}: invalid JSON ({exc.msg})") from None
    return _rows_to_lists(rows, path)


def _split(name: str, images: torch.Tensor, captions: list[str], splits: list[str] | None, frac: float, seed: int) -> DatasetSplits:
    n = len(captions)
    if splits is not None:
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        held_idx = [i for i, s in enumerate(splits) if s == "heldout"]
    else:
        if n < 2:
            raise MemrlError(f"dataset {name} has {n} image(s): at least 2 are needed (one to train, one held out)")
        perm = np.random.RandomState(seed).permutation(n)
        k = min(n - 1, max(1, int(round(frac * n))))
        held_idx, train_idx = sorted(perm[:k].tolist()), sorted(perm[k:].tolist())
    if not train_idx or not held_idx:
        raise MemrlError(f"dataset {name}: needs at least one train and one heldout image")
    full = CaptionedImages(images, captions, name)
    return DatasetSplits(name, full.subset(train_idx, f"{name}/train"), full.subset(held_idx, f"{name}/heldout"))
