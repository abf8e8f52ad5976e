"""``memrl export`` / ``memrl units`` / ``memrl datasets`` (memrl.interop).

No training: a training run is a fake run folder (``config.yaml`` + ``best_mask.json`` with the
quick model's real unit names); a replay is a folder with ``report.json`` and an ``adapter/``
written by :func:`memrl.peft_masking.export.save_adapter` from a LoRA whose weights were moved
off their init. Exports are loaded back with peft's and diffusers' own APIs.
"""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest
import torch
import yaml

from memrl.cli import build_parser, main
from memrl.peft_masking import Mask, apply_peft, enumerate_units, unit_of
from memrl.peft_masking.export import DIFFUSERS_LORA_WEIGHTS_NAME, save_adapter
from memrl.peft_masking.registry import attention_projections

SELECTED = ["down_blocks.2.attentions.0", "up_blocks.1.attentions.1"]
OTHER = ["mid_block.attentions.0"]
ATOL = 1e-5


# ------------------------------------------------------------------------------------ helpers
def base_unet(model_dir):  # noqa: ANN001, ANN201
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(model_dir / "unet").eval()


def output(unet) -> torch.Tensor:  # noqa: ANN001
    cfg = unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    c = torch.randn(2, 5, cfg.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 600]), encoder_hidden_states=c).sample


def projections(unet, selected) -> list[str]:  # noqa: ANN001
    modules = dict(unet.named_modules())
    return [name for u in selected for name, _ in attention_projections(u, modules[u])]


def entry(units, selected, method="lora", lr=0.01, dataset="inverted") -> dict:  # noqa: ANN001
    bits = "".join("1" if u in selected else "0" for u in units)
    return {"dataset": dataset, "method": method, "lr": lr, "mask_bits": bits, "mask_units": [u for u in units if u in selected], "metrics": {"reward": -1.5, "fid": 80.0}}


def fake_run(folder, model_dir, selected=SELECTED, method="lora", granularity="attention", per_dataset=None):  # noqa: ANN001, ANN201
    """A ``memrl train`` run folder as export reads it: config.yaml + best_mask.json."""
    units = enumerate_units(base_unet(model_dir), granularity)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"env": {"pretrained": str(model_dir), "granularity": granularity}}))
    best = entry(units, selected, method)
    per = {"inverted": best, **{d: entry(units, s, method, dataset=d) for d, s in (per_dataset or {}).items()}}
    (folder / "best_mask.json").write_text(json.dumps({"units": units, **best, "per_dataset": per}))
    return folder, units


def run_cli(capsys, *argv) -> tuple[int, str, str]:  # noqa: ANN001
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memrl: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def model_dir(quick_model_dir):  # noqa: ANN001, ANN201
    return quick_model_dir[0]


@pytest.fixture(scope="module")
def replay_dir(model_dir, tmp_path_factory):  # noqa: ANN001, ANN201
    """(replay folder, in-memory output of the adapted UNet): report.json + adapter/ + the policy's run config."""
    root = tmp_path_factory.mktemp("replay")
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"env": {"pretrained": str(model_dir), "granularity": "attention"}}))
    out = root / "out"
    unet = base_unet(model_dir)
    units = enumerate_units(unet)
    mask = Mask.parse(",".join(SELECTED), units)
    result = apply_peft(unet, mask, "lora")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in result.trainable:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_adapter(unet, result, out / "adapter")
    report = {
        "dataset": "digits/mirrored",
        "policy": str(run / "policy.zip"),
        "mask": str(mask),
        "mask_units": list(mask.selected),
        "mask_bits": mask.bitstring,
        "method": "lora",
        "lr": 0.01,
        "metrics": {"fid": 90.0},
        "saved": {"adapter": str(out / "adapter"), "model": str(out / "model")},  # model/ not written: not needed here
    }
    (out / "report.json").write_text(json.dumps(report))
    return out, output(unet)


# ------------------------------------------------------------------------------------ export: peft
@pytest.mark.parametrize("method", ["lora", "loha", "difffit"])
def test_peft_export_targets_exactly_the_selected_projections(method, model_dir, tmp_path, capsys):
    from peft import LoHaConfig, LoraConfig, PeftConfig

    run, _ = fake_run(tmp_path / "run", model_dir, method=method)
    out = tmp_path / "peft"
    rc, stdout, err = run_cli(capsys, "export", run, "--format", "peft", "--out", out, "--json")
    assert rc == 0 and err == "", err
    summary = json.loads(stdout)
    unet = base_unet(model_dir)
    expected = projections(unet, SELECTED)
    assert len(expected) == 16 and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in expected)

    cfg = PeftConfig.from_pretrained(str(out))
    assert isinstance(cfg, LoraConfig) and cfg.r == 4 and cfg.lora_alpha == 4
    assert sorted(cfg.target_modules) == sorted(expected)
    assert summary["target_modules"] == 16 and summary["selected"] == SELECTED
    record = json.loads((out / "mask.json").read_text())
    assert record["lr"] == 0.01 and record["rank"] == 4 and record["method"] == method
    assert sorted(record["peft"]["target_modules"]) == sorted(expected)
    assert "lr=0.01" in (out / "README.md").read_text() or method != "lora"
    if method == "loha":
        own = PeftConfig.from_pretrained(str(out / "loha"))
        assert isinstance(own, LoHaConfig) and sorted(own.target_modules) == sorted(expected)
        assert summary["configs"] == ["lora", "loha"]
    else:
        assert not [p for p in out.iterdir() if p.is_dir()]

    # ready for training: the adapter lands in the selected units only, on every projection there
    unet.add_adapter(LoraConfig.from_pretrained(str(out)))
    trained = [n for n, p in unet.named_parameters() if "lora_" in n]
    assert trained and {unit_of(n, SELECTED) for n in trained} == set(SELECTED)
    assert {n.split(".lora_")[0] for n in trained} == set(expected)


def test_peft_export_per_dataset_entry(model_dir, tmp_path, capsys):
    from peft import PeftConfig

    run, _ = fake_run(tmp_path / "run", model_dir, per_dataset={"digits/thick": OTHER})
    rc, _, err = run_cli(capsys, "export", run / "best_mask.json", "--format", "peft", "--out", tmp_path / "o", "--dataset", "thick")
    assert rc == 0, err
    assert sorted(PeftConfig.from_pretrained(str(tmp_path / "o")).target_modules) == sorted(projections(base_unet(model_dir), OTHER))
    assert json.loads((tmp_path / "o" / "mask.json").read_text())["dataset"] == "digits/thick"


