"""A real PostgreSQL server for tests of the production instance (``deploy/production/dagster.yaml``).

Where the server comes from, first match wins:

1. ``SEGMENT_PIPELINE_TEST_POSTGRES_URL`` (``postgresql://user:password@host:port/db``): a server
   someone started for the tests; ``.ci/run`` starts a throwaway cluster and sets it. A role that
   may create databases: each test session gets a fresh database, dropped afterwards.
2. A throwaway cluster of our own (:func:`throwaway_cluster`) when PostgreSQL's server programs are
   on this machine (:func:`server_bindir`: ``initdb`` on ``PATH``, ``pg_config --bindir``, or
   Debian's ``/usr/lib/postgresql/<version>/bin``, newest first).
3. Neither: :func:`postgres_or_skip` skips the test with the reason, except in CI (``CI=true``),
   where a missing server is a failure: CI must run these tests.

A throwaway cluster lives in a fresh temporary folder, listens on 127.0.0.1 only (a free port
below the ephemeral range) and on a Unix socket in that folder, requires a password (SCRAM), and
runs as an unprivileged user when the tests run as root (PostgreSQL refuses to run as root):
``nobody``. It is stopped by its own pid (fast shutdown) and its folder removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from segment_pipeline_tests.waiting import HANG_TIMEOUT, on_a_free_port, wait_for

URL_ENV = "SEGMENT_PIPELINE_TEST_POSTGRES_URL"
#: Debian's (and Ubuntu's) layout of PostgreSQL's server programs: one folder per major version.
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "segment_pipeline"
UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class PostgresServer:
    """How to reach one database on a PostgreSQL server (TCP)."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def from_url(cls, url: str) -> PostgresServer:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.username:
            raise ValueError(f"{URL_ENV}: expected postgresql://user:password@host:port/db, got scheme "
                             f"{parts.scheme!r}, host {parts.hostname!r}")
        return cls(parts.hostname, parts.port or 5432, unquote(parts.username), unquote(parts.password or ""),
                   parts.path.lstrip("/") or "postgres")

    @property
    def url(self) -> str:
        return (f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(self.dbname, safe='')}")

    def dagster_env(self) -> dict[str, str]:
        """The variables ``deploy/production/dagster.yaml`` reads its storage settings from."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": self.dbname,
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password}

    def connect(self):
        import psycopg2  # dagster-postgres's driver

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=self.dbname, connect_timeout=10)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    @contextlib.contextmanager
    def fresh_database(self, prefix: str = "dagster_test") -> Iterator[PostgresServer]:
        """A new empty database on this server for the duration of the block, then dropped."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        try:
            yield replace(self, dbname=name)
        finally:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def server_bindir(search_path: str | None = None, debian_root: Path = DEBIAN_PG_ROOT) -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (PostgreSQL's server programs), or None:
    ``initdb`` on ``search_path`` (default ``PATH``), else ``pg_config --bindir``, else the newest
    version under ``debian_root``."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb", path=search_path)
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    if debian_root.is_dir():
        candidates.extend(sorted(debian_root.glob("*/bin"), key=_version_key, reverse=True))
    for folder in candidates:
        if all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in ("initdb", "postgres")):
            return folder
    return None


def _run_as() -> dict:
    """``subprocess`` arguments that drop root to :data:`UNPRIVILEGED_USER` (none when not root)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[PostgresServer]:
    """Initialise and start a PostgreSQL cluster in a new temporary folder (see the module
    docstring); yields its ``postgres`` database as :data:`SUPERUSER`. ``RuntimeError`` with the
    server's output when ``initdb`` or the server fails."""
    as_user = _run_as()
    # not under pytest's tmp_path: that is owner-only for root, and the server may run as nobody
    root = Path(tempfile.mkdtemp(prefix="segment-pipeline-pg-"))
    proc: subprocess.Popen | None = None
    try:
        if as_user:
            os.chown(root, as_user["user"], as_user["group"])
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if as_user:
            os.chown(pwfile, as_user["user"], as_user["group"])
        data = root / "data"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile),
             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=root, timeout=HANG_TIMEOUT, **as_user)
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        log_path = root / "server.log"

        def start(port: int) -> subprocess.Popen:
            log = log_path.open("wb")
            # durability off: a throwaway test cluster, faster on a busy disk
            server = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root),
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True, **as_user)
            log.close()
            candidate = PostgresServer("127.0.0.1", port, SUPERUSER, password, "postgres")

            def ready() -> bool:
                if server.poll() is not None:
                    raise RuntimeError(f"postgres exited with {server.returncode}:\n"
                                       f"{log_path.read_text(errors='replace')}")
                try:
                    candidate.query("SELECT 1")
                except Exception:  # psycopg2.OperationalError while it starts up
                    return False
                return True

            try:
                wait_for("PostgreSQL to accept connections", ready, HANG_TIMEOUT,
                         lambda: log_path.read_text(errors="replace"), interval=0.1)
            except BaseException:
                _stop(server)
                raise
            return server

        proc = on_a_free_port(start)
        port = int(proc.args[proc.args.index("-p") + 1])
        yield PostgresServer("127.0.0.1", port, SUPERUSER, password, "postgres")
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT to the postmaster's pid), SIGKILL to its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def postgres_or_skip(search_path: str | None = None, debian_root: Path = DEBIAN_PG_ROOT) -> Iterator[PostgresServer]:
    """A fresh database on the server from :data:`URL_ENV`, else on a throwaway cluster (server
    programs found by :func:`server_bindir` with these arguments), else a skip (a failure in CI).
    See the module docstring."""
    url = os.environ.get(URL_ENV)
    if url:
        with PostgresServer.from_url(url).fresh_database() as db:
            yield db
        return
    bindir = server_bindir(search_path, debian_root)
    if bindir is None:
        reason = (f"PostgreSQL is not available: set {URL_ENV}=postgresql://user:password@host:port/db, or "
                  "install PostgreSQL's server (Debian: apt-get install postgresql) so the tests start "
                  "their own throwaway cluster")
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    with throwaway_cluster(bindir) as server, server.fresh_database() as db:
        yield db
