"""experiments/ground_truth.py reads exhaustive tables and reports best, fixed and seed-noise facts."""

import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("ground_truth", ROOT / "experiments" / "ground_truth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table(folder: Path, name: str, dataset: str, rewards: dict[str, float]) -> None:
    with open(folder / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dataset", "mask", "mask_bits", "proposed_mask_bits", "reward"])
        w.writeheader()
        for bits, r in rewards.items():
            w.writerow({"dataset": dataset, "mask": bits, "mask_bits": bits, "proposed_mask_bits": bits, "reward": r})
            w.writerow({"dataset": dataset, "mask": bits, "mask_bits": bits, "proposed_mask_bits": "1" + bits[1:], "reward": r})  # a reduced duplicate


def test_report_fixed_mask_from_training_members_and_seed_noise(tmp_path, capsys) -> None:
    gt = _module()
    # family:0 and family:1 are training members, family:80 a test member
    _table(tmp_path, "family-0_lora_seed0", "family:0", {"000": -20.0, "011": -5.0, "001": -6.0, "010": -9.0})
    _table(tmp_path, "family-1_lora_seed0", "family:1", {"000": -20.0, "011": -5.5, "001": -5.0, "010": -9.0})
    _table(tmp_path, "family-80_lora_seed0", "family:80", {"000": -20.0, "011": -8.0, "001": -4.0, "010": -7.0})
    _table(tmp_path, "family-80_lora_seed1", "family:80", {"000": -19.0, "011": -7.0, "001": -4.5, "010": -6.0})
    out = tmp_path / "gt.md"
    assert gt.main(["--tables", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`011`, mean reward -5.250" in text  # (-5 - 5.5) / 2 beats (-6 - 5) / 2
    assert "| family:80 seed 0 | test | -8.000 | 3 of 4 | 4.000 | 0.750 |" in text
    assert "not the optimum everywhere" in text
    assert "2 distinct best masks over 3 tables" in text
    # seed 0's optimum 001 is also best on seed 1; the masks keep their order (rank correlation 1)
    assert "| family:80 | 0 vs 1 | 1.000 | 1 of 4, 0.000, 1.000 | 0.875 |" in text
    assert gt.main(["--tables", str(tmp_path / "missing")]) == 2
