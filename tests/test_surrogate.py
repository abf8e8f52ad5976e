"""The learned reward model and Dyna-style training: the model, the real/imagined rule, ``memrl train`` with it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from memrl.agents.dyna import DynaModel, DynaWrapper, model_for
from memrl.evaluation.surrogate import RewardSurrogate, SurrogateFeatures, log_lr_scale
from memrl.errors import MemrlError
from test_lookup import full_table, made, no_finetuning, train_config  # noqa: F401  (module fixtures and helpers)

N_UNITS = 7


def _bits(k: int, n: int = N_UNITS) -> np.ndarray:
    return np.array([int(c) for c in format(k, f"0{n}b")])


def _truth(d: np.ndarray, b: np.ndarray) -> float:
    """A known reward: units 0 and 4-5 hurt, unit 2 helps on datasets with a large first descriptor entry."""
    return float(-1.5 - 0.4 * b[0] + 0.6 * b[2] * np.tanh(d[0]) - 0.3 * b[4] * b[5] - 0.1 * b.sum())


# ---------------------------------------------------------------------------------- the model
def test_model_recovers_a_known_function_and_knows_where_it_has_no_data():
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(5, 6))
    feats = SurrogateFeatures(6, N_UNITS)
    points = [(i, k) for i in range(5) for k in range(2**N_UNITS)]
    order = rng.permutation(len(points))
    train, test = order[:60], order[60:260]

    def xy(idx):  # noqa: ANN001, ANN202
        X = feats.matrix([(descriptors[points[j][0]], _bits(points[j][1]), "lora", None) for j in idx])
        y = np.array([_truth(descriptors[points[j][0]], _bits(points[j][1])) for j in idx])
        return X, y

    X, y = xy(train)
    Xt, yt = xy(test)
    model = RewardSurrogate(seed=0).fit(X, y + rng.normal(0, 0.01, len(y)))
    mean, std = model.predict(Xt)
    mse, mse_mean = np.mean((mean - yt) ** 2), np.mean((y.mean() - yt) ** 2)
    assert mse < 0.2 * mse_mean, (mse, mse_mean)
    # uncertain far from the data (an unseen kind of dataset), sure at the training points
    _, at_train = model.predict(X)
    far = X.copy()
    far[:, :6] += 8.0
    _, at_far = model.predict(far)
    assert at_far.mean() > 5 * at_train.mean(), (at_far.mean(), at_train.mean())


def test_fit_is_deterministic_and_predict_needs_a_fit():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 5)), rng.normal(size=20)
    a, b = RewardSurrogate(seed=3).fit(X, y), RewardSurrogate(seed=3).fit(X, y)
    Xt = rng.normal(size=(7, 5))
    assert np.array_equal(a.predict(Xt)[0], b.predict(Xt)[0]) and np.array_equal(a.predict(Xt)[1], b.predict(Xt)[1])
    with pytest.raises(MemrlError, match="not fitted yet"):
        RewardSurrogate().predict(Xt)
    with pytest.raises(MemrlError, match="finite"):
        RewardSurrogate().fit(X, np.r_[y[:-1], np.nan])
    with pytest.raises(MemrlError, match="has 4 features, the model was fitted on 5"):
        a.predict(np.zeros((1, 4)))


def test_features_of_one_method_and_of_a_choice():
    one = SurrogateFeatures(3, 4)
    assert one.dim == 7
    assert np.array_equal(one.row([1, 2, 3], "0101", "lora"), [1, 2, 3, 0, 1, 0, 1])
    assert np.array_equal(one.row([1, 2, 3], [0, 1, 0, 1], "lora", 1e-3), one.row([1, 2, 3], "0101", "lora"))  # no lr buckets: lr ignored
    many = SurrogateFeatures(3, 4, ["lora", "loha"], lr_scales=True)
    assert many.dim == 3 + 4 + 2 + 1
    default = log_lr_scale("loha", None)
    row = many.row([0, 0, 0], "1000", "loha", 2 * _default_lr("loha"))
    assert default == 0.0 and np.array_equal(row[7:9], [0, 1]) and row[9] == pytest.approx(np.log(2))
    with pytest.raises(MemrlError, match="5 bits, expected 4"):
        one.row([1, 2, 3], "01010", "lora")
    with pytest.raises(MemrlError, match="'full' is not one of"):
        many.row([0, 0, 0], "1000", "full")


def _default_lr(method: str) -> float:
    from memrl.training.finetune import FinetuneConfig

    return FinetuneConfig(method=method).resolved_lr()


# ---------------------------------------------------------------------------------- the rule
def _linear_model(min_real: int = 8, kappa: float = 0.0, refit_every: int = 4) -> DynaModel:
    return DynaModel(SurrogateFeatures(2, 4), min_real=min_real, kappa=kappa, refit_every=refit_every, reward_range=(-20.0, 0.0))


def _reward(k: int) -> float:
    return -1.0 - 0.5 * int(_bits(k, 4).sum())


def _x(k: int) -> np.ndarray:
    return SurrogateFeatures(2, 4).row([0.5, -0.5], _bits(k, 4), "lora")


def test_rule_real_until_min_real_then_imagines_what_cannot_win():
    m = _linear_model(min_real=8)
    key = lambda k: m.key("a", format(k, "04b"), "lora", 1e-3)  # noqa: E731
    for k in range(8):  # 0000 (the best: -1) ... 0111
        d = m.decide("a", key(k), _x(k))
        assert d.real and d.reason == "warmup" and d.mean is None
        assert m.observe(d, key(k), _x(k), _reward(k), False)
    assert m.n_real == 8 and m.best("a") == -1.0 and m.fit_size() == 8
    bad = m.decide("a", key(15), _x(15))  # 1111: -3 by the trend, far below the best
    assert not bad.real and bad.reason == "not promising" and bad.mean < -1.0 and bad.std > 0
    assert m.decide("a", key(7), _x(7)).reason == "repeat"  # evaluated: always real (a free cache hit)
    assert m.decide("b", m.key("b", "1111", "lora", 1e-3), _x(15)).reason == "new dataset"
    curious = _linear_model(min_real=8, kappa=1e6)
    for k in range(8):
        curious.add(key(k), _x(k), _reward(k), False)
    assert curious.decide("a", key(15), _x(15)).reason == "promising"  # uncertain enough with a large kappa
    # the schedule: refitted at min_real, then every refit_every distinct real evaluations
    assert [m.fit_size(n) for n in (0, 7, 8, 11, 12, 15, 16)] == [0, 0, 8, 8, 12, 12, 16]
    assert m.clip(5.0) == 0.0 and m.clip(-50.0) == -20.0
    assert not m.add(key(3), _x(3), -9.0, False)  # a repeat adds nothing
    with pytest.raises(MemrlError, match="min_real must be >= 1"):
        _linear_model(min_real=0)
    with pytest.raises(MemrlError, match="kappa must be >= 0"):
        _linear_model(kappa=-1)


def test_restore_rebuilds_the_model_an_uninterrupted_run_has():
    m = _linear_model(min_real=4, kappa=0.5, refit_every=2)
    records = []
    for k in [0, 3, 5, 9, 12, 1, 14, 6, 3, 10]:
        key = m.key("a", format(k, "04b"), "lora", 1e-3)
        d = m.decide("a", key, _x(k))
        if d.real:  # what a run records
            failed = k == 9
            r = -25.0 if failed else _reward(k)
            m.observe(d, key, _x(k), r, failed)
            records.append(("a", key, _x(k), r, failed, None))
    assert m.errors, "some real evaluations were predicted before they were seen"
    fresh = _linear_model(min_real=4, kappa=0.5, refit_every=2)
    fresh.restore(records)
    assert fresh.errors == m.errors and fresh.n_real == m.n_real and fresh.best("a") == m.best("a")
    assert fresh.summary()["failed_real_evaluations"] == 1
    probe = _x(11)
    assert fresh.predict(probe) == m.predict(probe)
    with pytest.raises(MemrlError, match="empty model"):
        fresh.restore(records)


# ---------------------------------------------------------------------------------- the wrapper on a lookup env
def _counting(monkeypatch) -> list:  # noqa: ANN001
    from memrl.evaluation.lookup import LookupEvaluator

    calls = []
    original = LookupEvaluator.evaluate

    def evaluate(self, data, method, mask, *a, **k):  # noqa: ANN001, ANN202
        calls.append((data.name, str(mask)))
        return original(self, data, method, mask, *a, **k)

    monkeypatch.setattr(LookupEvaluator, "evaluate", evaluate)
    return calls


def _lookup_env(model_dir: Path, table: Path, horizon: int = 1):  # noqa: ANN202
    """The env `memrl train --lookup` builds: every step answered from the full table (nothing fine-tuned)."""
    from memrl.envs.config import EnvConfig
    from memrl.envs.mask_selection import MaskSelectionEnv
    from memrl.evaluation.lookup import LookupEvaluator
    from test_lookup import env_kwargs

    ev = LookupEvaluator.from_dir(table)
    return MaskSelectionEnv(EnvConfig(**env_kwargs(model_dir), horizon=horizon), evaluator=ev), ev


def test_wrapper_real_until_min_real_then_imagines_never_an_evaluated_mask(full_table, quick_model_dir, monkeypatch):  # noqa: F811
    no_finetuning(monkeypatch)
    calls = _counting(monkeypatch)
    monkeypatch.setattr("memrl.agents.train.ground_truth_book", lambda *_a, **_k: None)  # its 128 table reads would count as calls
    env, _ = _lookup_env(quick_model_dir[0], full_table)
    dyna = model_for(env, min_real=4, kappa=0.0, refit_every=2)
    wrapped = DynaWrapper(env, dyna)
    wrapped.reset(seed=0)
    steps = []
    for k in (0, 64, 32, 16):  # none (the best: fewest units), then one unit each
        obs, r, term, _, info = wrapped.step(_bits(k))
        steps.append(info)
        assert info["imagined"] is False and info["surrogate_reason"] == "warmup" and term
        wrapped.reset()
    assert len(calls) == 4 and dyna.n_real == 4
    obs, r, term, trunc, info = wrapped.step(_bits(127))  # every unit: costs the most, predicted below the best
    assert info["imagined"] is True and info["surrogate_reason"] == "not promising", info
    assert len(calls) == 4, "an imagined step evaluates nothing"
    assert r == pytest.approx(dyna.clip(info["surrogate_mean"])) and -20.0 <= r <= 0.0 and info["surrogate_std"] > 0
    assert info["mask_bits"] == "1" * N_UNITS and term and not trunc
    # the observation is built as after a real step: the proposal's bits, the reward, the horizon share
    d = env.basis.dim
    assert np.array_equal(obs[d : d + N_UNITS], np.ones(N_UNITS)) and obs[d + N_UNITS + 3] == pytest.approx(r) and obs[-1] == 1.0
    wrapped.reset()
    _, r64, _, _, info = wrapped.step(_bits(64))  # evaluated before: real even though it cannot win
    assert info["imagined"] is False and info["surrogate_reason"] == "repeat" and len(calls) == 5
    assert r64 == pytest.approx(steps[1]["reward"])
    wrapped.reset()
    _, _, _, _, info = wrapped.step(_bits(0))
    assert info["surrogate_reason"] == "repeat"


def test_imagined_step_respects_a_longer_horizon(full_table, quick_model_dir, monkeypatch):  # noqa: F811
    no_finetuning(monkeypatch)
    env, _ = _lookup_env(quick_model_dir[0], full_table, horizon=2)
    dyna = model_for(env, min_real=3, kappa=0.0, refit_every=1)
    assert dyna.aux
    wrapped = DynaWrapper(env, dyna)
    wrapped.reset(seed=0)
    for k in (0, 64, 32):
        _, _, term, _, _ = wrapped.step(_bits(k))
        if term:
            wrapped.reset()
    wrapped.reset()
    obs, r, term, _, info = wrapped.step(_bits(127))
    assert info["imagined"] and not term and info["step_in_episode"] == 1
    d = env.basis.dim
    last = obs[d + N_UNITS :]
    assert last[4] == pytest.approx(0.5) and last[3] == pytest.approx(r)
    assert last[2] > 0.0, "the trainable fraction is predicted from the real evaluations (0.01 per unit)"
    assert env.get_state()["t"] == 1
    _, _, term, _, _ = wrapped.step(_bits(127))
    assert term  # the horizon ends the episode, imagined or not


# ---------------------------------------------------------------------------------- memrl train with the surrogate
SURROGATE = ["train.surrogate.enabled=true", "train.surrogate.min_real=4", "train.surrogate.refit_every=2", "train.surrogate.kappa=0.5"]


def _rows(run: Path) -> list[dict]:
    with open(run / "evaluations.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_with_the_surrogate_records_real_evaluations_only(full_table, made, quick_model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from memrl.cli import main

    no_finetuning(monkeypatch)
    calls = _counting(monkeypatch)
    monkeypatch.setattr("memrl.agents.train.ground_truth_book", lambda *_a, **_k: None)  # its 128 table reads would count as calls
    cfg = train_config(tmp_path, quick_model_dir[0])
    run = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--out", str(run), "--lookup", str(full_table), "--no-progress", "--json"]
    assert main([*args, "--set", *SURROGATE, "train.total_timesteps=24"]) == 0
    summary = json.loads(capsys.readouterr().out)
    s = summary["surrogate"]
    rows = _rows(run)
    assert summary["env_steps"] == 24 and s["imagined_steps"] > 0 and s["real_steps"] + s["imagined_steps"] == 24
    assert len(rows) == s["real_steps"] == summary["evaluations"] < 24
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and set(steps) <= set(range(1, 25))
    # every recorded row was evaluated, and nothing else was: the training steps' evaluations + policy-vs-random (1 + 2 masks)
    assert len(calls) == len(rows) + 3
    assert [c[1] for c in calls[: len(rows)]] == [r["mask"] for r in rows]
    assert s["real_evaluations"] == len({r["mask_bits"] for r in rows}) and s["mean_abs_error"] is not None
    assert s["predicted_evaluations"] >= 1 and s["fitted_on"] >= 4
    best = json.loads((run / "best_mask.json").read_text())
    assert best["metrics"]["reward"] == pytest.approx(max(float(r["reward"]) for r in rows))
    acc = EventAccumulator(str(run / "tb" / "memrl"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for t in ("surrogate/imagined_share", "surrogate/real_evaluations", "surrogate/abs_error"):
        assert t in tags, t
    assert len(acc.Scalars("eval/reward")) == len(rows)  # real evaluations only
    assert len(acc.Scalars("surrogate/imagined_share")) == 24
    assert acc.Scalars("surrogate/imagined_share")[-1].value == pytest.approx(s["imagined_share"])
    assert acc.Scalars("surrogate/real_evaluations")[-1].value == s["real_evaluations"]
    assert len(acc.Scalars("surrogate/abs_error")) == s["predicted_evaluations"]
    # max_real stops the run once that many distinct real evaluations are made
    capped = tmp_path / "capped"
    assert main([*args[:4], str(capped), *args[5:], "--set", *SURROGATE, "train.total_timesteps=24", "train.surrogate.max_real=6"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["surrogate"]["real_evaluations"] == 6 and c["env_steps"] < 24 and c["surrogate"]["max_real"] == 6


def _killing(monkeypatch, at: int) -> None:  # noqa: ANN001
    from memrl.agents.callbacks import SurrogateCallback

    original = SurrogateCallback._on_step

    def on_step(self) -> bool:  # noqa: ANN001
        if self.num_timesteps >= at:
            raise KeyboardInterrupt("killed")
        return original(self)

    monkeypatch.setattr(SurrogateCallback, "_on_step", on_step)


def test_resume_equals_an_uninterrupted_run(full_table, made, quick_model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from memrl.cli import main

    no_finetuning(monkeypatch)
    cfg = train_config(tmp_path, quick_model_dir[0])
    sets = ["--set", *SURROGATE, "train.total_timesteps=24"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    common = ["--config", str(cfg), "--lookup", str(full_table), "--no-progress", "--json"]
    assert main(["train", "--out", str(whole), *common, *sets]) == 0
    expected = json.loads(capsys.readouterr().out)
    with monkeypatch.context() as mp:
        _killing(mp, at=18)  # checkpoints at 4, 8, 12, 16: killed 2 steps after the last one
        assert main(["train", "--out", str(cut), *common, *sets]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert 0 < len(_rows(cut)) < len(_rows(whole)) and (cut / "checkpoint" / "state.pkl").is_file()
    assert main(["train", "--out", str(cut), "--resume", "--no-progress", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    keep = ("step", "dataset", "method", "mask_bits", "lr", "reward")
    assert [{k: r[k] for k in keep} for r in _rows(cut)] == [{k: r[k] for k in keep} for r in _rows(whole)]
    assert resumed["surrogate"] == expected["surrogate"]
    assert resumed["policy_vs_random"]["inverted"]["policy_mask"] == expected["policy_vs_random"]["inverted"]["policy_mask"]
    # the TensorBoard counts continue where the checkpoint left them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shares = []
    for run in (whole, cut):
        acc = EventAccumulator(str(run / "tb" / "memrl"), size_guidance={"scalars": 0})
        acc.Reload()
        shares.append({e.step: e.value for e in acc.Scalars("surrogate/imagined_share")})
    assert shares[1] == shares[0] and len(shares[0]) == 24


@pytest.mark.parametrize(
    "sets, msg",
    [
        (["train.surrogate.min_real=0"], "train.surrogate: 'min_real' must be >= 1"),
        (["train.surrogate.kappa=-1"], "train.surrogate: 'kappa' must be >= 0"),
        (["train.surrogate.refit_every=0"], "train.surrogate: 'refit_every' must be >= 1"),
        (["train.surrogate.max_real=0"], "train.surrogate: 'max_real' must be >= 1 or null"),
        (["train.surrogate.nope=1"], "unknown key 'train.surrogate.nope'; valid keys of train.surrogate: enabled, kappa, max_real, min_real, refit_every"),
        (["train.surrogate.enabled=true", "train.vec_env=subproc", "train.n_envs=2"], "'surrogate.enabled' needs every env in one process"),
    ],
)
def test_bad_surrogate_settings_are_one_line_errors(quick_model_dir, tmp_path, capsys, sets, msg):
    from memrl.cli import main

    cfg = train_config(tmp_path, quick_model_dir[0])
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--set", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("memrl: error:"), err
    assert not run.exists()


def test_yaml_surrogate_section_is_checked(tmp_path):
    from memrl.agents.config import TrainConfig

    c = TrainConfig.from_dict({"train": {"surrogate": {"enabled": True, "kappa": 2}}})
    assert c.train.surrogate.enabled and c.train.surrogate.kappa == 2.0 and c.train.surrogate.min_real == 16
    assert TrainConfig.from_dict(c.to_dict()).train.surrogate == c.train.surrogate  # saved and loaded as a mapping
    assert TrainConfig().train.surrogate.enabled is False  # off by default
    with pytest.raises(MemrlError, match=r"f.yaml \[train\]: surrogate: 'kappa' must be a number"):
        TrainConfig.from_dict({"train": {"surrogate": {"kappa": "x"}}}, source="f.yaml")
    with pytest.raises(MemrlError, match="unknown key.*surrogate.bogus"):
        TrainConfig.from_dict({"train": {"surrogate": {"bogus": 1}}}, source="f.yaml")


def test_standardise_by_group_puts_every_dataset_on_one_scale():
    from memrl.evaluation.surrogate import standardise_by_group

    y = [1.0, 3.0, -10.0, -30.0, -20.0, 5.0, 7.0, 7.0]
    g = ["a", "a", "b", "b", "b", "c", "d", "d"]
    z = standardise_by_group(y, g)
    assert np.allclose(z[:2], [-1.0, 1.0])  # a: mean 2, std 1
    assert np.allclose(z[2:5], [1.224745, -1.224745, 0.0], atol=1e-6)  # b: 20 times a's spread, the same scale after
    assert z[5] == 0.0 and np.allclose(z[6:], 0.0)  # one value, or equal values: the group's mean
    assert np.argsort(z[2:5]).tolist() == np.argsort(y[2:5]).tolist()  # the order within a dataset is kept
    with pytest.raises(MemrlError, match="3 values but 2 group labels"):
        standardise_by_group([1.0, 2.0, 3.0], ["a", "b"])
