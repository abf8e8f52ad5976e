"""Resolve a dataset specification to :class:`~memrl.data.dataset.DatasetSplits`.

Accepted specifications:

* a built-in variant of the embedded digits: ``inverted``, ``digits/inverted``, ... (see
  :data:`memrl.data.digits.VARIANTS`), or ``public`` for the pretraining split;
* a member of the seeded dataset family on the embedded digits: ``family:<id>`` (see
  :mod:`memrl.data.family`; ids in :data:`memrl.data.family.RANGES`, others are refused);
* an **image folder**: images plus captions, either in ``metadata.csv`` / ``metadata.jsonl``
  (columns ``file_name`` and ``text``, the Hugging Face *imagefolder* convention) or in a
  ``.txt`` file beside each image with the same stem;
* a **CSV file** of image path + caption (MIMIC-CXR style), paths relative to the CSV's folder.
  Column names default to ``path``/``caption`` (``file_name``/``image`` and ``text``/``report``
  are recognised too).

User data has no separate held-out split unless a ``split`` column says so (values ``train`` /
``heldout``); otherwise a seeded ``heldout_fraction`` of the images is held out for FID.
Captions must be UTF-8 text and non-empty (an empty caption would silently train its image as
unconditional). Images of any size and most modes (grayscale, RGB, palette, 1-bit, 16-bit, CMYK,
with or without transparency) are resized and converted to the model's channel count (see
:func:`memrl.utils.images.load_image`).
Every problem (missing path, empty folder, unreadable or corrupt image, missing column, a row
that is not a JSON object, text that is not UTF-8, an empty caption) is a one-line
:class:`~memrl.errors.MemrlError` naming the file, the line where there is one, and what was
expected.
"""

from __future__ import annotations

import csv
import io
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
    if s.startswith("family/") and s[len("family/") :].isdigit():
        s = "family:" + s[len("family/") :]  # a member's own name (what results and tables record)
    if s.startswith("family:"):
        from memrl.data import family

        return _resize(family.member(family.parse_spec(s)), image_size, channels)
    path = Path(s).expanduser()
    if not path.exists():
        raise MemrlError(
            f"dataset {s!r} not found: not a built-in variant ({', '.join(digits.VARIANTS)}), not a family member "
            "(family:N, see memrl datasets) and no such file or folder"
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
    try:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as exc:
        raise MemrlError(f"cannot list image folder {folder}: {exc.strerror or exc}") from None
    if not images:
        raise MemrlError(f"image folder {folder} is empty: no images ({', '.join(IMAGE_EXTENSIONS)}) and no metadata.csv/jsonl")
    captions = []
    for p in images:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise MemrlError(
                f"image folder {folder}: no caption for {p.name} (expected {txt.name}, or a metadata.csv with columns file_name,text)"
            )
        caption = _read_text(txt, "caption file").strip()
        if not caption:
            raise MemrlError(f"caption file {txt} is empty: {p.name} would train as unconditional; write its caption in the file")
        captions.append(caption)
    return images, captions, None


def _read_text(path: Path, what: str) -> str:
    """The whole file as UTF-8 text (a leading byte-order mark, as Excel writes, is dropped).

    Any other encoding is refused rather than guessed: a wrong guess silently garbles captions.
    The error names the file and the line of the first invalid byte.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MemrlError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MemrlError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it with UTF-8 encoding"
        ) from None


def _pick(columns: list[str], options: tuple[str, ...], source: str | Path, what: str) -> str:
    lower = {str(c).strip().lower(): c for c in columns}
    for o in options:
        if o in lower:
            return lower[o]
    found = ", ".join(str(c) for c in columns) or "none"
    raise MemrlError(f"{source}: missing the {what} column (expected one of: {', '.join(options)}; found: {found})")


def _rows_to_lists(rows: list[tuple[int, dict]], columns: list[str], source: Path, where: str) -> tuple[list[Path], list[str], list[str] | None]:
    """Image paths, captions and (optional) splits from ``(line number, row)`` pairs.

    ``columns`` are the header (CSV) or the first row's keys (JSON lines; ``where`` then names
    that line). Every row must name an existing image and a non-empty caption: an empty caption
    would silently train its image as unconditional.
    """
    if not rows:
        raise MemrlError(f"{source} has no rows")
    pcol = _pick(columns, PATH_COLUMNS, where, "image path")
    ccol = _pick(columns, CAPTION_COLUMNS, where, "caption")
    scol = next((c for c in columns if str(c).strip().lower() == "split"), None)
    paths, caps, splits = [], [], []
    for line, r in rows:
        at = f"{source}, line {line}"
        name = _field(r, pcol, at, "the image path")
        if not name:
            raise MemrlError(f"{at}: the image path ({pcol!r}) is empty")
        p = Path(name)
        p = p if p.is_absolute() else source.parent / p
        if not p.is_file():
            raise MemrlError(f"{at}: image {p} {'is not a file' if p.exists() else 'does not exist'}")
        caption = _field(r, ccol, at, "the caption")
        if not caption:
            raise MemrlError(
                f"{at}: the caption ({ccol!r}) of {name} is empty; {name} would train as unconditional: write a caption or drop the row"
            )
        paths.append(p)
        caps.append(caption)
        if scol:
            v = _field(r, scol, at, "the split").lower()
            if v not in ("train", "heldout"):
                raise MemrlError(f"{at}: split must be 'train' or 'heldout', got {v!r}")
            splits.append(v)
    return paths, caps, (splits if scol else None)


def _field(row: dict, key: str, at: str, what: str) -> str:
    """``row[key]`` stripped; a missing key or a value that is not text is an error naming the line."""
    if key not in row:
        raise MemrlError(f"{at}: missing {key!r} ({what}); every row needs the keys of the first one")
    value = row[key]
    if not isinstance(value, str):
        raise MemrlError(f"{at}: {key!r} ({what}) must be a string, got {json.dumps(value)}")
    return value.strip()


def _read_csv(path: Path) -> tuple[list[Path], list[str], list[str] | None]:
    text = _read_text(path, "CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        columns = list(reader.fieldnames or [])
        for r in reader:
            line = reader.line_num
            if None in r:
                raise MemrlError(
                    f"{path}, line {line} has more fields than the header ({', '.join(columns)}): "
                    "put a caption that contains commas in double quotes"
                )
            if None in r.values():
                raise MemrlError(f"{path}, line {line} has fewer fields than the header ({', '.join(columns)})")
            rows.append((line, r))
    except csv.Error as exc:
        raise MemrlError(f"cannot read CSV {path}, line {reader.line_num}: {exc}") from None
    return _rows_to_lists(rows, columns, path, str(path))


def _read_jsonl(path: Path) -> tuple[list[Path], list[str], list[str] | None]:
    rows = []
    # split on "\n" only: str.splitlines() also splits at U+2028 and friends, legal inside JSON strings
    for i, line in enumerate(_read_text(path, "metadata file").split("\n"), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MemrlError(f"{path}, line {i}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(row), "a number")
                raise MemrlError(f'{path}, line {i}: expected a JSON object like {{"file_name": "a.png", "text": "a caption"}}, got {kind}')
            rows.append((i, row))
    columns = list(rows[0][1]) if rows else []
    return _rows_to_lists(rows, columns, path, f"{path}, line {rows[0][0]}" if rows else str(path))


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
