"""FID/KID through torchmetrics with memrl's feature network, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from memrl.errors import MemrlError
from memrl.metrics.quality import fid_kid


class Flatten(torch.nn.Module):
    """A deterministic 'feature network': a fixed random projection of the pixels."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(256, 16, generator=g) / 16, requires_grad=False)

    def forward(self, x):  # noqa: ANN001, ANN201
        return x.flatten(1).double() @ self.w.double()


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_of_identical_sets_is_zero():
    net = Flatten()
    x = torch.rand(120, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = fid_kid(net, x, x.clone())
    assert abs(r["fid"]) < 1e-3
    # KID averages random subsets; for one set against itself the subsets share points, which
    # biases it slightly negative (about -0.02 here): ~0 next to the KID of a different set
    shifted = fid_kid(net, x, x.clone() * 0.3 + 0.5)
    assert shifted["fid"] > 1.0 and shifted["kid"] > 3 * shifted["kid_std"]
    assert abs(r["kid"]) < 0.05 * shifted["kid"]


def test_fid_matches_independent_scipy_computation():
    net = Flatten()
    g = torch.Generator().manual_seed(1)
    real = torch.rand(150, 1, 16, 16, generator=g) * 2 - 1
    fake = (torch.rand(130, 1, 16, 16, generator=g) * 2 - 1) * 0.7 + 0.1
    ours = fid_kid(net, real, fake)["fid"]
    ref = scipy_fid(net(real).numpy(), net(fake).numpy())
    assert ours == pytest.approx(ref, rel=1e-3, abs=1e-3)
    assert ref > 0.1  # the sets really differ


def test_inception_without_its_package_is_a_clear_error():
    from memrl.metrics.quality import InceptionFeatures

    try:
        import torch_fidelity  # noqa: F401
    except Exception:  # noqa: BLE001
        with pytest.raises(MemrlError, match="torch-fidelity"):
            InceptionFeatures()
    else:  # pragma: no cover - only where torch-fidelity is installed
        pytest.skip("torch-fidelity is installed here")
