"""experiments/bench_transfer.py: zero-shot and few-shot on a dataset the policy never saw, from lookup tables.

Two synthetic tables over every lora mask of the quick model's 7 units (the reference and base rows as
evaluated, each mask's row a copy of a real evaluation with its own FID / nn_own_rate), on `inverted`
(the policy's training dataset and the best fixed mask's) and `thick` (the unseen test dataset). The
policy is trained with `memrl train --lookup` for a few steps: what matters is the plumbing and that each
reported number is the table's own.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}
DATASETS = ("inverted", "thick")


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_transfer", ROOT / "experiments" / "bench_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _u(bits: str, salt: str) -> float:
    return int(hashlib.sha256((salt + bits).encode()).hexdigest()[:8], 16) / 16**8


def write_table(ev, cfg, name: str, seed: int, tables: Path, scratch: Path) -> None:  # noqa: ANN001
    """A synthetic lookup table ``tables/NAME_lora_seedSEED.jsonl`` over every lora mask: the
    reference and base rows as evaluated (with ``seed``), each mask's row a copy of a real evaluation
    with its own FID / nn_own_rate (one term shared by every table, one of the dataset's, one of the seed's)."""
    from memrl.data.loaders import load_dataset
    from memrl.evaluation import request_key
    from memrl.evaluation.evaluator import build_request
    from memrl.evaluation.lookup import export_table, read_table, table_meta
    from memrl.peft_masking import Mask

    data = load_dataset(name, ev.image_size, ev.image_channels)
    ev.evaluate(data, "lora", "mid_block.attentions.0", cfg, seed=seed)  # + the reference and base rows
    real = scratch / f"{name}-seed{seed}-real.jsonl"
    export_table(ev.cache, real, table_meta(ev))
    meta, rows = read_table(real)
    fp = data.fingerprint()
    lcfg = cfg.with_method("lora", None, seed)
    keep = [r for r in rows if r["request"]["method"] == "full" and r["request"]["dataset"] == fp]  # the reference and base rows (other seeds' are harmless)
    template = next(r for r in rows if r["request"]["method"] == "lora" and r["request"]["dataset"] == fp)
    n = len(ev.units)
    for k in range(2**n):
        bits = format(k, f"0{n}b")
        mask = Mask.from_bits(bits, ev.units)
        req = build_request(ev.model_hash, ev.feature_net_hash, ev.units, ev.granularity, fp, bits, lcfg, template["request"]["runtime"])
        res = copy.deepcopy(template["result"])
        # the two datasets agree on most of the ranking: one shared term, one of their own (and a seed's)
        fid = res["fid"] * (0.5 + 1.5 * _u(bits, "fid") + 0.5 * _u(bits, name) + (0.5 * _u(bits, f"seed{seed}") if seed else 0.0))
        res.update({"mask": str(mask), "mask_bits": bits, "mask_units": list(mask.selected), "fid": fid, "nn_own_rate": _u(bits, "mem"), "trainable_fraction": 0.01 * bits.count("1")})
        keep.append({"key": request_key(req), "request": req, "status": "ok", "result": res, "error": None, "deterministic": False})
    (tables / f"{name}_lora_seed{seed}.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in [{"meta": meta}, *keep]))


@pytest.fixture(scope="module")
def setup(quick_model_dir, tmp_path_factory):
    from memrl.agents.config import TrainConfig
    from memrl.agents.train import train
    from memrl.envs.config import EnvConfig
    from memrl.evaluation import Evaluator

    root = tmp_path_factory.mktemp("bench_transfer")
    env = {"pretrained": str(quick_model_dir[0]), "datasets": ["inverted"], "method": "lora", "preset": "quick", "eval_overrides": TINY, "seed": 0}
    config = root / "env.yaml"
    config.write_text(yaml.safe_dump({"env": env, "search": {"final_pictures": False}}))
    ev = Evaluator(quick_model_dir[0], cache=root / "evals.sqlite")
    cfg = EnvConfig(**env).eval_config()
    tables = root / "tables"
    tables.mkdir()
    n = len(ev.units)
    for name in DATASETS:
        write_table(ev, cfg, name, 0, tables, root)
    policy_run = root / "policy"
    tcfg = TrainConfig.from_dict(
        {
            "env": env,
            "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 2},
            "train": {"total_timesteps": 8, "seed": 0, "checkpoint_every": 8, "random_masks": 0, "optuna": False, "final_pictures": False},
        }
    )
    train(tcfg, policy_run, progress=False, echo=lambda _s: None, lookup=tables)
    return {"tables": tables, "config": config, "policy": policy_run, "n": n, "ev": ev, "cfg": cfg, "root": root}


@pytest.fixture(scope="module")
def second(setup, tmp_path_factory):
    """A second agent seed (train.seed=1) of the setup's policy config: with it, an ensemble."""
    from memrl.agents.config import TrainConfig
    from memrl.agents.train import train

    saved = yaml.safe_load((setup["policy"] / "config.yaml").read_text())
    saved["train"]["seed"] = 1
    run = tmp_path_factory.mktemp("second") / "policy-s1"
    train(TrainConfig.from_dict(saved), run, progress=False, echo=lambda _s: None, lookup=setup["tables"])
    return run


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_bench_transfer_reports_the_tables_numbers(setup, tmp_path, capsys):
    from memrl.data.loaders import load_dataset
    from memrl.envs.policy import TrainedPolicy
    from memrl.evaluation.lookup import LookupEvaluator

    mod = _module()
    out = tmp_path / "out"
    md = tmp_path / "transfer.md"
    argv = [
        "--policies", str(setup["policy"]), "--tables", str(setup["tables"]), "--config", str(setup["config"]), "--datasets", "thick",
        "--train-datasets", "inverted", "--seeds", "2", "--budget", "16", "--warm-k", "2", "--out-dir", str(out), "--markdown", str(md),
    ]  # fmt: skip
    assert mod.main(argv) == 0
    text = md.read_text()
    assert text in capsys.readouterr().out
    # the zero-shot row is the policy's deterministic mask scored on the thick table
    env = mod.BS.load_env(setup["config"])
    ev = LookupEvaluator.from_dir(setup["tables"])
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    truth = mod.BS.ground_truth(ev, env, "thick")
    policy = TrainedPolicy.load(setup["policy"] / "policy.zip")
    data = load_dataset("thick", ev.image_size, ev.image_channels)
    bits = policy.deterministic(ev, policy.describe(ev, data)).mask.bitstring
    row = next(_cells(x) for x in text.splitlines() if x.startswith("| thick |"))
    regret = truth["r_max"] - truth["rewards"][bits]
    assert float(row[2].split(" ")[0]) == pytest.approx(regret, abs=1e-3)
    assert int(row[3].split(" ")[0]) == mod.rank_of(truth, truth["rewards"][bits])
    # the best fixed mask comes from the training table alone
    train_truth = mod.BS.ground_truth(ev, env, "inverted")
    fixed = max(train_truth["rewards"], key=train_truth["rewards"].get)
    assert f"training tables (inverted): {fixed}" in text
    assert float(row[5].split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][fixed], abs=1e-3)
    # few-shot table: every method, and goals with a verdict each
    few = next(_cells(x) for x in text.splitlines() if x.startswith("| dataset | tpe |"))
    assert few[1:] == ["tpe", "tpe+policy", "tpe+fixed", "model+prior", "model", "random"]
    for line in ("zero-shot rank in the top 10%", "mean regret", "TPE@16 on", "few-shot: tpe+policy", "few-shot: model+prior", "control: tpe+policy", "reward model zero-shot", "cost: training spent"):
        assert line in text
    raw = json.loads((out / "bench_transfer.json").read_text())
    keys = [r["key"] for r in raw["runs"]]
    assert len(keys) == 2 * 5 + 1 and len(set(keys)) == 11  # per seed tpe, random, tpe+fixed, tpe+policy, model; one model+prior (the policy's run)
    # the reward model's zero-shot pick is model+prior's first trial, scored on the table
    mp = next(r for r in raw["runs"] if "|model+prior|" in r["key"])
    first = mp["rows"][0]["mask_bits"]
    assert f"`{first}`" in row[4] and float(row[4].split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][first], abs=1e-3)
    # the warm-started runs begin with the warm start: the policy's 2 most probable proposals, the 2 best fixed masks
    ranked = [p.mask.bitstring for p in policy.ranked(ev, policy.describe(ev, data), k=2)]
    for r in raw["runs"]:
        first = [x["mask_bits"] for x in r["rows"][:2]]
        if "|tpe+policy|" in r["key"]:
            assert first == ranked
        if "|tpe+fixed|" in r["key"]:
            assert first == [m for m, _ in mod.best_fixed({"inverted": train_truth})[:2]]
    png = out / "bench_transfer.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun reuses every run and prints the same report
    assert mod.main(argv) == 0
    assert md.read_text().split("\n", 1)[1] == text.split("\n", 1)[1]
    # testing on the policy's own training dataset is refused
    assert mod.main([*argv[:6], "--datasets", "inverted", "--out-dir", str(tmp_path / "x")]) == 2


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_search_with_ground_truth_writes_regret(setup, tmp_path, capsys):
    """memrl search --lookup on a complete table: TensorBoard's regret of the best-so-far mask per trial and the summary's regret."""
    from memrl.cli import main
    from memrl.reporting.records import EvaluationLog

    mod = _module()
    env = mod.BS.load_env(setup["config"])
    from memrl.evaluation.lookup import LookupEvaluator

    truth = mod.BS.ground_truth(LookupEvaluator.from_dir(setup["tables"]), env, "thick")
    run = tmp_path / "run"
    argv = ["search", "--config", str(setup["config"]), "--dataset", "thick", "--lookup", str(setup["tables"]), "--budget", "6", "--out", str(run), "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = EvaluationLog.read(run / "evaluations.csv")
    best = max(float(r["reward"]) for r in rows)
    assert summary["ground_truth"]["regret"] == pytest.approx(truth["r_max"] - best)
    assert summary["ground_truth"]["rank"] == mod.rank_of(truth, best) and summary["ground_truth"]["masks"] == 2 ** setup["n"]
    got = _scalars(run / "tb" / "memrl")
    running = [truth["r_max"] - max(float(r["reward"]) for r in rows[: i + 1]) for i in range(len(rows))]
    assert [s for s, _ in got["regret/thick"]] == [int(r["step"]) for r in rows]
    assert [v for _, v in got["regret/thick"]] == pytest.approx(running, abs=1e-4)
    assert all(a >= b for a, b in zip(running, running[1:]))  # best-so-far: never worse
    # an explicit --ground-truth without every mask for the dataset is refused before the run folder exists
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "inverted.jsonl").write_text((setup["tables"] / "inverted_lora_seed0.jsonl").read_text())
    bad = tmp_path / "bad"
    assert main(["search", "--config", str(setup["config"]), "--dataset", "thick", "--lookup", str(setup["tables"]), "--ground-truth", str(partial), "--budget", "2", "--out", str(bad)]) == 2
    assert not bad.exists()
    assert "--ground-truth" in capsys.readouterr().err


