"""Benchmark one evaluation (default preset): time split and peak memory.

    python experiments/bench_evaluate.py [--model runs/digits-base] [--method lora] [--mask all] [--preset default]

Prints the seconds spent in fine-tuning, sampling and each metric, the total, and the peak
resident memory (CPU) or peak CUDA memory. Nothing is cached: every run is a fresh evaluation.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from memrl.data.loaders import load_dataset
from memrl.evaluation import Evaluator, preset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder")
    ap.add_argument("--method", default="lora", help="PEFT method")
    ap.add_argument("--mask", default="all", help="mask spec")
    ap.add_argument("--preset", default="default", help="evaluation preset")
    ap.add_argument("--dataset", default="inverted", help="dataset")
    ap.add_argument("--device", default="cpu", help="torch device")
    args = ap.parse_args()

    t0 = time.time()
    ev = Evaluator(args.model, device=args.device)
    data = load_dataset(args.dataset)
    load_s = time.time() - t0
    cfg = preset(args.preset).with_method(args.method, None, 0)
    mask = ev.parse_mask(args.mask)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    r = ev.run(data, mask, cfg)
    total = time.time() - t
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # the same request again through the cache: store this result, then time the lookup path
    # (request hashing included) that a repeated env step takes
    import tempfile

    from memrl.evaluation.cache import EvalCache, request_key

    with tempfile.TemporaryDirectory() as tmp:
        ev.cache = EvalCache(f"{tmp}/cache.sqlite")
        req = ev.request(data, mask, cfg)
        ev.cache.put(request_key(req), req, r, total)
        t = time.time()
        hit = ev.evaluate(data, args.method, mask, cfg, seed=0, with_reward=False)
        hit_s = time.time() - t
        assert hit["cached"], "the repeated request should have been a cache hit"
    out = {
        "preset": args.preset, "method": args.method, "mask": str(mask), "threads": torch.get_num_threads(),
        "load_seconds": round(load_s, 2), "total_seconds": round(total, 2),
        "split_seconds": r["timings"], "finetune_steps": cfg.finetune.steps, "finetune_batch": cfg.finetune.batch_size,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "cache_hit_seconds": round(hit_s, 4),
        "cache_hit_fraction_of_fresh": round(hit_s / total, 6),
    }
    if args.device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    for k, v in r["timings"].items():
        print(f"{k:<20}{v:8.2f} s  {100 * v / total:5.1f}%")
    print(f"{'total':<20}{total:8.2f} s   peak RSS {peak_rss_mb:.0f} MB  (torch threads {torch.get_num_threads()})")
    print(f"{'cache hit':<20}{hit_s:8.4f} s  ({100 * hit_s / total:.3f}% of a fresh evaluation)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
