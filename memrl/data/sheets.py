"""Read datasets as users have them: sheets of image + caption, and Hugging Face *imagefolder* trees.

A **sheet** is a table with one row per image: a CSV file, a JSON-lines file (``metadata.jsonl``)
or, when pyarrow is installed, a parquet file. Its columns are chosen by :class:`Columns`: the
names the user gives (``caption_column="impression"``, ``image_column="path"`` for MIMIC-CXR),
else the first recognised name (:data:`IMAGE_COLUMNS`, :data:`CAPTION_COLUMNS`, ``split``).
Image paths are relative to the sheet's folder; a parquet image cell may also hold the picture
itself (``{"bytes": ..., "path": ...}``, how ``datasets`` stores an ``Image`` feature).

An optional split column sends a row to ``train`` or ``heldout``; :data:`SPLIT_VALUES` lists the
accepted spellings (MIMIC-CXR's ``validate`` and ``test`` are held out). Captions may repeat
(class-level captions such as ``"digit 3"``); an empty caption is refused, since it would train its
image as unconditional.

An **image folder** holds images with captions in ``metadata.csv`` / ``metadata.jsonl``
(``file_name`` + a caption column) or in a ``.txt`` file per image. Following the imagefolder
convention, it may instead hold split folders, each an image folder of its own: ``train/``
(required) and ``test/`` (also ``validation/``, ``val/``, ...: all held out).

Every problem is one :class:`~memrl.errors.MemrlError` naming the file, the line (CSV, JSON lines)
or row (parquet) where there is one, the column, and what was expected. A memorization sheet (the
training images whose copies the probe looks for) is matched by :func:`memorization_from_sheet`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from memrl.data.pixels import ImageRef
from memrl.errors import MemrlError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Recognised image-path columns, in order of preference, when ``image_column`` is not given.
IMAGE_COLUMNS = ("path", "file_name", "image", "filename")
#: Recognised caption columns, in order of preference, when ``caption_column`` is not given.
CAPTION_COLUMNS = ("caption", "text", "report", "prompt")
#: Split values (compared lower-case) and the split each sends its row to.
SPLIT_VALUES = {
    "train": "train",
    "training": "train",
    "heldout": "heldout",
    "held-out": "heldout",
    "test": "heldout",
    "testing": "heldout",
    "validation": "heldout",
    "validate": "heldout",
    "valid": "heldout",
    "val": "heldout",
}
#: Split folders of the imagefolder convention (``train/``, ``test/``, ...), in reading order.
SPLIT_FOLDERS = ("train", "training", "test", "testing", "heldout", "validation", "valid", "val")
SHEET_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Columns:
    """Column names the user gave (``None``: the first recognised name)."""

    image: str | None = None
    caption: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("image_column", self.image), ("caption_column", self.caption), ("split_column", self.split)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise MemrlError(f"{what} must be a non-empty column name, got {value!r}")


@dataclass
class Rows:
    """What a sheet or an image folder holds: one image, caption and (optional) split per row."""

    refs: list[ImageRef]
    captions: list[str]
    splits: list[str] | None  # "train" / "heldout" per row; None: no split given


# ----------------------------------------------------------------------------------- raw tables


def read_text(path: Path, what: str) -> str:
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


def _csv_table(path: Path) -> tuple[list[tuple[str, dict]], list[str], str]:
    """``((where, row) pairs, header, where the header is)`` of a CSV file."""
    text = read_text(path, "CSV")
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
            rows.append((f"{path}, line {line}", r))
    except csv.Error as exc:
        raise MemrlError(f"cannot read CSV {path}, line {reader.line_num}: {exc}") from None
    return rows, columns, str(path)


def _jsonl_table(path: Path) -> tuple[list[tuple[str, dict]], list[str], str]:
    """``((where, row) pairs, the first row's keys, that row's line)`` of a JSON-lines file."""
    rows = []
    first = None
    # split on "\n" only: str.splitlines() also splits at U+2028 and friends, legal inside JSON strings
    for i, line in enumerate(read_text(path, "metadata file").split("\n"), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MemrlError(f"{path}, line {i}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(row), "a number")
                raise MemrlError(f'{path}, line {i}: expected a JSON object like {{"file_name": "a.png", "text": "a caption"}}, got {kind}')
            first = first or i
            rows.append((f"{path}, line {i}", row))
    columns = list(rows[0][1]) if rows else []
    return rows, columns, f"{path}, line {first}" if rows else str(path)


def _parquet_table(path: Path) -> tuple[list[tuple[str, dict]], list[str], str]:
    """``((where, row) pairs, columns, path)`` of a parquet file (needs pyarrow); rows count from 1.

    A null cell reads as an empty string, like an empty CSV field.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MemrlError(f"cannot read {path}: parquet sheets need pyarrow (pip install pyarrow), or save the sheet as CSV") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise MemrlError(f"cannot read parquet {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    columns = [str(c) for c in table.column_names]
    rows = [(f"{path}, row {i}", {k: ("" if v is None else v) for k, v in r.items()}) for i, r in enumerate(table.to_pylist(), start=1)]
    return rows, columns, str(path)


def read_table(path: Path) -> tuple[list[tuple[str, dict]], list[str], str]:
    """Rows of a sheet by its suffix (``.csv``, ``.jsonl``, ``.parquet``)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_table(path)
    if suffix == ".jsonl":
        return _jsonl_table(path)
    if suffix == ".parquet":
        return _parquet_table(path)
    raise MemrlError(f"{path}: not a sheet (expected one of {', '.join(SHEET_SUFFIXES)})")


# -------------------------------------------------------------------------------------- columns


def pick_column(columns: list[str], given: str | None, options: tuple[str, ...], where: str, what: str, option: str) -> str:
    """The column to read: ``given`` (exactly, else ignoring case and spaces), else the first of ``options``."""
    found = ", ".join(str(c) for c in columns) or "none"
    if given is not None:
        if given in columns:
            return given
        lower = {str(c).strip().lower(): c for c in columns}
        if given.strip().lower() in lower:
            return lower[given.strip().lower()]
        raise MemrlError(f"{where}: missing the {what} column {given!r} (your {option}); found: {found}")
    lower = {str(c).strip().lower(): c for c in columns}
    for o in options:
        if o in lower:
            return lower[o]
    raise MemrlError(
        f"{where}: missing the {what} column (expected one of: {', '.join(options)}; found: {found}); "
        f"name yours with {option}"
    )


def _optional_column(columns: list[str], given: str | None, name: str, where: str, option: str) -> str | None:
    if given is not None:
        return pick_column(columns, given, (), where, "split", option)
    return next((c for c in columns if str(c).strip().lower() == name), None)


def field_text(row: dict, key: str, at: str, what: str) -> str:
    """``row[key]`` stripped; a missing key or a value that is not text is an error naming the line."""
    if key not in row:
        raise MemrlError(f"{at}: missing {key!r} ({what}); every row needs the keys of the first one")
    value = row[key]
    if not isinstance(value, str):
        raise MemrlError(f"{at}: {key!r} ({what}) must be a string, got {json.dumps(value, default=lambda v: type(v).__name__)}")
    return value.strip()


def _image_ref(row: dict, key: str, at: str, base: Path) -> tuple[ImageRef, str]:
    """The image a row names and how to call it in messages: a path relative to ``base``, or
    embedded bytes (a parquet ``{"bytes", "path"}`` struct, or a binary cell)."""
    value = row.get(key)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
        name = value.get("path") or "embedded image"
        return ImageRef(f"{at} ({name})", data=bytes(value["bytes"])), str(name)
    if isinstance(value, (bytes, bytearray)) and value:
        return ImageRef(f"{at} (embedded image)", data=bytes(value)), "the embedded image"
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        row = {key: value["path"]}
    name = field_text(row, key, at, "the image path")
    if not name:
        raise MemrlError(f"{at}: the image path ({key!r}) is empty")
    p = Path(name)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise MemrlError(f"{at}: image {p} ({key!r}) {'is not a file' if p.exists() else 'does not exist'}")
    return ImageRef(str(p), path=p), name


def read_sheet(path: Path, columns: Columns = Columns(), split_allowed: bool = True) -> Rows:
    """Image, caption and split of every row of the sheet at ``path`` (see the module docstring).

    ``split_allowed=False`` (a sheet inside a split folder) refuses a split column: the folder
    already says which split its rows belong to.
    """
    rows, header, where = read_table(path)
    if not rows:
        raise MemrlError(f"{path} has no rows")
    pcol = pick_column(header, columns.image, IMAGE_COLUMNS, where, "image path", "image_column")
    ccol = pick_column(header, columns.caption, CAPTION_COLUMNS, where, "caption", "caption_column")
    scol = _optional_column(header, columns.split, "split", where, "split_column")
    if scol is not None and not split_allowed:
        raise MemrlError(f"{where}: has a split column ({scol!r}) but sits in the split folder {path.parent.name}/, which already sets the split; drop the column")
    refs, caps, splits = [], [], []
    for at, r in rows:
        ref, name = _image_ref(r, pcol, at, path.parent)
        caption = field_text(r, ccol, at, "the caption")
        if not caption:
            raise MemrlError(
                f"{at}: the caption ({ccol!r}) of {name} is empty; {name} would train as unconditional: write a caption or drop the row"
            )
        refs.append(ref)
        caps.append(caption)
        if scol is not None:
            v = field_text(r, scol, at, "the split").lower()
            if v not in SPLIT_VALUES:
                raise MemrlError(
                    f"{at}: the split ({scol!r}) must be train or heldout (also accepted: {', '.join(k for k in SPLIT_VALUES if k not in ('train', 'heldout'))}), got {v!r}"
                )
            splits.append(SPLIT_VALUES[v])
    return Rows(refs, caps, splits if scol is not None else None)


# -------------------------------------------------------------------------------- image folders


def _list(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise MemrlError(f"cannot list image folder {folder}: {exc.strerror or exc}") from None


def _plain_folder(folder: Path, columns: Columns, split_allowed: bool) -> Rows:
    """One image folder: its metadata sheet, else ``.txt`` captions beside the images."""
    for meta in ("metadata.csv", "metadata.jsonl", "metadata.parquet"):
        if (folder / meta).is_file():
            return read_sheet(folder / meta, columns, split_allowed)
    images = [p for p in _list(folder) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not images:
        raise MemrlError(f"image folder {folder} is empty: no images ({', '.join(IMAGE_EXTENSIONS)}) and no metadata.csv/jsonl")
    captions = []
    for p in images:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise MemrlError(
                f"image folder {folder}: no caption for {p.name} (expected {txt.name}, or a metadata.csv with columns file_name,text)"
            )
        caption = read_text(txt, "caption file").strip()
        if not caption:
            raise MemrlError(f"caption file {txt} is empty: {p.name} would train as unconditional; write its caption in the file")
        captions.append(caption)
    return Rows([ImageRef(str(p), path=p) for p in images], captions, None)


def read_folder(folder: Path, columns: Columns = Columns()) -> Rows:
    """An image folder, or the imagefolder layout of split folders (``train/`` + ``test/``, ...).

    Split folders are used only when the folder itself has no metadata sheet; ``train/`` must be
    one of them; every other split folder is held out. Without a held-out folder, ``splits`` is
    ``None`` and the caller holds out a seeded fraction of ``train/``.
    """
    has_meta = any((folder / m).is_file() for m in ("metadata.csv", "metadata.jsonl", "metadata.parquet"))
    entries = _list(folder)
    subdirs = {p.name.lower(): p for p in entries if p.is_dir() and p.name.lower() in SPLIT_FOLDERS}
    if has_meta or not subdirs:
        return _plain_folder(folder, columns, split_allowed=True)
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise MemrlError(
            f"image folder {folder} has split folders ({', '.join(d.name + '/' for d in subdirs.values())}) and images beside them "
            f"({loose[0]}, ...): put every image in a split folder, or add a metadata.csv"
        )
    if not any(SPLIT_VALUES[n] == "train" for n in subdirs):
        raise MemrlError(f"image folder {folder} has the split folder(s) {', '.join(d.name + '/' for d in subdirs.values())} but no train/: add the training images as {folder / 'train'}")
    refs: list[ImageRef] = []
    caps: list[str] = []
    splits: list[str] = []
    for name in SPLIT_FOLDERS:
        if name in subdirs:
            part = _plain_folder(subdirs[name], columns, split_allowed=False)
            refs += part.refs
            caps += part.captions
            splits += [SPLIT_VALUES[name]] * len(part.refs)
    return Rows(refs, caps, splits if "heldout" in splits else None)


def read_rows(path: Path, columns: Columns = Columns()) -> Rows:
    """A user dataset at ``path``: an image folder or a sheet."""
    if path.is_dir():
        return read_folder(path, columns)
    if path.suffix.lower() in SHEET_SUFFIXES:
        return read_sheet(path, columns)
    raise MemrlError(
        f"dataset {path} is a file but not a sheet ({', '.join(SHEET_SUFFIXES)}); expected an image folder or a sheet of image path + caption"
    )


# ---------------------------------------------------------------------------- memorization set


def memorization_from_sheet(
    sheet: Path,
    train_keys: list[str],
    train_images: torch.Tensor,
    train_captions: list[str],
    heldout_keys: list[str],
    decode: Callable[[ImageRef], torch.Tensor],
    columns: Columns = Columns(),
) -> tuple[int, ...]:
    """The training indices of the images a memorization sheet lists, in the sheet's order.

    ``train_keys`` / ``heldout_keys`` are the splits' :attr:`ImageRef.key` (``CaptionedImages.sources``);
    ``decode`` reads a sheet's image at the model's size, for matching by pixels.

    A row matches the training image at the same file (resolved path); failing that, a training
    image with exactly the same pixels at the model's size (a copy kept elsewhere, or a parquet
    sheet that embeds its pictures). A caption column, when the sheet has one, must agree with
    the training caption. An image that is held out, or not in the dataset at all, or a row
    listed twice, is an error naming the sheet's line.
    """
    rows, header, where = read_table(sheet)
    if not rows:
        raise MemrlError(f"memorization sheet {sheet} has no rows")
    given = columns.image if columns.image in header else None
    pcol = pick_column(header, given, IMAGE_COLUMNS, where, "image path", "image_column")
    try:
        ccol: str | None = pick_column(header, columns.caption if columns.caption in header else None, CAPTION_COLUMNS, where, "caption", "caption_column")
    except MemrlError:
        ccol = None  # captions are optional in a memorization sheet
    by_key = {k: i for i, k in enumerate(train_keys)}
    held = set(heldout_keys)
    chosen: dict[int, str] = {}
    for at, r in rows:
        ref, name = _image_ref(r, pcol, at, sheet.parent)
        i = by_key.get(ref.key)
        if i is None:
            if ref.key in held:
                raise MemrlError(f"memorization sheet {at}: {name} is a held-out image, not a training image; the memorization set must come from the training split")
            x = decode(ref)
            same = [j for j in range(train_images.shape[0]) if j not in chosen and torch.equal(train_images[j], x)]
            if not same:
                raise MemrlError(f"memorization sheet {at}: {name} is not in the training set (no training image has this path or these pixels)")
            i = same[0]
        if i in chosen:
            raise MemrlError(f"memorization sheet {at}: {name} is listed twice (first at {chosen[i]})")
        if ccol is not None:
            caption = field_text(r, ccol, at, "the caption")
            if caption and caption != train_captions[i]:
                raise MemrlError(f"memorization sheet {at}: the caption ({ccol!r}) of {name} is {caption!r}, but the training set captions it {train_captions[i]!r}")
        chosen[i] = at
    return tuple(chosen)
