"""The Gymnasium environment: registration, spaces, check_env, reset/step contract, seeding."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import memrl  # noqa: F401  (registers memrl/MaskSelection-v0)
from memrl.envs import ENV_ID
from memrl.envs.config import EnvConfig
from memrl.envs.descriptor import DescriptorBasis, duplication_rate
from memrl.errors import MemrlError

# A very cheap budget so check_env's handful of steps takes seconds.
TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}


@pytest.fixture(scope="module")
def evaluator(quick_model_dir, tmp_path_factory):
    from memrl.evaluation import Evaluator

    return Evaluator(quick_model_dir[0], cache=tmp_path_factory.mktemp("envcache") / "c.sqlite")


def make_env(evaluator, **kw):
    from memrl.envs.mask_selection import MaskSelectionEnv

    cfg = dict(pretrained=str(evaluator.pretrained_dir), datasets=["inverted", "thick"], preset="quick", eval_overrides=TINY)
    cfg.update(kw)
    return MaskSelectionEnv(EnvConfig(**cfg), evaluator=evaluator)


def test_registered_and_make(evaluator):
    assert ENV_ID in gymnasium.registry
    env = gymnasium.make(ENV_ID, config=EnvConfig(pretrained=str(evaluator.pretrained_dir), datasets=["inverted"], preset="quick", eval_overrides=TINY), evaluator=evaluator)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["dataset"] == "inverted"


def test_spaces_and_observation_layout(evaluator):
    env = make_env(evaluator)
    assert isinstance(env.action_space, gymnasium.spaces.MultiBinary)
    assert env.action_space.n == len(evaluator.units) == 7
    obs, _ = env.reset(seed=1)
    assert obs.shape == env.observation_space.shape == (env.basis.dim + 7 + 5,)
    # mask and metrics part are zero at reset; the descriptor is not
    assert np.all(obs[env.basis.dim :] == 0)
    assert np.any(obs[: env.basis.dim] != 0)
    # different datasets get different descriptors
    assert not np.allclose(env.descriptor("inverted"), env.descriptor("thick"))


def test_extra_action_dims(evaluator):
    env = make_env(evaluator, methods=["lora", "difffit"], lr_scales=[0.5, 1.0, 2.0])
    assert isinstance(env.action_space, gymnasium.spaces.MultiDiscrete)
    assert list(env.action_space.nvec) == [2] * 7 + [2, 3]
    bits, method, lr = env.decode([1, 0, 0, 0, 0, 0, 1, 1, 2])
    assert bits.tolist() == [1, 0, 0, 0, 0, 0, 1] and method == "difffit"
    from memrl.training.finetune import FinetuneConfig

    assert lr == pytest.approx(2.0 * FinetuneConfig(method="difffit").resolved_lr())
    with pytest.raises(MemrlError, match="action has 3 entries"):
        env.decode([1, 0, 1])


@pytest.mark.slow
def test_check_env_gymnasium_and_sb3_on_the_default_config(quick_model_dir, tmp_path):
    """Gymnasium's and SB3's own checkers on ``gymnasium.make`` with the default env config (its six
    datasets, reward and horizon; only the evaluation budget made tiny, and the quick test model as
    the base: SB3's NaN check alone takes 10 random steps). Gymnasium compares the infos of two
    identical steps, the second being a cache hit: run-time facts are not in the default info."""
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    config = {"pretrained": str(quick_model_dir[0]), "preset": "quick", "eval_overrides": TINY, "cache": str(tmp_path / "c.sqlite")}
    assert set(config) - {"pretrained", "cache"} == {"preset", "eval_overrides"}
    env = gymnasium.make(ENV_ID, config=config)
    assert len(env.unwrapped.config.datasets) == len(EnvConfig().datasets)
    gym_check(env, skip_render_check=True)
    gym_check(env.unwrapped, skip_render_check=True)  # the raw env too, as gymnasium recommends (cache hits now)
    sb3_check(env, warn=True)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert "cached" not in info and "seconds" not in info


@pytest.mark.slow
def test_step_contract_info_and_cache(evaluator):
    env = make_env(evaluator, info_runtime=True)
    obs, info = env.reset(seed=0, options={"dataset": "inverted"})
    action = np.array([1, 0, 0, 1, 0, 0, 0], dtype=np.int8)
    obs2, r, terminated, truncated, info = env.step(action)
    assert terminated is True and truncated is False  # horizon 1
    assert isinstance(r, float) and np.isfinite(r)
    for key in ("fid", "kid", "nn_own_rate", "replication_rate", "noise_norm_mean", "extraction_rate", "trainable_fraction", "reward", "cached", "mask_units", "dataset"):
        assert key in info, key
    assert info["mask_units"] == [evaluator.units[0], evaluator.units[3]]
    assert info["reward"] == r and info["dataset"] == "inverted"
    assert obs2[env.basis.dim : env.basis.dim + 7].tolist() == action.tolist()
    # same (dataset, mask) again: same reward, from the cache
    env.reset(seed=5, options={"dataset": "inverted"})
    _, r2, _, _, info2 = env.step(action)
    assert r2 == r and info2["cached"] is True


def test_reset_seeding_draws_datasets_reproducibly(evaluator):
    env = make_env(evaluator, datasets=["inverted", "thick", "rotated"])
    seq = lambda s: [env.reset(seed=s)[1]["dataset"]] + [env.reset()[1]["dataset"] for _ in range(7)]  # noqa: E731
    a, b = seq(11), seq(11)
    assert a == b
    assert len(set(a)) > 1
    with pytest.raises(MemrlError, match="not in the env's list"):
        env.reset(options={"dataset": "mirrored"})


@pytest.mark.slow
def test_horizon_two_refines(evaluator):
    env = make_env(evaluator, horizon=2)
    env.reset(seed=0, options={"dataset": "thick"})
    _, _, term1, _, _ = env.step(np.zeros(7, dtype=np.int8))
    obs, _, term2, _, _ = env.step(np.ones(7, dtype=np.int8))
    assert term1 is False and term2 is True
    assert obs[-1] == pytest.approx(1.0)  # horizon share


def test_env_state_round_trip(evaluator):
    env = make_env(evaluator, datasets=["inverted", "thick", "rotated"])
    env.reset(seed=3)
    state = env.get_state()
    nxt = [env.reset()[1]["dataset"] for _ in range(5)]
    env.set_state(state)
    assert [env.reset()[1]["dataset"] for _ in range(5)] == nxt


def test_bad_config():
    with pytest.raises(MemrlError, match="datasets"):
        EnvConfig(datasets=[])
    with pytest.raises(MemrlError, match="unknown method"):
        EnvConfig(method="nope")
    with pytest.raises(MemrlError, match="unknown env field"):
        EnvConfig.from_dict({"datasetz": ["inverted"]})


def test_descriptor_basis_round_trip_and_duplication(evaluator, tmp_path):
    import torch

    from memrl.data.loaders import load_dataset

    data = load_dataset("inverted")
    basis = DescriptorBasis.fit(evaluator.feature_net, [data], k=4)
    basis.save(tmp_path / "d.json")
    again = DescriptorBasis.load(tmp_path / "d.json")
    np.testing.assert_allclose(basis.describe(evaluator.feature_net, data), again.describe(evaluator.feature_net, data), rtol=1e-6)
    x = torch.rand(10, 1, 16, 16)
    assert duplication_rate(x) < 0.5
    assert duplication_rate(torch.cat([x, x])) == 1.0
    with pytest.raises(MemrlError, match="no descriptor basis"):
        DescriptorBasis.load(tmp_path / "missing.json")


def test_gymnasium_make_with_keyword_fields(evaluator):
    """rl-baselines3-zoo passes ``--env-kwargs`` as keyword arguments of ``gymnasium.make``."""
    env = gymnasium.make(ENV_ID, pretrained=str(evaluator.pretrained_dir), datasets=["inverted", "thick"], preset="quick", eval_overrides=TINY, evaluator=evaluator)
    cfg = env.unwrapped.config
    assert cfg.datasets == ["inverted", "thick"] and cfg.preset == "quick"
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    # keyword fields override a config dict; unknown ones are refused with the valid names
    env2 = gymnasium.make(ENV_ID, config={"pretrained": str(evaluator.pretrained_dir), "datasets": ["thick"], "preset": "search"}, preset="quick", evaluator=evaluator)
    assert env2.unwrapped.config.preset == "quick" and env2.unwrapped.config.datasets == ["thick"]
    with pytest.raises(MemrlError, match="unknown env field"):
        gymnasium.make(ENV_ID, pretrained=str(evaluator.pretrained_dir), datsets=["thick"], evaluator=evaluator)
