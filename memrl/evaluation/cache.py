"""Persistent evaluation cache: SQLite in WAL mode, keyed by a content hash of the request.

Evaluations are expensive, so an identical request (same base model and feature network, dataset,
method, mask, learning rate, budget, seed, metric settings, library versions, device and dtype)
is answered from here. WAL mode and a busy timeout make it safe for several processes (e.g.
SubprocVecEnv workers) at once.

Several workers asking for the same request (typically the reference run, which every first
step needs) compute it once: :meth:`EvalCache.get_or_compute` *claims* the request before
computing it. The claim is a lease: it expires after ``lease_seconds``, and at once when its
owner was a process on this machine that no longer runs (a worker killed with ``kill -9``), so a
dead worker never blocks the others. The others wait for the owner's result.

Failures are recorded with their error. A *deterministic* failure (a diverged fine-tune: the
same request diverges again) is answered from here as the same failure, so ``--resume`` does not
pay for it twice; any other failure is retried by the next identical request. A failure never
overwrites a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from memrl.errors import EvaluationFailed, MemrlError

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
#: Columns added after the first schema (older cache files get them on open).
EXTRA_COLUMNS = {
    "owner": "TEXT",  # host:pid of the process holding a 'running' claim
    "lease_until": "REAL",  # when that claim expires
    "computations": "INTEGER DEFAULT 0",  # how often a result was computed for this key (should be 1)
    "deterministic": "INTEGER DEFAULT 0",  # a failure that would repeat for the same request
}


def request_key(request: dict[str, Any]) -> str:
    """Stable content hash of a JSON-serialisable request."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def this_owner() -> str:
    """``host:pid`` of the calling process: who holds a claim."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer runs."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class EvalCache:
    """A small key/value store of evaluation results (``status`` ``ok``, ``failed`` or ``running``)."""

    def __init__(self, path: str | Path, timeout: float = 60.0, lease_seconds: float = 4 * 3600.0, poll_seconds: float = 0.5) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.lease_seconds = float(lease_seconds)
        self.poll_seconds = float(poll_seconds)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SCHEMA)
            have = {row[1] for row in con.execute("PRAGMA table_info(evaluations)")}
            for col, decl in EXTRA_COLUMNS.items():
                if col not in have:
                    try:
                        con.execute(f"ALTER TABLE evaluations ADD COLUMN {col} {decl}")
                    except sqlite3.OperationalError:  # another process added it first
                        pass

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return con

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> dict | None:
        """The cached result for ``key``, or ``None`` (missing, running or failed)."""
        con = self._connect()
        try:
            row = con.execute("SELECT result FROM evaluations WHERE key=? AND status='ok'", (key,)).fetchone()
        finally:
            con.close()
        return json.loads(row[0]) if row else None

    def failure(self, key: str) -> tuple[str, bool] | None:
        """``(error, deterministic)`` of a recorded failure of ``key``, or ``None``."""
        con = self._connect()
        try:
            row = con.execute("SELECT error, deterministic FROM evaluations WHERE key=? AND status='failed'", (key,)).fetchone()
        finally:
            con.close()
        return (str(row[0]), bool(row[1])) if row else None

    def status(self, key: str) -> str | None:
        con = self._connect()
        try:
            row = con.execute("SELECT status FROM evaluations WHERE key=?", (key,)).fetchone()
        finally:
            con.close()
        return row[0] if row else None

    def computations(self, key: str) -> int:
        """How many times a result was computed and stored for ``key`` (1 when nothing was duplicated)."""
        con = self._connect()
        try:
            row = con.execute("SELECT computations FROM evaluations WHERE key=?", (key,)).fetchone()
        finally:
            con.close()
        return int(row[0] or 0) if row else 0

    def rows(self) -> list[dict]:
        """Every entry (key, status, error, computations), for reports and tests."""
        con = self._connect()
        try:
            cur = con.execute("SELECT key, status, error, seconds, computations, deterministic FROM evaluations")
            return [dict(zip(("key", "status", "error", "seconds", "computations", "deterministic"), r)) for r in cur.fetchall()]
        finally:
            con.close()

    def __len__(self) -> int:
        con = self._connect()
        try:
            return int(con.execute("SELECT COUNT(*) FROM evaluations WHERE status='ok'").fetchone()[0])
        finally:
            con.close()

    # ------------------------------------------------------------------ writes
    def put(self, key: str, request: dict, result: dict, seconds: float) -> None:
        """Store a result (and count the computation); a result always replaces a claim or a failure."""
        con = self._connect()
        try:
            con.execute(
                "INSERT INTO evaluations(key,status,request,result,error,seconds,created,owner,lease_until,computations,deterministic) "
                "VALUES(?,?,?,?,?,?,?,NULL,NULL,1,0) "
                "ON CONFLICT(key) DO UPDATE SET status='ok', request=excluded.request, result=excluded.result, error=NULL, "
                "seconds=excluded.seconds, created=excluded.created, owner=NULL, lease_until=NULL, "
                "computations=COALESCE(evaluations.computations, 0) + 1, deterministic=0",
                (key, "ok", json.dumps(request, default=str), json.dumps(result, default=float), None, seconds, time.time()),
            )
        finally:
            con.close()

    def put_failed(self, key: str, request: dict, error: str, deterministic: bool = False) -> None:
        """Record a failure without ever overwriting a successful result."""
        con = self._connect()
        try:
            con.execute(
                "INSERT INTO evaluations(key,status,request,result,error,seconds,created,owner,lease_until,deterministic) "
                "VALUES(?,?,?,?,?,?,?,NULL,NULL,?) "
                "ON CONFLICT(key) DO UPDATE SET status='failed', error=excluded.error, created=excluded.created, "
                "owner=NULL, lease_until=NULL, deterministic=excluded.deterministic WHERE evaluations.status!='ok'",
                (key, "failed", json.dumps(request, default=str), None, error, None, time.time(), int(bool(deterministic))),
            )
        finally:
            con.close()

    def claim(self, key: str, request: dict, owner: str | None = None) -> bool:
        """Try to take the right to compute ``key``; ``False`` while another live owner holds it.

        A claim can be taken when the key is absent, failed (retry), or 'running' under a lease
        that expired or whose owner process is dead. A stored result is never claimed.
        """
        owner = owner or this_owner()
        now = time.time()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT status, owner, lease_until FROM evaluations WHERE key=?", (key,)).fetchone()
            free = (
                row is None
                or row[0] == "failed"
                or (row[0] == "running" and (row[1] == owner or (row[2] or 0) < now or _owner_is_dead(row[1])))
            )
            if free:
                con.execute(
                    "INSERT INTO evaluations(key,status,request,result,error,seconds,created,owner,lease_until) "
                    "VALUES(?,?,?,NULL,NULL,NULL,?,?,?) "
                    "ON CONFLICT(key) DO UPDATE SET status='running', owner=excluded.owner, lease_until=excluded.lease_until, error=NULL",
                    (key, "running", json.dumps(request, default=str), now, owner, now + self.lease_seconds),
                )
            con.execute("COMMIT")
            return free
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def release(self, key: str, owner: str | None = None) -> None:
        """Drop a 'running' claim of ``owner`` (e.g. after an interrupt), leaving results and failures alone."""
        con = self._connect()
        try:
            con.execute("DELETE FROM evaluations WHERE key=? AND status='running' AND owner=?", (key, owner or this_owner()))
        finally:
            con.close()

    # ------------------------------------------------------------------ the one entry point
    def get_or_compute(self, key: str, request: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """``(result, computed_here)``: the stored result, or ``compute()`` run once across processes.

        While another live process holds the claim, wait for its result. A deterministic recorded
        failure is raised again as :class:`EvaluationFailed` without recomputing; any exception of
        ``compute`` is recorded (deterministic when it is an ``EvaluationFailed`` that says so)
        and re-raised.
        """
        while True:
            hit = self.get(key)
            if hit is not None:
                return hit, False
            failed = self.failure(key)
            if failed is not None and failed[1]:
                raise EvaluationFailed(f"{failed[0]} (recorded earlier for this request)", deterministic=True)
            if self.claim(key, request):
                break
            time.sleep(self.poll_seconds)
        t0 = time.time()
        try:
            result = compute()
        except MemrlError:  # the caller's mistake, not this request's outcome: record nothing
            self.release(key)
            raise
        except EvaluationFailed as exc:
            self.put_failed(key, request, f"{type(exc).__name__}: {exc}", deterministic=exc.deterministic)
            raise
        except Exception as exc:
            self.put_failed(key, request, f"{type(exc).__name__}: {exc}", deterministic=False)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: let others take over at once
            self.release(key)
            raise
        self.put(key, request, result, time.time() - t0)
        return result, True
