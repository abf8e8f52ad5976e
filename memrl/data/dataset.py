"""The dataset interface every part of memrl consumes.

A fine-tuning dataset is a set of images with one caption each (the paper: chest X-rays with
their report text). memrl only needs two views of it: the *training* images (the private
split that is fine-tuned on, and from which the memorization set is drawn) and *held-out*
real images of the same domain (the reference set for FID/KID). ``CaptionedImages`` holds one
such set as a tensor in the model's pixel range [-1, 1]; ``DatasetSplits`` pairs the two.

Built-in variants of the embedded digits (:mod:`memrl.data.digits`) and user data
(:mod:`memrl.data.loaders`: an image folder with captions, or a CSV of path + caption) all
resolve to ``DatasetSplits``, so the rest of the package never cares where images came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class CaptionedImages:
    """Images (``N x C x H x W`` float32 in [-1, 1]) with one caption each."""

    images: torch.Tensor
    captions: list[str]
    name: str = "dataset"

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be N x C x H x W, got shape {tuple(self.images.shape)}")
        if len(self.captions) != self.images.shape[0]:
            raise ValueError(
                f"{self.name}: {self.images.shape[0]} images but {len(self.captions)} captions"
            )

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "CaptionedImages":
        idx = [int(i) for i in indices]
        return CaptionedImages(self.images[idx].clone(), [self.captions[i] for i in idx], name or self.name)

    def fingerprint(self) -> str:
        """Content hash of images and captions: identical data gives an identical key (cache keys)."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(np.ascontiguousarray(self.images.float().numpy()).tobytes())
        for c in self.captions:
            h.update(c.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]


@dataclass
class DatasetSplits:
    """A fine-tuning dataset: the private ``train`` split and ``heldout`` real images (FID reference)."""

    name: str
    train: CaptionedImages
    heldout: CaptionedImages

    def fingerprint(self) -> str:
        return hashlib.sha256((self.train.fingerprint() + self.heldout.fingerprint()).encode()).hexdigest()[:16]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]