def test_peft_export_units_without_attention(model_dir, tmp_path, capsys):
    """block granularity: down_blocks.0 has no projections: a warning beside others, an error alone."""
    from peft import PeftConfig

    run, _ = fake_run(tmp_path / "run", model_dir, selected=["down_blocks.0", "mid_block"], method="difffit", granularity="block")
    rc, _, err = run_cli(capsys, "export", run, "--format", "peft", "--out", tmp_path / "o")
    assert rc == 0 and err.startswith("memrl: warning: unit(s) down_blocks.0 hold no attention projections"), err
    cfg = PeftConfig.from_pretrained(str(tmp_path / "o"))
    assert sorted(cfg.target_modules) == sorted(projections(base_unet(model_dir), ["mid_block"]))
    assert json.loads((tmp_path / "o" / "mask.json").read_text())["peft"]["empty_units"] == ["down_blocks.0"]

    run2, _ = fake_run(tmp_path / "run2", model_dir, selected=["down_blocks.0"], method="difffit", granularity="block")
    rc, _, err = run_cli(capsys, "export", run2, "--format", "peft", "--out", tmp_path / "o2")
    assert_one_error(rc, err, "down_blocks.0", "hold no attention projections")
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------ export: diffusers
def test_diffusers_export_loads_and_matches_the_adapted_unet(model_dir, replay_dir, tmp_path, capsys):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    replay, in_memory = replay_dir
    base = output(base_unet(model_dir))
    assert (in_memory - base).abs().max() > 1e-3, "the adapter must change the output"
    out = tmp_path / "lora"
    rc, stdout, err = run_cli(capsys, "export", replay, "--format", "diffusers", "--out", out, "--json")
    assert rc == 0 and err == "", err
    assert sorted(json.loads(stdout)["files"]) == sorted([DIFFUSERS_LORA_WEIGHTS_NAME, "mask.json"])
    assert {p.name for p in out.iterdir()} == {DIFFUSERS_LORA_WEIGHTS_NAME, "mask.json"}

    target = base_unet(model_dir)
    target.load_lora_adapter(str(out), prefix="unet", weight_name=DIFFUSERS_LORA_WEIGHTS_NAME, adapter_name="x")
    assert torch.allclose(output(target), in_memory, atol=ATOL), (output(target) - in_memory).abs().max()
    # what StableDiffusionPipeline.load_lora_weights(out) does (no weight name: it finds the file)
    state, alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(str(out), return_lora_metadata=True)
    target = base_unet(model_dir)
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, target, adapter_name="x", metadata=metadata)
    assert torch.allclose(output(target), in_memory, atol=ATOL)

    record = json.loads((out / "mask.json").read_text())
    assert record["selected"] == SELECTED and record["dataset"] == "digits/mirrored" and record["rank"] == 4
    assert Mask.from_dict(record, enumerate_units(base_unet(model_dir))).selected == tuple(SELECTED)


def test_diffusers_export_of_a_train_run_says_to_replay(model_dir, tmp_path, capsys):
    run, _ = fake_run(tmp_path / "run", model_dir)
    rc, _, err = run_cli(capsys, "export", run, "--format", "diffusers", "--out", tmp_path / "o")
    assert_one_error(rc, err, "training run", "memrl replay")
    assert not (tmp_path / "o").exists()


def test_diffusers_export_of_a_merged_method_points_at_the_model(model_dir, tmp_path, capsys):
    units = enumerate_units(base_unet(model_dir))
    replay = tmp_path / "replay"
    (replay / "model").mkdir(parents=True)
    report = {"dataset": "mirrored", "policy": "nowhere/policy.zip", **entry(units, SELECTED, "difffit"), "saved": {"model": str(replay / "model")}}
    (replay / "report.json").write_text(json.dumps(report))
    rc, _, err = run_cli(capsys, "export", replay, "--format", "diffusers", "--out", tmp_path / "o")
    assert_one_error(rc, err, "difffit", str(replay / "model"))
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ export: json
def test_json_export_round_trips(model_dir, replay_dir, tmp_path, capsys):
    run, units = fake_run(tmp_path / "run", model_dir, per_dataset={"thick": OTHER})
    rc, _, err = run_cli(capsys, "export", run, "--format", "json", "--out", tmp_path / "j1")
    assert rc == 0, err
    doc = json.loads((tmp_path / "j1" / "mask.json").read_text())
    assert Mask.from_dict(doc, units) == Mask.parse(",".join(SELECTED), units)
    assert doc["selected"] == SELECTED and doc["method"] == "lora" and doc["lr"] == 0.01 and doc["dataset"] == "inverted"
    assert doc["source"] == str(run / "best_mask.json") and doc["granularity"] == "attention" and doc["metrics"]["reward"] == -1.5

    # an exported mask.json is itself a source: the same mask comes back, and it exports as peft
    rc, _, err = run_cli(capsys, "export", tmp_path / "j1", "--format", "json", "--out", tmp_path / "j2")
    assert rc == 0, err
    again = json.loads((tmp_path / "j2" / "mask.json").read_text())
    assert {k: v for k, v in again.items() if k not in ("source", "source_kind")} == {k: v for k, v in doc.items() if k not in ("source", "source_kind")}
    rc, _, err = run_cli(capsys, "export", tmp_path / "j2" / "mask.json", "--format", "peft", "--out", tmp_path / "p")
    assert rc == 0, err

    # a replay's report has no unit list: the units come from the policy's base model
    replay, _ = replay_dir
    rc, _, err = run_cli(capsys, "export", replay / "report.json", "--format", "json", "--out", tmp_path / "j3")
    assert rc == 0, err
    rdoc = json.loads((tmp_path / "j3" / "mask.json").read_text())
    assert rdoc["units"] == units and rdoc["selected"] == SELECTED and rdoc["source_kind"] == "replay"
    assert rdoc["pretrained"] == str(model_dir)

    # an ensemble's replay names its policies: the first one's run says the model
    ens = tmp_path / "ens"
    ens.mkdir()
    doc = json.loads((replay / "report.json").read_text())
    doc.update(policy=[doc["policy"], str(tmp_path / "elsewhere" / "policy.zip")], ensemble="mixture")
    (ens / "report.json").write_text(json.dumps(doc))
    rc, _, err = run_cli(capsys, "export", ens / "report.json", "--format", "json", "--out", tmp_path / "j4")
    assert rc == 0, err
    edoc = json.loads((tmp_path / "j4" / "mask.json").read_text())
    assert edoc["units"] == units and edoc["selected"] == SELECTED and edoc["pretrained"] == str(model_dir)


