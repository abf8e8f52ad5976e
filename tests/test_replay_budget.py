"""``memrl replay --budget K``: K search evaluations on the new dataset, warm-started with the
policy's proposals, before Stage 2; ``--budget 0`` is the zero-shot replay as it was.

The policy is a real ``memrl train`` run, answered from test_lookup's full lookup table (8 steps, no
fine-tuning); the replays fine-tune the quick test model on ``thick`` (a dataset the policy never
saw) with its tiny evaluation budget.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from memrl.envs.policy import TrainedPolicy
from test_lookup import TINY, full_table, made, train_config  # noqa: F401 - fixtures

#: report.json's keys before --budget (zero_shot and search are new; search_evaluations was always 0).
OLD_KEYS = {"dataset", "policy", "search_evaluations", "mask", "mask_units", "mask_bits", "proposed_mask_bits", "empty_units", "method", "lr", "stage2", "descriptor", "metrics", "full_finetune", "vs_full", "saved"}


def rows(run: Path) -> list[dict]:
    with open(run / "evaluations.csv", newline="") as f:
        return list(csv.DictReader(f))


def bits(p) -> str:  # noqa: ANN001
    return "".join(map(str, p.bits))


@pytest.fixture(scope="module")
def policy(full_table, quick_model_dir, tmp_path_factory):  # noqa: F811
    """RUN/policy.zip of `memrl train --lookup` on the full table (8 steps)."""
    from memrl.cli import main

    tmp = tmp_path_factory.mktemp("policy")
    run = tmp / "run"
    assert main(["train", "--config", str(train_config(tmp, quick_model_dir[0])), "--out", str(run), "--lookup", str(full_table), "--no-progress", "--json"]) == 0
    return run / "policy.zip"


@pytest.fixture(scope="module")
def ranked(policy, quick_model_dir):
    """The policy's proposals on `thick`, computed here independently of replay."""
    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator

    tp = TrainedPolicy.load(policy)
    ev = Evaluator(quick_model_dir[0], granularity=tp.env.granularity)
    return tp.ranked(ev, tp.describe(ev, load_dataset("thick", ev.image_size, ev.image_channels)))


def test_budget_refines_the_policy_mask(policy, ranked, tmp_path, capsys):
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), "--budget", "3", "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads((out / "report.json").read_text())
    rs = rows(out / "search")
    # K evaluations spent, warm-started with the policy's top min(4, K) proposals, its own mask first
    assert len(rs) == 3 and rep["search_evaluations"] == 3 and rep["search"]["evaluations"] == 3
    assert [r["proposed_mask_bits"] for r in rs] == [bits(p) for p in ranked[:3]]
    assert ranked[0].deterministic and rs[0]["mask_bits"] == ranked[0].mask.bitstring
    # the Stage-2 mask is the best of them by reward
    best = max(rs, key=lambda r: float(r["reward"]))
    s = rep["search"]
    assert rep["mask_bits"] == best["mask_bits"] == s["mask_bits"] == rep["metrics"]["mask_bits"]
    assert s["reward"] == pytest.approx(float(best["reward"])) and s["step"] == int(best["step"]) and s["warm_start"] is True
    assert s["run"] == str(out / "search") and s["optimizer"] == "tpe" and s["warm_start_k"] == 3
    # the zero-shot mask, with the search preset's reward it got as trial 1
    z = rep["zero_shot"]
    assert z["mask_bits"] == ranked[0].mask.bitstring and z["method"] == ranked[0].method
    assert z["search_reward"] == pytest.approx(float(rs[0]["reward"])) and z["search_step"] == 1
    # evaluated with the policy's own settings, recorded as a memrl search run
    tp = TrainedPolicy.load(policy)
    saved = yaml.safe_load((out / "search" / "config.yaml").read_text())
    assert saved["env"]["eval_overrides"] == TINY and saved["env"]["preset"] == tp.env.preset == "quick"
    assert (saved["env"]["method"], saved["env"]["seed"], saved["env"]["reward"]) == (tp.env.method, tp.env.seed, tp.env.reward)
    assert saved["search"]["warm_start"] == str(policy) and saved["search"]["budget"] == 3 and saved["search"]["optimizer"] == "tpe"
    summary = json.loads((out / "search" / "best.json").read_text())
    assert [t["step"] for t in summary["warm_start"]["trials"]] == [1, 2, 3]
    for name in ("optuna.db", "tb", "table.jsonl", "evaluations.csv"):
        assert (out / "search" / name).exists(), name
    assert (out / "model").is_dir() and (out / "samples.png").is_file()


