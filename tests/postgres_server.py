"""A throwaway PostgreSQL server for the tests, from the distribution's binaries (initdb, pg_ctl).

:func:`start` initialises a cluster in a fresh temporary folder, starts it on a free port of
127.0.0.1 (its unix socket in that folder, trust authentication, no fsync) and returns its URL and
a function that stops it and removes the folder. Run as root, the server runs as the ``postgres``
user (PostgreSQL refuses root) through ``runuser``. :func:`unavailable` says why no server can be
started here (the tests then skip with that reason).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Callable


def _binary(name: str) -> str | None:
    """``name`` from PATH, else from the newest /usr/lib/postgresql/*/bin (Debian's layout)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True):
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return None


def _as_server_user() -> list[str]:
    """The command prefix that runs a server program as a non-root user (none when not root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def unavailable() -> str | None:
    """Why no server can be started here, or ``None``."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install 'memrl[postgres]')"
    for name in ("initdb", "pg_ctl"):
        if _binary(name) is None:
            return f"no PostgreSQL server binaries ({name} is neither on PATH nor in /usr/lib/postgresql/*/bin; apt-get install postgresql)"
    if os.geteuid() == 0:
        import pwd

        if shutil.which("runuser") is None:
            return "running as root without runuser: PostgreSQL refuses to run as root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start() -> tuple[str, Callable[[], None]]:
    """``(url of the database 'postgres', stop)`` of a fresh server."""
    folder = tempfile.mkdtemp(prefix="memrl-pg-")
    data = os.path.join(folder, "data")
    prefix = _as_server_user()
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    pg_ctl = _binary("pg_ctl")
    try:
        run(_binary("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        run(pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(folder, "server.log"), "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as exc:
        log = os.path.join(folder, "server.log")
        tail = open(log).read()[-2000:] if os.path.exists(log) else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr or exc.stdout}{tail}") from None

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


def new_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server; its URL."""
    import psycopg2

    con = psycopg2.connect(server_url)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        con.close()
    return server_url.rsplit("/", 1)[0] + "/" + name
