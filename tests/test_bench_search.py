"""experiments/bench_search.py: every optimizer on a lookup table, the markdown table and the plot.

The table holds every lora mask of the quick test model's 7 attention units on `inverted`: the
reference and base rows as evaluated, each mask's row a copy of one real evaluation with its own
mask and synthetic FID / nn_own_rate (a sweep of 128 fine-tunes would take minutes), so the
rewards differ from mask to mask and the optimum is one mask.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The quick preset cut further (as in test_lookup): an evaluation takes about a second.
TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "experiments" / "bench_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _u(bits: str, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) per mask."""
    return int(hashlib.sha256((salt + bits).encode()).hexdigest()[:8], 16) / 16**8


@pytest.fixture(scope="module")
def table(quick_model_dir, tmp_path_factory):
    from memrl.data.loaders import load_dataset
    from memrl.envs.config import EnvConfig
    from memrl.evaluation import Evaluator, request_key
    from memrl.evaluation.evaluator import build_request
    from memrl.evaluation.lookup import export_table, read_table, table_meta
    from memrl.peft_masking import Mask

    root = tmp_path_factory.mktemp("bench_search")
    env = {"pretrained": str(quick_model_dir[0]), "datasets": ["inverted"], "method": "lora", "preset": "quick", "eval_overrides": TINY, "seed": 0}
    config = root / "env.yaml"
    config.write_text(yaml.safe_dump({"env": env, "search": {"final_pictures": False}}))
    ev = Evaluator(quick_model_dir[0], cache=root / "evals.sqlite")
    cfg = EnvConfig(**env).eval_config()
    data = load_dataset("inverted", ev.image_size, ev.image_channels)
    for seed in (0, 1):  # seed 1: the second seed's table, which no optimizer sees
        ev.evaluate(data, "lora", "mid_block.attentions.0", cfg, seed=seed)  # + the reference and base rows
    export_table(ev.cache, root / "real.jsonl", table_meta(ev))
    meta, rows = read_table(root / "real.jsonl")
    n = len(ev.units)
    tables = root / "tables"
    tables.mkdir()
    for seed in (0, 1):
        keep = [r for r in rows if r["request"]["method"] == "full" and r["request"]["config"]["finetune"]["seed"] == seed]
        template = next(r for r in rows if r["request"]["method"] == "lora" and r["request"]["config"]["finetune"]["seed"] == seed)
        lcfg = cfg.with_method("lora", None, seed)
        for k in range(2**n):
            bits = format(k, f"0{n}b")
            mask = Mask.from_bits(bits, ev.units)
            req = build_request(ev.model_hash, ev.feature_net_hash, ev.units, ev.granularity, data.fingerprint(), bits, lcfg, template["request"]["runtime"])
            res = copy.deepcopy(template["result"])
            fid = res["fid"] * (0.5 + 2.0 * _u(bits, f"fid{seed}"))
            res.update({"mask": str(mask), "mask_bits": bits, "mask_units": list(mask.selected), "fid": fid, "nn_own_rate": _u(bits, "mem"), "trainable_fraction": 0.01 * bits.count("1")})
            keep.append({"key": request_key(req), "request": req, "status": "ok", "result": res, "error": None, "deterministic": False})
        (tables / f"inverted_lora_seed{seed}.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in [{"meta": meta}, *keep]))
    return {"tables": tables, "config": config, "root": root, "n": n}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_bench_search_all_optimizers(table, tmp_path, capsys):
    mod = _module()
    out = tmp_path / "out"
    md = tmp_path / "bench.md"
    argv = ["--tables", str(table["tables"]), "--config", str(table["config"]), "--seeds", "2", "--budget", "4", "--out-dir", str(out), "--markdown", str(md)]
    assert mod.main(argv) == 0
    text = md.read_text()
    assert text in capsys.readouterr().out
    assert text.startswith("`python experiments/bench_search.py --tables ")
    assert "distinct masks evaluated" in text and "cache hit" in text
    assert f"**digits/inverted** ({2 ** table['n']} masks; optimum " in text
    first, held_out = text.split("On a second evaluation seed (seed 1; picks scored on numbers their optimizer never saw):")
    rows = {c[0]: c for c in (_cells(x) for x in first.splitlines() if x.startswith("| ")) if c[0] in mod.OPTIMIZERS}
    assert sorted(rows) == sorted(mod.OPTIMIZERS)  # one dataset: no pooled table
    for name, c in rows.items():
        m = re.fullmatch(r"(≥?\d+(?:\.\d)?|>4) \[(≥?\d+(?:\.\d)?|>4), (≥?\d+(?:\.\d)?|>4)\]", c[1])
        assert m, (name, c[1])
        reached, runs = map(int, c[2].split("/"))
        assert runs == 2 and 0 <= reached <= 2
        score = float(c[3])  # score at 4 evaluations (the budget)
        assert 0.0 <= score <= 1.0
        assert float(c[4]) >= 0.0  # regret
        assert 1 <= float(c[5]) <= 4  # distinct masks per run
    # the second seed's table: each run's pick after 4 distinct evaluations, scored on seed 1
    held = {c[0]: c for c in (_cells(x) for x in held_out.splitlines() if x.startswith("| ")) if c[0] in mod.OPTIMIZERS}
    assert sorted(held) == sorted(mod.OPTIMIZERS) and _cells(held_out.splitlines()[2])[1] == "pick after 4"
    from memrl.evaluation.lookup import LookupEvaluator

    env = mod.load_env(table["config"])
    ev = LookupEvaluator.from_dir(table["tables"])
    t0, t1 = mod.ground_truth(ev, env, "inverted"), mod.ground_truth(ev, env.with_(seed=1), "inverted")
    assert t0["rewards"] != t1["rewards"]  # two seeds, two tables
    by_opt: dict[str, list] = {}
    for r in json.loads((out / "bench_search.json").read_text())["runs"]:
        by_opt.setdefault(r["optimizer"], []).append(r["rows"])
    for name, runs in by_opt.items():
        picks = []
        for rows_ in runs:  # the best of the first 4 distinct masks by the seed-0 rewards the run saw
            seen = {}
            for r in rows_:
                seen.setdefault(r["mask_bits"], r["reward"])
            picks.append(max(list(seen.items())[:4], key=lambda kv: kv[1])[0])
        want = float(np.median([t1["r_max"] - t1["rewards"][b] for b in picks]))
        assert float(held[name][1]) == pytest.approx(want, abs=1e-3), name
    floor = re.search(r"The seed-0 optimum `([01]+)` scores regret ([0-9.]+) there", held_out)
    assert floor and floor.group(1) == t0["optimum_bits"][0]
    assert float(floor.group(2)) == pytest.approx(t1["r_max"] - t1["rewards"][floor.group(1)], abs=1e-3)
    png = out / "bench_search.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads((out / "bench_search.json").read_text())
    assert len(raw["runs"]) == 2 * len(mod.OPTIMIZERS) and all(len(r["rows"]) == 4 for r in raw["runs"])
    # the same optimizer seed proposes the same masks: a rerun reuses the stored runs and prints the same table
    assert mod.main(argv) == 0
    assert _cells(md.read_text().splitlines()[0])[0].split("(")[0] == _cells(text.splitlines()[0])[0].split("(")[0]
    assert md.read_text().split("\n", 1)[1] == text.split("\n", 1)[1]


def test_trace_counts_distinct_masks(tmp_path):
    mod = _module()
    truth = {"r_max": -1.0, "r_min": -21.0}
    rows = [{"mask_bits": b, "reward": r, "failed": False} for b, r in (("01", -11.0), ("01", -11.0), ("10", -1.2), ("11", -1.0))]
    t = mod.trace(rows, truth, 5)
    assert t["distinct"] == 3 and t["hit"] == 2 and t["hit_trial"] == 3  # -1.2 scores 0.99: within 2% at the 2nd distinct mask
    assert t["norm"] == pytest.approx([0.5, 0.99, 1.0, 1.0, 1.0])
    assert t["regret"] == pytest.approx([10.0, 0.2, 0.0, 0.0, 0.0])
    # unreached runs count as needing more than the budget
    q = mod.quantiles([2, None, None], 5)
    assert q[1] == (6.0, True) and mod._fmt_q(q[1], 5) == ">5"
    assert mod._fmt_q(mod.quantiles([2, 4, None, None], 5)[1], 5) == "≥5"
    assert mod._fmt_q(mod.quantiles([2, 4, 3], 5)[1], 5) == "3"
    assert mod.main(["--tables", str(tmp_path / "none")]) == 2
