"""Evaluations on Ray: each fine-tune + measurement runs in a Ray actor that holds its own GPU(s).

``pip install 'memrl[ray]'``. :class:`RayEvaluator` is an :class:`~memrl.evaluation.Evaluator`
(the same :class:`~memrl.evaluation.protocol.MaskEvaluator` interface, so the environment,
``memrl search`` and ``memrl train`` use it unchanged) whose expensive part, every request that
goes through the cache (the mask, the reference and the base run), is sent to a Ray actor:

* the actor is created on first use with ``num_gpus`` / ``num_cpus`` from :class:`RayOptions`
  (Ray places it on a node with those resources free and sets ``CUDA_VISIBLE_DEVICES``, so
  ``device: cuda`` there is the GPU Ray gave it);
* it builds its evaluator from an :class:`EvaluatorSpec` (pretrained folder, feature network,
  granularity, device, cache location): only that description and the dataset travel, never a model;
* it computes the request's cache key itself (the key names the worker's device, dtype and
  thread count) and answers from the shared cache, or computes and stores there, so the driver and
  every other node see the result. Across machines the cache must be one they all reach: a
  ``postgresql://`` URL (:mod:`memrl.evaluation.cache`); an SQLite path is a file on each node.

The driver keeps a CPU copy of the model for the cheap part of the interface (units, masks, the
feature network that describes datasets). Several environments (``train.n_envs`` with
``train.vec_env=subproc``) each get their own actor: with ``num_gpus: 1`` Ray spreads them over
the GPUs of the cluster.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from memrl.errors import MemrlError
from memrl.evaluation.cache import EvalCache
from memrl.evaluation.evaluator import Evaluator


@dataclass(frozen=True)
class RayOptions:
    """Where evaluations run (``env.ray``; ``memrl search/train --ray [ADDRESS]``).

    ``address``: ``None`` starts a local Ray instance (or joins the one ``RAY_ADDRESS`` names),
    ``"auto"`` joins the cluster running on this machine, ``"ray://HOST:10001"`` a remote one.
    ``num_gpus`` / ``num_cpus``: what each evaluation's actor asks Ray for (``num_gpus: 0`` on the
    CPU; fractions share a GPU).
    """

    address: str | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_gpus", "num_cpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise MemrlError(f"env.ray.{name} must be a number >= 0, got {value!r}")
        if self.address is not None and not (isinstance(self.address, str) and self.address.strip()):
            raise MemrlError(f"env.ray.address must be a Ray address (auto, HOST:PORT, ray://HOST:10001) or left out for a local instance, got {self.address!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "RayOptions":
        """From ``env.ray`` (a mapping); one line naming the valid keys for an unknown one."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise MemrlError(f"env.ray: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**d)


@dataclass(frozen=True)
class EvaluatorSpec:
    """What a worker needs to build the driver's evaluator: plain strings, picklable."""

    pretrained: str
    device: str = "cpu"
    cache: str | None = None
    granularity: str = "attention"
    feature_net: str | None = None
    resolution: int | None = None

    def build(self) -> Evaluator:
        return Evaluator(
            self.pretrained, device=self.device, cache=self.cache, feature_net=self.feature_net, granularity=self.granularity, resolution=self.resolution
        )


class EvaluationActor:
    """The Ray actor: one evaluator (model on its device), answering requests through the cache."""

    def __init__(self, spec: EvaluatorSpec, threads: int) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)  # the CPU thread count is part of the cache key: make it the one asked for
        self.evaluator = spec.build()

    def run(self, data: Any, bits: str, cfg: Any, pictures: bool) -> dict:
        """``Evaluator._cached_run`` of one request; with ``pictures`` the picture files come back
        as ``result["files"]`` (``{name: bytes}``): the driver may be on another machine."""
        ev = self.evaluator
        mask = ev.parse_mask(bits)
        if not pictures:
            return ev._cached_run(data, mask, cfg, None, False)
        with tempfile.TemporaryDirectory() as tmp:
            result = ev._cached_run(data, mask, cfg, tmp, False)
            result["files"] = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        return result


