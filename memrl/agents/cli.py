"""``memrl train`` and ``memrl replay``."""

from __future__ import annotations

import argparse
import json
import sys


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the PPO mask-selection agent (checkpoints, resume, TensorBoard)",
        description="Train a PPO policy that proposes which UNet units to fine-tune for a dataset. Every step "
        "fine-tunes the model with the proposed mask and measures the memorization-penalised FID reward. "
        "Writes RUN/policy.zip, best_mask.json, evaluations.csv, pareto.csv, policy_eval.json, "
        "descriptor.json, config.yaml, evaluations.sqlite (cache) and TensorBoard logs in RUN/tb/.",
    )
    p.add_argument("--config", default=None, help="YAML file with env / ppo / train sections (e.g. experiments/digits.yaml); not needed with --resume")
    p.add_argument("--out", required=True, help="run folder (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last checkpoint (finished evaluations come back from the cache)")
    p.add_argument("--total-timesteps", type=int, default=None, help="override train.total_timesteps (env steps = evaluations); with --resume it extends a finished run to this many steps")
    p.add_argument("--pretrained", default=None, help="override env.pretrained (the base model folder)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_train)

    r = sub.add_parser(
        "replay",
        help="apply a trained policy to a new dataset: its mask, a Stage-2 fine-tune, a report",
        description="Describe DATASET, take the policy's deterministic mask with zero search evaluations, fine-tune "
        "on the whole dataset with it, evaluate against full fine-tuning on the same data, and write OUT/report.json, "
        "the fine-tuned model (OUT/model/, diffusers format; OUT/adapter/ for peft methods) and sample pictures.",
    )
    r.add_argument("--policy", required=True, help="RUN/policy.zip written by memrl train (config.yaml and descriptor.json must sit beside it)")
    r.add_argument("--dataset", required=True, help="built-in variant name, image folder (with metadata.csv/jsonl or .txt captions) or CSV of path + caption")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--pretrained", default=None, help="base model folder (default: the one the policy was trained with)")
    r.add_argument("--n-repeats", type=int, default=1, help="copies of the memorization-probe images in the Stage-2 training set (default 1: no forced duplication)")
    r.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ...")
    r.add_argument("--json", action="store_true", help="print the whole report as JSON instead of a summary")
    r.set_defaults(func=_cmd_replay)


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _cmd_train(args: argparse.Namespace) -> int:
    from memrl.agents.config import TrainConfig
    from memrl.agents.train import train

    cfg = TrainConfig.load(args.config) if args.config else None
    if args.resume:
        _check_resume_matches(args, cfg)
    if cfg is not None:
        if args.pretrained:
            cfg.env.pretrained = args.pretrained
    elif not args.resume:
        from memrl.errors import MemrlError

        raise MemrlError("memrl train needs --config CFG (or --resume with --out of an existing run)")
    train(cfg, args.out, resume=args.resume, progress=not args.no_progress, total_timesteps=args.total_timesteps)
    return 0


def _check_resume_matches(args: argparse.Namespace, given) -> None:  # noqa: ANN001
    """``--resume`` continues the run saved in ``RUN/config.yaml``; refuse a ``--config`` or
    ``--pretrained`` that says otherwise (it would be silently ignored), naming each field that
    differs. The same values are fine. Without a saved config there is nothing to compare:
    :func:`memrl.agents.train.train` then says the folder holds no run."""
    from pathlib import Path

    from memrl.agents.config import TrainConfig
    from memrl.errors import MemrlError

    saved_path = Path(args.out) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = TrainConfig.load(saved_path)
    diffs = []
    if given is not None:
        ours, theirs = given.to_dict(), saved.to_dict()
        for section in ("env", "ppo", "train"):
            for key in sorted(set(ours[section]) | set(theirs[section])):
                a, b = ours[section].get(key), theirs[section].get(key)
                if a == b or _resume_may_differ(section, key, a, args):
                    continue
                if section == "env" and key in ("pretrained", "cache") and a is not None and b is not None and _same_path(a, b):
                    continue
                diffs.append(f"{section}.{key} is {_short(a)} in {args.config} but {_short(b)} in the run")
    if args.pretrained and not _same_path(args.pretrained, saved.env.pretrained):
        diffs.append(f"--pretrained is {args.pretrained} but env.pretrained is {saved.env.pretrained} in the run")
    if diffs:
        hint = " (pass --total-timesteps to change the run's length)" if any(d.startswith("train.total_timesteps") for d in diffs) else ""
        raise MemrlError(
            f"cannot resume {args.out} with different settings: {'; '.join(diffs)}{hint}; a resumed run keeps "
            f"the settings in {saved_path}: resume without --config/--pretrained, or start a new run with another --out"
        )


def _resume_may_differ(section: str, key: str, given, args: argparse.Namespace) -> bool:  # noqa: ANN001
    """Fields a resumed run legitimately changes: the cache path memrl filled in (when the config
    left it empty), ``env.pretrained`` when ``--pretrained`` replaces it (checked on its own), and
    ``train.total_timesteps`` when ``--total-timesteps`` sets it."""
    if section == "env" and key == "cache":
        return given is None
    if section == "env" and key == "pretrained":
        return bool(args.pretrained)
    if section == "train" and key == "total_timesteps":
        return args.total_timesteps is not None
    return False


def _same_path(a: str, b: str) -> bool:
    """Whether two path strings name the same file or folder (``runs/x`` and ``./runs/x/``)."""
    from pathlib import Path

    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _short(value) -> str:  # noqa: ANN001
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cmd_replay(args: argparse.Namespace) -> int:
    from memrl.agents.replay import replay

    rep = replay(args.policy, args.dataset, args.out, pretrained=args.pretrained, n_repeats=args.n_repeats, device=_device(args.device), progress=not args.json)
    if args.json:
        print(json.dumps(rep))
    else:
        m, f = rep["metrics"], rep["full_finetune"]
        print(f"dataset {rep['dataset']}: policy mask [{', '.join(rep['mask_units']) or 'none'}] ({rep['method']}, lr {rep['lr']:g}), 0 search evaluations")
        print(f"  policy mask : FID {m['fid']:.2f}  nn_own_rate {m['nn_own_rate']:.3f}  replication {m['replication_rate']:.3f}  trainable {100 * m['trainable_fraction']:.2f}%")
        print(f"  full FT     : FID {f['fid']:.2f}  nn_own_rate {f['nn_own_rate']:.3f}  replication {f['replication_rate']:.3f}")
        print(f"wrote {args.out}/report.json and the fine-tuned model in {rep['saved'].get('model')}", file=sys.stderr)
    return 0
