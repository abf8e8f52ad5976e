"""A trained policy's ranked proposals (``memrl.envs.policy``) and ``memrl search --warm-start``.

The policies here are built in a second: an untrained SB3 PPO on a stand-in env with the shapes of
a ``memrl train`` run, its action biases drawn at random (so the probabilities differ), saved with
the ``config.yaml`` and ``descriptor.json`` a run folder holds. Searches evaluate with the cheap
``FakeEvaluator`` of test_search (given a feature network so datasets can be described, and
optionally units where nothing is trained); the CLI test fine-tunes the quick test model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from memrl.envs.config import EnvConfig
from memrl.envs.descriptor import DescriptorBasis
from memrl.envs.mask_selection import N_METRICS, action_dims, decode_action
from memrl.envs.policy import TrainedPolicy
from memrl.errors import MemrlError
from memrl.evaluation import space
from memrl.peft_masking import Mask
from test_search import TINY, UNITS, FakeEvaluator, fake_config, proposals, rows, trials

FEATURES = 6


def feature_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, FEATURES))


class NetEvaluator(FakeEvaluator):
    """FakeEvaluator with a feature network (datasets can be described) and, optionally, units where
    the method trains nothing (so two proposals can train the same thing)."""

    def __init__(self, units: tuple[str, ...] = UNITS, dropped: tuple[str, ...] = (), **kw) -> None:
        super().__init__(**kw)
        self.units = tuple(units)
        self.dropped = set(dropped)
        self.feature_net = feature_net()

    def trainable_units(self, method: str) -> tuple[str, ...]:
        return tuple(u for u in self.units if u not in self.dropped)

    def effective_mask(self, method, mask, strict=False):  # noqa: ANN001, ANN201
        empty = tuple(u for u in mask.selected if u in self.dropped)
        return Mask(mask.units, tuple(int(b and u not in self.dropped) for u, b in zip(mask.units, mask.bits))), empty


def make_policy(root: Path, name: str, n_units: int = len(UNITS), methods: tuple = (), lr_scales: tuple = (), granularity: str = "block", seed: int = 0, basis: DescriptorBasis | None = None) -> Path:
    """A run folder with policy.zip (untrained PPO, random action biases), config.yaml and descriptor.json."""
    import gymnasium as gym
    from gymnasium import spaces
    from stable_baselines3 import PPO

    env_cfg = EnvConfig(pretrained="unused", datasets=["inverted"], method="difffit", methods=list(methods), lr_scales=list(lr_scales), preset="quick", granularity=granularity)
    rng = np.random.default_rng(seed)
    if basis is None:
        basis = DescriptorBasis(np.zeros(FEATURES), rng.normal(size=(2, FEATURES)), np.ones(2))
    dims = action_dims(n_units, env_cfg)
    obs_dim = basis.dim + n_units + N_METRICS

    class Shapes(gym.Env):
        observation_space = spaces.Box(-10.0, 10.0, shape=(obs_dim,), dtype=np.float32)
        action_space = spaces.MultiDiscrete(dims) if len(dims) > n_units else spaces.MultiBinary(n_units)

        def reset(self, *, seed=None, options=None):  # noqa: ANN001, ANN202
            return np.zeros(obs_dim, np.float32), {}

        def step(self, action):  # noqa: ANN001, ANN202
            return np.zeros(obs_dim, np.float32), 0.0, True, False, {}

    model = PPO("MlpPolicy", Shapes(), seed=seed, device="cpu", n_steps=8, batch_size=8)
    with torch.no_grad():
        bias = model.policy.action_net.bias
        bias.copy_(torch.as_tensor(rng.normal(scale=1.5, size=bias.shape), dtype=bias.dtype))
    run = root / name
    run.mkdir(parents=True)
    model.save(run / "policy.zip")
    (run / "config.yaml").write_text(yaml.safe_dump({"env": env_cfg.to_dict(), "ppo": {}, "train": {}}))
    basis.save(run / "descriptor.json")
    return run / "policy.zip"


def inverted(ev):  # noqa: ANN001, ANN201
    from memrl.data.loaders import load_dataset

    return load_dataset("inverted", ev.image_size, ev.image_channels)


def brute_force(policy: TrainedPolicy, ev, descriptor) -> list[tuple[tuple, float]]:  # noqa: ANN001
    """Every action's log-probability from SB3's own distribution, grouped by what it trains
    (the best action of each group), most probable first."""
    obs = policy.observation(descriptor)
    obs_t, _ = policy.model.policy.obs_to_tensor(obs)
    dims = action_dims(len(ev.units), policy.env)
    every = list(space.enumerate_actions(dims))
    with torch.no_grad():
        dist = policy.model.policy.get_distribution(obs_t)
        logps = [float(dist.log_prob(torch.as_tensor([a], dtype=torch.float32))) for a in every]
    best: dict[tuple, float] = {}
    for a, lp in zip(every, logps):
        bits, method, lr = decode_action(a, len(ev.units), policy.env)
        mask, _ = ev.effective_mask(method, Mask.from_bits([int(b) for b in bits], ev.units))
        key = (mask.bitstring, method, lr)
        best[key] = max(best.get(key, -np.inf), lp)
    return sorted(best.items(), key=lambda kv: -kv[1])


# ---------------------------------------------------------------------------------------- ranked
@pytest.mark.parametrize("methods, lr_scales", [((), ()), (("lora", "difffit"), (0.5, 1.0, 2.0))])
def test_ranked_is_the_distribution_in_order(tmp_path, methods, lr_scales):
    policy = TrainedPolicy.load(make_policy(tmp_path, "run", methods=methods, lr_scales=lr_scales))
    ev = NetEvaluator(dropped=("down_blocks.0",))
    desc = policy.describe(ev, inverted(ev))
    ranked = policy.ranked(ev, desc)
    # the deterministic action first
    det, _ = policy.model.predict(policy.observation(desc), deterministic=True)
    assert ranked[0].deterministic and list(ranked[0].action) == [int(a) for a in np.asarray(det).reshape(-1)]
    assert not any(p.deterministic for p in ranked[1:])
    # log-probabilities descend, effective masks (with method and lr) are distinct
    lps = [p.log_prob for p in ranked]
    assert all(a >= b for a, b in zip(lps, lps[1:]))
    assert len({p.key for p in ranked}) == len(ranked)
    assert all(p.mask.bits[0] == 0 for p in ranked)  # down_blocks.0 trains nothing: never part of a mask
    n_choices = max(1, len(methods)) * max(1, len(lr_scales))
    assert len(ranked) == 2 ** (len(UNITS) - 1) * n_choices  # half the bit patterns are duplicates
    # against the brute force over every action
    want = brute_force(policy, ev, desc)
    assert [p.key for p in ranked] == [k for k, _ in want]
    assert lps == pytest.approx([lp for _, lp in want], abs=1e-5)
    # k caps the list; a k larger than the number of distinct proposals returns them all
    assert [p.key for p in policy.ranked(ev, desc, k=3)] == [p.key for p in ranked[:3]]
    assert len(policy.ranked(ev, desc, k=10**6)) == len(ranked)
    with pytest.raises(MemrlError, match=">= 1"):
        policy.ranked(ev, desc, k=0)


def test_beam_search_finds_the_enumerated_ranking(tmp_path, monkeypatch):
    import memrl.envs.policy as mod

    policy = TrainedPolicy.load(make_policy(tmp_path, "run", methods=("lora", "difffit"), lr_scales=(0.5, 1.0, 2.0), seed=3))
    ev = NetEvaluator(dropped=("mid_block",))
    desc = policy.describe(ev, inverted(ev))
    exact = policy.ranked(ev, desc, k=25)
    monkeypatch.setattr(mod, "ENUMERATE_LIMIT", 1)  # every space is "large": beam search
    monkeypatch.setattr(mod, "BEAM_START", 2)  # and the beam has to grow to find 25 distinct proposals
    beam = policy.ranked(ev, desc, k=25)
    assert [p.key for p in beam] == [p.key for p in exact]
    assert [p.log_prob for p in beam] == pytest.approx([p.log_prob for p in exact])
    assert len(policy.ranked(ev, desc)) == len(brute_force(policy, ev, desc))  # a beam as wide as the space holds it all


def test_policy_must_fit_the_evaluator(tmp_path):
    five = TrainedPolicy.load(make_policy(tmp_path, "five", n_units=5))
    with pytest.raises(MemrlError, match=r"trained for 5 units .*has 7 units"):
        five.check_fits(NetEvaluator())
    attention = TrainedPolicy.load(make_policy(tmp_path, "att", granularity="attention"))
    with pytest.raises(MemrlError, match="'attention' units"):
        attention.check_fits(NetEvaluator())
    with pytest.raises(MemrlError, match="policy file"):
        TrainedPolicy.load(tmp_path / "nope.zip")
    (tmp_path / "five" / "config.yaml").write_text("ppo: {}\n")
    with pytest.raises(MemrlError, match="no env section"):
        TrainedPolicy.load(tmp_path / "five" / "policy.zip")


# ---------------------------------------------------------------------------------------- search --warm-start
def test_warm_started_tpe_starts_with_the_policy_top_k(tmp_path):
    from memrl.search.run import search

    pol = make_policy(tmp_path, "policy", seed=1)
    ev = NetEvaluator(dropped=("down_blocks.0",))
    policy = TrainedPolicy.load(pol)
    top = policy.ranked(ev, policy.describe(ev, inverted(ev)), k=4)
    run = tmp_path / "run"
    summary = search(fake_config("tpe", 6, warm_start=str(pol), warm_start_k=4), run, progress=False, echo=lambda s: None, evaluator=ev)
    rs = rows(run)
    assert [r["proposed_mask_bits"] for r in rs[:4]] == ["".join(map(str, p.bits)) for p in top]
    assert [r["mask_bits"] for r in rs[:4]] == [p.mask.bitstring for p in top]
    assert len(rs) == 6 and ev.calls[:4] == [p.mask.bitstring for p in top]
    assert [t.user_attrs.get("warm_start") for t in trials(run)] == [0, 1, 2, 3, None, None]
    best = json.loads((run / "best.json").read_text())
    assert best == json.loads(json.dumps(summary))
    w = best["warm_start"]
    assert w["source"] == str(pol) and [t["step"] for t in w["trials"]] == [1, 2, 3, 4]
    assert [t["log_prob"] for t in w["trials"]] == pytest.approx([p.log_prob for p in top])
    best_step = max(rs, key=lambda r: float(r["reward"]))["step"]
    assert w["best_is_warm_start"] == (int(best_step) <= 4)
    saved = yaml.safe_load((run / "config.yaml").read_text())["search"]
    assert saved["warm_start"] == str(pol) and saved["warm_start_k"] == 4
    # --resume (longer budget) enqueues nothing again: the new trials are the sampler's
    ev2 = NetEvaluator(dropped=("down_blocks.0",))
    again = search(None, run, resume=True, budget=9, progress=False, echo=lambda s: None, evaluator=ev2)
    ts = trials(run)
    assert len(ts) == 9 and len(ev2.calls) == 3 and again["trials"] == 9
    assert [t.user_attrs.get("warm_start") for t in ts] == [0, 1, 2, 3] + [None] * 5
    assert len(again["warm_start"]["trials"]) == 4


def test_warm_start_spread_reorders_the_policy_list_before_taking_k(tmp_path):
    """search.warm_start_spread: the first k of the policy's whole ranked list spread out
    (memrl.search.spread), its deterministic proposal still first; 0 is the plain top k."""
    from memrl.search.run import search
    from memrl.search.spread import hamming, spread

    pol = make_policy(tmp_path, "policy", seed=1)
    ev = NetEvaluator()
    policy = TrainedPolicy.load(pol)
    ranked = policy.ranked(ev, policy.describe(ev, inverted(ev)))
    want = [q.mask.bitstring for q in spread(ranked, 3, bits=lambda q: q.mask.bitstring)[:4]]
    assert want[0] == ranked[0].mask.bitstring and want != [q.mask.bitstring for q in ranked[:4]]
    assert all(hamming(a, b) >= 3 for i, a in enumerate(want) for b in want[:i])
    run = tmp_path / "run"
    search(fake_config("tpe", 5, warm_start=str(pol), warm_start_k=4, warm_start_spread=3), run, progress=False, echo=lambda s: None, evaluator=NetEvaluator())
    assert [r["mask_bits"] for r in rows(run)[:4]] == want
    with pytest.raises(MemrlError, match="'warm_start_spread' must be an integer >= 0"):
        fake_config("tpe", 5, warm_start=str(pol), warm_start_spread=-1)


def test_warm_start_k_larger_than_the_budget(tmp_path):
    from optuna.trial import TrialState

    from memrl.search.run import search

    pol = make_policy(tmp_path, "policy", seed=2)
    run = tmp_path / "run"
    summary = search(fake_config("random", 2, warm_start=str(pol), warm_start_k=5), run, progress=False, echo=lambda s: None, evaluator=NetEvaluator())
    ts = trials(run)
    assert summary["trials"] == 2 and len(ts) == 2 and all(t.state == TrialState.COMPLETE for t in ts)  # none left waiting
    assert [t.user_attrs.get("warm_start") for t in ts] == [0, 1]


def test_proposals_given_directly(tmp_path):
    """A benchmark warm-starts without a policy file: (bits, method, lr) tuples, enqueued in order."""
    from memrl.search.config import SearchConfig
    from memrl.search.run import search

    given = [("1000001", "difffit", None), ([0, 1, 1, 0, 0, 0, 0], "difffit", None)]
    run = tmp_path / "run"
    summary = search(fake_config("nsga2", 4), run, progress=False, echo=lambda s: None, evaluator=FakeEvaluator(), proposals=given)
    assert proposals(run)[:2] == ["1000001", "0110000"]
    assert summary["warm_start"]["source"] == "proposals" and [t["step"] for t in summary["warm_start"]["trials"]] == [1, 2]
    # lr scales: a proposal names one of the learning rates the search proposes
    from memrl.training.finetune import FinetuneConfig

    base = FinetuneConfig(method="difffit").resolved_lr()
    cfg = SearchConfig.from_dict({"env": {"pretrained": "unused", "datasets": ["inverted"], "method": "difffit", "lr_scales": [0.5, 2.0], "preset": "quick"}, "search": {"budget": 2, "final_pictures": False}})
    search(cfg, tmp_path / "lr", progress=False, echo=lambda s: None, evaluator=FakeEvaluator(), proposals=[("0000001", "difffit", 2.0 * base)])
    assert trials(tmp_path / "lr")[0].params["lr_scale"] == 2.0
    # refused before the run folder exists
    for bad, msg in (
        ([("0000001", "lora", None)], "uses method 'lora'; this search proposes difffit"),
        ([("00001", "difffit", None)], "must be 7 bits"),
        ([("0000001", "difffit", 1e-3)], "uses learning rate 0.001"),
        (["0000001"], "is not \\(mask bits, method, lr\\)"),
    ):
        with pytest.raises(MemrlError, match=msg):
            search(fake_config("tpe", 3), tmp_path / "bad", progress=False, echo=lambda s: None, evaluator=FakeEvaluator(), proposals=bad)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(MemrlError, match="not both"):
        search(fake_config("tpe", 3, warm_start="p.zip"), tmp_path / "bad", progress=False, echo=lambda s: None, evaluator=FakeEvaluator(), proposals=given)


def test_exhaustive_refuses_a_warm_start(tmp_path):
    from memrl.search.run import search

    with pytest.raises(MemrlError, match="'warm_start' .*exhaustive visits every mask once"):
        fake_config("exhaustive", 3, warm_start="p.zip")
    with pytest.raises(MemrlError, match="exhaustive visits every mask once"):
        search(fake_config("exhaustive", 3), tmp_path / "ex", progress=False, echo=lambda s: None, evaluator=FakeEvaluator(), proposals=[("0000001", "difffit", None)])
    assert not (tmp_path / "ex").exists()


def test_policy_for_another_unit_count_is_refused_before_the_run_folder(tmp_path):
    from memrl.search.run import search

    pol = make_policy(tmp_path, "five", n_units=5)
    run = tmp_path / "run"
    with pytest.raises(MemrlError, match="trained for 5 units"):
        search(fake_config("tpe", 3, warm_start=str(pol)), run, progress=False, echo=lambda s: None, evaluator=NetEvaluator())
    assert not run.exists()


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_warm_start_on_the_quick_model(quick_model_dir, tmp_path, capsys):
    from memrl.cli import main
    from memrl.data.loaders import load_dataset
    from memrl.evaluation import Evaluator

    model = quick_model_dir[0]
    ev = Evaluator(model)
    data = load_dataset("inverted", ev.image_size, ev.image_channels)
    basis = DescriptorBasis.fit(ev.feature_net, [data], k=2)
    pol = make_policy(tmp_path, "policy", granularity=ev.granularity, basis=basis, seed=4)
    policy = TrainedPolicy.load(pol)
    top = policy.ranked(ev, policy.describe(ev, data), k=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": {"pretrained": str(model), "datasets": ["inverted"], "method": "difffit", "preset": "quick", "eval_overrides": TINY}}))
    run = tmp_path / "run"
    base = ["search", "--config", str(cfg), "--out", str(run), "--no-progress"]
    five = make_policy(tmp_path, "five", n_units=5, basis=basis)
    capsys.readouterr()  # the model loading's progress bars
    # refusals: one line, nothing written
    for extra, msg in (
        (["--optimizer", "exhaustive", "--warm-start", str(pol)], "exhaustive visits every mask once"),
        (["--warm-start-k", "2"], "--warm-start-k needs --warm-start"),
        (["--warm-start", str(pol), "--warm-start-k", "0"], "--warm-start-k must be >= 1"),
        (["--warm-start", str(tmp_path / "nope.zip")], "not found"),
        (["--warm-start", str(five)], "trained for 5 units"),
    ):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and err[0].startswith("memrl: error:"), err
        assert not run.exists()
    assert main(base + ["--warm-start", str(pol), "--warm-start-k", "2", "--budget", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["proposed_mask_bits"] for r in rows(run)[:2]] == ["".join(map(str, p.bits)) for p in top]
    assert [t["step"] for t in summary["warm_start"]["trials"]] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["search"]["warm_start_k"] == 2
    # --resume keeps the warm start (nothing enqueued again); another policy is refused
    assert main(["search", "--out", str(run), "--resume", "--warm-start", str(tmp_path / "other.zip")]) == 2
    assert "--warm-start is" in capsys.readouterr().err
    assert main(["search", "--out", str(run), "--resume", "--budget", "4", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["trials"] == 4 and [t["step"] for t in again["warm_start"]["trials"]] == [1, 2]
    assert [t.user_attrs.get("warm_start") for t in trials(run)] == [0, 1, None, None]


def test_help_explains_the_warm_start_flags(capsys):
    from memrl.cli import main

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert "--warm-start POLICY" in out and "--warm-start-k K" in out and "--warm-start-tables DIR" in out and "--warm-start-spread D" in out
