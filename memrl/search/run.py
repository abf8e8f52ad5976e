"""``memrl search``: an Optuna sampler proposes masks, read top to bottom.

1. Check everything, then write the run folder: the effective config (``config.yaml``; ``--resume``
   reads it back), the evaluation cache (``evaluations.sqlite``), the Optuna study (``optuna.db``,
   or any ``--storage`` URL: one study named after the dataset).
2. Build the evaluator (the real one on ``env.pretrained``, or ``--lookup DIR``'s table) and load
   the dataset.
   With a warm start (``search.warm_start``: a trained policy, or ``proposals=`` given to
   :func:`search`) the proposals are checked against the evaluator's units and the search space
   here too, and enqueued as the study's first trials once it exists.
3. For each trial: ask the sampler -> decode its parameters into a proposal with the encoding the
   environment uses (:mod:`memrl.evaluation.space`) -> evaluate it exactly as an environment step
   does (:func:`memrl.evaluation.protocol.evaluate_proposal`) -> record it -> tell the study.
   With a screen (``search.screen_steps``, multi-fidelity) the trial is first evaluated with that
   many fine-tuning steps (recorded in ``screening.csv``, reported to the study as its intermediate
   value); Optuna's successive-halving pruner ends it ``PRUNED`` unless its screen is in the best
   ``1 / screen_eta`` so far, and only then is it evaluated in full. A failed screen is a ``FAIL``
   trial with no full evaluation.
4. Write the Pareto front and the best mask (by the reward, whatever the optimizer optimised),
   re-evaluate the best mask once for pictures, export the run's evaluations as a lookup table
   (``table.jsonl``) and print a summary (``best.json``).

What a run writes is what ``memrl train`` writes, through the same code (:mod:`memrl.reporting`):
``evaluations.csv`` (one row per trial; ``step`` is the trial number + 1), ``pareto.csv``,
``best_mask.json`` and the TensorBoard tags of :class:`memrl.reporting.board.EvaluationBoard`.
``memrl report RUN`` reads it like a train run.

A failed evaluation is a ``FAIL`` trial and a row with the environment's failure reward; bad input
(:class:`MemrlError`) stops the run. ``--resume`` continues an interrupted run: finished trials stay
as they are, an interrupted one is evaluated again (the cache answers when it had finished), and
the pickled sampler (``search_state.pkl``, saved after every ask) continues the same sequence.

Warm start. ``memrl search --warm-start RUN/policy.zip`` enqueues the policy's ``warm_start_k`` most
probable proposals on the dataset (:meth:`memrl.envs.policy.TrainedPolicy.ranked`: distinct in what
they train, its deterministic proposal first) as trials 1..k, before the sampler proposes anything;
:func:`search` also takes the proposals directly (``proposals=[(bits, method, lr), ...]``), e.g. for a
benchmark on a lookup table without a policy file (taken as given: ``warm_start_spread`` reorders
only the policy's and the tables' lists, :mod:`memrl.search.spread`). They are enqueued once, when the run starts (a
resumed run does not enqueue them again; one interrupted before they were all asked still asks the
rest). Each such trial carries the user attribute ``warm_start`` (its rank among the proposals), and
the summary (``best.json``) lists them under ``warm_start`` and says whether the best trial was one.
"""

from __future__ import annotations

import math
import os
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memrl.envs.config import EnvConfig
from memrl.errors import MemrlError
from memrl.evaluation.protocol import MaskEvaluator, evaluate_proposal
from memrl.evaluation.space import action_at, action_dims, action_to_params, decode_action, n_actions, params_to_action, trial_space
from memrl.reporting.board import EvaluationBoard
from memrl.reporting.optuna_store import default_storage
from memrl.reporting.records import EvaluationLog, info_to_row, write_best, write_pareto
from memrl.search.config import SearchConfig
from memrl.search.optimizers import OPTIMIZERS, Optimizer, get_optimizer
from memrl.search.spread import spread
from memrl.utils.io import write_json_atomic

STATE_FILE = "search_state.pkl"
#: The user attribute that marks an enqueued warm-start trial (its rank among the proposals).
WARM_START_ATTR = "warm_start"


