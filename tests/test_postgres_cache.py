"""The evaluation cache by URL: PostgreSQL behaves as SQLite does; bad locations are one clear line.

The claim / lease / failure tests of tests/test_cache.py run on PostgreSQL too (``cache_location``);
here: what only a server backend has (a URL, a password never shown, an unreachable server), the
forms of a location, and a lookup-table export from a PostgreSQL cache.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from memrl.errors import MemrlError
from memrl.evaluation.cache import EvalCache, PostgresBackend, SQLiteBackend, hide_password, open_backend, request_key


def test_locations_name_their_backend(tmp_path):
    assert isinstance(open_backend(tmp_path / "a.sqlite"), SQLiteBackend)
    assert open_backend(f"sqlite:///{tmp_path}/b.sqlite").path == tmp_path / "b.sqlite"
    assert open_backend("sqlite:///runs/c.sqlite").path.as_posix() == "runs/c.sqlite"  # relative, as in SQLAlchemy
    assert isinstance(open_backend("postgresql://u@h:5432/db"), PostgresBackend)
    assert open_backend("postgresql+psycopg2://u@h/db").dsn == "postgresql://u@h/db"
    for bad in ("mysql://u@h/db", "sqlite://", ""):
        with pytest.raises(MemrlError, match=r"env\.cache / --cache.*expected an SQLite file path, sqlite:///PATH or postgresql://"):
            EvalCache(bad)
    # the sqlite:/// form stores the same file the path does
    c = EvalCache(f"sqlite:///{tmp_path}/d.sqlite")
    c.put("k", {}, {"v": 1}, 0.0)
    assert EvalCache(tmp_path / "d.sqlite").get("k") == {"v": 1}


def test_unreachable_server_is_one_line_without_the_password():
    assert hide_password("postgresql://me:s3cret@h:1/db") == "postgresql://me:***@h:1/db"
    with pytest.raises(MemrlError) as err:
        EvalCache("postgresql://me:s3cret@127.0.0.1:1/db", timeout=2)
    msg = str(err.value)
    assert "\n" not in msg and "s3cret" not in msg
    assert msg.startswith("cannot open the evaluation cache (env.cache / --cache) postgresql://me:***@127.0.0.1:1/db: OperationalError")
    assert "expected an SQLite file path" in msg


def _put_many(url: str, start: int, n: int) -> None:
    c = EvalCache(url)
    for i in range(start, start + n):
        c.put(request_key({"i": i}), {"i": i}, {"v": i}, 0.0)


def test_postgres_cache_shared_by_processes_and_survives_reopen(postgres_url):
    import postgres_server

    url = postgres_server.new_database(postgres_url, "shared")
    EvalCache(url)
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_put_many, args=(url, s, 20)) for s in (0, 20)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    c = EvalCache(url)  # the schema exists: opening again changes nothing
    assert len(c) == 40 and c.get(request_key({"i": 33})) == {"v": 33}
    assert c.computations(request_key({"i": 33})) == 1
    # timestamps keep sub-second precision (DOUBLE PRECISION, not PostgreSQL's 4-byte REAL)
    t0 = time.time()
    c.put("t", {}, {}, 0.0)
    created = [r for r in c.finished_rows() if r[0] == "t"][0][6]
    assert abs(created - t0) < 5.0


def test_lookup_table_exports_from_postgres(postgres_url, tmp_path):
    import json

    import postgres_server
    from memrl.evaluation.evaluator import EVAL_VERSION
    from memrl.evaluation.lookup import export_table

    url = postgres_server.new_database(postgres_url, "export")
    c = EvalCache(url)
    req = {"eval_version": EVAL_VERSION, "model": "m", "feature_net": "f", "units": ["u0"]}
    c.put(request_key(req), req, {"reward": -1.0}, 1.0)
    meta = {"model": "m", "feature_net": "f", "units": ["u0"], "granularity": "block", "trainable_units": {"lora": ["u0"]}, "pretrained": "p", "image_size": 8, "image_channels": 1}
    assert export_table(url, tmp_path / "t.jsonl", meta) == 1
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["result"] == {"reward": -1.0}
