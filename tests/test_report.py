"""``memrl report``: a fake run folder (no training) rendered as HTML and Markdown through the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from memrl.cli import main
from memrl.reporting.records import EvaluationLog, info_to_row, write_best, write_pareto

UNITS = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]
DATASETS = ["inverted", "thick"]
ERRORS = {5: "fine-tune diverged: loss is nan at step 3 <script>alert(1)</script>", 13: "samples are not finite | 2 of 16 images"}
CONFIG = {
    "env": {"pretrained": "runs/digits-base", "datasets": DATASETS, "method": "difffit", "reward": {"lam": 1.0, "mu": 0.1, "mem_metric": "nn_own_rate"}},
    "ppo": {"n_steps": 4, "batch_size": 4},
    "train": {"total_timesteps": 20, "seed": 0, "n_envs": 1, "heldout_datasets": ["mirrored"]},
}
ROOT = Path(__file__).resolve().parents[1]


def _bits(i: int) -> str:
    return format((i * 37 + 11) % 127 + 1, "07b")


def _info(i: int) -> tuple[dict, float]:
    bits = _bits(i)
    ds = DATASETS[i % 2]
    info = {
        "dataset": ds, "method": "difffit", "mask": ",".join(u for u, b in zip(UNITS, bits) if b == "1"), "mask_bits": bits,
        "proposed_mask_bits": bits, "empty_units": [], "lr": 0.03, "cached": i % 4 == 3, "seconds": 0.001 if i % 4 == 3 else 12.0 + i,
    }  # fmt: skip
    step = i + 1
    if step in ERRORS:
        info.update(failed=True, error=ERRORS[step])
        return info, -21.0
    fid = 100.0 + 17 * ((i * 7) % 11)
    nn = ((i * 5) % 9) / 8
    info.update(fid=fid, kid=0.01 * fid, nn_own_rate=nn, replication_rate=nn / 2, noise_norm_mean=1.0, extraction_rate=0.0, amd=0.1,
                noise_norm_max=2.0, fid_norm=fid / 150, mem_norm=nn, trainable_params=1000 * bits.count("1"), trainable_fraction=0.001 * bits.count("1"))  # fmt: skip
    return info, -(fid / 150 + nn) - 0.1 * 0.001 * bits.count("1")


def make_run(root: Path, policy: bool = True, pictures: bool = True) -> Path:
    """A run folder as ``memrl train`` leaves it, written with the records module's own writers."""
    from PIL import Image

    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    log = EvaluationLog(run / "evaluations.csv")
    log.append([info_to_row(i + 1, 0, *_info(i)) for i in range(20)])
    write_pareto(run / "pareto.csv", log.ok_rows(), "nn_own_rate")
    write_best(run / "best_mask.json", log, UNITS)
    if policy:
        pe = {}
        for k, (name, held) in enumerate((("inverted", False), ("thick", False), ("mirrored", True))):
            pe[name] = {
                "heldout": held, "policy_mask": "up_blocks.2", "policy_reward": -1.25 - 0.1 * k, "policy_fid": 150.0, "policy_nn_own_rate": 0.125,
                "random_reward_mean": -2.5 + 0.05 * k, "random_reward_std": 0.3, "random_masks": 2,
                "random": [{"mask": "down_blocks.0,mid_block", "reward": -2.2, "fid": 300.0, "nn_own_rate": 0.5, "failed": False},
                           {"mask": "up_blocks.0", "reward": -2.8, "fid": None, "nn_own_rate": None, "failed": True}],
                "full_finetune_fid": 120.0, "full_finetune_nn_own_rate": 0.9,
            }  # fmt: skip
        (run / "policy_eval.json").write_text(json.dumps(pe))
    if pictures:
        (run / "best").mkdir()
        Image.new("RGB", (48, 32), (200, 30, 30)).save(run / "best" / "samples.png")
        Image.new("RGB", (32, 48), (30, 30, 200)).save(run / "best" / "nearest_neighbours.png")
    return run


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):  # noqa: ANN001
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> PageParser:
    p = PageParser()
    p.feed(path.read_text())
    return p


