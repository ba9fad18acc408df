"""Behaviour of proxy.sandbox against real MariaDB servers started from the local mariadbd."""

from __future__ import annotations

import json
import random
import socket
import time
import uuid
from pathlib import Path

import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.sandbox import Sandbox, SandboxError, SandboxServer, down, load, sql, up
from proxy.sandbox import wait_replicas_caught_up as wait_caught_up
from tests.conftest import short_tmp_dir


def connect(server: SandboxServer, sb: Sandbox, key: str = "app") -> pymysql.Connection:
    user = sb.users[key]
    return pymysql.connect(
        host=server.host,
        port=server.port,
        user=user.name,
        password=user.password,
        autocommit=True,
        connect_timeout=5,
    )


def process_exists(pid: int) -> bool:
    """A pid that is gone or a zombie no longer serves anything."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_port_pair() -> int:
    """A port P below the ephemeral range with P and P+1 both free right now."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if all(sandbox_mod._port_is_free(p) for p in (port, port + 1)):
            return port
    raise AssertionError("no two consecutive free ports found")


def test_primary_is_writable_and_replica_is_read_only(sandbox: Sandbox) -> None:
    assert [s.name for s in sandbox.servers] == ["db1", "db2"]
    assert sandbox.primary.name == "db1"
    assert sql(sandbox.primary, "SELECT @@GLOBAL.read_only") == [["0"]]
    assert sql(sandbox.server("db2"), "SELECT @@GLOBAL.read_only") == [["1"]]


def test_servers_run_with_the_requested_settings(sandbox: Sandbox) -> None:
    for server in sandbox.servers:
        row = sql(
            server,
            "SELECT @@server_id, @@port, @@max_connections, @@gtid_strict_mode, "
            "@@log_slave_updates, @@binlog_format, @@character_set_server, @@local_infile",
        )
        assert row == [
            [str(server.server_id), str(server.port), "200", "1", "1", "ROW", "utf8mb4", "1"]
        ]


def test_row_written_on_primary_reaches_replica(sandbox: Sandbox) -> None:
    marker = uuid.uuid4().hex
    sql(
        sandbox.primary,
        "CREATE TABLE IF NOT EXISTS app.replicated (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT);"
        f"INSERT INTO app.replicated (v) VALUES ('{marker}');",
    )
    wait_caught_up(sandbox, timeout=10)
    with connect(sandbox.server("db2"), sandbox) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM app.replicated WHERE v = %s", (marker,))
        assert cur.fetchone() == (1,)
    primary_pos = sql(sandbox.primary, "SELECT @@GLOBAL.gtid_binlog_pos")
    assert sql(sandbox.server("db2"), "SELECT @@GLOBAL.gtid_slave_pos") == primary_pos


def test_app_write_on_read_only_server_fails_with_1290(sandbox: Sandbox) -> None:
    sql(sandbox.primary, "CREATE TABLE IF NOT EXISTS app.guarded (id INT PRIMARY KEY)")
    wait_caught_up(sandbox, timeout=10)
    with connect(sandbox.server("db2"), sandbox) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute("INSERT INTO app.guarded VALUES (1)")
        assert refused.value.args[0] == 1290
    with connect(sandbox.primary, sandbox) as conn, conn.cursor() as cur:
        cur.execute("REPLACE INTO app.guarded VALUES (1)")


def test_app_user_holds_neither_super_nor_read_only_admin(sandbox: Sandbox) -> None:
    grants = " ".join(row[0] for row in sql(sandbox.primary, "SHOW GRANTS FOR 'app'@'%'"))
    assert "SUPER" not in grants
    assert "READ_ONLY ADMIN" not in grants
    assert "ALL PRIVILEGES" not in grants
    monitor = " ".join(row[0] for row in sql(sandbox.primary, "SHOW GRANTS FOR 'sluice'@'%'"))
    assert "ALL PRIVILEGES" in monitor


def test_every_user_logs_in_over_tcp_on_every_server(sandbox: Sandbox) -> None:
    for server in sandbox.servers:
        for key in ("app", "monitor", "repl", "root"):
            with connect(server, sandbox, key) as conn, conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                assert cur.fetchone()[0].startswith(sandbox.users[key].name + "@")
    plugins = sql(sandbox.primary, "SELECT DISTINCT plugin FROM mysql.user WHERE user <> ''")
    assert plugins == [["mysql_native_password"]]


def test_sql_reports_the_server_error(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match=r"db1: ERROR 1146 .*doesn't exist"):
        sql(sandbox.primary, "SELECT * FROM app.no_such_table")
    with pytest.raises(SandboxError, match="1290"):
        sql(sandbox.server("db2"), "CREATE DATABASE nope", user="app")


