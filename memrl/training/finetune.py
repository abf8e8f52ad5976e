"""Masked PEFT fine-tuning: the inner loop's training half (docs/design.md, section 4).

Read top to bottom: copy the *pretrained* weights (never a previous evaluation's), wrap the UNet
with the PEFT method inside the masked units, build the training set (a ``data_size_ratio``
subset of the private split plus the memorization set repeated ``n_repeats`` times: duplication
is what induces memorization), then AdamW at a constant learning rate with gradient clipping,
the DDPM epsilon loss and caption dropout. Everything random is drawn from one seeded CPU
generator, so the same request gives the same weights.

Two published mitigations can be switched on (:mod:`memrl.training.mitigations`, both off by
default): random words added to the captions (``caption_random_words``) and Wen et al.'s filter
that drops samples with a large text-guidance magnitude from the loss
(``guidance_filter_threshold``). They draw from their own streams, so with a mitigation on the
batches, noise and caption dropout are the same as without it (a paired comparison).

The text encoder (and VAE) stay frozen, as in the paper; their outputs are computed once (the
captions' encodings once per step when random words change the captions every draw).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from memrl.data.dataset import CaptionedImages, DatasetSplits
from memrl.errors import MemrlError, NonFiniteError
from memrl.models.pipeline import DiffusionModel
from memrl.peft_masking import METHOD_REGISTRY, Mask, apply_peft, get_method
from memrl.training.distributed import DataParallel
from memrl.training.losses import draw_noise, epsilon_loss
from memrl.training.mitigations import RandomWordAdder, caption_vocabulary, filtered_epsilon_loss
from memrl.utils.config import ConfigError

#: Per-method default learning rates, ``{method: lr}``: derived from the method registry
#: (:data:`memrl.peft_masking.registry.METHOD_REGISTRY`, ``MethodSpec.default_lr``), where each
#: value and its provenance live. Kept for compatibility; :meth:`FinetuneConfig.resolved_lr`
#: reads the registry itself.
DEFAULT_LR: dict[str, float] = {name: spec.default_lr for name, spec in METHOD_REGISTRY.items()}

#: The :class:`FinetuneConfig` fields that switch a mitigation on (:mod:`memrl.training.mitigations`).
MITIGATION_FIELDS: tuple[str, ...] = ("caption_random_words", "guidance_filter_threshold")

#: ``FinetuneConfig.mixed_precision`` values: float32 throughout, or autocast to this dtype.
MIXED_PRECISION: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: The :class:`FinetuneConfig` fields that only trade memory or speed against the numbers (not
#: what is learned): a GPU user sets them to fit SD-1.5's published batch of 128 on one device.
SCALE_FIELDS: tuple[str, ...] = ("mixed_precision", "grad_accumulation", "gradient_checkpointing")


@dataclass
class FinetuneConfig:
    """One fine-tuning budget. ``lr=None`` takes the method's tuned default (its registry entry's ``default_lr``)."""

    method: str = "lora"
    lr: float | None = None
    steps: int = 200
    batch_size: int = 32
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    rank: int = 4
    n_mem: int = 10
    n_repeats: int = 50
    data_size_ratio: float = 1.0
    data_seed: int = 0
    seed: int = 0
    granularity: str = "attention"
    #: Random word addition (Somepalli et al. 2023): words inserted into each drawn caption; 0 = off.
    caption_random_words: int = 0
    #: Wen et al. (ICLR 2024): samples whose ``||eps_c - eps_u||`` exceeds this are left out of the loss; None = off.
    guidance_filter_threshold: float | None = None
    #: Autocast of the UNet's forward pass while training: ``"no"`` (float32), ``"bf16"`` (CPU or
    #: GPU) or ``"fp16"`` (CUDA only, with a gradient scaler). The trained weights stay float32.
    mixed_precision: str = "no"
    #: Split each batch into this many micro-batches, one backward pass each, one optimizer step
    #: per batch: the same samples, noise and timesteps as one pass (drawn for the whole batch
    #: first), at a fraction of the activation memory. The result agrees with 1 up to float rounding.
    grad_accumulation: int = 1
    #: Recompute the UNet's activations in the backward pass (diffusers' gradient checkpointing):
    #: less memory, more time, the same gradients.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Only the mitigation options are checked here (the other fields are checked by whoever
        # fills the config, and coercing them here would change stored cache keys).
        k = self.caption_random_words
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError("finetune config", f"'caption_random_words' must be an integer >= 0 (0 = off), got {k!r}")
        t = self.guidance_filter_threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not t > 0):
            raise ConfigError("finetune config", f"'guidance_filter_threshold' must be a number > 0 or null (off), got {t!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError("finetune config", f"'mixed_precision' must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        a = self.grad_accumulation
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 1:
            raise ConfigError("finetune config", f"'grad_accumulation' must be an integer >= 1 (1 = off), got {a!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError("finetune config", f"'gradient_checkpointing' must be true or false, got {self.gradient_checkpointing!r}")

    def resolved_lr(self) -> float:
        """``lr``, or the method's default learning rate from the registry (MemrlError for an unknown method)."""
        if self.lr is not None:
            return float(self.lr)
        return get_method(self.method).default_lr


