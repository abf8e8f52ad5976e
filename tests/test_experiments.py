"""Experiment scripts: what they reuse, and that their figures come from real evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _effect_table(model: Path, tmp: Path, capsys, *extra: str) -> str:
    """The script's output, run in this process (four runs: a subprocess each would re-import torch)."""
    budget = [] if "--finetune-steps" in extra else ["--finetune-steps", "2"]  # reuse does not depend on the budget's size
    argv = ["--model", str(model), "--preset", "quick", "--seeds", "0", "--only", "full | all",
            "--cache", str(tmp / "c.sqlite"), "--out", str(tmp / "table"), *budget, *extra]  # fmt: skip
    capsys.readouterr()
    assert _load("effect_table").main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_effect_table_reuses_rows_only_for_the_same_full_request(quick_model_dir, tmp_path, capsys):
    model = quick_model_dir[0]
    first = _effect_table(model, tmp_path, capsys)
    assert "reused" not in first
    again = _effect_table(model, tmp_path, capsys)
    assert "reused 1 row(s)" in again
    # another model with the same units, data, preset and seeds is another request: nothing
    # stale is reprinted (the old check compared only dataset, preset, seeds and units)
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-model"
    shutil.copytree(model, other)
    wfile = next((other / "unet").glob("*.safetensors"))
    state = load_file(str(wfile))
    name = next(k for k in state if k.endswith("conv_out.bias"))
    state[name] = state[name] + 0.01
    save_file(state, str(wfile))
    assert "reused" not in _effect_table(other, tmp_path, capsys)
    # another budget too
    assert "reused" not in _effect_table(model, tmp_path, capsys, "--finetune-steps", "3")
    rows = json.loads((tmp_path / "table.json").read_text())["results"]
    assert all(r["units_trained"] is not None and "reuse_key" in r for rs in rows.values() for r in rs)


def test_run_takes_the_method_from_the_config_only(quick_model_dir):
    """``Evaluator.run`` cannot train one method and label the result with another."""
    import inspect

    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator, preset

    assert "method" not in inspect.signature(Evaluator.run).parameters
    ev = Evaluator(quick_model_dir[0])
    cfg = preset("quick").with_method("difffit", None, 0)
    r = ev.run(load_dataset("thick"), ev.parse_mask("none"), cfg)
    assert r["method"] == "difffit" and r["lr"] == cfg.finetune.resolved_lr()


def test_preset_correlation_compares_two_presets_on_the_same_masks(quick_model_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("preset_correlation", Path(__file__).resolve().parents[1] / "experiments" / "preset_correlation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "pc.md"
    argv = ["--model", str(quick_model_dir[0]), "--dataset", "inverted", "--masks", "2", "--presets", "quick", "quick", "--cache", str(tmp_path / "c.sqlite"), "--out", str(out)]
    assert mod.main(argv) == 0
    text = out.read_text()
    # the same preset twice is the same evaluation (cache hits): the ranking agrees perfectly
    assert "| reward | 1.000 | 1.000 |" in text
    assert text.count("| `") == 3  # all + 2 drawn masks


def test_exhaustive_tables_carry_a_partial_table_across_sessions(quick_model_dir, tmp_path, capsys):
    """``exhaustive_tables.py --snapshot`` keeps an unfinished table's evaluations; a later run on a
    machine without ``runs/`` starts from them (cache hits, not fine-tunes) and finishes the table."""
    import csv

    import yaml

    from memrl.cli import main as memrl

    tables = _load("exhaustive_tables")
    tiny = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}

    def config(budget: int) -> Path:
        cfg = {"env": {"pretrained": str(quick_model_dir[0]), "datasets": ["inverted"], "method": "lora", "granularity": "block", "preset": "quick", "eval_overrides": tiny},
               "search": {"optimizer": "exhaustive", "budget": budget, "final_pictures": False}}  # fmt: skip
        path = tmp_path / f"exhaustive-{budget}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    runs, results = tmp_path / "runs", tmp_path / "results"
    name = tables.table_name("inverted", "lora", 0)
    # session 1: the table is interrupted after 2 masks (a run of budget 2 stands in for it)
    assert memrl(["search", "--config", str(config(2)), "--dataset", "inverted", "--set", "env.seed=0", "--out", str(runs / name), "--no-progress"]) == 0
    assert tables.main(["--snapshot", "--runs", str(runs), "--results", str(results)]) == 0
    part = results / "partial" / f"{name}.jsonl"
    assert part.is_file() and not (results / f"{name}.csv").exists()
    first = list(csv.DictReader(open(runs / name / "evaluations.csv")))
    assert len(first) == 2
    # session 2: runs/ is gone; the run is seeded from the snapshot and finishes (budget 3)
    import shutil

    shutil.rmtree(runs)
    capsys.readouterr()
    assert tables.main(["--datasets", "inverted", "--config", str(config(3)), "--runs", str(runs), "--results", str(results)]) == 0
    assert "imported" in capsys.readouterr().out
    done = list(csv.DictReader(open(results / f"{name}.csv")))
    assert [r["mask_bits"] for r in done[:2]] == [r["mask_bits"] for r in first]
    assert [r["cached"] for r in done] == ["True", "True", "False"]  # the snapshot's masks were not fine-tuned again
    assert [float(r["reward"]) for r in done[:2]] == [float(r["reward"]) for r in first]
    assert (results / f"{name}.jsonl").is_file() and not part.exists()  # the finished table replaces its snapshot
    # a third session skips the finished table
    assert tables.main(["--datasets", "inverted", "--config", str(config(3)), "--runs", str(runs), "--results", str(results)]) == 0
    assert "already in" in capsys.readouterr().out
