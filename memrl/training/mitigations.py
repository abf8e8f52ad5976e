"""Training-time memorization mitigations from the literature, as options of the masked fine-tune.

Mask selection is one way to fine-tune without memorising; the published work has others, and
the interesting question is how they combine. Two are implemented here and switched on by
:class:`memrl.training.finetune.FinetuneConfig` fields (both off by default, and then the fine-tune
is bit-identical to one without this module):

* :class:`RandomWordAdder` -- *random word addition* (Somepalli et al., NeurIPS 2023,
  "Understanding and mitigating copying in diffusion models"): every time a sample is drawn, ``k``
  random words are inserted at random positions of its caption, so a duplicated image is never
  seen twice with the same text and the caption stops being a key to one image
  (``caption_random_words``).
* :func:`filtered_epsilon_loss` -- Wen et al.'s training-time filter (ICLR 2024, "Detecting,
  explaining, and mitigating memorization in diffusion models"): a sample whose text-conditional
  noise prediction is far from the unconditional one, ``||eps(x_t, t, c) - eps(x_t, t, "")||``,
  is being memorised; it is dropped from the mini-batch's loss
  (``guidance_filter_threshold``). This is the quantity memrl measures for detection
  (:func:`memrl.metrics.memorization.noise_norm_score`, ``generate(return_guidance_norms=True)``),
  here at the sample's own training timestep and noise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from memrl.errors import MemrlError
from memrl.training.losses import noised_prediction

#: Mixed into the fine-tune's seed for the random-word stream, so the words are reproducible and
#: independent of (and do not shift) the batch, noise and caption-dropout draws.
RANDOM_WORDS_STREAM = 0x525741  # "RWA"

_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def caption_vocabulary(captions: Sequence[str]) -> tuple[str, ...]:
    """The distinct words of ``captions``, sorted (deterministic): where random words are drawn from.

    Why the training captions' own words and not the tokenizer's vocabulary: they work with any
    tokenizer (memrl's word-level one, whose words outside the vocabulary become ``[UNK]``, and
    CLIP's BPE, whose vocabulary holds sub-word pieces rather than words), every drawn word is one
    the text encoder has met in this very data, and the list depends only on the data, so a run is
    reproducible from its request. Somepalli et al. draw from a general vocabulary; on a narrow
    domain, words of the domain perturb the caption the most.
    """
    return tuple(sorted({w for c in captions for w in _WORD.findall(c)}))


def add_random_words(caption: str, k: int, vocabulary: Sequence[str], rng: np.random.Generator) -> str:
    """``caption`` with ``k`` words of ``vocabulary`` (drawn with replacement) inserted at random positions.

    The caption is split on whitespace and the words go into its gaps (before the first word,
    between two, or after the last), one after another, so exactly ``k`` words are added and the
    caption's own words keep their order. An empty caption stays empty: it is an unconditional
    sample (it teaches the model classifier-free guidance's ``""``), not a description.
    """
    if k <= 0 or not caption.strip():
        return caption
    if not vocabulary:
        raise MemrlError("caption_random_words: the training captions have no words to draw from")
    tokens = caption.split()
    for w in rng.integers(0, len(vocabulary), size=k):
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), vocabulary[int(w)])
    return " ".join(tokens)


class RandomWordAdder:
    """Random word addition over one fine-tune: ``adder(captions)`` for each mini-batch, in order.

    Its generator is seeded from the fine-tune's ``seed`` (and :data:`RANDOM_WORDS_STREAM`) and
    advances with every call, so each sample of each iteration gets its own words, and the same
    seed repeats the whole sequence.
    """

    def __init__(self, vocabulary: Sequence[str], k: int, seed: int) -> None:
        if k < 0:
            raise MemrlError(f"finetune.caption_random_words must be an integer >= 0 (0 = off), got {k}")
        self.vocabulary = tuple(vocabulary)
        self.k = int(k)
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), RANDOM_WORDS_STREAM]))

    def __call__(self, captions: Sequence[str]) -> list[str]:
        return [add_random_words(c, self.k, self.vocabulary, self.rng) for c in captions]


@dataclass
class FilteredLoss:
    """One mini-batch under Wen et al.'s filter.

    ``loss`` is the epsilon MSE over the kept samples (``None`` when every sample was filtered:
    the step then has nothing to learn from and is skipped); ``magnitudes`` the per-sample
    ``||eps_c - eps_u||_2``; ``kept`` the boolean mask of samples at or below the threshold.
    """

    loss: torch.Tensor | None
    magnitudes: torch.Tensor
    kept: torch.Tensor

    @property
    def n_filtered(self) -> int:
        return int((~self.kept).sum())


def guidance_magnitude(
    unet: torch.nn.Module,
    noisy: torch.Tensor,
    t: torch.Tensor,
    cond_pred: torch.Tensor,
    empty_context: torch.Tensor,
) -> torch.Tensor:
    """Per sample ``||eps(x_t, t, c) - eps(x_t, t, "")||_2`` (L2 over ``C x H x W``, float32, no gradient).

    ``cond_pred`` is the conditional prediction the loss already made (detached here); the
    unconditional one is one extra forward without autograd, so the filter costs about one
    inference forward per step. It runs under a forked random state: a module that draws random
    numbers in train mode (dropout) sees the same draws as without the filter.
    """
    devices = [noisy.device.index or 0] if noisy.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        uncond = unet(noisy, t, encoder_hidden_states=empty_context.expand(noisy.shape[0], *empty_context.shape)).sample
    return (cond_pred.detach().float() - uncond.float()).flatten(1).norm(dim=1)


def filtered_epsilon_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    context: torch.Tensor,
    empty_context: torch.Tensor,
    generator: torch.Generator | None,
    threshold: float,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FilteredLoss:
    """:func:`memrl.training.losses.epsilon_loss` with the samples above ``threshold`` masked out.

    The noise, timesteps and prediction come from the same
    :func:`~memrl.training.losses.noised_prediction` as ``epsilon_loss``'s, and with every sample
    kept the loss is the very same ``mse_loss`` call, so a threshold above every magnitude trains bit-identically to no filter
    (tests/test_mitigations.py checks it). Samples have equal size, so the MSE over the kept
    samples' elements is the mean of their per-sample losses. ``empty_context`` is the encoded
    ``""`` (one ``L x D`` row); a caption-dropped sample scores 0 and is always kept.
    """
    noisy, t, noise, pred = noised_prediction(unet, scheduler, latents, context, generator, draws)
    magnitudes = guidance_magnitude(unet, noisy, t, pred, empty_context)
    kept = magnitudes <= threshold
    if bool(kept.all()):
        loss = F.mse_loss(pred.float(), noise.float())
    elif bool(kept.any()):
        loss = F.mse_loss(pred[kept].float(), noise[kept].float())
    else:
        loss = None
    return FilteredLoss(loss, magnitudes.cpu(), kept.cpu())
