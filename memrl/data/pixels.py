"""One user image (a file, or bytes embedded in a parquet sheet) as a tensor at the model's size.

:func:`memrl.utils.images.load_image` squeezes any picture to ``size x size``: a 2:1 chest X-ray
comes out squashed. :func:`load_fitted` keeps the aspect ratio instead (``resize="center-crop"``,
the default): it cuts the centred ``s x s`` square, ``s`` = the short side, and resizes that to
``size x size``. That is "resize the short side, then centre-crop", except that the border pixels
are interpolated from the square alone: a non-square picture loads exactly like its centre square
saved on its own. ``resize="stretch"`` is the old squeeze, for results computed before cropping.

For a **square** picture both modes run exactly :func:`~memrl.utils.images.load_image`'s Pillow
calls (the same mode conversion, the same ``resize``), so every square dataset
keeps its content fingerprint, and with it its cached evaluations and lookup-table rows
(tests/test_sheets.py checks both). Channels follow the model: grayscale pictures are repeated
into RGB for a 3-channel model, colour pictures become luminance (ITU-R 601) for a 1-channel one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from memrl.errors import MemrlError

#: Accepted values of ``resize`` (see the module docstring).
RESIZE_MODES = ("center-crop", "stretch")


@dataclass(frozen=True)
class ImageRef:
    """Where one image comes from: a file ``path``, or ``data`` bytes embedded in a sheet.

    ``label`` names it in errors (the file, or ``sheet.parquet, row 3``); ``key`` identifies it
    for matching a memorization sheet against the training set (the resolved path).
    """

    label: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def key(self) -> str:
        return str(self.path.resolve()) if self.path is not None else self.label


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise MemrlError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def center_square(width: int, height: int) -> tuple[int, int, int, int] | None:
    """The centred ``s x s`` box (``s`` = the short side) of a ``width x height`` picture; ``None`` if square.

    Offsets are whole pixels, rounded down: an odd surplus leaves the extra column (row) on the
    right (bottom), so the kept pixels are copied, not interpolated half a pixel off.
    """
    if width == height:
        return None
    s = min(width, height)
    left, top = (width - s) // 2, (height - s) // 2
    return (left, top, left + s, top + s)


def load_fitted(ref: ImageRef | str | Path, size: int, channels: int, resize: str = "center-crop") -> torch.Tensor:
    """Read one image as ``C x size x size`` in [-1, 1] (``C`` = ``channels``); errors name the image.

    Modes are converted exactly as :func:`memrl.utils.images.load_image` does (palette, 1-bit,
    16-bit, float, CMYK, transparency composited on white); only non-square pictures differ, and
    only with ``resize="center-crop"``.
    """
    from memrl.utils.images import DECODE_ERRORS, _model_mode, chw_tensor

    if not isinstance(ref, ImageRef):
        ref = ImageRef(str(ref), Path(ref))
    source = ref.path if ref.data is None else io.BytesIO(ref.data)
    try:
        with Image.open(source) as im:
            im.load()
            im = _model_mode(im, channels)
            box = center_square(*im.size) if resize == "center-crop" else None
            if box is not None:
                im = im.crop(box)
            im = im.resize((size, size), Image.BILINEAR)  # square or stretch: exactly load_image's call
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except DECODE_ERRORS as exc:
        raise MemrlError(f"cannot read image {ref.label}: {str(exc) or type(exc).__name__}") from None
    return chw_tensor(arr, channels)
