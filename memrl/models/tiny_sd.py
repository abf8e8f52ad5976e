"""A tiny, randomly initialised Stable Diffusion pipeline, built from config (nothing downloaded).

It has Stable Diffusion 1.5's *layout* with small channels, so memrl's SD code paths (a VAE,
a CLIP tokenizer, SD's 16 cross-attention units, diffusers' pipeline and LoRA loaders) run in
tests and GPU smoke checks without a multi-GB checkpoint:

* UNet: ``UNet2DConditionModel`` with SD 1.5's block types (``CrossAttnDownBlock2D`` x3,
  ``DownBlock2D``; ``UpBlock2D``, ``CrossAttnUpBlock2D`` x3), ``layers_per_block=2``: exactly 16
  ``Transformer2DModel`` blocks (6 down, 1 mid, 9 up), as SD 1.5. Channels (32, 32, 64, 64)
  instead of (320, 640, 1280, 1280), cross-attention width 32 instead of 768.
* VAE: ``AutoencoderKL``, RGB, 4 latent channels (SD's scaling factor 0.18215). SD's VAE
  downsamples x8 (4 blocks); here the factor is ``2 ** (vae_blocks - 1)``, x2 by default, so that a
  32 x 32 image gives a 16 x 16 latent that the UNet can still halve three times. With
  ``resolution=64, vae_blocks=4`` it is x8 like SD (8 x 8 latents).
* Text encoder: a 2-layer ``CLIPTextModel`` (width 32, 77 positions like SD).
* Tokenizer: a ``CLIPTokenizer`` over a small byte-level BPE vocabulary written here: the 256
  byte symbols in CLIP's byte-to-unicode form, their ``</w>`` (end-of-word) forms, a handful of
  merges, ``<|startoftext|>`` and ``<|endoftext|>`` (CLIP's order). Any text tokenizes; most words
  become one token per character.
* Scheduler: ``PNDMScheduler`` with SD 1.5's settings (scaled-linear betas 0.00085 to 0.012).
* No safety checker and no feature extractor (``requires_safety_checker=False``).

The weights are random: samples are noise-like. It checks plumbing, never quality.
``python -m memrl.models.tiny_sd --out DIR`` writes one (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

#: A few byte-pair merges (CLIP's format: two symbols, the merged symbol must be in the vocabulary).
MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("th", "e</w>"),
    ("i", "n"),
    ("a", "n"),
    ("o", "n</w>"),
    ("e", "r</w>"),
    ("in", "g</w>"),
    ("a", "t</w>"),
    ("c", "at</w>"),
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def write_clip_vocabulary(folder: str | Path, merges: tuple[tuple[str, str], ...] = MERGES) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` of a small byte-level BPE vocabulary into ``folder``.

    Order as in CLIP: the 256 byte symbols, the same with ``</w>``, one entry per merge, then the
    two special tokens. ``merges.txt`` starts with a version line, as CLIP's does.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def build_tokenizer(model_max_length: int = 77):  # noqa: ANN201
    """A ``CLIPTokenizer`` loaded from the vocabulary :func:`write_clip_vocabulary` writes (offline)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocabulary(tmp)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length, local_files_only=True)


def build_tiny_sd(
    folder: str | Path | None = None,
    seed: int = 0,
    resolution: int = 32,
    vae_blocks: int = 2,
    block_out_channels: tuple[int, ...] = (32, 32, 64, 64),
    cross_attention_dim: int = 32,
    norm_num_groups: int = 8,
):  # noqa: ANN201
    """A random ``StableDiffusionPipeline`` with SD 1.5's layout (module docstring); saved to
    ``folder`` with ``save_pretrained`` when given. Same ``seed``, same weights.

    ``resolution`` must be divisible by the VAE factor ``2 ** (vae_blocks - 1)`` times 8 (the UNet
    halves its input three times).
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from memrl.errors import MemrlError

    factor = 2 ** (vae_blocks - 1)
    if vae_blocks < 1 or resolution % (factor * 8):
        raise MemrlError(f"tiny SD: --resolution {resolution} must be divisible by {factor * 8} (VAE factor {factor} x the UNet's 8) with --vae-blocks {vae_blocks}")
    if len(block_out_channels) != 4 or any(c % norm_num_groups for c in block_out_channels):
        raise MemrlError(f"tiny SD: block_out_channels {tuple(block_out_channels)} must be 4 numbers divisible by norm_num_groups {norm_num_groups}")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=resolution // factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=norm_num_groups,
    )
    vae_channels = [block_out_channels[0]] * vae_blocks
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks,
        block_out_channels=tuple(vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        sample_size=resolution,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cross_attention_dim,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if folder is not None:
        pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m memrl.models.tiny_sd", description="Write a tiny random Stable Diffusion pipeline (SD 1.5's layout, small channels) as a diffusers folder; nothing is downloaded.")
    p.add_argument("--out", required=True, help="folder to write (diffusers' StableDiffusionPipeline.save_pretrained layout)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32); divisible by 8 x the VAE factor")
    p.add_argument("--vae-blocks", type=int, default=2, help="VAE blocks: downsampling 2**(N-1); default 2 (x2), 4 is SD's x8")
    args = p.parse_args(argv)
    from memrl.errors import MemrlError

    try:
        build_tiny_sd(args.out, seed=args.seed, resolution=args.resolution, vae_blocks=args.vae_blocks)
    except MemrlError as exc:
        p.exit(2, f"memrl: error: {exc}\n")
    print(f"wrote a tiny Stable Diffusion pipeline to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
