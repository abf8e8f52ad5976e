"""Every bad input is one clear line (``memrl: error: ...``), exit status 2, and nothing written.

Covers: metadata rows that are not JSON objects or miss a key, captions that are not UTF-8 or are
empty, corrupt images, images of any size and mode, empty folders and missing files, training
configs with wrong types or unknown keys, unknown PPO arguments, negative reward weights,
``--resume`` with a config that differs from the run's, and masks that do not fit the model.
The CLI is called in-process (``memrl.cli.main``) with ``capsys``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from memrl.cli import main
from memrl.data.loaders import load_dataset
from memrl.errors import MemrlError
from memrl.utils.images import load_image

# ------------------------------------------------------------------------------------------ helpers


def _gray(size: tuple[int, int] = (16, 16), seed: int = 0) -> np.ndarray:
    """A ``H x W`` uint8 picture with every grey level (a ramp plus noise)."""
    w, h = size
    ramp = np.linspace(0, 255, w * h).reshape(h, w)
    noise = np.random.RandomState(seed).randint(-20, 20, (h, w))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def _images(folder: Path, n: int = 4, captions: bool = True) -> list[str]:
    """``n`` 16x16 grayscale PNGs (with ``.txt`` captions) in ``folder``; their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        Image.fromarray(_gray(seed=i)).save(folder / f"im{i}.png")
        if captions:
            (folder / f"im{i}.txt").write_text(f"caption {i}\n")
        names.append(f"im{i}.png")
    return names


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes (``None``: the folder does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_error(capsys, argv: list[str], out: Path, *needles: str) -> str:
    """Run ``memrl ARGV``; assert exit 2, one stderr line naming every needle, ``out`` untouched."""
    before = _snapshot(out)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, f"exit status {rc}, stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("memrl: error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line}"
    assert _snapshot(out) == before, f"{out} was written"
    return line


def evaluate_argv(model: Path, dataset: str | Path, out: Path, mask: str = "all", *extra: str) -> list[str]:
    return ["evaluate", "--pretrained", model, "--dataset", dataset, "--method", "lora", "--mask", mask, "--preset", "quick", "--out", out, "--device", "cpu", "--json", *extra]


@pytest.fixture
def model(quick_model_dir) -> Path:
    return Path(quick_model_dir[0])


# ------------------------------------------------------------- 1. metadata.jsonl rows and keys


@pytest.mark.parametrize("row, kind", [("[1, 2]", "a list"), ("7", "a number"), ('"im1.png"', "a string"), ("null", "null")])
def test_jsonl_row_that_is_not_an_object(tmp_path, row, kind):
    names = _images(tmp_path / "d", 3, captions=False)
    lines = ['{"file_name": "%s", "text": "a"}' % names[0], row, '{"file_name": "%s", "text": "c"}' % names[2]]
    (tmp_path / "d" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MemrlError, match=rf"metadata.jsonl, line 2: expected a JSON object.*got {kind}"):
        load_dataset(tmp_path / "d")


@pytest.mark.parametrize("missing, line", [("file_name", 3), ("text", 3), ("text", 1)])
def test_jsonl_row_missing_a_key(tmp_path, missing, line):
    names = _images(tmp_path / "d", 3, captions=False)
    rows = [{"file_name": n, "text": f"caption {i}"} for i, n in enumerate(names)]
    del rows[line - 1][missing]
    (tmp_path / "d" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MemrlError, match=rf"metadata.jsonl, line {line}: missing"):
        load_dataset(tmp_path / "d")


def test_jsonl_value_that_is_not_a_string(tmp_path):
    names = _images(tmp_path / "d", 2, captions=False)
    (tmp_path / "d" / "metadata.jsonl").write_text('{"file_name": "%s", "text": "a"}\n{"file_name": "%s", "text": ["b"]}\n' % tuple(names))
    with pytest.raises(MemrlError, match=r"line 2: 'text' \(the caption\) must be a string"):
        load_dataset(tmp_path / "d")


