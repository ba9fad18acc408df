"""Shared fixtures: one real MariaDB cluster (primary + replica) for the whole test session."""

from __future__ import annotations

import atexit
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.sandbox import Sandbox

from .harness import TierThread, tier_config
from .processes import TierProcess


def short_tmp_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh directory whose unix socket paths stay under the sandbox's length limit.

    pytest's base temp dir can be long (e.g. under a deep $TMPDIR); /tmp always is short.
    """
    path = tmp_path_factory.mktemp(name)
    if len(str(path / "db10.sock")) >= sandbox_mod.MAX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix="sluice-", dir="/tmp"))
    return path


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A running primary (db1) and GTID replica (db2), stopped at the end of the session.

    Stopped in the fixture's teardown even when tests fail; the atexit hook is a fallback for a
    session that dies before teardown runs (down() is idempotent, so running both is fine).
    """
    path = short_tmp_dir(tmp_path_factory, "sandbox")
    atexit.register(sandbox_mod.down, path)
    sb = sandbox_mod.up(path, replicas=1, max_connections=200)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


@pytest.fixture(scope="session")
def tier(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TierThread]:
    """One remote tier in front of the sandbox primary, on TCP and a unix socket."""
    sock = short_tmp_dir(tmp_path_factory, "tier") / "sluice.sock"
    with TierThread(tier_config(sandbox, unix_path=str(sock))) as running:
        yield running


@contextlib.contextmanager
def pymysql_opener(sandbox: Sandbox, host: str, port: int) -> Iterator:
    """A function opening PyMySQL connections as the app user to host:port; every
    connection it opened is closed on exit."""
    opened = []

    def _connect(**kwargs):
        params = dict(
            host=host,
            port=port,
            user="app",
            password=sandbox.users["app"].password,
            database="app",
            max_allowed_packet=64 << 20,
        )
        params.update(kwargs)
        conn = pymysql.connect(**params)
        opened.append(conn)
        return conn

    try:
        yield _connect
    finally:
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def connect(sandbox: Sandbox, tier: TierThread):
    """Open PyMySQL connections through the tier (closed after the test)."""
    with pymysql_opener(sandbox, "127.0.0.1", tier.port) as opener:
        yield opener


@pytest.fixture
def processes() -> Iterator[list[TierProcess]]:
    """`sluice run` processes a test starts; stopped (SIGTERM, then SIGKILL) at its end."""
    started: list[TierProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop()
