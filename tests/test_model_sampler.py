"""``memrl search --optimizer model [--prior RUN]``: Bayesian optimisation with the reward model,
answered from test_lookup's full table of `inverted` (no fine-tuning)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_lookup import TINY, full_table, made  # noqa: F401 - module fixtures

from memrl.errors import MemrlError
from memrl.utils.config import ConfigError

TARGET = "0110010"


def config(model_dir: Path, **search):  # noqa: ANN201
    from memrl.search.config import SearchConfig

    env = {"pretrained": str(model_dir), "datasets": ["inverted"], "method": "lora", "preset": "quick", "eval_overrides": TINY}
    return SearchConfig.from_dict({"env": env, "search": {"optimizer": "model", "budget": 6, "final_pictures": False, **search}})


def run(cfg, folder: Path, table: Path, **kw) -> list[str]:  # noqa: ANN001
    from memrl.search.run import search

    cfg.search.lookup = str(table)
    search(cfg, folder, progress=False, echo=lambda _s: None, **kw)
    with open(folder / "evaluations.csv", newline="") as f:
        return [r["proposed_mask_bits"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def prior_run(full_table, quick_model_dir, tmp_path_factory):  # noqa: F811
    """A train run's files on another dataset (`mirrored`): a descriptor basis and 40 evaluations whose
    reward falls with the Hamming distance to TARGET."""
    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.evaluation.lookup import LookupEvaluator

    folder = tmp_path_factory.mktemp("prior") / "run"
    folder.mkdir()
    lk = LookupEvaluator.from_dir(full_table)
    net = lk.require_feature_net()
    data = [load_dataset(d, lk.image_size, lk.image_channels) for d in ("mirrored", "inverted")]
    DescriptorBasis.fit(net, data).save(folder / "descriptor.json")
    with open(folder / "evaluations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "dataset", "method", "mask_bits", "lr", "reward", "failed"])
        w.writeheader()
        for k in range(0, 128, 3):
            bits = format(k, "07b")
            w.writerow({"step": k, "dataset": "mirrored", "method": "lora", "mask_bits": bits, "lr": "", "reward": -float(sum(a != b for a, b in zip(bits, TARGET))), "failed": "False"})
        w.writerow({"step": 999, "dataset": "mirrored", "method": "lora", "mask_bits": "1111111", "lr": "", "reward": "", "failed": "True"})
    return folder


def test_without_a_prior_it_is_seeded_distinct_and_resumable(full_table, quick_model_dir, tmp_path):  # noqa: F811
    model = quick_model_dir[0]
    a = run(config(model, seed=1), tmp_path / "a", full_table)
    assert run(config(model, seed=1), tmp_path / "b", full_table) == a
    assert len(set(a)) == len(a) == 6  # never the same mask twice while others are left
    assert run(config(model, seed=2), tmp_path / "c", full_table)[:2] != a[:2]  # the random start follows the seed
    # no pickled state: a run cut at 3 trials and resumed asks what the uninterrupted one asked
    run(config(model, seed=1, budget=3), tmp_path / "d", full_table)
    from memrl.search.run import search

    search(None, tmp_path / "d", resume=True, budget=6, progress=False, echo=lambda _s: None)
    with open(tmp_path / "d" / "evaluations.csv", newline="") as f:
        assert [r["proposed_mask_bits"] for r in csv.DictReader(f)] == a


def test_the_prior_makes_the_first_trial_an_informed_pick(full_table, quick_model_dir, prior_run, tmp_path):  # noqa: F811
    got = run(config(quick_model_dir[0], seed=0, prior=str(prior_run), budget=3), tmp_path / "p", full_table)
    assert got[0] == TARGET  # zero evaluations of `inverted`: the model's best mask for its descriptor
    assert len(set(got)) == 3


def test_the_zero_shot_pick_takes_the_mean_and_later_trials_the_bound(full_table, quick_model_dir, prior_run, tmp_path, monkeypatch):  # noqa: F811
    """``model_first_beta`` rules the first trial alone, ``model_beta`` the later ones. A stand-in
    model makes the rules disagree: its mean is best at MEAN_BEST then SECOND, its bound at BOLD."""
    import numpy as np

    import memrl.search.model_sampler as ms

    MEAN_BEST, SECOND, BOLD = "1000000", "0100000", "0000001"

    class Model:
        def __init__(self, seed: int) -> None:
            pass

        def fit(self, X, y):  # noqa: ANN001, ANN201
            return self

        def predict(self, X):  # noqa: ANN001, ANN201
            bits = ["".join(str(int(v)) for v in row) for row in np.asarray(X)[:, -7:]]
            mean = np.asarray([{MEAN_BEST: 2.0, SECOND: 1.5, BOLD: 1.0}.get(b, 0.0) for b in bits])
            std = np.asarray([5.0 if b == BOLD else 0.1 for b in bits])
            return mean, std

    monkeypatch.setattr(ms, "RewardSurrogate", Model)
    model = quick_model_dir[0]
    default = run(config(model, seed=0, prior=str(prior_run), budget=2), tmp_path / "m", full_table)
    assert default == [MEAN_BEST, BOLD]  # the zero-shot pick is the best mean, then the bound (model_beta 1)
    bold = run(config(model, seed=0, prior=str(prior_run), budget=2, model_first_beta=1.0), tmp_path / "u", full_table)
    assert bold == [BOLD, MEAN_BEST]
    greedy = run(config(model, seed=0, prior=str(prior_run), budget=2, model_beta=0.0), tmp_path / "g", full_table)
    assert greedy == [MEAN_BEST, SECOND]
    with pytest.raises(ConfigError, match="'model_first_beta' must be a number >= 0"):
        config(model, prior=str(prior_run), model_first_beta=-1)


def test_bad_priors_are_refused_in_one_line(full_table, quick_model_dir, prior_run, tmp_path, capsys):  # noqa: F811
    from memrl.cli import main

    from memrl.search.config import SearchSettings

    with pytest.raises(ConfigError, match="'prior'.*needs optimizer model, not tpe"):
        SearchSettings(optimizer="tpe", prior=str(prior_run))
    with pytest.raises(MemrlError, match="not a memrl train run folder"):
        run(config(quick_model_dir[0], prior=str(tmp_path)), tmp_path / "x", full_table)
    same = tmp_path / "same"
    same.mkdir()
    (same / "descriptor.json").write_text((prior_run / "descriptor.json").read_text())
    (same / "evaluations.csv").write_text((prior_run / "evaluations.csv").read_text().replace("mirrored", "inverted"))
    with pytest.raises(MemrlError, match="evaluated inverted itself"):
        run(config(quick_model_dir[0], prior=str(same)), tmp_path / "y", full_table)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": {"pretrained": str(quick_model_dir[0]), "datasets": ["inverted"], "method": "lora", "preset": "quick", "eval_overrides": TINY}}))
    short = tmp_path / "short"
    short.mkdir()
    (short / "descriptor.json").write_text((prior_run / "descriptor.json").read_text())
    (short / "evaluations.csv").write_text("dataset,method,mask_bits,lr,reward,failed\nmirrored,lora,0101,,-1.0,False\n")
    rc = main(["search", "--optimizer", "model", "--prior", str(short), "--config", str(cfg), "--lookup", str(full_table), "--out", str(tmp_path / "z"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "masks have 4 bits, this search has 7 units" in err[0], err
    assert not (tmp_path / "z").exists()


def test_per_dataset_target_fits_each_dataset_standardised(full_table, quick_model_dir, prior_run, tmp_path, monkeypatch):  # noqa: F811
    """``model_target: per_dataset`` fits the prior's rewards standardised per member and this
    study's trials standardised among themselves; ``raw`` fits them as they are."""
    import numpy as np

    import memrl.search.model_sampler as ms

    seen: list[np.ndarray] = []

    class Model:
        def __init__(self, seed: int) -> None:
            pass

        def fit(self, X, y):  # noqa: ANN001, ANN201
            seen.append(np.asarray(y, dtype=float).copy())
            return self

        def predict(self, X):  # noqa: ANN001, ANN201
            return np.zeros(len(X)), np.ones(len(X))

    monkeypatch.setattr(ms, "RewardSurrogate", Model)
    with open(prior_run / "evaluations.csv", newline="") as f:
        prior_y = np.asarray([float(r["reward"]) for r in csv.DictReader(f) if r["failed"] == "False"])
    model = quick_model_dir[0]
    run(config(model, seed=0, prior=str(prior_run), budget=3), tmp_path / "raw", full_table)
    assert [len(y) for y in seen] == [len(prior_y), len(prior_y) + 1, len(prior_y) + 2]
    assert np.allclose(seen[0], prior_y) and not np.allclose(seen[2][-2:], 0.0)  # raw: the rewards themselves
    seen.clear()
    run(config(model, seed=0, prior=str(prior_run), budget=3, model_target="per_dataset"), tmp_path / "std", full_table)
    z = (prior_y - prior_y.mean()) / prior_y.std()
    assert np.allclose(seen[0], z) and np.allclose(seen[2][: len(z)], z)
    assert seen[1][-1] == 0.0  # one trial of this dataset: no spread yet, its mean
    own = seen[2][-2:]
    assert np.allclose(own, [-1.0, 1.0]) or np.allclose(own, [1.0, -1.0]) or np.allclose(own, 0.0)  # two trials, standardised together
    with pytest.raises(ConfigError, match="unknown model_target 'ranks'; valid: raw, per_dataset"):
        config(model, prior=str(prior_run), model_target="ranks")


