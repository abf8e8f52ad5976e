"""Fault injection: a diverged fine-tune is one penalised step, never the run; kill -9 loses nothing."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from memrl.agents.config import TrainConfig
from memrl.errors import EvaluationFailed, MemrlError, NonFiniteError

TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}
#: The second learning-rate bucket multiplies the method's default by 1e36: the weights overflow
#: to inf within the first steps, so every proposal in that bucket diverges.
ABSURD = [1.0, 1e36]


def tiny_config(model_dir: Path, total: int = 8, env: dict | None = None, **train) -> dict:
    t = {"total_timesteps": total, "seed": 0, "checkpoint_every": 4, "heldout_datasets": [], "random_masks": 0, "final_pictures": False}
    t.update(train)
    e = {"pretrained": str(model_dir), "datasets": ["inverted", "thick"], "preset": "quick", "eval_overrides": TINY}
    e.update(env or {})
    return {"env": e, "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 2}, "train": t}


def rows(run: Path) -> list[dict]:
    with open(run / "evaluations.csv", newline="") as f:
        return list(csv.DictReader(f))


def cache_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("select key, status, computations, deterministic, error from evaluations").fetchall()


@pytest.fixture(scope="module")
def evaluator(quick_model_dir, tmp_path_factory):
    from memrl.evaluation import Evaluator

    return Evaluator(quick_model_dir[0], cache=tmp_path_factory.mktemp("faultcache") / "c.sqlite")


def tiny_eval_config():
    from memrl.envs.config import EnvConfig

    return EnvConfig(datasets=["inverted"], preset="quick", eval_overrides=TINY).eval_config()


# ---------------------------------------------------------------------------------------- the evaluator
def test_diverged_finetune_raises_and_is_cached_as_failed(evaluator):
    from memrl.data.loaders import load_dataset

    data = load_dataset("inverted")
    cfg = tiny_eval_config()
    with pytest.raises(NonFiniteError, match="diverged|not finite"):
        evaluator.evaluate(data, "full", "all", cfg, lr=1e36, seed=0, with_reward=False)
    failed = [r for r in evaluator.cache.rows() if r["status"] == "failed"]
    assert failed and failed[-1]["deterministic"] == 1
    # the same request again is answered from the cache as the same failure, without recomputing
    misses = evaluator.misses
    with pytest.raises(EvaluationFailed, match="recorded earlier"):
        evaluator.evaluate(data, "full", "all", cfg, lr=1e36, seed=0, with_reward=False)
    assert evaluator.misses == misses


def test_non_finite_samples_are_caught_before_the_metrics(evaluator, monkeypatch):
    """A model whose samples are NaN (weights fine, output not) fails before FID's eigvals sees them."""
    import torch

    from memrl.data.loaders import load_dataset
    from memrl.models.pipeline import DiffusionModel

    real = DiffusionModel.generate

    def nan_generate(self, prompts, *a, **k):  # noqa: ANN001, ANN002, ANN003
        out = real(self, prompts, *a, **k)
        if isinstance(out, tuple):  # (images, guidance norms)
            return torch.full_like(out[0], float("nan")), out[1]
        return torch.full_like(out, float("nan"))

    monkeypatch.setattr(DiffusionModel, "generate", nan_generate)
    with pytest.raises(NonFiniteError, match="samples"):
        evaluator.run(load_dataset("thick"), evaluator.parse_mask("none"), tiny_eval_config().with_method("lora", None, 0))


def test_failure_reward_is_below_every_reachable_reward():
    from memrl.envs.config import EnvConfig
    from memrl.evaluation.config import RewardConfig
    from memrl.evaluation.reward import reward

    cfg = EnvConfig(datasets=["inverted"])
    floor = cfg.eval_config().reward.floor
    assert cfg.resolved_failure_reward() < floor
    ref = {"fid": 10.0, "nn_own_rate": 0.9}
    terrible = reward({"fid": 1e6, "nn_own_rate": 1.0, "trainable_fraction": 1.0}, ref, RewardConfig())
    assert terrible["reward"] == floor and terrible["reward_unclipped"] < floor
    assert cfg.resolved_failure_reward() < terrible["reward"]
    best = reward({"fid": 0.0, "nn_own_rate": 0.0, "trainable_fraction": 0.0}, ref, RewardConfig())
    assert best["reward"] == 0.0
    with pytest.raises(MemrlError, match="below the reward floor"):
        EnvConfig(datasets=["inverted"], failure_reward=-5.0).resolved_failure_reward()


