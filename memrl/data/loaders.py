"""Resolve a dataset specification to :class:`~memrl.data.dataset.DatasetSplits`.

Accepted specifications:

* a built-in variant of the embedded digits: ``inverted``, ``digits/inverted``, ... (see
  :data:`memrl.data.digits.VARIANTS`), or ``public`` for the pretraining split;
* a member of the seeded dataset family on the embedded digits: ``family:<id>`` (see
  :mod:`memrl.data.family`; ids in :data:`memrl.data.family.RANGES`, others are refused);
* an **image folder**: images plus captions, either in ``metadata.csv`` / ``metadata.jsonl``
  (columns ``file_name`` and ``text``, the Hugging Face *imagefolder* convention) or in a
  ``.txt`` file beside each image with the same stem; or split folders ``train/`` + ``test/``
  (each an image folder of its own; ``test/``, ``validation/``, ... are held out);
* a **sheet** of image path + caption (MIMIC-CXR style): ``.csv``, ``.jsonl``, or ``.parquet``
  when pyarrow is installed; paths relative to the sheet's folder. Column names are given with
  ``caption_column`` / ``image_column`` / ``split_column`` (e.g. MIMIC-CXR's ``impression`` and
  ``path``), else recognised: ``path``/``file_name``/``image``/``filename`` and
  ``caption``/``text``/``report``/``prompt`` (see :mod:`memrl.data.sheets`).

User data has no separate held-out split unless a split column or split folders say so (values
``train`` / ``heldout``, or ``test`` / ``validation`` / ...); otherwise a seeded
``heldout_fraction`` of the images is held out for FID. Captions must be UTF-8 text and non-empty
(an empty caption would silently train its image as unconditional); they may repeat
(class-level captions). Images of any size and most modes are converted to the model's channel
count and brought to its size without distortion: the short side is resized and the centre
square kept (``resize="stretch"``: the old squeeze; identical for square images, see
:mod:`memrl.data.pixels`). ``mem_sheet`` names the training images the memorization probe uses.
Every problem (missing path, empty folder, unreadable or corrupt image, missing column, a row
that is not a JSON object, text that is not UTF-8, an empty caption, an unknown split) is a
one-line :class:`~memrl.errors.MemrlError` naming the file, the line where there is one, and what
was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memrl.data import digits
from memrl.data.dataset import CaptionedImages, DatasetSplits
from memrl.data.image_store import AUTO_LAZY_BYTES, LazyImages
from memrl.data.pixels import check_resize, load_fitted
from memrl.data.sheets import CAPTION_COLUMNS, IMAGE_COLUMNS, IMAGE_EXTENSIONS, Columns, memorization_from_sheet, read_rows
from memrl.errors import MemrlError

PATH_COLUMNS = IMAGE_COLUMNS  # the name before sheets.py
__all__ = ["CAPTION_COLUMNS", "IMAGE_EXTENSIONS", "PATH_COLUMNS", "builtin_names", "load_dataset"]


def builtin_names() -> list[str]:
    return list(digits.VARIANTS)


def load_dataset(
    spec: str | Path,
    image_size: int = digits.IMAGE_SIZE,
    channels: int = 1,
    heldout_fraction: float = 0.3,
    seed: int = 0,
    *,
    caption_column: str | None = None,
    image_column: str | None = None,
    split_column: str | None = None,
    mem_sheet: str | Path | None = None,
    resize: str = "center-crop",
    lazy: bool | None = None,
) -> DatasetSplits:
    """Load the dataset named by ``spec`` at the model's image size and channel count.

    The keyword options apply to user data (sheets and image folders with a metadata sheet;
    built-in and family datasets ignore the column options): ``caption_column`` /
    ``image_column`` / ``split_column`` name the sheet's columns (default: the recognised names),
    ``mem_sheet`` is a sheet of training images the memorization probe uses in that order
    (recorded as ``DatasetSplits.memorization``), ``resize`` is ``"center-crop"`` or ``"stretch"``
    for non-square images. With every option at its default the result, and its fingerprint,
    is what earlier versions loaded for square images.

    ``lazy``: keep user images on disk and decode them on access
    (:class:`~memrl.data.image_store.LazyImages`); ``None`` (default) does so when the decoded
    images would exceed :data:`~memrl.data.image_store.AUTO_LAZY_BYTES`. Either way every image
    is read once here (the content fingerprint), so an unreadable file is an error now, not in the
    middle of a run; the fingerprint is the same as eager loading's.
    """
    check_resize(resize)
    columns = Columns(image_column, caption_column, split_column)
    s = str(spec)
    builtin = _builtin_name(s)
    if builtin is not None:
        if mem_sheet is not None:
            raise MemrlError(f"mem_sheet {mem_sheet}: dataset {s!r} is built in; a memorization sheet needs an image folder or a sheet of your own")
        return _resize(_load_builtin(builtin), image_size, channels)
    path = Path(s).expanduser()
    if not path.exists():
        raise MemrlError(
            f"dataset {s!r} not found: not a built-in variant ({', '.join(digits.VARIANTS)}), not a family member "
            "(family:N, see memrl datasets) and no such file or folder"
        )
    rows = read_rows(path, columns)
    mem_path = _mem_sheet_path(mem_sheet)  # checked before the images are decoded
    stored = LazyImages(rows.refs, image_size, channels, resize)
    if lazy is None:
        lazy = stored.size_bytes() > AUTO_LAZY_BYTES
    images = stored if lazy else stored.materialize()
    data = _split(path.name or s, images, rows.captions, rows.splits, heldout_fraction, seed, [r.key for r in rows.refs])
    if lazy:  # read every image once now: the fingerprint, and a bad file fails before any run starts
        data.train.fingerprint(), data.heldout.fingerprint()
    if mem_path is None:
        return data
    mem = memorization_from_sheet(
        mem_path,
        data.train.sources or [],
        data.train.images,
        data.train.captions,
        data.heldout.sources or [],
        lambda ref: load_fitted(ref, image_size, channels, resize),
        columns,
    )
    return DatasetSplits(data.name, data.train, data.heldout, memorization=mem)


def _builtin_name(spec: str) -> str | None:
    """The canonical name of a built-in dataset (``inverted``, ``public``, ``family:80``); ``None``: user data."""
    name = spec[len("digits/") :] if spec.startswith("digits/") else spec
    if name in digits.VARIANTS or name == "public":
        return name
    if spec.startswith("family/") and spec[len("family/") :].isdigit():
        return "family:" + spec[len("family/") :]  # a member's own name (what results and tables record)
    if spec.startswith("family:"):
        return spec
    return None


def _load_builtin(name: str) -> DatasetSplits:
    if name == "public":
        return digits.public_splits()
    if name.startswith("family:"):
        from memrl.data import family

        return family.member(family.parse_spec(name))
    return digits.variant_splits(name)


def _mem_sheet_path(mem_sheet: str | Path | None) -> Path | None:
    if mem_sheet is None:
        return None
    p = Path(mem_sheet).expanduser()
    if not p.is_file():
        raise MemrlError(f"memorization sheet {p} {'is not a file' if p.exists() else 'not found'} (expected a .csv, .jsonl or .parquet of training image paths)")
    return p


def _resize(ds: DatasetSplits, size: int, channels: int) -> DatasetSplits:
    def fix(c: CaptionedImages) -> CaptionedImages:
        x = c.images
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
        return CaptionedImages(x, c.captions, c.name)

    definition = None if ds.definition is None else f"{ds.definition}|{size}px|{channels}ch"
    return DatasetSplits(ds.name, fix(ds.train), fix(ds.heldout), definition=definition)


def _split(
    name: str, images: torch.Tensor, captions: list[str], splits: list[str] | None, frac: float, seed: int, sources: list[str] | None = None
) -> DatasetSplits:
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
    full = CaptionedImages(images, captions, name, sources)
    return DatasetSplits(name, full.subset(train_idx, f"{name}/train"), full.subset(held_idx, f"{name}/heldout"))
