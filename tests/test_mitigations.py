"""Fine-tuning mitigations (memrl/training/mitigations.py): random word addition and Wen et al.'s filter.

Also the cache-key rule that came with them: a config that leaves them at their defaults has
exactly the request and key stored evaluations have (the legacy tables, experiments/results/legacy/).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from memrl.data.loaders import load_dataset
from memrl.errors import MemrlError
from memrl.evaluation.cache import request_key
from memrl.evaluation.config import EvalConfig, preset
from memrl.evaluation.evaluator import KEY_FIELDS_OMITTED_AT_DEFAULT, build_request
from memrl.evaluation.lookup import read_table
from memrl.models.pipeline import DiffusionModel
from memrl.peft_masking import Mask, enumerate_units
from memrl.training.finetune import MITIGATION_FIELDS, SCALE_FIELDS, FinetuneConfig, finetune
from memrl.training.losses import epsilon_loss
from memrl.training.mitigations import RandomWordAdder, add_random_words, caption_vocabulary, filtered_epsilon_loss
from memrl.utils.config import apply_overrides

TABLE = Path(__file__).resolve().parents[1] / "experiments/results/legacy/exhaustive-cb36195c/family-80_lora_seed0.jsonl"
CAPTIONS = ["digit 3, thin strokes, left slant", "digit 7", "a wide zero with a thick ring"]


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


# ------------------------------------------------------------------ random word addition
def test_vocabulary_is_the_captions_words_sorted():
    assert caption_vocabulary(["digit 3, thin strokes", "Digit 7's loop"]) == ("3", "7's", "Digit", "digit", "loop", "strokes", "thin")


@pytest.mark.parametrize("k", [1, 3])
def test_inserts_exactly_k_vocabulary_words_keeping_the_caption_in_order(k):
    vocab = caption_vocabulary(CAPTIONS)
    rng = np.random.default_rng(0)
    for c in CAPTIONS:
        new = add_random_words(c, k, vocab, rng)
        old_t, new_t = c.split(), new.split()
        assert len(new_t) == len(old_t) + k
        assert _is_subsequence(old_t, new_t)
        extra = list(new_t)
        for w in old_t:
            extra.remove(w)
        assert len(extra) == k and all(w in vocab for w in extra)


def test_words_differ_per_sample_and_iteration_and_repeat_with_the_seed():
    batch = [CAPTIONS[0]] * 8
    a = RandomWordAdder(caption_vocabulary(CAPTIONS), 2, seed=0)
    first, second = a(batch), a(batch)
    assert len(set(first)) > 1  # samples of one batch get their own words
    assert first != second  # and every iteration new ones
    b = RandomWordAdder(caption_vocabulary(CAPTIONS), 2, seed=0)
    assert b(batch) == first and b(batch) == second  # the same seed repeats the sequence
    assert RandomWordAdder(caption_vocabulary(CAPTIONS), 2, seed=1)(batch) != first


def test_off_and_empty_captions_are_untouched():
    rng = np.random.default_rng(0)
    assert add_random_words(CAPTIONS[0], 0, ("x",), rng) == CAPTIONS[0]
    assert add_random_words("", 3, ("x",), rng) == ""  # unconditional samples stay unconditional
    assert FinetuneConfig().caption_random_words == 0 and FinetuneConfig().guidance_filter_threshold is None


# ------------------------------------------------------------------ Wen et al.'s filter on a controlled batch
class _OffsetUNet(torch.nn.Module):
    """eps(x, t, c) = w * x + c[0, 0]: the text-guidance magnitude of sample i is |c_i[0, 0]| * sqrt(C*H*W)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, encoder_hidden_states):  # noqa: ANN001, ANN201
        s = encoder_hidden_states[:, 0, 0].to(x.dtype)
        return SimpleNamespace(sample=self.w * x + s[:, None, None, None])


