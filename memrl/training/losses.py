"""The DDPM training objective shared by pretraining and masked fine-tuning."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by "" with probability ``p`` (teaches the unconditional model for CFG)."""
    if p <= 0:
        return list(captions)
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def truncate_captions(captions: Sequence[str], p: float, generator: torch.Generator, sep: str = ", ") -> list[str]:
    """With probability ``p`` keep only a random non-empty prefix of a caption's ``sep`` fields.

    Captions like ``"digit 3, thin strokes, left slant, ..."`` are always long in the data, so a
    short prompt such as ``"digit 3"`` would be out of distribution at sampling time (and
    classifier-free guidance then amplifies garbage). Training on prefixes makes every shorter
    description a valid prompt.
    """
    if p <= 0:
        return list(captions)
    out = []
    u = torch.rand(len(captions), generator=generator).tolist()
    r = torch.rand(len(captions), generator=generator).tolist()
    for c, ui, ri in zip(captions, u, r):
        fields = c.split(sep)
        if ui < p and len(fields) > 1:
            keep = 1 + int(ri * (len(fields) - 1))  # 1 .. len-1 fields
            c = sep.join(fields[:keep])
        out.append(c)
    return out


def epsilon_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator | None,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """MSE between the true noise and the UNet's prediction at uniformly drawn timesteps.

    Noise and timesteps come from ``generator`` on the CPU, so a seeded run repeats exactly and
    does not depend on the device; ``draws`` passes them in instead (see :func:`draw_noise`).
    """
    _, _, noise, pred = noised_prediction(unet, scheduler, latents, context, generator, draws)
    return F.mse_loss(pred.float(), noise.float())


def draw_noise(latents: torch.Tensor, scheduler: DDPMScheduler, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noise, t)`` for a batch of ``latents``, drawn from ``generator`` on the CPU in the order
    :func:`noised_prediction` draws them: gradient accumulation draws a whole batch once and then
    splits it into micro-batches, so the split does not change what is drawn."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
    return noise, t


def noised_prediction(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator | None,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noisy, t, noise, pred)``: the noise, then the timesteps, drawn from ``generator`` on the
    CPU (or given as ``draws``), the noised latents and the UNet's prediction: what
    :func:`epsilon_loss` and the training-time filter of :mod:`memrl.training.mitigations` both
    compute their loss from."""
    noise, t = draws if draws is not None else draw_noise(latents, scheduler, generator)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=context).sample
    return noisy, t, noise, pred
