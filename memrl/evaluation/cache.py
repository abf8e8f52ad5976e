"""Persistent evaluation cache keyed by a content hash of the request: SQLite, or PostgreSQL.

Evaluations are expensive, so an identical request (same base model and feature network, dataset,
method, mask, learning rate, budget, seed, metric settings, library versions, device and dtype)
is answered from here.

Where it lives (:func:`open_backend`; ``env.cache`` and every ``--cache`` flag take the same forms):

* a file path or ``sqlite:///PATH`` (the default, one machine): SQLite in WAL mode with a busy
  timeout, safe for several processes (e.g. SubprocVecEnv workers) at once;
* ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (several machines, e.g. Ray workers on other
  nodes): one table ``evaluations`` in that database, through psycopg2 (``pip install
  memrl[postgres]``).

The logic below (claims, leases, failures) is written once, in SQL both databases run; a backend
only connects, spells placeholders and column types, and starts the transaction a claim runs in.

Several workers asking for the same request (typically the reference run, which every first
step needs) compute it once: :meth:`EvalCache.get_or_compute` *claims* the request before
computing it. The claim is a lease: it expires after ``lease_seconds``, and at once when its
owner was a process on this machine that no longer runs (a worker killed with ``kill -9``), so a
dead worker never blocks the others. An owner on another machine cannot be checked: its claim
holds until the lease expires. The others wait for the owner's result.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from memrl.errors import EvaluationFailed, MemrlError

#: The forms a cache location takes, for error messages.
CACHE_FORMS = "an SQLite file path, sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
#: The settings a cache location comes from, for error messages.
CACHE_SETTING = "evaluation cache (env.cache / --cache)"

#: ``{real}`` is the backend's double-precision type (PostgreSQL's REAL is 4 bytes: timestamps
#: would lose minutes).
SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    seconds {real},
    created {real} NOT NULL
)
"""
#: Columns added after the first schema (older cache files get them on open).
EXTRA_COLUMNS = {
    "owner": "TEXT",  # host:pid of the process holding a 'running' claim
    "lease_until": "{real}",  # when that claim expires
    "computations": "INTEGER DEFAULT 0",  # how often a result was computed for this key (should be 1)
    "deterministic": "INTEGER DEFAULT 0",  # a failure that would repeat for the same request
}


# ---------------------------------------------------------------------------------------- backends
class SQLiteBackend:
    """One SQLite file in WAL mode (the single-machine default)."""

    real = "REAL"

    def __init__(self, path: str | Path, timeout: float) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.timeout = timeout

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return con

    def query(self, con: sqlite3.Connection, sql: str, params: Sequence = ()) -> list[tuple]:
        return con.execute(sql, tuple(params)).fetchall()

    def create(self, con: sqlite3.Connection) -> None:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(SCHEMA.format(real=self.real))
        have = {row[1] for row in con.execute("PRAGMA table_info(evaluations)")}
        for col, decl in EXTRA_COLUMNS.items():
            if col not in have:
                try:
                    con.execute(f"ALTER TABLE evaluations ADD COLUMN {col} {decl.format(real=self.real)}")
                except sqlite3.OperationalError:  # another process added it first
                    pass

    def begin_claim(self, con: sqlite3.Connection) -> None:
        """A write transaction from the start: no other process writes until it ends."""
        con.execute("BEGIN IMMEDIATE")


class PostgresBackend:
    """A table in a PostgreSQL database every node reaches (psycopg2, autocommit)."""

    real = "DOUBLE PRECISION"
    #: ``pg_advisory_xact_lock`` id that serialises schema creation between processes.
    SCHEMA_LOCK = 0x6D656D726C  # "memrl"

    def __init__(self, url: str, timeout: float) -> None:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise MemrlError(f"{CACHE_SETTING} {hide_password(url)}: PostgreSQL needs psycopg2: pip install 'memrl[postgres]'") from None
        rest = url.split("://", 1)[1]
        self.dsn = "postgresql://" + rest  # postgresql+psycopg2:// (SQLAlchemy's spelling) is the same database
        self.location = hide_password(url)
        self.timeout = timeout

    def connect(self):  # noqa: ANN201 - a psycopg2 connection
        import psycopg2

        con = psycopg2.connect(self.dsn, connect_timeout=max(1, int(min(self.timeout, 30))))
        con.autocommit = True  # like SQLite's isolation_level=None: BEGIN ... COMMIT only where written
        return con

    def query(self, con, sql: str, params: Sequence = ()) -> list[tuple]:  # noqa: ANN001
        with con.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return cur.fetchall() if cur.description is not None else []

    def create(self, con) -> None:  # noqa: ANN001
        self.query(con, "BEGIN")
        try:
            self.query(con, "SELECT pg_advisory_xact_lock(?)", (self.SCHEMA_LOCK,))
            self.query(con, SCHEMA.format(real=self.real))
            for col, decl in EXTRA_COLUMNS.items():
                self.query(con, f"ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS {col} {decl.format(real=self.real)}")
            self.query(con, "COMMIT")
        except BaseException:
            self.query(con, "ROLLBACK")
            raise

    def begin_claim(self, con) -> None:  # noqa: ANN001
        """A transaction that holds the table against other claims and writes until it ends
        (what ``BEGIN IMMEDIATE`` is in SQLite); reads go on."""
        self.query(con, "BEGIN")
        self.query(con, "LOCK TABLE evaluations IN SHARE ROW EXCLUSIVE MODE")


