"""experiments/bench_overhead.py runs end to end and prints its ratios (no timing thresholds here:
speed targets live in the benchmark's printed ratios, never in timed tests)."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "experiments" / "bench_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _number(cell: str) -> float:
    m = re.match(r"\s*([-+0-9.eE]+|nan|inf)", cell)
    assert m, f"no number in {cell!r}"
    return float(m.group(1))


def test_bench_overhead_prints_finite_positive_ratios(quick_model_dir, tmp_path, capsys):
    mod = _load()
    out = tmp_path / "bench.md"
    argv = ["--model", str(quick_model_dir[0]), "--preset", "quick", "--dataset", "inverted", "--repeats", "1",
            "--threads", "1", "--train-steps", "1", "--sample-batch", "8", "--skip-compile", "--out", str(out)]  # fmt: skip
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert mod.main(argv) == 0
        # the caller's thread count is restored (later tests compare numbers made with it)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    table = out.read_text()
    assert table in printed and table.startswith("`python experiments/bench_overhead.py --model ")
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= {"-"}:
            rows[f"{cells[0]} | {cells[1]}" if cells[0] in ("fine-tune step", "sampling") else cells[0]] = cells
    ratios = {
        "env overhead ratio (step / direct)": rows["env overhead ratio (step / direct)"][1],
        "cache hit share": rows["cache hit share of a fresh evaluation (hit / direct)"][1],
        "lora rate / matmul": rows["fine-tune step lora: achieved rate; rate / matmul rate"][1].split(";")[1],
        "full rate / matmul": rows["fine-tune step full: achieved rate; rate / matmul rate"][1].split(";")[1],
        "sampling rate / matmul": rows["sampling: achieved rate; rate / matmul rate"][1].split(";")[1],
        "channels-last": rows["fine-tune step | channels-last"][2],
        "fused sampling": rows["sampling | fused (one call)"][2],
        "smaller sampling batches": rows["sampling | sample batch 8"][2],
    }
    for name, cell in ratios.items():
        value = _number(cell)
        assert math.isfinite(value) and value > 0, (name, cell)
    # the env step did the direct call's work: same request, same numbers
    assert rows["env step gave the direct call's metrics (every repeat)"][1] == "yes"
    assert _number(rows["fine-tune step, full (reference), batch 16: FLOPs / time"][1]) > 0