@dataclass
class FinetuneResult:
    model: DiffusionModel
    peft: object
    memorization_set: CaptionedImages
    memorization_index: list[int]
    train_size: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: Samples drawn over all steps, and how many of them Wen et al.'s filter left out of the loss.
    samples_seen: int = 0
    samples_filtered: int = 0
    #: Steps with every sample filtered: no update (the optimizer is not stepped).
    skipped_steps: int = 0

    @property
    def filtered_share(self) -> float:
        """Share of the drawn samples the guidance filter dropped (0 when it is off or nothing trained)."""
        return self.samples_filtered / self.samples_seen if self.samples_seen else 0.0


def memorization_indices(train: CaptionedImages, n_mem: int) -> list[int]:
    """The fixed memorization set: ``n_mem`` training images chosen in a fixed order.

    Images whose caption is unique in the split come first: their prompt names exactly one
    training image, so "the prompt's own image" is well defined. Datasets with class-level
    captions (``"digit 3"`` for every 3, common in real sheets) have too few of them; the set is
    then filled with one image per caption not used yet, and only then with images whose caption
    another probe already has. For such probes "own" means any probe image with the same caption
    (see :func:`probe_groups`); the base model's ``nn_own_rate`` on the same dataset is the chance
    level to read it against (docs/design.md, section 5).
    """
    counts: dict[str, int] = {}
    for c in train.captions:
        counts[c] = counts.get(c, 0) + 1
    usable = [i for i, c in enumerate(train.captions) if c.strip()]
    idx = [i for i in usable if counts[train.captions[i]] == 1][:n_mem]
    if len(idx) < n_mem:
        used = {train.captions[i] for i in idx}
        for i in usable:
            if len(idx) == n_mem:
                break
            if i not in idx and train.captions[i] not in used:
                idx.append(i)
                used.add(train.captions[i])
        chosen = set(idx)
        idx += [i for i in usable if i not in chosen][: n_mem - len(idx)]
    if len(idx) < n_mem:
        raise MemrlError(
            f"dataset {train.name}: only {len(idx)} training images have a caption, {n_mem} needed for the memorization set "
            "(lower finetune.n_mem, or add images)"
        )
    return idx


def probe_groups(captions: list[str], index: list[int]) -> list[tuple[int, ...]]:
    """For each probe ``index[k]``: the probe images (training indices) sharing its caption.

    With unique captions each group is the probe alone; with repeated captions a generation for
    ``"digit 3"`` that reproduces any probed 3 is a copy of a probed image.
    """
    by_caption: dict[str, list[int]] = {}
    for i in index:
        by_caption.setdefault(captions[i], []).append(i)
    return [tuple(by_caption[captions[i]]) for i in index]