# ---------------------------------------------------------------------------------------- setup
def build_evaluator(cfg: SearchConfig) -> MaskEvaluator:
    """The real evaluator (no cache yet: it is attached once the run folder exists), or the lookup table."""
    if cfg.search.lookup:
        from memrl.evaluation.lookup import LookupEvaluator

        return LookupEvaluator.from_dir(cfg.search.lookup)
    from memrl.evaluation.remote import build_evaluator

    return build_evaluator(cfg.env, cache=None)  # in this process, or in a Ray actor (env.ray)


def _is_real(evaluator: MaskEvaluator) -> bool:
    from memrl.evaluation import Evaluator

    return isinstance(evaluator, Evaluator)


def prepare_run(cfg: SearchConfig | None, run: Path, resume: bool, budget: int | None = None) -> SearchConfig:
    """The run's config: the saved one (``resume``; ``budget`` may change its length) or ``cfg``.
    Writes nothing (see :func:`write_run`)."""
    saved = run / "config.yaml"
    if resume:
        if not saved.is_file():
            raise MemrlError(f"cannot resume: {run} holds no search run (no config.yaml); start it without --resume")
        cfg = SearchConfig.load(saved)
        if budget is not None:
            cfg.search.budget = _checked_budget(budget)  # extend (or shorten) the run
        return cfg
    if cfg is None:
        raise MemrlError("memrl search needs --config (or --resume of an existing run)")
    if budget is not None:
        cfg.search.budget = _checked_budget(budget)
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise MemrlError(f"{run} already holds a run (or is a file); pass --resume to continue it, or choose another --out")
    return cfg


def _checked_budget(n: int) -> int:
    if int(n) < 1:
        raise MemrlError(f"--budget must be >= 1, got {n}")
    return int(n)


def screen_config(cfg: SearchConfig, eval_cfg):  # noqa: ANN001, ANN201
    """The screen's evaluation config (``eval_cfg`` with ``search.screen_steps`` fine-tuning
    steps), or ``None`` without a screen; refused unless it is shorter than the full budget."""
    steps = cfg.search.screen_steps
    if steps is None:
        return None
    full = eval_cfg.finetune.steps
    if steps >= full:
        raise MemrlError(f"search.screen_steps {steps} must be below the full evaluation's fine-tuning steps ({full}, preset {cfg.env.preset}): the screen is the cheap fidelity")
    from dataclasses import replace

    return replace(eval_cfg, finetune=replace(eval_cfg.finetune, steps=int(steps)))


def build_model_sampler(cfg: SearchConfig, ev: MaskEvaluator, data, units: list[str], space: dict, params_at, n: int):  # noqa: ANN001, ANN201
    """``--optimizer model``'s sampler: the reward model on this dataset, with ``search.prior``'s
    evaluations of other datasets when given (:mod:`memrl.search.model_sampler`)."""
    from memrl.evaluation.surrogate import SurrogateFeatures
    from memrl.peft_masking import Mask
    from memrl.search.model_sampler import load_prior, model_sampler

    env = cfg.env
    methods = cfg.methods()
    lr_scales = len(env.lr_scales) > 1
    prior = load_prior(cfg.search.prior, ev, data, cfg.dataset(), units, methods, lr_scales) if cfg.search.prior else None
    features = prior.features if prior is not None else SurrogateFeatures(0, len(units), methods, lr_scales)

    def decode(params: dict) -> tuple[str, str, float | None]:
        bits, method, lr = decode_action(params_to_action(params, units, env.methods, env.lr_scales), len(units), env.method, env.methods, env.lr_scales)
        mask = Mask.from_bits([int(b) for b in bits], units)
        return ev.effective_mask(method, mask)[0].bitstring, method, lr  # the units actually trained, as the prior's rows

    return model_sampler(cfg.search.seed, space, params_at, n, decode, features, prior, cfg.search.model_beta, cfg.search.model_first_beta, cfg.search.model_target)


def make_pruner(cfg: SearchConfig):  # noqa: ANN201
    """Successive halving over one rung (the screen) when ``search.screen_steps`` is set, else no pruning."""
    import optuna

    if cfg.search.screen_steps is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=cfg.search.screen_eta, min_early_stopping_rate=0)


