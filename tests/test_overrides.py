"""``--set KEY=VALUE`` overrides, ``memrl train --dry-run`` and the flags every command shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memrl.cli import build_parser, main
from memrl.errors import MemrlError
from memrl.utils.overrides import apply_sets, parse_sets

#: A budget of seconds (structure is real, numbers are not).
TINY_EVAL = {
    "finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1},
    "gens_per_prompt": 2,
    "n_fid_samples": 8,
    "inference_steps": 2,
    "noise_norm_timesteps": [500],
    "noise_norm_draws": 1,
}
TINY_SETS = [
    "env.datasets=[inverted]",
    "env.preset=quick",
    "env.eval_overrides=" + json.dumps(TINY_EVAL),
    "ppo.n_steps=2",
    "ppo.batch_size=2",
    "ppo.n_epochs=1",
    "train.total_timesteps=2",
    "train.random_masks=0",
    "train.final_pictures=false",
]


@pytest.fixture(scope="module")
def model(quick_model_dir) -> str:
    return str(quick_model_dir[0])


@pytest.fixture
def tiny_config(tmp_path, model) -> Path:
    d = {
        "env": {"pretrained": model, "datasets": ["inverted"], "preset": "quick", "eval_overrides": TINY_EVAL},
        "ppo": {"n_steps": 2, "batch_size": 2, "n_epochs": 1},
        "train": {"total_timesteps": 2, "random_masks": 0, "final_pictures": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("memrl: error:"), err[0]
    return err[0]


# ------------------------------------------------------------------------ parsing and applying
def test_parse_sets_nests_and_reads_yaml():
    s = parse_sets(["env.method=lora", "ppo.learning_rate=1e-3", "env.datasets=[inverted,thick]", "env.reward.lam=2", "env.eval_overrides.finetune.steps=50", "env.cache=", "train.final_pictures=true", "env.eval_overrides={gens_per_prompt: 2}"])
    assert s == {
        "env": {"method": "lora", "datasets": ["inverted", "thick"], "reward": {"lam": 2}, "eval_overrides": {"finetune": {"steps": 50}, "gens_per_prompt": 2}, "cache": None},
        "ppo": {"learning_rate": 1e-3},
        "train": {"final_pictures": True},
    }
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"  # the YAML 1.2 float reading stays local to --set


@pytest.mark.parametrize("items, needle", [(["novalue"], "not KEY=VALUE"), (["=3"], "no key"), (["a..b=1"], "dotted key"), (["a=1", "a=2"], "given twice"), (["a=1", "a.b=2"], "given twice"), (["a=[x"], "not valid YAML")])
def test_parse_sets_refuses_malformed_items(items, needle):
    with pytest.raises(MemrlError, match=needle):
        parse_sets(items)


def test_apply_sets_checks_and_merges():
    from memrl.agents.config import TrainConfig
    from memrl.evaluation.config import preset

    cfg = apply_sets(TrainConfig(), parse_sets(["env.reward.lam=2", "ppo.learning_rate=1e-3", "ppo.policy_kwargs.net_arch=[32]", "env.eval_overrides.finetune.lr='1e-4'", "env.lr_scales=[1e-1, 2]"]))
    assert cfg.env.reward == {"lam": 2.0} and isinstance(cfg.env.reward["lam"], float)
    assert cfg.ppo["learning_rate"] == 1e-3 and cfg.ppo["policy_kwargs"] == {"net_arch": [32]} and cfg.ppo["n_steps"] == 8
    assert cfg.env.eval_overrides == {"finetune": {"lr": 1e-4}}  # a number in quotes, for a float field
    assert cfg.env.lr_scales == [0.1, 2.0]
    assert cfg.env.eval_config().finetune.lr == 1e-4
    ev = apply_sets(preset("quick"), parse_sets(["finetune.steps=50", "reward.lam=2", "guidance_scale=1.5", "noise_norm_timesteps=[500]"]))
    assert (ev.finetune.steps, ev.finetune.batch_size, ev.reward.lam, ev.guidance_scale, ev.noise_norm_timesteps) == (50, 16, 2.0, 1.5, (500,))
    with pytest.raises(MemrlError, match=r"env: 'horizon' must be >= 1"):
        apply_sets(TrainConfig(), parse_sets(["env.horizon=0"]))
    with pytest.raises(MemrlError, match=r"'ppo.n_steps' must be an integer"):
        apply_sets(TrainConfig(), parse_sets(["ppo.n_steps=abc"]))


# ------------------------------------------------------------------------------ memrl train --set
def test_train_set_changes_the_saved_config(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--config", str(tiny_config), "--out", str(run), "--no-progress", "--json", "--set", "env.reward.lam=2", "ppo.learning_rate=1e-3", "env.eval_overrides.finetune.steps=3", "train.seed=1"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["env_steps"] == 2 and "policy_vs_random" in summary
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["env"]["reward"] == {"lam": 2.0}
    assert saved["ppo"]["learning_rate"] == 1e-3 and saved["ppo"]["n_steps"] == 2
    assert saved["env"]["eval_overrides"]["finetune"] == {**TINY_EVAL["finetune"], "steps": 3}
    assert saved["train"]["seed"] == 1 and saved["train"]["total_timesteps"] == 2


@pytest.mark.parametrize(
    "item, needles",
    [
        ("train.total_timesteps=abc", ["'train.total_timesteps'", "an integer", "'abc'"]),
        ("env.horizon=1.5", ["'env.horizon'", "an integer", "1.5"]),
        ("env.nope=1", ["'env.nope'", "valid keys of env:", "horizon", "eval_overrides"]),
        ("ppo.bogus=1", ["'ppo.bogus'", "valid keys of ppo", "n_steps", "learning_rate"]),
        ("env.eval_overrides.finetune.nope=1", ["'env.eval_overrides.finetune.nope'", "valid keys of env.eval_overrides.finetune:", "steps"]),
        ("env.reward.lam=-1", ["'lam' must be >= 0"]),
        ("novalue", ["'novalue'", "KEY=VALUE"]),
        ("=3", ["'=3'", "KEY=VALUE"]),
    ],
)
@pytest.mark.parametrize("with_config", [True, False])
def test_train_bad_set_is_one_line_and_writes_nothing(tmp_path, tiny_config, capsys, item, needles, with_config):
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--no-progress", "--set", item] + (["--config", str(tiny_config)] if with_config else [])
    assert main(argv) == 2
    line = one_error_line(capsys)
    for n in needles:
        assert n in line, (n, line)
    assert not run.exists()


def test_resume_refuses_set_except_total_timesteps(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--resume", "--out", str(run), "--set", "env.method=x", "train.total_timesteps=4"]) == 2
    line = one_error_line(capsys)
    assert "--resume cannot take --set env.method" in line and "keeps the config" in line and "train.total_timesteps may change" in line
    assert not run.exists()
    # train.total_timesteps alone passes the --set check (then: no run there to resume)
    assert main(["train", "--resume", "--out", str(run), "--set", "train.total_timesteps=4"]) == 2
    assert "holds no run" in one_error_line(capsys)
    assert main(["train", "--out", str(run), "--total-timesteps", "3", "--set", "train.total_timesteps=4"]) == 2
    assert "disagree" in one_error_line(capsys)
    assert not run.exists()


# ------------------------------------------------------------------------------ memrl train --dry-run
def test_dry_run_without_config_reports_and_writes_nothing(tmp_path, model, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--out", str(run), "--dry-run", "--no-progress", "--set", f"env.pretrained={model}", *(x for x in TINY_SETS if not x.startswith("train.random_masks")), "train.heldout_datasets=[thick]", "train.random_masks=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert not run.exists()
    for needle in ["dry run", "units (", "down_blocks", "action space: MultiBinary", "observation space: Box", "one evaluation step on inverted", "reference run", "estimate:"]:
        assert needle in out, (needle, out)
    # 2 training steps + (1 + 2) x 2 datasets (training + held-out) = 8 evaluations, 2 reference runs
    assert "estimate: 8 evaluations (2 training steps + 6 policy-vs-random)" in out
    assert "2 reference runs" in out
    import re

    secs = [float(x) for x in re.findall(r"([0-9.]+) s\b", out)]
    assert secs and all(s > 0 for s in secs)
    hours = float(re.search(r"\(([0-9.]+) h\)", out).group(1))
    assert hours >= 0


def test_dry_run_json(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--dry-run", "--json", "--set", "train.total_timesteps=5"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert not run.exists()
    assert rep["dry_run"] is True and rep["run_folder"]["state"] == "would be created"
    assert rep["units"]["names"] and set(rep["units"]["trainable"]["lora"]) <= set(rep["units"]["names"])
    assert rep["spaces"]["action_shape"] == [len(rep["units"]["names"])]
    assert rep["spaces"]["observation_shape"][0] > len(rep["units"]["names"])
    t, e = rep["timing"], rep["estimate"]
    assert t["step_seconds"] > 0 and t["reference_seconds"] > 0 and t["reference_from_cache_in_step"] and not t["failed"]
    assert t["mask_units"]  # the timed mask trains something
    assert e["evaluations"] == 5 + 1 and e["reference_runs"] == 1
    assert e["seconds"] > 0 and e["hours"] > 0
    assert rep["ppo"]["policy_parameters"] > 0 and rep["ppo"]["rollout"] == 2


def test_dry_run_builds_ppo(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--dry-run", "--no-progress", "--set", "ppo.n_steps=1"]) == 2
    assert "stable_baselines3.PPO refuses it" in one_error_line(capsys)
    assert not run.exists()


def test_dry_run_refuses_a_used_run_folder(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations.csv").write_text("step\n")
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--dry-run"]) == 2
    assert "already holds a run" in one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["evaluations.csv"]


# ------------------------------------------------------------------------------ memrl evaluate --set
def test_evaluate_set_reaches_the_result(tmp_path, model, capsys):
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", model, "--method", "lora", "--mask", "all", "--preset", "quick", "--out", str(out), "--json", "--lam", "2"]
    argv += ["--set", "finetune.steps=2", "finetune.batch_size=8", "finetune.n_mem=2", "finetune.n_repeats=2", "finetune.data_size_ratio=0.1"]
    argv += ["gens_per_prompt=2", "n_fid_samples=8", "inference_steps=2", "noise_norm_timesteps=[500]", "noise_norm_draws=1", "reward.mu=0"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["memorization_set"] == 2 and result["fid_n_fake"] == 8
    assert json.loads((out / "result.json").read_text())["fid_n_fake"] == 8
    # mu = 0 and lam = 2: the reward is -(fid_norm + 2 mem_norm), floored
    assert result["reward"] == pytest.approx(max(-20.0, -(result["fid_norm"] + 2 * result["mem_norm"])), abs=1e-6)


@pytest.mark.parametrize(
    "sets, needles",
    [
        (["nope=1"], ["'nope'", "valid keys:", "n_fid_samples"]),
        (["finetune.nope=1"], ["'finetune.nope'", "valid keys of finetune:", "steps"]),
        (["finetune.steps=abc"], ["'finetune.steps'", "an integer"]),
        (["finetune.lr=1e-3"], ["finetune.lr (use --lr)"]),
        (["reward.lam=3"], ["--lam 2.0 and --set reward.lam=3 disagree"]),
    ],
)
def test_evaluate_bad_set(tmp_path, model, capsys, sets, needles):
    out = tmp_path / "ev"
    assert main(["evaluate", "--pretrained", model, "--method", "lora", "--mask", "all", "--preset", "quick", "--out", str(out), "--lam", "2", "--set", *sets]) == 2
    line = one_error_line(capsys)
    for n in needles:
        assert n in line, (n, line)
    assert not out.exists()


# ------------------------------------------------------------------------------ shared flags
def test_sample_json_and_model_aliases(tmp_path, model, capsys):
    for flag in ("--model", "--pretrained"):
        out = tmp_path / f"g{flag}.png"
        assert main(["sample", flag, model, "--prompt", "digit 1", "-n", "2", "--steps", "2", "--out", str(out), "--json", "--no-progress"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["out"] == str(out) and rep["images"] == 2 and rep["prompts"] == ["digit 1"] and out.is_file()


def test_every_command_shares_the_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    for cmd in ("sample", "evaluate", "train", "replay"):
        assert {"--pretrained", "--model"} <= flags[cmd], cmd
    for cmd in ("pretrain", "sample", "evaluate", "train", "replay"):
        assert {"--no-progress", "--json"} <= flags[cmd], cmd
    for cmd in ("evaluate", "train"):
        assert "--set" in flags[cmd]
    for argv in (["sample", "--model", "M", "--out", "o.png"], ["sample", "--pretrained", "M", "--out", "o.png"]):
        assert parser.parse_args(argv).pretrained == "M"
    for flag in ("--model", "--pretrained"):
        args = parser.parse_args(["evaluate", flag, "M", "--method", "lora", "--mask", "all", "--out", "o"])
        assert args.pretrained == "M"
        assert parser.parse_args(["train", flag, "M", "--out", "o"]).pretrained == "M"
        assert parser.parse_args(["replay", flag, "M", "--policy", "p", "--dataset", "d", "--out", "o"]).pretrained == "M"
    evaluate = sub.choices["evaluate"]
    cache_help = next(a.help for a in evaluate._actions if "--cache" in a.option_strings)
    assert "OUT/evaluations.sqlite" in cache_help
    set_help = next(a.help for a in evaluate._actions if "--lam" in a.option_strings)
    assert "--set reward.lam" in set_help
