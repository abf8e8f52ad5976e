"""``memrl train --dry-run``: check a training config and its data, time one step, estimate the run.

Nothing is trained and nothing is written to the run folder: the evaluations of the dry run go
to a temporary cache (deleted afterwards), so a real run computes them again. What it does:

1. the run folder: refused as a real run would refuse it (a new run needs a new or empty
   ``--out``; ``--resume`` needs a saved ``config.yaml``), but not created;
2. the model (:class:`~memrl.evaluation.Evaluator`) and every dataset, training and held-out
   (:func:`memrl.data.loaders.load_dataset` + :meth:`Evaluator.check_data`);
3. the environment (:class:`~memrl.envs.mask_selection.MaskSelectionEnv`, with the descriptor
   basis fitted as ``memrl train`` fits it): its units (and which of them each method can train),
   its action and observation spaces; and the PPO agent built on it from the ``ppo`` section
   (nothing learned), so a value PPO refuses shows up now;
4. one real evaluation step: the reference run (full fine-tuning; once per dataset in a real run)
   timed on its own, then one ``env.step`` on the first dataset with a random mask that trains
   something (its reference now comes from the cache);
5. the estimate: ``train.total_timesteps`` steps, one reference per dataset, and the policy-vs-
   random check ((1 + ``train.random_masks``) evaluations per dataset, held-out ones included),
   plus the best mask's pictures; as hours at the measured speed. It is an upper bound for one
   process: repeated proposals are answered from the cache.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memrl.agents.config import TrainConfig
from memrl.errors import MemrlError


def check_run_folder(out: str | Path | None, resume: bool) -> dict:
    """What a real run would do with ``out`` (refusing what it would refuse); writes nothing."""
    if out is None:
        return {"path": None, "state": "not given"}
    run = Path(out)
    if resume:
        if not (run / "config.yaml").is_file():
            raise MemrlError(f"cannot resume: {run} holds no run (no config.yaml); start it without --resume")
        return {"path": str(run), "state": "resumes the run saved there"}
    if run.exists() and not run.is_dir():
        raise MemrlError(f"--out {run} is a file; give a folder")
    if run.exists() and any(run.iterdir()):
        raise MemrlError(f"{run} already holds a run; pass --resume to continue it, or choose another --out")
    return {"path": str(run), "state": "would be created" if not run.exists() else "empty: would be used"}


def dry_run(cfg: TrainConfig, out: str | Path | None = None, resume: bool = False, progress: bool = False, echo=None) -> dict:  # noqa: ANN001
    """Check ``cfg`` and its data, time one evaluation step, estimate the run; returns the report.

    ``echo(text)`` (optional) is told what is being done, for a long check.
    """
    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.envs.mask_selection import MaskSelectionEnv
    from memrl.evaluation import Evaluator
    from memrl.evaluation.cache import EvalCache

    say = echo or (lambda _s: None)
    folder = check_run_folder(out, resume)
    _check_trackers(cfg)
    env_cfg = cfg.env
    heldout = [d for d in cfg.train.heldout_datasets if d not in env_cfg.datasets]
    methods = list(env_cfg.methods) if env_cfg.methods else [env_cfg.method]

    with tempfile.TemporaryDirectory(prefix="memrl-dry-run-") as tmp:
        cache = EvalCache(Path(tmp) / "evaluations.sqlite")  # never the run's (or a shared) cache
        say(f"loading {env_cfg.pretrained}")
        ev = Evaluator(
            env_cfg.pretrained, device=env_cfg.device, cache=cache, granularity=env_cfg.granularity, feature_net=env_cfg.feature_net, resolution=env_cfg.resolution
        )
        m = ev.model

        # every dataset, training and held-out, loaded and checked before anything is timed
        data, datasets = {}, []
        for name in [*env_cfg.datasets, *heldout]:
            say(f"checking dataset {name}")
            d = load_dataset(name, m.image_size, m.image_channels, **env_cfg.dataset_options(name))
            ev.check_data(d)
            data[name] = d
            datasets.append({"name": name, "role": "held-out" if name in heldout else "train", "train_images": len(d.train), "heldout_images": len(d.heldout), "image_shape": list(d.image_shape)})

        # the env as memrl train builds it (basis fitted on the training datasets)
        say("fitting the descriptor basis and building the environment")
        basis = DescriptorBasis.fit(ev.feature_net, [data[n] for n in env_cfg.datasets], env_cfg.descriptor_components)
        for name in heldout:
            basis.describe(ev.feature_net, data[name])  # a held-out dataset the policy will be shown
        env = MaskSelectionEnv(env_cfg.with_(cache=None, info_runtime=True), evaluator=ev, basis=basis)
        env.reset(seed=cfg.train.seed, options={"dataset": env_cfg.datasets[0]})
        units = {
            "names": list(ev.units),
            "granularity": env_cfg.granularity,
            "trainable": {meth: list(ev.trainable_units(meth)) for meth in methods},
        }
        spaces = {
            "action": str(env.action_space),
            "action_shape": list(env.action_space.shape or ()),
            "observation": str(env.observation_space),
            "observation_shape": list(env.observation_space.shape or ()),
            "descriptor_dim": int(basis.dim),
        }

        ppo = _check_ppo(cfg, env)

        # one real step: its reference run first (timed on its own), then the step itself
        action, bits, method, lr = _random_action(env, cfg.train.seed)
        first = env_cfg.datasets[0]
        say(f"timing the reference run (full fine-tuning) on {first}")
        t = time.perf_counter()
        ref_error = None
        try:
            ev.reference(data[first], env.eval_config.with_method(method, lr, env_cfg.seed), progress=progress)
        except MemrlError:
            raise
        except Exception as exc:  # noqa: BLE001 - a diverged reference is a finding, not a crash
            ref_error = f"{type(exc).__name__}: {exc}"
        ref_seconds = time.perf_counter() - t
        say(f"timing one evaluation step on {first}")
        hits = ev.hits
        t = time.perf_counter()
        _, reward, _, _, info = env.step(action)
        step_seconds = time.perf_counter() - t
        timing = {
            "dataset": first,
            "method": method,
            "lr": lr,
            "mask": info.get("mask"),
            "mask_units": info.get("mask_units"),
            "step_seconds": round(step_seconds, 3),
            "reference_seconds": round(ref_seconds, 3),
            "reference_from_cache_in_step": ev.hits > hits,
            "reward": float(reward),
            "failed": bool(info.get("failed")),
            "error": info.get("error") or ref_error,
            "fid": info.get("fid"),
            "nn_own_rate": info.get("nn_own_rate"),
            "trainable_fraction": info.get("trainable_fraction"),
        }

    return {
        "dry_run": True,
        "run_folder": folder,
        "config": cfg.to_dict(),
        "model": {"pretrained": str(env_cfg.pretrained), "device": ev.device, "image_shape": [m.image_channels, m.image_size, m.image_size]},
        "methods": methods,
        "units": units,
        "datasets": datasets,
        "spaces": spaces,
        "ppo": ppo,
        "timing": timing,
        "estimate": estimate(cfg, step_seconds, ref_seconds),
    }


def estimate(cfg: TrainConfig, step_seconds: float, reference_seconds: float) -> dict:
    """Evaluations and hours of the whole run at the measured speed (an upper bound for one process)."""
    train_sets = list(cfg.env.datasets)
    heldout = [d for d in cfg.train.heldout_datasets if d not in train_sets]
    n_sets = len(train_sets) + len(heldout)
    training = int(cfg.train.total_timesteps)
    sur = cfg.train.surrogate
    if sur.enabled and sur.max_real is not None:  # the run stops after max_real real evaluations
        training = min(training, int(sur.max_real))
    comparison = (1 + int(cfg.train.random_masks)) * n_sets
    pictures = 1 if cfg.train.final_pictures else 0
    evaluations = training + comparison + pictures
    references = n_sets
    seconds = evaluations * step_seconds + references * reference_seconds
    return {
        "training_steps": training,
        "policy_vs_random": comparison,
        "final_pictures": pictures,
        "evaluations": evaluations,
        "reference_runs": references,
        "step_seconds": round(step_seconds, 3),
        "reference_seconds": round(reference_seconds, 3),
        "seconds": round(seconds, 1),
        "hours": round(seconds / 3600.0, 4),
        "note": "upper bound for one process: repeated proposals and resumed steps are answered from the cache"
        + (f"; {cfg.train.n_envs} subprocess envs may overlap their steps" if cfg.train.n_envs > 1 and cfg.train.vec_env == "subproc" else "")
        + ("; with train.surrogate the reward model answers some steps without evaluating (imagined steps)" if sur.enabled else ""),
    }


def _random_action(env, seed: int, tries: int = 200) -> tuple[Any, np.ndarray, str, float | None]:  # noqa: ANN001
    """A random action whose mask trains something with its method (a mask that trains nothing
    would time the pretrained model, not a fine-tune)."""
    from memrl.peft_masking import Mask

    env.action_space.seed(seed)
    first = None
    for _ in range(tries):
        a = env.action_space.sample()
        bits, method, lr = env.decode(a)
        first = first or (a, bits, method, lr)
        trained, _ = env.evaluator.effective_mask(method, Mask.from_bits([int(b) for b in bits], env.units))
        if trained.selected:
            return a, bits, method, lr
    return first  # type: ignore[return-value]


def _check_ppo(cfg: TrainConfig, env) -> dict:  # noqa: ANN001
    """Build the PPO agent as ``memrl train`` does (no step is taken), so a ``ppo`` value it refuses
    is found now; its warnings (e.g. a batch size that does not divide the rollout) are reported."""
    import warnings

    from stable_baselines3 import PPO

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PPO("MlpPolicy", env, seed=cfg.train.seed, device="cpu", verbose=0, **cfg.ppo)
        except Exception as exc:  # noqa: BLE001 - SB3 says why in an AssertionError, ValueError or TypeError
            raise MemrlError(f"config [ppo]: stable_baselines3.PPO refuses it: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    params = sum(int(p.numel()) for p in model.policy.parameters())
    notes = sorted({" ".join(str(w.message).split()) for w in caught if issubclass(w.category, UserWarning)})
    return {"policy_parameters": params, "rollout": int(cfg.ppo.get("n_steps", model.n_steps)) * cfg.train.n_envs, "warnings": notes}


def _check_trackers(cfg: TrainConfig) -> None:
    """``train.report_to`` names trackers that are installed (when this memrl has trackers)."""
    report_to = getattr(cfg.train, "report_to", None)
    if not report_to:
        return
    try:
        from memrl.reporting.trackers import check_available
    except ImportError:  # pragma: no cover - an older memrl without trackers
        return
    check_available(report_to)


def format_report(r: dict) -> str:
    """The dry-run report as text."""
    u, s, t, e = r["units"], r["spaces"], r["timing"], r["estimate"]
    lines = [f"dry run: config and data OK; nothing trained, nothing written (run folder {r['run_folder']['path']}: {r['run_folder']['state']})"]
    lines.append(f"model {r['model']['pretrained']} on {r['model']['device']}, images {'x'.join(map(str, r['model']['image_shape']))}")
    lines.append("datasets:")
    for d in r["datasets"]:
        lines.append(f"  {d['name']:<20} {d['role']:<9} {d['train_images']:>6} train  {d['heldout_images']:>5} held-out images")
    trainable = u["trainable"]
    lines.append(f"units ({len(u['names'])}, granularity {u['granularity']}; + = the method can train it):")
    head = "  " + " " * 28 + "  ".join(f"{meth:>6}" for meth in trainable)
    lines.append(head)
    for name in u["names"]:
        lines.append(f"  {name:<28}" + "  ".join(f"{'+' if name in units else '-':>6}" for units in trainable.values()))
    lines.append(f"action space: {s['action']}")
    lines.append(f"observation space: {s['observation']} (descriptor {s['descriptor_dim']} + mask {len(u['names'])} + metrics)")
    ppo = r["ppo"]
    lines.append(f"PPO: policy with {ppo['policy_parameters']} parameters, rollouts of {ppo['rollout']} env steps")
    lines.extend(f"  warning: {w}" for w in ppo["warnings"])
    status = f"FAILED ({t['error']})" if t["failed"] or t["error"] else f"reward {t['reward']:.3f}"
    lines.append(
        f"one evaluation step on {t['dataset']} ({t['method']}, units [{', '.join(t['mask_units'] or []) or 'none'}]): "
        f"{t['step_seconds']:.1f} s, {status}; its reference run (full fine-tuning): {t['reference_seconds']:.1f} s"
    )
    lines.append(
        f"estimate: {e['evaluations']} evaluations ({e['training_steps']} training steps + {e['policy_vs_random']} policy-vs-random"
        f"{' + 1 best-mask pictures' if e['final_pictures'] else ''}) x {e['step_seconds']:.1f} s + {e['reference_runs']} reference runs x "
        f"{e['reference_seconds']:.1f} s = {e['seconds'] / 60:.1f} min ({e['hours']:.2f} h)"
    )
    lines.append(f"  ({e['note']})")
    return "\n".join(lines)
