import subprocess
import sys

import pytest

from memrl.cli import build_parser, main


def test_help_explains_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"memrl {name} {action.option_strings} has no help text"


def test_sample_writes_grid(quick_model_dir, tmp_path):
    out = tmp_path / "g.png"
    rc = main(["sample", "--model", str(quick_model_dir[0]), "--prompt", "digit 3", "--prompt", "digit 4", "-n", "3", "--steps", "3", "--out", str(out)])
    assert rc == 0 and out.is_file()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["sample", "--model", "/no/such/model", "--prompt", "x", "--out", "o.png"], "does not exist"),
        (["sample", "--prompt", "  ", "--out", "o.png"], "no prompts given"),
    ],
)
def test_bad_input_is_one_line_error(args, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("memrl: error:")


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "memrl.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "pretrain" in r.stdout
