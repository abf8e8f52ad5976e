"""Crash-safe output: complete or absent, never half-written; normal file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from memrl.utils.io import atomic_dir, write_json_atomic, write_text_atomic


def test_atomic_text_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "r.json"
    write_json_atomic(p, {"x": 1})
    write_text_atomic(p, "second\n")
    assert p.read_text() == "second\n"
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_atomic_dir_keeps_old_content_on_error(tmp_path):
    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(d) as tmp:
        (tmp / "w.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (d / "w.txt").read_text() == "v1"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask
