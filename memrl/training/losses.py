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
    generator: torch.Generator,
) -> torch.Tensor:
    """MSE between the true noise and the UNet's prediction at uniformly drawn timesteps.

    Noise and timesteps come from ``generator`` on the CPU, so a seeded run repeats exactly and
    does not depend on the device.
    """
    _, _, noise, pred = noised_prediction(unet, scheduler, latents, context, generator)
    return F.mse_loss(pred.float(), noise.float())


def noised_prediction(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noisy, t, noise, pred)``: the noise, then the timesteps, drawn from ``generator`` on the
    CPU, the noised latents and the UNet's prediction: what :func:`epsilon_loss` and the
    training-time filter of :mod:`memrl.training.mitigations` both compute their loss from."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=context).sample
    return noisy, t, noise, pred
