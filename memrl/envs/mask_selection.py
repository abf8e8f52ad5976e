"""``memrl/MaskSelection-v0``: choose which UNet units to fine-tune; the reward is one evaluation.

An episode is one dataset, drawn at ``reset`` from the configured list. Each step proposes a
binary mask over the UNet's named units (optionally also a PEFT method and a learning-rate
bucket), fine-tunes the pretrained model with it and returns the memorization-penalised FID
reward of :mod:`memrl.evaluation`. With ``horizon`` 1 an episode is a single proposal per
dataset; a longer horizon lets the agent refine its mask after seeing the metrics.

Observation (a flat ``Box``, clipped to [-10, 10]):

* the dataset descriptor (:mod:`memrl.envs.descriptor`);
* the current mask bits (zeros at reset);
* the last step's normalised metrics: FID / FID_ref, MEM / MEM_ref, trainable fraction, reward
  (zeros at reset), and the share of the horizon used.

Evaluations are seeded by the config's ``seed`` (not by the episode), so the reward of a
(dataset, mask) pair is a fixed number and repeated proposals are answered from the cache.

Rewards lie in ``[reward.floor, 0]`` (default floor -20; see :mod:`memrl.evaluation.reward`).
A step whose evaluation fails (a diverged fine-tune, non-finite samples, a kernel error) ends the
episode with ``failure_reward``, strictly below the floor, and ``info["failed"] = True`` with the
error; the failure is recorded in the cache. Bad input (:class:`~memrl.errors.MemrlError`) is
raised, not penalised.

Mask bits of units where the method has nothing to train (e.g. ``down_blocks.0`` of the tiny
model holds no attention, so lora has nothing there) are dropped before evaluating: such a mask
trains exactly what the reduced mask trains, and is answered by the same cache entry; a mask
whose selected units all train nothing is the pretrained model (mask ``none``). ``info`` names
the units trained (``mask``, ``mask_bits``, ``mask_units``), the proposal
(``proposed_mask_bits``) and the dropped units (``empty_units``); the observation shows the
proposal.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from memrl.envs.config import EnvConfig
from memrl.envs.descriptor import DescriptorBasis
from memrl.errors import MemrlError
from memrl.evaluation import space
from memrl.evaluation.protocol import evaluate_proposal

N_METRICS = 5  # fid ratio, mem ratio, trainable fraction, reward, horizon share
#: Wall-clock facts of a step: in ``info`` only with ``info_runtime`` (they differ between two
#: identical steps, the second being a cache hit; Gymnasium's determinism check compares infos).
RUNTIME_INFO = ("cached", "seconds", "computed_seconds", "timings")


def action_dims(n_units: int, cfg: EnvConfig) -> list[int]:
    """Sizes of the action's dimensions: one bit per unit, then optional method and lr buckets
    (:func:`memrl.evaluation.space.action_dims` with the config's choices)."""
    return space.action_dims(n_units, cfg.methods, cfg.lr_scales)


def decode_action(action, n_units: int, cfg: EnvConfig) -> tuple[np.ndarray, str, float | None]:  # noqa: ANN001
    """Action -> (mask bits, method, learning rate; ``None`` means the method's default); see
    :func:`memrl.evaluation.space.decode_action`, the one encoding the env, search and replay share."""
    return space.decode_action(action, n_units, cfg.method, cfg.methods, cfg.lr_scales)


def observation(descriptor: np.ndarray, mask: np.ndarray, last: np.ndarray) -> np.ndarray:
    return np.clip(np.concatenate([descriptor, mask, last]), -10.0, 10.0).astype(np.float32)


class MaskSelectionEnv(gym.Env):
    """Gymnasium environment whose step is one masked PEFT fine-tune + evaluation."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict | None = None, evaluator=None, basis: DescriptorBasis | dict | None = None, **fields: Any) -> None:  # noqa: ANN001
        """``config`` (an :class:`EnvConfig` or its dict), or its fields as keyword arguments
        (``gymnasium.make(ENV_ID, pretrained=..., preset="quick")``, as rl-baselines3-zoo's
        ``--env-kwargs`` passes them); keyword fields override those of ``config``.

        ``evaluator``: any :class:`memrl.evaluation.protocol.MaskEvaluator` (the real
        :class:`~memrl.evaluation.Evaluator` is built from the config when none is given); the env
        reads only that interface (units, image size and channels, the feature network for the
        descriptor, ``effective_mask`` and ``evaluate``)."""
        super().__init__()
        if isinstance(config, EnvConfig):
            config = config.to_dict() if fields else config
        if not isinstance(config, EnvConfig):
            merged = dict(config or {})
            merged.update(fields)
            config = EnvConfig.from_dict(merged, source="env kwargs")
        self.config = config
        if evaluator is None:
            from memrl.evaluation.remote import build_evaluator

            evaluator = build_evaluator(self.config)  # in this process, or in a Ray actor (env.ray)
        self.evaluator = evaluator
        self.units = tuple(evaluator.units)
        self.n_units = len(self.units)
        self.eval_config = self.config.eval_config()
        self.failure_reward = self.config.resolved_failure_reward()  # a bad one is refused here, not at the first failure
        self._data: dict[str, Any] = {}
        self._descriptors: dict[str, np.ndarray] = {}
        if basis is None:
            if getattr(evaluator, "feature_net", None) is None:
                raise MemrlError(f"{type(evaluator).__name__} has no feature network to describe datasets with; pass the run's descriptor basis (basis=DescriptorBasis.load(RUN/descriptor.json))")
            basis = DescriptorBasis.fit(evaluator.feature_net, [self._dataset(d) for d in self.config.datasets], self.config.descriptor_components)
        self.basis = basis if isinstance(basis, DescriptorBasis) else DescriptorBasis.from_dict(basis)

        dims = action_dims(self.n_units, self.config)
        self.action_space = spaces.MultiDiscrete(dims) if len(dims) > self.n_units else spaces.MultiBinary(self.n_units)
        self.obs_dim = self.basis.dim + self.n_units + N_METRICS
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(self.obs_dim,), dtype=np.float32)

        self._dataset_index = 0
        self._t = 0
        self._mask = np.zeros(self.n_units, dtype=np.float32)
        self._last = np.zeros(N_METRICS, dtype=np.float32)

    # ------------------------------------------------------------------ setup helpers
    def _dataset(self, spec: str):  # noqa: ANN202
        if spec not in self._data:
            from memrl.data.loaders import load_dataset

            self._data[spec] = load_dataset(spec, self.evaluator.image_size, self.evaluator.image_channels, **self.config.dataset_options(spec))
        return self._data[spec]

    def descriptor(self, spec: str) -> np.ndarray:
        if spec not in self._descriptors:
            if getattr(self.evaluator, "feature_net", None) is None:
                raise MemrlError(f"cannot describe dataset {spec!r}: {type(self.evaluator).__name__} has no feature network")
            self._descriptors[spec] = self.basis.describe(self.evaluator.feature_net, self._dataset(spec))
        return self._descriptors[spec]

    @property
    def dataset_name(self) -> str:
        return self.config.datasets[self._dataset_index]

    def _obs(self) -> np.ndarray:
        return observation(self.descriptor(self.dataset_name), self._mask, self._last)

    # ------------------------------------------------------------------ action decoding
    def decode(self, action) -> tuple[np.ndarray, str, float | None]:  # noqa: ANN001
        """Action -> (mask bits, method, learning rate or None for the method's default)."""
        return decode_action(action, self.n_units, self.config)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN201
        super().reset(seed=seed)
        options = options or {}
        if "dataset" in options:
            name = options["dataset"]
            if name not in self.config.datasets:
                raise MemrlError(f"reset: dataset {name!r} is not in the env's list {self.config.datasets}")
            self._dataset_index = self.config.datasets.index(name)
        else:
            self._dataset_index = int(self.np_random.integers(len(self.config.datasets)))
        self._t = 0
        self._mask = np.zeros(self.n_units, dtype=np.float32)
        self._last = np.zeros(N_METRICS, dtype=np.float32)
        return self._obs(), {"dataset": self.dataset_name, "units": list(self.units)}

    def step(self, action):  # noqa: ANN001, ANN201
        bits, method, lr = self.decode(action)
        data = self._dataset(self.dataset_name)
        reward, info = evaluate_proposal(
            self.evaluator, data, self.dataset_name, bits, method, lr, self.eval_config, self.config.seed, self.failure_reward
        )
        if info["failed"]:
            obs = self.advance(bits, [0, 0, 0, reward])
            info["step_in_episode"] = self._t
            return obs, reward, True, False, info
        if not self.config.info_runtime:
            for k in RUNTIME_INFO:
                info.pop(k, None)
        obs = self.advance(bits, [info["fid_norm"], info["mem_norm"], info["trainable_fraction"], reward])
        info["step_in_episode"] = self._t
        terminated = self._t >= self.config.horizon
        return obs, reward, terminated, False, info

    def advance(self, bits, last) -> np.ndarray:  # noqa: ANN001
        """Move the episode one step with proposal ``bits`` and the step's metrics ``last``
        (FID / FID_ref, MEM / MEM_ref, trainable fraction, reward): the step count grows by one,
        the observation shows the proposal and those metrics. ``step`` calls it after an
        evaluation; a wrapper that answers a step without evaluating (the learned reward model of
        :mod:`memrl.agents.dyna`) calls it too, so both leave the env in the same state."""
        self._t += 1
        self._mask = np.asarray(bits, dtype=np.float32)
        self._last = np.asarray([*last, self._t / self.config.horizon], dtype=np.float32)
        return self._obs()

    # ------------------------------------------------------------------ checkpoint support
    def get_state(self) -> dict:
        """Everything needed to continue exactly where this env stands (for ``memrl train --resume``)."""
        return {
            "rng": self.np_random.bit_generator.state,
            "dataset_index": self._dataset_index,
            "t": self._t,
            "mask": self._mask.tolist(),
            "last": self._last.tolist(),
        }

    def set_state(self, state: dict) -> None:
        self.np_random.bit_generator.state = state["rng"]
        self._dataset_index = int(state["dataset_index"])
        self._t = int(state["t"])
        self._mask = np.asarray(state["mask"], dtype=np.float32)
        self._last = np.asarray(state["last"], dtype=np.float32)
