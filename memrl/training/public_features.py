"""``memrl feature-net``: the offline fallback feature network, trained on a user's *public* images.

FID/KID and nearest-neighbour memorization need an embedding of images. Without Inception weights
or a domain model (``--feature-net package.module:callable``), memrl's small
:class:`~memrl.models.feature_net.FeatureNet` is the fallback: a CNN classifier whose embedding is
the feature vector. For RGB (or any) data of one's own it is trained here on a *public* image
folder or sheet (never the private fine-tuning set: a network that has seen the private images
would score their copies as ordinary), with each image's caption as its class label. That needs
class-level captions (captions that repeat, e.g. ``"a chest x-ray, cardiomegaly"``); a folder
whose captions are all distinct is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from memrl.data.loaders import load_dataset
from memrl.errors import MemrlError
from memrl.models.feature_net import FeatureNet, train_feature_net


def train_public_feature_net(
    spec: str | Path,
    channels: int = 3,
    image_size: int = 32,
    epochs: int = 30,
    seed: int = 0,
    caption_column: str | None = None,
    image_column: str | None = None,
    progress: bool = False,
) -> tuple[FeatureNet, dict]:
    """``(network, summary)``: a FeatureNet trained on every image of ``spec`` (both of its splits),
    loaded at ``channels x image_size x image_size``, classes = distinct captions."""
    if channels not in (1, 3):
        raise MemrlError(f"--channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size < 16:
        raise MemrlError(f"--size must be >= 16 (the network works at 16 x 16), got {image_size}")
    if epochs < 1:
        raise MemrlError(f"--epochs must be >= 1, got {epochs}")
    # decoded at once (lazy=False): training draws random batches of all of them, at a small size
    data = load_dataset(spec, image_size, channels, caption_column=caption_column, image_column=image_column, lazy=False)
    images = torch.cat([data.train.images, data.heldout.images])
    captions = list(data.train.captions) + list(data.heldout.captions)
    classes = sorted(set(captions))
    if len(classes) < 2 or len(classes) == len(captions):
        raise MemrlError(
            f"public data {spec}: {len(captions)} images with {len(classes)} distinct caption(s); the fallback feature network "
            "learns to tell captions apart, so it needs at least 2 captions that repeat (class-level labels); "
            "or pass --feature-net package.module:callable with a network of your domain"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c in captions], dtype=torch.long)
    net = train_feature_net(images, labels, epochs=epochs, seed=seed, progress=progress, num_classes=len(classes))
    with torch.no_grad():
        acc = float((net.classify(images).argmax(1) == labels).float().mean())
    summary = {"data": str(spec), "images": len(captions), "classes": len(classes), "channels": channels, "epochs": epochs, "seed": seed, "train_accuracy": round(acc, 4)}
    return net, summary
