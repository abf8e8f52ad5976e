"""Benchmark what an env step adds to an evaluation, what a cache hit costs, and the compute rate.

    python experiments/bench_overhead.py [--model runs/digits-base] [--preset search] [--dataset family:80]
        [--method lora] [--mask all] [--repeats 3] [--threads N] [--train-steps 5] [--skip-compile] [--out FILE.md]

Everything is measured in ONE process, so every ratio compares two timings taken under the same
load (direct and env repeats alternate; the compute variants are timed round-robin):

1. direct: ``Evaluator.run(data, mask, cfg)`` (fine-tune + sample + metrics, no cache) for one
   request: ``--method`` on ``--mask`` at the env's default granularity (``attention``);
2. env step: a ``MaskSelectionEnv`` on the SAME evaluator whose step makes the same request
   (same config, seed, mask), with a fresh cache per repeat that already holds the reference (full
   fine-tuning) and base-model evaluations, so the step computes exactly one evaluation (checked:
   one miss, two hits, the direct call's metrics) plus the env's own work (cache lookups and
   writes, reward, info, observation); the ratio step / direct is printed, and the env's own
   cost per step (wall time minus the evaluation's own ``seconds``, minus the same for the direct
   call);
3. cache hit: the same step again, answered from the cache, as a share of a fresh evaluation;
4. compute rate: the FLOPs of one fine-tune training step (``torch.utils.flop_counter``; forward +
   backward of the UNet at the preset's batch size, set up as ``memrl/training/finetune.py`` does)
   for ``--method`` and for ``full`` (the reference run), its time, and the GFLOP/s of a
   1024x1024 float32 matmul measured in the same rounds; the same for the evaluation's sampling
   (the memorization and held-out prompts, as ``Evaluator.run`` draws them);
5. variants of the training step and of the sampling (channels-last, ``torch.compile``, bfloat16
   autocast, twice the batch / one fused sampling call), each as a speedup over the eager code
   timed in the same rounds. ``torch.compile`` failures are caught and reported.

The table (with this command line at the top) is printed and, with ``--out``, written to a file.
Nothing is cached between runs: every evaluation here is computed.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

MATMUL_N = 1024


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul() -> Callable[[], torch.Tensor]:
    """One 1024x1024 float32 matmul (2 * 1024^3 FLOPs), on inputs made once."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    return lambda: a @ b


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """``(FLOPs counted by torch.utils.flop_counter, fn's result)`` of one call."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn()
    return int(fc.get_total_flops()), out


# ---------------------------------------------------------------------------- the training step
def build_train_step(model0, data, fcfg, mask, *, batch: int | None = None, channels_last: bool = False,  # noqa: ANN001
                     compile_unet: bool = False, bf16: bool = False) -> Callable[[], float]:  # fmt: skip
    """One fine-tuning step of ``fcfg.method`` inside ``mask``, set up the way
    :func:`memrl.training.finetune.finetune` sets it up (deep copy of the pretrained model, PEFT
    applied in the mask, the training set with its repeated memorization images, text encoded once,
    AdamW on the method's parameter groups) and stepped the way its loop steps (seeded batch draw,
    caption dropout, epsilon loss, finiteness check, backward, gradient clipping, AdamW step).

    The variants (``batch``, ``channels_last``, ``compile_unet``, ``bf16`` autocast) change only
    how the same step is computed or how many images it takes."""
    from memrl.errors import NonFiniteError
    from memrl.peft_masking import apply_peft
    from memrl.training.finetune import training_set
    from memrl.training.losses import epsilon_loss

    torch.manual_seed(fcfg.seed)
    gen = torch.Generator().manual_seed(fcfg.seed)
    model = copy.deepcopy(model0)
    model.requires_grad_(False)
    peft = apply_peft(model.unet, mask, fcfg.method, rank=fcfg.rank, granularity=fcfg.granularity)
    train, _ = training_set(data, fcfg)
    with torch.no_grad():
        latents = torch.cat([model.to_latents(train.images[i : i + 256]) for i in range(0, len(train), 256)])
        uniq = sorted(set(train.captions))
        ctx_table = torch.cat([model.encode_prompts(uniq[i : i + 256]) for i in range(0, len(uniq), 256)])
        empty = model.encode_prompts([""])[0]
    cap_idx = torch.tensor([uniq.index(c) for c in train.captions])
    opt = torch.optim.AdamW(peft.param_groups(fcfg.weight_decay), lr=fcfg.resolved_lr())
    params = [p for _, p in peft.trainable]
    model.unet.train()
    unet = model.unet
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        latents = latents.contiguous(memory_format=torch.channels_last)
    if compile_unet:
        unet = torch.compile(unet)
    n = latents.shape[0]
    b = min(batch or fcfg.batch_size, n)
    state = {"perm": torch.randperm(n, generator=gen), "pos": 0}

    def step() -> float:
        if state["pos"] + b > n:
            state["perm"], state["pos"] = torch.randperm(n, generator=gen), 0
        idx = state["perm"][state["pos"] : state["pos"] + b]
        state["pos"] += b
        ctx = ctx_table[cap_idx[idx]]
        drop = torch.rand(len(idx), generator=gen) < fcfg.caption_dropout
        ctx = torch.where(drop[:, None, None], empty.expand_as(ctx), ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = epsilon_loss(unet, model.scheduler, latents[idx], ctx, gen)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"loss {float(loss.detach())}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, fcfg.grad_clip)
        opt.step()
        return float(loss.detach())

    step.batch = b  # type: ignore[attr-defined]
    return step


# ---------------------------------------------------------------------------- the sampling
def build_sampling(ev, data, cfg, *, fused: bool = False, channels_last: bool = False, compile_unet: bool = False,  # noqa: ANN001
                   bf16: bool = False) -> Callable[[], list]:  # fmt: skip
    """The evaluation's two sampling calls (the memorization prompts, ``gens_per_prompt`` each,
    and the held-out prompts for FID), as :meth:`Evaluator.run` makes them (``cfg``'s
    ``sample_batch_size`` prompts per UNet batch, twice that many rows with guidance), on the
    pretrained model; returns each call's ``(images, guidance norms)``. ``fused``: one call for
    both prompt lists (one larger batch; its noise draws differ, so its samples are other numbers)."""
    from memrl.training.finetune import memorization_indices

    fcfg = cfg.finetune
    mem_caps = [data.train.captions[i] for i in memorization_indices(data.train, fcfg.n_mem)]
    mem_prompts = [c for c in mem_caps for _ in range(cfg.gens_per_prompt)]
    fid_prompts = ev.fid_prompts(data, mem_caps, cfg.n_fid_samples)
    model = copy.deepcopy(ev.model).eval()
    if channels_last:
        model.unet = model.unet.to(memory_format=torch.channels_last)
    if compile_unet:
        model.unet = torch.compile(model.unet)
    seed = fcfg.seed
    kw = {"batch_size": cfg.sample_batch_size, "return_guidance_norms": True}
    calls = [(mem_prompts + fid_prompts, seed + 1000)] if fused else [(mem_prompts, seed + 1000), (fid_prompts, seed + 2000)]

    def sample() -> list:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            return [model.generate(prompts, cfg.inference_steps, cfg.guidance_scale, seed=s, **kw) for prompts, s in calls]

    sample.n_prompts = len(mem_prompts) + len(fid_prompts)  # type: ignore[attr-defined]
    return sample


def time_variants(variants: dict[str, Callable[[], object]], rounds: int, per_round: int, warm: int = 1) -> dict[str, list[float]]:
    """Round-robin timing: each round runs every variant ``warm`` untimed + ``per_round`` timed
    times, so slow drifts of the machine's load hit every variant alike."""
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(warm):
                fn()
            out[name] += [_timed(fn) for _ in range(per_round)]
    return out


