"""``memrl replay``: apply a learned policy to a dataset it never saw, with zero search evaluations.

1. Load the policy and its run folder (``config.yaml``, ``descriptor.json`` beside ``policy.zip``).
2. Describe the new dataset and ask the policy for its deterministic mask (and method / lr).
3. Stage 2: fine-tune with that mask on the whole dataset (no forced duplication unless
   ``n_repeats`` > 1), measure it, and measure full fine-tuning on the same data and budget.
4. Write ``OUT/report.json``, the fine-tuned model as a diffusers folder (``OUT/model/``, the
   adaptation merged into a plain ``UNet2DConditionModel``), the peft adapter when the method has
   one (``OUT/adapter/``), and sample pictures.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from memrl.agents.config import TrainConfig
from memrl.envs.descriptor import DescriptorBasis
from memrl.envs.mask_selection import N_METRICS, action_dims, decode_action, observation
from memrl.errors import MemrlError
from memrl.metrics.names import SUMMARY_METRICS
from memrl.utils.io import atomic_dir, write_json_atomic

REFERENCE_KEYS = (*SUMMARY_METRICS, "trainable_fraction")


def load_policy(policy: str | Path):  # noqa: ANN201
    """(PPO model, TrainConfig, DescriptorBasis) of a ``policy.zip`` inside its run folder."""
    from stable_baselines3 import PPO

    p = Path(policy)
    if not p.is_file():
        raise MemrlError(f"policy file {p} not found (memrl train writes RUN/policy.zip)")
    run = p.parent
    if not (run / "config.yaml").is_file():
        raise MemrlError(f"{run} has no config.yaml: keep policy.zip in its run folder (with config.yaml and descriptor.json)")
    try:
        model = PPO.load(p, device="cpu")
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign zip
        raise MemrlError(f"cannot load policy {p}: {type(exc).__name__}: {exc}") from None
    return model, TrainConfig.load(run / "config.yaml"), DescriptorBasis.load(run / "descriptor.json")


def save_finetuned(ft, out: Path) -> dict:  # noqa: ANN001
    """Merged diffusers folder (+ peft adapter) of a fine-tune result; returns what was written.

    The adapter (lora/loha/lokr/oft with a mask that targets something) goes to ``OUT/adapter/``
    in the format of the method's registry entry (:func:`memrl.peft_masking.export.save_adapter`:
    lora loads with diffusers' ``load_lora_weights`` / ``load_lora_adapter`` and with peft,
    loha/lokr/oft with ``peft.PeftModel.from_pretrained``). It is written before the merge below,
    which folds the adapter into the base weights in place.
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
        DiffusionModel(fresh, m.text_encoder, m.tokenizer, m.scheduler, m.vae).save_pretrained(tmp)
    written["model"] = str(out / "model")
    return written


def replay(policy: str | Path, dataset: str, out: str | Path, pretrained: str | None = None, n_repeats: int = 1, device: str = "cpu", progress: bool = True) -> dict:
    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator
    from memrl.evaluation.cache import EvalCache
    from memrl.evaluation.reward import reward as compute_reward
    from memrl.peft_masking import Mask

    if n_repeats < 1:
        raise MemrlError(f"--n-repeats must be >= 1, got {n_repeats}")
    model, cfg, basis = load_policy(policy)
    env_cfg = cfg.env
    out = Path(out)
    evaluator = Evaluator(pretrained or env_cfg.pretrained, device=device, granularity=env_cfg.granularity)
    n = len(evaluator.units)
    want_obs = basis.dim + n + N_METRICS
    got_obs = int(model.observation_space.shape[0])
    want_act = len(action_dims(n, env_cfg))
    got_act = int(np.prod(model.action_space.shape))
    if got_obs != want_obs or got_act != want_act:
        raise MemrlError(
            f"policy {policy} was trained for {got_act - (want_act - n)} units (observation {got_obs}), "
            f"the model {evaluator.pretrained_dir} has {n} units (observation {want_obs}); use a policy trained on this model's units"
        )
    data = load_dataset(dataset, evaluator.model.image_size, evaluator.model.image_channels)
    evaluator.check_data(data)
    out.mkdir(parents=True, exist_ok=True)  # only once every input is known to be good
    evaluator.cache = EvalCache(out / "evaluations.sqlite")

    # the policy's proposal: zero search evaluations
    desc = basis.describe(evaluator.feature_net, data)
    obs = observation(desc, np.zeros(n, np.float32), np.zeros(N_METRICS, np.float32))
    action, _ = model.predict(obs, deterministic=True)
    bits, method, lr = decode_action(action, n, env_cfg)
    proposed = Mask.from_bits([int(b) for b in bits], evaluator.units)
    mask, empty = evaluator.effective_mask(method, proposed)  # the units the method can train

    # stage 2: the whole dataset, no forced duplication (unless asked)
    ecfg = env_cfg.eval_config()
    ecfg = replace(ecfg, finetune=replace(ecfg.finetune, data_size_ratio=1.0, n_repeats=n_repeats))
    ecfg = ecfg.with_method(method, lr, env_cfg.seed)
    saved: dict = {}
    result = evaluator.run(data, mask, ecfg, out_dir=out, progress=progress, on_finetuned=lambda ft: saved.update(save_finetuned(ft, out)))
    ref = evaluator.reference(data, ecfg, progress=progress)
    result.update(compute_reward(result, ref, ecfg.reward))
    report = {
        "dataset": data.name,
        "policy": str(policy),
        "search_evaluations": 0,
        "mask": str(mask),
        "mask_units": list(mask.selected),
        "mask_bits": mask.bitstring,
        "proposed_mask_bits": proposed.bitstring,
        "empty_units": list(empty),
        "method": method,
        "lr": ecfg.finetune.resolved_lr(),
        "stage2": {"data_size_ratio": 1.0, "n_repeats": n_repeats, "steps": ecfg.finetune.steps, "n_mem_probe": ecfg.finetune.n_mem},
        "descriptor": desc.tolist(),
        "metrics": result,
        "full_finetune": {k: ref[k] for k in REFERENCE_KEYS},
        "vs_full": {
            "fid_ratio": result["fid"] / max(ref["fid"], 1e-9),
            "nn_own_rate_ratio": result["nn_own_rate"] / max(ref["nn_own_rate"], 1e-9),
            "trainable_fraction": result["trainable_fraction"],
        },
        "saved": saved,
    }
    write_json_atomic(out / "report.json", report)
    return report
