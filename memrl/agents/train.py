"""``memrl train``: PPO learns which units to fine-tune, read top to bottom.

1. Prepare the run folder (``config.yaml``; ``--resume`` reuses it), the evaluation cache
   (``evaluations.sqlite``) and the descriptor basis (``descriptor.json``).
2. Build the vectorised :class:`~memrl.envs.MaskSelectionEnv` (in-process, or one process per
   env with 1 torch thread each).
3. Build PPO, or load it from ``checkpoint/`` with every RNG and env state restored.
4. ``PPO.learn`` with two callbacks: the evaluation record (CSV + TensorBoard + best/pareto
   files) and resumable checkpoints.
5. Save ``policy.zip``; compare the policy's deterministic mask with random masks on every
   training and held-out dataset (``policy_eval.json``); re-run the best mask once for pictures;
   print a summary.

Every evaluation is also an Optuna trial (``RUN/optuna.db``: ``optuna-dashboard
sqlite:///RUN/optuna.db``), and ``train.report_to: [wandb]`` mirrors TensorBoard to W&B.

With ``lookup`` (``memrl train --lookup DIR``) every evaluation is answered from lookup tables
(:class:`memrl.evaluation.lookup.LookupEvaluator`) instead of fine-tuning: no model is loaded and
nothing is fine-tuned, so comparing outer loops costs no evaluations. The tables must hold every
mask the policy can propose on every training and held-out dataset (checked before the run folder
is written), and ``RUN/lookup.json`` records the tables; ``--resume`` answers from the same ones.
The final pictures are skipped (a table has none).

With ``train.surrogate.enabled`` (Dyna-style, :mod:`memrl.agents.dyna`) every env is wrapped in a
:class:`~memrl.agents.dyna.DynaWrapper`: a learned reward model answers the proposals unlikely to
beat the best real reward on their dataset (imagined steps) and PPO learns from both. The records
(``evaluations.csv``, Optuna, ``eval/*``, best/pareto files) hold the real evaluations only; the
``surrogate/*`` TensorBoard tags and the summary's ``surrogate`` entry count the imagined ones.
The model is rebuilt from ``evaluations.csv`` on ``--resume``, so nothing of it is checkpointed.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from memrl.agents.callbacks import EvaluationRecordCallback, ResumableCheckpointCallback, SurrogateCallback, load_checkpoint, restore_rng
from memrl.agents.config import TrainConfig
from memrl.reporting.records import EvaluationLog, write_best, write_pareto
from memrl.envs.config import EnvConfig
from memrl.envs.descriptor import DescriptorBasis
from memrl.errors import MemrlError
from memrl.reporting.optuna_store import OptunaStore, default_storage
from memrl.reporting.trackers import check_available, start_trackers
from memrl.utils.io import write_json_atomic


def _make_subproc_env(env_cfg: dict, basis: dict, lookup: dict | None = None):  # noqa: ANN202
    """Env factory for SubprocVecEnv workers: 1 torch thread each (2 cores are shared).

    ``lookup``: ``{"tables": [...], "feature_net": folder}`` of the parent's lookup evaluator,
    rebuilt in the worker (no model is loaded there either)."""
    import torch
    from stable_baselines3.common.monitor import Monitor

    from memrl.envs.mask_selection import MaskSelectionEnv

    torch.set_num_threads(1)
    evaluator = None
    if lookup is not None:
        from memrl.evaluation.lookup import LookupEvaluator

        evaluator = LookupEvaluator(lookup["tables"], feature_net=lookup["feature_net"])
    return Monitor(MaskSelectionEnv(EnvConfig.from_dict(env_cfg), evaluator=evaluator, basis=basis))


def worker_device(env_cfg: EnvConfig, i: int) -> str:
    """The device of the ``i``-th SubprocVecEnv worker: ``device: cuda`` spreads the workers over
    every visible GPU (``cuda:0``, ``cuda:1``, ..., round robin); any other device (``cpu``,
    ``cuda:1``), and evaluations on Ray (which gives each actor its own GPU), as configured. The
    cache key names the device type only, so every worker shares the same evaluations."""
    if env_cfg.device != "cuda" or env_cfg.ray is not None:
        return env_cfg.device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{i % count}" if count > 1 else "cuda"


def build_vec_env(cfg: TrainConfig, env_cfg: EnvConfig, evaluator, basis: DescriptorBasis, dyna=None):  # noqa: ANN001, ANN201
    """The vectorised envs of a run; with ``dyna`` (a :class:`~memrl.agents.dyna.DynaModel`) each is
    wrapped in a :class:`~memrl.agents.dyna.DynaWrapper` sharing it (in-process envs only)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from memrl.envs.mask_selection import MaskSelectionEnv

    n = cfg.train.n_envs
    env_cfg = env_cfg.with_(info_runtime=True)  # the evaluation log records cache hits and seconds
    if dyna is not None:
        if cfg.train.vec_env == "subproc" and n > 1:
            raise MemrlError("train.surrogate.enabled needs every env in one process: set train.vec_env=dummy (or train.n_envs=1)")
        from memrl.agents.dyna import DynaWrapper

        return DummyVecEnv([lambda: Monitor(DynaWrapper(MaskSelectionEnv(env_cfg, evaluator=evaluator, basis=basis), dyna)) for _ in range(n)])
    if cfg.train.vec_env == "subproc" and n > 1:
        from memrl.evaluation.lookup import LookupEvaluator

        lookup = None
        if isinstance(evaluator, LookupEvaluator):
            fn = evaluator.feature_net_dir
            lookup = {"tables": [str(t) for t in evaluator.tables], "feature_net": str(fn) if fn is not None else None}
        cfgs = [env_cfg.with_(device=worker_device(env_cfg, i)).to_dict() for i in range(n)]
        return SubprocVecEnv([partial(_make_subproc_env, c, basis.to_dict(), lookup) for c in cfgs], start_method="spawn")
    return DummyVecEnv([lambda: Monitor(MaskSelectionEnv(env_cfg, evaluator=evaluator, basis=basis)) for _ in range(n)])