def test_evaluate_cli_diverged_is_one_line_and_recorded(quick_model_dir, tmp_path, capsys):
    """The issue's crash: `memrl evaluate --method full --mask all --lr 1e3 --preset quick` aborted the process."""
    from memrl.cli import main

    out = tmp_path / "nan"
    rc = main(["evaluate", "--method", "full", "--mask", "all", "--lr", "1e36", "--preset", "quick", "--pretrained", str(quick_model_dir[0]), "--out", str(out), "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("memrl: evaluation failed:") and "diverged" in err[0], err
    res = json.loads((out / "result.json").read_text())
    assert res["failed"] is True and "diverged" in res["error"]


@pytest.mark.slow
def test_evaluate_cli_lr_1e3_does_not_crash(quick_model_dir, tmp_path, capsys):
    """The exact command of the report: it must end with a result or one failure line, never a signal."""
    out = tmp_path / "e"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [sys.executable, "-m", "memrl.cli", "evaluate", "--method", "full", "--mask", "all", "--lr", "1e3", "--preset", "quick", "--pretrained", str(quick_model_dir[0]), "--out", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode in (0, 1), p.stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    if p.returncode == 1:
        assert res["failed"] is True and p.stderr.strip().splitlines()[-1].startswith("memrl: evaluation failed:")
    else:
        assert np.isfinite(res["fid"])


# ---------------------------------------------------------------------------------------- memrl train
def _check_penalised(run: Path, cfg: TrainConfig) -> None:
    rs = rows(run)
    assert len(rs) == cfg.train.total_timesteps
    failed = [r for r in rs if r["failed"] == "True"]
    ok = [r for r in rs if r["failed"] == "False"]
    assert failed, "the absurd learning-rate bucket must have been proposed at least once"
    assert ok, "and the normal one too"
    penalty = cfg.env.resolved_failure_reward()
    for r in failed:
        assert float(r["reward"]) == penalty and ("diverged" in r["error"] or "not finite" in r["error"]), r
    assert max(float(r["reward"]) for r in failed) < min(float(r["reward"]) for r in ok)
    assert (run / "policy.zip").is_file()
    # failures are in the cache, as deterministic, and no result was computed twice
    cr = cache_rows(run / "evaluations.sqlite")
    assert any(s == "failed" and d == 1 for _, s, _, d, _ in cr)
    assert all(c <= 1 for _, s, c, _, _ in cr if s == "ok"), cr
    # TensorBoard counts the failures
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb" / "memrl"), size_guidance={"scalars": 0})
    acc.Reload()
    assert acc.Scalars("eval/failures")[-1].value == len(failed)


@pytest.mark.slow
def test_nan_step_in_train_is_penalised_and_run_finishes(quick_model_dir, tmp_path):
    from memrl.agents.train import train

    cfg = TrainConfig.from_dict(tiny_config(quick_model_dir[0], total=8, env={"lr_scales": ABSURD}))
    train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    _check_penalised(tmp_path / "run", cfg)


@pytest.mark.slow
def test_nan_step_under_subproc_vec_env(quick_model_dir, tmp_path):
    from memrl.agents.train import train

    cfg = TrainConfig.from_dict(tiny_config(quick_model_dir[0], total=8, env={"lr_scales": ABSURD}, n_envs=2, vec_env="subproc"))
    train(cfg, tmp_path / "sub", progress=False, echo=lambda s: None)
    _check_penalised(tmp_path / "sub", cfg)
    assert {r["env"] for r in rows(tmp_path / "sub")} == {"0", "1"}


@pytest.mark.slow
def test_kill_9_during_evaluation_then_resume_loses_and_duplicates_nothing(quick_model_dir, tmp_path):
    """kill -9 a training subprocess mid-run, resume, and check nothing finished is redone or lost."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(quick_model_dir[0], total=16)))
    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "memrl.cli", "train", "--config", str(cfg), "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # wait until a checkpoint exists and at least one evaluation after it is recorded
    while time.time() < deadline:
        if (run / "checkpoint" / "state.pkl").is_file() and (run / "evaluations.csv").is_file() and len(rows(run)) >= 6:
            break
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = rows(run)
    assert 6 <= len(before) < 16
    out = subprocess.run([sys.executable, "-m", "memrl.cli", "train", "--out", str(run), "--resume", "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stdout
    after = rows(run)
    # no lost and no duplicate row: every step exactly once, in order
    assert [int(r["step"]) for r in after] == list(range(1, 17))
    # the same masks were proposed again (every RNG restored) and finished ones came from the cache
    n_done = len(before)
    for a, b in zip(before[:n_done], after[:n_done]):
        assert (a["dataset"], a["mask_bits"], a["reward"]) == (b["dataset"], b["mask_bits"], b["reward"])
    assert any(r["cached"] == "True" for r in after[:n_done]), "replayed evaluations after the checkpoint must be cache hits"
    # the evaluation the kill interrupted left a claim of a dead process: it was taken over, and
    # no result was computed twice
    cr = cache_rows(run / "evaluations.sqlite")
    assert all(s == "ok" for _, s, _, _, _ in cr), cr
    assert all(c == 1 for _, _, c, _, _ in cr), cr
    # the Optuna record follows the log: one trial per step, none from the killed run's tail
    import optuna

    from memrl.reporting.optuna_store import default_storage

    url = default_storage(run)
    assert sum(len(optuna.load_study(study_name=s.study_name, storage=url).trials) for s in optuna.get_all_study_summaries(url)) == 16


# ---------------------------------------------------------------------------------------- masks that train nothing
@pytest.fixture(scope="module")
def block_evaluator(quick_model_dir, tmp_path_factory):
    """Whole blocks as units (as experiments/digits.yaml uses): down_blocks.0 and up_blocks.2 hold no attention."""
    from memrl.evaluation import Evaluator

    return Evaluator(quick_model_dir[0], cache=tmp_path_factory.mktemp("blockcache") / "c.sqlite", granularity="block")


def test_mask_of_units_without_parameters_is_the_base_model_in_the_env(block_evaluator):
    from memrl.envs.config import EnvConfig
    from memrl.envs.mask_selection import MaskSelectionEnv

    evaluator = block_evaluator
    units = evaluator.units
    empty = [u for u in units if u not in evaluator.trainable_units("lora")]
    assert empty, "the tiny model has units without attention"
    assert empty == ["down_blocks.0", "up_blocks.2"]
    env = MaskSelectionEnv(EnvConfig(pretrained=str(evaluator.pretrained_dir), datasets=["inverted"], preset="quick", eval_overrides=TINY, granularity="block"), evaluator=evaluator)
    env.reset(seed=0)
    action = np.array([int(u in empty) for u in units], dtype=np.int8)
    _, r_empty, _, _, info = env.step(action)
    assert info["mask"] == "none" and info["mask_units"] == [] and info["empty_units"] == empty
    assert info["proposed_mask_bits"] == "".join(map(str, action.tolist()))
    assert info["trainable_params"] == 0
    env.reset(seed=0)
    _, r_none, _, _, info_none = env.step(np.zeros(len(units), dtype=np.int8))
    assert r_none == r_empty and info_none["fid"] == info["fid"]
    # one partly empty proposal trains (and is labelled by) only its trainable units
    can = evaluator.trainable_units("lora")
    env.reset(seed=0)
    part = np.array([int(u in empty or u == can[0]) for u in units], dtype=np.int8)
    _, _, _, _, info_p = env.step(part)
    assert info_p["mask_units"] == [can[0]] and info_p["empty_units"] == empty


def test_evaluate_cli_refuses_mask_that_trains_nothing(quick_model_dir, tmp_path, capsys):
    from memrl.cli import main

    out = tmp_path / "o"
    rc = main(["evaluate", "--method", "lora", "--mask", "down_blocks.0,up_blocks.2", "--granularity", "block", "--preset", "quick", "--pretrained", str(quick_model_dir[0]), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "trains nothing" in err[0] and err[0].startswith("memrl: error:"), err
    assert not out.exists()


# ---------------------------------------------------------------------------------------- metric inputs
def test_fid_prompts_never_include_memorization_captions(evaluator):
    from memrl.data.dataset import CaptionedImages, DatasetSplits
    from memrl.data.loaders import load_dataset

    d = load_dataset("thick")
    mem = d.train.captions[:3]
    held_caps = list(d.heldout.captions)
    held_caps[0], held_caps[1] = mem[0], mem[1]  # two held-out captions equal memorization prompts
    data = DatasetSplits(d.name, d.train, CaptionedImages(d.heldout.images, held_caps, "h"))
    prompts = evaluator.fid_prompts(data, mem, 200)
    assert len(prompts) == 200 and not set(prompts) & set(mem)
    all_mem = DatasetSplits(d.name, d.train, CaptionedImages(d.heldout.images[:2], [mem[0], mem[1]], "h"))
    with pytest.raises(MemrlError, match="every held-out caption"):
        evaluator.fid_prompts(all_mem, mem, 10)


def test_heldout_minimum_and_weak_fid_warning(evaluator):
    from memrl.data.dataset import CaptionedImages, DatasetSplits
    from memrl.data.loaders import load_dataset

    d = load_dataset("thick")
    tiny = DatasetSplits(d.name, d.train, CaptionedImages(d.heldout.images[:1], d.heldout.captions[:1], "h"))
    with pytest.raises(MemrlError, match="1 held-out image"):
        evaluator.evaluate(tiny, "lora", "none", tiny_eval_config(), with_reward=False)
    r = evaluator.evaluate(d, "lora", "none", tiny_eval_config(), with_reward=False)
    # the built-in held-out set has fewer images than the 64-d feature space: FID is flagged
    assert r["fid_n_real"] < 64 and any("statistically weak" in w for w in r["warnings"])