def _controlled_batch():
    latents = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    context = torch.zeros(4, 2, 3)
    context[:, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # magnitudes 4, 8, 12, 16 (sqrt(16) = 4)
    return _OffsetUNet(), DDPMScheduler(num_train_timesteps=1000), latents, context, torch.zeros(2, 3)


def test_filter_masks_out_exactly_the_samples_above_the_threshold():
    unet, sched, latents, ctx, empty = _controlled_batch()
    out = filtered_epsilon_loss(unet, sched, latents, ctx, empty, torch.Generator().manual_seed(0), threshold=10.0)
    assert torch.allclose(out.magnitudes, torch.tensor([4.0, 8.0, 12.0, 16.0]), atol=1e-4)
    assert out.kept.tolist() == [True, True, False, False] and out.n_filtered == 2
    # the loss is the MSE over the kept samples only, with the draws epsilon_loss would make
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=ctx).sample
    assert torch.equal(out.loss, torch.nn.functional.mse_loss(pred[:2], noise[:2]))
    assert not torch.allclose(out.loss, torch.nn.functional.mse_loss(pred, noise))
    # nothing kept: no loss (the step is skipped); everything kept: epsilon_loss itself
    none = filtered_epsilon_loss(unet, sched, latents, ctx, empty, torch.Generator().manual_seed(0), threshold=1.0)
    assert none.loss is None and none.n_filtered == 4
    every = filtered_epsilon_loss(unet, sched, latents, ctx, empty, torch.Generator().manual_seed(0), threshold=100.0)
    assert every.n_filtered == 0
    assert torch.equal(every.loss, epsilon_loss(unet, sched, latents, ctx, torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------ the fine-tune loop
@pytest.fixture(scope="module")
def tiny(quick_model_dir):
    model = DiffusionModel.from_pretrained(quick_model_dir[0])
    data = load_dataset("inverted", model.image_size, model.image_channels)
    mask = Mask.parse("all", tuple(enumerate_units(model.unet, "attention")))
    cfg = FinetuneConfig(steps=4, batch_size=8, n_mem=4, n_repeats=5, data_size_ratio=0.1)
    return model, data, mask, cfg


def _weights(ft) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k: v.detach().clone() for k, v in ft.model.unet.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_filter_above_every_magnitude_trains_exactly_like_no_filter(tiny):
    model, data, mask, cfg = tiny
    plain = finetune(model, data, mask, cfg)
    loose = finetune(model, data, mask, replace(cfg, guidance_filter_threshold=1e9))
    assert loose.samples_filtered == 0 and loose.samples_seen == cfg.steps * cfg.batch_size
    assert loose.losses == plain.losses
    assert _same(_weights(loose), _weights(plain))
    tight = finetune(model, data, mask, replace(cfg, guidance_filter_threshold=1e-6))
    assert tight.samples_filtered > 0 and tight.filtered_share == tight.samples_filtered / tight.samples_seen
    assert not _same(_weights(tight), _weights(plain))
    assert plain.samples_filtered == 0 and plain.filtered_share == 0.0


def test_random_words_reach_the_text_encoder_and_are_reproducible(tiny, monkeypatch):
    model, data, mask, cfg = tiny
    seen: list[list[str]] = []
    original = DiffusionModel.encode_prompts

    def record(self, prompts):  # noqa: ANN001, ANN202
        seen.append(list(prompts))
        return original(self, prompts)

    monkeypatch.setattr(DiffusionModel, "encode_prompts", record)
    plain = finetune(model, data, mask, cfg)
    known = set(data.train.captions) | {""}
    assert all(p in known for batch in seen for p in batch)  # off: the captions as they are
    n_plain = len(seen)  # the caption table and ""
    seen.clear()
    a = finetune(model, data, mask, replace(cfg, caption_random_words=2))
    assert len(seen) == n_plain + cfg.steps  # plus one encoding per step, of the batch's altered captions
    steps = seen[n_plain:]
    assert all(len(b) == cfg.batch_size for b in steps)
    lengths = {len(c.split()) for c in data.train.captions}
    for batch in steps:
        for p in batch:
            assert p not in known and len(p.split()) - 2 in lengths
    b = finetune(model, data, mask, replace(cfg, caption_random_words=2))
    assert a.losses == b.losses and _same(_weights(a), _weights(b))  # reproducible with the seed
    assert not _same(_weights(a), _weights(plain))


# ------------------------------------------------------------------ cache keys
def _stored_rows() -> tuple[dict, list[dict]]:
    return read_table(TABLE)


def _rebuilt(meta: dict, row: dict, cfg: EvalConfig) -> dict:
    req = row["request"]
    return build_request(req["model"], req["feature_net"], req["units"], meta["granularity"], req["dataset"], req["mask"], cfg, req["runtime"])


def test_default_options_keep_every_stored_cache_key():
    """The rows' EvalConfig rebuilt as a YAML ``eval_overrides`` would be, then keyed: identical to the stored keys."""
    meta, rows = _stored_rows()
    assert len(rows) > 100
    for row in rows:
        stored = row["request"]
        cfg = apply_overrides(EvalConfig(), json.loads(json.dumps(stored["config"])), "eval_overrides", TABLE.name)
        req = _rebuilt(meta, row, cfg)
        assert json.loads(json.dumps(req)) == stored  # as JSON (a tuple is stored as a list)
        assert request_key(req) == row["key"]
    # every fine-tuning field the stored requests lack is one the key rule leaves out at its default
    missing = set(FinetuneConfig.__dataclass_fields__) - set(rows[0]["request"]["config"]["finetune"])
    assert missing == set(KEY_FIELDS_OMITTED_AT_DEFAULT) == set(MITIGATION_FIELDS) | set(SCALE_FIELDS)


@pytest.mark.parametrize("field, value", [("caption_random_words", 2), ("guidance_filter_threshold", 3.5)])
def test_a_mitigation_changes_the_key(field, value):
    meta, rows = _stored_rows()
    row = rows[0]
    cfg = apply_overrides(EvalConfig(), json.loads(json.dumps(row["request"]["config"])), "eval_overrides", TABLE.name)
    on = replace(cfg, finetune=replace(cfg.finetune, **{field: value}))
    req = _rebuilt(meta, row, on)
    assert req["config"]["finetune"][field] == value
    assert request_key(req) != row["key"]
    # and the reference / base run without it: one shared plain reference
    assert request_key(_rebuilt(meta, row, on.without_mitigations())) == row["key"]


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"caption_random_words": -1}, "caption_random_words"),
        ({"caption_random_words": True}, "caption_random_words"),
        ({"guidance_filter_threshold": 0.0}, "guidance_filter_threshold"),
        ({"guidance_filter_threshold": -2.0}, "guidance_filter_threshold"),
        ({"guidance_filter_threshold": float("nan")}, "guidance_filter_threshold"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kw, field):
    with pytest.raises(MemrlError, match=field):
        FinetuneConfig(**kw)
    from memrl.envs.config import EnvConfig

    with pytest.raises(MemrlError, match=rf"eval_overrides\.finetune.*{field}") as exc:
        EnvConfig(eval_overrides={"finetune": kw})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--random-words", "-1"], r"--random-words: finetune: 'caption_random_words' must be an integer >= 0"),
        (["--guidance-filter", "0"], r"--guidance-filter: finetune: 'guidance_filter_threshold' must be a number > 0"),
        (["--set", "finetune.guidance_filter_threshold=-1"], r"--set: finetune: 'guidance_filter_threshold'"),
        (["--random-words", "2", "--set", "finetune.caption_random_words=3"], r"--random-words 2 and --set finetune.caption_random_words=3 disagree"),
    ],
)
def test_cli_refuses_bad_values_in_one_line(argv, match, tmp_path, capsys):
    from memrl.cli import main

    assert main(["evaluate", "--method", "lora", "--mask", "all", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()  # refused before anything is loaded or written


def test_cli_flags_set_the_config_and_are_documented(capsys):
    from memrl.evaluation.cli import add_evaluate, eval_config

    parser = argparse.ArgumentParser(prog="memrl")
    add_evaluate(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--method", "lora", "--mask", "all", "--out", "o", "--preset", "quick", "--random-words", "3", "--guidance-filter", "2.5"])
    ft = eval_config(args).finetune
    assert ft.caption_random_words == 3 and ft.guidance_filter_threshold == 2.5
    default = eval_config(parser.parse_args(["evaluate", "--method", "lora", "--mask", "all", "--out", "o"])).finetune
    assert default.caption_random_words == 0 and default.guidance_filter_threshold is None
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--random-words K" in text and "Somepalli" in text
    assert "--guidance-filter T" in text and "Wen et al." in text and "filtered_share" in text


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_evaluate_with_each_mitigation_end_to_end(quick_model_dir, tmp_path, capsys):
    from memrl.cli import main

    common = ["evaluate", "--method", "lora", "--mask", "all", "--preset", "quick", "--pretrained", str(quick_model_dir[0]),
              "--cache", str(tmp_path / "c.sqlite"), "--json"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "words"), "--random-words", "2"]) == 0, capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "filter"), "--guidance-filter", "1e-6"]) == 0, capsys.readouterr().err
    words = json.loads((tmp_path / "words" / "result.json").read_text())
    filt = json.loads((tmp_path / "filter" / "result.json").read_text())
    for r in (words, filt):
        assert np.isfinite(r["fid"]) and np.isfinite(r["reward"]) and r["trainable_params"] > 0
    assert "filtered_share" not in words  # only a filtered run reports it
    quick = preset("quick").finetune
    seen = quick.steps * quick.batch_size
    assert 0 < filt["filtered_share"] <= 1 and filt["filtered_samples"] == round(filt["filtered_share"] * seen)
    assert filt["filter_skipped_steps"] >= 0
    # both rewards are against the same plain full fine-tune (one cached reference)
    assert words["reference"] == filt["reference"] and words["base"] == filt["base"]
