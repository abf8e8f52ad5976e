"""Evaluations as Ray actor tasks on a local Ray instance (CPU): the same numbers as in-process, in the shared cache."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'memrl[ray]')")

from memrl.data.loaders import load_dataset  # noqa: E402
from memrl.errors import MemrlError  # noqa: E402
from memrl.evaluation import EvalCache, Evaluator, preset  # noqa: E402
from memrl.evaluation.remote import EvaluatorSpec, RayEvaluator, RayOptions, build_evaluator  # noqa: E402
from memrl.metrics.names import SUMMARY_METRICS  # noqa: E402

MASKS = ("mid_block.attentions.0", "up_blocks.1.attentions.0")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _metrics(result: dict) -> dict:
    keys = [*SUMMARY_METRICS, "mask_bits", "trainable_params", "trainable_fraction", "final_loss", "lr", "seed"]
    return {k: result[k] for k in keys}


def test_ray_evaluations_equal_in_process_ones_and_land_in_the_shared_cache(local_ray, quick_model_dir, tmp_path):
    model = quick_model_dir[0]
    data = load_dataset("inverted")
    cfg = preset("quick")
    shared = tmp_path / "shared.sqlite"
    ev = RayEvaluator(EvaluatorSpec(str(model), device="cpu", cache=str(shared)), RayOptions(num_cpus=1, num_gpus=0))
    remote = [ev.evaluate(data, "lora", m, cfg, seed=0, with_reward=False) for m in MASKS]
    assert [r["cached"] for r in remote] == [False, False] and ev.misses == 2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actor's thread count (num_cpus=1): the same kernels, the same cache key
    try:
        local = Evaluator(model, cache=None)
        here = [local.evaluate(data, "lora", m, cfg, seed=0, with_reward=False) for m in MASKS]
        assert [_metrics(r) for r in remote] == [_metrics(r) for r in here]
        # both rows are in the shared file, under the keys an in-process evaluator computes
        cache = EvalCache(shared)
        assert len(cache) == 2
        local.cache = cache
        again = [local.evaluate(data, "lora", m, cfg, seed=0, with_reward=False) for m in MASKS]
        assert [r["cached"] for r in again] == [True, True]
    finally:
        torch.set_num_threads(threads)
    # the driver's evaluator answers a repeated request from the shared cache too (through the actor)
    assert ev.evaluate(data, "lora", MASKS[0], cfg, seed=0, with_reward=False)["cached"] is True and ev.hits == 1
    ev.close()


def test_env_config_switches_to_ray_and_errors_come_back_as_raised(local_ray, quick_model_dir, tmp_path):
    from memrl.envs.config import EnvConfig
    from memrl.search.cli import with_ray

    env = EnvConfig(pretrained=str(quick_model_dir[0]), cache=str(tmp_path / "c.sqlite"), preset="quick")
    assert with_ray(env, None).ray is None and with_ray(env, "").ray == {} and with_ray(env, "auto").ray == {"address": "auto"}
    ev = build_evaluator(with_ray(env, ""))  # memrl search/train --ray: a local instance (here: the test's)
    assert isinstance(ev, RayEvaluator) and ev.units == Evaluator(quick_model_dir[0]).units
    assert ev.spec.cache == str(tmp_path / "c.sqlite") and ev.cache.location == ev.spec.cache
    other_units = type("Mask", (), {"bitstring": "01"})()  # a mask the worker's model cannot have
    with pytest.raises(MemrlError, match="mask"):  # the caller's mistake, raised in the actor, comes back as a MemrlError
        ev._cached_run(load_dataset("inverted"), other_units, preset("quick"), None, False)
    ev.close()
    # env.resolution reaches the actor's spec and the driver's copy (which loads the datasets)
    sized = build_evaluator(with_ray(env.with_(resolution=32), ""))
    assert sized.spec.resolution == 32 and sized.image_size == 32
    sized.close()
    with pytest.raises(MemrlError, match="env.ray: unknown key"):
        EnvConfig(pretrained=str(quick_model_dir[0]), ray={"gpus": 1})
    with pytest.raises(MemrlError, match="num_gpus must be a number"):
        RayOptions.from_dict({"num_gpus": -1})


def test_local_workers_spread_over_the_gpus(monkeypatch):
    from memrl.agents.train import worker_device
    from memrl.envs.config import EnvConfig

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = EnvConfig(device="cuda")
    assert [worker_device(env, i) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device(env.with_(device="cuda:1"), 0) == "cuda:1" and worker_device(env.with_(device="cpu"), 1) == "cpu"
    assert worker_device(env.with_(ray={"num_gpus": 1}), 1) == "cuda"  # Ray gives each actor its own GPU
