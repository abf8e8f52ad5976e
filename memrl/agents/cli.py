"""``memrl train`` and ``memrl replay``."""

from __future__ import annotations

import argparse
import json
import sys

from memrl.evaluation.cli import FEATURE_NET_HELP
from memrl.utils.overrides import add_set_argument


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the PPO mask-selection agent (checkpoints, resume, TensorBoard)",
        description="Train a PPO policy that proposes which UNet units to fine-tune for a dataset. Every step "
        "fine-tunes the model with the proposed mask and measures the memorization-penalised FID reward. "
        "Writes RUN/policy.zip, best_mask.json, evaluations.csv, pareto.csv, policy_eval.json, "
        "descriptor.json, config.yaml (the effective config, --set included), evaluations.sqlite (cache) and TensorBoard "
        "logs in RUN/tb/. --dry-run checks everything and estimates the run's time without training or writing.",
    )
    p.add_argument("--config", default=None, help="YAML file with env / ppo / train sections (e.g. experiments/digits.yaml); not needed with --resume, or with --set (then the defaults are the base)")
    p.add_argument("--out", required=True, help="run folder (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last checkpoint (finished evaluations come back from the cache)")
    p.add_argument("--total-timesteps", type=int, default=None, help="override train.total_timesteps (env steps = evaluations), like --set train.total_timesteps=N; with --resume it extends a finished run to this many steps")
    p.add_argument("--pretrained", "--model", dest="pretrained", default=None, help="override env.pretrained (the base model folder); --model is an alias")
    add_set_argument(
        p,
        "override config values, dotted keys, YAML values: env.method=lora ppo.learning_rate=1e-3 "
        "train.total_timesteps=64 env.datasets=[inverted,thick] env.eval_overrides.finetune.steps=50 env.reward.lam=2; "
        "sections env (EnvConfig), ppo (stable_baselines3.PPO arguments), train; checked like the config file. "
        "Without --config the defaults are the base. With --resume only train.total_timesteps may be set",
    )
    p.add_argument("--report-to", nargs="+", default=None, choices=["wandb"], metavar="TRACKER", help="also mirror TensorBoard to these trackers: wandb (needs pip install 'memrl[wandb]'; WANDB_MODE=offline works); like --set train.report_to=[wandb]")
    p.add_argument("--dry-run", action="store_true", help="check the config, the model and every dataset, build the env, time one evaluation step and estimate the run's evaluations and hours; trains nothing and writes nothing to --out")
    p.add_argument(
        "--lookup",
        default=None,
        metavar="DIR",
        help="answer every evaluation from the lookup tables (*.jsonl, exported from evaluation caches, e.g. by memrl search) "
        "under DIR instead of fine-tuning: no model is loaded and nothing is fine-tuned, so comparing agents costs no "
        "evaluations. The tables must hold every mask the policy can propose on every training and held-out dataset with the "
        "run's preset, eval_overrides and seed (checked first); RUN/lookup.json records them and --resume reuses them. "
        "No final pictures; not with --dry-run",
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch device of the evaluations (fine-tuning, sampling, metrics): auto (cuda when available), cpu, cuda, cuda:1, ...; "
        "overrides env.device (default cpu); the PPO policy itself is small and stays on the CPU",
    )
    p.add_argument("--feature-net", default=None, metavar="FOLDER|MODULE:CALLABLE", help=FEATURE_NET_HELP + "; overrides env.feature_net (default MODEL/feature_net)")
    p.add_argument(
        "--ground-truth",
        default=None,
        metavar="DIR",
        help="lookup tables holding every mask for some of the run's datasets (e.g. experiments/results/exhaustive): TensorBoard "
        "shows the best-so-far regret per evaluation on those datasets (regret/<dataset>, regret/mean) and policy_eval.json the "
        "policy mask's regret and rank; default: the --lookup tables; like --set train.ground_truth=DIR",
    )
    from memrl.search.cli import RAY_HELP

    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", help=RAY_HELP + "; with train.n_envs > 1 each environment gets its own actor")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the summary (or the --dry-run report) as one JSON object instead of text")
    p.set_defaults(func=_cmd_train)

    r = sub.add_parser(
        "replay",
        help="apply a trained policy to a new dataset: its mask, a Stage-2 fine-tune, a report",
        description="Describe DATASET, take the policy's deterministic mask with zero search evaluations, fine-tune "
        "on the whole dataset with it, evaluate against full fine-tuning on the same data, and write OUT/report.json, "
        "the fine-tuned model (OUT/model/, diffusers format; OUT/adapter/ for peft methods) and sample pictures. "
        "--budget K first spends K evaluations refining the policy's mask with a search warm-started with its top "
        "proposals (OUT/search/, a memrl search run); the best mask found goes to the fine-tune instead.",
    )
    r.add_argument(
        "--policy",
        required=True,
        nargs="+",
        metavar="POLICY",
        help="RUN/policy.zip written by memrl train (config.yaml and descriptor.json must sit beside it); two or more "
        "(agent seeds of one config, e.g. train.seed=0,1,2) propose as an ensemble (--ensemble)",
    )
    r.add_argument(
        "--ensemble",
        default=None,
        choices=("mixture", "product"),
        help="how several --policy files combine: mixture (default: their action probabilities averaged, so one seed's "
        "outlier is outvoted) or product (multiplied and normalised: a mask any of them finds unlikely loses)",
    )
    r.add_argument("--dataset", required=True, help="built-in variant name, image folder (with metadata.csv/jsonl or .txt captions) or CSV of path + caption")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--pretrained", "--model", dest="pretrained", default=None, help="base model folder (default: the one the policy was trained with); --model is an alias")
    r.add_argument("--n-repeats", type=int, default=1, help="copies of the memorization-probe images in the Stage-2 training set (default 1: no forced duplication)")
    r.add_argument(
        "--budget",
        default="0",
        metavar="K",
        help="search evaluations spent on DATASET before the fine-tune (default 0: the policy's own mask, no search). K > 0: a "
        "memrl search run in OUT/search/ with the policy's evaluation settings (method(s), lr scales, preset, overrides, seed, "
        "reward), warm-started with the policy's most probable proposals (its own mask first); its best mask by reward is fine-tuned",
    )
    r.add_argument("--warm-start-k", default=None, metavar="N", help="with --budget: how many of the policy's proposals start the search (default min(4, K))")
    r.add_argument("--optimizer", default=None, metavar="NAME", help="with --budget: the search's optimizer, tpe (default) or random after the warm start, or model: Bayesian optimisation with the reward model fitted on the policy's own training evaluations (memrl search --optimizer model --prior POLICY_RUN; an ensemble: every policy's run, pooled; no warm start)")
    r.add_argument(
        "--screen-steps",
        default=None,
        metavar="N",
        help="with --budget: multi-fidelity refinement (successive halving, as memrl search --screen-steps): every search trial is "
        "first evaluated with an N-step fine-tune (below the policy's preset's steps) and only trials whose screen is in the best "
        "1/--screen-eta so far get the full evaluation; K counts the trials, each one screen (OUT/search/screening.csv), about K/ETA of them then evaluated in full",
    )
    r.add_argument("--screen-eta", default=None, metavar="ETA", help="with --screen-steps: about one screened trial in ETA gets the full evaluation (default 3)")
    r.add_argument("--feature-net", default=None, metavar="FOLDER|MODULE:CALLABLE", help=FEATURE_NET_HELP + "; default: the policy's env.feature_net (the network its descriptor basis was fitted with)")
    r.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ...")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bars (--json hides them too)")
    r.add_argument("--json", action="store_true", help="print the whole report as JSON instead of a summary")
    r.set_defaults(func=_cmd_replay)


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _cmd_train(args: argparse.Namespace) -> int:
    """Build the effective config (file or defaults, then ``--set`` and the flags) and check it
    completely before :func:`memrl.agents.train.train` writes the run folder."""
    from memrl.agents.config import TrainConfig
    from memrl.errors import MemrlError
    from memrl.utils.overrides import apply_sets, flatten_sets, nest, parse_sets

    sets = parse_sets(args.set)
    lookup = getattr(args, "lookup", None)
    if lookup is not None and args.dry_run:
        raise MemrlError("--lookup cannot take --dry-run: a lookup run fine-tunes nothing (its checks run first, before the run folder is written); run it without --dry-run")
    if args.resume:
        _resume_sets(args, sets)
        if args.report_to:
            raise MemrlError("--resume cannot take --report-to: a resumed run keeps the trackers saved in its config.yaml")
        if args.ground_truth:
            raise MemrlError("--resume cannot take --ground-truth: a resumed run keeps train.ground_truth saved in its config.yaml")
        if args.device:
            raise MemrlError("--resume cannot take --device: a resumed run keeps env.device saved in its config.yaml (the device is part of every evaluation's cache key)")
        if getattr(args, "ray", None) is not None:
            raise MemrlError("--resume cannot take --ray: a resumed run keeps env.ray saved in its config.yaml")
        if args.feature_net:
            raise MemrlError("--resume cannot take --feature-net: a resumed run keeps env.feature_net saved in its config.yaml (the feature network is part of every evaluation's cache key)")
    cfg = TrainConfig.load(args.config) if args.config else None
    if args.resume:
        _check_resume_matches(args, cfg)
    elif cfg is None:
        if not sets:
            raise MemrlError("memrl train needs --config CFG or --set KEY=VALUE ... (on the defaults), or --resume with --out of an existing run")
        cfg = TrainConfig()
    if cfg is not None and not args.resume:
        cfg = apply_sets(cfg, sets, source="--set")
        flat = flatten_sets(sets)
        for flag, key, value in (
            ("--pretrained", "env.pretrained", args.pretrained),
            ("--total-timesteps", "train.total_timesteps", args.total_timesteps),
            ("--report-to", "train.report_to", args.report_to),
            ("--ground-truth", "train.ground_truth", args.ground_truth),
            ("--device", "env.device", _device(args.device) if args.device else None),
            ("--feature-net", "env.feature_net", args.feature_net),
        ):
            if value is None:
                continue
            if key in flat and flat[key] != value:
                raise MemrlError(f"{flag} {value} and --set {key}={flat[key]} disagree; give one")
            cfg = apply_sets(cfg, nest({key: value}), source=flag)
        if getattr(args, "ray", None) is not None:
            from memrl.search.cli import with_ray

            cfg.env = with_ray(cfg.env, args.ray)
    if args.dry_run:
        return _dry_run(args, cfg)
    from memrl.agents.train import train

    echo = (lambda _s: None) if args.json else print
    total = args.total_timesteps if args.resume else None  # a new run has it in cfg already
    summary = train(cfg, args.out, resume=args.resume, progress=not (args.no_progress or args.json), echo=echo, total_timesteps=total, lookup=lookup)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


