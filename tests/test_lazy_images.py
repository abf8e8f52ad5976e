"""Lazy user images (memrl/data/image_store.py): decoded on access, equal to eager loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from memrl.data.dataset import CaptionedImages
from memrl.data.image_store import LazyImages, image_chunks
from memrl.data.loaders import load_dataset
from memrl.envs.descriptor import DescriptorBasis
from memrl.errors import MemrlError


def _folder(root, n=24, bad=None):  # noqa: ANN001, ANN202
    """RGB pictures of varied sizes (some not square) with a metadata.csv; ``bad``: a row index written as garbage."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["file_name,text"]
    for i in range(n):
        w, h = (20, 20) if i % 3 else (24, 18)
        name = f"img{i:02d}.png"
        if i == bad:
            (root / name).write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(root / name)
        lines.append(f"{name},picture {i % 6}")  # class-level captions: they repeat
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("rgb") / "data", n=40)


@pytest.mark.parametrize("channels", [1, 3])
def test_lazy_loading_equals_eager_loading(folder, channels):
    eager = load_dataset(folder, 16, channels, lazy=False)
    lazy = load_dataset(folder, 16, channels, lazy=True)
    assert not eager.train.lazy and lazy.train.lazy and lazy.heldout.lazy
    assert lazy.fingerprint() == eager.fingerprint()  # same key: cached evaluations carry over
    assert lazy.train.captions == eager.train.captions and lazy.image_shape == eager.image_shape == (channels, 16, 16)
    x, y = eager.train.images, lazy.train.images
    assert tuple(y.shape) == tuple(x.shape)
    assert torch.equal(y[3], x[3]) and torch.equal(y[-1], x[-1])
    assert torch.equal(y[2:7], x[2:7])
    assert torch.equal(y[torch.tensor([5, 1, 5])], x[torch.tensor([5, 1, 5])])
    assert torch.equal(torch.cat(list(image_chunks(y, 5))), x)
    sub_e, sub_l = eager.train.subset([4, 0, 4]), lazy.train.subset([4, 0, 4])
    assert isinstance(sub_l.images, LazyImages)  # selecting rows decodes nothing
    assert sub_l.fingerprint() == sub_e.fingerprint()
    assert torch.equal(sub_l.decoded().images, sub_e.images)
    with pytest.raises(IndexError):
        y[len(y)]


def test_an_unreadable_image_fails_at_load_time_naming_it(tmp_path):
    root = _folder(tmp_path / "bad", n=8, bad=5)
    with pytest.raises(MemrlError, match="img05.png"):
        load_dataset(root, 16, 3, lazy=True)


def test_the_automatic_choice_follows_the_decoded_size(folder, monkeypatch):
    import memrl.data.loaders as loaders

    assert not load_dataset(folder, 16, 3).train.lazy  # 24 tiny images: decoded at once
    monkeypatch.setattr(loaders, "AUTO_LAZY_BYTES", 1000)
    assert load_dataset(folder, 16, 3).train.lazy


def test_the_descriptor_of_lazy_images_matches_eager(folder):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6))
    net.num_features = 6
    eager = load_dataset(folder, 16, 3, lazy=False)
    lazy = load_dataset(folder, 16, 3, lazy=True)
    basis = DescriptorBasis.fit(net, [eager], k=3)
    assert np.allclose(basis.describe(net, lazy), basis.describe(net, eager), atol=1e-5)
    assert np.allclose(DescriptorBasis.fit(net, [lazy], k=3).components, basis.components, atol=1e-6)


@pytest.mark.slow
def test_a_quick_evaluation_of_lazy_images_equals_eager(folder, quick_model_dir):
    """Fine-tune latents, samples, FID/KID and nearest neighbours from lazy images: the same numbers."""
    from memrl.evaluation import Evaluator, preset

    ev = Evaluator(quick_model_dir[0])
    size, ch = ev.model.image_size, ev.model.image_channels
    cfg = preset("quick").with_method("lora", None, 0)
    mask = ev.parse_mask("0010011")
    eager = ev.run(load_dataset(folder, size, ch, lazy=False), mask, cfg)
    ev2 = Evaluator(quick_model_dir[0])  # its own real-set statistics, computed from the lazy images
    lazy = ev2.run(load_dataset(folder, size, ch, lazy=True), mask, cfg)
    for r in (eager, lazy):
        r.pop("seconds", None), r.pop("timings", None)
    assert lazy == eager


def test_captioned_images_accepts_lazy_images_of_the_right_length(folder):
    data = load_dataset(folder, 16, 3, lazy=True)
    imgs = data.train.images
    with pytest.raises(ValueError, match="captions"):
        CaptionedImages(imgs, data.train.captions[:-1], "short")