def test_train_with_ground_truth_reports_regret(setup, tmp_path, capsys):
    """memrl train --lookup: regret/<dataset> per evaluation and the policy's rank among all masks, from the tables."""
    from memrl.cli import main
    from memrl.reporting.records import EvaluationLog

    mod = _module()
    env = mod.BS.load_env(setup["config"])
    from memrl.evaluation.lookup import LookupEvaluator

    ev = LookupEvaluator.from_dir(setup["tables"])
    truth = {d: mod.BS.ground_truth(ev, env, d) for d in DATASETS}
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "env": {**yaml.safe_load(setup["config"].read_text())["env"]},
                "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 2},
                "train": {"total_timesteps": 8, "seed": 1, "checkpoint_every": 8, "random_masks": 1, "optuna": False, "final_pictures": False, "heldout_datasets": ["thick"]},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--lookup", str(setup["tables"]), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = EvaluationLog.read(run / "evaluations.csv")
    best = max(float(r["reward"]) for r in rows)
    assert summary["regret"] == {"inverted": pytest.approx(truth["inverted"]["r_max"] - best)}
    got = _scalars(run / "tb" / "memrl")
    assert [s for s, _ in got["regret/inverted"]] == [int(r["step"]) for r in rows]
    assert got["regret/inverted"][-1][1] == pytest.approx(truth["inverted"]["r_max"] - best, abs=1e-4)
    pe = json.loads((run / "policy_eval.json").read_text())
    for d in DATASETS:
        t, c = truth[d], pe[d]
        assert c["policy_rank"] == mod.rank_of(t, c["policy_reward"]) and c["masks"] == 2 ** setup["n"]
        assert c["policy_regret"] == pytest.approx(t["r_max"] - c["policy_reward"])
    # --ground-truth naming tables that hold none of the run's datasets is refused before the run folder exists
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    assert main(["train", "--config", str(cfg), "--out", str(bad), "--ground-truth", str(empty), "--lookup", str(setup["tables"])]) == 2
    assert not bad.exists() and "ground_truth" in capsys.readouterr().err


def test_bench_context_scores_each_pick_by_the_table(setup, tmp_path, capsys):
    """experiments/bench_context.py: the reward model with and without the descriptor, fitted on the
    policy run's evaluations (on inverted), zero-shot on thick; each reported regret and rank is the
    table's for the mask reported; a dataset the run trained on is refused."""
    spec = importlib.util.spec_from_file_location("bench_context", ROOT / "experiments" / "bench_context.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = tmp_path / "context.md"
    base = ["--run", str(setup["policy"]), "--tables", str(setup["tables"]), "--config", str(setup["config"])]
    assert mod.main([*base, "--datasets", "thick", "--train-datasets", "inverted", "--markdown", str(md)]) == 0
    text = md.read_text()
    assert text.strip() in capsys.readouterr().out
    env = mod.BS.load_env(setup["config"])
    from memrl.evaluation.lookup import LookupEvaluator

    ev = LookupEvaluator.from_dir(setup["tables"])
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    truth = mod.BS.ground_truth(ev, env, "thick")
    row = next(_cells(x) for x in text.splitlines() if x.startswith("| thick |"))
    for cell in row[1:3]:  # "regret (rank), rho `bits`"
        bits = cell.split("`")[1]
        assert float(cell.split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][bits], abs=1e-3)
        assert int(cell.split("(")[1].split(")")[0]) == mod.BT.rank_of(truth, truth["rewards"][bits])
    fixed = max(mod.BS.ground_truth(ev, env, "inverted")["rewards"].items(), key=lambda kv: kv[1])[0]
    assert float(row[3].split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][fixed], abs=1e-3)
    assert "Verdict: lowest mean regret over 1 test member(s)" in text
    assert mod.main([*base, "--datasets", "inverted"]) == 2
    assert "trained on inverted" in capsys.readouterr().err
    # --library: fitted on every mask of inverted's complete table; the best fixed mask is the library's
    assert mod.main([*base, "--datasets", "thick", "--library", "inverted", "--markdown", str(md)]) == 0
    lib = md.read_text()
    capsys.readouterr()
    assert f"complete tables of inverted ({2 ** len(ev.units)} rows" in lib
    row = next(_cells(x) for x in lib.splitlines() if x.startswith("| thick |"))
    assert float(row[3].split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][fixed], abs=1e-3)
    for cell in row[1:3]:
        bits = cell.split("`")[1]
        assert float(cell.split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][bits], abs=1e-3)
    # standardised within each dataset: one library table, so an affine map of its rewards, the same picks
    assert mod.main([*base, "--datasets", "thick", "--library", "inverted", "--target", "per_dataset", "--markdown", str(md)]) == 0
    capsys.readouterr()
    std = md.read_text()
    assert "rewards standardised within each dataset" in std and "standardised" not in lib
    srow = next(_cells(x) for x in std.splitlines() if x.startswith("| thick |"))
    assert [c.split("`")[1] for c in srow[1:3]] == [c.split("`")[1] for c in row[1:3]]
    assert mod.main([*base, "--datasets", "thick", "--library", "thick"]) == 2
    assert "--library holds thick" in capsys.readouterr().err
    assert mod.main([*base, "--datasets", "thick", "--library", "mirrored"]) == 2
    assert "--library mirrored: dataset digits/mirrored" in capsys.readouterr().err  # no table of it at all


