"""``memrl evaluate`` runs for every registered PEFT method (quick preset, mask ``all``).

One cache file for all methods, so the full-fine-tuning reference is computed once.
"""

from __future__ import annotations

import json
import math

import pytest

from memrl.peft_masking import METHODS


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("methods_evaluate")


@pytest.mark.parametrize("method", METHODS)
def test_evaluate_every_method(method, quick_model_dir, shared_dir, capsys):
    from memrl.cli import main

    model_dir, _ = quick_model_dir
    out = shared_dir / method
    argv = [
        "evaluate", "--method", method, "--mask", "all", "--preset", "quick",
        "--pretrained", str(model_dir), "--out", str(out), "--cache", str(shared_dir / "c.sqlite"), "--json",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == method
    assert math.isfinite(result["fid"]) and math.isfinite(result["reward"]), result
    assert result["trainable_params"] > 0