def test_jsonl_bad_row_through_the_cli(capsys, tmp_path, model):
    names = _images(tmp_path / "d", 3, captions=False)
    (tmp_path / "d" / "metadata.jsonl").write_text('{"file_name": "%s", "text": "a"}\n\n[3]\n' % names[0])
    cli_error(capsys, evaluate_argv(model, tmp_path / "d", tmp_path / "out"), tmp_path / "out", "metadata.jsonl, line 3", "JSON object")


# ------------------------------------------------------------------------- 2. non-UTF-8 text

LATIN1 = "caf\xe9 au lait".encode("latin-1")  # 0xe9 alone is not UTF-8


@pytest.mark.parametrize("where", ["txt", "jsonl", "metadata.csv", "sheet"])
def test_caption_file_that_is_not_utf8(tmp_path, where):
    names = _images(tmp_path / "d", 3, captions=where == "txt")
    if where == "txt":
        bad = tmp_path / "d" / "im1.txt"
        bad.write_bytes(LATIN1)
        spec, line = tmp_path / "d", 1
    elif where == "jsonl":
        bad = tmp_path / "d" / "metadata.jsonl"
        bad.write_bytes(b"".join(b'{"file_name": "%s", "text": "%s"}\n' % (n.encode(), LATIN1) for n in names))
        spec, line = tmp_path / "d", 1
    elif where == "metadata.csv":
        bad = tmp_path / "d" / "metadata.csv"
        bad.write_bytes(b"file_name,text\n" + b"".join(b"%s,%s\n" % (n.encode(), b"ok" if i < 2 else LATIN1) for i, n in enumerate(names)))
        spec, line = tmp_path / "d", 4
    else:
        bad = tmp_path / "sheet.csv"
        bad.write_bytes(b"path,caption\n" + b"".join(b"d/%s,%s\n" % (n.encode(), LATIN1) for n in names))
        spec, line = bad, 2
    with pytest.raises(MemrlError, match=rf"{bad.name} is not UTF-8 text \(byte 0xe9 on line {line}\)"):
        load_dataset(spec)


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    """Excel writes a BOM before the header; it must not hide the ``path`` column."""
    names = _images(tmp_path / "d", 3, captions=False)
    text = "path,caption\n" + "".join(f"d/{n},caf\u00e9 {i}\n" for i, n in enumerate(names))
    (tmp_path / "s.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    ds = load_dataset(tmp_path / "s.csv")
    assert sorted(ds.train.captions + ds.heldout.captions) == ["caf\u00e9 0", "caf\u00e9 1", "caf\u00e9 2"]


def test_non_utf8_caption_through_the_cli(capsys, tmp_path, model):
    _images(tmp_path / "d", 3)
    (tmp_path / "d" / "im2.txt").write_bytes(LATIN1)
    cli_error(capsys, evaluate_argv(model, tmp_path / "d", tmp_path / "out"), tmp_path / "out", "im2.txt", "not UTF-8")


# ------------------------------------------------------------------------ 3. corrupt images


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gray()).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gray((64, 64))).save(buf, "JPEG")
    return buf.getvalue()


CORRUPT = {
    "half.png": lambda: _png_bytes()[: len(_png_bytes()) // 2],
    "header_only.png": lambda: _png_bytes()[:40],
    "random.png": lambda: np.random.RandomState(1).bytes(300),
    "empty.png": lambda: b"",
    "text.png": lambda: b"not an image at all",
    "half.jpg": lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2],
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_image_names_the_file(tmp_path, name):
    _images(tmp_path / "d", 3)
    (tmp_path / "d" / name).write_bytes(CORRUPT[name]())
    (tmp_path / "d" / name).with_suffix(".txt").write_text("a caption")
    with pytest.raises(MemrlError, match=rf"cannot read image .*{name}"):
        load_dataset(tmp_path / "d")


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    """A picture beyond ``Image.MAX_IMAGE_PIXELS`` raises DecompressionBombError, not an OSError."""
    Image.fromarray(_gray((64, 64))).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MemrlError, match=r"cannot read image .*big.png"):
        load_image(tmp_path / "big.png", 16, 1)