def _resume_sets(args: argparse.Namespace, sets: dict) -> None:
    """``--resume`` keeps the saved config: ``--set`` may only change ``train.total_timesteps``
    (the run's length, like ``--total-timesteps``), which is folded into ``args.total_timesteps``."""
    from memrl.errors import MemrlError
    from memrl.utils.config import check_value
    from memrl.utils.overrides import flatten_sets

    flat = flatten_sets(sets)
    other = sorted(k for k in flat if k != "train.total_timesteps")
    if other:
        raise MemrlError(
            f"--resume cannot take --set {', '.join(other)}: a resumed run keeps the config saved in "
            f"{args.out}/config.yaml so that its steps stay comparable (only train.total_timesteps may change, to extend "
            "the run); start a new run with another --out to change settings"
        )
    if "train.total_timesteps" in flat:
        total = check_value(flat["train.total_timesteps"], int, "train.total_timesteps", "--set")
        if args.total_timesteps is not None and args.total_timesteps != total:
            raise MemrlError(f"--total-timesteps {args.total_timesteps} and --set train.total_timesteps={total} disagree; give one")
        args.total_timesteps = total


def _dry_run(args: argparse.Namespace, cfg) -> int:  # noqa: ANN001
    """``memrl train --dry-run``: see :mod:`memrl.agents.dry_run` (nothing is written to --out)."""
    from memrl.agents.dry_run import check_run_folder, dry_run, format_report

    if args.resume:  # the saved run's config, with the length --resume would give it
        from pathlib import Path

        from memrl.agents.config import TrainConfig
        from memrl.utils.overrides import apply_sets

        check_run_folder(args.out, resume=True)
        cfg = TrainConfig.load(Path(args.out) / "config.yaml")
        if args.total_timesteps is not None:
            cfg = apply_sets(cfg, {"train": {"total_timesteps": args.total_timesteps}}, source="--total-timesteps")
    quiet = args.json or args.no_progress
    report = dry_run(cfg, args.out, resume=args.resume, progress=not quiet, echo=None if quiet else lambda s: print(f"memrl: {s}", file=sys.stderr))
    print(json.dumps(report, default=str) if args.json else format_report(report))
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
    from memrl.agents.replay import checked_count, replay

    budget = checked_count(args.budget, "--budget", 0, "search evaluations before Stage 2; 0: the policy's own mask")
    rep = replay(
        args.policy[0] if len(args.policy) == 1 else args.policy,
        args.dataset,
        args.out,
        pretrained=args.pretrained,
        n_repeats=args.n_repeats,
        device=_device(args.device),
        feature_net=args.feature_net,
        progress=not (args.json or args.no_progress),
        budget=budget,
        warm_start_k=args.warm_start_k,
        optimizer=args.optimizer,
        screen_steps=args.screen_steps,
        screen_eta=args.screen_eta,
        ensemble=args.ensemble,
    )
    if args.json:
        print(json.dumps(rep))
    else:
        m, f, s = rep["metrics"], rep["full_finetune"], rep["search"]
        units = ", ".join(rep["mask_units"]) or "none"
        if s is None:
            print(f"dataset {rep['dataset']}: policy mask [{units}] ({rep['method']}, lr {rep['lr']:g}), 0 search evaluations")
        else:
            z = rep["zero_shot"]
            zr = "not evaluated" if z["search_reward"] is None else f"search reward {z['search_reward']:.3f}"
            best = "no evaluation succeeded: the policy's mask is kept" if s["reward"] is None else f"best search reward {s['reward']:.3f} (trial {s['step']}{', a policy proposal' if s['warm_start'] else ''})"
            print(f"dataset {rep['dataset']}: searched mask [{units}] ({rep['method']}, lr {rep['lr']:g}), {rep['search_evaluations']} search evaluations ({s['optimizer']}, " + (f"warm-started with {s['warm_start_k']} policy proposal{'s' if s['warm_start_k'] != 1 else ''})" if s["warm_start_k"] else "the reward model from the policy's training evaluations)"))
            print(f"  zero-shot   : policy mask [{', '.join(z['mask_units']) or 'none'}] {zr}; {best}")
            if s.get("screen"):
                sc = s["screen"]
                print(f"  screen      : {sc['screens']} screens of {sc['steps']} fine-tuning steps ({sc['fresh_screens']} fresh), {sc['promoted']} promoted to the full evaluation")
        if rep.get("ensemble"):
            print(f"  ensemble    : {rep['ensemble']} of {len(rep['policy'])} policies ({', '.join(rep['policy'])})")
        label = "policy mask " if s is None else "searched    "
        print(f"  {label}: FID {m['fid']:.2f}  nn_own_rate {m['nn_own_rate']:.3f}  replication {m['replication_rate']:.3f}  trainable {100 * m['trainable_fraction']:.2f}%")
        print(f"  full FT     : FID {f['fid']:.2f}  nn_own_rate {f['nn_own_rate']:.3f}  replication {f['replication_rate']:.3f}")
        where = "" if s is None else f" (the search in {s['run']})"
        print(f"wrote {args.out}/report.json{where} and the fine-tuned model in {rep['saved'].get('model')}", file=sys.stderr)
    return 0
