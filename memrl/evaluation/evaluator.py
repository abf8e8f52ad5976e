"""One honest evaluation of a PEFT mask: fine-tune, generate, measure, reward.

This is the inner loop of MemControl's bi-level optimisation and the body of every environment
step. :class:`Evaluator` loads the pretrained model and the feature network once and answers
requests ``(dataset, method, mask, lr, seed, config)``; each starts from the pretrained weights.

Measured for every request (docs/design.md, section 5), seeded, with the model in eval mode:

* quality: FID and KID (torchmetrics) of samples for held-out captions against the held-out real
  images, on the feature network's embedding; real-set statistics are computed once per dataset;
* memorization: the noise-norm score on the memorization pairs; nearest-neighbour ``nn_own_rate``,
  ``replication_rate`` and AMD of ``gens_per_prompt`` generations per memorization prompt against
  all training images; the extraction attack on the same generations;
* cost: trainable parameters (count and fraction of the UNet) and seconds.

The reward needs a reference (full fine-tuning with the same budget, data and seed), evaluated
once and then answered from the cache like any other request.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from memrl.data.dataset import DatasetSplits
from memrl.errors import EvaluationFailed, MemrlError, NonFiniteError
from memrl.evaluation.cache import EvalCache, request_key
from memrl.evaluation.config import EvalConfig
from memrl.evaluation.reward import reward as compute_reward
from memrl.metrics import memorization as mm
from memrl.metrics.quality import _Features
from memrl.data.image_store import passes
from memrl.models.feature_net import FeatureNet
from memrl.models.pipeline import DiffusionModel, resolve_model_location
from memrl.metrics.names import SUMMARY_METRICS
from memrl.peft_masking import Mask, enumerate_units, trainable_units
from memrl.training.distributed import DataParallel
from memrl.training.finetune import FinetuneConfig, autocast_for, finetune, probe_groups
from memrl.utils.images import save_grid, save_pairs

#: Bumped whenever a change to this code can change a result: it is part of every cache key.
EVAL_VERSION = 3

#: ``FinetuneConfig`` fields added after cache keys of this EVAL_VERSION were stored: a request
#: leaves each out while it is at its default, so a config that does not use them has exactly the
#: request (and key) it had before they existed. Every fine-tuning field added later goes here,
#: with a default that reproduces the old behaviour (tests/test_mitigations.py checks a stored key).
KEY_FIELDS_OMITTED_AT_DEFAULT: tuple[str, ...] = (
    "caption_random_words",
    "guidance_filter_threshold",
    "mixed_precision",
    "grad_accumulation",
    "gradient_checkpointing",
)


@contextmanager
def preserved_rng():  # noqa: ANN201
    """Run a block without changing the global torch / numpy / python random state."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


#: Files of a model folder that describe the run that made it, not the model.
_NOT_HASHED = frozenset({"pretrain_metrics.json"})


