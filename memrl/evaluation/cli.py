"""``memrl evaluate``: one masked fine-tune and its metrics, as one JSON object."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from memrl.utils.overrides import add_set_argument

DEFAULT_MODEL = os.environ.get("MEMRL_MODEL", "runs/digits-base")


#: ``--feature-net`` of memrl evaluate, train, search and replay (each adds where its default comes from).
FEATURE_NET_HELP = (
    "feature network of FID/KID, nearest-neighbour memorization and the dataset descriptor: a memrl feature-network folder "
    "(config.json + model.safetensors; memrl pretrain writes MODEL/feature_net, memrl feature-net trains one on a public "
    "image folder) or package.module:callable returning an nn.Module with num_features that maps N x C x H x W images in "
    "[-1, 1] to N x num_features (your domain model); part of every cache key"
)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from memrl.evaluation.config import PRESETS
    from memrl.metrics.names import MEM_METRICS
    from memrl.peft_masking import GRANULARITIES, METHODS

    p = sub.add_parser(
        "evaluate",
        help="fine-tune with one PEFT mask and measure quality, memorization and the reward",
        description="Fine-tune the pretrained model with METHOD inside the units selected by MASK, then measure "
        "FID/KID, the noise-norm score, nearest-neighbour memorization, the extraction attack and the reward "
        "(against full fine-tuning with the same budget, computed once and cached).",
    )
    p.add_argument("--method", required=True, choices=list(METHODS), help="PEFT method applied inside the selected units")
    p.add_argument("--mask", required=True, help="units to train: comma-separated unit names, a bit string, 'all' or 'none'")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's tuned default)")
    p.add_argument("--seed", type=int, default=0, help="seed for fine-tuning, sampling and metrics")
    p.add_argument("--preset", default="default", choices=list(PRESETS), help="budget: default (~1 min on 2 cores), search (~20 s, the agent's training budget) or quick (seconds)")
    p.add_argument("--dataset", default="inverted", help="built-in variant name, family:N, image folder (metadata.csv/jsonl, .txt captions, or train/ + test/ split folders) or sheet of image path + caption (.csv, .jsonl, .parquet with pyarrow) (default: inverted)")
    p.add_argument("--caption-column", default=None, metavar="NAME", help="the sheet's caption column, e.g. impression (default: the first of caption, text, report, prompt)")
    p.add_argument("--image-column", default=None, metavar="NAME", help="the sheet's image-path column, paths relative to the sheet's folder (default: the first of path, file_name, image, filename)")
    p.add_argument("--split-column", default=None, metavar="NAME", help="the sheet's split column: train, or heldout/test/validation for the FID reference (default: a column named split, if any; without one a seeded 30%% is held out)")
    p.add_argument("--mem-sheet", default=None, metavar="FILE", help="sheet (.csv, .jsonl, .parquet) of training images to use as the memorization set, in its order (same image column as the dataset; a caption column, if present, must match)")
    p.add_argument("--pretrained", "--model", dest="pretrained", default=DEFAULT_MODEL, help=f"pretrained model folder (default {DEFAULT_MODEL})")
    p.add_argument(
        "--feature-net",
        default=None,
        metavar="FOLDER|MODULE:CALLABLE",
        help=FEATURE_NET_HELP + "; default: MODEL/feature_net",
    )
    p.add_argument("--out", required=True, help="folder for the sample grid and the nearest-neighbour picture (and result.json)")
    p.add_argument("--cache", default=None, help="evaluation cache for the reference run (full fine-tuning, computed once per dataset and budget): an SQLite file, sqlite:///PATH or postgresql://USER@HOST:PORT/DB (pip install 'memrl[postgres]'); default: inside --out, OUT/evaluations.sqlite. Share one cache between evaluations to compute the reference once")
    add_set_argument(
        p,
        "override any setting of the preset's evaluation config (memrl.evaluation.EvalConfig), dotted keys, "
        "YAML values: finetune.steps=50 reward.lam=2 guidance_scale=1.5 n_fid_samples=64 noise_norm_timesteps=[500]; "
        "checked like a config file (unknown keys list the valid ones). finetune.method/lr/seed/granularity come from "
        "--method/--lr/--seed/--granularity",
    )
    p.add_argument("--lam", type=float, default=None, help="reward weight of the memorization term (default 1); short for --set reward.lam=X")
    p.add_argument("--mu", type=float, default=None, help="reward weight of the trainable fraction (default 0.1); short for --set reward.mu=X")
    p.add_argument("--mem-metric", default=None, choices=list(MEM_METRICS), help="memorization metric used in the reward (default nn_own_rate); short for --set reward.mem_metric=X")
    p.add_argument("--resolution", type=int, default=None, metavar="PIXELS", help="train and sample at PIXELS x PIXELS instead of the model's native size (SD 1.5: 512; the published runs used 224); a multiple of the VAE factor; part of the cache key (config: env.resolution)")
    p.add_argument("--granularity", default="attention", choices=list(GRANULARITIES), help="what a mask bit switches: each attention block (default, SD's 16 transformer blocks), attention blocks and resnets, or whole down/mid/up blocks")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 4); short for --set finetune.rank=N")
    p.add_argument("--random-words", type=int, default=None, metavar="K", help="mitigation (Somepalli et al. 2023): insert K random words, drawn from the training captions' own words, at random positions of every caption each time it is drawn (default 0: off); short for --set finetune.caption_random_words=K")
    p.add_argument("--guidance-filter", type=float, default=None, metavar="T", help="mitigation (Wen et al. 2024): leave out of the loss every training sample whose text-guidance magnitude ||eps(x_t, c) - eps(x_t, '')|| is above T (default: off); the result reports filtered_share; short for --set finetune.guidance_filter_threshold=T. The reward's reference stays plain full fine-tuning")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars (--json hides them too)")
    p.add_argument("--json", action="store_true", help="print only the JSON object (no progress, no summary line)")
    p.set_defaults(func=_cmd_evaluate, splits_across_processes=True)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Validate every input before writing anything; then evaluate and write OUT/result.json.

    A failed evaluation (e.g. a diverged fine-tune) is recorded in OUT/result.json and the cache
    and reported as one line (exit status 1).
    """
    import sys

    import torch

    from memrl.data.loaders import load_dataset
    from memrl.errors import EvaluationFailed, MemrlError
    from memrl.evaluation import Evaluator
    from memrl.evaluation.cache import EvalCache, open_backend
    from memrl.training.distributed import DataParallel
    from memrl.utils.io import write_json_atomic

    cfg = eval_config(args)  # the cheap checks first: a --set typo costs no model load
    if args.cache:
        open_backend(args.cache)  # the form of --cache (a path or a URL), before the model loads
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MemrlError(f"--out {out} is a file; give a folder")
    # under torchrun / accelerate launch: one evaluation split across the processes (one GPU each)
    parallel = DataParallel.from_launcher(args.device)
    if parallel is not None:
        device = str(parallel.device)
    else:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    main = parallel is None or parallel.is_main
    ev = Evaluator(args.pretrained, device=device, granularity=args.granularity, feature_net=args.feature_net, resolution=args.resolution, parallel=parallel)
    data = load_dataset(args.dataset, ev.model.image_size, ev.model.image_channels, **dataset_options(args))
    ev.check_data(data)
    check_mem_sheet(data, cfg, args.mem_sheet)
    if args.lr is not None and not args.lr > 0:
        raise MemrlError(f"--lr must be positive, got {args.lr}")
    cfg.with_method(args.method, args.lr, args.seed).finetune.resolved_lr()  # the method has a learning rate
    proposed = ev.parse_mask(args.mask)
    mask, empty = ev.effective_mask(args.method, proposed, strict=True)  # refused here, before any write
    # every input is good: only now is anything written (by process 0 alone when split across processes)
    if not main:  # process 0 reports the result or the failure
        try:
            ev.evaluate(data, args.method, proposed, cfg, lr=args.lr, seed=args.seed, out_dir=out)
        except EvaluationFailed:
            return 1
        except MemrlError:
            return 2
        return 0
    ev.cache = EvalCache(args.cache if args.cache else out / "evaluations.sqlite")  # a path or a URL
    if empty and not args.json:
        print(f"memrl: note: {', '.join(empty)} hold no {args.method} parameters; training {mask}", file=sys.stderr)
    try:
        result = ev.evaluate(data, args.method, proposed, cfg, lr=args.lr, seed=args.seed, out_dir=out, progress=not (args.json or args.no_progress))
    except EvaluationFailed as exc:
        failed = {"dataset": data.name, "method": args.method, "mask": str(mask), "seed": args.seed, "failed": True, "error": f"{type(exc).__name__}: {exc}"}
        write_json_atomic(out / "result.json", failed)
        raise
    result.pop("cached", None)
    write_json_atomic(out / "result.json", result)
    if not args.json:
        for w in result.get("warnings", []):
            print(f"memrl: warning: {w}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def add_cache(sub: argparse._SubParsersAction) -> None:
    """``memrl cache import`` / ``export``: seed an evaluation cache from committed lookup tables, and write one as a table."""
    from memrl.peft_masking import GRANULARITIES, METHODS

    p = sub.add_parser(
        "cache",
        help="manage evaluation caches: import lookup tables so that real runs reuse their fine-tunes, export a cache as a table",
        description="Evaluation caches (SQLite files or postgresql:// URLs) hold every finished evaluation; lookup tables "
        "(*.jsonl, e.g. experiments/results/exhaustive) are their portable, committed copies.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    imp = verbs.add_parser(
        "import",
        help="copy lookup tables' rows into an evaluation cache",
        description="Copy the rows of lookup tables into an evaluation cache, so that memrl train / search / evaluate "
        "with that cache (env.cache, --cache) answer those requests without fine-tuning again. A row only answers the "
        "exact request that produced it (same model, data, config, seed, CPU thread count, library versions). Every "
        "table is checked before anything is written; importing twice changes nothing.",
    )
    imp.add_argument("tables", nargs="+", metavar="TABLE", help="lookup table files (*.jsonl) or folders of them")
    imp.add_argument("--into", required=True, metavar="CACHE", help="the evaluation cache to fill: an SQLite file (created if missing), sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    imp.add_argument("--json", action="store_true", help="print the counts as one JSON object instead of a sentence")
    imp.set_defaults(func=_cmd_cache_import)
    exp = verbs.add_parser(
        "export",
        help="write an evaluation cache's finished evaluations as a lookup table",
        description="Write the finished evaluations of CACHE (results, and failures that repeat) as a lookup table "
        "(*.jsonl): commit it, `memrl cache import` it into a fresh cache on another machine, or answer from it with "
        "--lookup. Only rows of the named model, feature network and units are written; the file is written "
        "atomically and is the same bytes for the same cache content.",
    )
    exp.add_argument("cache", metavar="CACHE", help="the evaluation cache to read: an SQLite file, sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    exp.add_argument("--out", required=True, metavar="TABLE", help="the lookup table to write (*.jsonl)")
    exp.add_argument("--pretrained", "--model", dest="pretrained", default=DEFAULT_MODEL, help=f"the pretrained model folder the evaluations fine-tuned (default {DEFAULT_MODEL})")
    exp.add_argument("--feature-net", default=None, metavar="FOLDER|MODULE:CALLABLE", help=FEATURE_NET_HELP + "; default: MODEL/feature_net")
    exp.add_argument("--granularity", default="attention", choices=list(GRANULARITIES), help="the units the evaluations' masks switch (default attention)")
    exp.add_argument("--resolution", type=int, default=None, metavar="PIXELS", help="the resolution the evaluations ran at (default: the model's own)")
    exp.add_argument("--method", dest="methods", nargs="+", default=None, choices=list(METHODS), metavar="METHOD", help="methods the table declares (full, the reward's reference, is always added; default: every method)")
    exp.add_argument("--json", action="store_true", help="print the count as one JSON object instead of a sentence")
    exp.set_defaults(func=_cmd_cache_export)


def _cmd_cache_import(args: argparse.Namespace) -> int:
    from memrl.errors import MemrlError
    from memrl.evaluation.cache import open_backend
    from memrl.evaluation.lookup import import_tables

    backend = open_backend(args.into)  # the form of --into, before any table is read
    file = getattr(backend, "path", None)
    if file is not None and file.exists() and not file.is_file():
        raise MemrlError(f"--into {file} is a folder; give an SQLite file (e.g. {file}/evaluations.sqlite)")
    counts = import_tables(args.tables, args.into)
    if args.json:
        print(json.dumps({**counts, "cache": str(args.into)}))
    else:
        print(
            f"imported {counts['imported']} result(s) and {counts['failures']} deterministic failure(s) from {counts['tables']} "
            f"table(s) into {args.into}; {counts['present']} were already there"
        )
    return 0


def _cmd_cache_export(args: argparse.Namespace) -> int:
    from memrl.errors import MemrlError
    from memrl.evaluation import Evaluator
    from memrl.evaluation.lookup import export_table, require_cache, table_meta

    require_cache(args.cache)  # before the model loads
    out = Path(args.out)
    if out.is_dir():
        raise MemrlError(f"--out {out} is a folder; give a file name such as {out}/evaluations.jsonl")
    ev = Evaluator(args.pretrained, device="cpu", granularity=args.granularity, feature_net=args.feature_net, resolution=args.resolution)
    methods = None if args.methods is None else list(dict.fromkeys([*args.methods, "full"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    n = export_table(args.cache, out, table_meta(ev, methods))
    print(json.dumps({"rows": n, "table": str(out)}) if args.json else f"exported {n} finished evaluation(s) from {args.cache} to {out}")
    return 0


def dataset_options(args: argparse.Namespace) -> dict:
    """The ``load_dataset`` keyword options of ``--caption-column``, ``--image-column``,
    ``--split-column`` and ``--mem-sheet`` (absent flags: the defaults)."""
    return {
        "caption_column": getattr(args, "caption_column", None),
        "image_column": getattr(args, "image_column", None),
        "split_column": getattr(args, "split_column", None),
        "mem_sheet": getattr(args, "mem_sheet", None),
    }


def check_mem_sheet(data, cfg, mem_sheet) -> None:  # noqa: ANN001
    """Refuse ``--mem-sheet`` unless fine-tuning really probes the sheet's images.

    Asks :func:`memrl.training.finetune.training_set` (cheap: no model) which memorization set it
    would use for ``data`` and ``cfg``: a sheet the fine-tune ignored would report metrics of
    another probe under the sheet's name.
    """
    if data.memorization is None:
        return
    from memrl.errors import MemrlError
    from memrl.training.finetune import training_set

    _, used = training_set(data, cfg.finetune)
    sheet = list(data.memorization)
    if not used or list(used) != sheet[: len(used)]:
        raise MemrlError(
            f"--mem-sheet {mem_sheet}: fine-tuning in this version does not use a memorization sheet "
            "(memrl.training.finetune.training_set picks the probe itself); leave out --mem-sheet"
        )


#: ``finetune`` fields ``memrl evaluate`` sets from its own flags (``EvalConfig.with_method`` and
#: the evaluator's granularity replace them): a ``--set`` of them would be silently lost.
_FLAG_FIELDS = {"method": "--method", "lr": "--lr", "seed": "--seed", "granularity": "--granularity"}


def eval_config(args: argparse.Namespace):  # noqa: ANN201
    """The preset's :class:`EvalConfig` with ``--set`` and its one-off aliases (``--lam``, ``--mu``,
    ``--mem-metric``, ``--rank``, ``--random-words``, ``--guidance-filter``) applied and checked;
    nothing is loaded or written."""
    from memrl.errors import MemrlError
    from memrl.evaluation import preset
    from memrl.utils.overrides import apply_sets, flatten_sets, nest, parse_sets

    sets = parse_sets(args.set)
    finetune = sets.get("finetune")
    taken = sorted(k for k in finetune if k in _FLAG_FIELDS) if isinstance(finetune, dict) else []
    if taken:
        flags = ", ".join(f"finetune.{k} (use {_FLAG_FIELDS[k]})" for k in taken)
        raise MemrlError(f"--set: {flags}: memrl evaluate sets {'it' if len(taken) == 1 else 'them'} from its own flag{'s' if len(taken) > 1 else ''}")
    flat = flatten_sets(sets)
    cfg = preset(args.preset)
    aliases = (
        ("--lam", "reward.lam", args.lam),
        ("--mu", "reward.mu", args.mu),
        ("--mem-metric", "reward.mem_metric", args.mem_metric),
        ("--rank", "finetune.rank", args.rank),
        ("--random-words", "finetune.caption_random_words", getattr(args, "random_words", None)),
        ("--guidance-filter", "finetune.guidance_filter_threshold", getattr(args, "guidance_filter", None)),
    )
    for flag, key, value in aliases:
        if value is None:
            continue
        if key in flat and flat[key] != value:
            raise MemrlError(f"{flag} {value} and --set {key}={flat[key]} disagree; give one")
        cfg = apply_sets(cfg, nest({key: value}), source=flag)
    return apply_sets(cfg, sets, source="--set")
