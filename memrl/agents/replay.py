"""``memrl replay``: apply a learned policy to a dataset it never saw, with zero search evaluations
(or, with ``--budget K``, K of them to refine the policy's proposal).

1. Load the policy and its run folder (``config.yaml``, ``descriptor.json`` beside ``policy.zip``:
   :class:`memrl.envs.policy.TrainedPolicy`) and check it fits the model's units. Several policies
   (agent seeds of one config) propose as one (:class:`memrl.envs.ensemble.PolicyEnsemble`: their
   action distributions averaged, ``ensemble="mixture"``, or multiplied, ``"product"``).
2. Describe the new dataset and ask the policy for its deterministic mask (and method / lr): the
   zero-shot proposal.
3. With ``budget`` K > 0 (few-shot refinement): spend K real evaluations on the new dataset with the
   policy's own env settings (method(s), lr scales, preset, eval_overrides, seed, reward: the
   objective it was trained on) in a ``memrl search`` run in ``OUT/search/``: tpe or random
   warm-started with the policy's most probable proposals, its deterministic mask first
   (``warm_start_k``, default ``min(4, K)``), or ``model``: the reward model fitted on the
   policy's own training evaluations (its run folder is the ``--prior``; an ensemble's: every
   member's, pooled), no warm start. The
   search's best mask by reward replaces the zero-shot one. With K = 0 (the default) nothing is
   searched: today's replay, unchanged.
4. Stage 2: fine-tune with the chosen mask on the whole dataset (no forced duplication unless
   ``n_repeats`` > 1), measure it, and measure full fine-tuning on the same data and budget.
5. Write ``OUT/report.json`` (with ``zero_shot``, ``search_evaluations`` and ``search``), the
   fine-tuned model as a diffusers folder (``OUT/model/``, the adaptation merged into a plain
   ``UNet2DConditionModel``), the peft adapter when the method has one (``OUT/adapter/``), and
   sample pictures.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from memrl.agents.config import TrainConfig
from memrl.envs.ensemble import ENSEMBLE_RULES, PolicyEnsemble, load_policy
from memrl.envs.policy import TrainedPolicy
from memrl.errors import MemrlError
from memrl.metrics.names import SUMMARY_METRICS
from memrl.utils.io import atomic_dir, write_json_atomic

REFERENCE_KEYS = (*SUMMARY_METRICS, "trainable_fraction")
#: Optimizers ``memrl replay --budget`` refines with (a warm start needs enqueued trials).
REFINE_OPTIMIZERS = ("tpe", "random", "model")
#: The most policy proposals a refinement enqueues by default (never more than the budget).
DEFAULT_WARM_START_K = 4
#: The refinement's search run, inside ``OUT``.
SEARCH_DIR = "search"


def checked_count(value: Any, flag: str, minimum: int, what: str = "") -> int:
    """``value`` (an int, or the command line's text of one) as an int >= ``minimum``; else one
    :class:`MemrlError` naming ``flag`` (``what``: what the number counts, for the message)."""
    n = None
    if isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            n = None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    if n is None or n < minimum:
        raise MemrlError(f"{flag} must be a whole number >= {minimum}{f' ({what})' if what else ''}, got {value!r}")
    return n


def refinement_config(policy: TrainedPolicy | PolicyEnsemble, dataset: str, pretrained: str, budget: int, optimizer: str, warm_start_k: int, out: Path, device: str, feature_net: str | None = None, screen_steps: int | None = None, screen_eta: int | None = None):  # noqa: ANN201
    """The :class:`memrl.search.config.SearchConfig` of ``replay --budget``: the policy's env
    settings on ``dataset`` (the evaluation it was trained on), warm-started with the policy itself,
    its cache the replay's (``OUT/evaluations.sqlite``), no final pictures (Stage 2 makes them).
    ``screen_steps`` / ``screen_eta``: the search's multi-fidelity screen (``search.screen_steps``),
    checked here against the policy's evaluation budget."""
    from memrl.search.config import SearchConfig, SearchSettings
    from memrl.search.run import screen_config

    env = policy.env.with_(datasets=[dataset], pretrained=str(pretrained), cache=str(out / "evaluations.sqlite"), device=device, feature_net=feature_net or policy.env.feature_net)
    if optimizer == "model":  # the reward model starts from the policy's (an ensemble: every policy's) training evaluations instead of a warm start
        start: dict = {"prior": [str(Path(p).parent) for p in policy.paths] if isinstance(policy, PolicyEnsemble) else str(Path(policy.path).parent)}
    else:
        start = {"warm_start": str(policy.path), "warm_start_k": warm_start_k}
        if isinstance(policy, PolicyEnsemble):
            start.update(warm_start=[str(p) for p in policy.paths], warm_start_ensemble=policy.rule)
    if screen_eta is not None:
        start["screen_eta"] = screen_eta
    settings = SearchSettings(optimizer=optimizer, budget=budget, dataset=dataset, final_pictures=False, screen_steps=screen_steps, **start)
    cfg = SearchConfig(env=env, search=settings)
    screen_config(cfg, env.eval_config())  # a screen as long as the full budget is refused before OUT exists
    return cfg


def save_finetuned(ft, out: Path) -> dict:  # noqa: ANN001
    """Merged diffusers folder (+ peft adapter) of a fine-tune result; returns what was written.

    The adapter (lora/loha/lokr/oft with a mask that targets something) goes to ``OUT/adapter/``
    in the format of the method's registry entry (:func:`memrl.peft_masking.export.save_adapter`:
    lora loads with diffusers' ``load_lora_weights`` / ``load_lora_adapter`` and with peft,
    loha/lokr/oft with ``peft.PeftModel.from_pretrained``). It is written before the merge below,
    which folds the adapter into the base weights in place.

    ``OUT/model/`` keeps the base folder's scheduler class; a Stable Diffusion base (a VAE and a
    CLIP tokenizer) is written as a ``StableDiffusionPipeline`` folder
    (:meth:`memrl.models.pipeline.DiffusionModel.save_pretrained`), so
    ``StableDiffusionPipeline.from_pretrained(OUT/model)`` loads it and
    ``pipe.load_lora_weights(OUT/adapter)`` adds the LoRA to the base pipeline.
    """
    from diffusers import UNet2DConditionModel

    from memrl.models.pipeline import DiffusionModel
    from memrl.peft_masking.export import has_adapter, save_adapter
    from memrl.peft_masking.merge import merged_state_dict

    written = {}
    unet = ft.model.unet
    if has_adapter(unet, ft.peft):
        with atomic_dir(out / "adapter") as tmp:
            save_adapter(unet, ft.peft, tmp)
        written["adapter"] = str(out / "adapter")
    fresh = UNet2DConditionModel.from_config(unet.config)
    state = merged_state_dict(unet, ft.peft, list(fresh.state_dict()))
    fresh.load_state_dict(state, strict=True)
    fresh.to(next(unet.parameters()).device)
    m = ft.model
    with atomic_dir(out / "model") as tmp:
        DiffusionModel(fresh, m.text_encoder, m.tokenizer, m.scheduler, m.vae, m.saved_scheduler).save_pretrained(tmp)
    written["model"] = str(out / "model")
    return written


def replay(
    policy: str | Path | list[str | Path],
    dataset: str,
    out: str | Path,
    pretrained: str | None = None,
    n_repeats: int = 1,
    device: str = "cpu",
    progress: bool = True,
    budget: int | str = 0,
    warm_start_k: int | str | None = None,
    optimizer: str | None = None,
    feature_net: str | None = None,
    screen_steps: int | str | None = None,
    screen_eta: int | str | None = None,
    ensemble: str | None = None,
) -> dict:
    """Apply ``policy`` to ``dataset`` and write ``OUT`` (see the module docstring); returns the report.

    ``budget``: search evaluations before Stage 2 (0: none, the zero-shot mask goes to Stage 2);
    ``warm_start_k``: how many of the policy's proposals start the search (default ``min(4, budget)``);
    ``optimizer``: ``tpe`` (default) or ``random``; ``feature_net``: the feature network (default: the
    policy's ``env.feature_net``, the one its descriptor basis was fitted with); ``screen_steps`` /
    ``screen_eta``: multi-fidelity refinement, every search trial first screened with a fine-tune
    of that many steps and only about one in ``screen_eta`` evaluated in full (the budget counts
    trials, each one screen); ``ensemble``: with several policies, how their distributions combine
    (``mixture``, the default, or ``product``). Every input is checked before ``OUT`` is created.
    """
    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator
    from memrl.evaluation.cache import EvalCache
    from memrl.evaluation.reward import reward as compute_reward
    from memrl.peft_masking import Mask

    budget = checked_count(budget, "--budget", 0, "search evaluations before Stage 2; 0: the policy's own mask")
    if n_repeats < 1:
        raise MemrlError(f"--n-repeats must be >= 1, got {n_repeats}")
    if budget == 0 and (warm_start_k is not None or optimizer is not None or screen_steps is not None or screen_eta is not None):
        given = " and ".join(f for f, v in (("--warm-start-k", warm_start_k), ("--optimizer", optimizer), ("--screen-steps", screen_steps), ("--screen-eta", screen_eta)) if v is not None)
        raise MemrlError(f"{given} refine(s) the policy's mask with a search: give --budget K > 0 (search evaluations) too")
    if optimizer is not None and optimizer not in REFINE_OPTIMIZERS:
        raise MemrlError(f"--optimizer {optimizer!r} cannot refine a policy's mask; valid: {', '.join(REFINE_OPTIMIZERS)}")
    if optimizer == "model" and warm_start_k is not None:
        raise MemrlError("--warm-start-k is for tpe and random: --optimizer model starts from the reward model fitted on the policy's training evaluations, not from its proposals")
    k = checked_count(warm_start_k, "--warm-start-k", 1, "policy proposals that start the search") if warm_start_k is not None else min(DEFAULT_WARM_START_K, budget)
    if screen_eta is not None and screen_steps is None:
        raise MemrlError("--screen-eta sets the screen's reduction factor: give --screen-steps N (the screen's fine-tuning steps) too")
    screen_steps = checked_count(screen_steps, "--screen-steps", 1, "fine-tuning steps of the screen") if screen_steps is not None else None
    screen_eta = checked_count(screen_eta, "--screen-eta", 2, "one screened trial in ETA gets the full budget") if screen_eta is not None else None
    if optimizer == "model":
        k = 0
    several = not isinstance(policy, (str, Path)) and len(list(policy)) > 1
    if ensemble is not None and ensemble not in ENSEMBLE_RULES:
        raise MemrlError(f"--ensemble {ensemble!r} is not a rule; valid: {', '.join(ENSEMBLE_RULES)}")
    if ensemble is not None and not several:
        raise MemrlError("--ensemble combines several policies: give two or more --policy files")
    tp = load_policy(policy, ensemble or "mixture")
    env_cfg = tp.env
    out = Path(out)
    if feature_net is not None:
        env_cfg = env_cfg.with_(feature_net=feature_net)
    evaluator = Evaluator(
        pretrained or env_cfg.pretrained, device=device, granularity=env_cfg.granularity, feature_net=env_cfg.feature_net, resolution=env_cfg.resolution
    )
    tp.check_fits(evaluator)
    data = load_dataset(dataset, evaluator.image_size, evaluator.image_channels, **env_cfg.dataset_options(dataset))
    evaluator.check_data(data)
    search_cfg = None
    if budget:
        search_dir = out / SEARCH_DIR
        if search_dir.exists() and (not search_dir.is_dir() or any(search_dir.iterdir())):
            raise MemrlError(f"{search_dir} already holds a search run (or is a file); choose another --out for replay --budget")
        search_cfg = refinement_config(tp, dataset, str(evaluator.pretrained_dir), budget, optimizer or "tpe", k, out, device, env_cfg.feature_net, screen_steps, screen_eta)
    out.mkdir(parents=True, exist_ok=True)  # only once every input is known to be good
    evaluator.cache = EvalCache(out / "evaluations.sqlite")

    # the policy's own proposal (zero-shot)
    desc = tp.describe(evaluator, data)
    zero = tp.deterministic(evaluator, desc)
    ecfg = env_cfg.eval_config()
    zero_shot = {
        **{k_: v for k_, v in zero.to_dict().items() if k_ not in ("log_prob", "deterministic")},
        "lr": ecfg.with_method(zero.method, zero.lr, env_cfg.seed).finetune.resolved_lr(),
        "search_reward": None,  # the search preset's reward, when the refinement evaluated it
        "search_step": None,
    }
    proposed, mask, empty, method, lr = Mask.from_bits(list(zero.bits), evaluator.units), zero.mask, zero.empty, zero.method, zero.lr
    search_report = None
    spent = 0
    if search_cfg is not None:  # few-shot refinement: K evaluations, warm-started with the policy
        from memrl.search.run import search

        summary = search(search_cfg, out / SEARCH_DIR, progress=progress, echo=lambda _s: None, evaluator=evaluator)
        spent = int(summary["evaluations"])
        warm = summary.get("warm_start") or {"trials": []}
        first = next((t for t in warm["trials"] if t["rank"] == 0), None)
        if first is not None:
            zero_shot["search_reward"] = first["reward"]
            zero_shot["search_step"] = first["step"]
        search_report = {
            "run": str(out / SEARCH_DIR),
            "optimizer": summary["optimizer"],
            "budget": budget,
            "warm_start_k": k,
            "evaluations": spent,
            "fresh_evaluations": summary["fresh_evaluations"],
            "screen": summary.get("screen"),  # with --screen-steps: the short evaluations and how many were promoted
            **dict.fromkeys(("mask", "mask_bits", "mask_units", "method", "lr", "reward", "step", "warm_start")),
        }
        choice = _best_search_proposal(out / SEARCH_DIR, search_cfg, evaluator)
        if choice is not None:  # else (every evaluation failed) the zero-shot mask goes to Stage 2
            row, proposed, method, lr = choice
            mask, empty = evaluator.effective_mask(method, proposed)
            step = int(float(row["step"]))
            search_report.update(
                {
                    "mask": str(mask),
                    "mask_bits": mask.bitstring,
                    "mask_units": list(mask.selected),
                    "method": method,
                    "lr": float(row["lr"]) if row.get("lr") not in (None, "") else None,
                    "reward": float(row["reward"]),
                    "step": step,
                    "warm_start": any(t["step"] == step for t in warm["trials"]),  # the best trial was one of the policy's proposals
                }
            )

    # stage 2: the whole dataset, no forced duplication (unless asked)
    ecfg = replace(ecfg, finetune=replace(ecfg.finetune, data_size_ratio=1.0, n_repeats=n_repeats))
    ecfg = ecfg.with_method(method, lr, env_cfg.seed)
    saved: dict = {}
    result = evaluator.run(data, mask, ecfg, out_dir=out, progress=progress, on_finetuned=lambda ft: saved.update(save_finetuned(ft, out)))
    ref = evaluator.reference(data, ecfg, progress=progress)
    result.update(compute_reward(result, ref, ecfg.reward))
    report = {
        "dataset": data.name,
        "policy": [str(p) for p in tp.paths] if several else str(policy if isinstance(policy, (str, Path)) else list(policy)[0]),
        "ensemble": tp.rule if several else None,
        "search_evaluations": spent,
        "mask": str(mask),
        "mask_units": list(mask.selected),
        "mask_bits": mask.bitstring,
        "proposed_mask_bits": proposed.bitstring,
        "empty_units": list(empty),
        "method": method,
        "lr": ecfg.finetune.resolved_lr(),
        "stage2": {"data_size_ratio": 1.0, "n_repeats": n_repeats, "steps": ecfg.finetune.steps, "n_mem_probe": ecfg.finetune.n_mem},
        "descriptor": [d.tolist() for d in desc] if several else desc.tolist(),  # an ensemble: one per policy, in its basis
        "metrics": result,
        "full_finetune": {k_: ref[k_] for k_ in REFERENCE_KEYS},
        "vs_full": {
            "fid_ratio": result["fid"] / max(ref["fid"], 1e-9),
            "nn_own_rate_ratio": result["nn_own_rate"] / max(ref["nn_own_rate"], 1e-9),
            "trainable_fraction": result["trainable_fraction"],
        },
        "saved": saved,
        "zero_shot": zero_shot,
        "search": search_report,
    }
    write_json_atomic(out / "report.json", report)
    return report


def _best_search_proposal(run: Path, cfg, evaluator):  # noqa: ANN001, ANN202
    """The refinement's best evaluation by reward (``None`` when none succeeded): ``(row, proposed
    mask, method, lr)``, the learning rate decoded exactly as the search proposed it (``None``: the
    method's default)."""
    from memrl.evaluation.space import decode_action
    from memrl.peft_masking import Mask
    from memrl.reporting.records import EvaluationLog
    from memrl.search.run import encode_proposal

    row = EvaluationLog(run / "evaluations.csv").best()
    if row is None:
        return None
    env = cfg.env
    lr = float(row["lr"]) if env.lr_scales else None
    action = encode_proposal((row["proposed_mask_bits"], row["method"], lr), evaluator.units, env, cfg.methods(), "the search's best trial")
    bits, method, lr = decode_action(action, len(evaluator.units), env.method, env.methods, env.lr_scales)
    return row, Mask.from_bits([int(b) for b in bits], evaluator.units), method, lr
