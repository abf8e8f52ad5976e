"""The PPO agent: a short training run, its artefacts, TensorBoard tags, resume after kill -9, replay."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from memrl.agents.config import TrainConfig
from memrl.errors import MemrlError

TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}


def tiny_config(model_dir: Path, total: int = 8, **train) -> dict:
    t = {"total_timesteps": total, "seed": 0, "checkpoint_every": 4, "heldout_datasets": ["mirrored"], "random_masks": 1, "final_pictures": True}
    t.update(train)
    return {
        "env": {"pretrained": str(model_dir), "datasets": ["inverted", "thick"], "preset": "quick", "eval_overrides": TINY},
        "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 2},
        "train": t,
    }


def rows(run: Path) -> list[dict]:
    with open(run / "evaluations.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_run(quick_model_dir, tmp_path_factory):
    from memrl.agents.train import train

    run = tmp_path_factory.mktemp("runs") / "run"
    summary = train(TrainConfig.from_dict(tiny_config(quick_model_dir[0])), run, progress=False, echo=lambda s: None)
    return run, summary


@pytest.mark.slow
def test_short_run_writes_every_artefact(trained_run):
    run, summary = trained_run
    for name in ("policy.zip", "best_mask.json", "evaluations.csv", "pareto.csv", "policy_eval.json", "descriptor.json", "config.yaml", "evaluations.sqlite", "optuna.db", "checkpoint/policy.zip", "best/samples.png", "best/nearest_neighbours.png"):
        assert (run / name).exists(), name
    rs = rows(run)
    assert len(rs) == 8 and [int(r["step"]) for r in rs] == list(range(1, 9))
    assert {r["dataset"] for r in rs} <= {"inverted", "thick"}
    assert all(np.isfinite(float(r["reward"])) for r in rs)
    best = json.loads((run / "best_mask.json").read_text())
    assert best["metrics"]["reward"] == pytest.approx(max(float(r["reward"]) for r in rs))
    assert set(best["mask_units"]) <= set(best["units"]) and best["method"] == "lora"
    pe = json.loads((run / "policy_eval.json").read_text())
    assert set(pe) == {"inverted", "thick", "mirrored"} and pe["mirrored"]["heldout"] is True
    assert summary["env_steps"] == 8
    assert _optuna_trials(run) == 8  # every evaluation is a trial optuna-dashboard can open


def _optuna_trials(run: Path) -> int:
    import optuna

    from memrl.reporting.optuna_store import default_storage

    return sum(len(optuna.load_study(study_name=s.study_name, storage=default_storage(run)).trials) for s in optuna.get_all_study_summaries(default_storage(run)))


@pytest.mark.slow
def test_tensorboard_tags(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = trained_run
    acc = EventAccumulator(str(run / "tb" / "memrl"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for t in ("eval/reward", "eval/fid", "eval/kid", "eval/nn_own_rate", "eval/replication_rate", "eval/text_guidance_auc", "eval/trainable_pct", "eval/best_reward", "eval/cache_hit_rate"):
        assert t in tags["scalars"], t
    for t in ("masks/bit_frequency", "pareto/scatter", "best/samples", "best/nearest_neighbours"):
        assert t in tags["images"], t
    assert len(acc.Scalars("eval/reward")) == 8
    ppo_dirs = list((run / "tb").glob("ppo_*"))
    assert ppo_dirs, "SB3's own PPO scalars are logged too"


@pytest.mark.slow
def test_existing_run_needs_resume(trained_run, quick_model_dir):
    from memrl.agents.train import train

    run, _ = trained_run
    with pytest.raises(MemrlError, match="--resume"):
        train(TrainConfig.from_dict(tiny_config(quick_model_dir[0])), run, progress=False)


@pytest.mark.slow
def test_replay_on_image_folder(trained_run, tmp_path):
    from PIL import Image

    from memrl.agents.replay import replay
    from memrl.data import digits
    from memrl.models.pipeline import DiffusionModel

    run, _ = trained_run
    src = digits.variant_splits("mirrored")
    folder = tmp_path / "folder"
    folder.mkdir()
    lines = ["file_name,caption"]
    for i in range(40):
        img = ((src.train.images[i, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
        lines.append(f"img{i}.png,\"{src.train.captions[i]}\"")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "replay"
    rep = replay(run / "policy.zip", str(folder), out, progress=False)
    assert rep["search_evaluations"] == 0
    assert rep["stage2"]["n_repeats"] == 1
    for k in ("fid", "nn_own_rate", "reward"):
        assert k in rep["metrics"]
    assert "fid" in rep["full_finetune"]
    assert (out / "report.json").is_file() and (out / "samples.png").is_file()
    m = DiffusionModel.from_pretrained(out / "model")
    x = m.generate(["digit 3"], num_inference_steps=2, seed=0)
    assert x.shape == (1, 1, 16, 16)


@pytest.mark.slow
def test_replay_rejects_policy_for_other_unit_count(trained_run, tmp_path):
    from memrl.agents.replay import replay
    from memrl.models.tiny import TinyModelConfig
    from memrl.training.pretrain import PretrainConfig, pretrain

    run, _ = trained_run
    other = tmp_path / "other"
    small = TinyModelConfig(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    pretrain(PretrainConfig.quick(steps=2, feature_epochs=1, eval_samples_per_digit=2, eval_inference_steps=2, model=small), other, progress=False)
    with pytest.raises(MemrlError, match="trained for 7 units"):
        replay(run / "policy.zip", "inverted", tmp_path / "r", pretrained=str(other), progress=False)


def test_replay_bad_inputs(tmp_path):
    from memrl.agents.replay import replay

    with pytest.raises(MemrlError, match="policy file"):
        replay(tmp_path / "nope.zip", "inverted", tmp_path / "o")
    (tmp_path / "p.zip").write_bytes(b"not a zip")
    with pytest.raises(MemrlError, match="config.yaml"):
        replay(tmp_path / "p.zip", "inverted", tmp_path / "o")


def test_train_config_errors(tmp_path):
    with pytest.raises(MemrlError, match="unknown section"):
        TrainConfig.from_dict({"envs": {}})
    with pytest.raises(MemrlError, match="unknown field"):
        TrainConfig.from_dict({"train": {"total_steps": 3}})
    with pytest.raises(MemrlError, match="not found"):
        TrainConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed")
    with pytest.raises(MemrlError, match="not valid YAML"):
        TrainConfig.load(bad)


def test_cli_help_lists_every_flag():
    from memrl.cli import build_parser

    p = build_parser()
    for cmd in ("train", "replay"):
        sub = p._subparsers._group_actions[0].choices[cmd]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{cmd} {action.option_strings} has no help"


@pytest.mark.slow
@pytest.mark.parametrize("setup, msg", [("missing", "not found"), ("empty", "is empty"), ("nocol", "missing the caption column"), ("badimg", "cannot read image")])
def test_replay_cli_bad_dataset_is_one_line_error(trained_run, tmp_path, capsys, setup, msg):
    from memrl.cli import main

    run, _ = trained_run
    if setup == "missing":
        spec = tmp_path / "nope"
    elif setup == "empty":
        spec = tmp_path / "empty"
        spec.mkdir()
    elif setup == "nocol":
        spec = tmp_path / "x.csv"
        spec.write_text("path,label\na.png,1\n")
    else:
        spec = tmp_path / "bad"
        spec.mkdir()
        (spec / "a.png").write_text("not an image")
        (spec / "a.txt").write_text("digit 1")
    out = tmp_path / "out"
    assert main(["replay", "--policy", str(run / "policy.zip"), "--dataset", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("memrl: error:"), err
    assert not out.exists(), "a rejected input leaves nothing behind"


@pytest.mark.slow
def test_resume_extends_a_finished_run(trained_run, tmp_path):
    import shutil

    from memrl.agents.train import train

    run, _ = trained_run
    copy = tmp_path / "extended"
    shutil.copytree(run, copy)
    summary = train(None, copy, resume=True, progress=False, echo=lambda s: None, total_timesteps=12)
    assert summary["env_steps"] == 12
    assert [int(r["step"]) for r in rows(copy)] == list(range(1, 13))
    assert rows(copy)[:8] == rows(run)
    assert TrainConfig.load(copy / "config.yaml").train.total_timesteps == 12
    assert _optuna_trials(copy) == 12


@pytest.mark.slow
def test_subprocess_envs_share_the_cache(quick_model_dir, tmp_path):
    """n_envs 2 in SubprocVecEnv workers (1 torch thread each) writing one SQLite cache."""
    from memrl.agents.train import train

    cfg = tiny_config(quick_model_dir[0], total=8, n_envs=2, vec_env="subproc", random_masks=0, final_pictures=False, heldout_datasets=[])
    run = tmp_path / "sub"
    summary = train(TrainConfig.from_dict(cfg), run, progress=False, echo=lambda s: None)
    rs = rows(run)
    assert summary["env_steps"] == 8 and len(rs) == 8
    assert sorted(int(r["step"]) for r in rs) == list(range(1, 9)) and {r["env"] for r in rs} == {"0", "1"}
    import sqlite3

    with sqlite3.connect(run / "evaluations.sqlite") as db:
        n_ok = db.execute("select count(*) from evaluations where status = 'ok'").fetchone()[0]
        counts = [c for (c,) in db.execute("select computations from evaluations where status = 'ok'")]
    # every distinct (dataset, mask) the workers evaluated is in the shared cache, + the references
    assert n_ok >= len({(r["dataset"], r["mask_bits"]) for r in rs})
    # and each was computed once, though both workers' first steps needed the same reference run
    assert counts and all(c == 1 for c in counts), counts