Backend = SQLiteBackend | PostgresBackend


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_url(location: str | Path) -> bool:
    """Whether a cache location is a URL (``scheme://...``) rather than a file path."""
    return isinstance(location, str) and "://" in location


def open_backend(location: str | Path, timeout: float = 60.0) -> Backend:
    """The backend a cache location names: a path or ``sqlite:///PATH`` (SQLite), or
    ``postgresql://...`` / ``postgres://...`` / ``postgresql+psycopg2://...`` (PostgreSQL).
    :class:`MemrlError` for anything else."""
    if not is_url(location):
        if not str(location).strip():
            raise MemrlError(f"{CACHE_SETTING} is empty; expected {CACHE_FORMS}")
        return SQLiteBackend(location, timeout)
    scheme = str(location).split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = str(location)[len("sqlite:///") :] if str(location).lower().startswith("sqlite:///") else ""
        if not path:
            raise MemrlError(f"{CACHE_SETTING} {location}: expected {CACHE_FORMS} (sqlite:///runs/c.sqlite, sqlite:////abs/c.sqlite)")
        return SQLiteBackend(path, timeout)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        return PostgresBackend(str(location), timeout)
    raise MemrlError(f"{CACHE_SETTING} {hide_password(str(location))}: unsupported scheme {scheme!r}; expected {CACHE_FORMS}")


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
    """A small key/value store of evaluation results (``status`` ``ok``, ``failed`` or ``running``).

    ``location``: a file path, ``sqlite:///PATH`` or ``postgresql://...`` (see :func:`open_backend`).
    A bad location or an unreachable server is one :class:`MemrlError` line, here at once.
    """

    def __init__(self, location: str | Path, timeout: float = 60.0, lease_seconds: float = 4 * 3600.0, poll_seconds: float = 0.5) -> None:
        self.backend = open_backend(location, timeout)
        #: The location as given (a path or a URL, password included): what another process opens.
        self.url = str(location)
        self.timeout = timeout
        self.lease_seconds = float(lease_seconds)
        self.poll_seconds = float(poll_seconds)
        with self._session() as con:
            self.backend.create(con)

    @property
    def location(self) -> str:
        """Where the cache lives, for messages (a path, or a URL without its password)."""
        return self.backend.location

    @property
    def path(self) -> Path | None:
        """The SQLite file (``None`` for a database server)."""
        return getattr(self.backend, "path", None)

    def _connect(self):  # noqa: ANN202 - a DB-API connection of the backend
        try:
            return self.backend.connect()
        except Exception as exc:  # an unreachable server, a bad database name, an unwritable folder
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise MemrlError(f"cannot open the {CACHE_SETTING} {self.location}: {type(exc).__name__}: {first} (expected {CACHE_FORMS}, reachable from here)") from None

    @contextmanager
    def _session(self) -> Iterator[Any]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """One statement in its own connection (autocommit); its rows."""
        with self._session() as con:
            return self.backend.query(con, sql, params)

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> dict | None:
        """The cached result for ``key``, or ``None`` (missing, running or failed)."""
        rows = self._query("SELECT result FROM evaluations WHERE key=? AND status='ok'", (key,))
        return json.loads(rows[0][0]) if rows else None

    def failure(self, key: str) -> tuple[str, bool] | None:
        """``(error, deterministic)`` of a recorded failure of ``key``, or ``None``."""
        rows = self._query("SELECT error, deterministic FROM evaluations WHERE key=? AND status='failed'", (key,))
        return (str(rows[0][0]), bool(rows[0][1])) if rows else None

    def status(self, key: str) -> str | None:
        rows = self._query("SELECT status FROM evaluations WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def computations(self, key: str) -> int:
        """How many times a result was computed and stored for ``key`` (1 when nothing was duplicated)."""
        rows = self._query("SELECT computations FROM evaluations WHERE key=?", (key,))
        return int(rows[0][0] or 0) if rows else 0

    def rows(self) -> list[dict]:
        """Every entry (key, status, error, computations), for reports and tests."""
        cols = ("key", "status", "error", "seconds", "computations", "deterministic")
        return [dict(zip(cols, r)) for r in self._query(f"SELECT {', '.join(cols)} FROM evaluations")]

    def finished_rows(self) -> list[tuple]:
        """``(key, status, request, result, error, deterministic, created)`` of every result and
        failure, sorted by key (what :func:`memrl.evaluation.lookup.export_table` writes)."""
        return self._query(
            "SELECT key, status, request, result, error, deterministic, created FROM evaluations WHERE status IN ('ok', 'failed') ORDER BY key"
        )

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM evaluations WHERE status='ok'")[0][0])

    # ------------------------------------------------------------------ writes
    def put(self, key: str, request: dict, result: dict, seconds: float) -> None:
        """Store a result (and count the computation); a result always replaces a claim or a failure."""
        self._query(
            "INSERT INTO evaluations(key,status,request,result,error,seconds,created,owner,lease_until,computations,deterministic) "
            "VALUES(?,?,?,?,?,?,?,NULL,NULL,1,0) "
            "ON CONFLICT(key) DO UPDATE SET status='ok', request=excluded.request, result=excluded.result, error=NULL, "
            "seconds=excluded.seconds, created=excluded.created, owner=NULL, lease_until=NULL, "
            "computations=COALESCE(evaluations.computations, 0) + 1, deterministic=0",
            (key, "ok", json.dumps(request, default=str), json.dumps(result, default=float), None, seconds, time.time()),
        )

    def put_failed(self, key: str, request: dict, error: str, deterministic: bool = False) -> None:
        """Record a failure without ever overwriting a successful result."""
        self._query(
            "INSERT INTO evaluations(key,status,request,result,error,seconds,created,owner,lease_until,deterministic) "
            "VALUES(?,?,?,?,?,?,?,NULL,NULL,?) "
            "ON CONFLICT(key) DO UPDATE SET status='failed', error=excluded.error, created=excluded.created, "
            "owner=NULL, lease_until=NULL, deterministic=excluded.deterministic WHERE evaluations.status!='ok'",
            (key, "failed", json.dumps(request, default=str), None, error, None, time.time(), int(bool(deterministic))),
        )

    def claim(self, key: str, request: dict, owner: str | None = None) -> bool:
        """Try to take the right to compute ``key``; ``False`` while another live owner holds it.

        A claim can be taken when the key is absent, failed (retry), or 'running' under a lease
        that expired or whose owner process is dead (checked on this machine only). A stored
        result is never claimed.
        """
        owner = owner or this_owner()
        now = time.time()
        db = self.backend
        with self._session() as con:
            db.begin_claim(con)
            try:
                rows = db.query(con, "SELECT status, owner, lease_until FROM evaluations WHERE key=?", (key,))
                row = rows[0] if rows else None
                free = (
                    row is None
                    or row[0] == "failed"
                    or (row[0] == "running" and (row[1] == owner or (row[2] or 0) < now or _owner_is_dead(row[1])))
                )
                if free:
                    db.query(
                        con,
                        "INSERT INTO evaluations(key,status,request,result,error,seconds,created,owner,lease_until) "
                        "VALUES(?,?,?,NULL,NULL,NULL,?,?,?) "
                        "ON CONFLICT(key) DO UPDATE SET status='running', owner=excluded.owner, lease_until=excluded.lease_until, error=NULL",
                        (key, "running", json.dumps(request, default=str), now, owner, now + self.lease_seconds),
                    )
                db.query(con, "COMMIT")
                return free
            except BaseException:
                db.query(con, "ROLLBACK")
                raise

    def release(self, key: str, owner: str | None = None) -> None:
        """Drop a 'running' claim of ``owner`` (e.g. after an interrupt), leaving results and failures alone."""
        self._query("DELETE FROM evaluations WHERE key=? AND status='running' AND owner=?", (key, owner or this_owner()))

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