def training_set(data: DatasetSplits, cfg: FinetuneConfig) -> tuple[CaptionedImages, list[int]]:
    """``data_size_ratio`` of the non-memorization images (seeded by ``data_seed``) + memorization set x ``n_repeats``.

    The memorization set is the dataset's own (``data.memorization``, from a memorization sheet:
    its first ``n_mem`` images, in the sheet's order) when it has one, else
    :func:`memorization_indices`."""
    if not 0.0 <= cfg.data_size_ratio <= 1.0:
        raise MemrlError(f"data_size_ratio must be in [0, 1], got {cfg.data_size_ratio}")
    if cfg.n_mem <= 0:
        mem: list[int] = []
    elif getattr(data, "memorization", None):
        mem = [int(i) for i in data.memorization][: cfg.n_mem]
    else:
        mem = memorization_indices(data.train, cfg.n_mem)
    rest = [i for i in range(len(data.train)) if i not in set(mem)]
    k = int(round(cfg.data_size_ratio * len(rest)))
    chosen = sorted(np.random.RandomState(cfg.data_seed).permutation(rest)[:k].tolist())
    idx = chosen + mem * max(1, cfg.n_repeats if mem else 1)
    if not idx:
        raise MemrlError(f"dataset {data.name}: the training set is empty (data_size_ratio={cfg.data_size_ratio}, n_mem={cfg.n_mem})")
    return data.train.subset(idx, name=f"{data.name}/finetune"), mem


