"""The embedded default data: scikit-learn's bundled handwritten digits, offline.

1,797 8x8 grey images (values 0..16) ship inside scikit-learn, so nothing is downloaded. They
are upsampled to 16x16 and scaled to [-1, 1] (background -1, ink +1).

Splits (deterministic, fixed seed, pairwise disjoint):

* ``public``: 1,000 images in the original style. The base model and the feature network are
  pretrained on its ``train`` part (850); its ``heldout`` part (150) measures them. This plays
  the role of the web-scale data Stable Diffusion was trained on.
* one *private* split per built-in **variant** (130 images each: 70 to fine-tune on, 60
  held-out for FID). A variant is a different "domain" made by a deterministic style transform
  (inverted contrast, thick strokes, rotation, ...), so the base model is clearly worse on it
  than a fine-tuned model, as Stable Diffusion is on chest X-rays.

Captions are measured from each digit (class plus stroke weight, slant, width, height and
where the ink sits), binned at dataset quantiles so that most captions are distinct: a
memorization prompt then points at one image. They describe the digit's content, measured
before the style transform, so one caption grammar serves every domain.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from memrl.data.dataset import CaptionedImages, DatasetSplits

IMAGE_SIZE = 16
SPLIT_SEED = 20240529
N_PUBLIC = 1000
N_PUBLIC_HELDOUT = 150
N_PER_VARIANT = 130
N_VARIANT_HELDOUT = 60

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# --------------------------------------------------------------------------- style transforms
def _invert(x: torch.Tensor) -> torch.Tensor:
    return -x


def _thick(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _rotated(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, k=1, dims=(-2, -1))


def _blurred(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k1[:, None] * k1[None, :]) / 256.0
    y = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k[None, None])
    # Re-stretch contrast so the blurred digit still spans [-1, 1].
    lo = y.amin(dim=(-2, -1), keepdim=True)
    hi = y.amax(dim=(-2, -1), keepdim=True)
    return (2 * (y - lo) / (hi - lo).clamp_min(1e-6) - 1).clamp(-1, 1)


def _framed(x: torch.Tensor) -> torch.Tensor:
    y = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    out = torch.full_like(x, -1.0)
    out[..., 2:14, 2:14] = y
    out[..., 0, :] = 1.0
    out[..., -1, :] = 1.0
    out[..., :, 0] = 1.0
    out[..., :, -1] = 1.0
    return out


def _mirrored(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))



#: Built-in variants, in a fixed order (the order decides which private images each gets).
VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "inverted": _invert,
    "thick": _thick,
    "rotated": _rotated,
    "blurred": _blurred,
    "framed": _framed,
    "mirrored": _mirrored,
}


# --------------------------------------------------------------------------- raw data
@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def upsample(images8: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """8x8 images with values 0..16 -> ``N x 1 x size x size`` in [-1, 1] (bilinear)."""
    x = torch.from_numpy(np.asarray(images8, dtype=np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


# --------------------------------------------------------------------------- captions
def _attributes(images8: np.ndarray) -> dict[str, np.ndarray]:
    """Measured, continuous attributes of 8x8 digit images (values 0..16)."""
    x = images8 / 16.0
    n = x.shape[0]
    ys, xs = np.mgrid[0:8, 0:8].astype(np.float32)
    mass = x.sum(axis=(1, 2)) + 1e-6
    cx = (x * xs).sum(axis=(1, 2)) / mass
    cy = (x * ys).sum(axis=(1, 2)) / mass
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    mu_xy = (x * dx * dy).sum(axis=(1, 2)) / mass
    mu_yy = (x * dy * dy).sum(axis=(1, 2)) / mass
    slant = -mu_xy / (mu_yy + 1e-6)  # > 0: top leans right
    on = x > 0.25
    cols = on.any(axis=1)
    rows = on.any(axis=2)
    width = np.array([np.ptp(c.nonzero()[0]) + 1 if c.any() else 0 for c in cols], dtype=np.float32)
    height = np.array([np.ptp(r.nonzero()[0]) + 1 if r.any() else 0 for r in rows], dtype=np.float32)
    # Tie-break width/height (small integer ranges) with the ink spread, so quantile bins split them.
    width = width + 0.01 * np.sqrt((x * dx * dx).sum(axis=(1, 2)) / mass)
    height = height + 0.01 * np.sqrt(mu_yy)
    top_heavy = (x[:, :4].sum(axis=(1, 2)) - x[:, 4:].sum(axis=(1, 2))) / mass
    assert n == len(slant)
    left_heavy = (x[:, :, :4].sum(axis=(1, 2)) - x[:, :, 4:].sum(axis=(1, 2))) / mass
    return {
        "weight": mass,
        "slant": slant,
        "width": width,
        "height": height,
        "balance": top_heavy,
        "side": left_heavy,
    }


_BIN_WORDS = {
    "weight": ["faint", "light", "medium", "bold", "heavy"],
    "slant": ["leftmost", "left", "upright", "right", "rightmost"],
    "width": ["narrow", "slim", "wide", "broad"],
    "height": ["short", "average", "tall", "towering"],
    "balance": ["bottomheavy", "balanced", "topheavy"],
    "side": ["rightward", "centered", "leftward"],
}
_BIN_PHRASE = {
    "weight": "{} strokes",
    "slant": "{} slant",
    "width": "{}",
    "height": "{}",
    "balance": "{}",
    "side": "{}",
}


def caption_images(images8: np.ndarray, labels: np.ndarray, reference8: np.ndarray | None = None) -> list[str]:
    """Captions measured from 8x8 digit images.

    Bins are quantiles of ``reference8`` (default: the whole embedded dataset), so the same
    image always gets the same caption whatever split it is captioned in.
    """
    ref = _attributes(_raw()[0] if reference8 is None else reference8)
    att = _attributes(images8)
    words: dict[str, list[str]] = {}
    for key, names in _BIN_WORDS.items():
        qs = np.quantile(ref[key], np.linspace(0, 1, len(names) + 1)[1:-1])
        idx = np.searchsorted(qs, att[key], side="right")
        words[key] = [_BIN_PHRASE[key].format(names[i]) for i in idx]
    caps = []
    for i, lab in enumerate(labels):
        parts = [f"digit {int(lab)}"] + [words[k][i] for k in _BIN_WORDS]
        caps.append(", ".join(parts))
    return caps


def digit_prompt(k: int) -> str:
    """The class prompt used to measure prompt accuracy: ``"digit k"``."""
    return f"digit {int(k)}"


# --------------------------------------------------------------------------- splits
@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    images8, _ = _raw()
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(images8))
    out = {
        "public/train": perm[: N_PUBLIC - N_PUBLIC_HELDOUT],
        "public/heldout": perm[N_PUBLIC - N_PUBLIC_HELDOUT : N_PUBLIC],
    }
    start = N_PUBLIC
    n_train = N_PER_VARIANT - N_VARIANT_HELDOUT
    for name in VARIANTS:
        block = perm[start : start + N_PER_VARIANT]
        if len(block) < N_PER_VARIANT:
            raise RuntimeError("not enough private digits for the built-in variants")
        out[f"{name}/train"] = block[:n_train]
        out[f"{name}/heldout"] = block[n_train:]
        start += N_PER_VARIANT
    return out


def split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's digits for ``"public/train"``, ``"<variant>/heldout"``, ..."""
    table = _split_indices()
    if split not in table:
        raise KeyError(f"unknown digits split {split!r}; valid: {sorted(table)}")
    return table[split].copy()


def _make(split: str, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> CaptionedImages:
    images8, labels = _raw()
    idx = split_indices(split)
    x = upsample(images8[idx])
    if transform is not None:
        x = transform(x)
    return CaptionedImages(x.contiguous(), caption_images(images8[idx], labels[idx]), name=f"digits/{split}")


def labels_of(split: str) -> np.ndarray:
    return _raw()[1][split_indices(split)].copy()


def public_splits() -> DatasetSplits:
    """The pretraining data (original style)."""
    return DatasetSplits("digits/public", _make("public/train", None), _make("public/heldout", None))


def variant_splits(name: str) -> DatasetSplits:
    """A built-in fine-tuning dataset: a private split in the variant's style."""
    if name not in VARIANTS:
        raise KeyError(f"unknown built-in variant {name!r}; valid: {', '.join(VARIANTS)}")
    tf = VARIANTS[name]
    return DatasetSplits(f"digits/{name}", _make(f"{name}/train", tf), _make(f"{name}/heldout", tf))


def all_captions() -> list[str]:
    """Captions of every embedded image (the tokenizer's vocabulary is built from these)."""
    images8, labels = _raw()
    return caption_images(images8, labels)
