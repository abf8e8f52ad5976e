"""Generation quality: FID and KID from torchmetrics on a chosen feature network.

torchmetrics computes both; memrl only supplies the feature extractor (the offline
:class:`~memrl.models.feature_net.FeatureNet`, or Inception when its weights are local) and keeps
the real-set statistics so they are computed once per held-out set.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from memrl.errors import MemrlError


class _Features(torch.nn.Module):
    """Wrap a feature network so torchmetrics feeds it our [-1, 1] float images unchanged."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.num_features)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # images live on the CPU; the network may be on a GPU: features come back to the CPU
        device = next((p.device for p in self.net.parameters()), x.device)
        return self.net(x.float().to(device)).cpu()


def _batches(x: torch.Tensor, n: int = 512):
    for i in range(0, x.shape[0], n):
        yield x[i : i + n]


@torch.no_grad()
def fid_kid(
    feature_net: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    kid_subset_size: int | None = None,
    kid_subsets: int = 50,
) -> dict[str, float]:
    """FID and KID (mean and std over subsets) between two image sets in [-1, 1].

    With few samples in many feature dimensions FID is biased upwards; the sample counts are
    returned so a report can say so, and KID (unbiased) is the number to trust then.
    """
    feature_net.eval()
    feat = _Features(feature_net)
    fid = FrechetInceptionDistance(feature=feat, reset_real_features=True, normalize=False, sync_on_compute=False)
    n_min = min(real.shape[0], fake.shape[0])
    sub = int(kid_subset_size or min(50, n_min))
    kid = KernelInceptionDistance(feature=feat, subsets=kid_subsets, subset_size=sub, normalize=False, sync_on_compute=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in _batches(real):
            fid.update(b, real=True)
            kid.update(b, real=True)
        for b in _batches(fake):
            fid.update(b, real=False)
            kid.update(b, real=False)
        fid_v = float(fid.compute())
        kid_m, kid_s = kid.compute()
    return {
        "fid": fid_v,
        "kid": float(kid_m),
        "kid_std": float(kid_s),
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
        "feature_dim": feat.num_features,
    }


# --------------------------------------------------------------------------- FID statistics
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows = samples): ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)``.

    The same formula torchmetrics computes (unbiased covariances), in float64 on the CPU; used for
    the bootstrap and the noise floor, where the features are already extracted.
    """
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise MemrlError(f"frechet_distance needs two N x D feature arrays with N >= 2 and equal D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def fid_bootstrap(real: np.ndarray, fake: np.ndarray, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Basic (pivotal) bootstrap interval of the population FID; both sets resampled ``n_boot`` times.

    The plug-in FID is biased upwards at small sample sizes, and resampling with replacement
    inflates it further (fewer distinct samples): the percentile interval of the resampled values
    then lies entirely *above* the plug-in value. The basic interval ``[2 F - q_hi, 2 F - q_lo]``
    reflects that shift back, so it estimates where the FID of the two *distributions* lies (it can
    sit below the plug-in ``fid``; clipped at 0). Its width is the number to read when comparing two
    masks: differences well inside it are sampling noise. ``fid_boot_std`` is the spread.
    """
    if n_boot < 1:
        raise MemrlError(f"fid_bootstrap: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    point = frechet_distance(real, fake)
    stats = np.empty(n_boot)
    for k in range(n_boot):
        stats[k] = frechet_distance(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
    q_lo, q_hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"fid_ci_low": float(max(0.0, 2 * point - q_hi)), "fid_ci_high": float(max(0.0, 2 * point - q_lo)), "fid_boot_std": float(stats.std())}


def fid_noise_floor(real: np.ndarray, seed: int = 0) -> float:
    """FID between two disjoint random halves of the real held-out set.

    Two samples of the *same* distribution score this much at this sample size: a model whose
    FID is near it is as close to the data as the metric can tell.
    """
    real = np.asarray(real)
    perm = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    return frechet_distance(real[perm[:half]], real[perm[half : 2 * half]])


class InceptionFeatures(torch.nn.Module):
    """Inception-v3 pool features (torchmetrics' FID default) for [-1, 1] images of any channel count.

    Needs ``torch-fidelity`` and its Inception weights available offline. memrl does not install
    them (they pull torchvision, which breaks this stack on some machines); where they work, set
    ``fid_features: inception`` in the evaluation config.
    """

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            import torch_fidelity  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken torchvision
            raise MemrlError(
                "FID with Inception features needs the 'torch-fidelity' package (pip install 'torchmetrics[image]') "
                "and its weights file pt_inception-2015-12-05-6726825d.pth in the torch hub cache "
                f"(~/.cache/torch/hub/checkpoints) for offline use ({type(exc).__name__}: {exc}); "
                "or use fid_features: feature_net (the default)"
            ) from None
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except Exception as exc:  # noqa: BLE001 - weights missing offline
            raise MemrlError(
                "Inception weights not found offline: place pt_inception-2015-12-05-6726825d.pth in "
                f"~/.cache/torch/hub/checkpoints ({type(exc).__name__}: {exc})"
            ) from None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(u8).reshape(x.shape[0], -1)