def test_corrupt_image_through_the_cli(capsys, tmp_path, model):
    _images(tmp_path / "d", 3)
    (tmp_path / "d" / "im1.png").write_bytes(_png_bytes()[:100])
    cli_error(capsys, evaluate_argv(model, tmp_path / "d", tmp_path / "out"), tmp_path / "out", "cannot read image", "im1.png")


# ----------------------------------------------------------------- 4. sizes and image modes


def _save_mode(folder: Path, name: str, mode: str, g: np.ndarray) -> Path:
    """``g`` (uint8 grey levels) saved as a picture of ``mode`` that shows the same grey levels."""
    rgb = Image.fromarray(np.dstack([g, g, g]))
    if mode == "L":
        im = Image.fromarray(g)
    elif mode == "RGB":
        im = rgb
    elif mode == "RGBA":  # opaque: alpha must not change anything
        im = Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]))
    elif mode == "LA":
        im = Image.fromarray(g).convert("LA")
    elif mode == "P":
        im = Image.fromarray(g).convert("P")  # (L -> P keeps the 256 grey levels exactly)
    elif mode == "I;16":
        im = Image.fromarray(g.astype(np.uint16) * 257)  # 16-bit: 0..65535
    elif mode == "I":
        im = Image.fromarray(g.astype(np.int32) * 257)  # 32-bit integer holding 16-bit data
    elif mode == "F":
        im = Image.fromarray(g.astype(np.float32) / 255.0)  # float in 0..1
    elif mode == "CMYK":
        im = rgb.convert("CMYK")
    else:
        raise AssertionError(mode)
    assert im.mode == mode, (mode, im.mode)
    path = folder / name
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == mode, f"{name} reads back as {back.mode}"
    return path