def finetune(
    pretrained: DiffusionModel,
    data: DatasetSplits,
    mask: Mask,
    cfg: FinetuneConfig,
    progress: bool = False,
    parallel: DataParallel | None = None,
) -> FinetuneResult:
    """Fine-tune a deep copy of ``pretrained`` with ``cfg.method`` inside ``mask``; ``pretrained`` is untouched.

    ``parallel``: this process's share of a fine-tune split across processes
    (:mod:`memrl.training.distributed`); every process returns the same weights.
    """
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = copy.deepcopy(pretrained)
    model.requires_grad_(False)
    peft = apply_peft(model.unet, mask, cfg.method, rank=cfg.rank, granularity=cfg.granularity)
    train, mem = training_set(data, cfg)
    mem_set = (data.train.subset(mem, name=f"{data.name}/memorization") if mem else data.train.subset([], name="empty")).decoded()
    losses: list[float] = []
    seen = filtered = skipped = 0
    if peft.trainable_params > 0 and cfg.steps > 0:
        device = model.device
        with torch.no_grad():
            latents = torch.cat([model.to_latents(train.images[i : i + 256].to(device)) for i in range(0, len(train), 256)])
            uniq = sorted(set(train.captions))
            ctx_table = torch.cat([model.encode_prompts(uniq[i : i + 256]) for i in range(0, len(uniq), 256)])
            empty = model.encode_prompts([""])[0]
        cap_idx = torch.tensor([uniq.index(c) for c in train.captions])
        words = RandomWordAdder(caption_vocabulary(uniq), cfg.caption_random_words, cfg.seed) if cfg.caption_random_words > 0 else None
        threshold = cfg.guidance_filter_threshold
        opt = torch.optim.AdamW(peft.param_groups(cfg.weight_decay), lr=cfg.resolved_lr())
        params = [p for _, p in peft.trainable]
        autocast = autocast_for(cfg.mixed_precision, device)  # checks fp16 against the device first
        scaler = torch.amp.GradScaler(device.type) if cfg.mixed_precision == "fp16" else None
        if cfg.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        model.unet.train()
        n = latents.shape[0]
        # across processes the batch is cut as one process with world x K micro-batches would cut it
        parts_per_batch = cfg.grad_accumulation * (parallel.world if parallel is not None else 1)
        perm, pos = torch.randperm(n, generator=gen), 0
        bar = tqdm(range(cfg.steps), desc=f"fine-tune {cfg.method}", disable=not progress, leave=False)
        for _ in bar:
            if pos + cfg.batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
            if words is None:
                ctx = ctx_table[cap_idx[idx]]
            else:  # new words every draw: encoded per step (the text encoder is frozen)
                with torch.no_grad():
                    ctx = model.encode_prompts(words([train.captions[i] for i in idx.tolist()]))
            drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
            ctx = torch.where(drop[:, None, None].to(ctx.device), empty.expand_as(ctx), ctx)
            seen += len(idx)
            batch = latents[idx]
            # one micro-batch is the whole batch (the path every stored evaluation took); with
            # grad_accumulation > 1 (or several processes) the batch's noise and timesteps are
            # drawn first, then split
            draws = draw_noise(batch, model.scheduler, gen) if parts_per_batch > 1 else None
            parts = _micro_batches(len(idx), parts_per_batch)
            opt.zero_grad(set_to_none=True)
            step_loss, weight, bad, step_filtered = 0.0, 0, None, 0
            for part in parts if parallel is None else parallel.mine(parts):
                part_draws = None if draws is None else (draws[0][part], draws[1][part])
                with autocast():
                    if threshold is None:
                        loss = epsilon_loss(model.unet, model.scheduler, batch[part], ctx[part], gen, part_draws)
                        kept = part.stop - part.start
                    else:
                        step = filtered_epsilon_loss(model.unet, model.scheduler, batch[part], ctx[part], empty, gen, threshold, part_draws)
                        step_filtered += step.n_filtered
                        if step.loss is None:  # every sample filtered: nothing to learn from this part
                            continue
                        loss, kept = step.loss, int(step.kept.sum())
                if not torch.isfinite(loss):
                    # stop before a NaN reaches the weights, the samples and the metric kernels (some of
                    # which abort the process on NaN input): the step is recorded as failed instead
                    bad = float(loss.detach())
                    break
                # micro-batches are weighted by their kept samples, so the update is the batch mean's
                scaled = loss if draws is None else loss * kept
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_loss, weight = step_loss + float(loss.detach()) * kept, weight + kept
            if parallel is not None:  # sum gradients, kept samples and failures over the processes
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                totals = torch.tensor([step_loss, weight, step_filtered, 0.0 if bad is None else 1.0], dtype=torch.float32, device=device)
                parallel.all_reduce_sum([p.grad for p in params] + [totals])
                step_loss, weight, step_filtered = float(totals[0]), int(round(float(totals[1]))), int(round(float(totals[2])))
                if bad is None and totals[3] > 0:
                    bad = float("nan")  # another process's loss was not finite
            filtered += step_filtered
            if bad is not None:
                bar.close()
                raise NonFiniteError(
                    f"fine-tune diverged: {cfg.method} loss is {bad} at step {len(losses) + skipped + 1} "
                    f"of {cfg.steps} (lr {cfg.resolved_lr():g}); lower the learning rate"
                )
            if weight == 0:  # every sample filtered: no update from this batch
                skipped += 1
                continue
            if scaler is not None:
                scaler.unscale_(opt)
            if draws is not None:
                for p in params:
                    if p.grad is not None:
                        p.grad.div_(weight)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)  # skips the update when fp16 gradients overflowed
                scaler.update()
            else:
                opt.step()
            losses.append(float(loss.detach()) if draws is None else step_loss / weight)
        bar.close()
        if parallel is not None:  # identical weights everywhere, whatever the collectives' rounding
            parallel.broadcast_tensors(params)
        if cfg.gradient_checkpointing:
            model.unet.disable_gradient_checkpointing()
        # a last update can still overflow the weights (the next loss would have shown it)
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise NonFiniteError(
                f"fine-tune diverged: {cfg.method} weights are not finite after {cfg.steps} steps "
                f"(lr {cfg.resolved_lr():g}); lower the learning rate"
            )
    model.eval()
    model.requires_grad_(False)
    return FinetuneResult(model, peft, mem_set, mem, len(train), losses, time.time() - t0, seen, filtered, skipped)


def _micro_batches(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices covering ``range(n)`` (sizes differ by at most one); fewer when ``n < parts``."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def autocast_for(mixed_precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of fresh autocast contexts for ``mixed_precision`` on ``device`` (no-ops for ``"no"``)."""
    dtype = MIXED_PRECISION[mixed_precision]
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device.type != "cuda":
        raise MemrlError(
            f"finetune.mixed_precision fp16 needs a CUDA device, the model is on {device.type}: "
            "use bf16 there, or 'no'"
        )
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