def try_build(label: str, build: Callable[[], Callable[[], object]], notes: dict[str, str]) -> Callable[[], object] | None:
    """Build a variant and run it once (for ``torch.compile`` the first call compiles); a failure
    is noted, not raised."""
    try:
        fn = build()
        first = _timed(fn)
    except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: report and go on
        notes[label] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        return None
    notes[label] = f"first call {first:.1f} s"
    return fn


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/digits-base", help="pretrained model folder")
    ap.add_argument("--preset", default="search", help="evaluation preset")
    ap.add_argument("--dataset", default="family:80", help="dataset")
    ap.add_argument("--method", default="lora", help="PEFT method of the env step")
    ap.add_argument("--mask", default="all", help="mask spec of the env step")
    ap.add_argument("--repeats", type=int, default=3, help="timed evaluations per path (median); also timing rounds of the variants")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps per variant and round")
    ap.add_argument("--sample-batch", type=int, default=32, help="prompts per UNet batch of the smaller-sampling-batch variant")
    ap.add_argument("--skip-compile", action="store_true", help="leave torch.compile out (it compiles for minutes on a CPU)")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    if min(args.repeats, args.train_steps, args.sample_batch) < 1:
        ap.error("--repeats, --train-steps and --sample-batch must be >= 1")
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:  # called in-process (tests): leave the caller's thread count as it was
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as inductor_cache:
        # torch.compile's first call is timed cold: inductor's on-disk cache starts empty
        before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
        try:
            return _main(args, argv)
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from memrl.data.loaders import load_dataset
    from memrl.envs import MaskSelectionEnv
    from memrl.envs.config import EnvConfig
    from memrl.evaluation import Evaluator
    from memrl.evaluation.cache import EvalCache, request_key
    from memrl.peft_masking import Mask

    command = "python experiments/bench_overhead.py" + "".join(" " + shlex.quote(a) for a in argv)
    t0 = time.perf_counter()
    ev = Evaluator(args.model)
    load_s = time.perf_counter() - t0
    env_cfg = EnvConfig(pretrained=str(args.model), datasets=[args.dataset], method=args.method, preset=args.preset,
                        granularity=ev.granularity, seed=0, info_runtime=True)  # fmt: skip
    env = MaskSelectionEnv(env_cfg, evaluator=ev)
    data = load_dataset(args.dataset, ev.image_size, ev.image_channels)
    # the request an env step makes (MaskSelectionEnv.step -> evaluate_proposal -> Evaluator.evaluate)
    cfg = env.eval_config.with_method(args.method, None, env_cfg.seed)
    mask, _ = ev.effective_mask(args.method, ev.parse_mask(args.mask), strict=True)
    action = np.asarray(mask.bits, dtype=np.int8)
    # the reward's two other evaluations, as Evaluator.reference / Evaluator.base request them
    rcfg = cfg.with_method("full", None, cfg.finetune.seed)
    side = {"reference": (Mask.parse("all", ev.units), rcfg), "base": (Mask.parse("none", ev.units), rcfg)}

    # warm-up (model loaded; the real set's FID statistics, first kernels): the two side evaluations
    side_rows = []
    for m, c in side.values():
        t = time.perf_counter()
        r = ev.run(data, m, c)
        req = ev.request(data, m, c)
        side_rows.append((request_key(req), req, r, time.perf_counter() - t))

    direct_s, direct_own, step_s, step_own, hit_s, same = [], [], [], [], [], []
    direct_timings: list[dict] = []
    hits_per_repeat = 5
    with tempfile.TemporaryDirectory() as tmp:

        def direct() -> None:
            t = time.perf_counter()
            r = ev.run(data, mask, cfg)
            direct_s.append(time.perf_counter() - t)
            direct_own.append(float(r["seconds"]))
            direct_timings.append(r["timings"])
            results["direct"] = r

        def env_step(i: int) -> None:
            cache = EvalCache(Path(tmp) / f"cache{i}.sqlite")
            for key, req, r, secs in side_rows:
                cache.put(key, req, r, secs)
            ev.cache = cache
            env.reset(options={"dataset": args.dataset})
            h, m = ev.hits, ev.misses
            t = time.perf_counter()
            _, _, _, _, info = env.step(action)
            step_s.append(time.perf_counter() - t)
            if info["failed"] or info["cached"] or (ev.misses - m, ev.hits - h) != (1, 2):
                raise RuntimeError(f"the env step was not one fresh evaluation with cached reference and base: {info.get('error')}, "
                                   f"misses {ev.misses - m}, hits {ev.hits - h}")  # fmt: skip
            step_own.append(float(info["seconds"]))
            results["step"] = info
            for _ in range(hits_per_repeat):  # the same step again: answered from the cache
                env.reset(options={"dataset": args.dataset})
                t = time.perf_counter()
                _, _, _, _, info = env.step(action)
                hit_s.append(time.perf_counter() - t)
                if not info["cached"]:
                    raise RuntimeError("the repeated env step was not a cache hit")
            ev.cache = None

        results: dict[str, dict] = {}
        for i in range(args.repeats):  # alternate the order: neither path always runs first
            if i % 2 == 0:
                direct()
                env_step(i)
            else:
                env_step(i)
                direct()
            same.append(all(results["direct"][k] == results["step"][k] for k in ("fid", "kid", "nn_own_rate", "noise_norm_mean", "final_loss")))

    # ---------------------------------------------------------------- compute rate and variants
    fcfg = replace(cfg.finetune, granularity=ev.granularity)
    full_fcfg = replace(rcfg.finetune, granularity=ev.granularity)
    full_mask = Mask.parse("all", ev.units)
    notes: dict[str, str] = {}
    train = {"eager": build_train_step(ev.model, data, fcfg, mask)}
    train["full"] = build_train_step(ev.model, data, full_fcfg, full_mask)
    batch = train["eager"].batch  # type: ignore[attr-defined]
    flops = {k: count_flops(fn)[0] for k, fn in train.items()}
    train["batch x2"] = build_train_step(ev.model, data, fcfg, mask, batch=2 * batch)
    train["channels-last"] = build_train_step(ev.model, data, fcfg, mask, channels_last=True)
    train["bf16 autocast"] = build_train_step(ev.model, data, fcfg, mask, bf16=True)
    if not args.skip_compile:
        fn = try_build("train torch.compile", lambda: build_train_step(ev.model, data, fcfg, mask, compile_unet=True), notes)
        if fn is not None:
            train["torch.compile"] = fn
    train["matmul"] = matmul()
    tt = time_variants(train, args.repeats, args.train_steps)
    batch2 = train["batch x2"].batch  # type: ignore[attr-defined]

    samp = {"eager": build_sampling(ev, data, cfg)}
    flops["sampling"], reference_samples = count_flops(samp["eager"])
    small = f"sample batch {args.sample_batch}"
    samp[small] = build_sampling(ev, data, replace(cfg, sample_batch_size=args.sample_batch))
    small_same = all(torch.equal(a, b) for x, y in zip(reference_samples, samp[small]()) for a, b in zip(x, y))
    samp["fused (one call)"] = build_sampling(ev, data, cfg, fused=True)
    samp["channels-last"] = build_sampling(ev, data, cfg, channels_last=True)
    samp["bf16 autocast"] = build_sampling(ev, data, cfg, bf16=True)
    if not args.skip_compile:
        fn = try_build("sample torch.compile", lambda: build_sampling(ev, data, cfg, compile_unet=True), notes)
        if fn is not None:
            samp["torch.compile"] = fn
            # every evaluation samples from a new model object (a fine-tuned deep copy): does the
            # compiled code carry over to one? (best case here: the same structure and weights)
            again = _timed(build_sampling(ev, data, cfg, compile_unet=True))
            notes["sample torch.compile"] += f"; first call on a second model copy {again:.1f} s"
    samp["matmul"] = matmul()
    st = time_variants(samp, args.repeats, 1, warm=0)  # a sampling run is seconds: no untimed warm-up call
    mm_rate = 2 * MATMUL_N**3 / _median(tt["matmul"] + st["matmul"]) / 1e9

    # ---------------------------------------------------------------- the table
    d, s, h = _median(direct_s), _median(step_s), _median(hit_s)
    own = _median([(sw - so) - (dw - do) for sw, so, dw, do in zip(step_s, step_own, direct_s, direct_own)])
    split = {k: _median([t[k] for t in direct_timings]) for k in direct_timings[0]}
    metrics = sum(v for k, v in split.items() if k not in ("finetune", "sample"))
    t_eager, t_full = _median(tt["eager"]), _median(tt["full"])
    rate = {"eager": flops["eager"] / t_eager / 1e9, "full": flops["full"] / t_full / 1e9}
    t_samp = _median(st["eager"])
    rate["sampling"] = flops["sampling"] / t_samp / 1e9
    n_prompts = samp["eager"].n_prompts  # type: ignore[attr-defined]
    steps = fcfg.steps

    def speed(table: dict[str, list[float]], name: str, scale: float = 1.0) -> str:
        return f"{_median(table['eager']) * scale / _median(table[name]):.2f}x"

    lines = [
        f"`{command}`",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"model `{args.model}`, preset `{args.preset}`, dataset `{args.dataset}`, {args.method} on mask `{args.mask}` "
        f"({len(mask.selected)} of {len(ev.units)} `{ev.granularity}` units); median of {args.repeats} repeat(s), one process.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| direct `Evaluator.run` (fine-tune + sample + metrics, no cache) | {d:.2f} s |",
        f"| of which fine-tune ({steps} steps, batch {batch}) / sampling / metrics | {split['finetune']:.2f} s / {split['sample']:.2f} s / {metrics:.2f} s |",
        f"| env step, the same evaluation (reference and base cached) | {s:.2f} s |",
        f"| env overhead ratio (step / direct) | {s / d:.4f} |",
        f"| env's own cost per step (wall minus the evaluation's own seconds, minus the same for direct) | {1000 * own:.1f} ms |",
        f"| env step gave the direct call's metrics (every repeat) | {'yes' if all(same) else 'NO'} |",
        f"| cache hit (the same env step again, median of {len(hit_s)}) | {1000 * h:.2f} ms |",
        f"| cache hit share of a fresh evaluation (hit / direct) | {100 * h / d:.4f}% |",
        f"| fine-tune step, {args.method} `{args.mask}`, batch {batch}: FLOPs / time | {flops['eager'] / 1e9:.2f} GFLOP / {1000 * t_eager:.0f} ms |",
        f"| fine-tune step, full (reference), batch {batch}: FLOPs / time | {flops['full'] / 1e9:.2f} GFLOP / {1000 * t_full:.0f} ms |",
        f"| sampling of one evaluation ({n_prompts} prompts, CFG, {cfg.inference_steps} DDIM steps): FLOPs / time | {flops['sampling'] / 1e9:.1f} GFLOP / {t_samp:.2f} s |",
        f"| fine-tune phase / ({steps} x timed step) | {split['finetune'] / (steps * t_eager):.2f} |",
        f"| {MATMUL_N}x{MATMUL_N} float32 matmul | {mm_rate:.1f} GFLOP/s |",
        f"| fine-tune step {args.method}: achieved rate; rate / matmul rate | {rate['eager']:.1f} GFLOP/s; {rate['eager'] / mm_rate:.3f} |",
        f"| fine-tune step full: achieved rate; rate / matmul rate | {rate['full']:.1f} GFLOP/s; {rate['full'] / mm_rate:.3f} |",
        f"| sampling: achieved rate; rate / matmul rate | {rate['sampling']:.1f} GFLOP/s; {rate['sampling'] / mm_rate:.3f} |",
        "",
        f"Speedups over the eager code timed in the same rounds ({args.repeats} round(s); training: {args.train_steps} steps of {args.method} "
        f"per round; sampling: one evaluation's sampling per round). Above 1.00x is faster.",
        "",
        "| what | variant | speedup | note |",
        "|---|---|---|---|",
    ]
    for name in train:
        if name in ("eager", "full", "matmul"):
            continue
        if name == "batch x2":
            lines.append(f"| fine-tune step | batch {batch2} instead of {batch}, per image | {speed(tt, name, batch2 / batch)} | changes the budget (the preset's batch) |")
            continue
        note = {"channels-last": "weights and inputs channels-last", "bf16 autocast": "changes the numbers (and the cache key's dtype)"}.get(name, notes.get("train " + name, ""))
        lines.append(f"| fine-tune step | {name} | {speed(tt, name)} | {note} |")
    for name in samp:
        if name in ("eager", "matmul"):
            continue
        note = {"fused (one call)": "both prompt lists in one `generate` call (other noise draws)", "channels-last": "UNet channels-last",
                "bf16 autocast": "changes the numbers (and the cache key's dtype)",
                small: f"`sample_batch_size` {args.sample_batch} instead of {cfg.sample_batch_size} (a config field, so in the cache key); "
                       f"same samples bit for bit: {'yes' if small_same else 'NO'}"}.get(name, notes.get("sample " + name, ""))  # fmt: skip
        lines.append(f"| sampling | {name} | {speed(st, name)} | {note} |")
    for label, note in notes.items():
        if note.startswith("failed"):
            lines.append(f"| {label.split()[0].replace('train', 'fine-tune step').replace('sample', 'sampling')} | torch.compile | n/a | {note} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    print(f"(model load {load_s:.2f} s; total {time.perf_counter() - t0:.0f} s)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    if not all(math.isfinite(x) for x in (d, s, h, mm_rate, *rate.values())):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
