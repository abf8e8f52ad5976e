"""Multi-fidelity ``memrl search --screen-steps``: a short fine-tune screens every trial and only
the best ``1 / screen_eta`` of the screens get the full evaluation (Optuna's successive halving)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_search import FakeEvaluator, fake_config, rows, trials

from memrl.errors import MemrlError
from memrl.utils.config import ConfigError


class TwoFidelityFake(FakeEvaluator):
    """The fake's metrics at the full budget; at fewer steps the same ranking with a worse FID.
    Records ``(bits, steps)`` for each request."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.requests: list[tuple[str, int]] = []

    def evaluate(self, data, method, mask, cfg, lr=None, seed=None, out_dir=None, with_reward=True, progress=False, strict=False):  # noqa: ANN001, ANN201
        self.requests.append((self.parse_mask(mask).bitstring, cfg.finetune.steps))
        return super().evaluate(data, method, mask, cfg, lr, seed, out_dir, with_reward, progress, strict)


def screening(run: Path) -> list[dict]:
    with open(run / "screening.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_screen(tmp_path: Path, name: str, ev: FakeEvaluator | None = None, **kw):  # noqa: ANN201
    from memrl.search.run import search

    ev = ev or TwoFidelityFake()
    cfg = fake_config(**{"optimizer": "random", "budget": 12, "seed": 2, "screen_steps": 1, **kw})
    run = tmp_path / name
    return search(cfg, run, progress=False, echo=lambda s: None, evaluator=ev), run, ev


def test_only_the_best_screens_get_the_full_budget(tmp_path):
    from optuna.trial import TrialState

    summary, run, ev = run_screen(tmp_path, "s", screen_eta=3)
    full_steps = fake_config().env.eval_config().finetune.steps
    screens = [(b, s) for b, s in ev.requests if s == 1]
    fulls = [(b, s) for b, s in ev.requests if s == full_steps]
    assert len(screens) == 12 and len(screens) + len(fulls) == len(ev.requests)
    ts = trials(run)
    states = [t.state for t in ts]
    assert states.count(TrialState.PRUNED) == summary["pruned"] > 0
    assert states.count(TrialState.COMPLETE) == len(fulls) == summary["screen"]["promoted"] == len(rows(run))
    # every screen is recorded; the full evaluations are exactly the promoted trials, by step
    assert [int(r["step"]) for r in screening(run)] == list(range(1, 13))
    promoted = {t.number + 1 for t in ts if t.state == TrialState.COMPLETE}
    assert {int(r["step"]) for r in rows(run)} == promoted
    # successive halving: a promoted trial's screen is within the best 1/eta of the screens up to it
    rewards = [float(r["reward"]) for r in screening(run)]
    for step in promoted:
        before = sorted(rewards[:step], reverse=True)
        assert rewards[step - 1] >= before[max(1, len(before) // 3) - 1]
    # a pruned trial's screen reward is on record for the sampler
    assert all(t.user_attrs["screen_reward"] == pytest.approx(t.intermediate_values[1]) for t in ts)


def test_screened_search_resumes_without_recomputing(tmp_path):
    from memrl.search.run import search

    full = run_screen(tmp_path, "full")[2].requests
    with pytest.raises(KeyboardInterrupt):
        run_screen(tmp_path, "cut", TwoFidelityFake(interrupt_at=7))
    ev = TwoFidelityFake()
    summary = search(None, tmp_path / "cut", resume=True, progress=False, echo=lambda s: None, evaluator=ev)
    done = full[: len(full) - len(ev.requests)]
    assert done + ev.requests == full  # the same sequence, nothing finished asked again
    assert [int(r["step"]) for r in screening(tmp_path / "cut")] == list(range(1, 13)) and summary["trials"] == 12


@pytest.mark.parametrize(
    ("search", "msg"),
    [
        ({"optimizer": "nsga2", "screen_steps": 1}, "nsga2 optimises two objectives"),
        ({"optimizer": "exhaustive", "screen_steps": 1}, "exhaustive evaluates every mask in full"),
        ({"screen_steps": 0}, "'screen_steps' must be an integer >= 1"),
        ({"screen_steps": 1, "screen_eta": 1}, "'screen_eta' must be an integer >= 2"),
    ],
)
def test_bad_screen_settings_are_refused_naming_the_field(search, msg):
    with pytest.raises((ConfigError, MemrlError), match=msg):
        fake_config(**search)


def test_a_screen_as_long_as_the_full_budget_is_refused(tmp_path):
    steps = fake_config().env.eval_config().finetune.steps
    with pytest.raises(MemrlError, match=f"screen_steps {steps} must be below"):
        run_screen(tmp_path, "x", screen_steps=steps)
    assert not (tmp_path / "x").exists()


def test_screen_flags_reach_the_checked_config(tmp_path, capsys, quick_model_dir):
    from memrl.cli import main

    out = tmp_path / "r"
    base = ["search", "--dataset", "inverted", "--pretrained", str(quick_model_dir[0]), "--preset", "quick", "--out", str(out)]
    assert main([*base, "--screen-steps", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.screen_steps 999 must be below" in err[0], err
    assert main([*base, "--screen-steps", "1", "--screen-eta", "1"]) == 2
    assert "'screen_eta' must be an integer >= 2" in capsys.readouterr().err
    assert not out.exists()
