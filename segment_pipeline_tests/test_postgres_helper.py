"""The test helper that finds or starts PostgreSQL (``segment_pipeline_tests/postgres.py``): how it
reads the server from the environment, where it looks for PostgreSQL's server programs, and what
happens without any (a skip locally, a failure in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segment_pipeline_tests.postgres import URL_ENV, PostgresServer, postgres_or_skip, server_bindir


def test_server_from_url_round_trips_a_password_with_reserved_characters():
    server = PostgresServer.from_url("postgresql://ci%40user:p%2Fa%3As%40s@127.0.0.1:55432/postgres")
    assert (server.host, server.port, server.user, server.password, server.dbname) == (
        "127.0.0.1", 55432, "ci@user", "p/a:s@s", "postgres")
    assert PostgresServer.from_url(server.url) == server
    assert server.dagster_env() == {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "55432",
                                    "DAGSTER_PG_DB": "postgres", "DAGSTER_PG_USERNAME": "ci@user",
                                    "DAGSTER_PG_PASSWORD": "p/a:s@s"}


def _programs(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        os.chmod(folder / name, 0o755)
    return folder


def test_server_programs_are_found_in_the_newest_debian_version_folder(tmp_path):
    root = tmp_path / "postgresql"
    _programs(root / "9.6" / "bin", "initdb", "postgres")
    newest = _programs(root / "16" / "bin", "initdb", "postgres")
    _programs(root / "17" / "bin", "psql")  # a client-only install: no server programs
    empty_path = str(tmp_path / "nothing-on-path")
    assert server_bindir(search_path=empty_path, debian_root=root) == newest
    on_path = _programs(tmp_path / "bin", "initdb", "postgres")  # initdb on PATH wins
    assert server_bindir(search_path=str(on_path), debian_root=root) == on_path.resolve()
    assert server_bindir(search_path=empty_path, debian_root=tmp_path / "absent") is None


def test_without_postgresql_the_tests_skip_locally_and_fail_in_ci(tmp_path, monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    nowhere = {"search_path": str(tmp_path / "nothing-on-path"), "debian_root": tmp_path / "absent"}
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"PostgreSQL is not available: set {URL_ENV}"), \
            postgres_or_skip(**nowhere):
        pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and PostgreSQL is not available"), \
            postgres_or_skip(**nowhere):
        pass