def open_study(cfg: SearchConfig, run: Path, optimizer: Optimizer, sampler, resume: bool):  # noqa: ANN001, ANN201
    """The run's study (created, or loaded with ``resume``); a new run refuses a storage that
    already holds a study of this name (another run's trials would mix with this one's)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = cfg.search.storage or default_storage(run)
    name = cfg.dataset()
    try:
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:  # a bad URL, an unreachable database
        raise MemrlError(f"cannot open the Optuna storage {storage}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not resume and name in existing:
        raise MemrlError(f"the Optuna storage {storage} already holds a study {name!r}; pass --resume to continue that run, or use another --storage")
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=make_pruner(cfg), directions=optimizer.directions(), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != optimizer.directions():
        raise MemrlError(f"study {name!r} in {storage} has directions {[d.name.lower() for d in study.directions]}, not the {optimizer.name} optimizer's {optimizer.directions()}")
    with warnings.catch_warnings():  # experimental in Optuna, stable in use; the dashboard reads it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(optimizer.metric_names(cfg.mem_metric()))
    return study


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


class _LockSafePickler(pickle.Pickler):
    """Pickles a sampler that holds a thread lock (Optuna 5.1's NSGA-II sampler does).

    A lock carries no state worth saving: it is written as "a new, unlocked lock of this kind",
    so the sampler's random state and population round-trip and the loaded sampler is usable."""

    def reducer_override(self, obj):  # noqa: ANN001, ANN201
        if isinstance(obj, _LOCK_TYPES):
            return (threading.RLock if isinstance(obj, _LOCK_TYPES[1]) else threading.Lock), ()
        return NotImplemented


def _save_state(run: Path, sampler, history: dict, optimizer: Optimizer) -> None:  # noqa: ANN001
    """The sampler (its random state) and the figures' history, atomically (after every ask)."""
    state = {"sampler": sampler if optimizer.stateful else None, "history": history}
    tmp = run / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as f:
        _LockSafePickler(f).dump(state)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run / STATE_FILE)


def _load_state(run: Path) -> dict:
    p = run / STATE_FILE
    if not p.is_file():
        return {}
    try:
        with open(p, "rb") as f:
            return pickle.load(f)
    except Exception:  # a torn or foreign file: start the sampler from its seed again
        return {}


# ---------------------------------------------------------------------------------------- warm start
def encode_proposal(proposal: Any, units: Sequence[str], env: EnvConfig, methods: Sequence[str], where: str = "proposal") -> list[int]:
    """A proposal -> the action that encodes it in the search's space (:mod:`memrl.evaluation.space`).

    ``proposal``: a :class:`memrl.envs.policy.Proposal` or a tuple ``(bits, method, lr)``: ``bits``
    a bitstring, a sequence of 0/1 over ``units`` or a :class:`~memrl.peft_masking.Mask`;
    ``method`` one the search proposes; ``lr`` ``None`` (the method's default, the search having no
    ``lr_scales``) or one of the learning rates its ``lr_scales`` give. :class:`MemrlError` for
    anything the search could not propose itself.
    """
    if hasattr(proposal, "bits") and hasattr(proposal, "method"):
        bits, method, lr = proposal.bits, proposal.method, getattr(proposal, "lr", None)
    else:
        try:
            bits, method, lr = proposal
        except (TypeError, ValueError):
            raise MemrlError(f"{where} {proposal!r} is not (mask bits, method, lr)") from None
    if hasattr(bits, "bitstring"):  # a Mask
        bits = bits.bitstring
    if isinstance(bits, str):
        if set(bits) - {"0", "1"}:
            raise MemrlError(f"{where}: mask bits {bits!r} are not a bitstring of 0 and 1")
        bits = [int(b) for b in bits]
    bits = [int(b) for b in np.asarray(bits).reshape(-1)]
    if len(bits) != len(units) or any(b not in (0, 1) for b in bits):
        raise MemrlError(f"{where}: mask bits {''.join(map(str, bits))} must be {len(units)} bits of 0 and 1, one per unit ({', '.join(units)})")
    if method not in methods:
        raise MemrlError(f"{where} uses method {method!r}; this search proposes {', '.join(methods)} (set env.method / env.methods as the policy was trained)")
    head = bits + ([list(env.methods).index(method)] if len(env.methods) > 1 else [])
    options = [head + [i] for i in range(len(env.lr_scales))] if len(env.lr_scales) > 1 else [head]
    for action in options:
        _, _, got = decode_action(action, len(units), env.method, env.methods, env.lr_scales)
        if (got is None and lr is None) or (got is not None and lr is not None and math.isclose(float(lr), got, rel_tol=1e-9)):
            return action
    have = [decode_action(a, len(units), env.method, env.methods, env.lr_scales)[2] for a in options]
    raise MemrlError(
        f"{where} uses learning rate {lr} with {method}; this search proposes {', '.join('the default (None)' if h is None else f'{h:g}' for h in have)} "
        f"(env.lr_scales {list(env.lr_scales)}; set them as the policy was trained)"
    )


