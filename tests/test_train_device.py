"""memrl train --device: the evaluations' device reaches env.device (auto resolves), refused with --resume."""

from __future__ import annotations

import pytest


def _captured(monkeypatch) -> dict:  # noqa: ANN001
    seen: dict = {}

    def fake_train(cfg, out, **_kw):  # noqa: ANN001, ANN202
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr("memrl.agents.train.train", fake_train)
    return seen


@pytest.mark.parametrize("flag, want", [("cpu", "cpu"), ("cuda:1", "cuda:1"), ("auto", "cpu")])
def test_device_flag_sets_env_device(flag, want, tmp_path, monkeypatch):
    import torch

    from memrl.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = _captured(monkeypatch)
    assert main(["train", "--set", "train.total_timesteps=8", "--device", flag, "--out", str(tmp_path / "run"), "--json"]) == 0
    assert seen["cfg"].env.device == want


def test_device_default_keeps_the_config_and_resume_refuses_it(tmp_path, monkeypatch, capsys):
    from memrl.cli import main

    seen = _captured(monkeypatch)
    assert main(["train", "--set", "env.device=cpu", "--out", str(tmp_path / "run"), "--json"]) == 0
    assert seen["cfg"].env.device == "cpu"
    assert main(["train", "--set", "env.device=cuda", "--device", "cpu", "--out", str(tmp_path / "run2")]) == 2
    assert "disagree" in capsys.readouterr().err
    assert main(["train", "--resume", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "--resume cannot take --device" in capsys.readouterr().err


def test_help_documents_device(capsys):
    from memrl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--device" in capsys.readouterr().out