def test_budget_with_the_reward_model_starts_from_the_policys_training(policy, tmp_path, capsys):
    """--optimizer model: the search's prior is the policy's run (its evaluations of `inverted`), no warm start."""
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), "--budget", "2", "--optimizer", "model", "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rs = rows(out / "search")
    assert len(rs) == 2 and len({r["mask_bits"] for r in rs}) == 2
    assert rep["search"]["optimizer"] == "model" and rep["search"]["warm_start_k"] == 0 and rep["search"]["warm_start"] is False
    saved = yaml.safe_load((out / "search" / "config.yaml").read_text())
    assert saved["search"]["prior"] == str(policy.parent) and saved["search"]["warm_start"] is None
    assert rep["mask_bits"] == max(rs, key=lambda r: float(r["reward"]))["mask_bits"]
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(tmp_path / "x"), "--budget", "2", "--optimizer", "model", "--warm-start-k", "1"]) == 2
    assert "--warm-start-k is for tpe and random" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_budget_with_a_screen_gives_the_full_evaluation_to_the_best_screens(policy, ranked, tmp_path, capsys):
    """--screen-steps: multi-fidelity refinement. Every trial is screened with a 1-step fine-tune
    (the policy's budget has 2), only the promoted ones are evaluated in full, and the Stage-2 mask
    is the best full evaluation; bad screens are refused before OUT exists."""
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), "--budget", "4", "--screen-steps", "1", "--screen-eta", "2", "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    fulls = rows(out / "search")
    with open(out / "search" / "screening.csv", newline="") as f:
        screens = list(csv.DictReader(f))
    assert [r["proposed_mask_bits"] for r in screens] == [bits(p) for p in ranked[:4]]  # the policy's proposals, each screened
    sc = rep["search"]["screen"]
    assert sc["steps"] == 1 and sc["eta"] == 2 and sc["screens"] == 4 and 1 <= sc["promoted"] == len(fulls) <= 4
    assert rep["search_evaluations"] == len(fulls)
    # successive halving: a trial got the full evaluation exactly when its screen was within the best
    # max(1, n // eta) of the n screens up to it
    screen_rewards = [float(r["reward"]) for r in screens]
    promoted = {r["step"] for r in fulls}
    for n, r in enumerate(screens, start=1):
        top = sorted(screen_rewards[:n], reverse=True)[: max(1, n // 2)]
        assert (r["step"] in promoted) == (screen_rewards[n - 1] >= top[-1]), (n, screen_rewards)
    # a full evaluation is a promoted screen's mask, and its reward is not the screen's (another budget)
    by_step = {r["step"]: r for r in screens}
    assert all(r["mask_bits"] == by_step[r["step"]]["mask_bits"] and r["reward"] != by_step[r["step"]]["reward"] for r in fulls)
    assert rep["mask_bits"] == max(fulls, key=lambda r: float(r["reward"]))["mask_bits"]
    saved = yaml.safe_load((out / "search" / "config.yaml").read_text())
    assert saved["search"]["screen_steps"] == 1 and saved["search"]["screen_eta"] == 2
    # a screen as long as the evaluation, a screen without a search, an eta without a screen: one line each, nothing written
    for extra, msg in (
        (["--budget", "4", "--screen-steps", "2"], "must be below the full evaluation's fine-tuning steps"),
        (["--screen-steps", "1"], "give --budget K > 0"),
        (["--budget", "4", "--screen-eta", "3"], "give --screen-steps N"),
        (["--budget", "4", "--screen-steps", "1", "--screen-eta", "1"], "--screen-eta must be a whole number >= 2"),
    ):
        bad = tmp_path / "bad"
        assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(bad), *extra, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (extra, err)
        assert not bad.exists()


def test_budget_with_fewer_proposals_lets_the_optimizer_continue(policy, ranked, tmp_path, capsys):
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), "--budget", "3", "--warm-start-k", "1", "--optimizer", "random", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("dataset digits/thick: searched mask [") and "3 search evaluations (random, warm-started with 1 policy proposal)" in lines[0]
    assert lines[1].startswith("  zero-shot   : policy mask [") and "search reward" in lines[1]
    rep = json.loads((out / "report.json").read_text())
    rs = rows(out / "search")
    assert len(rs) == 3 and rs[0]["proposed_mask_bits"] == bits(ranked[0])
    assert rep["mask_bits"] == max(rs, key=lambda r: float(r["reward"]))["mask_bits"]
    assert [t["step"] for t in json.loads((out / "search" / "best.json").read_text())["warm_start"]["trials"]] == [1]


def test_budget_zero_is_the_zero_shot_replay(policy, ranked, tmp_path, capsys):
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), "--budget", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"dataset digits/thick: policy mask \[[^\]]*\] \(lora, lr [0-9.e+-]+\), 0 search evaluations", lines[0]), lines[0]
    assert lines[1].startswith("  policy mask : FID ") and lines[2].startswith("  full FT     : FID ")
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) == OLD_KEYS | {"zero_shot", "search", "ensemble"} and rep["ensemble"] is None
    assert rep["search_evaluations"] == 0 and rep["search"] is None and rep["zero_shot"]["search_reward"] is None
    assert rep["mask_bits"] == rep["zero_shot"]["mask_bits"] == ranked[0].mask.bitstring
    assert rep["proposed_mask_bits"] == bits(ranked[0])
    assert not (out / "search").exists() and (out / "model").is_dir()


