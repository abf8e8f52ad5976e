"""One evaluation of a tiny random Stable Diffusion pipeline on a GPU in fp16: step time and peak memory.

    experiments/gpu_check.sh                          # CUDA, fp16 (what the check is for)
    python experiments/gpu_check.py --device cpu --precision bf16   # the same path on a CPU

Builds everything it needs in a temporary folder, downloads nothing: the tiny pipeline with SD
1.5's layout and SD's x8 VAE (memrl.models.tiny_sd), a folder of random RGB pictures with
class-level captions (imagefolder convention), and an untrained RGB feature network (FID here
measures nothing; the check is that the SD code path runs on the device in the precision asked,
and what it costs). Then one `quick` evaluation of a LoRA mask through the same Evaluator
`memrl evaluate` uses, and prints one line per figure: fine-tune seconds per step, the
evaluation's seconds by phase, and the device's peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def write_rgb_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` random RGB pictures (a coloured square on a coloured ground) with 6 repeating captions."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    lines = ["file_name,text"]
    for i in range(n):
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = rng.integers(0, 256, 3)
        a, b = sorted(rng.integers(0, size, 2))
        img[a : b + 1, a : b + 1] = rng.integers(0, 256, 3)
        Image.fromarray(img, "RGB").save(root / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,a picture of kind {i % 6}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "no"], help="finetune.mixed_precision (default fp16; fp16 needs CUDA)")
    p.add_argument("--resolution", type=int, default=64, help="image side of the tiny pipeline (default 64, with SD's x8 VAE: 8 x 8 latents)")
    p.add_argument("--images", type=int, default=64, help="pictures in the RGB folder (default 64)")
    p.add_argument("--mask", default="1010101010101010", help="16-bit LoRA mask over the 16 attention blocks (default alternate blocks)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = p.parse_args(argv)

    from memrl.data.loaders import load_dataset
    from memrl.errors import MemrlError
    from memrl.evaluation import Evaluator, preset
    from memrl.models.feature_net import FeatureNet
    from memrl.models.tiny_sd import build_tiny_sd

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing was measured. "
              "On a CPU: python experiments/gpu_check.py --device cpu --precision bf16", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            build_tiny_sd(work / "sd", seed=0, resolution=args.resolution, vae_blocks=4)
            FeatureNet(channels=3).save_pretrained(work / "feature_net")
            folder = write_rgb_folder(work / "data", args.images, args.resolution)
            ev = Evaluator(work / "sd", device=str(device), feature_net=work / "feature_net")
            data = load_dataset(folder, ev.model.image_size, ev.model.image_channels)
            cfg = preset("quick").with_method("lora", None, 0)
            cfg = replace(cfg, finetune=replace(cfg.finetune, mixed_precision=args.precision))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.time()
            result = ev.run(data, ev.parse_mask(args.mask), cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.time() - t0
    except MemrlError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    steps = cfg.finetune.steps
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "precision": args.precision,
        "resolution": args.resolution,
        "units": len(ev.units),
        "finetune_steps": steps,
        "batch_size": cfg.finetune.batch_size,
        "seconds_per_step": result["timings"]["finetune"] / steps,
        "evaluation_seconds": seconds,
        "timings": {k: round(v, 3) for k, v in result["timings"].items()},
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "fid": result["fid"],
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
