"""Images decoded when they are used, not when the dataset loads.

A user dataset at Stable Diffusion's size does not fit in memory as one float32 tensor (512 x 512
RGB is 3 MB an image: 10,000 images are 30 GB). :class:`LazyImages` stands in for the
``N x C x H x W`` tensor of :class:`~memrl.data.dataset.CaptionedImages`: it keeps only where
each image comes from (:class:`~memrl.data.pixels.ImageRef`) and decodes, with the very function
the eager path uses (:func:`~memrl.data.pixels.load_fitted`), exactly the rows it is indexed
with. The consumers that walk a whole split (the fine-tune's latents, features for FID and
nearest neighbours, the descriptor, the content fingerprint) do so in chunks of
:data:`CHUNK` images, so peak memory is one chunk, not the dataset.

Indexing returns ordinary tensors, identical to the eager tensor's rows (tests/test_lazy_images.py
checks it); :meth:`LazyImages.take` selects rows without decoding them. Everything that needs the
whole set at once (``float()``, ``double()``, ``to()``, ``numpy()``) decodes it, which is what an
eager dataset holds anyway: correct for every consumer, memory-bounded for the chunked ones.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from memrl.data.pixels import ImageRef, load_fitted

#: Images decoded at a time by the chunked consumers.
CHUNK = 256

#: ``load_dataset(lazy=None)`` loads user data lazily when the decoded float32 images would take
#: more than this many bytes (and eagerly below: small sets are faster decoded once).
AUTO_LAZY_BYTES = 2 * 1024**3


class LazyImages:
    """``N x C x H x W`` float32 images in [-1, 1], decoded from ``refs`` on access."""

    ndim = 4
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, refs: Sequence[ImageRef], size: int, channels: int, resize: str = "center-crop") -> None:
        self.refs = tuple(refs)
        self.size, self.channels, self.resize = int(size), int(channels), resize

    # ------------------------------------------------------------------ tensor-like shape
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.refs), self.channels, self.size, self.size))

    def __len__(self) -> int:
        return len(self.refs)

    def size_bytes(self) -> int:
        """What the decoded float32 images would take in memory."""
        return len(self.refs) * self.channels * self.size * self.size * 4

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} x {self.channels} x {self.size} x {self.size}, decoded on access)"

    # ------------------------------------------------------------------ access
    def _rows(self, index) -> list[int] | int:  # noqa: ANN001
        n = len(self.refs)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"image index {i} out of range for {n} images")
            return i % n
        if isinstance(index, slice):
            return list(range(n))[index]
        if isinstance(index, torch.Tensor):
            index = index.tolist() if index.dtype != torch.bool else torch.nonzero(index).flatten().tolist()
        elif isinstance(index, np.ndarray):
            index = np.flatnonzero(index).tolist() if index.dtype == bool else index.tolist()
        rows = [int(i) for i in index]
        bad = [i for i in rows if not -n <= i < n]
        if bad:
            raise IndexError(f"image index {bad[0]} out of range for {n} images")
        return [i % n for i in rows]

    def _decode(self, i: int) -> torch.Tensor:
        return load_fitted(self.refs[i], self.size, self.channels, self.resize)

    def __getitem__(self, index) -> torch.Tensor:  # noqa: ANN001
        rows = self._rows(index)
        if isinstance(rows, int):
            return self._decode(rows)
        if not rows:
            return torch.empty((0, self.channels, self.size, self.size))
        return torch.stack([self._decode(i) for i in rows])

    def take(self, indices: Sequence[int]) -> "LazyImages":
        """The rows ``indices`` (repeats allowed), still undecoded."""
        rows = self._rows(list(indices))
        return LazyImages([self.refs[i] for i in rows], self.size, self.channels, self.resize)

    def chunks(self, size: int = CHUNK) -> Iterator[torch.Tensor]:
        """The images in order, ``size`` at a time."""
        for i in range(0, len(self.refs), size):
            yield self[i : i + size]

    # ------------------------------------------------------------------ the whole set (decodes everything)
    def materialize(self) -> torch.Tensor:
        if not self.refs:
            return torch.empty(tuple(self.shape))
        return torch.cat(list(self.chunks()))

    def float(self) -> torch.Tensor:
        return self.materialize()

    def double(self) -> torch.Tensor:
        return self.materialize().double()

    def clone(self) -> torch.Tensor:
        return self.materialize()

    def cpu(self) -> torch.Tensor:
        return self.materialize()

    def detach(self) -> torch.Tensor:
        return self.materialize()

    def numpy(self) -> np.ndarray:
        return self.materialize().numpy()

    def to(self, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        return self.materialize().to(*args, **kwargs)

    def flatten(self, *args) -> torch.Tensor:  # noqa: ANN002
        return self.materialize().flatten(*args)


def image_chunks(images: "torch.Tensor | LazyImages", size: int = CHUNK) -> Iterator[torch.Tensor]:
    """``images`` in order, ``size`` at a time: slices of a tensor, decoded chunks of lazy images."""
    if isinstance(images, LazyImages):
        yield from images.chunks(size)
        return
    for i in range(0, images.shape[0], size):
        yield images[i : i + size]


def passes(images: "torch.Tensor | LazyImages") -> Iterator[torch.Tensor]:
    """``images`` for a consumer that accumulates over batches: a tensor whole, in one pass (the
    computation every stored result was made with: batching can change float rounding), lazy
    images a decoded chunk at a time."""
    if isinstance(images, LazyImages):
        yield from images.chunks()
    else:
        yield images