@pytest.fixture(scope="module")
def second_seed(full_table, quick_model_dir, tmp_path_factory):  # noqa: F811
    """A second agent seed of the same config (train.seed=1): with `policy`, an ensemble."""
    from memrl.cli import main

    tmp = tmp_path_factory.mktemp("seed1")
    run = tmp / "run"
    assert main(["train", "--config", str(train_config(tmp, quick_model_dir[0])), "--out", str(run), "--lookup", str(full_table), "--set", "train.seed=1", "--no-progress", "--json"]) == 0
    return run / "policy.zip"


def test_an_ensemble_of_two_seeds_refines_from_its_proposals(policy, second_seed, quick_model_dir, tmp_path, capsys):
    from memrl.cli import main
    from memrl.data.loaders import load_dataset
    from memrl.envs.ensemble import load_policy
    from memrl.evaluation import Evaluator

    ens = load_policy([policy, second_seed], "product")
    ev = Evaluator(quick_model_dir[0], granularity=ens.env.granularity)
    top = ens.ranked(ev, ens.describe(ev, load_dataset("thick", ev.image_size, ev.image_channels)), k=2)
    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), str(second_seed), "--ensemble", "product", "--dataset", "thick", "--out", str(out), "--budget", "2", "--no-progress"]) == 0
    assert f"  ensemble    : product of 2 policies ({policy}, {second_seed})" in capsys.readouterr().out.splitlines()
    rep = json.loads((out / "report.json").read_text())
    assert rep["policy"] == [str(policy), str(second_seed)] and rep["ensemble"] == "product"
    assert len(rep["descriptor"]) == 2  # one per policy, each in its own basis
    assert rep["zero_shot"]["mask_bits"] == top[0].mask.bitstring
    assert [r["proposed_mask_bits"] for r in rows(out / "search")] == [bits(p) for p in top]
    saved = yaml.safe_load((out / "search" / "config.yaml").read_text())["search"]
    assert saved["warm_start"] == [str(policy), str(second_seed)] and saved["warm_start_ensemble"] == "product"
    assert rep["mask_bits"] == max(rows(out / "search"), key=lambda r: float(r["reward"]))["mask_bits"]


def test_an_ensemble_refines_with_the_pooled_prior(policy, second_seed, tmp_path, capsys):
    """--optimizer model with several policies: the reward model starts from every policy's training evaluations."""
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), str(second_seed), "--dataset", "thick", "--out", str(out), "--budget", "2", "--optimizer", "model", "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    saved = yaml.safe_load((out / "search" / "config.yaml").read_text())["search"]
    assert saved["prior"] == [str(policy.parent), str(second_seed.parent)] and saved["warm_start"] is None
    assert rep["ensemble"] == "mixture" and rep["search"]["optimizer"] == "model" and len(rows(out / "search")) == 2


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--ensemble", "mixture"], "--ensemble combines several policies"),
        (["--second", "--budget", "2", "--optimizer", "model", "--warm-start-k", "2"], "--warm-start-k is for tpe and random"),
    ],
)
def test_bad_ensemble_is_refused_before_anything_is_written(policy, second_seed, tmp_path, capsys, extra, msg):
    from memrl.cli import main

    out = tmp_path / "out"
    more = [str(second_seed)] if "--second" in extra else []
    extra = [e for e in extra if e != "--second"]
    assert main(["replay", "--policy", str(policy), *more, "--dataset", "thick", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--budget", "-1"], "--budget must be a whole number >= 0"),
        (["--budget", "2.5"], "--budget must be a whole number >= 0"),
        (["--budget", "many"], "got 'many'"),
        (["--warm-start-k", "2"], "give --budget K > 0"),
        (["--budget", "0", "--optimizer", "random"], "give --budget K > 0"),
        (["--budget", "2", "--optimizer", "nsga2"], "valid: tpe, random"),
        (["--budget", "2", "--warm-start-k", "0"], "--warm-start-k must be a whole number >= 1"),
    ],
)
def test_bad_budget_is_refused_before_anything_is_written(policy, tmp_path, capsys, extra, msg):
    from memrl.cli import main

    out = tmp_path / "out"
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("memrl: error:"), err
    assert not out.exists()


def test_an_existing_search_folder_is_refused(policy, tmp_path, capsys):
    from memrl.cli import main

    out = tmp_path / "out"
    (out / "search").mkdir(parents=True)
    (out / "search" / "config.yaml").write_text("search: {}\n")
    assert main(["replay", "--policy", str(policy), "--dataset", "thick", "--out", str(out), "--budget", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "already holds a search run" in err[-1]
    assert sorted(p.name for p in out.iterdir()) == ["search"]  # nothing else written


def test_help_explains_the_budget_flags(capsys):
    from memrl.cli import main

    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = capsys.readouterr().out
    for flag in ("--budget K", "--warm-start-k N", "--optimizer NAME", "--policy POLICY [POLICY ...]", "--ensemble {mixture,product}"):
        assert flag in out, flag
