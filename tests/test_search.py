"""``memrl search``: the optimizers, seeding, exhaustive enumeration, resume, the CLI, and the
records it shares with ``memrl train``.

Most tests evaluate with :class:`FakeEvaluator` (a cheap, deterministic
:class:`~memrl.evaluation.protocol.MaskEvaluator`); the ``real_run`` tests fine-tune the quick
test model on the ``quick`` preset.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from memrl.errors import EvaluationFailed, MemrlError
from memrl.evaluation import space
from memrl.evaluation.protocol import MaskEvaluator
from memrl.peft_masking import Mask

TINY = {"finetune": {"steps": 2, "batch_size": 8, "n_mem": 2, "n_repeats": 2, "data_size_ratio": 0.1}, "gens_per_prompt": 2, "n_fid_samples": 8, "inference_steps": 2, "noise_norm_timesteps": [500], "noise_norm_draws": 1}
UNITS = ("down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2")


class FakeEvaluator:
    """Metrics as a fixed function of the mask: more units, better FID and more memorization."""

    granularity = "block"
    image_size = 16
    image_channels = 1
    feature_net = None

    def __init__(self, fail: tuple[str, ...] = (), bad: tuple[str, ...] = (), interrupt_at: int | None = None) -> None:
        self.units = UNITS
        self.fail, self.bad, self.interrupt_at = set(fail), set(bad), interrupt_at
        self.calls: list[str] = []
        self.hits = self.misses = 0

    def parse_mask(self, spec):  # noqa: ANN001, ANN201
        return spec if isinstance(spec, Mask) else Mask.parse(spec, self.units)

    def trainable_units(self, method: str) -> tuple[str, ...]:
        return self.units

    def effective_mask(self, method, mask, strict=False):  # noqa: ANN001, ANN201
        return mask, ()

    def check_data(self, data) -> None:  # noqa: ANN001
        pass

    def _metrics(self, bits: str) -> dict:
        k = bits.count("1")
        return {"fid": 20.0 - 2.0 * k + int(bits, 2) / 256, "kid": 0.01, "nn_own_rate": 0.1 * k + int(bits, 2) / 1024, "replication_rate": 0.0, "text_guidance_auc": 0.5, "extraction_rate": 0.0, "amd": 0.1, "trainable_params": 10 * k, "trainable_fraction": k / 70}

    def evaluate(self, data, method, mask, cfg, lr=None, seed=None, out_dir=None, with_reward=True, progress=False, strict=False):  # noqa: ANN001, ANN201
        from memrl.evaluation.reward import reward

        mask = self.parse_mask(mask)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(mask.bitstring)
        self.misses += 1
        if mask.bitstring in self.bad:
            raise MemrlError("bad request")
        if mask.bitstring in self.fail:
            raise EvaluationFailed("the fine-tune diverged")
        result = {"dataset": data.name, "method": method, "mask": str(mask), "mask_bits": mask.bitstring, "mask_units": list(mask.selected), "lr": 1e-3, "seed": seed, **self._metrics(mask.bitstring), "cached": False, "seconds": 0.0}
        if with_reward:
            result.update(reward(result, self.reference(data, cfg), cfg.reward))
        return result

    def reference(self, data, cfg, progress=False):  # noqa: ANN001, ANN201
        return self._metrics("1" * len(self.units))


def fake_config(optimizer: str = "tpe", budget: int | None = 3, **search) -> "SearchConfig":  # noqa: F821
    from memrl.search.config import SearchConfig

    s = {"optimizer": optimizer, "budget": budget, "final_pictures": False, **search}
    return SearchConfig.from_dict({"env": {"pretrained": "unused", "datasets": ["inverted"], "method": "difffit", "preset": "quick"}, "search": s})


def run_fake(tmp_path: Path, name: str, evaluator: FakeEvaluator | None = None, **kw) -> tuple[dict, Path, FakeEvaluator]:
    from memrl.search.run import search

    ev = evaluator or FakeEvaluator()
    run = tmp_path / name
    return search(fake_config(**kw), run, progress=False, echo=lambda s: None, evaluator=ev), run, ev


def rows(run: Path) -> list[dict]:
    with open(run / "evaluations.csv", newline="") as f:
        return list(csv.DictReader(f))


def header(run: Path) -> list[str]:
    with open(run / "evaluations.csv", newline="") as f:
        return next(csv.reader(f))


def proposals(run: Path) -> list[str]:
    return [r["proposed_mask_bits"] for r in rows(run)]


def trials(run: Path):  # noqa: ANN201
    import optuna

    from memrl.reporting.optuna_store import default_storage

    return optuna.load_study(study_name="inverted", storage=default_storage(run)).trials


# ---------------------------------------------------------------------------------------- the encoding
def test_one_encoding_round_trips():
    dims = space.action_dims(3, ["lora", "difffit"], [0.5, 1.0, 2.0])
    assert dims == [2, 2, 2, 2, 3] and space.n_actions(dims) == 48
    every = list(space.enumerate_actions(dims))
    assert len(every) == 48 and every == [space.action_at(i, dims) for i in range(48)]
    units = ("a", "b", "c")
    for a in every:
        params = space.action_to_params(a, units, ["lora", "difffit"], [0.5, 1.0, 2.0])
        assert space.params_to_action(params, units, ["lora", "difffit"], [0.5, 1.0, 2.0]) == a
    assert set(space.trial_space(units, ["lora", "difffit"], [0.5, 1.0, 2.0])) == {"unit:a", "unit:b", "unit:c", "method", "lr_scale"}
    bits, method, lr = space.decode_action([1, 0, 1, 1, 2], 3, "lora", ["lora", "difffit"], [0.5, 1.0, 2.0])
    from memrl.training.finetune import FinetuneConfig

    assert bits.tolist() == [1, 0, 1] and method == "difffit" and lr == pytest.approx(2.0 * FinetuneConfig(method="difffit").resolved_lr())
    # without extra dimensions action k is the mask whose bitstring is k in binary
    assert ["".join(map(str, a)) for a in space.enumerate_actions([2] * 3)] == [format(k, "03b") for k in range(8)]
    with pytest.raises(MemrlError, match="action has 2 entries"):
        space.decode_action([1, 0], 3, "lora")


def test_evaluators_implement_the_protocol(quick_model_dir):
    from memrl.evaluation import Evaluator

    assert isinstance(FakeEvaluator(), MaskEvaluator)
    assert isinstance(Evaluator(quick_model_dir[0]), MaskEvaluator)


# ---------------------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("optimizer", ["tpe", "nsga2", "random", "exhaustive"])
def test_each_optimizer_runs_a_small_budget(tmp_path, optimizer):
    from optuna.trial import TrialState

    summary, run, ev = run_fake(tmp_path, optimizer, optimizer=optimizer, budget=3)
    rs = rows(run)
    assert [int(r["step"]) for r in rs] == [1, 2, 3] and len(ev.calls) == 3
    ts = trials(run)
    assert len(ts) == 3 and all(t.state == TrialState.COMPLETE for t in ts)
    assert all(len(t.values) == (2 if optimizer == "nsga2" else 1) for t in ts)
    assert all(set(t.params) == {space.unit_param(u) for u in UNITS} for t in ts)
    best = json.loads((run / "best.json").read_text())
    assert best["optimizer"] == optimizer and best["trials"] == 3
    assert best["best"]["metrics"]["reward"] == pytest.approx(max(float(r["reward"]) for r in rs))  # picked by the reward
    for name in ("config.yaml", "evaluations.csv", "pareto.csv", "best_mask.json", "best.json", "optuna.db", "tb"):
        assert (run / name).exists(), name
    if optimizer == "exhaustive":
        assert proposals(run) == ["0000000", "0000001", "0000010"]


def test_seeded_search_repeats_exactly(tmp_path):
    a = run_fake(tmp_path, "a", optimizer="tpe", budget=12, seed=3)[1]  # past TPE's 10 random start-up trials
    b = run_fake(tmp_path, "b", optimizer="tpe", budget=12, seed=3)[1]
    c = run_fake(tmp_path, "c", optimizer="tpe", budget=12, seed=4)[1]
    assert proposals(a) == proposals(b)
    assert proposals(a) != proposals(c)
    n1 = run_fake(tmp_path, "n1", optimizer="nsga2", budget=4, seed=1)[1]
    n2 = run_fake(tmp_path, "n2", optimizer="nsga2", budget=4, seed=1)[1]
    assert proposals(n1) == proposals(n2)


def test_exhaustive_visits_every_mask_once_in_order(tmp_path):
    summary, run, ev = run_fake(tmp_path, "ex", optimizer="exhaustive", budget=None, figures_every=64)
    want = [format(k, "07b") for k in range(128)]
    assert proposals(run) == want and ev.calls == want
    assert summary["trials"] == summary["budget"] == summary["space_size"] == 128
    # a larger budget is capped at the space; resuming a finished exhaustive run adds nothing
    from memrl.search.run import search

    ev2 = FakeEvaluator()
    again = search(None, run, resume=True, budget=500, progress=False, echo=lambda s: None, evaluator=ev2)
    assert again["trials"] == 128 and ev2.calls == []


def test_failures_are_failed_trials_with_the_failure_reward(tmp_path):
    from optuna.trial import TrialState

    from memrl.envs.config import EnvConfig

    summary, run, _ = run_fake(tmp_path, "f", FakeEvaluator(fail=("0000001",)), optimizer="exhaustive", budget=3)
    rs = rows(run)
    assert rs[1]["failed"] == "True" and "diverged" in rs[1]["error"]
    assert float(rs[1]["reward"]) == EnvConfig(datasets=["inverted"]).resolved_failure_reward()
    assert [t.state for t in trials(run)] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert summary["failed"] == 1 and summary["best"]["mask_bits"] != "0000001"
    with pytest.raises(MemrlError, match="bad request"):  # the caller's mistake stops the run
        run_fake(tmp_path, "g", FakeEvaluator(bad=("0000001",)), optimizer="exhaustive", budget=3)


def test_resume_does_not_recompute_and_continues_the_sequence(tmp_path):
    from memrl.search.run import search

    full = run_fake(tmp_path, "full", optimizer="random", budget=6, seed=5)[1]
    with pytest.raises(KeyboardInterrupt):
        run_fake(tmp_path, "cut", FakeEvaluator(interrupt_at=3), optimizer="random", budget=6, seed=5)
    cut = tmp_path / "cut"
    assert len(rows(cut)) == 3
    ev = FakeEvaluator()
    summary = search(None, cut, resume=True, progress=False, echo=lambda s: None, evaluator=ev)
    assert ev.calls == proposals(full)[3:]  # the interrupted trial and the new ones; none of the finished
    assert proposals(cut) == proposals(full) and [int(r["step"]) for r in rows(cut)] == list(range(1, 7))
    assert summary["trials"] == 6 and len(trials(cut)) == 6
    # --budget extends a finished run
    ev = FakeEvaluator()
    search(None, cut, resume=True, budget=8, progress=False, echo=lambda s: None, evaluator=ev)
    assert len(ev.calls) == 2 and len(rows(cut)) == 8


def test_new_run_refuses_a_used_folder_and_a_used_study(tmp_path):
    from memrl.search.run import search

    _, run, _ = run_fake(tmp_path, "r", optimizer="random", budget=1)
    with pytest.raises(MemrlError, match="--resume"):
        search(fake_config("random", 1), run, progress=False, echo=lambda s: None, evaluator=FakeEvaluator())
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    search(fake_config("random", 1, storage=url), tmp_path / "s1", progress=False, echo=lambda s: None, evaluator=FakeEvaluator())
    with pytest.raises(MemrlError, match="already holds a study"):
        search(fake_config("random", 1, storage=url), tmp_path / "s2", progress=False, echo=lambda s: None, evaluator=FakeEvaluator())
    assert not (tmp_path / "s2").exists()  # nothing half-written


# ---------------------------------------------------------------------------------------- the CLI
def test_help_lists_every_flag(capsys):
    from memrl.cli import build_parser, main

    p = build_parser()
    sub = p._subparsers._group_actions[0].choices["search"]
    flags = [a.option_strings[0] for a in sub._actions if a.option_strings and a.dest != "help"]
    for a in sub._actions:
        if a.option_strings and a.dest != "help":
            assert a.help, a.option_strings
    for f in ("--optimizer", "--budget", "--dataset", "--config", "--out", "--resume", "--seed", "--storage", "--lookup", "--preset", "--method", "--cache", "--device", "--set"):
        assert f in flags, f
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in flags)
    for name in ("tpe", "nsga2", "random", "exhaustive"):
        assert name in out


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--optimizer", "bogus"], "unknown optimizer 'bogus'; valid: tpe, nsga2, random, exhaustive"),
        (["--budget", "0"], "--budget must be >= 1"),
        (["--set", "env.nope=1"], "unknown key"),
        (["--set", "search.budget=-2"], "'budget' must be >= 1"),
        (["--config", "missing.yaml"], "not found"),
        (["--resume"], "holds no search run"),
        (["--pretrained", "/no/such/model", "--dataset", "inverted"], "does not exist"),
        (["--set", "env.datasets=[inverted,thick]"], "evaluates one dataset; pass --dataset"),
        (["--dataset", "/no/such/folder", "--pretrained", "MODEL"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(extra, msg, capsys, tmp_path, monkeypatch, quick_model_dir):
    from memrl.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    extra = [str(quick_model_dir[0]) if e == "MODEL" else e for e in extra]
    assert main(["search", "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("memrl: error:"), err
    assert not out.exists()


# ---------------------------------------------------------------------------------------- real evaluations
def real_config(tmp_path: Path, model_dir: Path) -> Path:
    import yaml

    cfg = {  # a memrl train config (as in test_agents), one dataset: search uses its env section
        "env": {"pretrained": str(model_dir), "datasets": ["inverted"], "preset": "quick", "eval_overrides": TINY},
        "ppo": {"n_steps": 2, "batch_size": 2, "n_epochs": 1},
        "train": {"total_timesteps": 2, "seed": 0, "checkpoint_every": 2, "random_masks": 0, "final_pictures": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def real_run(quick_model_dir, tmp_path_factory):
    """``memrl search`` through the CLI on a memrl train config, on the quick test model."""
    from memrl.cli import main

    tmp = tmp_path_factory.mktemp("search")
    cfg = real_config(tmp, quick_model_dir[0])
    run = tmp / "run"
    assert main(["search", "--config", str(cfg), "--optimizer", "random", "--budget", "3", "--seed", "1", "--out", str(run), "--no-progress", "--json"]) == 0
    return run, cfg


def test_real_run_writes_the_records_of_train(real_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from memrl.agents.config import TrainConfig
    from memrl.agents.train import train

    run, cfg = real_run
    for name in ("config.yaml", "evaluations.csv", "evaluations.sqlite", "pareto.csv", "best_mask.json", "best.json", "optuna.db", "table.jsonl", "best/samples.png"):
        assert (run / name).exists(), name
    rs = rows(run)
    assert len(rs) == 3 and all(np.isfinite(float(r["reward"])) for r in rs)
    # the same CSV columns as memrl train (a two-step train on the same config)
    train(TrainConfig.load(cfg), tmp_path / "train", progress=False, echo=lambda s: None)
    assert header(run) == header(tmp_path / "train")
    # the same TensorBoard tags
    acc = EventAccumulator(str(run / "tb" / "memrl"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for t in ("eval/reward", "eval/fid", "eval/kid", "eval/nn_own_rate", "eval/replication_rate", "eval/trainable_pct", "eval/best_reward", "eval/cache_hit_rate"):
        assert t in tags["scalars"], t
    for t in ("masks/bit_frequency", "pareto/scatter", "best/samples", "best/nearest_neighbours"):
        assert t in tags["images"], t
    assert len(acc.Scalars("eval/reward")) == 3


def test_real_resume_answers_from_the_cache(real_run, tmp_path):
    import sqlite3

    from memrl.cli import main

    run, _ = real_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = rows(copy)
    # a resumed run keeps its settings: a different flag is refused
    assert main(["search", "--out", str(copy), "--resume", "--optimizer", "tpe"]) == 2
    assert main(["search", "--out", str(copy), "--resume", "--budget", "4", "--no-progress", "--json"]) == 0
    after = rows(copy)
    assert after[:3] == before and len(after) == 4
    with sqlite3.connect(copy / "evaluations.sqlite") as db:
        counts = [c for (c,) in db.execute("select computations from evaluations where status = 'ok'")]
    assert counts and all(c == 1 for c in counts)  # nothing computed twice


def test_lookup_table_answers_the_same_search(real_run, tmp_path):
    """The run's table.jsonl answers the same seeded search without fine-tuning: the same rows."""
    from memrl.cli import main

    run, cfg = real_run
    out = tmp_path / "lookup"
    assert main(["search", "--config", str(cfg), "--optimizer", "random", "--budget", "3", "--seed", "1", "--lookup", str(run), "--out", str(out), "--no-progress", "--json"]) == 0
    skip = {"cached", "seconds"}
    a = [{k: v for k, v in r.items() if k not in skip} for r in rows(run)]
    b = [{k: v for k, v in r.items() if k not in skip} for r in rows(out)]
    assert a == b
    assert not (out / "table.jsonl").exists() and not (out / "evaluations.sqlite").exists()
    from memrl.evaluation.lookup import LookupEvaluator

    assert isinstance(LookupEvaluator.from_dir(run), MaskEvaluator)


def test_nsga2_population_follows_the_budget():
    """Optuna's default population (50) would make NSGA-II pure random search at 32-64 trials."""
    from memrl.search.optimizers import get_optimizer, nsga2_population

    assert [nsga2_population(b) for b in (8, 32, 64, 1000)] == [4, 8, 16, 50]
    sampler = get_optimizer("nsga2").make(0, lambda k: {}, 64)
    assert sampler._population_size == 16
