"""The dataset descriptor: a fixed-size vector that tells the policy what kind of data it faces.

One policy serves many datasets only if it can see how they differ. The descriptor summarises a
fine-tuning set through the feature network (the same offline network used for FID):

* the mean and the spread of its training features, projected on a PCA basis (scikit-learn)
  fitted once on the features of the datasets the agent trains on, so every dataset is described
  in the same coordinates; the basis is saved with the run and reused by ``memrl replay``;
* its log size, its duplication rate (share of training images with a near-identical twin,
  i.e. centred-pixel cosine >= 0.99) and the share of distinct captions;
* its pixel statistics (mean and standard deviation in [-1, 1]).

It is computed once per dataset and cached in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from memrl.data.dataset import DatasetSplits
from memrl.data.image_store import LazyImages, image_chunks, passes
from memrl.errors import MemrlError

#: Extra scalar entries after the PCA mean and spread.
SCALARS = ("log_size", "duplication_rate", "distinct_captions", "pixel_mean", "pixel_std")


def _features(feature_net: torch.nn.Module, images: torch.Tensor | LazyImages) -> np.ndarray:
    """Feature rows of ``images``: a tensor in one pass (as every stored descriptor was computed),
    lazy images a decoded chunk at a time."""
    with torch.no_grad():
        p = next(feature_net.parameters())
        return torch.cat([feature_net(c.to(p.device, p.dtype)).double().cpu() for c in passes(images)]).numpy()


def _pixel_mean_std(images: torch.Tensor | LazyImages) -> tuple[float, float]:
    """Mean and standard deviation over every pixel value, in float64: of a tensor at once (as every
    stored descriptor was computed), of lazy images accumulated chunk by chunk."""
    if not isinstance(images, LazyImages):
        x = images.double()
        return float(x.mean()), float(x.std())
    n = total = squares = 0.0
    for chunk in image_chunks(images):
        x = chunk.double()
        n, total, squares = n + x.numel(), total + float(x.sum()), squares + float((x * x).sum())
    mean = total / n
    return mean, float(np.sqrt(max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1)))


def duplication_rate(images: torch.Tensor, threshold: float = 0.99) -> float:
    """Share of images whose nearest other image has centred-pixel cosine >= ``threshold``."""
    n = images.shape[0]
    if n < 2:
        return 0.0
    x = images.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    sim = x @ x.T
    sim.fill_diagonal_(-1.0)
    return float((sim.max(1).values >= threshold).double().mean())


@dataclass
class DescriptorBasis:
    """The PCA basis (fitted on training datasets' features) that every descriptor is projected on."""

    mean: np.ndarray
    components: np.ndarray  # (k, feature_dim)
    scale: np.ndarray  # (k,) standard deviation along each component, to normalise

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        return 2 * self.k + len(SCALARS)

    @classmethod
    def fit(cls, feature_net: torch.nn.Module, datasets: list[DatasetSplits], k: int = 8) -> "DescriptorBasis":
        feats = np.concatenate([_features(feature_net, d.train.images) for d in datasets])
        k = min(k, feats.shape[0], feats.shape[1])
        pca = PCA(n_components=k, svd_solver="full").fit(feats)
        return cls(pca.mean_.copy(), pca.components_.copy(), np.sqrt(np.maximum(pca.explained_variance_, 1e-12)))

    def describe(self, feature_net: torch.nn.Module, data: DatasetSplits) -> np.ndarray:
        f = _features(feature_net, data.train.images)
        if f.shape[1] != self.components.shape[1]:
            raise MemrlError(
                f"descriptor basis expects {self.components.shape[1]}-d features, the feature network gives {f.shape[1]}"
            )
        z = (f - self.mean) @ self.components.T / self.scale
        pixel_mean, pixel_std = _pixel_mean_std(data.train.images)
        scalars = [
            np.log(len(data.train)) / 10.0,
            duplication_rate(data.train.images),
            len(set(data.train.captions)) / max(1, len(data.train)),
            pixel_mean,
            pixel_std,
        ]
        vec = np.concatenate([z.mean(0), z.std(0), np.asarray(scalars)])
        return np.clip(vec, -10, 10).astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "components": self.components.tolist(), "scale": self.scale.tolist(), "scalars": list(SCALARS)}

    @classmethod
    def from_dict(cls, d: dict) -> "DescriptorBasis":
        try:
            return cls(np.asarray(d["mean"], float), np.asarray(d["components"], float), np.asarray(d["scale"], float))
        except KeyError as exc:
            raise MemrlError(f"descriptor basis is missing field {exc}") from None

    def save(self, path: str | Path) -> None:
        from memrl.utils.io import write_json_atomic

        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "DescriptorBasis":
        p = Path(path)
        if not p.is_file():
            raise MemrlError(f"no descriptor basis at {p} (written by memrl train beside policy.zip)")
        return cls.from_dict(json.loads(p.read_text()))