def test_several_prior_runs_pool_their_evaluations(tmp_path):
    """--prior A B: each (dataset, mask) once, its reward the runs' mean; runs in other descriptor bases are refused."""
    import csv as csv_

    from memrl.envs.descriptor import DescriptorBasis
    from memrl.errors import MemrlError
    from memrl.search.model_sampler import load_prior
    from test_warm_start import NetEvaluator, inverted

    ev = NetEvaluator()
    basis = DescriptorBasis(np.zeros(6), np.eye(2, 6), np.ones(2))
    units = ev.units

    def run(name: str, rows: list[tuple[str, str, float]], b: DescriptorBasis = basis) -> Path:
        r = tmp_path / name
        r.mkdir()
        b.save(r / "descriptor.json")
        with open(r / "evaluations.csv", "w", newline="") as f:
            w = csv_.DictWriter(f, ["dataset", "mask_bits", "method", "lr", "reward", "failed"])
            w.writeheader()
            for d, bits, reward in rows:
                w.writerow({"dataset": d, "mask_bits": bits, "method": "difffit", "lr": "", "reward": reward, "failed": False})
        return r

    a = run("a", [("thick", "1000000", -1.0), ("thick", "0100000", -2.0)])
    b = run("b", [("thick", "1000000", -3.0), ("blurred", "0010000", -4.0)])
    prior = load_prior([a, b], ev, inverted(ev), "inverted", units, ["difffit"], False)
    k = prior.features.descriptor_dim
    got = sorted(zip(prior.groups, prior.X[:, k : k + len(units)].astype(int).astype(str).tolist(), prior.y.tolist()))
    assert got == sorted([("thick", list("1000000"), -2.0), ("thick", list("0100000"), -2.0), ("blurred", list("0010000"), -4.0)])
    one = load_prior(a, ev, inverted(ev), "inverted", units, ["difffit"], False)
    assert len(one.y) == 2 and one.source == str(a)
    other = run("c", [("thick", "0000001", -1.0)], DescriptorBasis(np.zeros(6), 2 * np.eye(2, 6), np.ones(2)))
    with pytest.raises(MemrlError, match="different bases"):
        load_prior([a, other], ev, inverted(ev), "inverted", units, ["difffit"], False)
    with pytest.raises(MemrlError, match="evaluated thick itself"):
        load_prior([a, b], ev, inverted(ev), "thick", units, ["difffit"], False)
