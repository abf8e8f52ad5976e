"""``memrl search``: the black-box baselines (Optuna samplers, exhaustive) over the agent's evaluation."""

from __future__ import annotations

import argparse
import json

from memrl.evaluation.cli import FEATURE_NET_HELP
from memrl.utils.overrides import add_set_argument

#: ``memrl search`` flags that set one config key (flag, attribute, key).
FLAG_KEYS = (
    ("--optimizer", "optimizer", "search.optimizer"),
    ("--budget", "budget", "search.budget"),
    ("--dataset", "dataset", "search.dataset"),
    ("--seed", "seed", "search.seed"),
    ("--storage", "storage", "search.storage"),
    ("--lookup", "lookup", "search.lookup"),
    ("--warm-start", "warm_start", "search.warm_start"),
    ("--warm-start-tables", "warm_start_tables", "search.warm_start_tables"),
    ("--warm-start-k", "warm_start_k", "search.warm_start_k"),
    ("--warm-start-spread", "warm_start_spread", "search.warm_start_spread"),
    ("--warm-start-ensemble", "warm_start_ensemble", "search.warm_start_ensemble"),
    ("--ground-truth", "ground_truth", "search.ground_truth"),
    ("--screen-steps", "screen_steps", "search.screen_steps"),
    ("--screen-eta", "screen_eta", "search.screen_eta"),
    ("--prior", "prior", "search.prior"),
    ("--pretrained", "pretrained", "env.pretrained"),
    ("--preset", "preset", "env.preset"),
    ("--method", "method", "env.method"),
    ("--cache", "cache", "env.cache"),
    ("--device", "device", "env.device"),
    ("--feature-net", "feature_net", "env.feature_net"),
)


#: ``--ray`` of memrl search and memrl train.
RAY_HELP = (
    "run each evaluation in a Ray actor (pip install 'memrl[ray]'): no ADDRESS starts a local Ray instance (or joins RAY_ADDRESS's), "
    "auto joins the cluster on this machine, ray://HOST:10001 a remote one; each actor asks for env.ray.num_gpus GPUs "
    "(default 0) and env.ray.num_cpus CPUs (default 1), e.g. --set env.ray.num_gpus=1; across machines set the cache "
    "(env.cache) to postgresql://USER@HOST:PORT/DB so every node shares the evaluations; like --set env.ray.address=ADDRESS"
)