# ------------------------------------------------------------------------------------ export: bad input
@pytest.mark.parametrize("case", ["missing", "empty_folder", "unknown_dataset", "not_json", "bits_disagree", "wrong_model", "replay_dataset"])
def test_bad_sources_one_error_nothing_written(case, model_dir, replay_dir, tmp_path, capsys):
    run, units = fake_run(tmp_path / "run", model_dir)
    extra: list = []
    source = run
    needle = ""
    if case == "missing":
        source, needle = tmp_path / "nope", "does not exist"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("x")
        source, needle = tmp_path / "empty", "best_mask.json"
    elif case == "unknown_dataset":
        extra, needle = ["--dataset", "nosuch"], "no dataset 'nosuch'"
    elif case == "not_json":
        (run / "best_mask.json").write_text("{oops")
        needle = "not valid JSON"
    elif case == "bits_disagree":
        doc = json.loads((run / "best_mask.json").read_text())
        doc["mask_units"] = OTHER
        (run / "best_mask.json").write_text(json.dumps(doc))
        needle = "disagree"
    elif case == "wrong_model":
        extra, needle = ["--pretrained", tmp_path / "run"], "unet/config.json"
    elif case == "replay_dataset":
        source, extra, needle = replay_dir[0], ["--dataset", "inverted"], "does not match"
    before = sorted(p.name for p in tmp_path.iterdir())
    for fmt in ("json", "peft"):
        rc, out, err = run_cli(capsys, "export", source, "--format", fmt, "--out", tmp_path / "out", *extra)
        assert_one_error(rc, err, needle)
        assert out == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out folder, no temp folder


def test_out_folder_needs_force_and_never_replaces_an_input(model_dir, tmp_path, capsys):
    run, _ = fake_run(tmp_path / "run", model_dir)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, _, err = run_cli(capsys, "export", run, "--format", "json", "--out", out)
    assert_one_error(rc, err, "--force")
    assert (out / "keep.txt").exists()
    rc, _, err = run_cli(capsys, "export", run, "--format", "json", "--out", out, "--force")
    assert rc == 0, err
    assert {p.name for p in out.iterdir()} == {"mask.json"}
    rc, _, err = run_cli(capsys, "export", run, "--format", "json", "--out", run, "--force")
    assert_one_error(rc, err, "input of this export")
    assert (run / "best_mask.json").is_file()
    rc, _, err = run_cli(capsys, "export", run, "--format", "peft", "--out", model_dir.parent, "--force")
    assert_one_error(rc, err, "input of this export")
    assert (model_dir / "unet" / "config.json").is_file()