MODES = {"L": "l.png", "RGB": "rgb.png", "RGBA": "rgba.png", "LA": "la.png", "P": "p.png", "I;16": "i16.png", "I": "i32.tif", "F": "float.tif", "CMYK": "cmyk.tif"}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_loads_like_its_grayscale_twin(tmp_path, mode, channels):
    """The same grey levels in any mode give the same tensor (a 16-bit picture used to turn white)."""
    g = _gray((16, 16))
    ref = load_image(_save_mode(tmp_path, "ref.png", "L", g), 16, channels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = load_image(_save_mode(tmp_path, MODES[mode], mode, g), 16, channels)
    assert x.shape == (channels, 16, 16) and x.dtype == torch.float32
    assert float((x - ref).abs().max()) <= 2.5 / 127.5, f"{mode}: differs from the grayscale picture"


def test_bilevel_and_transparent_pictures(tmp_path):
    g = _gray((16, 16))
    Image.fromarray(g).convert("1").save(tmp_path / "one.png")
    x = load_image(tmp_path / "one.png", 16, 1)
    assert set(torch.unique(x).tolist()) <= {-1.0, 1.0}
    # fully transparent pixels are composited on white, whatever colour they store
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:8, :, 3] = 255  # top half: opaque black; bottom half: transparent black
    Image.fromarray(rgba).save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png", 16, 3)
    assert torch.all(x[:, :8] == -1) and torch.all(x[:, 8:] == 1)
    # a palette picture with a transparent index (used to warn and keep the stored colour)
    Image.fromarray(rgba).convert("P").save(tmp_path / "pt.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "pt.png", 16, 1)


def test_float_picture_out_of_range_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), -3.0, np.float32)).save(tmp_path / "neg.tif")
    with pytest.raises(MemrlError, match=r"cannot read image .*neg.tif: .*expected 0..1"):
        load_image(tmp_path / "neg.tif", 16, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_of_mixed_sizes_and_modes(tmp_path, channels):
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = [(16, 16), (40, 24), (9, 31), (64, 64), (20, 20), (33, 17), (16, 48), (25, 25), (12, 12)]
    for (mode, name), size in zip(sorted(MODES.items()), sizes):
        path = _save_mode(folder, name, mode, _gray(size))
        path.with_suffix(".txt").write_text(f"a {mode} picture {size}")
    Image.fromarray(_gray((30, 10))).convert("1").save(folder / "one.png")
    (folder / "one.txt").write_text("a bilevel picture")
    ds = load_dataset(folder, image_size=16, channels=channels)
    assert len(ds.train) + len(ds.heldout) == len(MODES) + 1
    for split in (ds.train, ds.heldout):
        assert split.images.shape[1:] == (channels, 16, 16)
        assert split.images.min() >= -1 and split.images.max() <= 1
        assert split.images.std() > 0.1  # not saturated to one value


# ---------------------------------------------------------------------------- 5. empty captions


@pytest.mark.parametrize("where", ["sheet", "metadata.csv", "jsonl", "txt", "whitespace txt"])
def test_empty_caption_is_refused(tmp_path, where):
    names = _images(tmp_path / "d", 3, captions=where.endswith("txt"))
    if where == "sheet":
        (tmp_path / "s.csv").write_text("path,caption\n" + f"d/{names[0]},a\nd/{names[1]},   \nd/{names[2]},c\n")
        spec, pattern = tmp_path / "s.csv", r"s.csv, line 3: the caption \('caption'\) of d/im1.png is empty"
    elif where == "metadata.csv":
        (tmp_path / "d" / "metadata.csv").write_text("file_name,text\n" + f"{names[0]},a\n{names[1]},b\n{names[2]},\n")
        spec, pattern = tmp_path / "d", r"metadata.csv, line 4: the caption .* is empty"
    elif where == "jsonl":
        (tmp_path / "d" / "metadata.jsonl").write_text('{"file_name": "%s", "text": "a"}\n{"file_name": "%s", "text": " \\t "}\n' % tuple(names[:2]))
        spec, pattern = tmp_path / "d", r"metadata.jsonl, line 2: the caption .* is empty"
    else:
        (tmp_path / "d" / "im2.txt").write_text("" if where == "txt" else " \n\t\n")
        spec, pattern = tmp_path / "d", r"caption file .*im2.txt is empty"
    with pytest.raises(MemrlError, match=pattern):
        load_dataset(spec)


def test_empty_caption_through_the_cli(capsys, tmp_path, model):
    names = _images(tmp_path / "d", 3, captions=False)
    (tmp_path / "s.csv").write_text("path,caption\n" + "".join(f"d/{n},{'' if i == 1 else 'x'}\n" for i, n in enumerate(names)))
    cli_error(capsys, evaluate_argv(model, tmp_path / "s.csv", tmp_path / "out"), tmp_path / "out", "s.csv, line 3", "empty")


def test_unquoted_comma_in_a_caption(tmp_path):
    names = _images(tmp_path / "d", 2, captions=False)
    (tmp_path / "s.csv").write_text("path,caption\n" + f"d/{names[0]},a cat\nd/{names[1]},a dog, sitting\n")
    with pytest.raises(MemrlError, match=r"s.csv, line 3 has more fields than the header .*double quotes"):
        load_dataset(tmp_path / "s.csv")


# ------------------------------------------------------------- 6. no images, missing images


def test_folder_without_images_through_the_cli(capsys, tmp_path, model):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("captions but no pictures")
    cli_error(capsys, evaluate_argv(model, tmp_path / "d", tmp_path / "out"), tmp_path / "out", str(tmp_path / "d"), "is empty")


def test_csv_with_missing_images_through_the_cli(capsys, tmp_path, model):
    _images(tmp_path / "d", 2, captions=False)
    (tmp_path / "s.csv").write_text("path,caption\nd/im0.png,a\nd/gone.png,b\n")
    cli_error(capsys, evaluate_argv(model, tmp_path / "s.csv", tmp_path / "out"), tmp_path / "out", "s.csv, line 3", "gone.png", "does not exist")


# ----------------------------------------------------------- 7. and 8. training config types


BAD_CONFIGS = {
    "horizon string": ("env: {horizon: '2'}", ["[env]", "'horizon'", "must be an integer", "'2'"]),
    "total_timesteps string": ("train: {total_timesteps: '8'}", ["[train]", "'total_timesteps'", "must be an integer"]),
    "total_timesteps bool": ("train: {total_timesteps: true}", ["[train]", "'total_timesteps'", "must be an integer"]),
    "datasets string": ("env: {datasets: inverted}", ["[env]", "'datasets'", "must be a list of strings", "[inverted]"]),
    "lr_scales letters": ("env: {lr_scales: [a]}", ["[env]", "'lr_scales[0]'", "must be a number"]),
    "finetune steps string": ("env: {eval_overrides: {finetune: {steps: x}}}", ["[env]", "'eval_overrides.finetune.steps'", "must be an integer"]),
    "finetune unknown key": ("env: {eval_overrides: {finetune: {stepz: 3}}}", ["[env]", "stepz", "eval_overrides.finetune", "valid:", "n_repeats"]),
    "finetune not a mapping": ("env: {eval_overrides: {finetune: 3}}", ["[env]", "'eval_overrides.finetune'", "must be a mapping"]),
    "eval unknown key": ("env: {eval_overrides: {gens: 3}}", ["[env]", "gens", "valid:", "gens_per_prompt"]),
    "eval tuple item": ("env: {eval_overrides: {noise_norm_timesteps: [100, x]}}", ["[env]", "'eval_overrides.noise_norm_timesteps[1]'", "integer"]),
    "eval_overrides string": ("env: {eval_overrides: quick}", ["[env]", "'eval_overrides'", "must be a mapping"]),
    "reward unknown key": ("env: {reward: {lamb: 1}}", ["[env]", "lamb", "valid:", "mem_metric"]),
    "reward type": ("env: {reward: {mu: lots}}", ["[env]", "'reward.mu'", "must be a number"]),
    "reward negative lam": ("env: {reward: {lam: -1}}", ["[env]", "'lam'", ">= 0"]),
    "reward negative mu": ("env: {eval_overrides: {reward: {mu: -0.5}}}", ["[env]", "'mu'", ">= 0"]),
    "cache number": ("env: {cache: 5}", ["[env]", "'cache'", "must be a string or null"]),
    "ppo unknown": ("ppo: {n_step: 8}", ["[ppo]", "n_step", "valid:", "n_steps", "learning_rate"]),
    "ppo reserved": ("ppo: {seed: 1}", ["[ppo]", "seed", "train.seed", "valid:"]),
    "ppo not a mapping": ("ppo: [1, 2]", ["[ppo]", "mapping"]),
    "train not a mapping": ("train: 5", ["[train]", "mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_train_config_with_wrong_types(capsys, tmp_path, case):
    text, needles = BAD_CONFIGS[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text + "\n")
    run = tmp_path / "run"
    cli_error(capsys, ["train", "--config", cfg, "--out", run, "--no-progress"], run, str(cfg), *needles)
    assert not run.exists()


def test_config_types_are_checked_and_losslessly_coerced():
    from memrl.agents.config import TrainConfig
    from memrl.envs.config import EnvConfig
    from memrl.utils.config import ConfigError

    cfg = TrainConfig.from_dict({"env": {"lr_scales": [1, 2], "reward": {"lam": 2}, "eval_overrides": {"guidance_scale": 3, "noise_norm_timesteps": [100, 200]}}})
    assert cfg.env.lr_scales == [1.0, 2.0] and all(type(s) is float for s in cfg.env.lr_scales)
    ev = cfg.env.eval_config()
    assert type(ev.reward.lam) is float and ev.reward.lam == 2.0
    assert type(ev.guidance_scale) is float and ev.noise_norm_timesteps == (100, 200)
    assert EnvConfig(pretrained=Path("runs/x")).pretrained == "runs/x"  # a path is a string, losslessly
    with pytest.raises(ConfigError, match=r"^env config: 'horizon' must be an integer, got '2'"):
        EnvConfig(horizon="2")
    # the checker's error survives pickling (SubprocVecEnv workers send exceptions back)
    import pickle

    try:
        EnvConfig(horizon=1.5)
    except ConfigError as exc:
        back = pickle.loads(pickle.dumps(exc))
        assert str(back) == str(exc) and back.problem == exc.problem


@dataclasses.dataclass
class _Inner:
    k: int = 1


@dataclasses.dataclass
class _Every:
    """One field per annotation the checker supports (module level: get_type_hints resolves names here)."""

    i: int = 0
    f: float = 0.0
    s: str = ""
    b: bool = False
    o: float | None = None
    li: list[int] = dataclasses.field(default_factory=list)
    t: tuple[float, ...] = ()
    pair: tuple[int, str] = (0, "")
    d: dict = dataclasses.field(default_factory=dict)
    ds: dict[str, int] = dataclasses.field(default_factory=dict)
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_check_fields_supports_the_documented_annotations():
    from memrl.utils.config import ConfigError, check_fields, describe

    C = _Every
    c = C(i=3, f=2, s=Path("p"), b=True, o=1, li=(1, 2), t=[1, 2.5], pair=[1, "a"], d={"x": [1]}, ds={"a": 1})
    check_fields(c, "test")
    assert (c.f, c.s, c.o, c.li, c.t, c.pair) == (2.0, "p", 1.0, [1, 2], (1.0, 2.5), (1, "a"))
    assert type(c.f) is float and type(c.o) is float and isinstance(c.t, tuple)
    bad = [
        ("i", True, "'i' must be an integer, got True"),
        ("i", 1.0, "'i' must be an integer"),
        ("f", "1e-3", "'f' must be a number, got '1e-3' (a string); write the number without quotes"),
        ("s", 3, "'s' must be a string"),
        ("b", "yes", "'b' must be true or false"),
        ("o", "x", "'o' must be a number"),
        ("li", "ab", "'li' must be a list of integers"),
        ("li", [1, "2"], "'li[1]' must be an integer"),
        ("t", [1, None], "'t[1]' must be a number"),
        ("pair", [1, "a", 3], "'pair' must be a list of (an integer, a string) (2 items)"),
        ("d", [1], "'d' must be a mapping"),
        ("ds", {"a": "b"}, "'ds.a' must be an integer"),
        ("inner", {"k": 1}, "'inner' must be a mapping of keys k"),
    ]
    for name, value, message in bad:
        with pytest.raises(ConfigError, match=f"^test: {re.escape(message)}"):
            check_fields(dataclasses.replace(C(), **{name: value}), "test")
    assert describe(list[str] | None) == "a list of strings or null"


def test_valid_config_files_still_load():
    from memrl.agents.config import TrainConfig

    root = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("digits.yaml", "agent.yaml", "amortised.yaml"):
        cfg = TrainConfig.load(root / name)
        assert cfg.env.eval_config().reward.lam == 1.0
    amortised = TrainConfig.load(root / "amortised.yaml")
    assert len(amortised.env.datasets) >= 12 and amortised.env.preset == "search"
    assert all(d.startswith("family:") and int(d.split(":")[1]) < 64 for d in amortised.env.datasets)  # training members only
    # the published SD 1.5 / MIMIC-CXR settings (the paths are the user's: only the config is checked)
    mimic = TrainConfig.load(root / "sd15_mimic.yaml")
    ft = mimic.env.eval_config().finetune
    assert (mimic.env.resolution, mimic.env.caption_column, mimic.env.granularity) == (224, "impression", "attention")
    assert (ft.steps, ft.batch_size, ft.n_repeats, ft.mixed_precision) == (3000, 128, 50, "fp16")


# ---------------------------------------------------------------------- 9. reward weights


@pytest.mark.parametrize("field, value", [("lam", -1.0), ("mu", -0.1), ("lam", float("nan")), ("mem_ref_floor", 0.0)])
def test_reward_config_refuses_negative_weights(field, value):
    from memrl.evaluation.config import RewardConfig

    with pytest.raises(MemrlError, match=rf"reward config: '{field}' must be"):
        RewardConfig(**{field: value})


@pytest.mark.parametrize("flag", ["--lam", "--mu"])
def test_evaluate_negative_reward_weight(capsys, tmp_path, model, flag):
    out = tmp_path / "out"
    cli_error(capsys, evaluate_argv(model, "inverted", out, "all", flag, "-1"), out, f"'{flag[2:]}' must be >= 0", "got -1")


# ------------------------------------------------------------- 10. --resume with other settings


def _fake_run(tmp_path: Path, **env) -> tuple[Path, dict]:
    """A run folder as ``memrl train`` leaves it (just its config.yaml) and the config it came from."""
    from memrl.agents.config import TrainConfig

    d = {"env": {"pretrained": str(tmp_path / "model"), "datasets": ["inverted", "thick"], "preset": "quick", **env}, "ppo": {"n_steps": 4}, "train": {"total_timesteps": 8}}
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig.from_dict(d)
    cfg.env.cache = str(run / "evaluations.sqlite")  # what prepare_run fills in
    cfg.save(run / "config.yaml")
    (run / "evaluations.csv").write_text("step\n")
    return run, d


@pytest.fixture
def no_training(monkeypatch) -> list:
    """Replace the training loop: a resume that passes the checks only records its call."""
    import memrl.agents.train

    calls = []
    monkeypatch.setattr(memrl.agents.train, "train", lambda cfg, out, **kw: calls.append((out, kw)) or {})
    return calls


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"env": {"horizon": 2}}, ["env.horizon is 2", "but 1 in the run"]),
        ({"env": {"datasets": ["inverted"]}}, ["env.datasets"]),
        ({"ppo": {"n_steps": 8}}, ["ppo.n_steps is 8"]),
        ({"train": {"total_timesteps": 16}}, ["train.total_timesteps", "--total-timesteps"]),
    ],
)
def test_resume_with_a_different_config(capsys, tmp_path, no_training, change, needles):
    run, d = _fake_run(tmp_path)
    for section, values in change.items():
        d[section].update(values)
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump(d))
    cli_error(capsys, ["train", "--resume", "--out", run, "--config", cfg, "--no-progress"], run, "cannot resume", str(run / "config.yaml"), *needles)
    assert not no_training


