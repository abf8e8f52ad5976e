"""Several policies proposing as one (``memrl.envs.ensemble``) and ``memrl search --warm-start A B``.

The policies are test_warm_start's stand-ins (untrained PPO with random action biases, saved as
run folders); the expected rankings are computed here from SB3's own distribution of each member,
action by action, and combined by the rule's definition.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from memrl.envs.ensemble import PolicyEnsemble, load_policy
from memrl.envs.mask_selection import action_dims, decode_action
from memrl.envs.policy import TrainedPolicy
from memrl.errors import MemrlError
from memrl.evaluation import space
from memrl.peft_masking import Mask
from test_search import fake_config, rows, trials
from test_warm_start import NetEvaluator, inverted, make_policy


def every_log_prob(policy: TrainedPolicy, descriptor) -> tuple[list[tuple], np.ndarray]:  # noqa: ANN001
    """Every action of the policy's space and its log-probability under SB3's distribution."""
    obs_t, _ = policy.model.policy.obs_to_tensor(policy.observation(descriptor))
    every = list(space.enumerate_actions(action_dims(policy.n_units, policy.env)))
    with torch.no_grad():
        dist = policy.model.policy.get_distribution(obs_t)
        lps = np.array([float(dist.log_prob(torch.as_tensor([a], dtype=torch.float32))) for a in every])
    return every, lps


def expected(ensemble: PolicyEnsemble, ev, descriptors) -> list[tuple[tuple, float]]:  # noqa: ANN001
    """The combined distribution by definition, grouped by what an action trains (best action per group), most probable first."""
    per = [every_log_prob(m, d) for m, d in zip(ensemble.members, descriptors)]
    every = per[0][0]
    lps = np.stack([lp for _, lp in per])
    if ensemble.rule == "mixture":
        combined = np.log(np.exp(lps).mean(axis=0))
    else:
        s = lps.sum(axis=0)
        combined = s - np.logaddexp.reduce(s)
    best: dict[tuple, float] = {}
    for a, lp in zip(every, combined):
        bits, method, lr = decode_action(a, len(ev.units), ensemble.env)
        mask, _ = ev.effective_mask(method, Mask.from_bits([int(b) for b in bits], ev.units))
        key = (mask.bitstring, method, lr)
        best[key] = max(best.get(key, -np.inf), float(lp))
    return sorted(best.items(), key=lambda kv: -kv[1])


@pytest.mark.parametrize("rule", ["mixture", "product"])
@pytest.mark.parametrize("methods, lr_scales", [((), ()), (("lora", "difffit"), (0.5, 1.0, 2.0))])
def test_ranked_is_the_combined_distribution_in_order(tmp_path, rule, methods, lr_scales):
    paths = [make_policy(tmp_path, f"s{s}", methods=methods, lr_scales=lr_scales, seed=s) for s in (1, 2, 3)]
    ens = load_policy(paths, rule)
    assert isinstance(ens, PolicyEnsemble) and ens.rule == rule and ens.paths == paths
    ev = NetEvaluator(dropped=("down_blocks.0",))  # two actions can train the same thing
    desc = ens.describe(ev, inverted(ev))
    assert len(desc) == 3
    ranked = ens.ranked(ev, desc)
    want = expected(ens, ev, desc)
    assert [p.key for p in ranked] == [k for k, _ in want]
    assert [p.log_prob for p in ranked] == pytest.approx([lp for _, lp in want], abs=1e-5)
    assert ranked[0].deterministic and not any(p.deterministic for p in ranked[1:])
    assert ens.deterministic(ev, desc).key == ranked[0].key
    assert [p.key for p in ens.ranked(ev, desc, k=4)] == [p.key for p in ranked[:4]]
    if rule == "mixture":  # the combined probabilities of every action sum to one
        members = [every_log_prob(m, d)[1] for m, d in zip(ens.members, desc)]
        assert np.exp(np.logaddexp.reduce(members, axis=1)) == pytest.approx(np.ones(3))


def test_an_ensemble_of_one_policy_twice_ranks_as_the_policy(tmp_path):
    path = make_policy(tmp_path, "s0", seed=4)
    one = TrainedPolicy.load(path)
    ev = NetEvaluator()
    d = one.describe(ev, inverted(ev))
    alone = one.ranked(ev, d)
    for rule in ("mixture", "product"):
        twice = PolicyEnsemble([one, TrainedPolicy.load(path)], rule)
        got = twice.ranked(ev, twice.describe(ev, inverted(ev)))
        assert [p.key for p in got] == [p.key for p in alone]
        if rule == "mixture":  # the same distribution; the product of it with itself is sharper, in the same order
            assert [p.log_prob for p in got] == pytest.approx([p.log_prob for p in alone], abs=1e-9)


@pytest.mark.parametrize("rule", ["mixture", "product"])
def test_large_spaces_rank_as_the_enumeration(tmp_path, monkeypatch, rule):
    import memrl.envs.ensemble as mod

    paths = [make_policy(tmp_path, f"s{s}", methods=("lora", "difffit"), lr_scales=(0.5, 1.0, 2.0), seed=s) for s in (5, 6)]
    ens = load_policy(paths, rule)
    ev = NetEvaluator()
    desc = ens.describe(ev, inverted(ev))
    exact = ens.ranked(ev, desc, k=25)
    monkeypatch.setattr(mod, "ENUMERATE_LIMIT", 1)  # every space is "large"
    monkeypatch.setattr(mod, "BEAM_START", 2)  # and the beams start at 2 actions and have to grow
    monkeypatch.setattr(mod, "WIDTH_PER_PROPOSAL", 0)
    widths = []
    beams = mod._mixture_of_beams
    monkeypatch.setattr(mod, "_mixture_of_beams", lambda t, w, m: widths.append(w) or beams(t, w, m))
    beam = ens.ranked(ev, desc, k=25)
    if rule == "mixture":  # grown until 25 proposals scored above what any action outside the beams reaches
        assert widths[0] == 2 and widths == sorted(widths) and len(widths) > 2
    assert [p.key for p in beam] == [p.key for p in exact]
    assert [p.log_prob for p in beam] == pytest.approx([p.log_prob for p in exact], abs=1e-9)


def test_members_must_be_runs_of_one_config(tmp_path):
    a = make_policy(tmp_path, "a", seed=1)
    with pytest.raises(MemrlError, match="differ in methods, lr_scales"):
        load_policy([a, make_policy(tmp_path, "b", methods=("lora", "difffit"), lr_scales=(0.5, 2.0), seed=2)])
    with pytest.raises(MemrlError, match=r"differ in unit count \(5 vs 7\)"):
        load_policy([a, make_policy(tmp_path, "five", n_units=5)])
    with pytest.raises(MemrlError, match="two or more policies"):
        PolicyEnsemble([TrainedPolicy.load(a)])
    with pytest.raises(MemrlError, match="unknown ensemble rule 'vote'; valid: mixture, product"):
        load_policy([a, a], "vote")
    with pytest.raises(MemrlError, match="no policy given"):
        load_policy([])
    assert isinstance(load_policy(a), TrainedPolicy) and isinstance(load_policy([str(a)]), TrainedPolicy)
    ens = load_policy([a, make_policy(tmp_path, "c", seed=3)])
    with pytest.raises(MemrlError, match="2 policies, got 1 descriptors"):
        ens.ranked(NetEvaluator(), [np.zeros(2)])


def test_search_warm_starts_with_the_ensemble(tmp_path):
    from memrl.search.run import search

    paths = [str(make_policy(tmp_path, f"s{s}", seed=s)) for s in (1, 2)]
    ev = NetEvaluator()
    ens = load_policy(paths, "product")
    top = ens.ranked(ev, ens.describe(ev, inverted(ev)), k=3)
    run = tmp_path / "run"
    summary = search(fake_config("tpe", 5, warm_start=paths, warm_start_k=3, warm_start_ensemble="product"), run, progress=False, echo=lambda s: None, evaluator=ev)
    rs = rows(run)
    assert [r["mask_bits"] for r in rs[:3]] == [p.mask.bitstring for p in top] and len(rs) == 5
    assert [t.user_attrs.get("warm_start") for t in trials(run)] == [0, 1, 2, None, None]
    w = summary["warm_start"]
    assert w["source"] == f"product ensemble of {paths[0]}, {paths[1]}"
    assert [t["log_prob"] for t in w["trials"]] == pytest.approx([p.log_prob for p in top])
    saved = yaml.safe_load((run / "config.yaml").read_text())["search"]
    assert saved["warm_start"] == paths and saved["warm_start_ensemble"] == "product"
    again = search(None, run, resume=True, budget=7, progress=False, echo=lambda s: None, evaluator=NetEvaluator())
    assert again["trials"] == 7 and len(again["warm_start"]["trials"]) == 3  # enqueued once


def test_search_config_checks_the_ensemble(tmp_path):
    from memrl.utils.config import ConfigError

    with pytest.raises(ConfigError, match="unknown warm_start_ensemble 'mean'; valid: mixture, product"):
        fake_config("tpe", 3, warm_start=["a.zip", "b.zip"], warm_start_ensemble="mean")
    with pytest.raises(ConfigError, match="holds no policy or an empty path"):
        fake_config("tpe", 3, warm_start=["a.zip", " "])
    assert fake_config("tpe", 3, warm_start=["a.zip"]).search.warm_start == "a.zip"  # one policy: a path, as before
    assert fake_config("model", 3, prior=["run"]).search.prior == "run" and fake_config("model", 3, prior=["a", "b"]).search.prior == ["a", "b"]
    with pytest.raises(ConfigError, match="holds no run or an empty path"):
        fake_config("model", 3, prior=[])


def test_search_cli_takes_several_warm_start_policies(tmp_path, capsys):
    from memrl.cli import main

    a = make_policy(tmp_path, "a", seed=1)
    out = tmp_path / "run"
    assert main(["search", "--optimizer", "tpe", "--budget", "2", "--dataset", "inverted", "--warm-start-ensemble", "product", "--out", str(out)]) == 2
    assert "--warm-start-ensemble combines several policies" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    assert "--warm-start POLICY [POLICY ...]" in text and "--warm-start-ensemble {mixture,product}" in text and "--prior RUN [RUN ...]" in text
    assert a.is_file()


def test_report_of_the_members(tmp_path):
    paths = [make_policy(tmp_path, f"s{s}", seed=s) for s in (1, 2)]
    ens = load_policy(paths)
    assert json.loads(json.dumps(ens.to_dict())) == {"policies": [str(p) for p in paths], "rule": "mixture"}
    assert ens.env == TrainedPolicy.load(paths[0]).env and ens.n_units == 7


def test_cli_ensemble_warm_start_on_the_quick_model(quick_model_dir, tmp_path, capsys):
    from memrl.cli import main
    from memrl.data.loaders import load_dataset
    from memrl.envs.descriptor import DescriptorBasis
    from memrl.evaluation import Evaluator
    from test_search import TINY

    model = quick_model_dir[0]
    ev = Evaluator(model)
    data = load_dataset("inverted", ev.image_size, ev.image_channels)
    basis = DescriptorBasis.fit(ev.feature_net, [data], k=2)
    a, b = (make_policy(tmp_path, f"s{s}", granularity=ev.granularity, basis=basis, seed=s) for s in (4, 5))
    ens = load_policy([a, b], "product")
    top = ens.ranked(ev, ens.describe(ev, data), k=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": {"pretrained": str(model), "datasets": ["inverted"], "method": "difffit", "preset": "quick", "eval_overrides": TINY}}))
    run = tmp_path / "run"
    capsys.readouterr()
    argv = ["search", "--config", str(cfg), "--out", str(run), "--no-progress", "--warm-start", str(a), str(b), "--warm-start-ensemble", "product", "--warm-start-k", "2", "--budget", "2", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["proposed_mask_bits"] for r in rows(run)] == ["".join(map(str, p.bits)) for p in top]
    assert summary["warm_start"]["source"] == f"product ensemble of {a}, {b}"
    saved = yaml.safe_load((run / "config.yaml").read_text())["search"]
    assert saved["warm_start"] == [str(a), str(b)] and saved["warm_start_ensemble"] == "product"
    # --resume: the same policies (in the same order) are accepted, one of them alone is not
    assert main(["search", "--out", str(run), "--resume", "--warm-start", str(b)]) == 2
    assert "--warm-start is" in capsys.readouterr().err
    assert main(["search", "--out", str(run), "--resume", "--warm-start", str(a), str(b), "--budget", "3", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["trials"] == 3 and [t["step"] for t in again["warm_start"]["trials"]] == [1, 2]