def md_images(path: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = make_run(root)
    out = {}
    for name in ("page.html", "page.md"):
        assert main(["report", str(run), "--out", str(root / "out" / name)]) == 0
        out[name] = root / "out" / name
    return run, out


def test_html_images_exist_and_content(rendered, capsys):
    from memrl.reporting.report import _units, fnum

    run, out = rendered
    page = out["page.html"]
    p = parse(page)
    assert len(p.imgs) == 5  # Pareto, heatmap, reward curves, the best mask's two pictures
    for src in p.imgs:
        assert not src.startswith(("/", "http")), src
        assert (page.parent / unquote(src)).is_file(), src
    assert {Path(unquote(s)).parent.name for s in p.imgs} == {"page_files"}
    assert any("best_samples.png" in s for s in p.imgs) and any("best_nearest_neighbours.png" in s for s in p.imgs)
    text = "".join(p.text)

    # the best mask per dataset, as a table row
    best = EvaluationLog(run / "evaluations.csv").best_per_dataset()
    assert set(best) == set(DATASETS)
    for ds, r in best.items():
        assert any(row[:2] == [ds, _units(r["mask"])] and fnum(r["reward"]) in row for row in p.rows), ds
    # the failures, with their errors (escaped in the file, intact as text)
    for step, err in ERRORS.items():
        assert any(row[0] == str(step) and row[-1] == err for row in p.rows), err
    assert "<script>" not in page.read_text()
    # policy against random masks
    assert any(row[:3] == ["mirrored", "yes", "-1.450"] and "-2.400 ± 0.300 (2)" in row for row in p.rows)
    assert "not against an exhaustive optimum" in text
    assert "The policy beats the random masks' mean reward on 3 of 3 datasets (1 of 1 held-out)" in text
    assert "runs/digits-base" in text  # the config block


def test_markdown_links_the_same_images(rendered):
    _, out = rendered
    md = out["page.md"]
    links = md_images(md)
    assert sorted(links) == sorted(parse(out["page.html"]).imgs)
    for src in links:
        assert (md.parent / unquote(src)).is_file()
    text = md.read_text()
    assert "<html" not in text and "## Failed evaluations" in text and "## The policy against random masks" in text
    assert "samples are not finite \\| 2 of 16 images" in text  # a | inside a table cell is escaped
    assert "```yaml" in text


def test_default_out_json_and_format_flag(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").is_file() and (run / "report_files" / "pareto.png").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "x.txt"), "--format", "md", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "md" and Path(info["report"]).read_text().startswith("# memrl report")
    assert Path(info["assets"]).name == "x_files" and info["skipped"] == []


def test_not_a_run_is_one_line_error(tmp_path, capsys):
    run = tmp_path / "notarun"
    run.mkdir()
    (run / "config.yaml").write_text("env: {}\n")
    out = tmp_path / "o" / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memrl: error:") and "evaluations.csv" in err[0] and "config.yaml" not in err[0]
    assert not out.exists() and not (tmp_path / "o").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_without_policy_eval_or_pictures_renders(tmp_path):
    run = make_run(tmp_path, policy=False, pictures=False)
    for name in ("r.html", "r.md"):
        assert main(["report", str(run), "--out", str(tmp_path / name)]) == 0
    p = parse(tmp_path / "r.html")
    text = "".join(p.text)
    assert "No policy_eval.json" in text and "No pictures of the best mask" in text
    assert len(p.imgs) == 3 and all((tmp_path / unquote(s)).is_file() for s in p.imgs)
    assert sorted(md_images(tmp_path / "r.md")) == sorted(p.imgs)


def test_torn_last_line_is_skipped_with_a_note(tmp_path):
    run = make_run(tmp_path, policy=False)
    with open(run / "evaluations.csv", "a") as f:
        f.write("21,0,thick,difffit,up_blocks.2")  # a run still writing its next row
    assert main(["report", str(run), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "1 incomplete line(s) of evaluations.csv skipped" in text and "evaluations (env steps): 20" in text


def test_run_without_evaluations_yet_renders(tmp_path):
    from memrl.reporting.records import COLUMNS

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run / "evaluations.csv").write_text(",".join(COLUMNS) + "\n")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    text = "".join(parse(tmp_path / "r.html").text)
    assert "holds no evaluations yet" in text and "No evaluation failed." in text


def test_shims_and_layering():
    import memrl.agents.plots as old_plots
    import memrl.agents.records as old_records
    from memrl.reporting import plots, records

    for name in ("COLUMNS", "EvaluationLog", "info_to_row", "write_best", "write_pareto", "pareto_front"):
        assert getattr(old_records, name) is getattr(records, name)
    for name in ("mask_frequency_heatmap", "pareto_scatter", "save"):
        assert getattr(old_plots, name) is getattr(plots, name)
    # reporting sits below agents (and envs, evaluation): importing it loads none of them
    # (``import memrl`` itself registers the Gymnasium env, so that baseline is subtracted)
    code = (
        "import sys, memrl; before = set(sys.modules)\n"
        "import memrl.reporting.report, memrl.reporting.cli, memrl.reporting.plots\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(('memrl.agents', 'memrl.envs', 'memrl.evaluation'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout


def test_agent_report_wrapper(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("agent_report", ROOT / "experiments" / "agent_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = make_run(tmp_path)
    assert mod.main(["--run", str(run), "--figure", str(tmp_path / "f.png"), "--block", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| dataset | held-out | policy reward |") and "mean training reward per block of 8 evaluations" in out
    assert (tmp_path / "f.png").is_file()
    assert mod.main(["--run", str(tmp_path / "missing")]) == 2

    # the kept results of the experiments/agent.yaml run come out as they were printed before
    res = ROOT / "experiments" / "results"
    if not all((res / f).is_file() for f in ("agent_evaluations.csv", "agent_policy_eval.json", "agent_report.txt")):
        pytest.skip("experiments/results of the agent run are not here")
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(res / "agent_evaluations.csv", old / "evaluations.csv")
    shutil.copy(res / "agent_policy_eval.json", old / "policy_eval.json")
    (old / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    assert mod.main(["--run", str(old)]) == 0
    expected = [ln for ln in (res / "agent_report.txt").read_text().splitlines() if not ln.startswith("wrote ")]
    assert capsys.readouterr().out.splitlines() == expected
