"""Build the embedded default model: Stable Diffusion's structure, shrunk to 16x16 digits.

* UNet: a diffusers ``UNet2DConditionModel`` with cross-attention ``Transformer2DModel`` blocks in
  the down, mid and up paths (as SD 1.5), pixel space, 1 channel. Attention sits at 8x8 and 4x4
  (not at 16x16: 256-token self-attention tripled the step time on 2 CPU cores for no quality).
  It has 7 cross-attention blocks, the maskable units of the default search space.
* Text encoder: a tiny ``CLIPTextModel`` (transformers), causal like SD's, trained from scratch.
* Tokenizer: word-level, built from the embedded captions (:mod:`memrl.models.tokenizer`).
* Scheduler: DDPM (epsilon prediction) for training; DDIM is derived from it for sampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from memrl.models.tokenizer import WordTokenizer


@dataclass
class TinyModelConfig:
    """Sizes of the embedded model; the defaults give ~1.7 M UNet parameters."""

    image_size: int = 16
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_unet(cfg: TinyModelConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=cfg.image_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_text_encoder(cfg: TinyModelConfig, tokenizer: WordTokenizer) -> CLIPTextModel:
    tcfg = CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=cfg.text_hidden_size,
        intermediate_size=2 * cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=cfg.text_hidden_size,
    )
    return CLIPTextModel(tcfg)


def build_scheduler(cfg: TinyModelConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )
