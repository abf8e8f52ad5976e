"""Lookup tables: export a cache, answer like the real evaluator, refuse what no row holds, train on a table."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from memrl.data.loaders import load_dataset
from memrl.envs.config import EnvConfig
from memrl.errors import EvaluationFailed, MemrlError
from memrl.evaluation import EvalCache, Evaluator, request_key
from memrl.evaluation.evaluator import build_request
from memrl.evaluation.lookup import LookupEvaluator, export_table, import_tables, read_table, table_meta
from memrl.peft_masking import Mask

#: The quick preset cut further (as in test_agents): an evaluation takes about a second.
TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}
MASKS = ("none", "mid_block.attentions.0", "down_blocks.1.attentions.0,up_blocks.1.attentions.1")
RUNTIME = ("cached", "seconds", "computed_seconds", "timings", "lookup", "table_runtime", "lookup_table")


def env_kwargs(model_dir: Path) -> dict:
    return {"pretrained": str(model_dir), "datasets": ["inverted"], "preset": "quick", "eval_overrides": TINY}


@pytest.fixture(scope="module")
def made(quick_model_dir, tmp_path_factory):
    """A real evaluator, its cache filled with three lora masks on `inverted` (+ reference and base), and the exported table."""
    root = tmp_path_factory.mktemp("lookup")
    ev = Evaluator(quick_model_dir[0], cache=root / "evals.sqlite")
    cfg = EnvConfig(**env_kwargs(quick_model_dir[0])).eval_config()  # what `memrl train` evaluates with
    data = load_dataset("inverted", ev.image_size, ev.image_channels)
    real = {m: ev.evaluate(data, "lora", m, cfg, seed=0) for m in MASKS}
    tables = root / "tables"
    n = export_table(ev.cache, tables / "inverted.jsonl", table_meta(ev))
    return {"ev": ev, "cfg": cfg, "data": data, "real": real, "tables": tables, "rows": n, "root": root}


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in RUNTIME}


def test_lookup_answers_like_the_evaluator(made):
    ev, cfg, data = made["ev"], made["cfg"], made["data"]
    assert made["rows"] == len(MASKS) + 2  # the masks, the reference (full, all) and the pretrained model (full, none)
    lk = LookupEvaluator.from_dir(made["tables"])
    assert lk.units == ev.units and lk.granularity == ev.granularity
    assert (lk.image_size, lk.image_channels) == (ev.image_size, ev.image_channels)
    assert lk.feature_net is not None  # the tables' model folder is here: datasets can be described
    for m in MASKS:
        got = lk.evaluate(data, "lora", m, cfg, seed=0)
        assert strip(got) == strip(made["real"][m])
        assert got["cached"] is True and got["lookup"] is True
        assert got["computed_seconds"] == made["real"][m]["seconds"]
        assert got["table_runtime"]["cpu_threads"] >= 1
    # another reward weighting: recomputed from the same rows, as the real evaluator does (a cache hit there)
    lam2 = replace(cfg, reward=replace(cfg.reward, lam=2.0, mu=0.3))
    for m in MASKS:
        real = ev.evaluate(data, "lora", m, lam2, seed=0)
        assert real["cached"] is True
        got = lk.evaluate(data, "lora", m, lam2, seed=0)
        assert strip(got) == strip(real)
        assert got["reward"] != made["real"][m]["reward"] or m == "none"
    assert strip(lk.reference(data, cfg.with_method("lora", None, 0))) == strip(ev.reference(data, cfg.with_method("lora", None, 0)))
    assert lk.hits > 0 and lk.misses == 0
    from memrl.evaluation.protocol import MaskEvaluator

    assert isinstance(lk, MaskEvaluator)


def test_runtime_is_not_part_of_the_match(made, tmp_path):
    """A table made with another CPU thread count answers; its runtime is reported."""
    meta, rows = read_table(made["tables"] / "inverted.jsonl")
    for r in rows:
        r["request"]["runtime"] = {**r["request"]["runtime"], "cpu_threads": 7}
    write_table(tmp_path / "t.jsonl", meta, rows)
    lk = LookupEvaluator(tmp_path / "t.jsonl")
    got = lk.evaluate(made["data"], "lora", MASKS[1], made["cfg"], seed=0)
    assert got["table_runtime"]["cpu_threads"] == 7
    assert strip(got) == strip(made["real"][MASKS[1]])


def test_refuses_what_no_row_holds(made, tmp_path):
    lk = LookupEvaluator.from_dir(made["tables"])
    data, cfg = made["data"], made["cfg"]
    with pytest.raises(MemrlError, match=r"no row for mask up_blocks\.0\.attentions\.0.*3 mask\(s\)"):
        lk.evaluate(data, "lora", "up_blocks.0.attentions.0", cfg, seed=0)
    thick = load_dataset("thick", lk.image_size, lk.image_channels)
    with pytest.raises(MemrlError, match=r"dataset digits/thick .*no row.*digits/inverted"):
        lk.evaluate(thick, "lora", "none", cfg, seed=0)
    with pytest.raises(MemrlError, match=r"finetune\.steps is 3 here, 2 in the tables"):
        lk.evaluate(data, "lora", "none", replace(cfg, finetune=replace(cfg.finetune, steps=3)), seed=0)
    with pytest.raises(MemrlError, match=r"no row for seed 5; they hold seeds 0"):
        lk.evaluate(data, "lora", "none", cfg, seed=5)
    with pytest.raises(MemrlError, match=r"cannot answer difffit on digits/inverted.*no row for method difffit on this dataset; they hold methods full, lora"):
        lk.evaluate(data, "difffit", "none", cfg, seed=0)
    with pytest.raises(MemrlError, match=r"no row for learning rate"):
        lk.evaluate(data, "lora", "none", cfg, lr=0.123, seed=0)
    with pytest.raises(MemrlError, match="no pictures"):
        lk.evaluate(data, "lora", "none", cfg, seed=0, out_dir=tmp_path / "pics")
    with pytest.raises(MemrlError, match="mask is over units"):
        lk.parse_mask(Mask.parse("all", lk.units[:-1]))
    assert lk.misses == 5


def write_table(path: Path, meta: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in [{"meta": meta}, *rows]))


def test_refuses_a_table_made_for_another_unit_count(made, tmp_path):
    meta, rows = read_table(made["tables"] / "inverted.jsonl")
    fewer = [u for u in meta["units"] if u != "up_blocks.1.attentions.1"]
    other_meta = {**meta, "units": fewer, "trainable_units": {m: [u for u in us if u in fewer] for m, us in meta["trainable_units"].items()}}
    other_rows = []
    for r in copy.deepcopy(rows):
        r["request"]["units"] = fewer
        r["request"]["mask"] = r["request"]["mask"][:-1]
        r["key"] = request_key(r["request"])
        other_rows.append(r)
    folder = tmp_path / "mixed"
    write_table(folder / "a.jsonl", meta, rows)
    write_table(folder / "b.jsonl", other_meta, other_rows)
    with pytest.raises(MemrlError, match=r"a\.jsonl has 7 units .*b\.jsonl has 6 units") as exc:
        LookupEvaluator.from_dir(folder)
    assert "up_blocks.1.attentions.1" in str(exc.value)
    # on its own the 6-unit table loads, and refuses a 7-unit mask
    lk = LookupEvaluator(folder / "b.jsonl")
    assert len(lk.units) == 6
    with pytest.raises(MemrlError):
        lk.parse_mask("1111111")
    # a row over other units than its own table's meta is refused too
    write_table(tmp_path / "bad.jsonl", meta, other_rows[:1])
    with pytest.raises(MemrlError, match="6 units .* the table's meta over 7 units"):
        LookupEvaluator(tmp_path / "bad.jsonl")


def test_folder_scan_skips_other_jsonl(made, tmp_path):
    """A dataset's metadata.jsonl beside the tables is not a table; a folder with no table is refused."""
    folder = tmp_path / "runs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "digit 3"}\n')
    with pytest.raises(MemrlError, match="metadata.jsonl are not tables"):
        LookupEvaluator.from_dir(folder)
    meta, rows = read_table(made["tables"] / "inverted.jsonl")
    write_table(folder / "search-run" / "table.jsonl", meta, rows)
    assert LookupEvaluator.from_dir(folder).tables == [folder / "search-run" / "table.jsonl"]
    with pytest.raises(MemrlError, match="not a memrl lookup table"):
        LookupEvaluator(folder / "data" / "metadata.jsonl")


def test_stored_failure_raises_evaluation_failed(made, tmp_path):
    ev, data, cfg = made["ev"], made["data"], made["cfg"]
    cache = EvalCache(tmp_path / "f.sqlite")
    diverged, flaky = (Mask.parse(m, ev.units) for m in ("up_blocks.0.attentions.0", "up_blocks.0.attentions.1"))
    req = ev.request(data, diverged, cfg.with_method("lora", None, 0))
    cache.put_failed(request_key(req), req, "NonFiniteError: the loss is not finite at step 1", deterministic=True)
    req2 = ev.request(data, flaky, cfg.with_method("lora", None, 0))
    cache.put_failed(request_key(req2), req2, "RuntimeError: out of memory", deterministic=False)
    cache.claim("pending", {"x": 1})  # a claim in progress is never exported
    assert export_table(cache, tmp_path / "t" / "f.jsonl", table_meta(ev)) == 1
    lk = LookupEvaluator(tmp_path / "t" / "f.jsonl")
    with pytest.raises(EvaluationFailed, match="loss is not finite") as exc:
        lk.evaluate(data, "lora", diverged, cfg, seed=0, with_reward=False)
    assert exc.value.deterministic is True
    with pytest.raises(MemrlError, match="no row for mask"):
        lk.evaluate(data, "lora", flaky, cfg, seed=0, with_reward=False)
    assert export_table(cache, tmp_path / "t2" / "f.jsonl", table_meta(ev), include_transient=True) == 2
    with pytest.raises(EvaluationFailed, match="out of memory") as exc:
        LookupEvaluator(tmp_path / "t2").evaluate(data, "lora", flaky, cfg, seed=0, with_reward=False)
    assert exc.value.deterministic is False


def test_export_is_atomic_and_deterministic(made, tmp_path, monkeypatch):
    ev = made["ev"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    n = export_table(ev.cache.path, a, table_meta(ev))
    assert export_table(ev.cache, b, table_meta(ev)) == n
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text().splitlines()
    meta = json.loads(lines[0])["meta"]
    assert meta["eval_version"] and meta["created"] and meta["units"] == list(ev.units)
    keys = [json.loads(x)["key"] for x in lines[1:]]
    assert len(keys) == n and keys == sorted(keys)
    # a failed write leaves the old table whole and no temporary file behind
    before = a.read_bytes()

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError):
        export_table(ev.cache, a, table_meta(ev))
    monkeypatch.undo()
    assert a.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]
    with pytest.raises(MemrlError, match="no evaluation cache"):
        export_table(tmp_path / "missing.sqlite", tmp_path / "c.jsonl", table_meta(ev))
    with pytest.raises(MemrlError, match="lacks units"):
        export_table(ev.cache, tmp_path / "c.jsonl", {k: v for k, v in table_meta(ev).items() if k != "units"})
    with pytest.raises(MemrlError, match="none for this table's model"):
        export_table(ev.cache, tmp_path / "c.jsonl", {**table_meta(ev), "model": "0" * 16})
    assert not (tmp_path / "c.jsonl").exists()