def warm_start_trials(cfg: SearchConfig, ev: MaskEvaluator, data, optimizer: Optimizer, total: int, proposals: Sequence | None = None) -> list[tuple[dict, dict]]:  # noqa: ANN001
    """The trials a new run enqueues first: ``(params, user_attrs)`` for each of the first ``total``
    proposals (``proposals``, else the ranked proposals of the policy ``cfg.search.warm_start``),
    every one checked against the evaluator's units and the search space. Writes nothing."""
    given = cfg.search.warm_start or cfg.search.warm_start_tables
    if proposals is not None and given:
        raise MemrlError(f"give a warm start once: search.warm_start{'_tables' if cfg.search.warm_start_tables else ''} ({given}) or proposals, not both")
    if proposals is None and not given:
        return []
    if not optimizer.warm_start:
        able = ", ".join(o.name for o in OPTIMIZERS.values() if o.warm_start)
        raise MemrlError(f"a warm start needs an optimizer that takes enqueued trials ({able}): {optimizer.name} visits every mask once in a fixed order")
    env, units = cfg.env, list(ev.units)
    if proposals is None and cfg.search.warm_start_tables:
        source, proposals = fixed_mask_proposals(cfg, data, cfg.search.warm_start_k, ev)
        where = f"--warm-start-tables {cfg.search.warm_start_tables}: fixed mask"
    elif proposals is None:
        from memrl.envs.ensemble import load_policy

        ws = cfg.search.warm_start
        source = f"{cfg.search.warm_start_ensemble} ensemble of {', '.join(ws)}" if isinstance(ws, list) else str(ws)
        policy = load_policy(ws, cfg.search.warm_start_ensemble)
        policy.check_fits(ev)
        spread_d = cfg.search.warm_start_spread
        proposals = policy.ranked(ev, policy.describe(ev, data), k=None if spread_d else cfg.search.warm_start_k)
        proposals = spread(proposals, spread_d, bits=lambda q: q.mask.bitstring)[: cfg.search.warm_start_k]
        where = f"--warm-start {source}: the policy's proposal"
    else:
        source = "proposals"
        where = "warm-start proposal"
    out = []
    for i, item in enumerate(list(proposals)[:total]):
        action = encode_proposal(item, units, env, cfg.methods(), f"{where} {i + 1}")
        attrs: dict = {WARM_START_ATTR: i, "warm_start_source": source}
        if getattr(item, "log_prob", None) is not None:
            attrs["warm_start_log_prob"] = float(item.log_prob)
        out.append((action_to_params(action, units, env.methods, env.lr_scales), attrs))
    return out


