"""Benchmark the embedded substrate: full fine-tune train step (batch 64), sampling speed, peak memory.

    python experiments/bench_substrate.py [--model runs/digits-base] [--device cpu] [--batch-size 64]

Without a model folder it builds a freshly initialised model of the default size (same cost).
Prints seconds per full fine-tuning step (UNet + text encoder frozen, UNet trained), samples per
second with DDIM + classifier-free guidance, and peak resident (or CUDA) memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="model folder (a fresh default-size model if missing)")
    ap.add_argument("--device", default="cpu", help="torch device")
    ap.add_argument("--batch-size", type=int, default=64, help="train batch size")
    ap.add_argument("--steps", type=int, default=20, help="timed train steps (after 3 warm-up steps)")
    ap.add_argument("--samples", type=int, default=128, help="images generated for the sampling figure")
    ap.add_argument("--inference-steps", type=int, default=20, help="DDIM steps per sample")
    args = ap.parse_args()

    from memrl.data import digits
    from memrl.models.pipeline import DiffusionModel
    from memrl.models.tiny import TinyModelConfig, build_scheduler, build_text_encoder, build_unet
    from memrl.models.tokenizer import WordTokenizer
    from memrl.training.losses import epsilon_loss

    dev = torch.device(args.device)
    if Path(args.model, "model_index.json").is_file():
        model = DiffusionModel.from_pretrained(args.model, device=args.device)
        source = args.model
    else:
        cfg = TinyModelConfig()
        tok = WordTokenizer.from_corpus(digits.all_captions(), max_length=cfg.max_length)
        model = DiffusionModel(build_unet(cfg), build_text_encoder(cfg, tok), tok, build_scheduler(cfg)).to(dev)
        source = "fresh default-size model"
    data = digits.variant_splits("inverted").train
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
    x = data.images[idx].to(dev)
    with torch.no_grad():
        ctx = model.encode_prompts([data.captions[i] for i in idx.tolist()])
    unet = model.unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        loss = epsilon_loss(unet, model.scheduler, x, ctx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.time()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.time() - t) / args.steps

    model.eval()
    prompts = [digits.digit_prompt(i % 10) for i in range(args.samples)]
    t = time.time()
    model.generate(prompts, num_inference_steps=args.inference_steps, guidance_scale=2.0, seed=0)
    sps = args.samples / (time.time() - t)
    out = {
        "model": source,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "train_step_seconds_full_ft": round(step_s, 4),
        "train_batch": args.batch_size,
        "samples_per_second": round(sps, 1),
        "sample_inference_steps": args.inference_steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(f"full fine-tune step (batch {args.batch_size}): {step_s:.3f} s; sampling: {sps:.1f} images/s "
          f"({args.inference_steps} DDIM steps, CFG); peak RSS {out['peak_rss_mb']:.0f} MB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