def test_import_tables_makes_the_real_evaluator_hit(made, tmp_path, monkeypatch, capsys):
    """A table imported into a fresh cache answers the real evaluator's requests: nothing is fine-tuned."""
    from memrl.cli import main

    ev, data, cfg = made["ev"], made["data"], made["cfg"]
    cache = tmp_path / "fresh" / "evals.sqlite"
    counts = import_tables(made["tables"], cache)
    assert counts == {"tables": 1, "imported": made["rows"], "present": 0, "failures": 0}
    fresh = Evaluator(ev.pretrained_dir, cache=cache)

    def no_finetune(*_a, **_k):
        raise AssertionError("an imported request was fine-tuned again")

    monkeypatch.setattr(fresh, "run", no_finetune)
    for m in MASKS:
        got = fresh.evaluate(data, "lora", m, cfg, seed=0)
        assert got["cached"] is True and strip(got) == strip(made["real"][m])
    monkeypatch.undo()
    # a request no table holds is still computed: the import only adds hits
    assert EvalCache(cache).get(request_key(ev.request(data, Mask.parse("all", ev.units), cfg.with_method("lora", None, 1)))) is None
    # importing again changes nothing; the CLI says so
    assert main(["cache", "import", str(made["tables"]), "--into", str(cache), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["imported"], out["present"]) == (0, made["rows"])


def test_import_tables_refuses_an_edited_row_and_writes_nothing(made, tmp_path, capsys):
    from memrl.cli import main

    meta, rows = read_table(made["tables"] / "inverted.jsonl")
    rows[-1]["result"] = {**(rows[-1]["result"] or {}), "fid": 1.0}
    rows[-1]["request"] = {**rows[-1]["request"], "lr": 123.0}  # the key no longer matches the request
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"meta": meta}) + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "c" / "evals.sqlite"
    with pytest.raises(MemrlError, match=r"bad.jsonl:%d: 'key'.*nothing was imported" % (len(rows) + 1)):
        import_tables([made["tables"], bad], cache)
    assert not cache.exists()
    assert main(["cache", "import", str(bad), "--into", str(cache)]) == 2
    assert "is not the hash of the row's request" in capsys.readouterr().err
    assert not cache.parent.exists()
    assert main(["cache", "import", str(made["tables"]), "--into", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- memrl train --lookup
@pytest.fixture(scope="module")
def full_table(made):
    """Every lora mask of the 7 units on `inverted`, made from the real table's rows (a sweep of 128 fine-tunes
    would take minutes): the reference and base rows as evaluated, each mask's row a copy of a real one with
    its own mask and FID. What matters here is the plumbing: the run must answer from the table alone."""
    ev, cfg, data = made["ev"], made["cfg"], made["data"]
    meta, rows = read_table(made["tables"] / "inverted.jsonl")
    keep = [r for r in rows if r["request"]["method"] == "full"]
    template = next(r for r in rows if r["request"]["method"] == "lora" and r["request"]["mask"] != "0" * 7)
    lcfg = cfg.with_method("lora", None, 0)
    for k in range(2 ** len(ev.units)):
        bits = format(k, f"0{len(ev.units)}b")
        mask = Mask.from_bits(bits, ev.units)
        req = build_request(ev.model_hash, ev.feature_net_hash, ev.units, ev.granularity, data.fingerprint(), bits, lcfg, template["request"]["runtime"])
        res = copy.deepcopy(template["result"])
        res.update({"mask": str(mask), "mask_bits": bits, "mask_units": list(mask.selected), "fid": res["fid"] * (1 + 0.1 * bits.count("1")), "trainable_fraction": 0.01 * bits.count("1")})
        keep.append({"key": request_key(req), "request": req, "status": "ok", "result": res, "error": None, "deterministic": False})
    folder = made["root"] / "full"
    write_table(folder / "sweep.jsonl", meta, keep)
    return folder


def train_config(tmp_path: Path, model_dir: Path) -> Path:
    cfg = {
        "env": env_kwargs(model_dir),
        "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 2},
        "train": {"total_timesteps": 8, "seed": 0, "checkpoint_every": 4, "random_masks": 2, "optuna": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def no_finetuning(monkeypatch) -> None:  # noqa: ANN001
    def refuse(*_a, **_k):
        raise AssertionError("memrl train --lookup fine-tuned or loaded a model")

    monkeypatch.setattr("memrl.evaluation.evaluator.finetune", refuse)
    monkeypatch.setattr("memrl.training.finetune.finetune", refuse)
    monkeypatch.setattr(Evaluator, "__init__", refuse)
    monkeypatch.setattr(Evaluator, "run", refuse)


def test_train_with_lookup_fine_tunes_nothing(full_table, made, quick_model_dir, tmp_path, monkeypatch, capsys):
    from memrl.cli import main

    no_finetuning(monkeypatch)
    cfg = train_config(tmp_path, quick_model_dir[0])
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--lookup", str(full_table), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["env_steps"] == 8 and summary["fresh_evaluations"] == 0
    assert summary["lookup"]["lookup"] == str(full_table.resolve()) and summary["lookup"]["rows"] == 2 ** 7 + 2
    assert json.loads((run / "lookup.json").read_text())["units"] == list(made["ev"].units)
    rows = (run / "evaluations.csv").read_text().splitlines()
    assert len(rows) == 9 and all(",True,False," in r for r in rows[1:])  # every step cached, none failed
    assert not (run / "best").exists() and not (run / "evaluations.sqlite").exists()
    assert "inverted" in json.loads((run / "policy_eval.json").read_text())
    # --resume answers from the same tables; another --lookup is refused
    assert main(["train", "--out", str(run), "--resume", "--total-timesteps", "12", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["env_steps"] == 12
    assert main(["train", "--out", str(run), "--resume", "--lookup", str(made["tables"]), "--total-timesteps", "16"]) == 2
    assert "it answers from the lookup tables in" in capsys.readouterr().err


def test_train_lookup_refusals(made, quick_model_dir, tmp_path, monkeypatch, capsys):
    from memrl.cli import main

    no_finetuning(monkeypatch)
    cfg = train_config(tmp_path, quick_model_dir[0])
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--lookup", str(made["tables"]), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lookup cannot take --dry-run" in err[0]
    # the small table holds 3 of the 128 masks: refused before the run folder is written
    assert main(["train", "--config", str(cfg), "--out", str(run), "--lookup", str(made["tables"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of 128 masks" in err[0] and "lora on inverted" in err[0]
    assert not run.exists()
    assert main(["train", "--config", str(cfg), "--out", str(run), "--lookup", str(made["tables"]), "--set", "env.granularity=block"]) == 2
    assert "env.granularity=attention" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--out", str(run), "--lookup", str(tmp_path / "nowhere")]) == 2
    assert "not a folder of lookup tables" in capsys.readouterr().err


def test_help_mentions_lookup(capsys):
    from memrl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--lookup DIR" in capsys.readouterr().out


def test_cache_export_cli_writes_the_table_export_table_writes(made, tmp_path, capsys):
    """``memrl cache export``: the same bytes as :func:`export_table` with the evaluator's meta; bad input is one line."""
    from memrl.cli import main

    ev = made["ev"]
    out = tmp_path / "t" / "inverted.jsonl"
    argv = ["cache", "export", str(made["root"] / "evals.sqlite"), "--out", str(out), "--pretrained", str(ev.pretrained_dir), "--granularity", ev.granularity]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rows": made["rows"], "table": str(out)}
    assert out.read_bytes() == (made["tables"] / "inverted.jsonl").read_bytes()
    # a table that declares lora only (full, the reference, is added)
    assert main([*argv, "--method", "lora", "--out", str(tmp_path / "lora.jsonl")]) == 0
    meta, rows = read_table(tmp_path / "lora.jsonl")
    assert sorted(meta["trainable_units"]) == ["full", "lora"] and len(rows) == made["rows"]
    assert f"exported {made['rows']} finished evaluation(s)" in capsys.readouterr().out
    assert main(["cache", "export", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "x.jsonl"), "--pretrained", str(ev.pretrained_dir)]) == 2
    assert "no evaluation cache at" in capsys.readouterr().err
    assert main([*argv[:3], "--out", str(tmp_path), *argv[5:]]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