def test_resume_with_a_different_pretrained(capsys, tmp_path, no_training):
    run, _ = _fake_run(tmp_path)
    cli_error(capsys, ["train", "--resume", "--out", run, "--pretrained", tmp_path / "other-model"], run, "--pretrained", "other-model", "env.pretrained")
    assert not no_training


def test_resume_with_the_same_settings_is_accepted(capsys, tmp_path, no_training, monkeypatch):
    run, d = _fake_run(tmp_path)
    cfg = tmp_path / "same.yaml"
    cfg.write_text(yaml.safe_dump(d))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "--out", str(run), "--config", str(cfg), "--no-progress"]) == 0
    assert main(["train", "--resume", "--out", str(run), "--pretrained", "./model/", "--no-progress"]) == 0
    d["train"]["total_timesteps"] = 4  # a different length is fine when --total-timesteps sets it
    cfg.write_text(yaml.safe_dump(d))
    assert main(["train", "--resume", "--out", str(run), "--config", str(cfg), "--total-timesteps", "12", "--no-progress"]) == 0
    assert len(no_training) == 3 and all(kw["resume"] for _, kw in no_training)


# ------------------------------------------------------------------------------- 11. masks


@pytest.mark.parametrize("mask, needles", [("101", ["'101' has 3 bits, expected"]), ("no_such_unit", ["unknown mask unit", "no_such_unit", "valid units"])])
def test_evaluate_mask_that_does_not_fit(capsys, tmp_path, model, mask, needles):
    out = tmp_path / "out"
    cli_error(capsys, evaluate_argv(model, "inverted", out, mask), out, *needles)