def test_wait_replicas_caught_up_fails_fast_when_replica_stopped(sandbox: Sandbox) -> None:
    replica = sandbox.server("db2")
    sql(replica, "STOP SLAVE SQL_THREAD")
    try:
        sql(sandbox.primary, "CREATE TABLE IF NOT EXISTS app.lagging (id INT)")
        started = time.monotonic()
        with pytest.raises(SandboxError, match="Slave_SQL_Running='No'"):
            wait_caught_up(sandbox, timeout=20)
        assert time.monotonic() - started < 5
    finally:
        sql(replica, "START SLAVE SQL_THREAD")
    wait_caught_up(sandbox, timeout=10)


def test_state_file_carries_the_contract_fields(sandbox: Sandbox) -> None:
    state = json.loads((Path(sandbox.dir) / sandbox_mod.STATE_FILE).read_text())
    assert state == sandbox.to_dict() == load(sandbox.dir).to_dict()
    assert set(state) == {"dir", "servers", "users", "semi_sync", "etcd"}
    assert state["etcd"] is None  # (up(etcd=True) starts one: tests/test_fleet.py)
    for entry in state["servers"]:
        assert set(entry) == {
            "name", "host", "port", "socket", "role", "datadir", "server_id", "pid"
        }  # fmt: skip
        assert entry["host"] == "127.0.0.1"
        assert len(entry["socket"]) < 100 and Path(entry["socket"]).is_socket()
        assert process_exists(entry["pid"])
    assert [e["role"] for e in state["servers"]] == ["primary", "replica"]
    assert len({e["port"] for e in state["servers"]}) == 2
    assert {k: (u["name"], u["password"]) for k, u in state["users"].items()} == {
        "app": ("app", "app-pass"),
        "monitor": ("sluice", "sluice-pass"),
        "repl": ("repl", "repl-pass"),
        "root": ("root", "root-pass"),
    }
    assert all(u["purpose"] for u in state["users"].values())


def test_up_refuses_a_running_dir_and_down_stops_everything_idempotently(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = short_tmp_dir(tmp_path_factory, "lifecycle")
    try:
        sb = up(path, replicas=2, max_connections=20)
        assert [s.role for s in sb.servers] == ["primary", "replica", "replica"]
        sql(sb.primary, "CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (7)")
        wait_caught_up(sb, timeout=10)
        for replica in sb.servers[1:]:
            assert sql(replica, "SELECT id FROM app.t", user="app") == [["7"]]

        with pytest.raises(SandboxError, match=r"already has a running sandbox.*sandbox down"):
            up(path)
        assert all(process_exists(s.pid) for s in sb.servers)  # the refusal touched nothing

        down(path)
        assert not any(process_exists(s.pid) for s in sb.servers)
        assert not any(Path(s.socket).exists() for s in sb.servers)
        down(path)  # a second down() is harmless

        # The stale dir is wiped and recreated, here on explicitly requested ports.
        port = free_port_pair()
        again = up(path, replicas=1, port=port)
        assert [s.port for s in again.servers] == [port, port + 1]
        assert sql(again.primary, "SHOW TABLES FROM app") == []  # fresh data, no app.t
        assert load(path).to_dict() == again.to_dict()
    finally:
        down(path)
    assert not any(process_exists(s.pid) for s in load(path).servers)


def test_up_refuses_a_port_in_use(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = short_tmp_dir(tmp_path_factory, "busy")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(SandboxError, match=rf"{taken}.*in use"):
            up(path, replicas=0, port=taken)


def test_up_refuses_a_dir_too_long_for_unix_sockets() -> None:
    long_dir = Path("/tmp") / ("x" * 120)
    with pytest.raises(SandboxError, match="too long"):
        up(long_dir)
    assert not long_dir.exists()


def test_up_moves_an_auto_picked_port_taken_before_the_server_binds(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_tmp_dir(tmp_path_factory, "race")
    real_pick = sandbox_mod._pick_ports
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        stolen = thief.getsockname()[1]
        picks = iter([[stolen]])
        monkeypatch.setattr(sandbox_mod, "_pick_ports", lambda n: next(picks, None) or real_pick(n))
        try:
            sb = up(path, replicas=0)
            assert sb.primary.port != stolen
            assert sql(sb.primary, "SELECT @@port") == [[str(sb.primary.port)]]
            assert load(path).primary.port == sb.primary.port
        finally:
            down(path)


def test_up_refuses_max_connections_below_mariadb_minimum() -> None:
    # mariadbd would silently run with 10 instead, breaking tests of a hard connection cap.
    with pytest.raises(SandboxError, match="max_connections must be >= 10"):
        up("/tmp/sluice-never-created", max_connections=5)
    assert not Path("/tmp/sluice-never-created").exists()


def test_up_with_etcd_starts_a_healthy_etcd_and_down_stops_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import urllib.request

    path = short_tmp_dir(tmp_path_factory, "etcd")
    sb = up(path, replicas=0, etcd=True)
    try:
        assert sb.etcd is not None and load(path).etcd == sb.etcd
        with urllib.request.urlopen(f"http://{sb.etcd}/health", timeout=5) as answer:
            assert json.load(answer)["health"] == "true"
        pid = int((Path(path) / "etcd.pid").read_text())
        assert process_exists(pid)
    finally:
        down(path)
    assert not process_exists(pid)
