"""Pretrain the embedded default: the tiny text-conditional diffusion model and the feature network.

Read top to bottom: build the tokenizer from the captions, build the model, train UNet and text
encoder jointly on the public split (DDPM epsilon loss, caption dropout for classifier-free
guidance, caption prefixes so short prompts work, AdamW with warm-up and cosine decay, EMA weights), train the feature network, measure,
save. Seeded: the same config and seed give the same weights and the same metrics.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from memrl.data import digits
from memrl.metrics.quality import fid_kid
from memrl.models.feature_net import train_feature_net
from memrl.models.pipeline import DiffusionModel
from memrl.models.tiny import TinyModelConfig, build_scheduler, build_text_encoder, build_unet
from memrl.models.tokenizer import WordTokenizer
from memrl.training.losses import drop_captions, epsilon_loss, truncate_captions
from memrl.utils.images import save_grid
from memrl.utils.io import atomic_dir, write_json_atomic


@dataclass
class PretrainConfig:
    """Defaults take about 12 minutes on 2 CPU cores; ``quick()`` takes well under a minute."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-2
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    caption_truncation: float = 0.3
    grad_clip: float = 1.0
    seed: int = 0
    feature_epochs: int = 30
    eval_samples_per_digit: int = 25
    eval_inference_steps: int = 25
    guidance_scale: float = 2.0
    device: str = "cpu"
    model: TinyModelConfig = field(default_factory=TinyModelConfig)

    @classmethod
    def quick(cls, **overrides) -> "PretrainConfig":
        base = dict(steps=40, batch_size=32, warmup_steps=5, feature_epochs=2, eval_samples_per_digit=20, eval_inference_steps=8)
        base.update(overrides)
        return cls(**base)


def _lr_lambda(cfg: PretrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


@torch.no_grad()
def measure(model: DiffusionModel, feature_net, cfg: PretrainConfig) -> tuple[dict, torch.Tensor]:
    """``prompt_accuracy``, ``feature_accuracy`` and FID/KID against the public held-out split."""
    public = digits.public_splits()
    held_labels = torch.from_numpy(digits.labels_of("public/heldout"))
    feature_acc = (feature_net.classify(public.heldout.images).argmax(1) == held_labels).float().mean().item()
    k = cfg.eval_samples_per_digit
    prompts = [digits.digit_prompt(d) for d in range(10) for _ in range(k)]
    targets = torch.arange(10).repeat_interleave(k)
    samples = model.generate(prompts, num_inference_steps=cfg.eval_inference_steps, guidance_scale=cfg.guidance_scale, seed=cfg.seed + 12345)
    pred = feature_net.classify(samples).argmax(1)
    q = fid_kid(feature_net, public.heldout.images, samples)
    metrics = {
        "prompt_accuracy": float((pred == targets).float().mean()),
        "prompt_samples": len(prompts),
        "feature_accuracy": float(feature_acc),
        "feature_heldout_images": len(held_labels),
        "fid": q["fid"],
        "kid": q["kid"],
        "kid_std": q["kid_std"],
        "fid_n_real": q["n_real"],
        "fid_n_fake": q["n_fake"],
        "fid_feature_dim": q["feature_dim"],
        "guidance_scale": cfg.guidance_scale,
        "inference_steps": cfg.eval_inference_steps,
    }
    return metrics, samples


def pretrain(cfg: PretrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Train, measure and save to ``out`` (written atomically: a crash leaves no half folder)."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)

    public = digits.public_splits()
    tokenizer = WordTokenizer.from_corpus(digits.all_captions(), max_length=cfg.model.max_length)
    unet = build_unet(cfg.model).to(device)
    text_encoder = build_text_encoder(cfg.model, tokenizer).to(device)
    scheduler = build_scheduler(cfg.model)
    model = DiffusionModel(unet, text_encoder, tokenizer, scheduler)
    model.train()

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    ema = AveragedModel(torch.nn.ModuleList([unet, text_encoder]), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    images = public.train.images.to(device)
    captions = public.train.captions
    n = images.shape[0]
    perm = torch.randperm(n, generator=gen)
    pos = 0
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        caps = truncate_captions([captions[i] for i in idx.tolist()], cfg.caption_truncation, gen)
        caps = drop_captions(caps, cfg.caption_dropout, gen)
        ctx = model.encode_prompts(caps)
        loss = epsilon_loss(unet, scheduler, images[idx], ctx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        lr_sched.step()
        ema.update_parameters(torch.nn.ModuleList([unet, text_encoder]))
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    bar.close()
    train_seconds = time.time() - t0

    ema_unet, ema_text = copy.deepcopy(ema.module[0]), copy.deepcopy(ema.module[1])
    final = DiffusionModel(ema_unet, ema_text, tokenizer, scheduler).eval()
    final.requires_grad_(False)

    t1 = time.time()
    labels = torch.from_numpy(digits.labels_of("public/train"))
    feature_net = train_feature_net(public.train.images, labels, epochs=cfg.feature_epochs, seed=cfg.seed, progress=progress)
    feature_seconds = time.time() - t1

    metrics, samples = measure(final, feature_net, cfg)
    metrics.update(
        {
            "seed": cfg.seed,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "final_loss_avg100": sum(losses[-100:]) / max(1, len(losses[-100:])),
            "unet_parameters": sum(p.numel() for p in final.unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in final.text_encoder.parameters()),
            "train_seconds": round(train_seconds, 1),
            "feature_seconds": round(feature_seconds, 1),
            "total_seconds": round(time.time() - t0, 1),
            "config": _jsonable(asdict(cfg)),
        }
    )
    with atomic_dir(out) as tmp:
        final.save_pretrained(tmp, extra_index={"memrl_pretrain": {"seed": cfg.seed, "steps": cfg.steps}})
        feature_net.save_pretrained(tmp / "feature_net")
        save_grid(digit_rows(samples, cfg.eval_samples_per_digit), tmp / "samples.png", nrow=min(8, cfg.eval_samples_per_digit))
        write_json_atomic(tmp / "pretrain_metrics.json", metrics)
    return metrics


def digit_rows(samples: torch.Tensor, per_digit: int, n: int = 8) -> torch.Tensor:
    """The first ``n`` samples of each digit (samples are digit-major), one row per digit."""
    k = min(n, per_digit)
    return samples.reshape(10, per_digit, *samples.shape[1:])[:, :k].reshape(10 * k, *samples.shape[1:])


def _jsonable(x):  # noqa: ANN001, ANN202
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
