"""Image grids as PNG files, with numpy and Pillow only (no torchvision)."""

from __future__ import annotations

import math
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


def load_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """Read one image file as ``C x size x size`` in [-1, 1]; errors name the file."""
    from memrl.errors import MemrlError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except (OSError, ValueError) as exc:
        raise MemrlError(f"cannot read image {path}: {exc}") from None
    t = torch.from_numpy(arr)
    return t[None] if channels == 1 else t.permute(2, 0, 1).contiguous()


def as_list(x: Sequence | None) -> list:
    return list(x) if x is not None else []
