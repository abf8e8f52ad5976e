import json
import multiprocessing as mp
import sqlite3

import numpy as np
import pytest
import scipy.linalg
import torch

from memrl.data.loaders import load_dataset
from memrl.evaluation import EvalCache, Evaluator, preset, request_key
from memrl.evaluation.config import RewardConfig
from memrl.evaluation.reward import reward
from memrl.errors import MemrlError


@pytest.fixture(scope="module")
def evaluator(quick_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "evals.sqlite"
    return Evaluator(quick_model_dir[0], cache=cache)


def test_units_and_mask_errors(evaluator):
    assert len(evaluator.units) == 7
    with pytest.raises(MemrlError, match="mid_block.attentions.0"):
        evaluator.parse_mask("no_such_unit")
    with pytest.raises(MemrlError):
        evaluator.parse_mask("0101")


@pytest.mark.slow
def test_quick_evaluate_end_to_end_and_reproducible(evaluator, tmp_path):
    data = load_dataset("inverted")
    cfg = preset("quick")
    a = evaluator.evaluate(data, "lora", "mid_block.attentions.0,up_blocks.1.attentions.0", cfg, seed=3, out_dir=tmp_path / "a")
    for key in ("fid", "kid", "noise_norm_mean", "noise_norm_max", "nn_own_rate", "replication_rate", "amd",
                "extraction_rate", "reward", "trainable_params", "trainable_fraction", "seconds"):
        assert key in a, key
    assert 0 < a["trainable_fraction"] < 0.1
    assert (tmp_path / "a" / "samples.png").is_file() and (tmp_path / "a" / "nearest_neighbours.png").is_file()
    b = evaluator.evaluate(data, "lora", "mid_block.attentions.0,up_blocks.1.attentions.0", cfg, seed=3, out_dir=tmp_path / "b")
    for d in (a, b):
        d.pop("seconds"), d.pop("timings"), d.pop("cached")
    assert a == b
    # the reference (full fine-tuning) was computed once and is cached now
    hits = evaluator.hits
    evaluator.reference(data, cfg.with_method("lora", None, 3))
    assert evaluator.hits == hits + 1


@pytest.mark.slow
def test_cache_answers_repeated_requests(evaluator):
    data = load_dataset("thick")
    cfg = preset("quick")
    first = evaluator.evaluate(data, "attention", "none", cfg, seed=0)
    again = evaluator.evaluate(data, "attention", "none", cfg, seed=0)
    assert first["cached"] is False and again["cached"] is True
    assert again["reward"] == first["reward"]
    assert again["computed_seconds"] == first["seconds"]  # the original cost stays on record
    assert first["trainable_params"] == 0


def test_reward_formula():
    cfg = RewardConfig(lam=2.0, mu=0.5, mem_metric="nn_own_rate")
    ref = {"fid": 10.0, "nn_own_rate": 0.5}
    m = {"fid": 12.0, "nn_own_rate": 0.1, "trainable_fraction": 0.2}
    r = reward(m, ref, cfg)
    assert r["reward"] == pytest.approx(-(1.2 + 2.0 * 0.2) - 0.5 * 0.2)
    assert reward({**ref, "trainable_fraction": 1.0}, ref, cfg)["reward"] == pytest.approx(-(1 + 2.0) - 0.5)
    with pytest.raises(MemrlError, match="unknown memorization metric"):
        RewardConfig(mem_metric="bogus")


def test_cache_records_failures_without_poisoning(tmp_path):
    c = EvalCache(tmp_path / "c.sqlite")
    req = {"a": 1}
    k = request_key(req)
    c.put_failed(k, req, "boom")
    assert c.get(k) is None and c.status(k) == "failed"
    c.put(k, req, {"reward": -1.0}, 1.0)
    assert c.get(k) == {"reward": -1.0}
    c.put_failed(k, req, "later failure")
    assert c.get(k) == {"reward": -1.0}
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _writer(path, start, n):
    c = EvalCache(path)
    for i in range(start, start + n):
        c.put(request_key({"i": i}), {"i": i}, {"v": i}, 0.0)


def test_cache_two_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    EvalCache(path)
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_writer, args=(path, s, 50)) for s in (0, 50)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    c = EvalCache(path)
    assert len(c) == 100 and c.get(request_key({"i": 73})) == {"v": 73}
