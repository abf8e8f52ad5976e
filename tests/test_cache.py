"""Cache integrity: what the key covers, claims between workers, failures that repeat or are retried.

The claim, lease and failure tests run on both backends (``cache_location``: an SQLite file and a
PostgreSQL database, the latter skipped where no server can be started; tests/conftest.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time

import pytest
import torch

from memrl.errors import EvaluationFailed, MemrlError
from memrl.evaluation.cache import EvalCache, request_key


# ---------------------------------------------------------------------------------------- claims
def _slow_compute(path: str, log: str, start: float) -> None:
    """A worker: wait for the common start, then ask for request {"x": 1}; a computation takes 1 s."""
    c = EvalCache(path, poll_seconds=0.05)
    while time.time() < start:
        time.sleep(0.005)

    def compute() -> dict:
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        return {"v": 42}

    result, _ = c.get_or_compute(request_key({"x": 1}), {"x": 1}, compute)
    assert result == {"v": 42}


def test_two_workers_compute_one_request_once(cache_location, tmp_path):
    path, log = cache_location, tmp_path / "log.txt"
    EvalCache(path)
    ctx = mp.get_context("spawn")
    start = time.time() + 3.0  # both processes are up and asking at the same moment
    ps = [ctx.Process(target=_slow_compute, args=(str(path), str(log), start)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("computed") == 1
    c = EvalCache(path)
    assert c.computations(request_key({"x": 1})) == 1 and c.get(request_key({"x": 1})) == {"v": 42}


def test_claim_of_a_dead_process_is_taken_over_at_once(cache_location):
    c = EvalCache(cache_location, lease_seconds=3600)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start()
    p.join()
    import socket

    dead = f"{socket.gethostname()}:{p.pid}"
    assert c.claim("k", {"r": 1}, owner="otherhost:1")
    assert not c.claim("k", {"r": 1})  # a claim of another machine's process holds until its lease ends
    assert c.claim("j", {"r": 1}, owner=dead)
    assert c.claim("j", {"r": 1})  # ... but one of a dead process on this machine is taken over at once


def test_expired_lease_is_taken_over(cache_location):
    c = EvalCache(cache_location, lease_seconds=0.2)
    assert c.claim("k", {"r": 1}, owner="otherhost:1")
    assert not c.claim("k", {"r": 1}, owner="otherhost:2")
    time.sleep(0.3)
    assert c.claim("k", {"r": 1}, owner="otherhost:2")


def test_deterministic_failure_is_answered_other_failures_retried(cache_location):
    c = EvalCache(cache_location)
    calls = []

    def diverges() -> dict:
        calls.append(1)
        raise EvaluationFailed("loss is nan", deterministic=True)

    with pytest.raises(EvaluationFailed):
        c.get_or_compute("a", {"a": 1}, diverges)
    with pytest.raises(EvaluationFailed, match="recorded earlier"):
        c.get_or_compute("a", {"a": 1}, diverges)
    assert len(calls) == 1

    def flaky() -> dict:
        calls.append(2)
        if calls.count(2) == 1:
            raise RuntimeError("out of memory")
        return {"ok": True}

    with pytest.raises(RuntimeError):
        c.get_or_compute("b", {"b": 1}, flaky)
    assert c.status("b") == "failed"
    assert c.get_or_compute("b", {"b": 1}, flaky) == ({"ok": True}, True)
    assert c.get_or_compute("b", {"b": 1}, flaky) == ({"ok": True}, False)

    def bad_input() -> dict:
        raise MemrlError("no such dataset")

    with pytest.raises(MemrlError):
        c.get_or_compute("c", {"c": 1}, bad_input)
    assert c.status("c") is None  # the caller's mistake is not this request's outcome


def test_old_cache_file_gets_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE evaluations (key TEXT PRIMARY KEY, status TEXT NOT NULL, request TEXT NOT NULL, result TEXT, error TEXT, seconds REAL, created REAL NOT NULL)")
        db.execute("INSERT INTO evaluations VALUES ('k','ok','{}','{\"v\": 1}',NULL,1.0,0)")
    c = EvalCache(path)
    assert c.get("k") == {"v": 1}
    c.put("k2", {}, {"v": 2}, 0.1)
    assert c.computations("k2") == 1


# ---------------------------------------------------------------------------------------- the key
@pytest.fixture(scope="module")
def model_copy(quick_model_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("modelcopy") / "m"
    shutil.copytree(quick_model_dir[0], dst)
    return dst


def _key(ev, data, cfg) -> str:
    return request_key(ev.request(data, ev.parse_mask("all"), cfg))


def test_key_covers_feature_network_versions_device_threads(model_copy, monkeypatch):
    from safetensors.torch import load_file, save_file

    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator, preset

    data = load_dataset("inverted")
    cfg = preset("quick").with_method("lora", None, 0)
    ev = Evaluator(model_copy)
    base = _key(ev, data, cfg)
    assert ev.feature_net_hash != Evaluator.__init__.__defaults__  # a real hash, not the empty one
    import hashlib

    assert ev.feature_net_hash != hashlib.sha256().hexdigest()[:16], "the feature network folder must not hash as empty"

    # a retrained feature network (any weight changed) is another key
    wfile = next((model_copy / "feature_net").glob("*.safetensors"))
    state = load_file(str(wfile))
    name = next(iter(state))
    state[name] = state[name] + 1e-3
    save_file(state, str(wfile))
    assert _key(Evaluator(model_copy), data, cfg) != base

    ev2 = Evaluator(model_copy)
    k2 = _key(ev2, data, cfg)
    # another torch (or diffusers / peft) version, another device, another thread count
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert _key(ev2, data, cfg) != k2
    monkeypatch.undo()
    assert _key(ev2, data, cfg) == k2
    from memrl.evaluation import evaluator as evmod

    cpu = evmod.runtime_key("cpu", torch.float32)
    assert cpu != evmod.runtime_key("cuda", torch.float32) and cpu != evmod.runtime_key("cpu", torch.float16)
    monkeypatch.setattr(type(ev2), "device", property(lambda self: "cuda"))
    assert _key(ev2, data, cfg) != k2
    monkeypatch.undo()
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if n != 1 else 2)
        assert _key(ev2, data, cfg) != k2
    finally:
        torch.set_num_threads(n)
    # the reward settings are not in the key: the reward is recomputed from cached results
    from dataclasses import replace

    assert _key(ev2, data, replace(cfg, reward=replace(cfg.reward, lam=3.0))) == k2
    assert json.dumps(ev2.request(data, ev2.parse_mask("all"), cfg)["runtime"])
