"""Shared fixtures. Everything runs offline on the CPU; an accidental hub lookup fails at once."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: each worker, and every process a test
    # starts from it, gets one torch thread (two 2-thread torch processes on 2 cores ran 36x
    # slower than one). Set before torch is imported, so its thread pool is sized from it.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def quick_model_dir(tmp_path_factory):
    """A model folder from ``pretrain --quick`` (seconds; structure is real, quality is not)."""
    from memrl.training.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("models") / "quick"
    metrics = pretrain(PretrainConfig.quick(seed=0), out, progress=False)
    return out, metrics


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a throwaway PostgreSQL server (tests/postgres_server.py), or a skip saying why
    none can be started here (no server binaries, no psycopg2)."""
    import postgres_server

    reason = postgres_server.unavailable()
    if reason:
        pytest.skip(reason)
    url, stop = postgres_server.start()
    yield url
    stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def cache_location(request, tmp_path):
    """A fresh, empty evaluation cache location of each backend: an SQLite file, and a new
    database on the test PostgreSQL server (skipped where none can be started)."""
    if request.param == "sqlite":
        return str(tmp_path / "c.sqlite")
    import postgres_server

    server = request.getfixturevalue("postgres_url")
    return postgres_server.new_database(server, f"t_{abs(hash(request.node.nodeid)) % 10**12}")
