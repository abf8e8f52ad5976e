"""The offline feature network: a small CNN digit classifier whose embedding feeds FID/KID and
nearest-neighbour metrics when no Inception (or domain) network is available.

It is trained on the *public* split only (never on private fine-tuning data), saved beside the
diffusion model as ``feature_net/{config.json, model.safetensors}``. ``num_features`` is set so
torchmetrics' FID/KID accept it as a custom feature extractor. It takes images of any size
(resized to 16 x 16) and converts between grey and RGB when the data's channels differ from its own.

A user's own network (e.g. a chest X-ray classifier) is named ``package.module:callable``
(:func:`load_feature_module`): the callable returns an ``nn.Module`` with an integer
``num_features`` that maps ``N x C x H x W`` images in [-1, 1] to ``N x num_features``; it is
wrapped in :class:`FeatureModule` so FID, nearest neighbours and the dataset descriptor all call
its ``forward``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from memrl.errors import MemrlError


class FeatureNet(nn.Module):
    """``images in [-1, 1] -> features (num_features)``; ``classify`` adds a linear head."""

    def __init__(self, channels: int = 1, num_features: int = 64, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.config = {"channels": channels, "num_features": num_features, "num_classes": num_classes, "width": width}
        self.num_features = num_features
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.proj = nn.Linear(2 * w * 16, num_features)
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        want = int(self.config["channels"])
        if x.shape[1] != want:  # grey net on RGB data: luminance-like mean; RGB net on grey data: repeat
            if want == 1:
                x = x.float().mean(dim=1, keepdim=True)
            elif x.shape[1] == 1:
                x = x.expand(-1, want, -1, -1)
            else:
                raise MemrlError(f"feature network takes {want}-channel images, got {x.shape[1]} channels")
        if x.shape[-1] != 16 or x.shape[-2] != 16:
            x = F.interpolate(x.float(), size=(16, 16), mode="bilinear", align_corners=False)
        return F.gelu(self.proj(self.body(x.float())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # torchmetrics calls forward for features
        return self.features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "FeatureNet":
        folder = Path(folder)
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise MemrlError(f"feature network folder {folder} lacks {name} (run `memrl pretrain` to create it)")
        net = cls(**json.loads((folder / "config.json").read_text()))
        net.load_state_dict(load_file(str(folder / "model.safetensors")))
        return net.eval()


def train_feature_net(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
    num_classes: int | None = None,
) -> FeatureNet:
    """Supervised training with +-1 px random shifts (generated digits are not perfectly centred).

    ``num_classes``: outputs of the classification head (default: 10, the digits, or more when the
    labels need them)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classes = max(10, int(labels.max()) + 1) if num_classes is None else int(num_classes)
    net = FeatureNet(channels=images.shape[1], num_classes=classes)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = images.shape[0]
    total = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1))
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="feature net", disable=not progress, leave=False)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            x = images[idx]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            loss = F.cross_entropy(net.classify(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return net.eval()


#: ``package.module:callable`` (dotted names on both sides).
MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_module_spec(spec: str | Path) -> bool:
    """True when ``spec`` names a Python callable (``package.module:callable``), not a folder."""
    s = str(spec)
    return bool(MODULE_SPEC.match(s)) and not Path(s).exists()


class FeatureModule(nn.Module):
    """A user's feature network under memrl's interface: ``forward`` = ``features`` = the user's
    ``forward`` on float images (a user module's own ``.features`` attribute, e.g. a CNN trunk, is
    never called by mistake)."""

    def __init__(self, net: nn.Module, spec: str) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.num_features = int(net.num_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def load_feature_module(spec: str) -> FeatureModule:
    """Import ``package.module:callable``, call it without arguments, check the result; one
    :class:`MemrlError` line naming ``spec`` when something is wrong."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise MemrlError(f"feature network {spec}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise MemrlError(f"feature network {spec}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise MemrlError(f"feature network {spec}: {attr} is not callable; expected a function returning an nn.Module")
    net = obj()
    if not isinstance(net, nn.Module):
        raise MemrlError(f"feature network {spec}: {attr}() returned {type(net).__name__}, expected a torch nn.Module")
    n = getattr(net, "num_features", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MemrlError(f"feature network {spec}: the module needs an integer attribute num_features >= 1 (its feature dimension), got {n!r}")
    return FeatureModule(net, spec).eval()


def module_hash(module: FeatureModule) -> str:
    """Content hash of a user's feature network: its spec string and every state_dict tensor."""
    h = hashlib.sha256(module.spec.encode() + b"\0")
    for name, value in sorted(module.net.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "module-" + h.hexdigest()[:16]
