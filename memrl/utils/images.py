"""Image grids as PNG files, and image files as tensors, with numpy and Pillow only (no torchvision)."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``N x C x H x W`` in [-1, 1] -> ``N x H x W x C`` uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 4, pad_value: int = 128) -> Image.Image:
    """Tile images into one picture, each enlarged ``scale`` times (nearest) so 16 px digits are visible."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = nrow
    nrows = int(math.ceil(n / ncol))
    H = nrows * (h + pad) + pad
    W = ncol * (w + pad) + pad
    grid = np.full((H, W, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = arr[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((W * scale, H * scale), Image.NEAREST)
    return img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    make_grid(images, nrow=nrow, scale=scale).save(tmp)
    tmp.replace(path)
    return path


def save_pairs(left: torch.Tensor, right: torch.Tensor, path: str | Path, scale: int = 4) -> Path:
    """Rows of (left_i, right_i) pairs, e.g. generated image beside its nearest training image."""
    n = left.shape[0]
    inter = torch.stack([left, right], dim=1).reshape(2 * n, *left.shape[1:])
    cols = 2 * max(1, min(4, int(math.ceil(math.sqrt(n / 2)))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    make_grid(inter, nrow=cols, scale=scale).save(tmp)
    tmp.replace(path)
    return path


#: What Pillow raises for a file it cannot decode: an unknown format or truncated data (OSError,
#: including UnidentifiedImageError), broken headers or chunks (SyntaxError, ValueError, EOFError,
#: IndexError, struct.error, ZeroDivisionError, depending on the plugin), and a picture larger
#: than ``Image.MAX_IMAGE_PIXELS`` (DecompressionBombError, which is not an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, ZeroDivisionError, struct.error, Image.DecompressionBombError)


def load_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """Read one image file as ``C x size x size`` in [-1, 1]; errors name the file.

    Any size is resized (bilinear) to ``size x size``; any common mode is converted to ``channels``
    (1: grayscale, else RGB): palette, 1-bit, CMYK, 16-bit and 32-bit integer and float pictures
    (scaled by their bit depth, not clipped to 8 bits), and transparent ones (composited on white,
    so transparent pixels do not take whatever colour they happen to store).
    """
    from memrl.errors import MemrlError

    try:
        with Image.open(path) as im:
            im.load()
            im = _model_mode(im, channels).resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except DECODE_ERRORS as exc:
        raise MemrlError(f"cannot read image {path}: {str(exc) or type(exc).__name__}") from None
    return chw_tensor(arr, channels)


def chw_tensor(arr: np.ndarray, channels: int) -> torch.Tensor:
    """A decoded ``H x W`` (grayscale) or ``H x W x C`` array in [-1, 1] as a ``channels x H x W``
    tensor (grayscale repeated to 3 channels when the model wants RGB)."""
    t = torch.from_numpy(arr)
    if t.ndim == 2:  # grayscale (mode L, or a float picture in F)
        return t[None] if channels == 1 else t[None].expand(3, -1, -1).contiguous()
    return t.permute(2, 0, 1).contiguous()


def _model_mode(im: Image.Image, channels: int) -> Image.Image:
    """``im`` as ``L`` / ``RGB`` (8 bits per channel) or ``F`` (one channel, 0..255 floats)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _scaled_float(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("L" if channels == 1 else "RGB")


def _scaled_float(im: Image.Image) -> Image.Image:
    """A high-bit-depth single-channel picture as ``F`` in 0..255.

    Pillow's own ``convert("L")`` clips 16-bit values at 255, which turns almost every pixel white;
    here 16-bit modes are divided by 65535, and ``I`` / ``F`` by the range their values fit
    (0..1 for floats, 0..255, 0..65535). Other ranges are refused rather than guessed.
    """
    arr = np.asarray(im, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"its {im.mode} pixels include NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if im.mode.startswith("I;16"):
        full = 65535.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        full = 1.0
    elif lo >= 0 and hi <= 255:
        full = 255.0
    elif lo >= 0 and hi <= 65535:
        full = 65535.0
    else:
        raise ValueError(f"its {im.mode} pixel values span {lo:g}..{hi:g}; expected 0..1 (float), 0..255 or 0..65535")
    return Image.fromarray((arr * (255.0 / full)).astype(np.float32))


def as_list(x: Sequence | None) -> list:
    return list(x) if x is not None else []
