"""One evaluation split across processes (memrl.training.distributed), run here with torchrun on
the CPU (gloo): the same numbers as one process with grad_accumulation = processes, one report,
and a refusal for the commands that parallelise across evaluations instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memrl.training.distributed import DataParallel, launched_processes

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


@pytest.mark.parametrize("n", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_and_round_robin_cover_everything_once(n, world):
    shards = [DataParallel(r, world, torch.device("cpu")).shard(n) for r in range(world)]
    assert [i for s in shards for i in range(n)[s]] == list(range(n))
    parts = list(range(n))
    mine = [DataParallel(r, world, torch.device("cpu")).mine(parts) for r in range(world)]
    assert sorted(i for m in mine for i in m) == parts


def test_without_a_launcher_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1 and DataParallel.from_launcher("cpu") is None


def test_generate_part_equals_that_slice_of_the_whole_call(quick_model_dir):
    from memrl.models.pipeline import DiffusionModel

    model = DiffusionModel.from_pretrained(quick_model_dir[0])
    prompts = [f"digit {i % 10}" for i in range(7)]
    whole, norms = model.generate(prompts, 3, 1.5, seed=4, batch_size=3, return_guidance_norms=True)
    for s in (slice(0, 4), slice(4, 7), slice(7, 7)):
        part, part_norms = model.generate(prompts, 3, 1.5, seed=4, batch_size=2, return_guidance_norms=True, part=s)
        assert part.shape[0] == len(range(7)[s])
        torch.testing.assert_close(part, whole[s], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(part_norms, norms[s], atol=1e-5, rtol=1e-5)


def test_train_under_a_launcher_is_refused_with_the_alternative(monkeypatch, capsys):
    from memrl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--out", "nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memrl train runs in one process" in err[0] and "n_envs" in err[0]
    assert not Path("nowhere").exists()


def _evaluate(model: Path, out: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    # the quick preset made smaller still (the comparison holds at any budget; three launches)
    small = ["finetune.steps=4", "n_fid_samples=16", "gens_per_prompt=2", "inference_steps=3", "noise_norm_draws=1"]
    args = ["evaluate", "--method", "lora", "--mask", "all", "--preset", "quick", "--dataset", "family:3", "--pretrained", str(model), "--out", str(out), "--device", "cpu", "--json", "--set", *small, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    if processes == 1:
        cmd = [sys.executable, "-m", "memrl", *args]
    else:
        cmd = [TORCHRUN, "--nproc_per_node", str(processes), "--standalone", "-m", "memrl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun (part of torch) is not on PATH")
def test_two_processes_equal_one_with_two_micro_batches_and_report_once(quick_model_dir, tmp_path):
    model = quick_model_dir[0]
    two = _evaluate(model, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, two.stdout  # process 0 alone prints the result
    split = json.loads(lines[0])
    one = _evaluate(model, tmp_path / "one", 1, "--set", "finetune.grad_accumulation=2")
    assert one.returncode == 0, one.stderr[-2000:]
    single = json.loads(one.stdout.strip().splitlines()[-1])
    assert split["final_loss"] == pytest.approx(single["final_loss"], rel=1e-5)
    for key in ("fid", "kid", "nn_own_rate", "text_guidance_auc", "noise_norm_mean", "reward"):
        assert split[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    assert json.loads((tmp_path / "two" / "result.json").read_text())["fid"] == split["fid"]
    assert (tmp_path / "two" / "samples.png").exists()

    # a diverged fine-tune fails in every process alike: one report line, exit status 1, recorded
    bad = _evaluate(model, tmp_path / "nan", 2, "--lr", "1e36")
    assert bad.returncode != 0
    reports = [line for line in bad.stderr.splitlines() if line.startswith("memrl:")]
    assert len(reports) == 1 and reports[0].startswith("memrl: evaluation failed:") and "diverged" in reports[0], bad.stderr[-2000:]
    assert json.loads((tmp_path / "nan" / "result.json").read_text())["failed"] is True