def with_ray(env, address: str | None):  # noqa: ANN001, ANN201 - EnvConfig in, EnvConfig out
    """``env`` with ``--ray [ADDRESS]`` applied (``None``: the flag was not given; ``""``: no address)."""
    if address is None:
        return env
    ray = dict(env.ray or {})
    if address:
        ray["address"] = address
    return env.with_(ray=ray)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from memrl.search.optimizers import DEFAULT_BUDGET, OPTIMIZERS

    p = sub.add_parser(
        "search",
        help="search masks with an Optuna sampler or exhaustively (the baselines of memrl train)",
        description="Propose masks for one dataset with an Optuna sampler (tpe, nsga2, random) or every mask in order "
        "(exhaustive), and evaluate each exactly as a memrl train step does (same evaluation, cache and reward). Writes "
        "RUN/evaluations.csv, pareto.csv, best_mask.json (the columns and files of memrl train), best.json (the summary), "
        "config.yaml, evaluations.sqlite (cache), table.jsonl (the evaluations as a lookup table), the Optuna study "
        "(RUN/optuna.db: optuna-dashboard sqlite:///RUN/optuna.db) and TensorBoard logs in RUN/tb/. --warm-start POLICY "
        "makes a trained policy's top proposals the first trials (few-shot refinement of the policy's mask).",
    )
    p.add_argument("--optimizer", default=None, metavar="NAME", help="; ".join(f"{o.name}: {o.help}" for o in OPTIMIZERS.values()) + " (default tpe)")
    p.add_argument("--budget", type=int, default=None, help=f"trials (= evaluations, cache hits included); default {DEFAULT_BUDGET}, or every mask for exhaustive (never more); with --resume it extends the run")
    p.add_argument("--dataset", default=None, help="the dataset searched on: built-in variant (inverted, ...), family:N, image folder or CSV; default: the config's only env.datasets entry")
    p.add_argument("--config", default=None, help="YAML config: a memrl train config works as is (its env section is used; ppo and train are ignored), optionally with a search section; without it the env defaults are the base")
    p.add_argument("--out", required=True, help="run folder (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out: finished trials are kept, an interrupted one comes back from the cache, the sampler continues its sequence")
    p.add_argument("--seed", type=int, default=None, help="the sampler's seed (default 0); the evaluations are seeded by env.seed, as the agent's steps are")
    p.add_argument("--storage", default=None, help="Optuna storage URL for the study (default sqlite:///RUN/optuna.db); any URL Optuna accepts (sqlite, postgresql, mysql, ...)")
    p.add_argument("--lookup", default=None, metavar="DIR", help="answer from a lookup table (a search run's folder with table.jsonl) instead of fine-tuning the model")
    p.add_argument(
        "--warm-start",
        default=None,
        nargs="+",
        metavar="POLICY",
        help="RUN/policy.zip of memrl train (config.yaml and descriptor.json beside it): the policy's most probable proposals on "
        "the dataset (distinct in what they train, its own deterministic mask first) are the first trials, then the optimizer "
        "takes over; tpe, random and nsga2 only. Two or more policies (agent seeds of one config) propose as an ensemble "
        "(--warm-start-ensemble). Checked against the model's units before the run folder is written; "
        "enqueued once (--resume does not enqueue again); like --set search.warm_start=POLICY",
    )
    p.add_argument(
        "--warm-start-ensemble",
        default=None,
        choices=("mixture", "product"),
        help="how several --warm-start policies combine: mixture (default: their probabilities averaged) or product "
        "(multiplied and normalised: a mask any of them finds unlikely loses); like --set search.warm_start_ensemble=RULE",
    )
    p.add_argument(
        "--warm-start-tables",
        default=None,
        metavar="DIR",
        help="lookup tables of other datasets (exhaustive searches, e.g. experiments/results/exhaustive): the masks with the best "
        "mean reward over every dataset they hold in full with this run's settings (the searched dataset left out) are the first "
        "trials, then the optimizer takes over: the best fixed masks, which no policy beat as a warm start on the family's test "
        "members; tpe, random, nsga2 and model; not with --warm-start; like --set search.warm_start_tables=DIR",
    )
    p.add_argument(
        "--warm-start-k",
        type=int,
        default=None,
        metavar="K",
        help="how many of the --warm-start policy's (or --warm-start-tables') proposals to enqueue (default 4; at most the budget); like --set search.warm_start_k=K",
    )
    p.add_argument(
        "--warm-start-spread",
        type=int,
        default=None,
        metavar="D",
        help="the minimum number of blocks in which the warm start's proposals differ (default 0: the list as ranked): the ranked list "
        "is reordered greedily, its first proposal kept, so the next ones explore instead of being the first one's neighbours; "
        "like --set search.warm_start_spread=D",
    )
    p.add_argument(
        "--ground-truth",
        default=None,
        metavar="DIR",
        help="lookup tables holding every mask for the dataset with this run's settings (e.g. experiments/results/exhaustive): "
        "TensorBoard shows the best-so-far mask's regret per trial (regret/<dataset>, regret_rank/<dataset>) and the summary its "
        "regret and rank; refused when the tables lack a mask; default: the --lookup folder when it has every mask",
    )
    p.add_argument(
        "--screen-steps",
        type=int,
        default=None,
        metavar="N",
        help="multi-fidelity (successive halving): screen every trial with an N-step fine-tune first (its reward against a full "
        "fine-tune of N steps) and give the full budget only to trials whose screen is in the best 1/--screen-eta so far; the "
        "others end PRUNED (rows in RUN/screening.csv; evaluations.csv holds the full evaluations); tpe and random only; "
        "like --set search.screen_steps=N",
    )
    p.add_argument("--screen-eta", type=int, default=None, metavar="ETA", help="with --screen-steps: about one screened trial in ETA gets the full budget (default 3); like --set search.screen_eta=ETA")
    p.add_argument(
        "--prior",
        default=None,
        nargs="+",
        metavar="RUN",
        help="with --optimizer model: a memrl train run folder; its real evaluations on other datasets, each with its dataset's "
        "descriptor, are the reward model's starting data, so the first trial is already the model's pick for this dataset; "
        "several runs (agent seeds of one config) pool their evaluations; "
        "without it the model optimizer is plain Bayesian optimisation; like --set search.prior=RUN",
    )
    p.add_argument("--pretrained", "--model", dest="pretrained", default=None, help="override env.pretrained (the base model folder); --model is an alias")
    p.add_argument("--preset", default=None, help="override env.preset, the evaluation budget: default, search (the agent's) or quick")
    p.add_argument("--method", default=None, help="override env.method: the one PEFT method searched with (lora, difffit, ...)")
    p.add_argument("--cache", default=None, help="evaluation cache: an SQLite file, sqlite:///PATH or postgresql://USER@HOST:PORT/DB shared by several machines (pip install 'memrl[postgres]'); default RUN/evaluations.sqlite; share one with memrl train runs to reuse their evaluations")
    p.add_argument("--device", default=None, help="torch device: auto, cpu, cuda, ... (default: env.device)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", help=RAY_HELP)
    p.add_argument(
        "--feature-net",
        default=None,
        metavar="FOLDER|MODULE:CALLABLE",
        help=FEATURE_NET_HELP + "; overrides env.feature_net (default MODEL/feature_net)",
    )
    add_set_argument(
        p,
        "override config values, dotted keys, YAML values: env.method=lora env.granularity=block env.reward.lam=2 "
        "env.eval_overrides.finetune.steps=50 search.optimizer=nsga2 search.budget=64; sections env (EnvConfig) and "
        "search; checked like the config file. With --resume only search.budget may be set",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of text")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    """Build the effective config (file or defaults, then ``--set`` and the flags) and check it
    before :func:`memrl.search.run.search` writes the run folder."""
    from memrl.errors import MemrlError
    from memrl.search.config import SearchConfig
    from memrl.search.optimizers import get_optimizer
    from memrl.utils.overrides import apply_sets, flatten_sets, nest, parse_sets

    if args.optimizer is not None:
        get_optimizer(args.optimizer)  # one line listing the valid names
    if args.budget is not None and args.budget < 1:
        raise MemrlError(f"--budget must be >= 1, got {args.budget}")
    if args.warm_start_k is not None and args.warm_start_k < 1:
        raise MemrlError(f"--warm-start-k must be >= 1, got {args.warm_start_k}")
    if args.warm_start_spread is not None and args.warm_start_spread < 0:
        raise MemrlError(f"--warm-start-spread must be >= 0 (blocks in which the proposals differ), got {args.warm_start_spread}")
    if args.warm_start is not None and len(args.warm_start) == 1:
        args.warm_start = args.warm_start[0]  # one policy: saved as a path, as before
    if args.prior is not None and len(args.prior) == 1:
        args.prior = args.prior[0]
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    sets = parse_sets(args.set)
    flat = flatten_sets(sets)
    budget = args.budget
    if args.resume:
        if args.ray is not None:
            raise MemrlError("--resume cannot take --ray: a resumed run keeps env.ray saved in its config.yaml")
        cfg = None
        budget = _resume_budget(args, flat)
    else:
        cfg = SearchConfig.load(args.config) if args.config else SearchConfig()
        cfg = apply_sets(cfg, sets, source="--set")
        for flag, attr, key in FLAG_KEYS:
            value = getattr(args, attr)
            if value is None:
                continue
            if key in flat and flat[key] != value:
                raise MemrlError(f"{flag} {value} and --set {key}={flat[key]} disagree; give one")
            change = {key: value}
            if key == "env.method":
                change["env.methods"] = []  # one method: no method dimension in the proposals
            cfg = apply_sets(cfg, nest(change, drop_none=False), source=flag)
        cfg.env = with_ray(cfg.env, args.ray)
        cfg.dataset()  # one dataset, named or implied
        for flag, value, what in (("--warm-start-spread", args.warm_start_spread, "spreads"), ("--warm-start-k", args.warm_start_k, "counts")):
            if value is not None and not (cfg.search.warm_start or cfg.search.warm_start_tables):
                raise MemrlError(f"{flag} needs --warm-start POLICY or --warm-start-tables DIR (or search.warm_start / search.warm_start_tables in the config): it {what} their proposals")
        if args.warm_start_ensemble is not None and not isinstance(cfg.search.warm_start, list):
            raise MemrlError("--warm-start-ensemble combines several policies: give two or more --warm-start POLICY files (or a list in search.warm_start)")
    from memrl.search.run import search

    echo = (lambda _s: None) if args.json else print
    summary = search(cfg, args.out, resume=args.resume, progress=not (args.no_progress or args.json), echo=echo, budget=budget)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


def _resume_budget(args: argparse.Namespace, flat: dict) -> int | None:
    """``--resume`` keeps the run's saved config: only its budget may change (``--budget`` or
    ``--set search.budget``); a flag that repeats the saved value is fine."""
    from pathlib import Path

    from memrl.errors import MemrlError
    from memrl.search.config import SearchConfig
    from memrl.utils.config import check_value

    if args.config:
        raise MemrlError(f"--resume cannot take --config: a resumed run keeps the config saved in {args.out}/config.yaml")
    other = sorted(k for k in flat if k != "search.budget")
    if other:
        raise MemrlError(f"--resume cannot take --set {', '.join(other)}: a resumed run keeps the config saved in {args.out}/config.yaml (only search.budget may change)")
    budget = args.budget
    if "search.budget" in flat:
        b = check_value(flat["search.budget"], int, "search.budget", "--set")
        if budget is not None and budget != b:
            raise MemrlError(f"--budget {budget} and --set search.budget={b} disagree; give one")
        budget = b
    saved_path = Path(args.out) / "config.yaml"
    if not saved_path.is_file():
        return budget  # memrl.search.run says the folder holds no run
    saved = SearchConfig.load(saved_path).to_dict()
    diffs = []
    for flag, attr, key in FLAG_KEYS:
        value = getattr(args, attr)
        if value is None or key == "search.budget":
            continue
        section, name = key.split(".")
        if key == "search.warm_start" and saved[section].get(name) and _same_files(value, saved[section][name]):
            continue  # the same policy file(s), spelled another way
        if saved[section].get(name) != value:
            diffs.append(f"{flag} is {value!r} but {key} is {saved[section].get(name)!r} in the run")
    if diffs:
        raise MemrlError(f"cannot resume {args.out} with different settings: {'; '.join(diffs)}; resume without them, or start a new run with another --out")
    return budget


def _same_files(given: "str | list[str]", saved: "str | list[str]") -> bool:
    """Whether two ``warm_start`` values name the same policy files in the same order."""
    from pathlib import Path

    a = [given] if isinstance(given, str) else list(given)
    b = [saved] if isinstance(saved, str) else list(saved)
    return len(a) == len(b) and all(Path(x).expanduser().resolve() == Path(y).expanduser().resolve() for x, y in zip(a, b))
