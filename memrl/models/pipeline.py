"""The diffusion model memrl fine-tunes: UNet + text encoder + tokenizer + scheduler (+ VAE).

Saved and loaded as a diffusers-style folder, safetensors only::

    model_index.json      which class each component is (diffusers' convention)
    unet/                 UNet2DConditionModel.save_pretrained
    text_encoder/         CLIPTextModel.save_pretrained
    tokenizer/            memrl word-level tokenizer, or a CLIP tokenizer (Stable Diffusion)
    scheduler/            a diffusers scheduler config (DDPM for memrl's models; SD ships PNDM or DDIM)
    vae/                  optional: present for latent models (Stable Diffusion); absent for pixel models
    feature_net/          optional: memrl's offline feature network (FID / nearest neighbours)

The loader takes any such folder, so a local Stable Diffusion folder has the same entry point:
with a ``vae/`` the model works in latent space (images are encoded before training and decoded
after sampling). Tests exercise that path with :mod:`memrl.models.tiny_sd` (a random pipeline with
SD 1.5's layout and a CLIP tokenizer), not with real SD weights.

Schedulers: training adds noise with a ``DDPMScheduler`` built from the folder's scheduler config
(PNDM, DDIM and DDPM share its beta schedule and ``add_noise``); sampling derives DDIM from it.
The folder's own scheduler (its class and config) is kept only to be written back on save, so a
saved Stable Diffusion folder loads in diffusers with the scheduler it came with. A latent model's
config without ``clip_sample`` (PNDM has none) gets ``clip_sample=False``: clipping the predicted
sample to [-1, 1] is meant for pixels, not VAE latents.

A folder with a ``vae/`` and a transformers tokenizer is saved with a ``StableDiffusionPipeline``
``model_index.json`` (no safety checker, no feature extractor), so
``StableDiffusionPipeline.from_pretrained`` loads it.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from transformers import CLIPTextModel

from memrl.errors import MemrlError
from memrl.models.tokenizer import CONFIG_NAME as WORD_TOKENIZER_CONFIG
from memrl.models.tokenizer import WordTokenizer

REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")
#: ``model_index.json`` entries that make a latent model with a CLIP tokenizer a diffusers
#: ``StableDiffusionPipeline`` folder (no safety checker: memrl's models are research models).
SD_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
}


class _HFTokenizer:
    """Adapter giving a transformers tokenizer (e.g. SD's CLIPTokenizer) the WordTokenizer call API."""

    def __init__(self, tok) -> None:  # noqa: ANN001
        self.tok = tok
        self.max_length = tok.model_max_length

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.tok(list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt").input_ids

    def save_pretrained(self, folder: str | Path) -> None:
        self.tok.save_pretrained(str(folder))


def _load_tokenizer(folder: Path):  # noqa: ANN202
    if (folder / WORD_TOKENIZER_CONFIG).is_file():
        return WordTokenizer.from_pretrained(folder)
    from transformers import AutoTokenizer

    return _HFTokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))


def _load_schedulers(folder: Path, latent: bool) -> tuple[DDPMScheduler, SchedulerMixin | None]:
    """``(DDPM for training and sampling, the folder's own scheduler or None when it is DDPM)``.

    A latent model's config without ``clip_sample`` gets ``clip_sample=False`` (module docstring).
    """
    import diffusers

    config = dict(DDPMScheduler.load_config(folder, local_files_only=True))
    if latent and "clip_sample" not in config:
        config["clip_sample"] = False
    scheduler = DDPMScheduler.from_config(config)
    own = getattr(diffusers, str(config.get("_class_name", "")), None)
    if own is None or own is DDPMScheduler or not (isinstance(own, type) and issubclass(own, SchedulerMixin)):
        return scheduler, None
    return scheduler, own.from_config(config)


#: A Hugging Face Hub repository id (``owner/name``), as opposed to a local folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: What of a hub repository a diffusers model folder needs (safetensors weights, configs, vocabularies).
HUB_PATTERNS = ["model_index.json", "scheduler/*.json", "tokenizer/*"] + [f"{part}/{f}" for part in ("unet", "vae", "text_encoder") for f in ("config.json", "*.safetensors")]
#: Weight variants a model folder does not need (diffusers loads the plain file).
HUB_IGNORE = ["*.fp16.*", "*non_ema*", "*.ema.*"]


