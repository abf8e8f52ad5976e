"""A seeded family of private datasets on the embedded digits: ``family:<id>``.

The six built-in variants (:data:`memrl.data.digits.VARIANTS`) all have 70 training images,
no duplicates and attribute-rich captions, so a policy trained on them sees nearly constant
size, duplication and caption statistics. The family draws many datasets whose memorization
drivers really differ. Member ``i`` is a deterministic draw from
``numpy.random.default_rng([FAMILY_SEED, i])`` (same id -> bit-identical images and captions in
any process) of:

* a **style**: 2-4 transforms with continuous strengths, from ``mirror``, ``rotate`` (angle),
  ``shear``, ``thickness`` (soft max-pool dilation of a given kernel and strength), ``blur``
  (Gaussian sigma), ``frame`` (border width), ``gamma`` (gamma and contrast), ``invert`` and
  ``noise`` (additive Gaussian, seeded per image). They are applied in that canonical order
  whatever order they were drawn in; images stay 1 x 16 x 16 in [-1, 1];
* a **class subset**: 2..10 digit classes;
* a **size**: 30..300 training images (log-uniform);
* a **duplication level** 0..0.5: that share of the training images are near-copies (the styled
  image plus Gaussian noise of sigma ``DUP_NOISE``, seeded) of other training images, with the
  same caption; this is what makes memorization easier;
* a **caption style**: ``terse`` (``"digit 3"``), ``rich`` (the measured captions of
  :func:`memrl.data.digits.caption_images`) or ``mix`` (each image rich with a drawn share).

Where the images come from:

* **training** images are drawn from the 797 private digits (outside the 1,000-image public
  pretraining split) of the chosen classes. When the member needs more distinct training images
  than that pool can give (after keeping back what the held-out set needs, see below), the
  extra ones are drawn from the same training digits *with replacement* and shifted by a seeded
  random 1-pixel jitter (``dx, dy`` in {-1, 0, 1}, not both 0) before the style, and they get
  their own per-image noise, so repeats are not identical;
* **held-out** images (the FID reference, ``N_HELDOUT`` = 192 = 3 x the 64-d feature
  dimension) are disjoint from the training digits: first the private digits of the chosen
  classes not used for training, then the public split's *held-out* part (150 images the
  pretrained model never trained on), then the public *train* part (which the base model was
  pretrained on, but the member never fine-tunes on), all in the member's style. Private digits
  are kept back from training only where the public pool of the chosen classes cannot fill the
  held-out set. ``describe(i)["heldout_sources"]`` counts each source. Held-out captions use the
  member's caption style.

Members are split by id into ``RANGES`` (train / validation / test); other ids are refused.
Generation takes a few tens of milliseconds per member and is cached per id. A member's
fingerprint (the key of its cached evaluations and lookup-table rows) is derived from
:func:`definition` (seed, :data:`GENERATOR_VERSION`, id), not from its float pixels, which
differ in the last bits between CPUs; the same id is the same key on every machine.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from memrl.data import digits
from memrl.data.dataset import CaptionedImages, DatasetSplits
from memrl.errors import MemrlError

FAMILY_SEED = 20250611
#: Bumped whenever a change to this module changes any member's images or captions: the members'
#: fingerprints (cache keys, lookup tables) are derived from it and the id, not from the pixels.
GENERATOR_VERSION = 1
#: Half-open id ranges of the family's splits.
RANGES: dict[str, tuple[int, int]] = {"train": (0, 64), "validation": (64, 80), "test": (80, 112)}
N_HELDOUT = 192
TRAIN_SIZE = (30, 300)
N_CLASSES = (2, 10)
N_TRANSFORMS = (2, 4)
MAX_DUPLICATION = 0.5
DUP_NOISE = 0.01
CAPTION_STYLES = ("terse", "rich", "mix")
#: The style transforms, in the order they are applied.
TRANSFORMS = ("mirror", "rotate", "shear", "thickness", "blur", "frame", "gamma", "invert", "noise")

_ROLE_TRAIN, _ROLE_HELDOUT, _ROLE_DUP = 1, 2, 3


def _ranges_text() -> str:
    return ", ".join(f"{k} {a}..{b - 1}" for k, (a, b) in RANGES.items())


def _check_id(i: object) -> int:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
        raise MemrlError(f"family member id must be an integer ({_ranges_text()}), got {i!r}")
    i = int(i)
    if not any(a <= i < b for a, b in RANGES.values()):
        raise MemrlError(f"family member id {i} is outside every range; valid ids: {_ranges_text()}")
    return i


def split_of(i: int) -> str:
    """``"train"``, ``"validation"`` or ``"test"``: the range holding id ``i``."""
    i = _check_id(i)
    return next(k for k, (a, b) in RANGES.items() if a <= i < b)


def ids(split: str) -> list[int]:
    """The member ids of one split (``"train"``, ``"validation"`` or ``"test"``)."""
    if split not in RANGES:
        raise MemrlError(f"unknown family split {split!r}; valid: {', '.join(RANGES)}")
    a, b = RANGES[split]
    return list(range(a, b))


def parse_spec(spec: str) -> int:
    """The id of a ``family:<id>`` spec (a MemrlError naming the valid ranges otherwise)."""
    body = spec.split(":", 1)[1].strip() if ":" in spec else ""
    try:
        i = int(body)
    except ValueError:
        raise MemrlError(f"dataset {spec!r}: expected family:<id> with an integer id ({_ranges_text()})") from None
    return _check_id(i)


# --------------------------------------------------------------------------- the draw
def _draw_style(rng: np.random.Generator) -> list[dict]:
    k = int(rng.integers(N_TRANSFORMS[0], N_TRANSFORMS[1] + 1))
    names = [TRANSFORMS[j] for j in rng.choice(len(TRANSFORMS), size=k, replace=False)]
    style = []
    for name in sorted(names, key=TRANSFORMS.index):
        if name == "rotate":
            p = {"degrees": round(float(rng.choice([-1, 1]) * rng.uniform(10, 60)), 2)}
        elif name == "shear":
            p = {"shear": round(float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)), 3)}
        elif name == "thickness":
            p = {"kernel": int(rng.choice([3, 5])), "strength": round(float(rng.uniform(0.4, 1.0)), 3)}
        elif name == "blur":
            p = {"sigma": round(float(rng.uniform(0.5, 1.6)), 3)}
        elif name == "frame":
            p = {"width": int(rng.integers(1, 4))}
        elif name == "gamma":
            p = {"gamma": round(float(math.exp(rng.uniform(math.log(0.4), math.log(2.5)))), 3),
                 "contrast": round(float(rng.uniform(0.5, 1.0)), 3)}
        elif name == "noise":
            p = {"sigma": round(float(rng.uniform(0.05, 0.3)), 3)}
        else:  # invert, mirror: on/off, drawn means on
            p = {}
        style.append({"name": name, **p})
    return style


@lru_cache(maxsize=1)
def _pools() -> dict[str, np.ndarray]:
    n = len(digits._raw()[0])
    perm = np.random.RandomState(digits.SPLIT_SEED).permutation(n)
    return {
        "private": np.sort(perm[digits.N_PUBLIC :]),
        "public/heldout": np.sort(digits.split_indices("public/heldout")),
        "public/train": np.sort(digits.split_indices("public/train")),
    }


@lru_cache(maxsize=None)
def _plan(i: int) -> dict:
    """Every random choice of member ``i`` (parameters and digit indices), drawn in a fixed order."""
    i = _check_id(i)
    rng = np.random.default_rng([FAMILY_SEED, i])
    images8, labels = digits._raw()
    style = _draw_style(rng)
    n_cls = int(rng.integers(N_CLASSES[0], N_CLASSES[1] + 1))
    classes = sorted(int(c) for c in rng.choice(10, size=n_cls, replace=False))
    n_train = int(round(math.exp(rng.uniform(math.log(TRAIN_SIZE[0]), math.log(TRAIN_SIZE[1])))))
    dup_level = round(float(rng.uniform(0.0, MAX_DUPLICATION)), 3)
    caption_style = str(rng.choice(CAPTION_STYLES))
    if caption_style == "mix":
        rich_share = round(float(rng.uniform(0.25, 0.75)), 3)
    else:
        rich_share = 1.0 if caption_style == "rich" else 0.0

    pools = {k: rng.permutation(v[np.isin(labels[v], classes)]) for k, v in _pools().items()}
    n_dup = int(round(dup_level * n_train))
    n_base = n_train - n_dup
    public_avail = len(pools["public/heldout"]) + len(pools["public/train"])
    reserve = max(0, N_HELDOUT + 8 - public_avail)  # private digits kept for held-out (+8: raw-duplicate margin)
    n_priv = min(n_base, len(pools["private"]) - reserve)
    train_digits = pools["private"][:n_priv]
    n_resampled = n_base - n_priv
    resampled = rng.choice(train_digits, size=n_resampled, replace=True) if n_resampled else np.zeros(0, np.int64)
    shifts = [(0, 0)] * n_priv
    offsets = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]
    shifts += [offsets[j] for j in rng.integers(0, len(offsets), size=n_resampled)]
    base_idx = np.concatenate([train_digits, resampled]).astype(np.int64)
    dup_src = rng.integers(0, n_base, size=n_dup)
    order = rng.permutation(n_train)
    rich_train = rng.random(n_train) < rich_share
    rich_held = rng.random(N_HELDOUT) < rich_share

    # Held-out: private leftovers, then public held-out, then public train; never a digit whose
    # raw 8x8 pixels equal a training digit's (the embedded data has a few exact repeats).
    seen = {images8[j].tobytes() for j in train_digits}
    held, sources = [], {"private": 0, "public/heldout": 0, "public/train": 0}
    candidates = [("private", pools["private"][n_priv:]), ("public/heldout", pools["public/heldout"]), ("public/train", pools["public/train"])]
    for src, cand in candidates:
        for j in cand:
            if len(held) == N_HELDOUT:
                break
            if images8[j].tobytes() in seen:
                continue
            held.append(int(j))
            sources[src] += 1
    if len(held) < N_HELDOUT:  # cannot happen for 2+ classes; kept as a loud guard
        raise RuntimeError(f"family member {i}: only {len(held)} held-out digits for classes {classes}")
    return {
        "id": i,
        "style": style,
        "classes": classes,
        "n_train": n_train,
        "n_duplicates": n_dup,
        "duplication": dup_level,
        "caption_style": caption_style,
        "rich_share": rich_share,
        "base_idx": base_idx,
        "shifts": shifts,
        "n_private_train": n_priv,
        "n_resampled": n_resampled,
        "dup_src": dup_src,
        "order": order,
        "rich_train": rich_train,
        "rich_held": rich_held,
        "heldout_idx": np.asarray(held, np.int64),
        "heldout_sources": sources,
    }


# --------------------------------------------------------------------------- the style
def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    # Sample (x + 1) with zero padding so what comes in from outside is background (-1).
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    lo = y.amin(dim=(-2, -1), keepdim=True)
    hi = y.amax(dim=(-2, -1), keepdim=True)
    return 2 * (y - lo) / (hi - lo).clamp_min(1e-6) - 1


def _frame(x: torch.Tensor, width: int) -> torch.Tensor:
    s = x.shape[-1]
    inner = s - 2 * (width + 1)
    out = torch.full_like(x, -1.0)
    out[..., width + 1 : width + 1 + inner, width + 1 : width + 1 + inner] = F.interpolate(
        x, size=(inner, inner), mode="bilinear", align_corners=False
    )
    out[..., :width, :] = 1.0
    out[..., -width:, :] = 1.0
    out[..., :, :width] = 1.0
    out[..., :, -width:] = 1.0
    return out


def _noise(n: int, seeds: list[tuple[int, ...]], sigma: float, size: int) -> torch.Tensor:
    z = np.stack([np.random.default_rng([FAMILY_SEED, *s]).standard_normal(size * size) for s in seeds]) if n else np.zeros((0, size * size))
    return torch.from_numpy((sigma * z).astype(np.float32)).view(n, 1, size, size)


def _apply_style(x: torch.Tensor, style: list[dict], seeds: list[tuple[int, ...]]) -> torch.Tensor:
    """The member's style on ``N x 1 x H x W`` images in [-1, 1]; ``seeds[k]`` seeds image k's noise."""
    for t in style:
        name = t["name"]
        if name == "mirror":
            x = torch.flip(x, dims=(-1,))
        elif name == "rotate":
            a = math.radians(t["degrees"])
            x = _affine(x, torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]))
        elif name == "shear":
            x = _affine(x, torch.tensor([[1.0, t["shear"], 0.0], [0.0, 1.0, 0.0]]))
        elif name == "thickness":
            k = t["kernel"]
            x = x + t["strength"] * (F.max_pool2d(x, kernel_size=k, stride=1, padding=k // 2) - x)
        elif name == "blur":
            x = _gaussian_blur(x, t["sigma"])
        elif name == "frame":
            x = _frame(x, t["width"])
        elif name == "gamma":
            u = ((x + 1) / 2).clamp(0, 1) ** t["gamma"]
            x = t["contrast"] * (2 * u - 1)
        elif name == "invert":
            x = -x
        elif name == "noise":
            x = x + _noise(x.shape[0], seeds, t["sigma"], x.shape[-1])
        x = x.clamp(-1, 1)
    return x


def _shift(x: torch.Tensor, shifts: list[tuple[int, int]]) -> torch.Tensor:
    """Shift each image by whole pixels (dx right, dy down), filling with background (-1)."""
    out = torch.full_like(x, -1.0)
    h, w = x.shape[-2:]
    for k, (dx, dy) in enumerate(shifts):
        out[k, :, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = x[k, :, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    return out


def _captions(idx: np.ndarray, rich: np.ndarray) -> list[str]:
    images8, labels = digits._raw()
    if len(idx) == 0:
        return []
    measured = digits.caption_images(images8[idx], labels[idx]) if rich.any() else [""] * len(idx)
    return [measured[k] if rich[k] else digits.digit_prompt(labels[j]) for k, j in enumerate(idx)]


@lru_cache(maxsize=256)
def _build(i: int) -> DatasetSplits:
    p = _plan(i)
    images8, _ = digits._raw()
    name = f"family/{p['id']}"
    # Training: base digits (private, then jittered resamples), styled, then near-copies.
    base_idx = p["base_idx"]
    x = _shift(digits.upsample(images8[base_idx]), p["shifts"])
    x = _apply_style(x, p["style"], [(i, _ROLE_TRAIN, k) for k in range(len(base_idx))])
    caps = _captions(base_idx, p["rich_train"][: len(base_idx)])
    src = p["dup_src"]
    if len(src):
        dups = x[src] + _noise(len(src), [(i, _ROLE_DUP, k) for k in range(len(src))], DUP_NOISE, x.shape[-1])
        x = torch.cat([x, dups.clamp(-1, 1)])
        caps = caps + [caps[int(s)] for s in src]
    order = p["order"]
    train = CaptionedImages(x[torch.from_numpy(order)].contiguous(), [caps[int(k)] for k in order], name=f"{name}/train")
    # Held-out: disjoint digits, same style and caption style.
    h_idx = p["heldout_idx"]
    h = _apply_style(digits.upsample(images8[h_idx]), p["style"], [(i, _ROLE_HELDOUT, k) for k in range(len(h_idx))])
    heldout = CaptionedImages(h.contiguous(), _captions(h_idx, p["rich_held"]), name=f"{name}/heldout")
    return DatasetSplits(name, train, heldout)


def member(i: int) -> DatasetSplits:
    """Family member ``i`` (``DatasetSplits`` named ``family/<i>``); deterministic per id.

    Built once per id and cached; each call returns fresh tensors, so callers may modify them.
    """
    d = _build(_check_id(i))
    return DatasetSplits(
        d.name,
        CaptionedImages(d.train.images.clone(), list(d.train.captions), d.train.name),
        CaptionedImages(d.heldout.images.clone(), list(d.heldout.captions), d.heldout.name),
        definition=definition(i),
    )


def definition(i: int) -> str:
    """What defines member ``i`` (its fingerprint's source, see ``DatasetSplits.definition``).

    The same on every machine: a member's float pixels differ in their last bits between CPUs
    (the style's ``exp``, ``grid_sample`` and convolutions are vectorised differently), its
    parameters and digits do not."""
    return f"memrl.data.family|seed {FAMILY_SEED}|v{GENERATOR_VERSION}|id {_check_id(i)}"


def describe(i: int) -> dict:
    """Member ``i``'s drawn parameters, JSON-ready (for listings and reports)."""
    p = _plan(_check_id(i))
    return {
        "id": p["id"],
        "name": f"family/{p['id']}",
        "split": split_of(p["id"]),
        "style": [dict(t) for t in p["style"]],
        "classes": list(p["classes"]),
        "n_train": p["n_train"],
        "n_heldout": int(len(p["heldout_idx"])),
        "n_private_train": p["n_private_train"],
        "n_resampled": p["n_resampled"],
        "duplication": p["duplication"],
        "n_duplicates": p["n_duplicates"],
        "caption_style": p["caption_style"],
        "rich_caption_share": p["rich_share"],
        "heldout_sources": dict(p["heldout_sources"]),
    }
