"""The offline feature network: a small CNN digit classifier whose embedding feeds FID/KID and
nearest-neighbour metrics when no Inception (or domain) network is available.

It is trained on the *public* split only (never on private fine-tuning data), saved beside the
diffusion model as ``feature_net/{config.json, model.safetensors}``. ``num_features`` is set so
torchmetrics' FID/KID accept it as a custom feature extractor.
"""

from __future__ import annotations

import json
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
) -> FeatureNet:
    """Supervised training with +-1 px random shifts (generated digits are not perfectly centred)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureNet(channels=images.shape[1])
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