def _checked_total(n: int) -> int:
    if n < 1:
        raise MemrlError(f"--total-timesteps must be >= 1, got {n}")
    return int(n)


def prepare_run(cfg: TrainConfig | None, run: Path, resume: bool, total_timesteps: int | None = None) -> TrainConfig:
    saved = run / "config.yaml"
    if resume:
        if not saved.is_file():
            raise MemrlError(f"cannot resume: {run} holds no run (no config.yaml); start it without --resume")
        cfg = TrainConfig.load(saved)
        if total_timesteps is not None and total_timesteps != cfg.train.total_timesteps:
            cfg.train.total_timesteps = _checked_total(total_timesteps)  # extend (or shorten) the run
            cfg.save(saved)
        return cfg
    if cfg is None:
        raise MemrlError("memrl train needs --config (or --resume of an existing run)")
    if total_timesteps is not None:
        cfg.train.total_timesteps = _checked_total(total_timesteps)
    if run.exists() and any(run.iterdir()):
        raise MemrlError(f"{run} already holds a run; pass --resume to continue it, or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    if cfg.env.cache is None:
        cfg.env.cache = str(run / "evaluations.sqlite")
    cfg.save(saved)
    return cfg


#: The run's record of the lookup tables it answers from (``memrl train --lookup``).
LOOKUP_RECORD = "lookup.json"


def run_lookup(run: Path, lookup: str | Path | None, resume: bool) -> Path | None:
    """The lookup folder a run answers from: ``lookup`` for a new run; for ``resume`` the one in
    ``RUN/lookup.json`` (a different ``lookup``, or one for a run that fine-tuned, is refused)."""
    if not resume:
        return Path(lookup) if lookup is not None else None
    record = run / LOOKUP_RECORD
    saved = Path(json.loads(record.read_text())["lookup"]) if record.is_file() else None
    if saved is None:
        if lookup is not None and (run / "config.yaml").is_file():
            raise MemrlError(f"cannot resume {run} with --lookup: its evaluations were fine-tuned (it has no {LOOKUP_RECORD}); resume it without --lookup")
        return Path(lookup) if lookup is not None else None
    if lookup is not None and Path(lookup).expanduser().resolve() != saved:
        raise MemrlError(f"cannot resume {run} with --lookup {lookup}: it answers from the lookup tables in {saved} ({run / LOOKUP_RECORD}); resume without --lookup")
    return saved


def lookup_evaluator(lookup: str | Path, cfg: TrainConfig):  # noqa: ANN201
    """The :class:`~memrl.evaluation.lookup.LookupEvaluator` of ``lookup``, checked against the run.

    The tables must be over ``env.granularity`` and hold every dataset (training and held-out),
    and for each every mask the policy can propose with each method and learning rate of the action
    space, plus the reference and pretrained rows: a policy may propose any mask, and a missing
    one would stop the run. The feature network (the dataset descriptor) is the tables' model's,
    or ``env.pretrained``'s when that one is the same network.
    """
    from memrl.data.loaders import load_dataset
    from memrl.evaluation.lookup import LookupEvaluator
    from memrl.training.finetune import FinetuneConfig

    env_cfg = cfg.env
    ev = LookupEvaluator.from_dir(lookup)
    where = f"--lookup {lookup}"
    if ev.granularity != env_cfg.granularity:
        raise MemrlError(f"{where}: the tables are over {ev.granularity!r} units, the run's env.granularity is {env_cfg.granularity!r}; set env.granularity={ev.granularity}")
    if env_cfg.feature_net is not None:  # a folder, checked against the tables' network (lookup tables take no module)
        ev.set_feature_net(env_cfg.feature_net)
    elif ev.feature_net is None and (Path(env_cfg.pretrained) / "feature_net").is_dir():
        ev.set_feature_net(Path(env_cfg.pretrained) / "feature_net")
    ev.require_feature_net()
    ecfg = env_cfg.eval_config()
    methods = list(env_cfg.methods) or [env_cfg.method]
    gaps = []
    for name in list(env_cfg.datasets) + [d for d in cfg.train.heldout_datasets if d not in env_cfg.datasets]:
        data = load_dataset(name, ev.image_size, ev.image_channels, **env_cfg.dataset_options(name))
        try:
            ev.check_data(data)
        except MemrlError as exc:
            raise MemrlError(f"{where}: {exc}") from None
        for method in methods:
            lrs = [FinetuneConfig(method=method).resolved_lr() * s for s in env_cfg.lr_scales] if env_cfg.lr_scales else [None]
            for lr in lrs:
                c = ev.coverage(data, method, ecfg, lr=lr, seed=env_cfg.seed)
                if c["masks"] < c["possible"] or not c["reference"] or not c["base"]:
                    lack = [f"{c['masks']} of {c['possible']} masks"] + [what for what, ok in (("no reference run", c["reference"]), ("no pretrained-model row", c["base"])) if not ok]
                    gaps.append(f"{method} on {name} (seed {env_cfg.seed}, lr {'default' if lr is None else f'{lr:g}'}): {', '.join(lack)}")
    if gaps:
        raise MemrlError(
            f"{where} cannot answer this run: {'; '.join(gaps[:4])}{'; ...' if len(gaps) > 4 else ''}; a policy may propose any mask, "
            "so the tables need every one (evaluate them all, e.g. with an exhaustive memrl search, and export the table), "
            "with the run's preset, eval_overrides and seed"
        )
    return ev


def lookup_record(lookup: str | Path, evaluator) -> dict:  # noqa: ANN001
    """What ``RUN/lookup.json`` (and the summary) say about the tables a run answered from."""
    return {
        "lookup": str(Path(lookup).expanduser().resolve()),
        "tables": [str(p) for p in evaluator.tables],
        "rows": evaluator.n_rows,
        "units": list(evaluator.units),
        "granularity": evaluator.granularity,
        "model": evaluator.model_hash,
        "feature_net": evaluator.feature_net_hash,
        "eval_version": evaluator.meta.get("eval_version"),
    }


def train(cfg: TrainConfig | None, out: str | Path, resume: bool = False, progress: bool = True, echo=print, total_timesteps: int | None = None, lookup: str | Path | None = None) -> dict:  # noqa: ANN001
    """Run (or, with ``resume``, continue) ``memrl train``; returns the summary it prints.

    ``total_timesteps`` overrides ``cfg.train.total_timesteps`` (saved with the run); with
    ``resume`` it changes the saved run's length, e.g. to extend a finished run: the continuation
    is the same as a run started with that length (every RNG is restored).

    ``lookup``: a folder of lookup tables answering every evaluation instead of fine-tuning (see
    the module docstring); a resumed run uses the tables it was started with.
    """
    from stable_baselines3 import PPO
    from torch.utils.tensorboard import SummaryWriter

    from memrl.evaluation.remote import build_evaluator

    run = Path(out)
    if cfg is not None:  # a new run: refuse a missing tracker before the run folder exists
        check_available(cfg.train.report_to)
    lookup = run_lookup(run, lookup, resume)
    evaluator = None
    if lookup is not None and not resume and cfg is not None:  # refuse tables that cannot answer the run before its folder exists
        evaluator = lookup_evaluator(lookup, cfg)
    book = ground_truth_book(cfg, lookup) if cfg is not None and not resume else None  # checked before the run folder exists
    cfg = prepare_run(cfg, run, resume, total_timesteps)
    if resume:  # the saved config's trackers
        check_available(cfg.train.report_to)
    env_cfg = cfg.env

    # 1. evaluator (one per process), descriptor basis (fitted once, saved with the run)
    if lookup is None:
        evaluator = build_evaluator(env_cfg)  # in this process, or in a Ray actor (env.ray)
    else:
        if evaluator is None:
            evaluator = lookup_evaluator(lookup, cfg)
        echo(f"answering every evaluation from the lookup tables in {lookup} (nothing is fine-tuned)")
        if not (run / LOOKUP_RECORD).is_file():
            write_json_atomic(run / LOOKUP_RECORD, lookup_record(lookup, evaluator))
    if resume:
        book = ground_truth_book(cfg, lookup)
    units = list(evaluator.units)
    basis_path = run / "descriptor.json"
    if basis_path.is_file():
        basis = DescriptorBasis.load(basis_path)
    else:
        from memrl.data.loaders import load_dataset

        if lookup is not None:
            evaluator.require_feature_net()
        basis = DescriptorBasis.fit(
            evaluator.feature_net, [load_dataset(d, evaluator.image_size, evaluator.image_channels, **env_cfg.dataset_options(d)) for d in env_cfg.datasets], env_cfg.descriptor_components
        )
        basis.save(basis_path)

    # 2. environments (with train.surrogate: behind one shared reward model)
    sur = cfg.train.surrogate
    dyna = None
    if sur.enabled:
        from memrl.agents.dyna import model_for_config

        dyna = model_for_config(env_cfg, len(units), basis.dim, sur.min_real, sur.kappa, sur.refit_every, seed=cfg.train.seed)
    venv = build_vec_env(cfg, env_cfg, evaluator, basis, dyna)

    # 3. PPO: fresh, or from the last checkpoint with every RNG and env state restored
    log = EvaluationLog(run / "evaluations.csv")
    ckpt = load_checkpoint(run) if resume else None
    history = None
    if ckpt is not None:
        model = PPO.load(ckpt["policy"], env=venv, device="cpu", force_reset=False, tensorboard_log=str(run / "tb"))
        for i, s in enumerate(ckpt["env_states"]):
            venv.env_method("set_state", s, indices=[i])
        venv.set_attr("needs_reset", False)  # Monitor: the restored env is mid-run, not fresh
        restore_rng(ckpt)
        log.truncate(ckpt["rows"])
        history = ckpt["history"]
        echo(f"resuming {run} at env step {model.num_timesteps} ({ckpt['rows']} evaluations recorded)")
    else:
        if log.rows:
            log.truncate(0)  # interrupted before the first checkpoint: replay from the start (cache hits)
        model = PPO("MlpPolicy", venv, seed=cfg.train.seed, tensorboard_log=str(run / "tb"), device="cpu", verbose=0, **cfg.ppo)
    if dyna is not None and log.rows:  # the reward model of the run so far, refitted from its real evaluations
        venv.env_method("restore", log.rows, indices=[0])

    # 4. learn (the Optuna record mirrors the evaluation log; trackers mirror TensorBoard)
    trackers = start_trackers(cfg.train.report_to, run, cfg.to_dict(), cfg.train.wandb_project)
    purge = int(model.num_timesteps) + 1 if ckpt is not None else None
    writer = SummaryWriter(str(run / "tb" / "memrl"), purge_step=purge)
    mem_metric = evaluator_mem_metric(env_cfg)
    store = None
    if cfg.train.optuna:
        store = OptunaStore(cfg.train.optuna_storage or default_storage(run), units, _methods(env_cfg), mem_metric)
        store.sync(log.rows)  # a resumed run's log was cut back to its checkpoint: so is the record
    record = EvaluationRecordCallback(run, log, writer, units, mem_metric, history, optuna=store, ground_truth=book)
    checkpoints = ResumableCheckpointCallback(run, cfg.train.checkpoint_every, log, record)
    callbacks = [record, checkpoints]
    if dyna is not None:
        callbacks.append(SurrogateCallback(writer, dyna, real_steps=len(log.rows), max_real=sur.max_real))
    remaining = cfg.train.total_timesteps - int(model.num_timesteps)
    capped = dyna is not None and sur.max_real is not None and dyna.n_real >= sur.max_real
    if remaining > 0 and not capped:
        model.learn(remaining, callback=callbacks, reset_num_timesteps=ckpt is None, tb_log_name="ppo", progress_bar=progress)
        checkpoints.save()
    model.save(run / "policy.zip")

    # 5. results
    ok = log.ok_rows()
    front = write_pareto(run / "pareto.csv", ok, mem_metric) if ok else []
    best = write_best(run / "best_mask.json", log, units)
    comparison = compare_policy(model, env_cfg, evaluator, basis, cfg.train.heldout_datasets, cfg.train.random_masks, cfg.train.seed, progress, ground_truth=book)
    write_json_atomic(run / "policy_eval.json", comparison)
    if cfg.train.final_pictures and best is not None:
        if lookup is None:
            _best_pictures(evaluator, env_cfg, best, run / "best", writer, int(model.num_timesteps))
        else:
            echo("final pictures skipped: a lookup table has none (re-run the best mask with memrl evaluate for samples)")
    writer.close()
    venv.close()
    for t in trackers:
        t.close()
    summary = {
        "run": str(run),
        "env_steps": int(model.num_timesteps),
        "evaluations": len(log.rows),
        "fresh_evaluations": sum(1 for r in log.rows if r.get("cached") != "True"),
        "pareto_points": len(front),
        "best": best,
        "policy_vs_random": comparison,
    }
    if lookup is not None:
        summary["lookup"] = lookup_record(lookup, evaluator)
    if dyna is not None:
        summary["surrogate"] = surrogate_summary(dyna, int(model.num_timesteps), len(log.rows), sur.max_real)
    if book is not None:
        summary["regret"] = record.board.regrets()  # the best evaluation's regret per dataset with ground truth
    echo(format_summary(summary))
    return summary


def ground_truth_book(cfg: TrainConfig, lookup: str | Path | None):  # noqa: ANN201
    """The run's ground truth (:class:`memrl.evaluation.ground_truth.GroundTruthBook`) or ``None``:
    ``train.ground_truth``'s tables, else the ``--lookup`` ones. An explicit folder must hold every
    mask for at least one training or held-out dataset (one clear error otherwise)."""
    from memrl.evaluation.ground_truth import GroundTruthBook

    env = cfg.env
    given = cfg.train.ground_truth
    source = given or lookup
    if source is None:
        return None
    if given and not Path(given).is_dir():
        raise MemrlError(f"train.ground_truth {given}: not a folder of lookup tables (*.jsonl)")
    # its own reader of the tables: the run's evaluator counts its answers
    book = GroundTruthBook.for_env(Path(source), env)
    names = list(env.datasets) + [d for d in cfg.train.heldout_datasets if d not in env.datasets]
    if given and not any(book(d) is not None for d in names):
        raise MemrlError(
            f"train.ground_truth {given}: the tables hold every mask for none of the run's datasets ({', '.join(names)}) with its settings "
            f"(method {env.method}, preset {env.preset}, seed {env.seed}); make one with memrl search --optimizer exhaustive"
        )
    return book


def surrogate_summary(dyna, env_steps: int, real_steps: int, max_real: int | None = None) -> dict:  # noqa: ANN001
    """The summary's ``surrogate`` entry: real vs imagined steps, distinct real evaluations and the
    model's mean out-of-sample error (each predicted before its result was known)."""
    out = {"real_steps": real_steps, "imagined_steps": env_steps - real_steps, "imagined_share": (env_steps - real_steps) / max(1, env_steps)}
    out.update(dyna.summary())
    out["max_real"] = max_real
    return out


def _methods(env_cfg: EnvConfig) -> list[str]:
    """The methods a run can propose (the Optuna record's categorical parameter)."""
    return list(env_cfg.methods) if env_cfg.methods else [env_cfg.method]


def evaluator_mem_metric(env_cfg: EnvConfig) -> str:
    return env_cfg.reward.get("mem_metric", "nn_own_rate")


def compare_policy(model, env_cfg: EnvConfig, evaluator, basis: DescriptorBasis, heldout: list[str], k_random: int, seed: int, progress: bool = False, ground_truth=None) -> dict:  # noqa: ANN001
    """The policy's deterministic mask vs ``k_random`` uniformly random masks, per dataset.

    Random masks (uniform, without replacement) are distinct in what they train, not merely
    in their bits: two masks that differ only in units where the method trains nothing are one.

    Rewards come from the same evaluation code and cache as training. Held-out datasets were never
    seen during training: the policy only gets their descriptor. With ``ground_truth`` (a callable
    ``dataset -> GroundTruth | None``), a dataset that has it also gets the policy mask's regret and
    rank among every mask (on the run's evaluation seed).
    """
    from memrl.envs.mask_selection import MaskSelectionEnv
    from memrl.peft_masking import Mask

    names = list(env_cfg.datasets) + [d for d in heldout if d not in env_cfg.datasets]
    env = MaskSelectionEnv(env_cfg.with_(datasets=names), evaluator=evaluator, basis=basis)
    rng = np.random.default_rng(seed + 777)
    out = {}
    for name in names:
        obs, _ = env.reset(options={"dataset": name})
        done, rewards, info = False, [], {}
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, done, _, info = env.step(action)
            rewards.append(r)
        rand, rand_details, seen = [], [], set()
        high = env.action_space.nvec if hasattr(env.action_space, "nvec") else 2
        for _ in range(50 * k_random):  # distinct trained masks: a repeat would add no information
            if len(rand) >= k_random:
                break
            a = rng.integers(0, high, size=env.action_space.shape)
            bits, method, lr = env.decode(a)
            trained, _ = evaluator.effective_mask(method, Mask.from_bits([int(b) for b in bits], evaluator.units))
            if (trained.bitstring, method, lr) in seen:
                continue
            seen.add((trained.bitstring, method, lr))
            env.reset(options={"dataset": name})
            _, r, _, _, rinfo = env.step(a)
            rand.append(r)
            rand_details.append({"mask": rinfo.get("mask"), "reward": float(r), "fid": rinfo.get("fid"), "nn_own_rate": rinfo.get("nn_own_rate"), "failed": bool(rinfo.get("failed"))})
        out[name] = {
            "heldout": name not in env_cfg.datasets,
            "policy_mask": info.get("mask"),
            "policy_reward": float(rewards[-1]),
            "policy_fid": info.get("fid"),
            "policy_nn_own_rate": info.get("nn_own_rate"),
            "random_reward_mean": float(np.mean(rand)) if rand else None,
            "random_reward_std": float(np.std(rand)) if rand else None,
            "random_masks": len(rand),
            "random": rand_details,
            "full_finetune_fid": (info.get("reference") or {}).get("fid"),
            "full_finetune_nn_own_rate": (info.get("reference") or {}).get("nn_own_rate"),
        }
        gt = ground_truth(name) if ground_truth is not None else None
        if gt is not None:  # the policy's mask against every mask (on the run's evaluation seed)
            r = float(rewards[-1])
            out[name].update({"policy_regret": gt.regret(r), "policy_rank": gt.rank(r), "masks": gt.n, "optimum": gt.r_max, "optimum_masks": gt.optimum})
    return out


def _best_pictures(evaluator, env_cfg: EnvConfig, best: dict, out: Path, writer, step: int) -> None:  # noqa: ANN001
    """Re-run the best evaluation once with pictures (same seed: same numbers) and log them."""
    from PIL import Image

    from memrl.data.loaders import load_dataset
    data = load_dataset(best["dataset"], evaluator.image_size, evaluator.image_channels, **env_cfg.dataset_options(best["dataset"]))
    lr = best["lr"] if isinstance(best["lr"], float) else None
    evaluator.evaluate(data, best["method"], best["mask_bits"], env_cfg.eval_config(), lr=lr, seed=env_cfg.seed, out_dir=out)
    for name, tag in (("samples.png", "best/samples"), ("nearest_neighbours.png", "best/nearest_neighbours")):
        p = out / name
        if p.is_file():
            img = np.asarray(Image.open(p).convert("RGB"))
            writer.add_image(tag, img, step, dataformats="HWC")


def format_summary(s: dict) -> str:
    lines = [f"run {s['run']}: {s['env_steps']} env steps, {s['evaluations']} evaluations ({s['fresh_evaluations']} fresh), {s['pareto_points']} Pareto points"]
    if s.get("lookup"):
        lines.append(f"every evaluation answered from the lookup tables in {s['lookup']['lookup']} (nothing fine-tuned)")
    g = s.get("surrogate")
    if g:
        err = g["mean_abs_error"]
        lines.append(
            f"surrogate: {g['real_steps']} real steps ({g['real_evaluations']} distinct evaluations), {g['imagined_steps']} imagined "
            f"({100 * g['imagined_share']:.0f}%), mean |error| {'n/a' if err is None else f'{err:.3f}'} over {g['predicted_evaluations']} predicted evaluations"
        )
    b = s.get("best")
    if b:
        mt = b["metrics"]
        lines.append(f"best: {b['method']} on {b['dataset']} units [{', '.join(b['mask_units']) or 'none'}] reward {mt['reward']:.3f} FID {mt['fid']:.2f} nn_own_rate {mt['nn_own_rate']:.3f}")
    if s.get("regret"):
        lines.append("best-so-far regret (ground truth): " + ", ".join(f"{d} {r + 0.0:.3f}" for d, r in s["regret"].items()))
    lines.append(f"{'dataset':<12}{'held-out':>9}{'policy reward':>15}{'random mean':>13}{'random std':>12}  policy mask")
    for d, c in s["policy_vs_random"].items():
        rm = c["random_reward_mean"]
        rank = f"  (rank {c['policy_rank']} of {c['masks']}, regret {c['policy_regret']:.3f})" if "policy_rank" in c else ""
        lines.append(f"{d:<12}{str(c['heldout']):>9}{c['policy_reward']:>15.3f}{(rm if rm is not None else float('nan')):>13.3f}{(c['random_reward_std'] or 0):>12.3f}  {c['policy_mask']}{rank}")
    return "\n".join(lines)


def load_summary(run: str | Path) -> dict:
    return json.loads((Path(run) / "policy_eval.json").read_text())