def test_bench_context_vectors_replace_the_descriptor_without_a_run(setup, tmp_path, capsys):
    """bench_context.py --library D --vectors FILE: the reward model's context is the file's vector
    of each dataset (no run folder, no feature net); each pick's regret is the table's, the
    normalised-regret line matches bench_transfer.normalised_regret; a dataset missing from the
    file, or no run without --library / --vectors, exits 2 naming what is missing."""
    from memrl.evaluation.lookup import LookupEvaluator

    spec = importlib.util.spec_from_file_location("bench_context", ROOT / "experiments" / "bench_context.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vec = tmp_path / "vectors.json"
    vec.write_text(json.dumps({"inverted": [0.5, -1.0, 2.0], "thick": [-0.5, 1.0, 0.0]}))
    md = tmp_path / "context.md"
    base = ["--tables", str(setup["tables"]), "--config", str(setup["config"]), "--datasets", "thick", "--library", "inverted"]
    assert mod.main([*base, "--vectors", str(vec), "--markdown", str(md)]) == 0
    text = md.read_text()
    capsys.readouterr()
    assert f"complete tables of inverted ({2 ** setup['n']} rows; the vectors of `{vec}`)" in text
    env = mod.BS.load_env(setup["config"])
    truth = mod.BS.ground_truth(LookupEvaluator.from_dir(setup["tables"]), env, "thick")
    row = next(_cells(x) for x in text.splitlines() if x.startswith("| thick |"))
    picks = [c.split("`")[1] for c in row[1:3]]
    for cell, bits in zip(row[1:3], picks):
        assert float(cell.split(" ")[0]) == pytest.approx(truth["r_max"] - truth["rewards"][bits], abs=1e-3)
    norm = next(x for x in text.splitlines() if x.startswith("Mean normalised regret"))
    for name, bits in zip(("with context", "without context"), picks):
        assert f"{name} {mod.BT.normalised_regret(truth, bits):.3f}" in norm
    bad = tmp_path / "short.json"
    bad.write_text(json.dumps({"inverted": [0.5, -1.0, 2.0]}))
    assert mod.main([*base, "--vectors", str(bad)]) == 2
    assert f"{bad}: no vector for thick" in capsys.readouterr().err
    assert mod.main(base) == 2
    assert "a run folder is needed for the descriptor basis (or --vectors)" in capsys.readouterr().err
    assert mod.main(["--tables", str(setup["tables"]), "--config", str(setup["config"]), "--vectors", str(vec)]) == 2
    assert "needed for the evaluations to fit on (or --library)" in capsys.readouterr().err
    assert mod.main([*base, "--vectors", str(vec), "--leave-one-out"]) == 2
    assert "--leave-one-out: needs --library with at least 3 datasets, got 1" in capsys.readouterr().err
    # --leave-one-out over three library tables; thick's second-seed table scores the picks again
    tables, ev, _ = _with_validation_table(setup, tmp_path)
    write_table(setup["ev"], setup["cfg"], "rotated", 0, tables, tmp_path)
    write_table(setup["ev"], setup["cfg"], "thick", 1, tables, tmp_path)
    ev = LookupEvaluator.from_dir(tables)
    vec.write_text(json.dumps({"inverted": [0.5, -1.0, 2.0], "thick": [-0.5, 1.0, 0.0], "mirrored": [0.4, -0.9, 1.5], "rotated": [0.0, 0.3, -1.0]}))
    lib = ["inverted", "mirrored", "rotated"]
    argv = ["--tables", str(tables), "--config", str(setup["config"]), "--datasets", "thick", "--library", *lib, "--vectors", str(vec), "--leave-one-out", "--markdown", str(md)]
    assert mod.main(argv) == 0
    capsys.readouterr()
    text = md.read_text()
    assert "On the next evaluation seed's tables (thick; seed 1, never fitted on)" in text
    truths = {d: mod.BS.ground_truth(ev, env, d) for d in lib}
    rows = [_cells(x) for x in text.split("Leave-one-out over the 3 library tables")[1].splitlines() if x.startswith("| ") and not x.startswith("| left out")]
    assert [r[0].split(" ")[0] for r in rows] == lib
    for r in rows:
        d = r[0].split(" ")[0]
        for cell in r[1:4]:
            bits = cell.split("`")[1]
            assert float(cell.split(" ")[0]) == pytest.approx(mod.BT.normalised_regret(truths[d], bits), abs=6e-3)
            assert int(cell.split("[")[1].split("]")[0]) == mod.BT.rank_of(truths[d], truths[d]["rewards"][bits])
        others = {k: v for k, v in truths.items() if k != d}
        assert r[3].split("`")[1] == mod.BT.best_fixed(others)[0][0]


def test_zero_shot_rule_scores_each_left_out_pick(setup, tmp_path, capsys):
    """experiments/zero_shot_rule.py: leave-one-member-out over a run's training members. A member
    with a table (inverted, thick) is scored over all its masks, one without (mirrored) over the
    masks the run evaluated on it; each reported normalised regret and rank is the table's (or
    the run's) for the mask reported; fewer than 3 members is refused."""
    import csv

    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.evaluation.lookup import LookupEvaluator

    spec = importlib.util.spec_from_file_location("zero_shot_rule", ROOT / "experiments" / "zero_shot_rule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    env = mod.BS.load_env(setup["config"])
    ev = LookupEvaluator.from_dir(setup["tables"])
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    truths = {d: mod.BS.ground_truth(ev, env, d) for d in DATASETS}
    run = tmp_path / "run"
    run.mkdir()
    members = (*DATASETS, "mirrored")
    net = ev.require_feature_net()
    DescriptorBasis.fit(net, [load_dataset(d, ev.image_size, ev.image_channels) for d in members]).save(run / "descriptor.json")
    own = {"mirrored": {format(k, "07b"): -float(k % 5) for k in range(0, 128, 9)}}
    with open(run / "evaluations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "dataset", "mask_bits", "reward", "failed"])
        w.writeheader()
        for d in DATASETS:  # every 7th mask of each table, as a run would have evaluated them
            for k in range(0, 128, 7):
                b = format(k, "07b")
                w.writerow({"step": k, "dataset": d, "mask_bits": b, "reward": truths[d]["rewards"][b], "failed": "False"})
        for b, r in own["mirrored"].items():
            w.writerow({"step": 0, "dataset": "mirrored", "mask_bits": b, "reward": r, "failed": "False"})
    md = tmp_path / "rule.md"
    base = ["--run", str(run), "--tables", str(setup["tables"]), "--config", str(setup["config"])]
    assert mod.main([*base, "--betas", "0", "1", "--markdown", str(md)]) == 0
    text = md.read_text()
    assert text.strip() in capsys.readouterr().out
    for d in members:
        row = next(_cells(x) for x in text.splitlines() if x.startswith(f"| {d} |"))
        cands = truths[d]["rewards"] if d in truths else own[d]
        assert row[1] == (f"all {len(cands)} (table)" if d in truths else f"{len(cands)} evaluated")
        for cell in row[2:4]:  # "regret (rank) `bits`"
            bits = cell.split("`")[1]
            r = np.asarray(list(cands.values()))
            assert float(cell.split(" ")[0]) == pytest.approx((r.max() - cands[bits]) / (r.max() - r.mean()), abs=5e-3)
            assert float(cell.split("(")[1].split(")")[0]) == pytest.approx((1 + int(np.sum(r > cands[bits]))) / len(r), abs=5e-3)
    assert "Lowest mean normalised regret over 3 left-out members" in text
    # --targets: the model fitted on raw and on per-member standardised rewards, side by side
    assert mod.main([*base, "--betas", "0", "--targets", "raw", "per_dataset", "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| member | candidates | raw/mean: regret (rank) | per_dataset/mean: regret (rank) |" in text
    for d in members:
        row = next(_cells(x) for x in text.splitlines() if x.startswith(f"| {d} |"))
        cands = truths[d]["rewards"] if d in truths else own[d]
        for cell in row[2:4]:
            r = np.asarray(list(cands.values()))
            assert float(cell.split(" ")[0]) == pytest.approx((r.max() - cands[cell.split("`")[1]]) / (r.max() - r.mean()), abs=5e-3)
    assert mod.main([*base, "--targets", "ranks"]) == 2
    assert "--targets 'ranks' is not one of raw, per_dataset" in capsys.readouterr().err
    assert mod.main(["--run", str(setup["policy"]), "--tables", str(setup["tables"]), "--config", str(setup["config"])]) == 2
    assert "leave-one-out needs at least 3" in capsys.readouterr().err


def test_few_shot_verdict_needs_the_test_not_only_a_lower_median():
    """A lower median is called met only when a one-sided Mann-Whitney test agrees; runs that never got
    within 2% (hit None) count as more than the budget."""
    mod = _module()
    runs = lambda hits: [{"hit": h} for h in hits]  # noqa: E731
    clear = mod.few_shot_verdict(runs([1, 2, 2, 3, 1, 2, 3, 2, 1, 2]), runs([20, 25, None, 30, 18, None, 22, 28, None, 26]), 32)
    assert clear.startswith("met (one-sided Mann-Whitney p = ")
    assert float(clear.split("p = ")[1].split(",")[0]) < 0.001
    # 12 against 12.5 with the same spread: lower median, no demonstrated difference
    close = mod.few_shot_verdict(runs([4, 8, 12, 17, 30, 5, 12, 20, 9, 14]), runs([8, 9, 12, 13, 24, 6, 15, 22, 10, 16]), 32)
    assert close.startswith("lower median, not a demonstrated difference") and close.endswith("-> not met")
    # a median that is itself a lower bound (most runs never got there) is never a win
    assert mod.few_shot_verdict(runs([None] * 6 + [3] * 4), runs([None] * 10), 32).startswith("not met")
    assert mod.few_shot_verdict(runs([5] * 4), runs([5] * 4), 32) == "not met (one-sided Mann-Whitney p = 1.00)"


def test_bench_context_pools_several_runs_once_per_pair(tmp_path):
    """bench_context.training_rows with several runs (agent seeds sharing a cache): their successful
    evaluations pooled, a dataset-mask pair that two runs evaluated counted once (the first run's row)."""
    import csv

    spec = importlib.util.spec_from_file_location("bench_context", ROOT / "experiments" / "bench_context.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = []
    for i, rows in enumerate(([("inverted", "0000001", -1.0), ("thick", "0000011", -2.0)], [("inverted", "0000001", -1.0), ("inverted", "1000000", -3.0), ("thick", "1111111", None)])):
        run = tmp_path / f"s{i}"
        run.mkdir()
        with open(run / "evaluations.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["dataset", "mask_bits", "reward", "failed"])
            w.writeheader()
            for d, b, r in rows:
                w.writerow({"dataset": d, "mask_bits": b, "reward": "" if r is None else r, "failed": str(r is None)})
        runs.append(run)
    assert mod.training_rows(runs[0]) == [("inverted", "0000001", -1.0), ("thick", "0000011", -2.0)]
    assert mod.training_rows(runs) == [("inverted", "0000001", -1.0), ("thick", "0000011", -2.0), ("inverted", "1000000", -3.0)]
    from memrl.errors import MemrlError

    with pytest.raises(MemrlError, match="not a memrl train run folder"):
        mod.run_inputs(runs, tmp_path, str(ROOT / "experiments" / "exhaustive.yaml"))  # no descriptor.json


def test_bench_transfer_scores_the_goals_again_on_a_second_seed(setup, tmp_path):
    """With a second seed's table of the test dataset, the zero-shot picks, the fixed mask and TPE's
    picks are scored on it (numbers no picker saw), and the three zero-shot goals get a verdict there."""
    import shutil

    from memrl.data.loaders import load_dataset
    from memrl.envs.policy import TrainedPolicy
    from memrl.evaluation.lookup import LookupEvaluator

    mod = _module()
    tables = tmp_path / "tables"
    shutil.copytree(setup["tables"], tables)
    write_table(setup["ev"], setup["cfg"], "thick", 1, tables, tmp_path)
    md = tmp_path / "transfer.md"
    argv = [
        "--policies", str(setup["policy"]), "--tables", str(tables), "--config", str(setup["config"]), "--datasets", "thick",
        "--train-datasets", "inverted", "--seeds", "2", "--budget", "16", "--warm-k", "2", "--out-dir", str(tmp_path / "out"), "--markdown", str(md),
    ]  # fmt: skip
    assert mod.main(argv) == 0
    text = md.read_text()
    env = mod.BS.load_env(setup["config"])
    ev = LookupEvaluator.from_dir(tables)
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    t2 = mod.BS.next_seed_truth(ev, env, "thick")
    t1 = mod.BS.ground_truth(ev, env, "thick")
    assert t2 is not None and t2["rewards"] != t1["rewards"]  # the second seed's own numbers
    policy = TrainedPolicy.load(setup["policy"] / "policy.zip")
    data = load_dataset("thick", ev.image_size, ev.image_channels)
    bits = policy.deterministic(ev, policy.describe(ev, data)).mask.bitstring
    after = text.split("On a second evaluation seed", 1)[1]
    row = next(_cells(x) for x in after.splitlines() if x.startswith("| thick |"))
    assert float(row[1].split(" ")[0]) == pytest.approx(t2["r_max"], abs=1e-3)
    regret2 = t2["r_max"] - t2["rewards"][bits]
    assert float(row[2].split(" ")[0]) == pytest.approx(regret2, abs=1e-3)
    assert int(row[3].split(" ")[0]) == mod.rank_of(t2, t2["rewards"][bits])
    fixed = max(mod.BS.ground_truth(ev, env, "inverted")["rewards"].items(), key=lambda kv: kv[1])[0]
    fixed2 = t2["r_max"] - t2["rewards"][fixed]
    assert float(row[5].split(" ")[0]) == pytest.approx(fixed2, abs=1e-3)
    beats = regret2 <= float(row[8]) + 1e-9
    assert row[9] == ("yes" if beats else "no")
    # few-shot on the second seed: TPE's column is the TPE@k picks' regret of the first table, and every
    # method's picks are its runs' best-by-seed-0 masks scored on seed 1
    few2 = after.split("Few-shot on the second seed", 1)[1]
    head = next(_cells(x) for x in few2.splitlines() if x.startswith("| dataset | tpe @"))
    frow = next(_cells(x) for x in few2.splitlines() if x.startswith("| thick |"))
    assert [float(x) for x in frow[1].split(" / ")] == pytest.approx([float(row[c]) for c in (6, 7, 8)], abs=0.0051)  # 2 decimals of the 3-decimal cells
    raw = json.loads((tmp_path / "out" / "bench_transfer.json").read_text())
    fixed_runs = [r["rows"] for r in raw["runs"] if "|tpe+fixed|" in r["key"]]
    want = [float(np.median([mod.picks_regret(rows, t2, (k,))[k] for rows in fixed_runs])) for k in mod.TPE_AT]
    assert frow[head.index("tpe+fixed @4/8/16")] == " / ".join(f"{x:.2f}" for x in want)
    assert "few-shot: tpe+policy vs tpe+fixed, normalised regret of the pick on the second seed" in text
    # the two-seed mean: the zero-shot and fixed masks scored on the mean of both tables
    tm = mod.two_seed_mean(t1, t2)
    mean_part = after.split("On the mean of both seeds", 1)[1]
    mrow = next(_cells(x) for x in mean_part.splitlines() if x.startswith("| thick |"))
    assert float(mrow[2].split(" ")[0]) == pytest.approx(tm["r_max"] - tm["rewards"][bits], abs=1e-3)
    assert float(mrow[5].split(" ")[0]) == pytest.approx(tm["r_max"] - tm["rewards"][fixed], abs=1e-3)
    goals = after.split("- on the second evaluation seed (1 dataset(s)", 1)[1].splitlines()[1:4]
    assert goals[1].strip() == f"- zero-shot mean regret {regret2:.3f} vs best fixed mask {fixed2:.3f} -> {'met' if regret2 < fixed2 else 'not met'}"
    assert goals[2].strip().endswith(f"on {int(beats)} of 1 datasets -> {'met' if beats else 'not met'}")


def test_zero_shot_goals_verdicts():
    mod = _module()
    lines = mod.zero_shot_goals([0.05, 0.2], [1.0, 0.5], [1.0, 1.0], 1, 2)
    assert lines == [
        "- zero-shot rank in the top 10% (median over datasets): 12.5% -> not met",
        "- zero-shot mean regret 0.750 vs best fixed mask 1.000 -> met",
        "- zero-shot at least as good as TPE@16 on 1 of 2 datasets -> met",
    ]
    assert mod.zero_shot_goals([0.1], [1.0], [], 0, 1, "X")[-1] == "- zero-shot at least as good as X on 0 of 1 datasets -> not met"
    assert len(mod.zero_shot_goals([0.1], [1.0], [], 0, 1)) == 2  # no fixed mask: no regret goal


def test_two_seed_mean_is_the_per_mask_mean():
    mod = _module()
    tm = mod.two_seed_mean({"rewards": {"01": -1.0, "10": -3.0, "11": -2.0}}, {"rewards": {"01": -3.0, "10": -1.0, "11": -1.0}})
    assert tm["rewards"] == {"01": -2.0, "10": -2.0, "11": -1.5}
    assert tm["r_max"] == -1.5 and tm["optimum_bits"] == ["11"] and tm["masks"] == 3
    assert mod.rank_of(tm, tm["rewards"]["01"]) == 2


def test_held_out_comparison_needs_the_test():
    mod = _module()
    assert mod.held_out_comparison([0.1] * 5 + [0.2] * 5, [0.5] * 5 + [0.6] * 5).endswith("better (p = 0.000)")
    assert "not shown better" in mod.held_out_comparison([0.1, 0.5], [0.2, 0.4])  # lower median, too few runs
    assert "not shown better" in mod.held_out_comparison([0.3] * 4, [0.3] * 4)
    rows = [{"mask_bits": "01", "reward": -1.0}, {"mask_bits": "10", "reward": -0.5}, {"mask_bits": "11", "reward": -2.0}]
    assert mod.picks_regret(rows, {"r_max": 0.0, "rewards": {"01": -0.2, "10": -3.0, "11": -1.0}}, (1, 2, 3)) == {1: 0.2, 2: 3.0, 3: 3.0}


def test_bench_transfer_scores_the_ensemble_of_the_policies(setup, second, tmp_path):
    """Two policies (agent seeds 0 and 1): the ensemble's zero-shot masks per rule are scored on the
    table (and on a second seed's), and tpe+ensemble starts with the mixture's most probable proposals."""
    import shutil

    from memrl.data.loaders import load_dataset
    from memrl.envs.ensemble import PolicyEnsemble
    from memrl.envs.policy import TrainedPolicy
    from memrl.evaluation.lookup import LookupEvaluator

    mod = _module()
    tables = tmp_path / "tables"
    shutil.copytree(setup["tables"], tables)
    write_table(setup["ev"], setup["cfg"], "thick", 1, tables, tmp_path)
    md = tmp_path / "transfer.md"
    argv = [
        "--policies", str(setup["policy"]), str(second), "--tables", str(tables), "--config", str(setup["config"]), "--datasets", "thick",
        "--train-datasets", "inverted", "--seeds", "2", "--budget", "16", "--warm-k", "2", "--out-dir", str(tmp_path / "out"), "--markdown", str(md),
        "--pooled-prior",
    ]  # fmt: skip
    assert mod.main(argv) == 0
    text = md.read_text()
    env = mod.BS.load_env(setup["config"])
    ev = LookupEvaluator.from_dir(tables)
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    t1, t2 = mod.BS.ground_truth(ev, env, "thick"), mod.BS.next_seed_truth(ev, env, "thick")
    members = [TrainedPolicy.load(setup["policy"] / "policy.zip"), TrainedPolicy.load(second / "policy.zip")]
    data = load_dataset("thick", ev.image_size, ev.image_channels)
    picks = {}
    for rule in ("mixture", "product"):
        ens = PolicyEnsemble(members, rule)
        picks[rule] = ens.ranked(ev, ens.describe(ev, data), k=2)
    first, after = text.split("On a second evaluation seed", 1)
    row = next(_cells(x) for x in first.splitlines() if x.startswith("| thick |"))
    head = next(_cells(x) for x in first.splitlines() if x.startswith("| dataset |"))
    col = head.index("ensemble regret [rank] (mixture; product)")
    want = "; ".join(f"{t1['r_max'] - t1['rewards'][p[0].mask.bitstring]:.3f} [{mod.rank_of(t1, t1['rewards'][p[0].mask.bitstring])}]" for p in picks.values())
    assert row[col] == want
    row2 = next(_cells(x) for x in after.splitlines() if x.startswith("| thick |"))
    want2 = "; ".join(f"{t2['r_max'] - t2['rewards'][p[0].mask.bitstring]:.3f} [{mod.rank_of(t2, t2['rewards'][p[0].mask.bitstring])}]" for p in picks.values())
    assert row2[col] == want2
    mix_regret = t1["r_max"] - t1["rewards"][picks["mixture"][0].mask.bitstring]
    goals = text.split("- ensemble of the 2 policies (mixture, the zero-shot rule of memrl replay), evaluation seed 0:", 1)[1].splitlines()
    assert goals[2].strip().startswith(f"- zero-shot mean regret {mix_regret:.3f} vs best fixed mask")
    assert "- ensemble of the 2 policies (product), evaluation seed 0:" in text and "few-shot: tpe+ensemble" in text and "cost of the ensemble" in text
    raw = json.loads((tmp_path / "out" / "bench_transfer.json").read_text())
    ens_runs = [r for r in raw["runs"] if "|tpe+ensemble|" in r["key"]]
    assert len(ens_runs) == 2 and all([x["mask_bits"] for x in r["rows"][:2]] == [p.mask.bitstring for p in picks["mixture"]] for r in ens_runs)
    few = next(_cells(x) for x in text.splitlines() if x.startswith("| dataset | tpe |"))
    assert few[1:] == ["tpe", "tpe+policy", "tpe+ensemble", "tpe+fixed", "model+prior", "model+pooled", "model", "random"]
    # --pooled-prior: one model run on both policies' evaluations; its first trial is the pooled reward model's zero-shot pick
    pooled = [r for r in raw["runs"] if "|model+pooled|" in r["key"]]
    assert len(pooled) == 1
    first = pooled[0]["rows"][0]["mask_bits"]
    line = next(x for x in text.splitlines() if x.startswith("- reward model on the 2 priors pooled"))
    goals = text.split(line, 1)[1].splitlines()
    assert goals[2].strip().startswith(f"- zero-shot mean regret {t1['r_max'] - t1['rewards'][first]:.3f} vs best fixed mask")
    assert "few-shot: model+pooled median" in text


def test_ensemble_subsets_scores_every_subset(setup, second, tmp_path, capsys):
    """experiments/ensemble_subsets.py: each single policy and the pair, per rule, scored on the test table."""
    from memrl.data.loaders import load_dataset
    from memrl.envs.ensemble import PolicyEnsemble
    from memrl.envs.policy import TrainedPolicy
    from memrl.evaluation.lookup import LookupEvaluator

    spec = importlib.util.spec_from_file_location("ensemble_subsets", ROOT / "experiments" / "ensemble_subsets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    saved = yaml.safe_load((setup["policy"] / "config.yaml").read_text())
    md = tmp_path / "subsets.md"
    argv = ["--policies", str(setup["policy"]), str(second), "--tables", str(setup["tables"]), "--config", str(setup["config"]), "--datasets", "thick", "--train-datasets", "inverted", "--markdown", str(md)]
    assert mod.main(argv) == 0
    text = md.read_text()
    assert text == capsys.readouterr().out
    env = _module().BS.load_env(setup["config"])
    ev = LookupEvaluator.from_dir(setup["tables"])
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    truth = _module().BS.ground_truth(ev, env, "thick")
    data = load_dataset("thick", ev.image_size, ev.image_channels)
    members = [TrainedPolicy.load(setup["policy"] / "policy.zip"), TrainedPolicy.load(second / "policy.zip")]
    want = {}
    for i, p in enumerate(members):
        want[(p.path.parent.name, "-")] = p.deterministic(ev, p.describe(ev, data)).mask.bitstring
    for rule in ("mixture", "product"):
        ens = PolicyEnsemble(members, rule)
        want[(f"{members[0].path.parent.name}, {members[1].path.parent.name}", rule)] = ens.ranked(ev, ens.describe(ev, data), k=1)[0].mask.bitstring
    detail = text.split("Every subset", 1)[1]
    for (names, rule), bits in want.items():
        row = next(_cells(x) for x in detail.splitlines() if x.startswith(f"| {names} | {rule} |"))
        regret = truth["r_max"] - truth["rewards"][bits]
        rank = 1 + sum(r > truth["rewards"][bits] for r in truth["rewards"].values())
        assert row[2] == f"{regret:.3f} ({rank})"
    summary = next(_cells(x) for x in text.splitlines() if x.startswith("| 1 | - | 2 |"))
    singles = [truth["r_max"] - truth["rewards"][want[(p.path.parent.name, "-")]] for p in members]
    assert summary[3].startswith(f"{np.mean(singles):.3f} ")
    # policies of different configs are refused with one line
    other = tmp_path / "other"
    saved["env"]["method"] = "difffit"
    (other).mkdir()
    for f in ("policy.zip", "descriptor.json"):
        (other / f).write_bytes((second / f).read_bytes())
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    assert mod.main(["--policies", str(setup["policy"]), str(other), "--tables", str(setup["tables"]), "--config", str(setup["config"]), "--datasets", "thick"]) == 2
    assert "cannot be one ensemble" in capsys.readouterr().err


def test_bench_prior_fit_times_each_pooled_prior(setup, second, capsys):
    spec = importlib.util.spec_from_file_location("bench_prior_fit", ROOT / "experiments" / "bench_prior_fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--runs", str(setup["policy"]), str(second), "--dataset", "thick", "--tables", str(setup["tables"]), "--config", str(setup["config"])]) == 0
    rows = [_cells(x) for x in capsys.readouterr().out.splitlines() if x.startswith("| 1 |") or x.startswith("| 2 |")]
    assert [r[0] for r in rows] == ["1", "2"] and rows[0][3] == "1.0x"
    assert int(rows[1][1]) >= int(rows[0][1]) > 0  # the pooled prior holds at least the first run's evaluations
    assert mod.main(["--runs", str(setup["policy"]), "--dataset", "inverted", "--tables", str(setup["tables"]), "--config", str(setup["config"])]) == 2
    assert "evaluated inverted itself" in capsys.readouterr().err


def _script(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _with_validation_table(setup, tmp_path):  # noqa: ANN001, ANN202
    """The setup's tables plus a synthetic table of ``mirrored`` (the validation member), and a
    lookup evaluator over them that can describe datasets: ``(tables, ev, env)``."""
    import shutil

    from memrl.evaluation.lookup import LookupEvaluator

    tables = tmp_path / "tables"
    shutil.copytree(setup["tables"], tables)
    write_table(setup["ev"], setup["cfg"], "mirrored", 0, tables, tmp_path)
    env = _module().BS.load_env(setup["config"])
    ev = LookupEvaluator.from_dir(tables)
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    return tables, ev, env


def _candidate_lists(ev, members: list, fixed: list[str], dataset: str) -> dict[str, list[str]]:  # noqa: ANN001
    """Each zero-shot candidate's ranked masks on ``dataset``, computed here from the policies:
    the fixed list, both ensembles, each policy alone."""
    from memrl.data.loaders import load_dataset
    from memrl.envs.ensemble import PolicyEnsemble

    data = load_dataset(dataset, ev.image_size, ev.image_channels)
    out = {"fixed": fixed}
    for rule in ("mixture", "product"):
        ens = PolicyEnsemble(members, rule)
        out[rule] = [p.mask.bitstring for p in ens.ranked(ev, ens.describe(ev, data))]
    for p in members:
        out[f"policy {p.path.parent.name}"] = [x.mask.bitstring for x in p.ranked(ev, p.describe(ev, data))]
    return out


def test_zero_shot_choice_chooses_on_validation_and_reports_on_test(setup, second, tmp_path, capsys):
    """experiments/zero_shot_choice.py: every candidate (fixed mask, both ensembles, each policy) is
    scored on the validation table, the lowest mean normalised regret is chosen, and the test table's
    numbers (pick, regret, rank, walk down the ranked list) are the table's own."""
    from memrl.envs.policy import TrainedPolicy

    mod = _script("zero_shot_choice")
    tables, ev, env = _with_validation_table(setup, tmp_path)
    md = tmp_path / "choice.md"
    base = ["--policies", str(setup["policy"]), str(second), "--tables", str(tables), "--config", str(setup["config"]), "--train-datasets", "inverted"]
    png = tmp_path / "figs" / "choice.png"
    assert mod.main([*base, "--validation", "mirrored", "--datasets", "thick", "--markdown", str(md), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(png.parent.iterdir()) == [png]  # no temporary file left behind
    text = md.read_text()
    assert text == capsys.readouterr().out
    BS = _module().BS
    truths = {d: BS.ground_truth(ev, env, d) for d in ("mirrored", "thick", "inverted")}
    members = [TrainedPolicy.load(setup["policy"] / "policy.zip"), TrainedPolicy.load(second / "policy.zip")]
    fixed = [m for m, _ in sorted(truths["inverted"]["rewards"].items(), key=lambda kv: (-kv[1], kv[0]))]
    lists = {(n, d): lst for d in ("mirrored", "thick") for n, lst in _candidate_lists(ev, members, fixed, d).items()}
    names = ["fixed", "mixture", "product"] + [f"policy {p.path.parent.name}" for p in members]

    def norm(t: dict, bits: str) -> float:
        return (t["r_max"] - t["rewards"][bits]) / (t["r_max"] - np.mean(list(t["rewards"].values())))

    def first_within(t: dict, ranked: list[str]) -> int:
        span = t["r_max"] - t["r_min"]
        return next(i + 1 for i, b in enumerate(ranked) if (t["rewards"][b] - t["r_min"]) / span >= 0.98)

    scores = {n: norm(truths["mirrored"], lists[(n, "mirrored")][0]) for n in names}
    best = min(scores.values())
    chosen = next(n for n in names if scores[n] <= best + 1e-12)
    assert f"- chosen on validation: **{chosen}** (mean normalised regret {scores[chosen]:.3f} on 1 member(s)" in text
    assert "a hint, not a settled rule" in text
    assert "leave one validation member out" not in text and "paired against" not in text  # one member: nothing to leave out, no spread
    validation, test = text.split("Test (the report):", 1)
    t = truths["thick"]
    for n in names:
        label = f"**{n}** (chosen)" if n == chosen else n
        vrow = next(_cells(x) for x in validation.splitlines() if x.startswith(f"| {label} |"))
        assert vrow[-1] == f"{scores[n]:.3f}"
        row = next(_cells(x) for x in test.splitlines() if x.startswith(f"| {label} |"))
        bits = lists[(n, "thick")][0]
        assert row[1] == f"{t['r_max'] - t['rewards'][bits]:.3f} [{_module().rank_of(t, t['rewards'][bits])}]"
        assert row[2] == str(first_within(t, lists[(n, "thick")]))
    # choosing and reporting on one dataset, or choosing with no validation table, is refused with one line
    assert mod.main([*base, "--validation", "thick", "--datasets", "thick"]) == 2
    assert "both a validation and a test dataset" in capsys.readouterr().err
    assert mod.main([*base, "--datasets", "thick"]) == 2
    assert "no validation member has a complete table" in capsys.readouterr().err
    assert mod.main([*base, "--validation", "mirrored", "--datasets", "inverted"]) == 2
    assert "the policies were trained on inverted" in capsys.readouterr().err


def test_proposal_spread_chooses_a_distance_on_validation_and_reuses_its_runs(setup, second, tmp_path, capsys):
    """experiments/proposal_spread.py: each (source, d) row's walk is the table's own down the spread
    list, the chosen one is the rule's minimum over the rows, and a rerun with the same cache runs
    no search at all."""
    from memrl.envs.policy import TrainedPolicy
    from memrl.search.spread import spread

    mod = _script("proposal_spread")
    tables, ev, env = _with_validation_table(setup, tmp_path)
    cache = tmp_path / "spread.json"
    argv = ["--policies", str(setup["policy"]), str(second), "--tables", str(tables), "--config", str(setup["config"]), "--train-datasets", "inverted"]
    argv += ["--validation", "mirrored", "--datasets", "thick", "--distances", "0", "2", "--k", "2", "--seeds", "1", "--budget", "6", "--cache", str(cache)]
    assert mod.main(argv) == 0
    text = capsys.readouterr().out
    truth = _module().BS.ground_truth(ev, env, "mirrored")
    fixed = [m for m, _ in sorted(_module().BS.ground_truth(ev, env, "inverted")["rewards"].items(), key=lambda kv: (-kv[1], kv[0]))]
    members = [TrainedPolicy.load(setup["policy"] / "policy.zip"), TrainedPolicy.load(second / "policy.zip")]
    lists = _candidate_lists(ev, members, fixed, "mirrored")
    validation = text.split("Test (the report):", 1)[0]
    keys = {}
    for i, src in enumerate(("fixed", "mixture", "product")):
        for d in (0, 2):
            row = next(_cells(x) for x in validation.splitlines() if x.startswith(f"| {src} | {d} |"))
            lst = spread(lists[src], d)
            assert row[2] == " ".join(lst[:2])
            assert int(row[3]) == mod.ZC.walk(truth, lst)
            hit = row[5].split(" ")[0]
            keys[(src, d)] = (7 if hit == ">6" else float(hit), float(row[4]), d, i)
    src, d = min(keys, key=keys.get)
    assert f"Chosen on validation: **{src}, d = {d}**" in text
    assert "Leave one validation member out" not in text and "Paired against" not in text  # one member: nothing to leave out, no spread
    assert "- " + (f"{src}, d = {d} (chosen)" if d else f"{src}, d = 0") + " vs tpe: " in text
    # a rerun answers every search from the cache
    mod.BT.run_tpe = lambda *a, **k: (_ for _ in ()).throw(AssertionError("a search ran again"))
    assert mod.main(argv) == 0
    assert capsys.readouterr().out == text
    assert mod.main([*argv[:-8], "--k", "4", "--budget", "3", "--cache", str(cache)]) == 2
    assert "--budget >= --k" in capsys.readouterr().err


def test_members_needed_is_the_paired_power_formula():
    mod = _script("zero_shot_choice")
    # mean 0.2, sd 0.1414: ((1.645 + 0.842) * 0.1414 / 0.2)^2 = 3.09
    assert mod.members_needed([0.1, 0.3]) == pytest.approx(3.09, abs=0.01)
    # the same mean with ten times the spread needs a hundred times the members
    assert mod.members_needed([-0.8, 1.2]) == pytest.approx(100 * mod.members_needed([0.1, 0.3]))
    assert mod.members_needed([0.3, -0.3]) == float("inf")  # no mean difference: no number of members separates them
    assert mod.members_needed([0.5]) is None  # one member: no spread to measure


def test_proposal_spread_choice_on_a_subset_of_members():
    """The rule on any subset of validation members: the pooled median of the TPE hits, then the
    mean walk, then d, then the source order; leaving one member out can move it."""
    mod = _script("proposal_spread")

    def runs(*hits):  # noqa: ANN002, ANN202
        return [{"hit": h} for h in hits]

    measured = {
        ("fixed", 0): {"a": (3, runs(2, 2)), "b": (9, runs(20, 20))},
        ("product", 2): {"a": (1, runs(6, 6)), "b": (1, runs(6, 6))},
        ("mixture", 0): {"a": (5, runs(2, 2)), "b": (5, runs(None, None))},  # never within 2% on b: budget + 1
    }
    assert mod.choice(measured, ["a", "b"], 30) == ("product", 2)  # pooled medians 11, 6, 16.5
    assert mod.choice(measured, ["a"], 30) == ("fixed", 0)  # fixed and mixture tie at 2: the lower walk
    assert mod.choice(measured, ["b"], 30) == ("product", 2)
    measured[("mixture", 0)]["a"] = (3, runs(2, 2))  # now a full tie on a: the smaller d, then the source order
    assert mod.choice(measured, ["a"], 30) == ("fixed", 0)
    measured[("mixture", 0)]["a"], measured[("fixed", 0)]["a"] = (3, runs(2, 2)), (3, runs(3, 3))
    assert mod.choice(measured, ["a"], 30) == ("mixture", 0)


def test_zero_shot_choice_breaks_ties_toward_the_fixed_mask():
    spec = importlib.util.spec_from_file_location("zero_shot_choice", ROOT / "experiments" / "zero_shot_choice.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.choose({"fixed": 0.5, "mixture": 0.5, "product": 0.2}) == "product"
    assert mod.choose({"fixed": 0.5, "mixture": 0.5, "product": 0.7}) == "fixed"
    truth = {"rewards": {"00": -1.0, "01": -2.0, "10": -0.99}, "r_max": -0.99, "r_min": -2.0}
    assert mod.walk(truth, ["01", "00", "10"]) == 2  # -1.0 scores 0.99 of the span: within 2%
    assert mod.walk(truth, ["01"]) is None
    assert mod.normalised_regret(truth, "10") == 0.0


def test_zero_shot_choice_is_settled_only_when_no_left_out_member_moves_it():
    """The leave-one-out choices are the argmin over the other members' mean; the choice is settled
    with enough members only when none of them moves it."""
    mod = _script("zero_shot_choice")
    # fixed wins on the mean (0.4 vs 0.5) only because of member b: leave b out and product wins
    per_member = {"fixed": {"a": 0.6, "b": 0.0, "c": 0.6}, "product": {"a": 0.3, "b": 0.9, "c": 0.3}}
    assert mod.choose({n: float(np.mean(list(v.values()))) for n, v in per_member.items()}) == "fixed"
    loo = mod.leave_one_out(per_member)
    assert loo == {"a": "fixed", "b": "product", "c": "fixed"}
    assert not mod.settled(3, "fixed", loo)
    stable = {"fixed": {"a": 0.1, "b": 0.2, "c": 0.1}, "product": {"a": 0.3, "b": 0.9, "c": 0.3}}
    loo = mod.leave_one_out(stable)
    assert set(loo.values()) == {"fixed"}
    assert mod.settled(3, "fixed", loo)
    assert not mod.settled(2, "fixed", mod.leave_one_out({n: {"a": v["a"], "b": v["b"]} for n, v in stable.items()}))  # too few members
    assert mod.leave_one_out({"fixed": {"a": 0.1}, "product": {"a": 0.0}}) == {}  # one member: nothing to leave out


def test_search_warm_started_with_the_best_fixed_masks_of_other_tables(setup, tmp_path, capsys):
    """memrl search --warm-start-tables: the first trials are the masks with the best mean reward
    over the tables' *other* datasets (here inverted alone: thick, the searched one, is left out)."""
    from memrl.cli import main
    from memrl.evaluation.ground_truth import GroundTruthBook, best_fixed_masks
    from memrl.evaluation.lookup import LookupEvaluator
    from memrl.reporting.records import EvaluationLog

    env = _module().BS.load_env(setup["config"])
    inverted = GroundTruthBook.for_env(LookupEvaluator(setup["tables"]), env)("inverted")
    want = [k for k, _ in best_fixed_masks([inverted])[:3]]
    assert want == [m for m, _ in sorted(inverted.rewards.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
    run = tmp_path / "run"
    base = ["search", "--config", str(setup["config"]), "--dataset", "thick", "--lookup", str(setup["tables"]), "--no-progress"]
    capsys.readouterr()
    assert main([*base, "--warm-start-tables", str(setup["tables"]), "--warm-start-k", "3", "--budget", "5", "--out", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = EvaluationLog.read(run / "evaluations.csv")
    assert [r["mask_bits"] for r in rows[:3]] == want
    assert summary["warm_start"]["source"].startswith(f"best fixed masks of {setup['tables']} (digits/inverted)")
    assert [t["step"] for t in summary["warm_start"]["trials"]] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["search"]["warm_start_tables"] == str(setup["tables"])
    # --warm-start-spread 3: the same ranked list, reordered so that the proposals differ in 3 blocks or more
    from memrl.search.spread import hamming, spread

    ranked = [k for k, _ in best_fixed_masks([inverted])]
    far = spread(ranked, 3)[:3]
    assert far[0] == want[0] and all(hamming(a, b) >= 3 for i, a in enumerate(far) for b in far[:i])
    assert far != want  # the table's top three are not that far apart
    spread_run = tmp_path / "spread"
    assert main([*base, "--warm-start-tables", str(setup["tables"]), "--warm-start-k", "3", "--warm-start-spread", "3", "--budget", "4", "--out", str(spread_run), "--json"]) == 0
    capsys.readouterr()
    assert [r["mask_bits"] for r in EvaluationLog.read(spread_run / "evaluations.csv")[:3]] == far
    assert yaml.safe_load((spread_run / "config.yaml").read_text())["search"]["warm_start_spread"] == 3
    # refusals, one line each and no run folder: tables holding only the searched dataset; two warm starts at once
    only = tmp_path / "only-thick"
    only.mkdir()
    (only / "thick.jsonl").write_text((setup["tables"] / "thick_lora_seed0.jsonl").read_text())
    for extra, msg in (
        (["--warm-start-tables", str(only)], "no dataset other than"),
        (["--warm-start-tables", str(setup["tables"]), "--warm-start", str(setup["policy"] / "policy.zip")], "give one warm start"),
        (["--warm-start-tables", str(tmp_path / "nowhere")], "no such folder"),
        (["--warm-start-tables", str(setup["tables"]), "--optimizer", "exhaustive"], "exhaustive visits every mask once"),
        (["--warm-start-tables", str(setup["tables"]), "--warm-start-spread", "-1"], "--warm-start-spread must be >= 0"),
        (["--warm-start-spread", "2"], "--warm-start-spread needs --warm-start"),
    ):
        bad = tmp_path / "bad"
        assert main([*base, *extra, "--budget", "2", "--out", str(bad)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
        assert not bad.exists()


def test_best_fixed_masks_is_the_mean_over_datasets():
    from memrl.errors import MemrlError
    from memrl.evaluation.ground_truth import GroundTruth, best_fixed_masks

    a = GroundTruth("a", {"00": -1.0, "01": -3.0, "10": -2.0})
    b = GroundTruth("b", {"00": -4.0, "01": -1.0, "10": -2.0, "11": 0.0})
    got = best_fixed_masks([a, b])
    assert [k for k, _ in got] == ["01", "10", "00"]  # means -2, -2 (tie: by the bits), -2.5; "11" is not in a
    assert [v for _, v in got] == [-2.0, -2.0, -2.5]
    with pytest.raises(MemrlError, match="at least one dataset"):
        best_fixed_masks([])


def test_descriptor_similarity_mantel_is_a_permutation_test():
    """descriptor_similarity.mantel: a matrix that is a monotone map of the other correlates
    perfectly and no relabelling does better, so p is small (counting the observed labelling);
    an unrelated one is not; fewer than 4 datasets is refused."""
    mod = _script("descriptor_similarity")
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(7, 2))
    a = mod.distances(pts)
    rho, p = mod.mantel(a, np.sqrt(a), 999, 0)
    assert rho == pytest.approx(1.0) and 1 / 1000 <= p < 0.01
    noise = rng.random((7, 7))
    rho_n, p_n = mod.mantel(a, noise + noise.T, 999, 0)
    assert rho_n < 0.9 and p_n > 0.01
    assert mod.mantel(a, np.sqrt(a), 999, 0) == (rho, p)  # seeded
    with pytest.raises(ValueError, match="at least 4 datasets"):
        mod.mantel(a[:3, :3], a[:3, :3], 9, 0)
    std = mod.standardised(np.column_stack([pts, np.ones(7)]))
    assert std.shape == (7, 2) and np.allclose(std.mean(0), 0) and np.allclose(std.std(0), 1)  # the constant column dropped


def test_descriptor_similarity_scores_each_rule_by_the_tables(setup, tmp_path, capsys):
    """experiments/descriptor_similarity.py on four synthetic tables (and a second seed of one):
    every reported normalised regret and rank is the table's for the mask reported, the nearest
    table is the nearest by the standardised descriptor, the nearest rule copies its best mask,
    the noise ceiling scores the member's own optimum on its next seed; bad input exits 2."""
    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis

    mod = _script("descriptor_similarity")
    tables, ev, env = _with_validation_table(setup, tmp_path)
    write_table(setup["ev"], setup["cfg"], "rotated", 0, tables, tmp_path)
    write_table(setup["ev"], setup["cfg"], "thick", 1, tables, tmp_path)
    write_table(setup["ev"], setup["cfg"], "inverted", 1, tables, tmp_path)
    from memrl.evaluation.lookup import LookupEvaluator

    ev = LookupEvaluator.from_dir(tables)
    ev.set_feature_net(Path(env.pretrained) / "feature_net")
    md, png = tmp_path / "ds.md", tmp_path / "ds.png"
    base = ["--run", str(setup["policy"]), "--tables", str(tables), "--config", str(setup["config"]), "--permutations", "99"]
    assert mod.main([*base, "--k", "2", "--markdown", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert text.strip() in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = ["digits/inverted", "digits/mirrored", "digits/rotated", "digits/thick"]
    truths = {d: mod.BS.ground_truth(ev, env, d) for d in names}
    basis = DescriptorBasis.load(setup["policy"] / "descriptor.json")
    raw = np.stack([basis.describe(ev.require_feature_net(), load_dataset(d, ev.image_size, ev.image_channels)) for d in names]).astype(float)
    dist = mod.distances(mod.standardised(raw))
    best = {d: max(t["rewards"], key=t["rewards"].get) for d, t in truths.items()}
    for i, d in enumerate(names):
        row = next(_cells(x) for x in text.splitlines() if x.startswith(f"| {d} ("))
        others = [j for j in range(len(names)) if j != i]
        nearest = names[min(others, key=lambda j: dist[i, j])]
        assert row[1].startswith(f"{nearest} (")
        assert row[2].split("`")[1] == best[nearest]
        for cell in row[2:6]:  # "regret [rank] `bits`"
            bits = cell.split("`")[1]
            assert float(cell.split(" ")[0]) == pytest.approx(mod.ZS.normalised_regret(truths[d], bits), abs=5e-3)
            assert int(cell.split("[")[1].split("]")[0]) == mod.BT.rank_of(truths[d], truths[d]["rewards"][bits])
        per_table = [mod.ZS.normalised_regret(truths[d], best[names[j]]) for j in others]
        assert float(row[6]) == pytest.approx(np.mean(per_table), abs=5e-3)
        assert float(row[7]) == pytest.approx(min(per_table), abs=5e-3)
    two = ["digits/inverted", "digits/thick"]
    t2 = {d: mod.BS.next_seed_truth(ev, env, d) for d in two}
    own = np.mean([mod.ZS.normalised_regret(t2[d], best[d]) for d in two])
    assert f"({', '.join(two)}): the member's *own* seed-0 optimum has mean normalised regret {own:.3f}" in text
    split = mod.variance_split([(truths[d], t2[d]) for d in two])
    line = next(x for x in text.splitlines() if x.startswith("- Where the reward differences come from"))
    assert f"shared by every member {split[0] / sum(split):.0%}" in line and f"seed noise {split[2] / sum(split):.0%}" in line
    assert "Mantel test over 6 pairs (99 relabellings" in text and "family's own parameters" not in text  # built-ins have no generator
    assert mod.main([*base, "--datasets", "inverted", "thick", "mirrored"]) == 2
    assert "the Mantel test needs at least 4" in capsys.readouterr().err
    assert mod.main([*base, "--k", "0"]) == 2
    assert "--k: expected a positive number" in capsys.readouterr().err
    assert mod.main([*base, "--datasets", "inverted", "blurred", "thick", "mirrored"]) == 2
    assert "--datasets blurred" in capsys.readouterr().err


def test_generator_vector_reads_the_family_draw():
    """descriptor_similarity.generator_vector: the family's drawn size, duplication, classes and
    transforms as numbers; nothing for a dataset outside the family."""
    from memrl.data import family

    mod = _script("descriptor_similarity")
    v = mod.generator_vector("family:3")
    p = family.describe(3)
    assert v[0] == pytest.approx(np.log(p["n_train"])) and v[1] == pytest.approx(p["duplication"])
    assert v[2] == pytest.approx(len(p["classes"]) / 10)
    assert v[4:].sum() == len(p["style"]) and len(v) == 4 + len(family.TRANSFORMS)
    assert mod.generator_vector("inverted") is None


def test_variance_split_separates_shared_dataset_and_seed_effects():
    """descriptor_similarity.variance_split: identical seeds have no noise; members that agree
    with each other have no interaction; independent members have no shared effect."""
    mod = _script("descriptor_similarity")
    rng = np.random.default_rng(0)
    masks = [format(k, "07b") for k in range(128)]

    def table(r: np.ndarray) -> dict:
        return {"rewards": dict(zip(masks, r.tolist()))}

    shared = rng.normal(size=128)
    same = [(table(shared), table(shared)) for _ in range(4)]
    assert mod.variance_split(same) == pytest.approx((1.0 * 128 / 127, 0.0, 0.0), abs=1e-9)
    own = [rng.normal(size=128) for _ in range(4)]
    sh, inter, noise = mod.variance_split([(table(o), table(o)) for o in own])
    assert noise == 0 and inter > 0.8 and sh < 0.1
    noisy = [(table(shared + 0.5 * rng.normal(size=128)), table(shared + 0.5 * rng.normal(size=128))) for _ in range(4)]
    sh, inter, noise = mod.variance_split(noisy)
    assert noise > 0.1 and inter < 0.05 and sh > 0.6
    # over a subset of masks: each table still z-scored over all of them, the components over the subset
    top = masks[:16]
    sub = mod.variance_split(noisy, top)
    zs = np.asarray([[(np.asarray(list(t["rewards"].values())) - np.mean(list(t["rewards"].values()))) / np.std(list(t["rewards"].values())) for t in pair] for pair in noisy])[:, :, :16]
    assert sub[2] == pytest.approx(float(((zs[:, 0] - zs[:, 1]) ** 2 / 2).mean()))
    z_top = ((shared - shared.mean()) / shared.std())[:16]
    assert mod.variance_split(same, top) == pytest.approx((float(np.var(z_top, ddof=1)), 0.0, 0.0), abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 members"):
        mod.variance_split(same[:1])


def test_descriptor_similarity_vectors_replace_the_descriptor(setup, tmp_path, capsys):
    """descriptor_similarity.py --vectors: the nearest table is the nearest by the given vectors
    (a planted layout), and a file that misses a dataset or holds no numbers exits 2 with one line."""
    mod = _script("descriptor_similarity")
    tables, _, _ = _with_validation_table(setup, tmp_path)
    write_table(setup["ev"], setup["cfg"], "rotated", 0, tables, tmp_path)
    names = mod.BS.table_datasets(tables)
    assert len(names) == 4
    # on a line: each dataset's nearest is its neighbour on the line (ends: the one beside them)
    layout = {d: [float(i**2), 0.0] for i, d in enumerate(names)}
    vec = tmp_path / "vectors.json"
    vec.write_text(json.dumps(layout))
    md = tmp_path / "ds.md"
    base = ["--tables", str(tables), "--config", str(setup["config"]), "--permutations", "19"]
    assert mod.main([*base, "--vectors", str(vec), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert f"vectors of `{vec}`" in text
    want = {names[0]: names[1], names[1]: names[0], names[2]: names[1], names[3]: names[2]}  # squares 0, 1, 4, 9
    for d, near in want.items():
        row = next(_cells(x) for x in text.splitlines() if x.startswith(f"| {d} ("))
        assert row[1].startswith(f"{near} (")
    capsys.readouterr()
    vec.write_text(json.dumps({d: v for d, v in layout.items() if d != names[2]}))
    assert mod.main([*base, "--vectors", str(vec)]) == 2
    assert f"no vector for {names[2]}" in capsys.readouterr().err
    vec.write_text(json.dumps({**layout, names[0]: ["a"]}))
    assert mod.main([*base, "--vectors", str(vec)]) == 2
    assert f"entry '{names[0]}': expected a non-empty list of finite numbers" in capsys.readouterr().err
    vec.write_text("[1, 2]")
    assert mod.main([*base, "--vectors", str(vec)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_gradient_descriptor_effects_and_interaction_test():
    """gradient_descriptor: a unit's marginal effect in an additive table is its weight (over the
    table's spread); the interaction test finds a planted dataset x unit pattern and not noise."""
    mod = _script("gradient_descriptor")
    masks = [format(k, "07b") for k in range(128)]
    w = np.asarray([3.0, -1.0, 0.0, 2.0, 0.5, -2.0, 1.0])
    r = np.asarray([sum(wi * int(c) for wi, c in zip(w, m)) for m in masks])
    truth = {"rewards": dict(zip(masks, r.tolist())), "r_max": float(r.max())}
    eff = mod.marginal_effects(truth, 7)
    assert eff == pytest.approx(w / (r.max() - r.mean()))
    with pytest.raises(ValueError, match="7 bits for 5 units"):
        mod.marginal_effects(truth, 5)
    rng = np.random.default_rng(1)
    inter = rng.normal(size=(8, 7))
    effect = 2.0 + inter + rng.normal(size=(8, 1)) + rng.normal(size=(1, 7))  # rows and columns add, the pattern stays
    rho, p = mod.interaction_test(inter + 5.0 * rng.normal(size=(1, 7)), effect, 199, 0)
    assert rho > 0.95 and p <= 0.01
    assert mod.interaction_test(inter + 5.0 * rng.normal(size=(1, 7)), effect, 199, 0)[1] == p  # seeded
    rho_n, p_n = mod.interaction_test(rng.normal(size=(8, 7)), effect, 199, 0)
    assert rho_n < 0.5 and p_n > 0.01
    dc = mod.double_centred(effect)
    assert np.allclose(dc.mean(0), 0) and np.allclose(dc.mean(1), 0) and np.allclose(dc, mod.double_centred(inter))
    v = mod.profile(np.asarray([1e-4, 1e-2, 1.0]), 0.1)
    assert v == pytest.approx([-2.0, 0.0, 2.0, -1.0])


def test_gradient_descriptor_reports_the_tables_effects(setup, tmp_path, capsys):
    """experiments/gradient_descriptor.py on three synthetic tables: each effect cell is the
    table's, each gradient cell the written vector's (centred over the units, reproducible per
    seed); bad input exits 2 with one line."""
    mod = _script("gradient_descriptor")
    tables, ev, env = _with_validation_table(setup, tmp_path)
    out, md = tmp_path / "vec.json", tmp_path / "gd.md"
    base = ["--tables", str(tables), "--config", str(setup["config"]), "--batches", "1", "--batch-size", "4", "--permutations", "5"]
    assert mod.main([*base, "--out", str(out), "--markdown", str(md)]) == 0
    text, vectors = md.read_text(), json.loads(out.read_text())
    assert text.strip() in capsys.readouterr().out
    n = len(ev.units)
    assert set(vectors) == set(mod.BS.table_datasets(tables)) and len(vectors) == 3
    for d, v in vectors.items():
        assert len(v) == n + 1 and abs(sum(v[:n])) < 1e-4
        row = next(_cells(x) for x in text.splitlines() if x.startswith(f"| {d} ("))
        effect = mod.marginal_effects(mod.BS.ground_truth(ev, env, d), n)
        for j, cell in enumerate(row[2 : 2 + n]):
            g, e = (float(x) for x in cell.split(" / "))
            assert g == pytest.approx(v[j], abs=5e-3) and e == pytest.approx(effect[j], abs=5e-3)
    assert "Reliability: the double-centred profiles of noise seed 0 and seed(s) 1" in text
    again = tmp_path / "again.json"
    assert mod.main([*base, "--seeds", "0", "--out", str(again)]) == 0
    assert json.loads(again.read_text()) == vectors
    capsys.readouterr()
    assert mod.main([*base, "--batches", "0"]) == 2
    assert "--batches: expected a positive number" in capsys.readouterr().err
    assert mod.main([*base, "--datasets", "inverted", "thick"]) == 2
    assert "needs at least 3" in capsys.readouterr().err
