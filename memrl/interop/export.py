"""The logic of ``memrl export``, ``memrl units`` and ``memrl datasets``.

**Export** (:func:`export`) reads a *source*:

* a training run folder ``RUN/`` (or its ``best_mask.json``, written by ``memrl train``): the
  best mask overall, or with ``dataset`` the best one of ``per_dataset``; ``RUN/config.yaml``
  names the base model (``env.pretrained``), the unit granularity and the fine-tuning rank;
* a replay folder ``OUT/`` (or its ``report.json``, written by ``memrl replay``): the policy's
  mask for one dataset, with the fine-tuned weights in ``OUT/adapter/`` (peft methods) and
  ``OUT/model/`` (the whole model, adaptation merged); the policy's ``config.yaml`` names the
  base model;
* a ``mask.json`` written by ``memrl export --format json`` (so an exported or hand-edited mask
  can be exported again).

and writes one folder ``OUT`` (atomically: complete or absent; an existing non-empty folder only
with ``force``), always with ``mask.json`` (the mask and where it came from) beside:

* ``json``: just ``mask.json``: ``units``, ``bits`` and ``selected`` (the layout of
  :meth:`memrl.peft_masking.Mask.to_dict`, so ``Mask.from_dict`` reads it back), ``mask_bits``,
  ``method``, ``lr``, ``rank``, ``dataset``, ``granularity``, ``pretrained``, ``source``,
  ``metrics``.
* ``peft``: a peft ``LoraConfig`` (``adapter_config.json``, ``peft.PeftConfig.from_pretrained(OUT)``)
  whose ``target_modules`` are exactly the attention projections (``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``) inside the selected units, for any method of the run, so a LoRA fine-tune (e.g.
  diffusers' ``train_text_to_image_lora.py`` with ``unet.add_adapter(LoraConfig.from_pretrained(OUT))``)
  trains the units memrl chose; for a loha/lokr/oft run also that method's own peft config in
  ``OUT/<method>/``. The module names come from the base model's UNet, built from its config on
  PyTorch's meta device (no weights are read, so a Stable Diffusion folder is as quick as the
  tiny model). ``README.md`` says how to use it, with the run's learning rate.
* ``diffusers``: the replay's fine-tuned LoRA weights (``pytorch_lora_weights.safetensors``, as
  :func:`memrl.peft_masking.export.save_adapter` writes them), which
  ``StableDiffusionPipeline.load_lora_weights(OUT)`` and
  ``UNet2DConditionModel.load_lora_adapter(OUT, prefix="unet", weight_name="pytorch_lora_weights.safetensors")``
  load. A training run holds no fine-tuned weights (``memrl replay`` makes them); a method
  without an adapter has its weights merged into the replay's ``OUT/model/``: both are
  :class:`MemrlError` saying so.

Every input is checked before anything is written (the mask against the unit list and the base
model, the adapter file's keys against the base model's modules); bad input is one
:class:`MemrlError`, and nothing is written then.

**Units** (:func:`unit_table`): one row per unit of a model at a granularity: its parameters and
how many each method would train if that unit alone were selected. Methods act inside each unit
independently, so one ``apply_peft`` per method with every unit selected gives every unit's
one-unit count (``PeftResult.per_unit``); the UNet is built on the meta device, so this is quick
for a Stable Diffusion UNet too.

**Datasets** (:func:`dataset_listing`): the built-in variants with their sizes, the pretraining
split, the user formats, and, once ``memrl.data.family`` exists, its ``RANGES``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from memrl.errors import MemrlError

FORMATS: tuple[str, ...] = ("peft", "diffusers", "json")
#: The mask record written into every export folder (and the whole ``json`` export).
MASK_FILE = "mask.json"
MASK_FORMAT = "memrl-mask"
MASK_VERSION = 1
README_FILE = "README.md"
TRAIN_FILE = "best_mask.json"
REPLAY_FILE = "report.json"
#: Source files looked for in a SOURCE folder, in this order.
SOURCE_FILES: tuple[str, ...] = (TRAIN_FILE, REPLAY_FILE, MASK_FILE)
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")

_SOURCE_HINT = (
    f"expected a memrl train run folder (with {TRAIN_FILE}), a memrl replay folder (with {REPLAY_FILE}), "
    f"one of those files, or a {MASK_FILE} from memrl export --format json"
)


# ============================================================================ reading a source
@dataclass
class ExportSource:
    """A mask (and where its weights are) read from a run, a replay or a ``mask.json``.

    ``units`` is known without the model for a training run and a ``mask.json``; for a replay
    it comes from the base model (:func:`resolve_model`). ``pretrained`` is the base model the
    source names (not yet checked), ``fallback_model`` a folder with the same UNet architecture
    (a replay's merged model).
    """

    kind: str  # "train" | "replay" | "mask"
    path: Path  # the JSON file read
    method: str
    lr: float | None
    dataset: str | None
    mask_bits: str
    mask_units: tuple[str, ...]
    units: tuple[str, ...] | None = None
    granularity: str | None = None
    pretrained: str | None = None
    pretrained_from: str | None = None
    rank: int = 4
    rank_from: str = "default"
    metrics: Any = None
    adapter_dir: Path | None = None
    model_dir: Path | None = None
    fallback_model: Path | None = None
    config_path: Path | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent


def read_source(source: str | Path, dataset: str | None = None) -> ExportSource:
    """Read and check ``source`` (a folder or a JSON file); ``dataset`` picks a ``per_dataset`` entry."""
    p = Path(source).expanduser()
    if not p.exists():
        raise MemrlError(f"export source {p} does not exist; {_SOURCE_HINT}")
    if p.is_dir():
        found = [p / n for n in SOURCE_FILES if (p / n).is_file()]
        if not found:
            raise MemrlError(f"{p} holds no {' / '.join(SOURCE_FILES)}: not a memrl run or replay folder; {_SOURCE_HINT}")
        file = found[0]
    else:
        file = p
    doc = _read_json(file)
    kind = _kind(doc, file)
    if kind == "train":
        return _train_source(doc, file, dataset)
    if kind == "replay":
        return _replay_source(doc, file, dataset)
    return _mask_source(doc, file, dataset)


def _read_json(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MemrlError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemrlError(f"{file} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise MemrlError(f"{file}: expected a JSON object, got {type(doc).__name__}; {_SOURCE_HINT}")
    return doc


def _kind(doc: dict, file: Path) -> str:
    if doc.get("format") == MASK_FORMAT:
        return "mask"
    if "per_dataset" in doc or "units" in doc:
        return "train"
    if "saved" in doc or "policy" in doc:
        return "replay"
    raise MemrlError(f"{file} is neither a {TRAIN_FILE} (keys units, per_dataset) nor a {REPLAY_FILE} (keys saved, policy); {_SOURCE_HINT}")


def _same_dataset(a: str, b: str) -> bool:
    """``inverted`` names the same dataset as ``digits/inverted``."""
    strip = lambda s: s[len("digits/") :] if s.startswith("digits/") else s  # noqa: E731
    return a == b or strip(a) == strip(b)


def _str_list(value: Any, file: Path, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MemrlError(f"{file}: {key!r} must be a list of unit names, got {json.dumps(value)[:80]}")
    return tuple(value)


def _bits(value: Any, file: Path, key: str) -> str:
    if isinstance(value, list) and all(v in (0, 1) for v in value):
        value = "".join(str(int(v)) for v in value)
    if not isinstance(value, str) or set(value) - {"0", "1"}:
        raise MemrlError(f"{file}: {key!r} must be a string of 0/1 bits, got {json.dumps(value)[:80]}")
    return value


def _method(value: Any, file: Path, where: str) -> str:
    from memrl.peft_masking import METHODS

    if value not in METHODS:
        raise MemrlError(f"{file}{where}: unknown method {value!r}; valid: {', '.join(METHODS)}")
    return value


def _lr(value: Any, file: Path, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise MemrlError(f"{file}{where}: 'lr' must be a number, got {json.dumps(value)}") from None
    if not lr > 0:
        raise MemrlError(f"{file}{where}: 'lr' must be > 0, got {lr}")
    return lr


def _check_selection(units: Sequence[str], bits: str, mask_units: Sequence[str], file: Path, where: str) -> None:
    if len(bits) != len(units):
        raise MemrlError(f"{file}{where}: 'mask_bits' has {len(bits)} bits for {len(units)} units ({', '.join(units)})")
    selected = [u for u, b in zip(units, bits) if b == "1"]
    if list(mask_units) != selected:
        raise MemrlError(
            f"{file}{where}: 'mask_units' ({', '.join(mask_units) or 'none'}) disagree with 'mask_bits' {bits} "
            f"(which select {', '.join(selected) or 'none'})"
        )


def _run_config(path: Path) -> dict:
    """pretrained / granularity / rank of a run's ``config.yaml`` (checked as ``memrl train`` does)."""
    from memrl.agents.config import TrainConfig

    cfg = TrainConfig.load(path)
    return {
        "pretrained": cfg.env.pretrained,
        "granularity": cfg.env.granularity,
        "rank": int(cfg.env.eval_config().finetune.rank),
    }


def _train_source(doc: dict, file: Path, dataset: str | None) -> ExportSource:
    units = _str_list(doc.get("units"), file, "units")
    entry, where = doc, ""
    if dataset is not None:
        per = doc.get("per_dataset")
        if not isinstance(per, dict):
            raise MemrlError(f"{file} has no 'per_dataset' entries to pick --dataset {dataset!r} from")
        key = next((k for k in per if k == dataset), None) or next((k for k in per if _same_dataset(k, dataset)), None)
        if key is None:
            raise MemrlError(f"{file} has no dataset {dataset!r}; its datasets: {', '.join(per) or '(none)'}")
        entry, where = per[key], f" [per_dataset.{key}]"
        if not isinstance(entry, dict):
            raise MemrlError(f"{file}{where}: expected an object with mask_bits, mask_units, method, lr")
    bits = _bits(entry.get("mask_bits"), file, where.strip(" []") + ".mask_bits" if where else "mask_bits")
    mask_units = _str_list(entry.get("mask_units"), file, "mask_units")
    _check_selection(units, bits, mask_units, file, where)
    src = ExportSource(
        kind="train",
        path=file,
        method=_method(entry.get("method"), file, where),
        lr=_lr(entry.get("lr"), file, where),
        dataset=entry.get("dataset") if isinstance(entry.get("dataset"), str) else dataset,
        mask_bits=bits,
        mask_units=mask_units,
        units=units,
        metrics=entry.get("metrics"),
    )
    cfg_path = file.parent / "config.yaml"
    if cfg_path.is_file():
        _apply_config(src, cfg_path)
    return src


def _apply_config(src: ExportSource, cfg_path: Path) -> None:
    cfg = _run_config(cfg_path)
    src.config_path = cfg_path
    src.pretrained, src.pretrained_from = cfg["pretrained"], f"env.pretrained in {cfg_path}"
    src.granularity = cfg["granularity"]
    src.rank, src.rank_from = cfg["rank"], str(cfg_path)


def _saved_dir(value: Any, folder: Path, default: str) -> Path | None:
    """A folder the report names: as written, else by its name beside the report (a moved folder)."""
    candidates = []
    if isinstance(value, str) and value:
        candidates += [Path(value).expanduser(), folder / Path(value).name]
    candidates.append(folder / default)
    return next((c for c in candidates if c.is_dir()), None)


def _single_dataset(doc: dict, file: Path, dataset: str | None, what: str) -> Any:
    """The one dataset a replay report or mask file is for; ``--dataset`` must name it, if given."""
    name = doc.get("dataset")
    if dataset is not None and not (isinstance(name, str) and _same_dataset(name, dataset)):
        raise MemrlError(f"{file} {what.format(name=name)}; --dataset {dataset!r} does not match (leave it out)")
    return name


def _replay_source(doc: dict, file: Path, dataset: str | None) -> ExportSource:
    name = _single_dataset(doc, file, dataset, "is a replay on dataset {name!r} only")
    bits = _bits(doc.get("mask_bits"), file, "mask_bits")
    mask_units = _str_list(doc.get("mask_units"), file, "mask_units")
    if bits.count("1") != len(mask_units):
        raise MemrlError(f"{file}: 'mask_bits' {bits} select {bits.count('1')} units but 'mask_units' lists {len(mask_units)}")
    saved = doc.get("saved") if isinstance(doc.get("saved"), dict) else {}
    src = ExportSource(
        kind="replay",
        path=file,
        method=_method(doc.get("method"), file, ""),
        lr=_lr(doc.get("lr"), file, ""),
        dataset=name if isinstance(name, str) else None,
        mask_bits=bits,
        mask_units=mask_units,
        metrics=doc.get("metrics"),
        adapter_dir=_saved_dir(saved.get("adapter"), file.parent, "adapter"),
        model_dir=_saved_dir(saved.get("model"), file.parent, "model"),
    )
    src.fallback_model = src.model_dir
    policy = doc.get("policy")
    if isinstance(policy, list) and policy:  # an ensemble's policies share their env settings: the first one's run says them
        policy = policy[0]
    if isinstance(policy, str) and policy:
        cfg_path = Path(policy).expanduser().parent / "config.yaml"
        if cfg_path.is_file():
            _apply_config(src, cfg_path)
    rank = _adapter_rank(src.adapter_dir)
    if rank is not None:
        src.rank, src.rank_from = rank, str(src.adapter_dir / "adapter_config.json")
    return src


def _adapter_rank(adapter: Path | None) -> int | None:
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        return None
    try:
        r = json.loads((adapter / "adapter_config.json").read_text()).get("r")
    except (OSError, ValueError, AttributeError):
        return None
    return r if isinstance(r, int) and r > 0 else None


def _mask_source(doc: dict, file: Path, dataset: str | None) -> ExportSource:
    units = _str_list(doc.get("units"), file, "units")
    bits = _bits(doc.get("bits"), file, "bits")
    selected = _str_list(doc.get("selected", [u for u, b in zip(units, bits) if b == "1"]), file, "selected")
    _check_selection(units, bits, selected, file, "")
    name = _single_dataset(doc, file, dataset, "holds one mask, for dataset {name!r}")
    rank = doc.get("rank", 4)
    if not isinstance(rank, int) or rank < 1:
        raise MemrlError(f"{file}: 'rank' must be a positive integer, got {json.dumps(rank)}")
    granularity = doc.get("granularity")
    pretrained = doc.get("pretrained")
    return ExportSource(
        kind="mask",
        path=file,
        method=_method(doc.get("method"), file, ""),
        lr=_lr(doc.get("lr"), file, ""),
        dataset=name if isinstance(name, str) else None,
        mask_bits=bits,
        mask_units=selected,
        units=units,
        granularity=granularity if isinstance(granularity, str) else None,
        pretrained=pretrained if isinstance(pretrained, str) else None,
        pretrained_from=f"'pretrained' in {file}",
        rank=rank,
        rank_from=str(file),
        metrics=doc.get("metrics"),
    )


# ============================================================================ the base model
def load_unet_structure(folder: str | Path):  # noqa: ANN201
    """The UNet of a diffusers-style model folder (or of its ``unet/`` folder), on the meta device.

    Built from ``unet/config.json`` alone: module names, parameter shapes and counts are real,
    the tensors hold no data (nothing is read from the weights file, so this is quick for any
    model). A missing or unreadable config is a :class:`MemrlError`.
    """
    import torch
    from diffusers import UNet2DConditionModel

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MemrlError(f"model folder {folder} does not exist (create one with `memrl pretrain --out {folder}`)")
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    if not (unet_dir / "config.json").is_file():
        raise MemrlError(f"model folder {folder} has no unet/config.json (expected a diffusers-style folder with unet/, e.g. from memrl pretrain)")
    try:
        config = UNet2DConditionModel.load_config(unet_dir, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise MemrlError(f"cannot read {unet_dir / 'config.json'}: {str(exc).splitlines()[0]}") from None
    cls_name = config.get("_class_name", "UNet2DConditionModel")
    if cls_name != "UNet2DConditionModel":
        raise MemrlError(f"{unet_dir / 'config.json'} describes a {cls_name}; memrl works with UNet2DConditionModel")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                unet = UNet2DConditionModel.from_config(config)
    except Exception as exc:  # noqa: BLE001 - a config diffusers cannot build
        raise MemrlError(f"cannot build the UNet of {folder} from {unet_dir / 'config.json'}: {type(exc).__name__}: {exc}") from None
    return unet.eval()


@dataclass
class ResolvedModel:
    unet: Any
    path: str
    origin: str
    units: tuple[str, ...]
    granularity: str


def resolve_model(src: ExportSource, pretrained: str | Path | None = None) -> ResolvedModel:
    """The base model's UNet, units and granularity for ``src``, checked against its mask.

    The model: ``pretrained`` (``--pretrained``), else the one the source names, else (a replay)
    its merged model, which has the same UNet architecture. The granularity: the run's, else the
    one whose units fit the mask.
    """
    from memrl.peft_masking import GRANULARITIES, enumerate_units

    if pretrained is not None:
        path, origin = str(pretrained), "--pretrained"
    else:
        tried = []
        path = origin = None
        for cand, why in ((src.pretrained, src.pretrained_from), (src.fallback_model, "the replay's fine-tuned model")):
            if cand is None:
                continue
            if (Path(cand).expanduser() / "unet" / "config.json").is_file():
                path, origin = str(cand), why
                break
            tried.append(f"{cand} ({why}) is not a model folder")
        if path is None:
            detail = "; ".join(tried) or f"{src.path} names none"
            raise MemrlError(f"cannot find the base model of {src.path}: {detail}; pass --pretrained DIR")
    unet = load_unet_structure(path)
    bits = src.mask_bits
    if src.granularity is not None:
        if src.granularity not in GRANULARITIES:
            raise MemrlError(f"{src.config_path or src.path}: unknown granularity {src.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        granularity = src.granularity
        units = tuple(enumerate_units(unet, granularity))
        if src.units is not None and src.units != units:
            raise MemrlError(
                f"{src.path} was made for the units {', '.join(src.units)}; the model {path} ({origin}) has the "
                f"{granularity!r} units {', '.join(units) or '(none)'}: pass the run's base model with --pretrained"
            )
    else:
        fits = []
        for g in GRANULARITIES:
            us = tuple(enumerate_units(unet, g))
            if (src.units is not None and us == src.units) or (
                src.units is None and len(us) == len(bits) and [u for u, b in zip(us, bits) if b == "1"] == list(src.mask_units)
            ):
                fits.append((g, us))
        if not fits:
            raise MemrlError(
                f"the mask of {src.path} ({len(bits)} bits, units {', '.join(src.mask_units) or 'none'}) fits the model {path} "
                f"({origin}) at no granularity ({', '.join(GRANULARITIES)}): pass the run's base model with --pretrained"
            )
        granularity, units = fits[0]
    _check_selection(units, bits, src.mask_units, src.path, f" (against the {granularity!r} units of {path})")
    return ResolvedModel(unet, path, origin, units, granularity)


# ============================================================================ export
@dataclass
class _Plan:
    """Everything an export writes, decided (and checked) before anything is written."""

    record: dict
    texts: dict[str, str] = field(default_factory=dict)
    copies: dict[str, Path] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)  # subfolder ("" = top) -> peft config
    inputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _record(src: ExportSource, model: ResolvedModel | None) -> dict:
    units = model.units if model is not None else src.units
    rec = {
        "format": MASK_FORMAT,
        "version": MASK_VERSION,
        "source": str(src.path),
        "source_kind": src.kind,
        "dataset": src.dataset,
        "method": src.method,
        "lr": src.lr,
        "rank": src.rank,
        "granularity": model.granularity if model is not None else src.granularity,
        "pretrained": model.path if model is not None else src.pretrained,
        "units": list(units) if units is not None else None,
        "bits": [int(b) for b in src.mask_bits],
        "selected": list(src.mask_units),
        "mask_bits": src.mask_bits,
    }
    if src.metrics is not None:
        rec["metrics"] = src.metrics
    return rec


def _plan_json(src: ExportSource, pretrained: str | Path | None) -> _Plan:
    model = resolve_model(src, pretrained) if (pretrained is not None or src.units is None) else None
    plan = _Plan(_record(src, model))
    if model is not None:
        plan.inputs.append(Path(model.path))
    return plan


def _attention_targets(model: ResolvedModel, selected: Sequence[str]) -> tuple[list[str], list[str]]:
    """(exact projection module names inside ``selected``, selected units without any)."""
    from memrl.peft_masking.registry import attention_projections

    modules = dict(model.unet.named_modules())
    targets, empty = [], []
    for u in selected:
        names = [n for n, _ in attention_projections(u, modules[u])]
        targets += names
        if not names:
            empty.append(u)
    return targets, empty


def _plan_peft(src: ExportSource, pretrained: str | Path | None) -> _Plan:
    from memrl.peft_masking import get_method
    from memrl.peft_masking.registry import peft_config

    model = resolve_model(src, pretrained)
    if not src.mask_units:
        raise MemrlError(f"the mask of {src.path} selects no unit (the pretrained model): there is nothing for a LoRA config to target")
    targets, empty = _attention_targets(model, src.mask_units)
    if not targets:
        raise MemrlError(
            f"the selected units of {src.path} ({', '.join(src.mask_units)}) hold no attention projections "
            f"({', '.join(PROJECTIONS)}) in {model.path}: a LoRA config would target nothing"
            + ("; pick another --dataset entry" if src.kind == "train" else "")
        )
    plan = _Plan(_record(src, model), inputs=[Path(model.path)])
    if empty:
        plan.warnings.append(
            f"unit(s) {', '.join(empty)} hold no attention projections ({', '.join(PROJECTIONS)}): the LoRA config leaves them out"
            + (f" ({src.method} trained them in the run)" if not get_method(src.method).peft_adapter and src.method != "attention" else "")
        )
    lora = get_method("lora")
    alpha = float(src.rank)
    plan.configs[""] = peft_config(lora, targets, src.rank, alpha, {})
    lora_lr, lora_lr_from = (src.lr, "the run") if src.method == "lora" and src.lr else (lora.default_lr, "memrl's default for lora")
    info: dict[str, Any] = {
        "target_modules": targets,
        "empty_units": empty,
        "configs": {"lora": {"folder": ".", "r": src.rank, "lora_alpha": alpha, "learning_rate": lora_lr, "learning_rate_from": lora_lr_from}},
    }
    spec = get_method(src.method)
    if spec.peft_adapter and spec.name != "lora":
        plan.configs[spec.name] = peft_config(spec, targets, src.rank, alpha, {})
        info["configs"][spec.name] = {"folder": spec.name, "r": src.rank, "alpha": alpha, "learning_rate": src.lr, "learning_rate_from": "the run"}
    plan.record["peft"] = info
    plan.texts[README_FILE] = _peft_readme(src, model, targets, empty, lora_lr, lora_lr_from, sorted(k for k in plan.configs if k))
    plan.summary = {"target_modules": len(targets), "configs": ["lora", *sorted(k for k in plan.configs if k)]}
    return plan


def _peft_readme(src: ExportSource, model: ResolvedModel, targets: list[str], empty: list[str], lr: float, lr_from: str, extra: list[str]) -> str:
    lines = [
        "# LoRA config of a memrl mask",
        "",
        f"Written by `memrl export --format peft` from `{src.path}` ({src.kind}, dataset {src.dataset or 'n/a'}).",
        f"The run fine-tuned with `{src.method}` at learning rate {src.lr} (rank {src.rank}) in the units:",
        "",
        *[f"* `{u}`" for u in src.mask_units],
        "",
        f"`adapter_config.json` is a peft `LoraConfig` (r={src.rank}, lora_alpha={float(src.rank)}) whose `target_modules` are",
        f"exactly the {len(targets)} attention projections ({', '.join(PROJECTIONS)}) inside those units of the UNet of",
        f"`{model.path}` ({model.granularity!r} units). Use it in place of the all-layers LoraConfig of diffusers'",
        "`train_text_to_image_lora.py`:",
        "",
        "```python",
        "from peft import LoraConfig",
        "unet.requires_grad_(False)",
        "unet.add_adapter(LoraConfig.from_pretrained(\"THIS_FOLDER\"))  # only the selected units train",
        "params = [p for p in unet.parameters() if p.requires_grad]",
        f"optimizer = torch.optim.AdamW(params, lr={lr})  # {lr_from}",
        "```",
    ]
    if empty:
        lines += ["", f"Units without attention projections, left out: {', '.join(empty)}."]
    for m in extra:
        lines += ["", f"`{m}/adapter_config.json` is the run's own method ({m}) on the same modules (`{m}` config of peft)."]
    lines += ["", f"`{MASK_FILE}` holds the mask, its source and metrics."]
    return "\n".join(lines) + "\n"


def _plan_diffusers(src: ExportSource, pretrained: str | Path | None) -> _Plan:
    from memrl.peft_masking import get_method
    from memrl.peft_masking.export import DIFFUSERS_LORA_WEIGHTS_NAME, PEFT_CONFIG_NAME

    spec = get_method(src.method)
    if src.kind == "train":
        raise MemrlError(
            f"{src.folder} is a training run: it holds the best mask but no fine-tuned weights. Run "
            f"`memrl replay --policy {src.folder / 'policy.zip'} --dataset DATASET --out OUT` first (it fine-tunes with the "
            f"policy's mask and saves the weights), then `memrl export OUT --format diffusers`; or export this mask "
            f"with --format peft (a LoRA config of its units)"
        )
    if src.kind == "mask":
        raise MemrlError(f"{src.path} holds a mask, no fine-tuned weights; export a replay folder (memrl replay writes the weights), or use --format peft")
    merged = (
        f"the fine-tuned model, adaptation merged, is the diffusers folder {src.model_dir} "
        f"(DiffusionModel.from_pretrained / UNet2DConditionModel.from_pretrained('{src.model_dir / 'unet'}'))"
        if src.model_dir is not None
        else f"and {src.folder} holds no model/ folder either"
    )
    if src.adapter_dir is None:
        if not spec.peft_adapter:
            raise MemrlError(f"the replay in {src.folder} fine-tuned with {src.method}, which has no LoRA weights to export: {merged}")
        raise MemrlError(f"the replay in {src.folder} saved no adapter/ folder (its {src.method} mask trained nothing, or the folder was removed); {merged}")
    weights = src.adapter_dir / DIFFUSERS_LORA_WEIGHTS_NAME
    if not weights.is_file():
        kind = "in peft's format (adapter_config.json + adapter_model.safetensors)" if (src.adapter_dir / PEFT_CONFIG_NAME).is_file() else "without weights"
        raise MemrlError(
            f"the adapter {src.adapter_dir} ({src.method}) is {kind}, with no diffusers LoRA file {DIFFUSERS_LORA_WEIGHTS_NAME}: "
            f"diffusers loads LoRA only; load it with peft.PeftModel.from_pretrained(base_unet, '{src.adapter_dir}'), or use {merged}"
        )
    modules = _check_lora_file(weights)
    plan_warnings = []
    model = None
    try:
        model = resolve_model(src, pretrained)
    except MemrlError as exc:
        if pretrained is not None:
            raise
        plan_warnings.append(f"the adapter's module names were not checked against a base model ({exc})")
    if model is not None:
        names = {n for n, _ in model.unet.named_modules()}
        missing = sorted(m for m in modules if m not in names)
        if missing:
            raise MemrlError(
                f"{weights} adapts {len(missing)} module(s) the UNet of {model.path} ({model.origin}) lacks (e.g. {missing[0]}): "
                "it was fine-tuned from another model; pass its base model with --pretrained"
            )
        outside = sorted({m for m in modules if not any(m.startswith(u + ".") for u in src.mask_units)})
        if outside:
            raise MemrlError(f"{weights} adapts module(s) outside the replay's mask units ({', '.join(src.mask_units)}), e.g. {outside[0]}")
    plan = _Plan(_record(src, model), copies={DIFFUSERS_LORA_WEIGHTS_NAME: weights}, inputs=[src.adapter_dir], warnings=plan_warnings)
    if model is not None:
        plan.inputs.append(Path(model.path))
    plan.record["diffusers"] = {"weights": DIFFUSERS_LORA_WEIGHTS_NAME, "from": str(weights), "modules": len(modules), "rank": src.rank}
    plan.summary = {"modules": len(modules)}
    return plan


def _check_lora_file(weights: Path) -> list[str]:
    """The UNet module names a diffusers LoRA file adapts; a :class:`MemrlError` if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise MemrlError(f"cannot read {weights}: {exc}") from None
    if not keys:
        raise MemrlError(f"{weights} holds no tensors")
    bad = [k for k in keys if not k.startswith("unet.") or ".lora_" not in k]
    if bad:
        raise MemrlError(f"{weights} is not a diffusers UNet LoRA file (key {bad[0]!r}; expected unet.<module>.lora_A/lora_B.weight)")
    return sorted({k[len("unet.") :].split(".lora_", 1)[0] for k in keys})


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it."""
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


def _check_out(out: Path, force: bool, inputs: Sequence[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise MemrlError(f"--out {out} is a file; give a folder")
    for inp in inputs:
        if _inside(inp, out):
            raise MemrlError(f"--out {out} would replace {inp}, an input of this export; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MemrlError(f"--out {out} exists and is not empty; pass --force to replace it")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write(plan: _Plan, tmp: Path) -> list[str]:
    from peft import PeftConfig

    files = []
    for sub, cfg in plan.configs.items():
        folder = tmp / sub if sub else tmp
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(str(folder))
        back = PeftConfig.from_pretrained(str(folder))  # what a user's load gives
        if type(back) is not type(cfg) or set(back.target_modules) != set(cfg.target_modules):
            raise RuntimeError(f"memrl bug: the exported {type(cfg).__name__} in {folder} does not load back the same")
        files.append(str(Path(sub) / "adapter_config.json") if sub else "adapter_config.json")
    for name, src in plan.copies.items():
        shutil.copyfile(src, tmp / name)
        if _sha256(tmp / name) != _sha256(src):
            raise MemrlError(f"copying {src} to the export changed its contents (disk full?)")
        files.append(name)
    for name, text in plan.texts.items():
        (tmp / name).write_text(text)
        files.append(name)
    (tmp / MASK_FILE).write_text(json.dumps(plan.record, indent=2) + "\n")
    files.append(MASK_FILE)
    return sorted(files)


_PLANNERS: dict[str, Callable[[ExportSource, Any], _Plan]] = {"json": _plan_json, "peft": _plan_peft, "diffusers": _plan_diffusers}


def export(
    source: str | Path,
    fmt: str,
    out: str | Path,
    *,
    dataset: str | None = None,
    pretrained: str | Path | None = None,
    force: bool = False,
) -> dict:
    """Export ``source``'s mask (and weights) as ``fmt`` into the folder ``out`` (module docstring).

    Returns a JSON-ready summary: ``format``, ``out``, ``files`` (relative paths), ``source``,
    ``source_kind``, ``dataset``, ``method``, ``lr``, ``rank``, ``selected``, ``warnings`` and
    format-specific counts. Every check runs before anything is written; ``out`` is written
    atomically and replaces an existing non-empty folder only with ``force``.
    """
    from memrl.utils.io import atomic_dir

    if fmt not in FORMATS:
        raise MemrlError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    src = read_source(source, dataset)
    plan = _PLANNERS[fmt](src, pretrained)
    out = Path(out).expanduser()
    _check_out(out, force, [src.path, *plan.inputs])
    with atomic_dir(out) as tmp:
        files = _write(plan, tmp)
    return {
        "format": fmt,
        "out": str(out),
        "files": files,
        "source": str(src.path),
        "source_kind": src.kind,
        "dataset": src.dataset,
        "method": src.method,
        "lr": src.lr,
        "rank": src.rank,
        "granularity": plan.record.get("granularity"),
        "selected": list(src.mask_units),
        **plan.summary,
        "warnings": plan.warnings,
    }


# ============================================================================ units
def unit_table(pretrained: str | Path, granularity: str = "attention", methods: Sequence[str] | None = None, rank: int = 4) -> dict:
    """Every unit of the model in ``pretrained`` at ``granularity`` with its parameter count and,
    per method, the parameters that method would train if that unit alone were selected.

    ``methods`` (default: all of :data:`memrl.peft_masking.METHODS`) are computed one
    ``apply_peft`` each on a copy of the meta-device UNet with every unit selected; since each
    method acts inside each unit independently, ``per_unit`` of that call is each unit's
    one-unit count. ``rank`` configures lora/loha/lokr as in fine-tuning.
    """
    from memrl.peft_masking import GRANULARITIES, METHODS, Mask, apply_peft, enumerate_units, get_method

    if granularity not in GRANULARITIES:
        raise MemrlError(f"unknown unit granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    methods = list(METHODS if methods is None else methods)
    for m in methods:
        get_method(m)
    if not isinstance(rank, int) or rank < 1:
        raise MemrlError(f"--rank must be a positive integer, got {rank!r}")
    unet = load_unet_structure(pretrained)
    units = enumerate_units(unet, granularity)
    modules = dict(unet.named_modules())
    rows = [{"name": u, "params": sum(p.numel() for p in modules[u].parameters()), "trainable": {}} for u in units]
    if units:
        for m in methods:
            result = apply_peft(copy.deepcopy(unet), Mask.parse("all", units), m, rank=rank, granularity=granularity)
            for row in rows:
                row["trainable"][m] = int(result.per_unit[row["name"]])
    return {
        "model": str(pretrained),
        "granularity": granularity,
        "rank": rank,
        "methods": methods,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "units": rows,
    }


def format_unit_table(table: dict) -> str:
    """``table`` (from :func:`unit_table`) as aligned text, one row per unit."""
    methods = table["methods"]
    header = ["unit", "params", *methods]
    body = [[r["name"], str(r["params"]), *(str(r["trainable"].get(m, "")) for m in methods)] for r in table["units"]]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt_row = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()  # noqa: E731
    lines = [fmt_row(header), *map(fmt_row, body)]
    n = len(table["units"])
    in_units = sum(r["params"] for r in table["units"])
    lines.append(
        f"{n} {table['granularity']!r} unit(s) of {table['model']}: {in_units} of the UNet's {table['unet_params']} parameters; "
        f"method columns: parameters trained if that unit alone were selected (rank {table['rank']})"
    )
    return "\n".join(lines)


# ============================================================================ datasets
#: One line per built-in variant (the style transforms of :mod:`memrl.data.digits`), used when
#: digits.py carries no description of its own.
_VARIANT_DESCRIPTIONS = {
    "inverted": "contrast inverted: dark strokes on a white background",
    "thick": "strokes thickened (3x3 max filter)",
    "rotated": "rotated by 90 degrees",
    "blurred": "blurred (5x5 binomial filter), contrast re-stretched",
    "framed": "shrunk to 12x12 inside a white frame",
    "mirrored": "mirrored left to right",
}

USER_FORMATS: tuple[dict, ...] = (
    {
        "name": "image folder + metadata",
        "spec": "DIR",
        "description": "images with DIR/metadata.csv or DIR/metadata.jsonl: file_name and a caption column (text, caption, "
        "or any name with --caption-column / env.caption_column), optional split (train; heldout / test / validation)",
    },
    {
        "name": "imagefolder split folders",
        "spec": "DIR",
        "description": "DIR/train/ and DIR/test/ (or validation/), each with its own metadata file (the Hugging Face imagefolder "
        "layout); test/ is the held-out set",
    },
    {
        "name": "image folder + .txt captions",
        "spec": "DIR",
        "description": "each image with a caption file of the same stem (a.png + a.txt)",
    },
    {
        "name": "CSV, JSONL or parquet sheet",
        "spec": "FILE.csv | FILE.jsonl | FILE.parquet",
        "description": "one row per image: an image path column (path / file_name / image, or --image-column) and a caption "
        "column (caption / text / report, or --caption-column, e.g. MIMIC-CXR's impression), paths relative to the sheet, "
        "optional split column; .parquet needs pip install pyarrow",
    },
    {
        "name": "memorization sheet",
        "spec": "--mem-sheet FILE / env.mem_sheets",
        "description": "training images (same image column) that form the memorization probe, in order; each must be in the "
        "training split",
    },
)


def _variant_description(digits: Any, name: str) -> str:
    for attr in ("DESCRIPTIONS", "VARIANT_DESCRIPTIONS"):
        table = getattr(digits, attr, None)
        if isinstance(table, Mapping) and isinstance(table.get(name), str):
            return table[name]
    doc = getattr(digits.VARIANTS.get(name), "__doc__", None)
    if doc and doc.strip():
        return doc.strip().splitlines()[0]
    return _VARIANT_DESCRIPTIONS.get(name, "")


def _family_ranges() -> list[dict] | None:
    """``memrl.data.family.RANGES`` as rows, or None while that module does not exist."""
    try:
        module = importlib.import_module("memrl.data.family")
    except ModuleNotFoundError as exc:
        if exc.name == "memrl.data.family":
            return None
        raise
    ranges = getattr(module, "RANGES", None)
    if not isinstance(ranges, Mapping):
        return None
    rows = []
    for name, span in ranges.items():
        start, stop = (int(v) for v in span)
        rows.append({"name": str(name), "start": start, "stop": stop, "size": stop - start})
    return rows


def dataset_listing() -> dict:
    """The datasets memrl reads: ``builtin`` variants (name, train / heldout sizes, description),
    ``pretraining`` (the public split), user ``formats``, and ``family`` (id ranges of
    ``memrl.data.family.RANGES``) once that module exists."""
    from memrl.data import digits
    from memrl.data.loaders import builtin_names

    def sizes(name: str) -> dict:
        return {"train": len(digits.split_indices(f"{name}/train")), "heldout": len(digits.split_indices(f"{name}/heldout"))}

    out: dict[str, Any] = {
        "builtin": [{"name": n, **sizes(n), "description": _variant_description(digits, n)} for n in builtin_names()],
        "pretraining": [{"name": "public", **sizes("public"), "description": "the original-style public split the embedded model is pretrained on"}],
        "formats": [dict(f) for f in USER_FORMATS],
    }
    family = _family_ranges()
    if family is not None:
        out["family"] = family
    return out


def format_dataset_listing(listing: dict) -> str:
    """``listing`` (from :func:`dataset_listing`) as text sections."""

    def table(rows: list[list[str]], right: set[int]) -> list[str]:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]

    lines = ["built-in variants (embedded digits; pass the name as --dataset):"]
    rows = [["name", "train", "heldout", "description"]]
    rows += [[d["name"], str(d["train"]), str(d["heldout"]), d["description"]] for d in listing["builtin"]]
    lines += table(rows, {1, 2})
    lines += ["", "pretraining split (not a fine-tuning target):"]
    rows = [["name", "train", "heldout", "description"]]
    rows += [[d["name"], str(d["train"]), str(d["heldout"]), d["description"]] for d in listing["pretraining"]]
    lines += table(rows, {1, 2})
    if "family" in listing:
        lines += ["", "family (family:N specs), id ranges [start, stop):"]
        rows = [["name", "start", "stop", "size"]]
        rows += [[d["name"], str(d["start"]), str(d["stop"]), str(d["size"])] for d in listing["family"]]
        lines += table(rows, {1, 2, 3})
    lines += ["", "your own data (pass the path as --dataset):"]
    lines += [f"  {f['name']} ({f['spec']}): {f['description']}" for f in listing["formats"]]
    return "\n".join(lines)