def _file_hash(folder: Path, skip: str | None = None) -> str:
    """Content hash of a model folder's weights and configs (``.safetensors``, ``.json``, ``.bin``).

    ``skip`` names a top-level subfolder to leave out (the feature network, hashed on its own).
    ``pretrain_metrics.json`` is left out too: it records how long pretraining took, so two
    bit-identical pretrainings would otherwise get two keys.
    """
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if skip is not None and rel.parts and rel.parts[0] == skip:
            continue
        if rel.as_posix() in _NOT_HASHED:
            continue
        if p.is_file() and p.suffix in (".safetensors", ".json", ".bin", ".pt", ".txt"):
            h.update(rel.as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def runtime_key(device: str, dtype: torch.dtype) -> dict:
    """What the numbers depend on besides the request: library versions, device, dtype, threads.

    CPU kernels reduce in an order that depends on the thread count, so a 1-thread worker and a
    2-thread process do not produce bit-identical fine-tunes; the thread count is part of the key
    on the CPU (on a GPU it is irrelevant).
    """
    import diffusers
    import peft

    dev = torch.device(device)
    key = {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__, "device": dev.type, "dtype": str(dtype).replace("torch.", "")}
    if dev.type == "cpu":
        key["cpu_threads"] = torch.get_num_threads()
    return key


def build_request(
    model_hash: str,
    feature_net_hash: str,
    units: tuple[str, ...] | list[str],
    granularity: str,
    dataset_fingerprint: str,
    mask_bits: str,
    cfg: EvalConfig,
    runtime: dict | None,
    resolution: int | None = None,
) -> dict:
    """The content of a cache key, computable without loading a model (the lookup evaluator uses it).

    The reward settings are left out: the reward is computed from a cached result and the cached
    reference, so changing ``lam`` or ``mu`` reuses every evaluation. The fine-tune runs over
    ``units`` at ``granularity`` whatever ``cfg.finetune.granularity`` says.

    Compatibility rule: a fine-tuning field added after keys were stored (the mitigation options,
    :data:`KEY_FIELDS_OMITTED_AT_DEFAULT`) is left out of the request while it is at its default,
    so every stored evaluation and lookup-table row keeps its key; set to anything else it is part
    of the key like any other field. The same holds for ``resolution`` (a size below the model's
    native one): absent at the native size. EVAL_VERSION is bumped only when a result would change.
    """
    if cfg.finetune.granularity != granularity:
        cfg = replace(cfg, finetune=replace(cfg.finetune, granularity=granularity))
    config = cfg.to_dict()
    config.pop("reward", None)
    for name in KEY_FIELDS_OMITTED_AT_DEFAULT:
        if config["finetune"][name] == _FINETUNE_DEFAULTS[name]:
            del config["finetune"][name]
    request = {
        "eval_version": EVAL_VERSION,
        "model": model_hash,
        "feature_net": feature_net_hash,
        "dataset": dataset_fingerprint,
        "method": cfg.finetune.method,
        "mask": mask_bits,
        "units": list(units),
        "lr": cfg.finetune.resolved_lr(),
        "config": config,
        "runtime": runtime,
    }
    if resolution is not None:
        request["resolution"] = int(resolution)
    return request


#: What each fine-tuning field is when nobody sets it (for the rule above).
_FINETUNE_DEFAULTS: dict = asdict(FinetuneConfig())


#: A held-out set smaller than this cannot give FID/KID at all (a clear error instead of a traceback).
MIN_HELDOUT = 8


def _check_finite(what: str, x: torch.Tensor | np.ndarray) -> None:
    """Raise :class:`NonFiniteError` when ``x`` holds a NaN or an infinity (before a metric kernel sees it)."""
    ok = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not ok:
        raise NonFiniteError(f"{what} are not finite (NaN or inf): the fine-tuned model diverged; lower the learning rate")


def load_feature_net(spec: str | Path | None, pretrained_dir: Path, channels: int, size: int) -> tuple[torch.nn.Module, str]:
    """``(feature network, its content hash)`` for ``--feature-net`` / ``env.feature_net``.

    ``spec``: a memrl feature-network folder (``config.json`` + ``model.safetensors``), an
    importable ``package.module:callable`` returning a module with ``num_features``
    (:func:`memrl.models.feature_net.load_feature_module`), or ``None`` for the model's own
    ``feature_net/``. The hash (part of every cache key) is the folder's file hash, or for a module
    its spec and weights. The network is checked on two blank ``channels x size x size`` images:
    it must give ``2 x num_features`` features.
    """
    from memrl.models.feature_net import is_module_spec, load_feature_module, module_hash

    if spec is not None and is_module_spec(spec):
        net: torch.nn.Module = load_feature_module(str(spec))
        digest, where = module_hash(net), str(spec)
    else:
        fn_dir = Path(spec) if spec else pretrained_dir / "feature_net"
        if not fn_dir.is_dir():
            raise MemrlError(
                f"no feature network at {fn_dir}: pass --feature-net FOLDER or module:callable (config env.feature_net); "
                "FID and nearest-neighbour features need one (memrl pretrain writes feature_net/ beside its model; "
                "memrl feature-net trains one on a public image folder)"
            )
        net, digest, where = FeatureNet.from_pretrained(fn_dir), _file_hash(fn_dir), str(fn_dir)
    with torch.no_grad(), preserved_rng():
        try:
            param = next(iter(net.parameters()), None)  # a user's module may already sit on a GPU
            probe = net(torch.zeros(2, channels, size, size, device=param.device if param is not None else "cpu"))
        except (RuntimeError, ValueError, MemrlError) as exc:
            raise MemrlError(f"feature network {where} fails on {channels} x {size} x {size} images in [-1, 1]: {str(exc).splitlines()[0]}") from None
    if tuple(probe.shape) != (2, int(net.num_features)):
        raise MemrlError(f"feature network {where} maps 2 images to shape {tuple(probe.shape)}, expected (2, num_features={net.num_features})")
    net.requires_grad_(False)
    return net.eval(), digest


def _answer(message: tuple) -> dict:
    """Process 0's broadcast answer, on another process: its result, or its failure raised again."""
    if message[0] == "ok":
        return message[1]
    if message[1] == "MemrlError":
        raise MemrlError(message[2])
    raise EvaluationFailed(message[2])


class Evaluator:
    """Loads a pretrained model folder once and evaluates masks on datasets."""

    def __init__(
        self,
        pretrained: str | Path,
        device: str = "cpu",
        cache: EvalCache | str | Path | None = None,
        feature_net: str | Path | None = None,
        granularity: str = "attention",
        resolution: int | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        """``feature_net``: a feature-network folder or ``package.module:callable`` (see
        :func:`load_feature_net`); default: ``PRETRAINED/feature_net``. ``resolution``: train and
        sample at this many pixels instead of the model's native size (part of the cache key).
        ``parallel``: this process's share when one evaluation is split across processes (see
        :mod:`memrl.training.distributed`): every process runs each fresh evaluation together;
        process 0 alone reads and writes the cache and the pictures and computes the metrics."""
        self.pretrained_dir = resolve_model_location(pretrained)  # a folder, or a Hub id fetched once into the HF cache
        self.model = DiffusionModel.from_pretrained(self.pretrained_dir, device=device).set_resolution(resolution)
        self.resolution = resolution
        net, self.feature_net_hash = load_feature_net(feature_net, self.pretrained_dir, self.model.image_channels, self.model.image_size)
        #: FID/KID, nearest neighbours and the dataset descriptor all use this one network.
        self.feature_net = net.to(device)
        self.granularity = granularity
        self.units = tuple(enumerate_units(self.model.unet, granularity))
        self.model_hash = _file_hash(self.pretrained_dir, skip="feature_net")
        self.cache = EvalCache(cache) if isinstance(cache, (str, Path)) else cache
        self._real_stats: dict[str, tuple] = {}
        self._real_features: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._trainable_units: dict[str, tuple[str, ...]] = {}
        self.parallel = parallel
        self.hits = 0
        self.misses = 0

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.unet.parameters()).dtype

    @property
    def image_size(self) -> int:
        """Side of the images the model makes (datasets are loaded at this size)."""
        return int(self.model.image_size)

    @property
    def image_channels(self) -> int:
        return int(self.model.image_channels)

    # ------------------------------------------------------------------ inputs
    def parse_mask(self, spec: str | Mask) -> Mask:
        if isinstance(spec, Mask):
            if tuple(spec.units) != self.units:
                raise MemrlError(f"mask is over units {list(spec.units)}, the model has {list(self.units)}")
            return spec
        return Mask.parse(spec, self.units)

    def check_data(self, data: DatasetSplits) -> None:
        """Refuse a dataset this model cannot be evaluated on, before anything runs or is written."""
        want = (self.model.image_channels, self.model.image_size, self.model.image_size)
        if data.image_shape != want:
            raise MemrlError(f"dataset {data.name} has images {data.image_shape}, the model makes {want}")
        n = len(data.heldout)
        if n < MIN_HELDOUT:
            raise MemrlError(
                f"dataset {data.name}: {n} held-out image(s); FID/KID need at least {MIN_HELDOUT} "
                "(add images, or mark more rows split=heldout)"
            )

    def trainable_units(self, method: str) -> tuple[str, ...]:
        """The units in which ``method`` has anything to train (e.g. lora needs attention projections)."""
        if method not in self._trainable_units:
            self._trainable_units[method] = tuple(trainable_units(self.model.unet, self.units, method, self.granularity))
        return self._trainable_units[method]

    def effective_mask(self, method: str, mask: Mask, strict: bool = False) -> tuple[Mask, tuple[str, ...]]:
        """``(mask without the units where method trains nothing, those units)``.

        Two masks that differ only in such units train exactly the same parameters, so they are
        one request (one cache entry). ``strict``: refuse a mask whose selected units all train
        nothing (it would silently evaluate the pretrained model under the method's name).
        """
        can = set(self.trainable_units(method))
        empty = tuple(u for u in mask.selected if u not in can)
        if not empty:
            return mask, ()
        if strict and len(empty) == len(mask.selected):
            raise MemrlError(
                f"mask {mask} trains nothing with {method}: {', '.join(empty)} hold no {method} parameters; "
                f"units {method} can train: {', '.join(u for u in self.units if u in can) or '(none)'} "
                "(use mask 'none' for the pretrained model)"
            )
        eff = Mask(mask.units, tuple(int(b and u in can) for u, b in zip(mask.units, mask.bits)))
        return eff, empty

    # ------------------------------------------------------------------ keys
    def request(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig) -> dict:
        """Everything that decides a result (the cache key's content); see :func:`build_request`."""
        return build_request(
            self.model_hash, self.feature_net_hash, self.units, self.granularity, data.fingerprint(), mask.bitstring, cfg, runtime_key(self.device, self.dtype), self.resolution
        )

    # ------------------------------------------------------------------ main entry
    def evaluate(
        self,
        data: DatasetSplits,
        method: str,
        mask: str | Mask,
        cfg: EvalConfig,
        lr: float | None = None,
        seed: int | None = None,
        out_dir: str | Path | None = None,
        with_reward: bool = True,
        progress: bool = False,
        strict: bool = False,
    ) -> dict:
        """Metrics (+ reward against the cached reference run) for one request.

        The mask is reduced to the units where ``method`` trains something (see
        :meth:`effective_mask`); the result's ``mask`` fields name the units actually trained,
        ``proposed_mask_bits`` the mask asked for and ``empty_units`` what was dropped.
        """
        proposed = self.parse_mask(mask)
        mask, empty = self.effective_mask(method, proposed, strict=strict)
        self.check_data(data)
        cfg = cfg.with_method(method, lr, cfg.finetune.seed if seed is None else seed)
        result = self._cached_run(data, mask, cfg, out_dir, progress)
        result["proposed_mask_bits"] = proposed.bitstring
        result["empty_units"] = list(empty)
        if with_reward:
            ref = self.reference(data, cfg, progress=progress)
            result.update(compute_reward(result, ref, cfg.reward))
            result["reference"] = {k: ref[k] for k in SUMMARY_METRICS}
            base = self.base(data, cfg, progress=progress)
            result["base"] = {k: base[k] for k in SUMMARY_METRICS}
            result["nn_own_rate_base"] = base["nn_own_rate"]
        return result

    def base(self, data: DatasetSplits, cfg: EvalConfig, progress: bool = False) -> dict:
        """The pretrained model, not fine-tuned, measured like any mask (cached; one per dataset and seed).

        Its ``nn_own_rate`` is the chance level: how often a generation's nearest training image
        is the probe's own one without ever having seen it (high when captions are class-level or
        the digits look alike). The mitigation and scale options are dropped: nothing is
        fine-tuned, so they change nothing, and the base stays one cache entry.
        """
        bcfg = cfg.without_mitigations().without_scale_options().with_method("full", None, cfg.finetune.seed)
        return self._cached_run(data, Mask.parse("none", self.units), bcfg, None, progress)

    def reference(self, data: DatasetSplits, cfg: EvalConfig, progress: bool = False) -> dict:
        """Full fine-tuning of the whole UNet with the same budget, data and seed (cached).

        Without the mitigation options (:meth:`EvalConfig.without_mitigations`): the reward of a
        mitigated mask is measured against the plain full fine-tune, like every other reward.
        """
        rcfg = cfg.without_mitigations().with_method("full", None, cfg.finetune.seed)
        return self._cached_run(data, Mask.parse("all", self.units), rcfg, None, progress)

    def _cached_run(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig, out_dir, progress: bool) -> dict:  # noqa: ANN001
        """One request through the cache; with ``out_dir`` (pictures wanted) always computed."""
        if self.parallel is not None and out_dir is None:
            return self._cached_run_parallel(data, mask, cfg, progress)
        if self.cache is None or out_dir is not None:
            self.misses += 1
            result = dict(self.run(data, mask, cfg, out_dir=out_dir, progress=progress))
            result["cached"] = False
            return result
        req = self.request(data, mask, cfg)
        key = request_key(req)
        t_lookup = time.time()
        result, computed = self.cache.get_or_compute(key, req, lambda: self.run(data, mask, cfg, progress=progress))
        return self._tallied(result, computed, t_lookup)

    def _tallied(self, result: dict, computed: bool, t_lookup: float) -> dict:
        """A copy of the cache's answer marked ``cached`` (or not), counted as a hit or a miss."""
        result = dict(result)
        result["cached"] = not computed
        if computed:
            self.misses += 1
        else:
            self.hits += 1
            # what this answer cost now; what computing it cost once stays on record
            result["computed_seconds"] = result.get("seconds")
            result["seconds"] = round(time.time() - t_lookup, 4)
        return result

    def _cached_run_parallel(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig, progress: bool) -> dict:
        """:meth:`_cached_run` over several processes: process 0 asks the cache (its own; the
        others need none) and tells the others whether to join a fresh run (``"run"``), then sends
        the answer (``("ok", result)`` or ``("error", kind, message)``) so every process returns or
        raises alike."""
        par = self.parallel
        if not par.is_main:
            message = par.broadcast()
            if message == "run":
                try:
                    self.run(data, mask, cfg)
                except (EvaluationFailed, MemrlError):
                    pass  # process 0's answer below carries the failure
                message = par.broadcast()
            return _answer(message)

        def compute() -> dict:
            par.broadcast("run")
            return self.run(data, mask, cfg, progress=progress)

        try:
            t_lookup = time.time()
            if self.cache is None:
                result, computed = compute(), True
            else:
                req = self.request(data, mask, cfg)
                result, computed = self.cache.get_or_compute(request_key(req), req, compute)
        except Exception as exc:
            if not isinstance(exc, (EvaluationFailed, MemrlError)):
                raise  # a crash: the launcher stops every process
            par.broadcast(("error", "MemrlError" if isinstance(exc, MemrlError) else "failed", str(exc)))
            raise
        result = self._tallied(result, computed, t_lookup)
        par.broadcast(("ok", result))
        return result

    def _on_main(self, measure):  # noqa: ANN001, ANN202
        """``measure()`` on process 0 only; the others get its result, or raise its failure."""
        par = self.parallel
        if par is None:
            return measure()
        if not par.is_main:
            return _answer(par.broadcast())
        try:
            result = measure()
        except (EvaluationFailed, MemrlError) as exc:
            par.broadcast(("error", "MemrlError" if isinstance(exc, MemrlError) else "failed", str(exc)))
            raise
        par.broadcast(("ok", result))
        return result

    # ------------------------------------------------------------------ the evaluation itself
    def run(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig, out_dir=None, progress: bool = False, on_finetuned=None) -> dict:  # noqa: ANN001
        """Fine-tune from the pretrained weights with ``cfg.finetune.method`` and measure (no cache, no reward).

        The method is read from ``cfg`` only (set it with :meth:`EvalConfig.with_method`), so what
        trains and what the result is labelled with cannot differ.

        ``on_finetuned(finetune_result)`` is called after the measurements (e.g. to save weights).
        The caller's random state (torch, numpy, python) is left as it was: a fresh evaluation and
        a cache hit must look the same to the code around them (PPO's sampling, resumed runs).
        """
        with preserved_rng():
            return self._run(data, mask, cfg, out_dir, progress, on_finetuned)

    def _run(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig, out_dir, progress: bool, on_finetuned) -> dict:  # noqa: ANN001
        self.check_data(data)
        t0 = time.time()
        timings: dict[str, float] = {}
        cfg = self._own_units(cfg)
        fcfg = cfg.finetune
        method = fcfg.method
        main = self.parallel is None or self.parallel.is_main
        ft = finetune(self.model, data, mask, fcfg, progress=progress and main, parallel=self.parallel)
        timings["finetune"] = ft.seconds
        model = ft.model
        seed = fcfg.seed

        # -- generations for the memorization prompts (G each, prompt-major) and for FID
        t = time.time()
        mem = ft.memorization_set
        G = cfg.gens_per_prompt
        mem_prompts = [c for c in mem.captions for _ in range(G)]
        fid_prompts = self.fid_prompts(data, mem.captions, cfg.n_fid_samples)
        with autocast_for(fcfg.mixed_precision, self.model.device)():  # sampling in the training's precision
            gens, mem_guidance = self._generate(model, mem_prompts, cfg, seed + 1000)
            fid_samples, held_guidance = self._generate(model, fid_prompts, cfg, seed + 2000)
        gens, fid_samples, mem_guidance, held_guidance = (x.float() for x in (gens, fid_samples, mem_guidance, held_guidance))
        _check_finite("samples for the memorization prompts", gens)
        _check_finite("samples for the held-out prompts", fid_samples)
        timings["sample"] = time.time() - t

        def measure() -> dict:  # process 0's part when the evaluation is split across processes
            # -- quality
            t = time.time()
            fingerprint = data.fingerprint()  # once: it keys the real images' statistics and features below
            quality = self._fid_kid(data, fid_samples, cfg.fid_features, cfg.fid_bootstrap, fingerprint)
            timings["fid_kid"] = time.time() - t
            _check_finite("text-guidance magnitudes", torch.cat([mem_guidance, held_guidance]))
            detection = mm.text_guidance_detection(mem_guidance.numpy(), held_guidance.numpy())

            # -- noise norm
            t = time.time()
            nn_score = mm.noise_norm_score(model, mem.images, mem.captions, cfg.noise_norm_timesteps, cfg.noise_norm_draws, seed=seed + 3000)
            _check_finite("noise-norm scores", np.asarray([nn_score["noise_norm_mean"], nn_score["noise_norm_max"]], dtype=float))
            timings["noise_norm"] = time.time() - t

            # -- nearest neighbours
            t = time.time()
            extractor = self.feature_net if cfg.nn_features == "feature_net" else self._centred_pixels
            real_key = (fingerprint, cfg.nn_features)
            if real_key not in self._real_features:  # the real images' features: once per dataset
                self._real_features[real_key] = (mm.image_features(data.train.images, extractor), mm.image_features(data.heldout.images, extractor))
            train_f, held_f = self._real_features[real_key]
            gen_f = mm.image_features(gens, extractor)
            _check_finite("nearest-neighbour features of the samples", gen_f)
            threshold = mm.calibrate_threshold(held_f, train_f, cfg.replication_quantile)
            owners = np.repeat(np.asarray(ft.memorization_index, dtype=np.int64), G)
            groups = probe_groups(data.train.captions, list(ft.memorization_index))
            shared = sum(len(g) > 1 for g in groups)
            nnm = mm.nn_memorization(gen_f, owners, train_f, threshold, gen_owner_groups=[g for g in groups for _ in range(G)] if shared else None)
            timings["nearest_neighbour"] = time.time() - t

            # -- extraction attack
            t = time.time()
            P = len(mem)
            ext = mm.extraction_attack(gens.reshape(P, G, *gens.shape[1:]), mem.images, cfg.extraction_threshold, cfg.extraction_min_matches)
            timings["extraction"] = time.time() - t

            peft = ft.peft
            result = {
                "dataset": data.name,
                "method": method,
                "mask": str(mask),
                "mask_bits": mask.bitstring,
                "mask_units": list(mask.selected),
                "lr": fcfg.resolved_lr(),
                "seed": seed,
                "fid": quality["fid"],
                "kid": quality["kid"],
                "kid_std": quality["kid_std"],
                "fid_ci_low": quality["fid_ci_low"],
                "fid_ci_high": quality["fid_ci_high"],
                "fid_noise_floor": quality["fid_noise_floor"],
                "fid_n_real": quality["n_real"],
                "fid_n_fake": quality["n_fake"],
                **detection,
                "noise_norm_mean": float(nn_score["noise_norm_mean"]),
                "noise_norm_max": float(nn_score["noise_norm_max"]),
                "nn_own_rate": nnm["nn_own_rate"],
                "replication_rate": nnm["replication_rate"],
                "replication_threshold": threshold,
                "amd": nnm["amd"],
                "extraction_rate": float(ext["extraction_rate"]),
                "trainable_params": int(peft.trainable_params),
                "trainable_fraction": float(peft.trainable_fraction),
                "unet_params": int(peft.unet_params),
                "train_images": ft.train_size,
                "memorization_set": len(mem),
                "memorization_shared_captions": int(shared),
                "final_loss": float(np.mean(ft.losses[-20:])) if ft.losses else None,
                "warnings": self._fid_warnings(quality),
                "timings": {k: round(v, 3) for k, v in timings.items()},
                "seconds": round(time.time() - t0, 3),
            }
            if fcfg.guidance_filter_threshold is not None:  # only then: a default result has today's fields
                result["filtered_share"] = ft.filtered_share
                result["filtered_samples"] = ft.samples_filtered
                result["filter_skipped_steps"] = ft.skipped_steps
            if out_dir is not None:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                save_grid(gens, out / "samples.png", nrow=G)
                nearest = data.train.images[torch.as_tensor(nnm["nn_index"])]
                pick = list(range(0, len(gens), max(1, G // 2)))[:16]
                save_pairs(gens[pick], nearest[pick], out / "nearest_neighbours.png")
                save_grid(fid_samples[:64], out / "heldout_prompt_samples.png", nrow=8)
            if on_finetuned is not None:
                on_finetuned(ft)
            return result

        return self._on_main(measure)

    # ------------------------------------------------------------------ helpers
    def _generate(self, model: DiffusionModel, prompts: list[str], cfg: EvalConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and text-guidance magnitudes for ``prompts``; split across processes when the
        evaluation is (each samples its contiguous share with the whole call's noise; shares gathered in order)."""
        par = self.parallel
        out = model.generate(
            prompts, cfg.inference_steps, cfg.guidance_scale, seed=seed, batch_size=cfg.sample_batch_size,
            return_guidance_norms=True, part=None if par is None else par.shard(len(prompts)),
        )
        if par is None:
            return out
        return par.gather_cat(out[0]), par.gather_cat(out[1])

    def _own_units(self, cfg: EvalConfig) -> EvalConfig:
        """Fine-tune over this evaluator's units (its granularity), whatever the config said.

        Applied where the granularity matters: the cache key (:meth:`request`) and the run itself.
        """
        if cfg.finetune.granularity == self.granularity:
            return cfg
        return replace(cfg, finetune=replace(cfg.finetune, granularity=self.granularity))

    @staticmethod
    def fid_prompts(data: DatasetSplits, memorization_captions: list[str], n: int) -> list[str]:
        """``n`` held-out captions, cycled, never a memorization prompt that names one training image.

        A held-out caption equal to a probe's *unique* caption would ask the model for a memorized
        image and score memorization as quality, so it is left out. Class-level captions
        (``"digit 3"`` for every 3) are kept: leaving them out would drop whole classes from the
        samples while the real held-out set keeps them; that the model may answer them with a
        memorized probe is then part of its quality.
        """
        counts: dict[str, int] = {}
        for c in data.train.captions:
            counts[c] = counts.get(c, 0) + 1
        mem = {c for c in memorization_captions if counts.get(c, 0) == 1}
        held = [c for c in data.heldout.captions if c not in mem]
        if not held:
            raise MemrlError(f"dataset {data.name}: every held-out caption is also a memorization prompt; FID needs other prompts")
        return [held[i % len(held)] for i in range(n)]

    def _fid_warnings(self, quality: dict) -> list[str]:
        """Say when FID is statistically weak: fewer samples than feature dimensions make the
        covariance singular and FID biased (KID, unbiased, is the number to read then)."""
        dim = int(quality["feature_dim"])
        weak = [f"{quality[k]} {what}" for k, what in (("n_real", "held-out images"), ("n_fake", "samples")) if quality[k] < dim]
        if not weak:
            return []
        return [f"FID is statistically weak: {' and '.join(weak)} for {dim}-d features (singular covariance); compare KID, or use more held-out images"]

    @staticmethod
    def _centred_pixels(x: torch.Tensor) -> torch.Tensor:
        """Flattened pixels minus each image's mean: cosine is then the pixel correlation, which is
        not dominated by the uniform background the way raw-pixel cosine is."""
        f = x.flatten(1).double()
        return f - f.mean(dim=1, keepdim=True)

    def _fid_kid(self, data: DatasetSplits, fake: torch.Tensor, features: str = "feature_net", n_boot: int = 200, fingerprint: str | None = None) -> dict:
        """FID (torchmetrics) with a bootstrap interval and the real set's noise floor, and KID.

        The real-set features and statistics are computed once per dataset and reused.
        """
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        from memrl.metrics.quality import fid_bootstrap, fid_noise_floor

        if features not in ("feature_net", "inception"):
            raise MemrlError(f"fid_features must be 'feature_net' or 'inception', got {features!r}")
        key = (fingerprint or data.fingerprint(), features)
        real = data.heldout.images
        sub = min(50, real.shape[0], fake.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if key not in self._real_stats:
                if features == "inception":
                    from memrl.metrics.quality import InceptionFeatures

                    feat = InceptionFeatures()
                else:
                    feat = _Features(self.feature_net)
                fid = FrechetInceptionDistance(feature=feat, reset_real_features=False, sync_on_compute=False)
                kid = KernelInceptionDistance(feature=feat, subsets=50, subset_size=sub, reset_real_features=False, sync_on_compute=False)
                real_f_parts = []
                for chunk in passes(real):
                    fid.update(chunk, real=True)
                    kid.update(chunk, real=True)
                    with torch.no_grad():
                        real_f_parts.append(feat(chunk).double().cpu())
                real_f = torch.cat(real_f_parts).numpy()
                self._real_stats[key] = (fid, kid, int(feat.num_features), feat, real_f, fid_noise_floor(real_f))
            fid0, kid0, dim, feat, real_f, floor = self._real_stats[key]
            fid, kid = copy.deepcopy(fid0), copy.deepcopy(kid0)
            kid.subset_size = sub
            fid.update(fake, real=False)
            kid.update(fake, real=False)
            torch.manual_seed(0)  # KID draws its subsets from torch's global generator
            km, ks = kid.compute()
            with torch.no_grad():
                fake_f = feat(fake).double().cpu().numpy()
            ci = fid_bootstrap(real_f, fake_f, n_boot=n_boot) if n_boot > 0 else {"fid_ci_low": None, "fid_ci_high": None}
            return {
                "fid": float(fid.compute()),
                "kid": float(km),
                "kid_std": float(ks),
                "fid_ci_low": ci["fid_ci_low"],
                "fid_ci_high": ci["fid_ci_high"],
                "fid_noise_floor": float(floor),
                "n_real": int(real.shape[0]),
                "n_fake": int(fake.shape[0]),
                "feature_dim": dim,
            }