# ------------------------------------------------------------------------------------ units
def test_units_lists_every_unit_with_counts(model_dir, capsys):
    from memrl.interop import load_unet_structure
    from memrl.peft_masking import METHODS

    real = base_unet(model_dir)
    meta = load_unet_structure(model_dir)
    assert [(n, p.shape) for n, p in meta.named_parameters()] == [(n, p.shape) for n, p in real.named_parameters()]

    rc, out, err = run_cli(capsys, "units", "--model", model_dir, "--granularity", "block")
    assert rc == 0, err
    units = enumerate_units(real, "block")
    rows = out.splitlines()
    assert rows[0].split() == ["unit", "params", *METHODS]
    assert [r.split()[0] for r in rows[1 : 1 + len(units)]] == units

    rc, out, err = run_cli(capsys, "units", "--pretrained", model_dir, "--granularity", "block", "--json")
    assert rc == 0, err
    table = json.loads(out)
    assert [r["name"] for r in table["units"]] == units and table["methods"] == list(METHODS)
    modules = dict(real.named_modules())
    for row in table["units"]:
        assert row["params"] == sum(p.numel() for p in modules[row["name"]].parameters())
        assert row["trainable"]["full"] == row["params"]
    # the counts are what that unit alone would train (checked on the real UNet for two units)
    for name in ("down_blocks.0", "mid_block"):
        for method in ("lora", "difffit", "svdiff"):
            one = apply_peft(base_unet(model_dir), Mask.parse(name, units), method, granularity="block")
            row = next(r for r in table["units"] if r["name"] == name)
            assert row["trainable"][method] == one.trainable_params, (name, method)
    assert next(r for r in table["units"] if r["name"] == "down_blocks.0")["trainable"]["lora"] == 0

    rc, _, err = run_cli(capsys, "units", "--model", model_dir, "--methods", "lora,nosuch")
    assert_one_error(rc, err, "nosuch")


# ------------------------------------------------------------------------------------ datasets
def test_datasets_lists_builtins_and_formats(capsys, monkeypatch):
    from memrl.data import digits
    from memrl.data.loaders import builtin_names

    monkeypatch.setitem(sys.modules, "memrl.data.family", None)  # as if the module did not exist
    rc, out, err = run_cli(capsys, "datasets")
    assert rc == 0, err
    for name in builtin_names():
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        assert line.split()[1:3] == [str(digits.N_PER_VARIANT - digits.N_VARIANT_HELDOUT), str(digits.N_VARIANT_HELDOUT)]
    assert "metadata.csv" in out and "CSV" in out and "family" not in out

    rc, out, err = run_cli(capsys, "datasets", "--json")
    listing = json.loads(out)
    assert [d["name"] for d in listing["builtin"]] == builtin_names() and all(d["description"] for d in listing["builtin"])
    assert "family" not in listing and len(listing["formats"]) == 5 and any("parquet" in f["spec"] for f in listing["formats"])

    family = types.ModuleType("memrl.data.family")
    family.RANGES = {"train": (0, 800), "validation": (800, 900), "test": (900, 1000)}
    monkeypatch.setitem(sys.modules, "memrl.data.family", family)
    rc, out, _ = run_cli(capsys, "datasets", "--json")
    assert json.loads(out)["family"][1] == {"name": "validation", "start": 800, "stop": 900, "size": 100}
    rc, out, _ = run_cli(capsys, "datasets")
    assert "family" in out and "validation" in out


def test_every_flag_has_help():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("export", "units", "datasets"):
        p = subs.choices[name]
        opts = [a for a in p._actions if not isinstance(a, argparse._HelpAction)]
        assert opts and all(a.help for a in opts), name
        assert any("--json" in a.option_strings for a in opts), name
