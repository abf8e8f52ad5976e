"""The Optuna record of a run (optuna-dashboard) and the W&B mirror of TensorBoard."""

from __future__ import annotations

import sys
import types

import optuna
import pytest

from memrl.agents.config import TrainConfig
from memrl.errors import MemrlError
from memrl.reporting.optuna_store import OptunaStore, default_storage

UNITS = ["down_blocks.0", "mid_block", "up_blocks.0"]


def _row(step: int, dataset: str, bits: str, fid: float | None = None, failed: bool = False) -> dict:
    return {"step": str(step), "env": "0", "dataset": dataset, "method": "lora", "mask": "x", "mask_bits": bits, "lr": "0.01",
            "reward": "-21.0" if failed else "-1.5", "fid": "" if failed else str(fid), "nn_own_rate": "" if failed else "0.25",
            "trainable_fraction": "0.1", "cached": "False", "failed": str(failed), "error": "NonFiniteError: diverged" if failed else ""}  # fmt: skip


def test_optuna_store_trials_load_with_optuna_and_resync(tmp_path):
    url = default_storage(tmp_path)
    rows = [_row(1, "inverted", "101", 120.0), _row(2, "thick", "011", 90.0), _row(3, "inverted", "000", failed=True), _row(4, "inverted", "111", 80.0)]
    store = OptunaStore(url, UNITS, ["lora", "difffit"], "nn_own_rate")
    store.add(rows)
    st = optuna.load_study(study_name="inverted", storage=url)
    assert st.metric_names == ["fid", "nn_own_rate"] and len(st.directions) == 2
    trials = st.get_trials()
    assert len(trials) == 3
    assert trials[0].params == {"down_blocks.0": 1, "mid_block": 0, "up_blocks.0": 1, "method": "lora"}
    assert trials[0].values == [120.0, 0.25] and trials[0].user_attrs["reward"] == -1.5 and trials[0].user_attrs["step"] == 1
    assert trials[1].state == optuna.trial.TrialState.FAIL and "diverged" in trials[1].user_attrs["error"]
    assert {t.number for t in st.best_trials} == {0, 2} or len(st.best_trials) >= 1
    assert len(optuna.load_study(study_name="thick", storage=url).trials) == 1
    # a resumed run cut its log back: the record follows
    again = OptunaStore(url, UNITS, ["lora", "difffit"], "nn_own_rate")
    again.sync(rows[:2])
    assert again.n_trials() == 2
    assert len(optuna.load_study(study_name="inverted", storage=url).trials) == 1
    again.sync(rows[:2])  # already in step: nothing changes
    assert again.n_trials() == 2


def _tiny(model_dir, **train) -> TrainConfig:
    tiny = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}
    t = {"total_timesteps": 4, "seed": 0, "random_masks": 0, "final_pictures": False, "heldout_datasets": []}
    t.update(train)
    return TrainConfig.from_dict({"env": {"pretrained": str(model_dir), "datasets": ["inverted"], "preset": "quick", "eval_overrides": tiny}, "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 1}, "train": t})


@pytest.mark.slow
def test_train_mirrors_to_wandb(quick_model_dir, tmp_path, monkeypatch):
    """With a stand-in ``wandb`` module: init with TensorBoard sync before the writers, same id on resume, finish at the end."""
    from memrl.agents.train import train

    calls = []
    fake = types.ModuleType("wandb")
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    fake.init = lambda **kw: calls.append(("init", kw)) or types.SimpleNamespace(id=kw["id"])
    fake.finish = lambda: calls.append(("finish", {}))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real_find(name, *a))
    run = tmp_path / "run"
    train(_tiny(quick_model_dir[0], report_to=["wandb"], wandb_project="proj"), run, progress=False, echo=lambda s: None)
    assert [c[0] for c in calls] == ["init", "finish"]
    kw = calls[0][1]
    assert kw["sync_tensorboard"] is True and kw["project"] == "proj" and kw["id"] == "abc123" and kw["resume"] == "allow"
    assert kw["config"]["train"]["report_to"] == ["wandb"]
    assert (run / "wandb_id.txt").read_text().strip() == "abc123"
    # the Optuna record of the same run: one trial per evaluation, readable by optuna
    st = optuna.load_study(study_name="inverted", storage=default_storage(run))
    assert len(st.trials) == 4


def test_wandb_missing_is_one_clear_error_before_anything_is_written(quick_model_dir, tmp_path, monkeypatch):
    import importlib.util

    from memrl.agents.train import train

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find(name, *a))
    with pytest.raises(MemrlError, match=r"memrl\[wandb\]"):
        train(_tiny(quick_model_dir[0], report_to=["wandb"]), tmp_path / "run", progress=False, echo=lambda s: None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(MemrlError, match="report_to"):
        _tiny(quick_model_dir[0], report_to=["mlflow"])


def test_report_to_flag_sets_the_config_and_checks_the_package(quick_model_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    import yaml

    from memrl.cli import main

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find(name, *a))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"env": {"pretrained": str(quick_model_dir[0]), "datasets": ["inverted"], "preset": "quick"}}))
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--report-to", "wandb", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "memrl[wandb]" in err[0], err
    assert not (tmp_path / "run").exists()