def fixed_mask_proposals(cfg: SearchConfig, data, k: int, evaluator: MaskEvaluator | None = None) -> tuple[str, list[tuple[str, str, float | None]]]:  # noqa: ANN001
    """The ``k`` best fixed masks of ``cfg.search.warm_start_tables`` for the searched ``data``:
    ``(source, [(bits, method, lr), ...])``, by the mean reward over every dataset the tables hold
    in full with the run's settings (:class:`~memrl.evaluation.ground_truth.GroundTruthBook`),
    the searched dataset left out (by its fingerprint: a table of the very dataset would leak its
    answer). One :class:`MemrlError` when no other dataset has every mask, or when the tables are
    of another model than ``evaluator``'s (their best masks say nothing about this one)."""
    from memrl.data.loaders import load_dataset
    from memrl.evaluation.ground_truth import GroundTruthBook, best_fixed_masks
    from memrl.evaluation.lookup import LookupEvaluator, table_datasets

    folder = cfg.search.warm_start_tables
    if not Path(folder).exists():
        raise MemrlError(f"--warm-start-tables {folder}: no such folder of lookup tables (*.jsonl)")
    env = cfg.env
    ev = LookupEvaluator(folder)
    mine = getattr(evaluator, "model_hash", None)
    if mine is not None and ev.model_hash != mine:
        raise MemrlError(f"--warm-start-tables {folder}: the tables were made with model {ev.model_hash}, this run evaluates model {mine} ({env.pretrained}); give tables of this model")
    book = GroundTruthBook.for_env(ev, env)
    target = data.fingerprint()
    names, truths = [], []
    for name in table_datasets(folder):
        try:
            other = load_dataset(name, ev.image_size, ev.image_channels)
        except MemrlError:
            continue
        if other.fingerprint() == target:
            continue
        truth = book(name)
        if truth is not None:
            names.append(name)
            truths.append(truth)
    if not truths:
        raise MemrlError(
            f"--warm-start-tables {folder}: no dataset other than {data.name} has every mask with this run's settings "
            f"(method {', '.join(cfg.methods())}, preset {env.preset}, seed {env.seed}, with the reference and pretrained rows); "
            "make one with memrl search --optimizer exhaustive on another dataset"
        )
    out = []
    for key, _ in best_fixed_masks(truths):
        bits, method, lr = key.split("|") if "|" in key else (key, env.method, "None")  # bits, or bits|method|lr
        out.append((bits, method, None if lr == "None" else float(lr)))
    out = spread(out, cfg.search.warm_start_spread, bits=lambda q: q[0])[:k]
    return f"best fixed masks of {folder} ({', '.join(names)})", out