def resolve_model_location(spec: str | Path) -> Path:
    """A model folder for ``spec``: a local folder as it is, or a Hub id (``owner/name``)
    downloaded once into the Hugging Face cache (safetensors and configs only) and answered from
    it afterwards, offline too. Offline (``HF_HUB_OFFLINE=1``) with nothing cached, or a name that
    is neither, is one clear line."""
    path = Path(spec).expanduser()
    if path.is_dir() or not _HUB_ID.match(str(spec)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_IGNORE))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repository, gated model, network: one line each
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MemrlError(
            f"model {spec!r} is not a local folder and could not be fetched from the Hugging Face Hub ({why}); "
            f"on a machine that is online, save it with StableDiffusionPipeline.from_pretrained({str(spec)!r}).save_pretrained(FOLDER) "
            "and pass --pretrained FOLDER"
        ) from None


class DiffusionModel(torch.nn.Module):
    """A text-conditional diffusion model as plain modules, with seeded DDIM sampling."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer,  # noqa: ANN001  WordTokenizer or _HFTokenizer
        scheduler: DDPMScheduler,
        vae: AutoencoderKL | None = None,
        saved_scheduler: SchedulerMixin | None = None,
    ) -> None:
        """``scheduler``: what training and sampling use; ``saved_scheduler``: what
        :meth:`save_pretrained` writes (default: ``scheduler``), e.g. SD's PNDM."""
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = vae
        self.saved_scheduler = saved_scheduler
        #: Latent side used instead of the UNet config's ``sample_size`` (see :meth:`set_resolution`).
        self._latent_side: int | None = None

    # ------------------------------------------------------------------ shapes
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        side = self._latent_side or int(c.sample_size)
        return (int(c.in_channels), side, side)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: ``2 ** (VAE blocks - 1)`` (SD: 8), 1 for a pixel-space model."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    def set_resolution(self, pixels: int | None) -> "DiffusionModel":
        """Train and sample at ``pixels`` x ``pixels`` instead of the folder's native size (SD 1.5:
        512; the published MemControl runs fine-tuned it at 224). ``None``: the native size.
        The UNet is convolutional, so any multiple of the VAE factor works; the folder is not changed."""
        if pixels is None:
            self._latent_side = None
            return self
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels <= 0 or pixels % self.vae_factor:
            raise MemrlError(f"resolution must be a positive multiple of the VAE factor {self.vae_factor}, got {pixels!r}")
        self._latent_side = pixels // self.vae_factor
        return self

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels) if self.vae is not None else self.latent_shape[0]

    @property
    def image_size(self) -> int:
        return self.latent_shape[1] * self.vae_factor

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts)).to(self.device)
        return self.text_encoder(ids)[0]

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel images in [-1, 1] -> what the UNet denoises (the images themselves, or VAE latents)."""
        if self.vae is None:
            return images
        sf = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        return self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean * sf

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        sf = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        return self.vae.decode(latents.to(self.vae.dtype) / sf).sample

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        seed: int = 0,
        batch_size: int = 256,
        eta: float = 0.0,
        callback: Callable[[int], None] | None = None,
        return_guidance_norms: bool = False,
        part: slice | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Images (``N x C x H x W``, CPU float32, [-1, 1]) for ``prompts``, deterministic given ``seed``.

        Initial noise is drawn for all prompts at once from a CPU generator, so sample ``i``
        does not depend on the batch size or device. Classifier-free guidance uses the empty prompt.

        ``return_guidance_norms``: also return, per sample, ``|| eps(x_t, c) - eps(x_t, "") ||_2``
        averaged over the sampling steps (Wen et al.'s memorization signal; free with guidance,
        one extra unconditional prediction per step without it).

        ``part``: sample only ``prompts[part]``, with the same initial noise as the whole call (how
        processes share one evaluation's sampling; needs the deterministic sampler, ``eta=0``).
        """
        prompts = list(prompts)
        if not prompts:
            raise MemrlError("no prompts given: pass at least one prompt")
        if part is not None and eta > 0:
            raise MemrlError("generate(part=...) needs eta=0: with eta > 0 a sample's noise depends on the samples before it")
        was_training = self.training
        self.eval()
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((len(prompts), *self.latent_shape), generator=gen)
        if part is not None:
            prompts, noise = prompts[part], noise[part]
            if not prompts:  # more processes than prompts
                empty = torch.zeros((0, self.image_channels, self.image_size, self.image_size))
                return (empty, torch.zeros(0)) if return_guidance_norms else empty
        step_gen = torch.Generator().manual_seed(int(seed) + 1)
        dtype = next(self.unet.parameters()).dtype
        out, norms = [], []
        uncond = self.encode_prompts([""])
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            cond = self.encode_prompts(chunk)
            sched = DDIMScheduler.from_config(self.scheduler.config)
            sched.set_timesteps(num_inference_steps)
            x = noise[start : start + len(chunk)].to(self.device) * sched.init_noise_sigma
            use_cfg = guidance_scale != 1.0
            both = use_cfg or return_guidance_norms
            ctx = torch.cat([uncond.expand(len(chunk), -1, -1), cond]) if both else cond
            norm_sum = torch.zeros(len(chunk))
            for t in sched.timesteps:
                inp = torch.cat([x, x]) if both else x
                eps = self.unet(inp.to(dtype), t, encoder_hidden_states=ctx.to(dtype)).sample.float()
                if both:
                    e_u, e_c = eps.chunk(2)
                    if return_guidance_norms:
                        norm_sum += (e_c - e_u).flatten(1).norm(dim=1).cpu()
                    eps = e_u + guidance_scale * (e_c - e_u) if use_cfg else e_c
                x = sched.step(eps, t, x, eta=eta, generator=step_gen if eta > 0 else None).prev_sample
            out.append(self.to_images(x).float().clamp(-1, 1).cpu())
            norms.append(norm_sum / max(1, len(sched.timesteps)))
            if callback is not None:
                callback(len(chunk))
        self.train(was_training)
        if return_guidance_norms:
            return torch.cat(out), torch.cat(norms)
        return torch.cat(out)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path, extra_index: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        scheduler = self.saved_scheduler if self.saved_scheduler is not None else self.scheduler
        scheduler.save_pretrained(folder / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        index = {
            "_class_name": "MemrlDiffusionModel",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["memrl", "WordTokenizer"] if isinstance(self.tokenizer, WordTokenizer) else ["transformers", type(self.tokenizer.tok).__name__],
            "scheduler": ["diffusers", type(scheduler).__name__],
            "vae": ["diffusers", "AutoencoderKL"] if self.vae is not None else [None, None],
        }
        if self.vae is not None and isinstance(self.tokenizer, _HFTokenizer):  # a Stable Diffusion folder
            import diffusers

            index.update(SD_INDEX, _diffusers_version=diffusers.__version__)
        index.update(extra_index or {})
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "DiffusionModel":
        """Load a memrl or Stable-Diffusion-style folder; a missing part is a one-line error."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MemrlError(f"model folder {folder} does not exist (create one with `memrl pretrain --out {folder}`)")
        missing = [p for p in REQUIRED if not (folder / p).is_dir()]
        if missing:
            raise MemrlError(
                f"model folder {folder} is incomplete: missing {', '.join(p + '/' for p in missing)} "
                f"(expected {', '.join(p + '/' for p in REQUIRED)})"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True, torch_dtype=dtype)
                text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
                vae = None
                if (folder / "vae").is_dir():
                    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, torch_dtype=dtype)
                scheduler, saved_scheduler = _load_schedulers(folder / "scheduler", latent=vae is not None)
            tokenizer = _load_tokenizer(folder / "tokenizer")
        except (OSError, ValueError, KeyError, FileNotFoundError) as exc:
            raise MemrlError(f"cannot load model folder {folder}: {str(exc).splitlines()[0]}") from None
        model = cls(unet, text_encoder, tokenizer, scheduler, vae, saved_scheduler).to(device)
        model.requires_grad_(False)
        return model.eval()
