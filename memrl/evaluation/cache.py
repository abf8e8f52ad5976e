"""Persistent evaluation cache: SQLite in WAL mode, keyed by a content hash of the request.

Evaluations are expensive, so an identical request (same base model, dataset, method, mask,
learning rate, budget, seed and metric settings) is answered from here. WAL mode and a busy
timeout make it safe for several processes (e.g. SubprocVecEnv workers) at once. A failed
evaluation is recorded with its error but never returned as a result: the next identical
request runs again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    seconds REAL,
    created REAL NOT NULL
)
"""


def request_key(request: dict[str, Any]) -> str:
    """Stable content hash of a JSON-serialisable request."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class EvalCache:
    """A small key/value store of evaluation results (``status`` ``ok`` or ``failed``)."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return con

    def get(self, key: str) -> dict | None:
        """The cached result for ``key``, or ``None`` (missing or failed)."""
        con = self._connect()
        try:
            row = con.execute("SELECT result FROM evaluations WHERE key=? AND status='ok'", (key,)).fetchone()
        finally:
            con.close()
        return json.loads(row[0]) if row else None

    def put(self, key: str, request: dict, result: dict, seconds: float) -> None:
        self._write(key, "ok", request, json.dumps(result, default=float), None, seconds)

    def put_failed(self, key: str, request: dict, error: str) -> None:
        """Record a failure without ever overwriting a successful result."""
        con = self._connect()
        try:
            con.execute(
                "INSERT INTO evaluations(key,status,request,result,error,seconds,created) VALUES(?,?,?,?,?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET error=excluded.error, created=excluded.created WHERE status!='ok'",
                (key, "failed", json.dumps(request, default=str), None, error, None, time.time()),
            )
        finally:
            con.close()

    def _write(self, key: str, status: str, request: dict, result: str | None, error: str | None, seconds: float | None) -> None:
        con = self._connect()
        try:
            con.execute(
                "INSERT OR REPLACE INTO evaluations(key,status,request,result,error,seconds,created) VALUES(?,?,?,?,?,?,?)",
                (key, status, json.dumps(request, default=str), result, error, seconds, time.time()),
            )
        finally:
            con.close()

    def status(self, key: str) -> str | None:
        con = self._connect()
        try:
            row = con.execute("SELECT status FROM evaluations WHERE key=?", (key,)).fetchone()
        finally:
            con.close()
        return row[0] if row else None

    def __len__(self) -> int:
        con = self._connect()
        try:
            return int(con.execute("SELECT COUNT(*) FROM evaluations WHERE status='ok'").fetchone()[0])
        finally:
            con.close()
