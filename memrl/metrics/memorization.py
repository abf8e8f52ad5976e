"""Memorization metrics: how much a fine-tuned diffusion model reproduces its training images.

Three complementary views (docs/design.md, section 5), all deterministic given their seeds:

* :func:`noise_norm_score` -- a *training-time* score after Wen et al. (ICLR 2024, "Detecting,
  explaining, and mitigating memorization in diffusion models"): a memorized caption pulls the
  noise prediction far away from the unconditional one, so ``||eps(x_t, t, c) - eps(x_t, t, "")||``
  is large. It needs no sampling, only UNet forwards on noised training images.
* :func:`nn_memorization` -- nearest-neighbour replication in a feature space: is each generated
  image closest to the training image whose prompt produced it, and how close; plus AMD, the
  memorization distance inside torchmetrics' MIFID.
* :func:`extraction_attack` -- Carlini et al. (USENIX Security 2023, "Extracting training data
  from diffusion models") style: a prompt is extracted when several of its generations agree with
  each other and with the training image under a tile-wise L2 distance.

Images are ``N x C x H x W`` float tensors in [-1, 1]; features are ``N x D`` arrays.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from memrl.errors import MemrlError

#: Timesteps (of a 1000-step DDPM schedule) at which the noise-norm score is averaged.
DEFAULT_NOISE_NORM_TIMESTEPS: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 900)
#: Fixed noise draws per (image, timestep) for the noise-norm score.
DEFAULT_NOISE_NORM_DRAWS = 4

#: Default quantile of held-out-to-train nearest-neighbour similarity used as the replication threshold.
DEFAULT_CALIBRATION_QUANTILE = 0.95

#: Tiles per side for the extraction distance (4 x 4 grid, as docs/design.md says).
DEFAULT_EXTRACTION_TILES = 4
#: Two images "match" when their largest tile-wise RMS distance is below this (images in [-1, 1]).
#: Carlini et al. used 0.15 on [0, 1] images, i.e. 0.3 on memrl's twice-as-wide range; but 16 x 16
#: digits upsampled from 8 x 8 carry little detail, and at 0.3 unseen real digits already "match"
#: a training image (measured, held-out -> nearest train: 19 % of the public split, 10 % of
#: "blurred"). The closest held-out digit of any built-in split is 0.17 away ("framed"; 0.21-0.33
#: elsewhere), so memrl uses 0.15: no held-out digit matches, while a copy with per-pixel noise of
#: std 0.05 (distance ~0.08) still does. A tile here is 4 x 4 = 16 pixels, so 0.15 allows a summed
#: squared error of 0.36 per tile: one pixel off by 0.6, not a stroke in the wrong place. For other
#: data, recalibrate: ``tile_l2_distance(heldout, train).min(1)`` should stay above the threshold.
DEFAULT_EXTRACTION_THRESHOLD = 0.15
#: Generations that must match each other and the training image for a prompt to count as extracted.
DEFAULT_MIN_MATCHES = 3

#: Pass as ``extractor`` to :func:`image_features` to match on flattened raw pixels.
PIXELS = "pixels"

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- helpers
@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` (and every submodule) in eval mode; restore each one's own flag afterwards.

    Restoring per submodule (not ``module.train(was_training)``) keeps deliberately frozen parts
    (e.g. a text encoder left in eval mode while the UNet trains) as they were.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _as_2d_float(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise MemrlError(f"{name} must be a non-empty N x D feature array, got shape {arr.shape}")
    return arr


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero, as in scikit-learn's cosine distance)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


# --------------------------------------------------------------------------- features
@torch.no_grad()
def image_features(
    images: torch.Tensor,
    extractor: torch.nn.Module | FeatureExtractor | str = PIXELS,
    batch_size: int = 512,
) -> np.ndarray:
    """Feature vectors (``N x D`` float64 array) for nearest-neighbour matching.

    ``extractor`` is a :class:`~memrl.models.feature_net.FeatureNet` (its ``.features`` is used,
    the usual choice: an embedding trained on public data only), any module or callable mapping
    images to ``N x D``, or :data:`PIXELS` for flattened raw pixels (no network; very sensitive to
    small shifts, so held-out digits already look near-identical to training digits, see
    :func:`calibrate_threshold`). A module is evaluated in eval mode and restored afterwards.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise MemrlError(f"images must be a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}")
    if isinstance(extractor, str):
        if extractor != PIXELS:
            raise MemrlError(f"unknown feature extractor {extractor!r}; pass {PIXELS!r}, a FeatureNet or a callable")
        return images.detach().cpu().double().flatten(1).numpy()
    fn: FeatureExtractor = getattr(extractor, "features", extractor)
    module = extractor if isinstance(extractor, torch.nn.Module) else None
    device = next(module.parameters()).device if module is not None and any(True for _ in module.parameters()) else None

    def run() -> np.ndarray:
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].float()
            out.append(fn(x.to(device) if device is not None else x).detach().cpu().double().flatten(1))
        return torch.cat(out).numpy()

    if module is None:
        return run()
    with _eval_mode(module):
        return run()


# --------------------------------------------------------------------------- text guidance (Wen et al.)
def text_guidance_detection(memorized: Sequence[float] | np.ndarray, heldout: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Wen et al.'s detection (ICLR 2024) as published: the magnitude of the text-conditional minus
    unconditional noise prediction, averaged along the *sampling* trajectory, per generation
    (:meth:`memrl.models.pipeline.DiffusionModel.generate` with ``return_guidance_norms``).

    Generations for memorization prompts (label 1) against generations for held-out prompts
    (label 0): ``text_guidance_auc`` is the ROC AUC of the magnitude as a detector (0.5 = the
    prompts the model was trained to repeat are indistinguishable; 1 = every memorized prompt
    scores above every held-out one), beside the two mean magnitudes.
    """
    from sklearn.metrics import roc_auc_score

    m = np.asarray(memorized, dtype=np.float64).reshape(-1)
    h = np.asarray(heldout, dtype=np.float64).reshape(-1)
    if m.size == 0 or h.size == 0:
        raise MemrlError(f"text-guidance detection needs scores for both groups, got {m.size} memorized and {h.size} held-out")
    auc = roc_auc_score(np.r_[np.ones(m.size), np.zeros(h.size)], np.r_[m, h])
    return {"text_guidance_auc": float(auc), "text_guidance_mem": float(m.mean()), "text_guidance_heldout": float(h.mean())}


# --------------------------------------------------------------------------- noise norm
@torch.no_grad()
def noise_norm_score(
    model: torch.nn.Module,
    images: torch.Tensor,
    captions: Sequence[str],
    timesteps: Sequence[int] = DEFAULT_NOISE_NORM_TIMESTEPS,
    n_noise: int = DEFAULT_NOISE_NORM_DRAWS,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float | list[float]]:
    """Training-time noise-norm memorization score (after Wen et al., ICLR 2024).

    For each (training image, caption) pair: ``x0 = model.to_latents(image)``; for every timestep
    ``t`` of the grid and every one of ``n_noise`` noise draws, ``x_t = scheduler.add_noise(x0,
    noise, t)`` and the score is ``|| eps(x_t, t, caption) - eps(x_t, t, "") ||_2`` (L2 over
    ``C x H x W``), averaged over timesteps and draws. A memorized caption dominates the
    prediction (the model "knows" the image from the text alone), so its norm is large; a caption
    the model ignores scores exactly 0.

    Why these choices: Wen et al. measure the text-conditional noise magnitude during sampling;
    memrl scores training pairs directly so two models (e.g. full vs. masked fine-tuning) are
    compared without sampling noise. The noise comes from a CPU generator seeded with ``seed`` and
    is drawn for all pairs at once (``N x n_noise`` draws, reused across timesteps), so every model
    sees *identical* noised inputs. ``batch_size`` is the number of (pair, timestep, draw) rows per
    UNet forward; conditional and unconditional predictions are separate forwards of equal shape,
    so equal contexts give bit-identical predictions.

    Returns ``{"noise_norm_mean", "noise_norm_max", "noise_norm_per_item"}`` (mean and max over pairs,
    and the per-pair scores in input order).
    """
    captions = list(captions)
    if images.ndim != 4 or images.shape[0] == 0:
        raise MemrlError(f"images must be a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}")
    if len(captions) != images.shape[0]:
        raise MemrlError(f"noise-norm score: {images.shape[0]} images but {len(captions)} captions")
    ts = [int(t) for t in timesteps]
    n_train = int(model.scheduler.config.num_train_timesteps)
    if not ts or any(t < 0 or t >= n_train for t in ts):
        raise MemrlError(f"noise-norm timesteps must be a non-empty list within [0, {n_train - 1}], got {ts}")
    if n_noise < 1 or batch_size < 1:
        raise MemrlError(f"n_noise and batch_size must be >= 1, got {n_noise} and {batch_size}")

    with _eval_mode(model):
        device = model.device
        dtype = next(model.unet.parameters()).dtype
        # Latents (VAE-encoded for latent models), in chunks.
        x0 = torch.cat(
            [model.to_latents(images[i : i + batch_size].to(device)).float() for i in range(0, images.shape[0], batch_size)]
        )
        n = x0.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((n, n_noise, *x0.shape[1:]), generator=gen)  # CPU: same draws on any device
        # One context per distinct prompt, encoded together with "" so an empty caption's context
        # is the very same tensor as the unconditional one.
        uniq = sorted(set(captions) | {""})
        ctx_all = model.encode_prompts(uniq).to(dtype)
        pos = {c: i for i, c in enumerate(uniq)}
        cap_idx = torch.tensor([pos[c] for c in captions])
        empty_ctx = ctx_all[pos[""]]

        # Flatten (pair, timestep, draw) into rows; pair-major order.
        t_grid = torch.tensor(ts, dtype=torch.long)
        n_t = len(ts)
        rows_pair = torch.arange(n).repeat_interleave(n_t * n_noise)
        rows_t = t_grid.repeat_interleave(n_noise).repeat(n)
        rows_k = torch.arange(n_noise).repeat(n * n_t)
        norms = torch.empty(rows_pair.shape[0], dtype=torch.float64)
        for s in range(0, rows_pair.shape[0], batch_size):
            p, t, k = rows_pair[s : s + batch_size], rows_t[s : s + batch_size], rows_k[s : s + batch_size]
            eps = noise[p, k].to(device)
            t_dev = t.to(device)
            x_t = model.scheduler.add_noise(x0[p], eps, t_dev).to(dtype)
            cond = ctx_all[cap_idx[p].to(device)]
            uncond = empty_ctx.expand_as(cond)
            e_c = model.unet(x_t, t_dev, encoder_hidden_states=cond).sample.float()
            e_u = model.unet(x_t, t_dev, encoder_hidden_states=uncond).sample.float()
            norms[s : s + batch_size] = (e_c - e_u).flatten(1).norm(dim=1).double().cpu()
    per_item = norms.view(n, n_t * n_noise).mean(dim=1)
    return {
        "noise_norm_mean": float(per_item.mean()),
        "noise_norm_max": float(per_item.max()),
        "noise_norm_per_item": [float(v) for v in per_item],
    }


# --------------------------------------------------------------------------- nearest neighbours
def nearest_neighbours(
    gen_feats: np.ndarray | torch.Tensor, train_feats: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """For each generated feature vector: index of its nearest training vector and their cosine similarity.

    Exact (brute-force) search with scikit-learn's ``NearestNeighbors(metric="cosine")``; the
    similarity is ``1 - cosine distance`` in [-1, 1]. Returns ``(indices, similarities)``, both of
    length ``len(gen_feats)``.
    """
    g = _as_2d_float(gen_feats, "generated features")
    tr = _as_2d_float(train_feats, "training features")
    if g.shape[1] != tr.shape[1]:
        raise MemrlError(f"feature dimensions differ: generated {g.shape[1]}, training {tr.shape[1]}")
    nn = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(tr)
    dist, idx = nn.kneighbors(g)
    return idx[:, 0].astype(np.int64), np.clip(1.0 - dist[:, 0], -1.0, 1.0)


def nn_memorization(
    gen_feats: np.ndarray | torch.Tensor,
    gen_owner: Sequence[int] | np.ndarray,
    train_feats: np.ndarray | torch.Tensor,
    threshold: float,
    tie_tol: float = 1e-9,
    gen_owner_groups: Sequence[Sequence[int]] | None = None,
) -> dict[str, float | list[int]]:
    """Nearest-neighbour replication of the memorization set.

    ``gen_owner[i]`` is the index (into ``train_feats``) of the training image whose caption
    prompted generation ``i``. ``gen_owner_groups[i]`` (optional) widens "own" to several training
    images: the probe images that share generation ``i``'s caption (class-level captions); the
    owner must be in its group. Returns:

    * ``nn_own_rate``: share of generations whose nearest training image, among *all* training
      images, is their own (ties within ``tie_tol`` count as own, so duplicate training images do
      not hide a copy);
    * ``replication_rate``: share that are nearest to their own image *and* have cosine
      similarity ``>= threshold`` (see :func:`calibrate_threshold` for why both are required);
    * ``amd``: mean over the distinct owner images (the memorization set) of the minimum cosine
      distance ``1 - cos`` to any generated image. torchmetrics' MIFID uses the same mean-over-real
      min distance but with ``1 - |cos|``; memrl keeps the sign so an inverted copy is not a copy.
      0 means every memorized image was reproduced exactly (up to feature scale);
    * ``mean_nn_similarity``: mean similarity of generations to their nearest training image;
    * ``nn_index``: the nearest training index of each generation.
    """
    g = _as_2d_float(gen_feats, "generated features")
    tr = _as_2d_float(train_feats, "training features")
    owner = np.asarray(gen_owner, dtype=np.int64).reshape(-1)
    if owner.shape[0] != g.shape[0]:
        raise MemrlError(f"{g.shape[0]} generated feature vectors but {owner.shape[0]} owner indices")
    if owner.min() < 0 or owner.max() >= tr.shape[0]:
        raise MemrlError(f"owner indices must lie in [0, {tr.shape[0] - 1}], got range [{owner.min()}, {owner.max()}]")
    idx, sim = nearest_neighbours(g, tr)
    own_sim = np.einsum("ij,ij->i", _unit_rows(g), _unit_rows(tr[owner]))
    if gen_owner_groups is not None:
        if len(gen_owner_groups) != g.shape[0]:
            raise MemrlError(f"{g.shape[0]} generated feature vectors but {len(gen_owner_groups)} owner groups")
        gu, tu = _unit_rows(g), _unit_rows(tr)
        for i, group in enumerate(gen_owner_groups):
            members = np.asarray(group, dtype=np.int64).reshape(-1)
            if owner[i] not in members or members.min() < 0 or members.max() >= tr.shape[0]:
                raise MemrlError(f"owner group {list(members)} of generation {i} must hold its owner {owner[i]} and lie in [0, {tr.shape[0] - 1}]")
            own_sim[i] = float((tu[members] @ gu[i]).max())
    own_nearest = own_sim >= sim - tie_tol
    replicated = own_nearest & (own_sim >= float(threshold))
    owners = np.unique(owner)
    _, owner_sim = nearest_neighbours(tr[owners], g)
    return {
        "nn_own_rate": float(own_nearest.mean()),
        "replication_rate": float(replicated.mean()),
        "amd": float(np.mean(1.0 - owner_sim)),
        "mean_nn_similarity": float(sim.mean()),
        "nn_index": [int(i) for i in idx],
    }


def calibrate_threshold(
    heldout_feats: np.ndarray | torch.Tensor,
    train_feats: np.ndarray | torch.Tensor,
    quantile: float = DEFAULT_CALIBRATION_QUANTILE,
) -> float:
    """Replication threshold: the ``quantile`` of held-out real images' similarity to their nearest training image.

    Real images the model never saw cross it only with probability ``1 - quantile``, so a
    generation above it is closer to the training set than unseen real data usually is (docs/design.md, section 5).

    Known caveat: on 16 x 16 digits, held-out real images already sit at cosine ~0.98 from their
    nearest training image in *pixel* space, so a threshold taken from real images alone can
    reject every generated sample (generations are rarely that sharp). memrl's
    ``replication_rate`` therefore also requires that the nearest training image is the prompt's
    *own* image, and the threshold must be calibrated in the same feature space used for matching
    (e.g. the FeatureNet embedding, not pixels, when matching on FeatureNet features). This
    function exists so a user can choose the quantile; it returns a value in [-1, 1].
    """
    if not 0.0 <= float(quantile) <= 1.0:
        raise MemrlError(f"quantile must lie in [0, 1], got {quantile}")
    _, sim = nearest_neighbours(heldout_feats, train_feats)
    return float(np.quantile(sim, float(quantile)))


# --------------------------------------------------------------------------- extraction attack
def _tiles(x: torch.Tensor, tiles: int) -> list[torch.Tensor]:
    """``N x C x H x W`` -> ``tiles**2`` flattened tiles ``N x d_k`` (near-equal sizes if H, W don't divide)."""
    return [
        w.flatten(1)
        for rows in torch.tensor_split(x, tiles, dim=-2)
        for w in torch.tensor_split(rows, tiles, dim=-1)
    ]


@torch.no_grad()
def tile_l2_distance(a: torch.Tensor, b: torch.Tensor, tiles: int = DEFAULT_EXTRACTION_TILES) -> torch.Tensor:
    """Pairwise largest tile-wise RMS distance (Carlini et al. 2023), a ``len(a) x len(b)`` matrix.

    Each image is cut into a ``tiles x tiles`` grid; per tile the L2 distance is divided by the
    square root of the tile's element count (an RMS, so the value does not depend on the image
    size) and the maximum over tiles is kept. Taking the worst tile means a generation matches only
    if it reproduces *every* region, not just the (mostly blank) average. Exact, no matmul trick,
    so identical images are at distance exactly 0.
    """
    if a.ndim != 4 or b.ndim != 4 or a.shape[1:] != b.shape[1:]:
        raise MemrlError(f"tile distance needs two N x C x H x W batches of equal image shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if tiles < 1 or a.shape[-1] < tiles or a.shape[-2] < tiles:
        raise MemrlError(f"cannot cut {a.shape[-2]} x {a.shape[-1]} images into {tiles} x {tiles} tiles")
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for ta, tb in zip(_tiles(a.detach().cpu().double(), tiles), _tiles(b.detach().cpu().double(), tiles)):
        d = torch.cdist(ta, tb, compute_mode="donot_use_mm_for_euclid_dist") / ta.shape[1] ** 0.5
        out = torch.maximum(out, d)
    return out


def _has_clique(adj: np.ndarray, k: int) -> bool:
    """Whether the undirected graph ``adj`` (boolean, symmetric) has a clique of size ``k`` (exact search)."""

    def extend(size: int, cands: list[int]) -> bool:
        if size >= k:
            return True
        for i, v in enumerate(cands):
            if size + len(cands) - i < k:  # not enough candidates left
                return False
            if extend(size + 1, [u for u in cands[i + 1 :] if adj[v, u]]):
                return True
        return False

    return extend(0, list(range(adj.shape[0])))


def extraction_attack(
    generations: torch.Tensor | Sequence[torch.Tensor],
    train_images: torch.Tensor,
    threshold: float = DEFAULT_EXTRACTION_THRESHOLD,
    min_matches: int = DEFAULT_MIN_MATCHES,
    tiles: int = DEFAULT_EXTRACTION_TILES,
) -> dict[str, float | list]:
    """Carlini-style extraction of the memorization set.

    ``generations[p]`` holds the ``G x C x H x W`` samples for prompt ``p`` (a list of tensors or a
    ``P x G x C x H x W`` tensor), ``train_images[p]`` that prompt's training image. Two images
    match when :func:`tile_l2_distance` is below ``threshold``. Prompt ``p`` is *extracted* when at
    least ``min_matches`` generations each match the training image and match one another pairwise
    (a clique in the match graph; exact search, cheap for the small G used here). Requiring the
    generations to agree among themselves, not only with the training image, is Carlini et al.'s
    guard against a lucky single sample.

    Returns ``extraction_rate`` (share of prompts extracted), ``extracted`` (per prompt),
    ``n_matching_train`` (generations matching the training image, per prompt) and
    ``min_train_distance`` (closest generation's distance to the training image, per prompt).
    """
    gens = list(generations) if not isinstance(generations, torch.Tensor) else list(generations.unbind(0))
    if train_images.ndim != 4 or len(gens) != train_images.shape[0] or not gens:
        raise MemrlError(
            f"extraction attack needs one generation batch per training image: got {len(gens)} batches "
            f"and training images of shape {tuple(train_images.shape)}"
        )
    if min_matches < 1:
        raise MemrlError(f"min_matches must be >= 1, got {min_matches}")
    extracted: list[bool] = []
    n_match: list[int] = []
    min_dist: list[float] = []
    for p, g in enumerate(gens):
        if g.ndim != 4 or g.shape[0] == 0:
            raise MemrlError(f"generations for prompt {p} must be a non-empty G x C x H x W tensor, got {tuple(g.shape)}")
        d_train = tile_l2_distance(g, train_images[p : p + 1], tiles)[:, 0]
        hits = (d_train < threshold).nonzero().flatten()
        n_match.append(int(hits.numel()))
        min_dist.append(float(d_train.min()))
        ok = False
        if hits.numel() >= min_matches:
            adj = (tile_l2_distance(g[hits], g[hits], tiles) < threshold).numpy()
            ok = _has_clique(adj, min_matches)
        extracted.append(ok)
    return {
        "extraction_rate": float(np.mean(extracted)),
        "extracted": extracted,
        "n_matching_train": n_match,
        "min_train_distance": min_dist,
    }
