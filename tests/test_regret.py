"""Ground truth (memrl.evaluation.ground_truth) and the regret tags of the evaluation board."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from memrl.errors import MemrlError
from memrl.evaluation.config import EvalConfig
from memrl.evaluation.ground_truth import GroundTruth, GroundTruthBook, ground_truth
from memrl.peft_masking import Mask
from memrl.reporting.board import EvaluationBoard

UNITS = ("a", "b", "c")


def _reward(bits: str) -> float:
    """A fixed pseudo-random reward per trained mask; mask 011 is the optimum."""
    if bits == "011":
        return -1.0
    return -2.0 - int(hashlib.sha256(bits.encode()).hexdigest()[:6], 16) / 16**6


class FakeEvaluator:
    """The evaluator interface over 3 units where unit ``c`` trains nothing for ``lora``."""

    units = UNITS

    def __init__(self, missing: str | None = None, fail: str | None = None) -> None:
        self.missing, self.fail, self.calls = missing, fail, 0

    def effective_mask(self, method, mask, strict=False):  # noqa: ANN001, ANN201, ARG002
        bits = mask.bitstring
        if method == "lora":
            bits = bits[:2] + "0"
        m = Mask.from_bits(bits, UNITS)
        return m, tuple(u for u, x, y in zip(UNITS, mask.bitstring, bits) if x != y)

    def evaluate(self, data, method, mask, cfg, lr=None, seed=None, **_kw):  # noqa: ANN001, ANN201, ARG002
        self.calls += 1
        bits = mask.bitstring
        if bits == self.missing:
            raise MemrlError(f"no row for {bits}")
        if bits == self.fail:
            raise RuntimeError("diverged")
        return {"reward": _reward(bits), "fid": 1.0}


def test_ground_truth_over_every_action():
    ev = FakeEvaluator()
    gt = ground_truth(ev, None, "d", EvalConfig(), method="full")
    assert gt is not None and gt.n == 8 and gt.optimum == ["011"]
    assert gt.r_max == -1.0 and gt.regret(-1.0) == 0.0 and gt.score(gt.r_max) == 1.0 and gt.score(gt.r_min) == 0.0
    ordered = sorted(gt.rewards.values(), reverse=True)
    for i, r in enumerate(ordered, start=1):
        assert gt.rank(r) == i
    assert gt.rank(gt.r_max + 1) == 1 and gt.rank(gt.r_min - 1) == 9
    assert gt.percentile(gt.r_max) == pytest.approx(1 / 8)
    assert gt.within(gt.r_max) and not gt.within(gt.r_min)
    # lora trains nothing in unit c: 8 proposals, 4 distinct trained masks
    lora = ground_truth(FakeEvaluator(), None, "d", EvalConfig(), method="lora")
    assert sorted(lora.rewards) == ["000", "010", "100", "110"]
    assert lora.signature and lora.signature != gt.signature


def test_ground_truth_failures_and_gaps():
    gt = ground_truth(FakeEvaluator(fail="011"), None, "d", EvalConfig(), method="full", failure_reward=-30.0)
    assert gt.failed == ("011",) and gt.rewards["011"] == -30.0
    assert "011" not in gt.optimum and gt.r_min > -30.0  # the failure is scored, not the optimum nor the worst success
    with pytest.raises(MemrlError, match="no mask 1111"):
        gt.reward_of("1111")
    # a real evaluator (no coverage) that lacks a row is the caller's mistake: raised
    with pytest.raises(MemrlError, match="no row"):
        ground_truth(FakeEvaluator(missing="101"), None, "d", EvalConfig(), method="full")

    class Lookup(FakeEvaluator):
        def coverage(self, *_a, **_k):  # noqa: ANN201
            return {"masks": 8, "possible": 8, "reference": True, "base": True}

    assert ground_truth(Lookup(missing="101"), None, "d", EvalConfig(), method="full") is None
    with pytest.raises(MemrlError, match="no mask was evaluated successfully"):
        GroundTruth("d", {"0": -30.0}, ("0",))


def test_book_computes_once():
    calls = []
    book = GroundTruthBook(lambda d: calls.append(d) or (GroundTruth(d, {"1": -1.0, "0": -2.0}) if d == "x" else None))
    assert book("x").r_max == -1.0 and book("x") is book("x") and book("y") is None and book("y") is None
    assert calls == ["x", "y"] and book.datasets == ["x"]


class Writer:
    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def add_scalar(self, tag, value, step):  # noqa: ANN001
        self.scalars.setdefault(tag, []).append((step, float(value)))


def _info(dataset: str, bits: str, failed: bool = False) -> dict:
    return {"dataset": dataset, "mask_bits": bits, "failed": failed, "fid": 1.0, "nn_own_rate": 0.1, "trainable_fraction": 0.1}


def test_board_writes_best_so_far_regret_per_dataset():
    gts = {"x": GroundTruth("x", {"00": -3.0, "01": -2.0, "10": -1.5, "11": -1.0}), "y": GroundTruth("y", {"00": -5.0, "01": -4.0, "10": -4.5, "11": -6.0})}
    w = Writer()
    board = EvaluationBoard(w, ["u", "v"], "nn_own_rate", ground_truth=gts.get)
    board.add(1, _info("x", "00"), -3.0, 1)
    board.add(2, _info("x", "10"), -1.5, 2)
    board.add(3, _info("x", "01"), -2.0, 3)  # worse than the best so far: regret stays 0.5
    board.add(4, _info("y", "10"), -4.5, 4)
    board.add(5, _info("x", "11", failed=True), -30.0, 5)  # a failure finds nothing
    board.add(6, _info("z", "11"), -0.5, 6)  # no ground truth for z: no regret tag
    assert w.scalars["regret/x"] == [(1, 2.0), (2, 0.5), (3, 0.5), (5, 0.5)]
    assert w.scalars["regret_rank/x"] == [(1, 4.0), (2, 2.0), (3, 2.0), (5, 2.0)]
    assert w.scalars["regret/y"] == [(4, 0.5)]
    assert w.scalars["regret/mean"][-2] == (4, 0.5) and "regret/z" not in w.scalars
    assert board.regrets() == {"x": 0.5, "y": 0.5}
    # a resumed board starts from the record's rows
    rows = [{"dataset": "x", "reward": -1.5, "failed": "False", "fid": 1.0}, {"dataset": "x", "reward": -30.0, "failed": "True", "fid": ""}]
    again = EvaluationBoard(Writer(), ["u", "v"], "nn_own_rate", rows=rows, ground_truth=gts.get)
    assert again.regrets() == {"x": 0.5} and np.isclose(again.best_reward, -1.5)
    # without ground truth nothing is written under regret/
    plain = Writer()
    EvaluationBoard(plain, ["u", "v"], "nn_own_rate").add(1, _info("x", "00"), -3.0, 1)
    assert not [t for t in plain.scalars if t.startswith("regret")]


def test_book_from_real_tables(monkeypatch):
    """The legacy family:80 table (experiments/results/legacy/exhaustive-cb36195c): every lora mask,
    the optimum its README quotes. Its rows are keyed on family:80's old pixel-hash fingerprint,
    read from the table and given to the member here (today's key is definition-based)."""
    import json
    from pathlib import Path

    from memrl.data.dataset import DatasetSplits
    from memrl.evaluation.config import preset

    table = Path(__file__).resolve().parents[1] / "experiments" / "results" / "legacy" / "exhaustive-cb36195c" / "family-80_lora_seed0.jsonl"
    with open(table) as f:
        f.readline()
        old_key = json.loads(f.readline())["request"]["dataset"]
    real = DatasetSplits.fingerprint
    monkeypatch.setattr(DatasetSplits, "fingerprint", lambda self: old_key if self.name == "family/80" else real(self))
    cfg = preset("search")
    book = GroundTruthBook.from_tables([table], cfg, method="lora", seed=0, failure_reward=-25.0)
    gt = book("family:80")
    assert gt is not None and gt.n == 128 and gt.optimum == ["0111111"]
    assert gt.rank(gt.reward_of("1111111")) == 66
    assert book("family:81") is None  # no rows for that member
    assert GroundTruthBook.from_tables([table], cfg, method="lora", seed=1)("family:80") is None  # another seed: no rows
