"""Planned switchover against a real MariaDB cluster of its own (db1 primary, db2 and db3
replicas): the primary moves, clients notice nothing, no write is lost, and every failure
before the promotion aborts cleanly and says why."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.sandbox import Sandbox

from .conftest import short_tmp_dir
from .harness import TierThread, app_connection, scalar, tier_config

TOKEN = "switch-token"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A cluster of its own for each test: switchovers change who is primary."""
    path = short_tmp_dir(tmp_path_factory, "cluster")
    sb = sandbox_mod.up(path, replicas=2, max_connections=300)
    try:
        sandbox_mod.sql(sb.primary, "CREATE TABLE app.t (id INT PRIMARY KEY, tier VARCHAR(20))")
        yield sb
    finally:
        sandbox_mod.down(path)


def remote_config(sb: Sandbox, **overrides):
    sections = {
        "upstream": {
            "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers],
            "monitor": {"user": "sluice", "password": sb.users["monitor"].password},
            "replication": {"user": "repl", "password": sb.users["repl"].password},
        },
        "admin": {
            "mysql": "127.0.0.1:0",
            "http": "127.0.0.1:0",
            "password": "admin-pass",
            "token": TOKEN,
        },
        "pool": {"max_connections": 20},
        "pause": {"drain_timeout": "2s", "max_pause": "20s"},
    }
    sections.update(overrides)
    return tier_config(sb, **sections)


def admin_sql(tier: TierThread, statement: str) -> list[dict]:
    address = tier.run(lambda: tier.tier.admin_addresses()["mysql"])
    host, port = address.rsplit(":", 1)
    conn = pymysql.connect(
        host=host,
        port=int(port),
        user="admin",
        password="admin-pass",
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def http_post(tier: TierThread, path: str) -> tuple[int, dict]:
    address = tier.run(lambda: tier.tier.admin_addresses()["http"])
    request = urllib.request.Request(f"http://{address}{path}", data=b"", method="POST")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def replication_source(sb: Sandbox, name: str) -> str | None:
    """host:port that `name` replicates from with both threads running, or None."""
    rows = sandbox_mod._client(
        sb.server(name), "SHOW ALL SLAVES STATUS", "root", None, column_names=True
    )
    if len(rows) < 2:
        return None
    status = dict(zip(rows[0], rows[1], strict=False))
    if status["Slave_IO_Running"] != "Yes" or status["Slave_SQL_Running"] != "Yes":
        return None
    return f"{status['Master_Host']}:{status['Master_Port']}"


def wait_following(sb: Sandbox, primary: str, timeout: float = 10.0) -> None:
    """Every other server replicates from `primary`."""
    want = f"{sb.server(primary).host}:{sb.server(primary).port}"
    deadline = time.monotonic() + timeout
    for server in sb.servers:
        if server.name == primary:
            continue
        while replication_source(sb, server.name) != want:
            assert time.monotonic() < deadline, f"{server.name} does not follow {primary}"
            time.sleep(0.1)


def caught_up(sb: Sandbox, primary: str, timeout: float = 20.0) -> None:
    """Every other server has applied all that `primary` has binlogged."""
    position = sandbox_mod.sql(sb.server(primary), "SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
    for server in sb.servers:
        if server.name != primary:
            wait = f"SELECT MASTER_GTID_WAIT('{position}', {timeout})"
            assert sandbox_mod.sql(server, wait)[0][0] == "0", f"{server.name} is behind"


def read_only(sb: Sandbox, name: str) -> bool:
    return sandbox_mod.sql(sb.server(name), "SELECT @@GLOBAL.read_only")[0][0] == "1"


def test_switchover_moves_the_primary_and_back(cluster):
    sb = cluster
    with TierThread(remote_config(sb)) as tier:
        client = app_connection(tier, sb)  # connected before: it must not notice
        assert scalar(client, "SELECT @@server_id") == 1
        with client.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1, 'before')")

        [record] = admin_sql(tier, "SWITCHOVER TO 'db2'")
        assert record["outcome"] == "done", record
        assert (record["from"], record["to"]) == ("db1", "db2")
        assert record["error"] is None and record["warnings"] is None, record
        for step in ("preflight", "catch_up", "pause", "demote", "wait_for_candidate"):
            assert step in record["steps"]
        assert tier.run(lambda: tier.tier.upstream.current.name) == "db2"

        assert scalar(client, "SELECT @@server_id") == 2  # the same client, now on db2
        with client.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (2, 'after')")
        assert read_only(sb, "db1") and not read_only(sb, "db2")
        wait_following(sb, "db2")  # db1 demoted to a replica, db3 repointed
        caught_up(sb, "db2")
        for name in ("db1", "db3"):
            rows = sandbox_mod.sql(sb.server(name), "SELECT id FROM app.t ORDER BY id")
            assert rows == [["1"], ["2"]], name

        [back] = admin_sql(tier, "SWITCHOVER TO db1")
        assert back["outcome"] == "done", back
        assert scalar(client, "SELECT @@server_id") == 1
        wait_following(sb, "db1")
        history = admin_sql(tier, "SHOW SWITCHOVERS")
        assert [(h["from"], h["to"], h["outcome"]) for h in history] == [
            ("db1", "db2", "done"),
            ("db2", "db1", "done"),
        ][::-1]
        client.close()