def connect(options: RayOptions) -> None:
    """Join (or start) the Ray instance ``options`` name, once per process.

    A started local instance's address goes into ``RAY_ADDRESS``, so environments in spawned
    worker processes (SubprocVecEnv) join the same instance instead of starting their own.
    """
    try:
        import ray
    except ImportError:
        raise MemrlError("env.ray / --ray needs Ray: pip install 'memrl[ray]'") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MemrlError(f"cannot reach Ray at {options.address or 'a local instance'} (env.ray.address / --ray ADDRESS: auto, HOST:PORT or ray://HOST:10001): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


class RayEvaluator(Evaluator):
    """An :class:`Evaluator` whose cached requests run in a Ray actor (see the module docstring).

    ``cache`` is shared with the actor: set it (a path, URL or :class:`EvalCache`) before the first
    evaluation, or the actor is rebuilt with the new one.
    """

    def __init__(self, spec: EvaluatorSpec, options: RayOptions | dict | None = None) -> None:
        self.options = options if isinstance(options, RayOptions) else RayOptions.from_dict(options)
        connect(self.options)
        self.spec = spec
        self._actor = None
        self._data_refs: dict[str, Any] = {}
        # the driver's copy, on the CPU: units, masks, dataset checks and the descriptor's network
        super().__init__(spec.pretrained, device="cpu", cache=None, feature_net=spec.feature_net, granularity=spec.granularity, resolution=spec.resolution)
        self.cache = spec.cache

    @property
    def cache(self) -> EvalCache | None:  # type: ignore[override]
        """The shared cache, open on the driver too (reports, lookup-table export)."""
        return self._cache

    @cache.setter
    def cache(self, value: EvalCache | str | Path | None) -> None:
        if isinstance(value, (str, Path)):
            value = EvalCache(value)
        self._cache = value
        url = value.url if value is not None else None
        if url != self.spec.cache:
            self.spec = replace(self.spec, cache=url)
            self._drop_actor()

    def _drop_actor(self) -> None:
        if getattr(self, "_actor", None) is not None:
            import ray

            ray.kill(self._actor)
        self._actor = None

    def actor(self):  # noqa: ANN201 - a Ray actor handle
        """The actor (created on first use with the configured resources)."""
        if self._actor is None:
            import ray

            opts = self.options
            cls = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus)(EvaluationActor)
            self._actor = cls.remote(self.spec, max(1, int(opts.num_cpus)) if self.spec.device == "cpu" else 0)
        return self._actor

    def _cached_run(self, data, mask, cfg, out_dir, progress: bool) -> dict:  # noqa: ANN001
        """One request, computed (or answered from the shared cache) by the actor."""
        import ray

        fingerprint = data.fingerprint()
        ref = self._data_refs.get(fingerprint)
        if ref is None:
            ref = self._data_refs[fingerprint] = ray.put(data)
        try:
            result = ray.get(self.actor().run.remote(ref, mask.bitstring, cfg, out_dir is not None))
        except ray.exceptions.RayTaskError as exc:  # the worker's own exception: MemrlError, EvaluationFailed, ...
            raise exc.as_instanceof_cause() from None
        files = result.pop("files", None)
        if files:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            for name, blob in files.items():
                (out / name).write_bytes(blob)
        if result.get("cached"):
            self.hits += 1
        else:
            self.misses += 1
        return result

    def close(self) -> None:
        """End the actor (its GPU goes back to Ray)."""
        self._drop_actor()


#: ``build_evaluator``'s default cache: the config's ``env.cache``.
FROM_ENV: Any = object()


def build_evaluator(env: Any, cache: EvalCache | str | Path | None = FROM_ENV) -> Evaluator:
    """The evaluator an environment config asks for: :class:`RayEvaluator` when ``env.ray`` is set,
    else the local :class:`Evaluator`. ``env``: anything with the fields of
    :class:`memrl.envs.config.EnvConfig` used here (pretrained, device, granularity, feature_net,
    ray); ``cache``: default ``env.cache`` (``None``: none yet; set ``evaluator.cache`` later)."""
    cache = env.cache if cache is FROM_ENV else cache
    feature_net = getattr(env, "feature_net", None)
    resolution = getattr(env, "resolution", None)
    if getattr(env, "ray", None) is None:
        return Evaluator(env.pretrained, device=env.device, cache=cache, granularity=env.granularity, feature_net=feature_net, resolution=resolution)
    loc = cache.url if isinstance(cache, EvalCache) else (str(cache) if cache is not None else None)
    spec = EvaluatorSpec(
        _absolute(env.pretrained), device=env.device, cache=_absolute(loc), granularity=env.granularity, feature_net=_absolute(feature_net), resolution=resolution
    )
    return RayEvaluator(spec, env.ray)


def _absolute(location: str | Path | None) -> str | None:
    """A local path made absolute (a Ray worker need not start in the driver's folder); URLs and
    ``module:callable`` specs (both hold a colon) as they are."""
    if location is None or ":" in str(location) or not Path(location).parent.exists():
        return None if location is None else str(location)
    return str(Path(location).resolve())


__all__ = ["EvaluationActor", "EvaluatorSpec", "RayEvaluator", "RayOptions", "build_evaluator", "connect"]
