"""Crash-safe output: complete or absent, never half-written; normal file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from memrl.utils.io import atomic_dir, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_atomic_text_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "r.json"
    write_json_atomic(p, {"x": 1})
    write_text_atomic(p, "second\n")
    assert p.read_text() == "second\n"
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_atomic_bytes_write_whole_file_and_text_is_utf8(tmp_path):
    p = tmp_path / "fig.png"
    write_bytes_atomic(p, b"\x89PNG\x00\xff")
    assert p.read_bytes() == b"\x89PNG\x00\xff"
    write_text_atomic(p, "régret\n")
    assert p.read_bytes() == "régret\n".encode("utf-8")
    assert [f.name for f in tmp_path.iterdir()] == ["fig.png"]


def test_atomic_bytes_leave_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "fig.png"
    write_bytes_atomic(p, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old" and [f.name for f in tmp_path.iterdir()] == ["fig.png"]


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
