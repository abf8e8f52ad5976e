"""The dataset interface every part of memrl consumes.

A fine-tuning dataset is a set of images with one caption each (the paper: chest X-rays with
their report text). memrl only needs two views of it: the *training* images (the private
split that is fine-tuned on, and from which the memorization set is drawn) and *held-out*
real images of the same domain (the reference set for FID/KID). ``CaptionedImages`` holds one
such set as a tensor in the model's pixel range [-1, 1] (or, for large user data, as
:class:`~memrl.data.image_store.LazyImages` decoded on access); ``DatasetSplits`` pairs the two.

Built-in variants of the embedded digits (:mod:`memrl.data.digits`) and user data
(:mod:`memrl.data.loaders`: an image folder with captions, or a sheet of image + caption) all
resolve to ``DatasetSplits``, so the rest of the package never cares where images came from.

User data also records where each image came from (``CaptionedImages.sources``) and, when the
user gives a memorization sheet, which training images the memorization probe uses
(``DatasetSplits.memorization``). Neither changes the fingerprint of a dataset without a
memorization sheet: cached evaluations and lookup tables are keyed by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from memrl.data.image_store import LazyImages, image_chunks


@dataclass
class CaptionedImages:
    """Images (``N x C x H x W`` float32 in [-1, 1]) with one caption each.

    ``images`` is a tensor, or :class:`~memrl.data.image_store.LazyImages` for user data too large
    to hold decoded (indexing either gives tensors; walk a whole set with
    :func:`~memrl.data.image_store.image_chunks`). ``sources`` (user data only): per image, the resolved file it was read from (or the sheet row
    of an embedded picture), used to match a memorization sheet; not part of the fingerprint.
    """

    images: torch.Tensor | LazyImages
    captions: list[str]
    name: str = "dataset"
    sources: list[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be N x C x H x W, got shape {tuple(self.images.shape)}")
        if len(self.captions) != self.images.shape[0]:
            raise ValueError(
                f"{self.name}: {self.images.shape[0]} images but {len(self.captions)} captions"
            )
        if self.sources is not None and len(self.sources) != len(self.captions):
            raise ValueError(f"{self.name}: {len(self.captions)} images but {len(self.sources)} sources")

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "CaptionedImages":
        idx = [int(i) for i in indices]
        sources = [self.sources[i] for i in idx] if self.sources is not None else None
        images = self.images.take(idx) if isinstance(self.images, LazyImages) else self.images[idx].clone()
        return CaptionedImages(images, [self.captions[i] for i in idx], name or self.name, sources)

    @property
    def lazy(self) -> bool:
        return isinstance(self.images, LazyImages)

    def decoded(self) -> "CaptionedImages":
        """This set with its images decoded into one tensor (itself when they already are): for
        small sets used whole, such as the memorization probe."""
        if not self.lazy:
            return self
        return CaptionedImages(self.images.materialize(), list(self.captions), self.name, self.sources)

    def fingerprint(self) -> str:
        """Content hash of images and captions: identical data gives an identical key (cache keys).

        The decoded float32 bytes are hashed a chunk at a time (the same bytes, in the same order,
        as hashing the whole tensor at once). Lazy images are read once and the hash remembered."""
        memo = getattr(self, "_fingerprint", None)
        if memo is not None:
            return memo
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        for chunk in image_chunks(self.images):
            h.update(np.ascontiguousarray(chunk.float().numpy()).tobytes())
        for c in self.captions:
            h.update(c.encode("utf-8") + b"\0")
        key = h.hexdigest()[:16]
        if self.lazy:  # files do not change under a run; a tensor may be edited in place
            self._fingerprint = key
        return key


@dataclass
class DatasetSplits:
    """A fine-tuning dataset: the private ``train`` split and ``heldout`` real images (FID reference).

    ``memorization``: the training indices the memorization probe uses, in order, when the user
    named them in a memorization sheet (``None``: the probe picks its own, see
    :func:`memrl.training.finetune.memorization_indices`).

    ``definition``: for data that memrl generates (the family), what defines it: generator,
    version, member and shape. When set it is what :meth:`fingerprint` hashes instead of the
    pixels, because generated float pixels differ in their last bits between CPUs (vectorised
    ``exp``, ``grid_sample`` and convolutions round differently on AVX2 and AVX-512 machines),
    and a cache key or lookup table must not depend on the machine that built the data.
    """

    name: str
    train: CaptionedImages
    heldout: CaptionedImages
    memorization: tuple[int, ...] | None = None
    definition: str | None = None

    def __post_init__(self) -> None:
        if self.memorization is not None:
            self.memorization = tuple(int(i) for i in self.memorization)
            bad = [i for i in self.memorization if not 0 <= i < len(self.train)]
            if bad or len(set(self.memorization)) != len(self.memorization):
                raise ValueError(f"{self.name}: memorization indices must be distinct training indices (0..{len(self.train) - 1}), got {list(self.memorization)}")

    def fingerprint(self) -> str:
        """Content key: train + held-out images and captions (or the ``definition`` of generated
        data), and the memorization set when given.

        Without a memorization sheet this is the key every cached evaluation was stored under;
        with one it differs, since the probe (and so every memorization metric) differs.
        """
        if self.definition is not None:
            key = hashlib.sha256(f"generated|{self.definition}".encode()).hexdigest()[:16]
        else:
            key = hashlib.sha256((self.train.fingerprint() + self.heldout.fingerprint()).encode()).hexdigest()[:16]
        if self.memorization is None:
            return key
        mem = ",".join(str(i) for i in self.memorization)
        return hashlib.sha256(f"{key}|memorization:{mem}".encode()).hexdigest()[:16]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]