def warm_start_summary(study, best_row: dict | None) -> dict | None:  # noqa: ANN001
    """The run's warm-start trials (``None`` without any): their steps, proposals and rewards,
    and whether the best trial (by the reward) was one of them."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if WARM_START_ATTR in t.user_attrs and t.state != TrialState.WAITING]
    if not trials:
        return None
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        rows.append({"step": t.number + 1, "rank": a[WARM_START_ATTR], "mask_bits": a.get("mask_bits"), "method": a.get("method"), "lr": a.get("lr"), "log_prob": a.get("warm_start_log_prob"), "reward": a.get("reward")})
    best_step = _step(best_row) if best_row is not None else None
    return {"source": trials[0].user_attrs.get("warm_start_source"), "trials": rows, "best_is_warm_start": any(r["step"] == best_step for r in rows)}


# ---------------------------------------------------------------------------------------- ground truth
def ground_truth_book(cfg: SearchConfig, dataset: str):  # noqa: ANN201
    """The run's ground truth (:class:`memrl.evaluation.ground_truth.GroundTruthBook`) or ``None``:
    ``search.ground_truth``'s tables (refused when they lack a mask for ``dataset``), else the
    ``lookup`` tables when they hold every mask."""
    from memrl.evaluation.ground_truth import GroundTruthBook

    env = cfg.env
    given = cfg.search.ground_truth
    source = given or cfg.search.lookup
    if not source:
        return None
    if given and not Path(given).is_dir():
        raise MemrlError(f"--ground-truth {given}: not a folder of lookup tables (*.jsonl)")
    # its own reader of the tables: the run's evaluator counts its answers
    book = GroundTruthBook.for_env(Path(source), env)
    if book(dataset) is None:
        if given:
            raise MemrlError(
                f"--ground-truth {given}: the tables do not hold every mask for {dataset} with this run's settings "
                f"(method {', '.join(cfg.methods())}, preset {env.preset}, seed {env.seed}, with the reference and pretrained rows); "
                "make one with memrl search --optimizer exhaustive"
            )
        return None
    return book


# ---------------------------------------------------------------------------------------- the loop
def search(cfg: SearchConfig | None, out: str | Path, resume: bool = False, progress: bool = True, echo=print, budget: int | None = None, evaluator: MaskEvaluator | None = None, proposals: Sequence | None = None) -> dict:  # noqa: ANN001, C901
    """Run (or, with ``resume``, continue) ``memrl search``; returns the summary it prints (also ``RUN/best.json``).

    ``budget`` overrides ``cfg.search.budget`` (with ``resume``: extends the saved run).
    ``evaluator``: any :class:`MaskEvaluator` to evaluate with instead of the one the config names.
    ``proposals``: a warm start without a policy file: ``(bits, method, lr)`` tuples (or
    :class:`memrl.envs.policy.Proposal`) enqueued in order as the first trials (at most the budget),
    instead of ``cfg.search.warm_start``; ignored with ``resume`` (they were enqueued when the run started).
    """
    from optuna.trial import Trial, TrialState
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from memrl.data.loaders import load_dataset

    run = Path(out)
    cfg = prepare_run(cfg, run, resume, budget)
    env = cfg.env
    optimizer = get_optimizer(cfg.search.optimizer)
    dataset = cfg.dataset()
    eval_cfg = env.eval_config()
    screen_cfg = screen_config(cfg, eval_cfg)
    failure_reward = env.resolved_failure_reward()
    mem_metric = cfg.mem_metric()

    # 1-2. evaluator and dataset, checked before anything is written
    ev = evaluator if evaluator is not None else build_evaluator(cfg)
    units = list(ev.units)
    methods = cfg.methods()
    data = load_dataset(dataset, ev.image_size, ev.image_channels, **env.dataset_options(dataset))
    ev.check_data(data)
    for m in methods:
        eval_cfg.with_method(m, None, env.seed).finetune.resolved_lr()  # every method has a learning rate
    dims = action_dims(len(units), env.methods, env.lr_scales)
    space = trial_space(units, env.methods, env.lr_scales)
    total = optimizer.budget(cfg.search.budget, n_actions(dims))

    def params_at(k: int) -> dict:
        return action_to_params(action_at(k, dims), units, env.methods, env.lr_scales)

    warm = [] if resume else warm_start_trials(cfg, ev, data, optimizer, total, proposals)
    book = ground_truth_book(cfg, dataset)

    state = _load_state(run) if resume else {}
    if optimizer.name == "model":  # rebuilt from the config (also on resume): it keeps no state
        sampler = build_model_sampler(cfg, ev, data, units, space, params_at, n_actions(dims))
    else:
        sampler = state.get("sampler") or optimizer.make(cfg.search.seed, params_at, total)
    if not resume:
        created = not run.exists()
        run.mkdir(parents=True, exist_ok=True)
        try:
            study = open_study(cfg, run, optimizer, sampler, resume=False)
        except MemrlError:
            if created and not any(run.iterdir()):
                run.rmdir()  # nothing half-written
            raise
        for params, attrs in warm:  # the warm start: the first trials, enqueued once
            study.enqueue_trial(params, user_attrs=attrs)
        if env.cache is None and evaluator is None and not cfg.search.lookup:
            env.cache = str(run / "evaluations.sqlite")
        cfg.save(run / "config.yaml")
    else:
        study = open_study(cfg, run, optimizer, sampler, resume=True)
    if evaluator is None and _is_real(ev):
        from memrl.evaluation import EvalCache

        ev.cache = EvalCache(env.cache) if env.cache else None
    study.set_user_attr("units", units)
    study.set_user_attr("optimizer", optimizer.name)

    # the record: trials that finished keep their rows; an interrupted one is evaluated again
    active = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)  # not WAITING (enqueued, not yet asked)
    trials = study.get_trials(deepcopy=False)
    finished = {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
    pending = [t for t in trials if t.state == TrialState.RUNNING]
    log = EvaluationLog(run / "evaluations.csv")
    screens = EvaluationLog(run / "screening.csv") if screen_cfg is not None else None
    for record in (log, screens):
        if record is None:
            continue
        keep = 0
        while keep < len(record.rows) and _step(record.rows[keep]) - 1 in finished:
            keep += 1
        if keep != len(record.rows):
            record.truncate(keep)
    writer = SummaryWriter(str(run / "tb" / "memrl"), purge_step=len(log.rows) + 1 if resume else None)
    board = EvaluationBoard(writer, units, mem_metric, log.rows, state.get("history"), ground_truth=book)
    if resume:
        echo(f"resuming {run}: {len(finished)} of {total} trials finished, {len(pending)} interrupted")

    bar = tqdm(total=total, initial=min(len(finished), total), unit="trial", desc=f"{optimizer.name} {dataset}", disable=not progress)

    def screened_out(trial: Trial, step: int, bits, method: str, lr) -> bool:  # noqa: ANN001
        """The screen (a short fine-tune): True when the trial ends here (pruned, or the screen failed)."""
        reward, info = evaluate_proposal(ev, data, dataset, bits, method, lr, screen_cfg, env.seed, failure_reward)
        screens.append([info_to_row(step, 0, info, reward)])
        for k, v in {"screen_reward": reward, "mask_bits": info["mask_bits"], "method": method, "lr": info.get("lr"), "step": step}.items():
            trial.set_user_attr(k, v)
        if info["failed"]:
            trial.set_user_attr("error", str(info.get("error", ""))[:500])
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.report(reward, 1)
            if not trial.should_prune():
                return False
            study.tell(trial, state=TrialState.PRUNED)
        bar.update(1)
        return True

    def evaluate_trial(trial: Trial) -> None:
        action = params_to_action(trial.params, units, env.methods, env.lr_scales)
        bits, method, lr = decode_action(action, len(units), env.method, env.methods, env.lr_scales)
        step = trial.number + 1
        if screen_cfg is not None and screened_out(trial, step, bits, method, lr):
            return
        reward, info = evaluate_proposal(ev, data, dataset, bits, method, lr, eval_cfg, env.seed, failure_reward)
        log.append([info_to_row(step, 0, info, reward)])
        board.add(step, info, reward, len(log.rows))
        write_best(run / "best_mask.json", log, units)
        attrs = {"step": step, "mask": info["mask"], "mask_bits": info["mask_bits"], "method": method, "lr": info.get("lr"), "reward": reward, "cached": bool(info.get("cached")), "trainable_fraction": info.get("trainable_fraction")}
        if info["failed"]:
            attrs["error"] = str(info.get("error", ""))[:500]
        else:
            attrs.update({"fid": info.get("fid"), mem_metric: info.get(mem_metric)})
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if info["failed"]:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, optimizer.values(info, reward, mem_metric))
        if step % cfg.search.figures_every == 0:
            ok = log.ok_rows()
            board.figures(step, ok, write_pareto(run / "pareto.csv", ok, mem_metric) if ok else [])
        bar.update(1)
        bar.set_postfix(reward=f"{reward:.3f}", best=f"{board.best_reward:.3f}")

    # 3. the trials: interrupted ones first (their parameters are in the study), then new ones
    for t in pending:
        trial = Trial(study, t._trial_id)
        try:
            params_to_action(t.params, units, env.methods, env.lr_scales)
        except MemrlError:  # killed while the sampler was still filling in its parameters
            study.tell(trial, state=TrialState.FAIL)
            bar.update(1)
            continue
        evaluate_trial(trial)
    while len(study.get_trials(deepcopy=False, states=active)) < total:
        trial = study.ask(space)
        _save_state(run, study.sampler, board.history, optimizer)
        evaluate_trial(trial)
    bar.close()

    # 4. results
    ok = log.ok_rows()
    front = write_pareto(run / "pareto.csv", ok, mem_metric) if ok else []
    n_done = len(study.get_trials(deepcopy=False, states=active))
    board.figures(n_done, ok, front)
    best = write_best(run / "best_mask.json", log, units)
    if _is_real(ev):
        if cfg.search.final_pictures and best is not None:
            lr = best["lr"] if isinstance(best["lr"], float) else None
            ev.evaluate(data, best["method"], best["mask_bits"], eval_cfg, lr=lr, seed=env.seed, out_dir=run / "best")
            board.pictures(run / "best", n_done)
        if ev.cache is not None:
            export_lookup_table(ev, run / "table.jsonl", methods)
    writer.close()
    states = [t.state for t in study.get_trials(deepcopy=False, states=active)]
    summary = {
        "run": str(run),
        "optimizer": optimizer.name,
        "dataset": dataset,
        "seed": cfg.search.seed,
        "budget": total,
        "space_size": n_actions(dims),
        "trials": len(states),
        "completed": sum(s == TrialState.COMPLETE for s in states),
        "failed": sum(s == TrialState.FAIL for s in states),
        "pruned": sum(s == TrialState.PRUNED for s in states),
        "evaluations": len(log.rows),
        "fresh_evaluations": sum(1 for r in log.rows if r.get("cached") != "True"),
        "pareto_points": len(front),
        "storage": cfg.search.storage or default_storage(run),
        "study": study.study_name,
        "best": best,
        "warm_start": warm_start_summary(study, log.best()),
    }
    if screens is not None:  # what the screen cost: short evaluations, and how many went on to the full budget
        summary["screen"] = {"steps": screen_cfg.finetune.steps, "eta": cfg.search.screen_eta, "screens": len(screens.rows), "fresh_screens": sum(1 for r in screens.rows if r.get("cached") != "True"), "promoted": len(log.rows)}
    truth = book(dataset) if book is not None else None
    if truth is not None and best is not None:
        r = float(best["metrics"]["reward"])
        summary["ground_truth"] = {"optimum": truth.r_max, "optimum_masks": truth.optimum, "regret": truth.regret(r), "rank": truth.rank(r), "masks": truth.n, "within_2pct": truth.within(r)}
    write_json_atomic(run / "best.json", summary)
    echo(format_summary(summary))
    return summary


def _step(row: dict) -> int:
    try:
        return int(float(row.get("step", 0)))
    except (TypeError, ValueError):
        return 0


def export_lookup_table(ev, out: Path, methods: list[str]) -> int:  # noqa: ANN001
    """The run's cache as a lookup table (``memrl search --lookup RUN`` answers from it): meta
    for the methods searched and ``full`` (the reference). Returns the number of rows."""
    from memrl.evaluation.lookup import export_table, table_meta

    return export_table(ev.cache, out, table_meta(ev, [*methods, "full"]))


def format_summary(s: dict) -> str:
    lines = [
        f"run {s['run']}: {s['optimizer']} on {s['dataset']}, {s['trials']} trials of {s['budget']} "
        f"({s['completed']} completed, {s['failed']} failed; {s['fresh_evaluations']} fresh evaluations), {s['pareto_points']} Pareto points"
    ]
    b = s.get("best")
    if b:
        mt = b["metrics"]
        lines.append(f"best (by reward): {b['method']} units [{', '.join(b['mask_units']) or 'none'}] reward {mt['reward']:.3f} FID {mt['fid']:.2f} nn_own_rate {mt.get('nn_own_rate')}")
    else:
        lines.append("best: none (no evaluation succeeded)")
    w = s.get("warm_start")
    if w:
        steps = ", ".join(str(r["step"]) for r in w["trials"])
        lines.append(f"warm start ({w['source']}): trial(s) {steps} were its proposals; the best trial {'was' if w['best_is_warm_start'] else 'was not'} one of them")
    sc = s.get("screen")
    if sc:
        lines.append(f"screen ({sc['steps']} fine-tuning steps, eta {sc['eta']}): {sc['screens']} screens ({sc['fresh_screens']} fresh), {sc['promoted']} promoted to the full budget, {s['pruned']} pruned")
    g = s.get("ground_truth")
    if g:
        lines.append(f"ground truth: optimum {g['optimum']:.3f} ({', '.join(g['optimum_masks'])}); the best trial's regret {g['regret']:.3f}, rank {g['rank']} of {g['masks']}")
    lines.append(f"optuna-dashboard {s['storage']}  (study {s['study']!r})")
    return "\n".join(lines)
