"""The admin SQL port, the HTTP endpoints and the metrics report what the tier really does."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import config_to_dict, parse_config

from .harness import TierThread, tier_config

ADMIN_PASSWORD = "admin-secret-pw"
TOKEN = "admin-token-xyz"
CAP = 8
ADMIN = {
    "mysql": "127.0.0.1:0",
    "http": "127.0.0.1:0",
    "user": "admin",
    "password": ADMIN_PASSWORD,
    "token": TOKEN,
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("admin") / "tier.yaml"


@pytest.fixture(scope="module")
def admin_tier(sandbox, config_file):
    """A tier with both admin endpoints, started from (a file holding) its config."""
    monitor = sandbox.users["monitor"]
    servers = [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sandbox.servers]
    config = tier_config(
        sandbox,
        admin=ADMIN,
        pool={"max_connections": CAP},
        upstream={
            "servers": servers,
            "monitor": {"user": monitor.name, "password": monitor.password},
        },
    )
    write_config(config_file, config_to_dict(config, redact=False))
    running = TierThread(config)
    running.tier.config_path = str(config_file)
    with running:
        yield running


def write_config(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data))


def admin_address(tier: TierThread, kind: str) -> tuple[str, int]:
    host, _, port = tier.run(tier.tier.admin_addresses)[kind].rpartition(":")
    return host, int(port)


def admin_sql(tier: TierThread, password: str = ADMIN_PASSWORD, user: str = "admin"):
    host, port = admin_address(tier, "mysql")
    return pymysql.connect(host=host, port=port, user=user, password=password)


def query(tier: TierThread, sql: str) -> list[dict]:
    """Rows of an admin command as dicts (column name -> value)."""
    conn = admin_sql(tier)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def app_client(tier: TierThread, sandbox, **kw) -> pymysql.Connection:
    params = dict(
        host="127.0.0.1",
        port=tier.port,
        user="app",
        password=sandbox.users["app"].password,
        database="app",
        autocommit=True,
    )
    params.update(kw)
    return pymysql.connect(**params)


def http_get(tier: TierThread, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    host, port = admin_address(tier, "http")
    data = b"" if method == "POST" else None
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def scrape(tier: TierThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = http_get(tier, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# --- admin SQL --------------------------------------------------------------------------------


def test_show_clients_lists_a_connected_app_client(admin_tier, sandbox):
    conn = app_client(admin_tier, sandbox)
    try:
        conn.begin()  # an open transaction keeps the upstream connection with the session
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (thread_id,) = cur.fetchone()
        host, port = conn._sock.getsockname()[:2]
        local = f"{host}:{port}"
        rows = {row["id"]: row for row in query(admin_tier, "SHOW CLIENTS")}
        row = rows[conn.thread_id()]
        assert row["user"] == "app"
        assert row["address"] == local
        assert row["state"] == "idle"
        assert row["pinned_reason"] == ""
        assert row["upstream"] == f"db1:{thread_id}"
        conn.commit()
    finally:
        conn.close()


def test_show_clients_shows_why_a_session_is_pinned(admin_tier, sandbox):
    conn = app_client(admin_tier, sandbox)
    try:
        with conn.cursor() as cur:
            cur.execute("SET @mine = 1")
        rows = {row["id"]: row for row in query(admin_tier, "SHOW CLIENTS")}
        assert rows[conn.thread_id()]["pinned_reason"] == "user_variable"
        assert rows[conn.thread_id()]["upstream"].startswith("db1:")
    finally:
        conn.close()


def test_show_pools_shows_the_pool_after_a_query(admin_tier, sandbox):
    conn = app_client(admin_tier, sandbox)
    try:
        conn.begin()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        pools = query(admin_tier, "show pools")  # any letter case
        (pool,) = [p for p in pools if p["server"] == "db1" and p["user"] == "app"]
        assert set(pool) == {
            "server",
            "user",
            "active",
            "idle",
            "waiting",
            "max_wait_ms",
            "cap",
            "oldest_wait_ms",
            "idle_in_transaction_ms",
        }
        assert pool["active"] >= 1
        assert pool["waiting"] == 0
        assert pool["cap"] == CAP
        conn.commit()
    finally:
        conn.close()


def test_show_servers_lists_every_upstream_server(admin_tier, sandbox):
    conn = app_client(admin_tier, sandbox)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        servers = {row["name"]: row for row in query(admin_tier, "SHOW SERVERS;")}
        assert set(servers) == {s.name for s in sandbox.servers}
        primary = servers["db1"]
        assert primary["address"] == f"{sandbox.primary.host}:{sandbox.primary.port}"
        assert primary["role"] == "primary"  # as writer discovery found it
        assert servers["db2"]["role"] == "replica"
        assert (primary["health"], primary["read_only"], primary["lag_s"]) == ("ok", "no", None)
        assert (servers["db2"]["health"], servers["db2"]["read_only"]) == ("ok", "yes")
        assert servers["db2"]["lag_s"] is not None and servers["db2"]["lag_s"] < 5
        assert primary["limit"] == CAP
        assert 1 <= primary["open"] <= CAP
    finally:
        conn.close()


def test_show_config_is_the_running_config_with_secrets_redacted(admin_tier):
    rows = {row["key"]: row["value"] for row in query(admin_tier, "SHOW CONFIG")}
    assert rows["tier"] == "remote"
    assert rows["pool.max_connections"] == str(CAP)
    assert rows["upstream.servers[0].name"] == "db1"
    assert rows["admin.user"] == "admin"
    assert rows["admin.password"] == "***"
    assert rows["admin.token"] == "***"
    assert rows["users[0].password"] == "***"
    assert not any(ADMIN_PASSWORD in value or TOKEN in value for value in rows.values())


def test_kill_client_closes_that_session(admin_tier, sandbox):
    victim = app_client(admin_tier, sandbox)
    bystander = app_client(admin_tier, sandbox)
    try:
        assert query(admin_tier, f"KILL CLIENT {victim.thread_id()}") == []
        with pytest.raises(pymysql.err.OperationalError), victim.cursor() as cur:
            cur.execute("SELECT 1")
        ids = {row["id"] for row in query(admin_tier, "SHOW CLIENTS")}
        assert victim.thread_id() not in ids
        assert bystander.thread_id() in ids
        with bystander.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        bystander.close()


def test_kill_client_of_an_unknown_id_is_an_error(admin_tier):
    with pytest.raises(pymysql.err.OperationalError) as error:
        query(admin_tier, "KILL CLIENT 42")
    assert error.value.args[0] == 1094
    assert "SHOW CLIENTS" in error.value.args[1]


def test_unknown_command_lists_the_commands_there_are(admin_tier):
    for sql in ("SHOW DATABASES", "SWITCH TO 'db2'", "KILL 5", "SELECT * FROM pools"):
        with pytest.raises(pymysql.err.MySQLError) as error:
            query(admin_tier, sql)
        code, message = error.value.args
        assert code == 1064, sql
        assert message.startswith("sluice: unknown admin command")
        for command in (
            "SHOW POOLS",
            "SHOW CLIENTS",
            "SHOW SERVERS",
            "KILL CLIENT",
            "RELOAD",
            "PAUSE",
            "RESUME",
            "SWITCHOVER TO",
            "SHOW SWITCHOVERS",
        ):
            assert command in message


def test_driver_setup_statements_still_work(admin_tier):
    assert query(admin_tier, "SELECT 1 AS one") == [{"one": 1}]
    assert query(admin_tier, "SET autocommit = 1") == []


def test_wrong_admin_credentials_are_refused(admin_tier, sandbox):
    for user, password in (("admin", "wrong"), ("admin", ""), ("app", ADMIN_PASSWORD)):
        with pytest.raises(pymysql.err.OperationalError) as error:
            admin_sql(admin_tier, password=password, user=user)
        assert error.value.args[0] == 1045


def test_reload_rereads_the_config_file(admin_tier, config_file):
    original = config_file.read_text()
    data = yaml.safe_load(original)
    try:
        data["pool"]["max_connections"] = CAP + 1
        write_config(config_file, data)
        assert query(admin_tier, "RELOAD") == [{"reloaded": "yes", "needs_restart": ""}]
        assert {row["limit"] for row in query(admin_tier, "SHOW SERVERS")} == {CAP + 1}

        config_file.write_text("pool: {max_connections: lots}\n")
        with pytest.raises(pymysql.err.OperationalError) as error:
            query(admin_tier, "RELOAD")
        assert "config not reloaded" in error.value.args[1]
        assert {row["limit"] for row in query(admin_tier, "SHOW SERVERS")} == {CAP + 1}
    finally:
        config_file.write_text(original)
        query(admin_tier, "RELOAD")
    assert {row["limit"] for row in query(admin_tier, "SHOW SERVERS")} == {CAP}


def test_reload_without_a_config_file_says_so(admin_tier):
    path = admin_tier.tier.config_path
    admin_tier.run(lambda: setattr(admin_tier.tier, "config_path", None))
    try:
        with pytest.raises(pymysql.err.OperationalError) as error:
            query(admin_tier, "RELOAD")
        assert "in-memory config" in error.value.args[1]
    finally:
        admin_tier.run(lambda: setattr(admin_tier.tier, "config_path", path))


# --- HTTP ------------------------------------------------------------------------------------


def test_healthz_is_ok(admin_tier):
    status, _, body = http_get(admin_tier, "/healthz")
    assert (status, body) == (200, b"ok\n")


def test_readyz_is_ready_with_a_reachable_upstream(admin_tier):
    status, _, body = http_get(admin_tier, "/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True}


def test_readyz_probe_logs_in_with_the_monitor_account(admin_tier):
    readiness = admin_tier.tier.admin.http.readiness
    assert admin_tier.call(readiness.probe()) is None


def test_readyz_reads_the_greeting_without_a_monitor_account(sandbox):
    with TierThread(tier_config(sandbox, admin={"http": "127.0.0.1:0"})) as running:
        assert running.run(lambda: running.tier.pools.pools) == {}  # nothing to vouch for it
        status, _, body = http_get(running, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})


def closed_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_readyz_of_a_local_tier_needs_one_reachable_remote_tier(admin_tier, sandbox):
    def readyz(*servers: tuple[str, str]) -> tuple[int, dict]:
        upstream = {"servers": [{"name": name, "address": addr} for name, addr in servers]}
        config = tier_config(
            sandbox, tier="local", upstream=upstream, admin={"http": "127.0.0.1:0"}
        )
        with TierThread(config) as running:
            status, _, body = http_get(running, "/readyz")
        return status, json.loads(body)

    dead = ("dead", f"127.0.0.1:{closed_port()}")
    assert readyz(dead, ("alive", str(admin_tier.address))) == (200, {"ready": True})
    status, answer = readyz(dead, ("gone", f"127.0.0.1:{closed_port()}"))
    assert status == 503
    assert "dead" in answer["reason"] and "gone" in answer["reason"]


def test_readyz_is_503_when_the_upstream_is_unreachable():
    config = parse_config(
        {
            "tier": "remote",
            "listen": ["127.0.0.1:0"],
            "users": [{"name": "app", "password": "app-pass"}],
            "upstream": {
                "servers": [{"name": "gone", "address": f"127.0.0.1:{closed_port()}"}],
                "connect_timeout": "1s",
            },
            "admin": {"http": "127.0.0.1:0"},
        },
        allow_zero_port=True,
    )
    with TierThread(config) as running:
        assert set(running.tier.admin_addresses()) == {"http"}
        status, headers, body = http_get(running, "/readyz")
        assert status == 503
        assert headers["Content-Type"] == "application/json"
        answer = json.loads(body)
        assert answer["ready"] is False
        assert "gone" in answer["reason"] and "unreachable" in answer["reason"]
        assert http_get(running, "/healthz")[0] == 200


def test_status_describes_sessions_pools_and_servers(admin_tier, sandbox):
    conn = app_client(admin_tier, sandbox)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        status, headers, body = http_get(admin_tier, "/status")
    finally:
        conn.close()
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["tier"] == "remote"
    assert doc["accepting"] is True
    assert doc["listen"] == [str(admin_tier.address)]
    assert doc["admin"] == admin_tier.run(admin_tier.tier.admin_addresses)
    assert doc["upstream"]["current"] == "db1"
    assert set(doc["sessions"]["by_state"]) == {"handshake", "idle", "busy", "infile"}
    assert doc["sessions"]["total"] >= 1
    assert set(doc["pinned"]) == {"now_by_reason", "total_by_reason"}
    pools = [p for p in doc["pools"] if p["server"] == "db1" and p["user"] == "app"]
    assert len(pools) == 1
    assert set(pools[0]) == {
        "server",
        "user",
        "active",
        "idle",
        "waiting",
        "max_wait_ms",
        "cap",
        "oldest_wait_ms",
        "idle_in_transaction_ms",
    }
    servers = {s["name"]: s for s in doc["servers"]}
    assert set(servers["db1"]) == {
        "name",
        "address",
        "role",
        "health",
        "read_only",
        "lag_s",
        "open",
        "opening",
        "limit",
        "waiters",
    }
    assert servers["db1"]["limit"] == CAP
    assert servers["db1"]["open"] >= 1


def test_unknown_paths_are_404_and_other_methods_405(admin_tier):
    status, _, body = http_get(admin_tier, "/nope")
    assert status == 404
    assert {"/metrics", "/pause", "/resume"} <= set(json.loads(body)["endpoints"])
    assert http_get(admin_tier, "/pause", method="POST")[0] == 401  # a control: token needed
    status, headers, _ = http_get(admin_tier, "/metrics", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_metrics_follow_real_traffic(admin_tier, sandbox):
    before = scrape(admin_tier)
    assert metric(before, "sluice_upstream_connection_limit", server="db1") == CAP
    clients = [app_client(admin_tier, sandbox) for _ in range(3)]
    try:
        for conn in clients:
            conn.begin()  # each open transaction holds one upstream connection
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        with clients[0].cursor() as cur:
            cur.execute("SET @pinned = 1")
        with pytest.raises(pymysql.err.OperationalError):
            app_client(admin_tier, sandbox, password="wrong")
        during = scrape(admin_tier)
        for conn in clients:
            conn.commit()  # (a client leaving mid-transaction takes its connection with it)
    finally:
        for conn in clients:
            conn.close()

    def idle_clients(samples: dict) -> float:
        return metric(samples, "sluice_client_connections", state="idle")

    assert idle_clients(during) == idle_clients(before) + 3
    active = ("sluice_pool_active_connections", {"server": "db1", "user": "app"})
    assert metric(during, active[0], **active[1]) >= metric(before, active[0], **active[1]) + 3
    opened = metric(during, "sluice_upstream_connections", server="db1", state="open")
    assert 3 <= opened <= CAP
    assert metric(during, "sluice_upstream_connections", server="db1", state="opening") == 0
    assert metric(during, "sluice_pool_waiting_clients", server="db1") == 0
    assert metric(during, "sluice_auth_failures_total") == (
        metric(before, "sluice_auth_failures_total") + 1
    )
    pins = ("sluice_pinned_sessions_total", {"reason": "user_variable"})
    assert metric(during, pins[0], **pins[1]) == metric(before, pins[0], **pins[1]) + 1

    eventually(lambda: idle_clients(scrape(admin_tier)) == idle_clients(before))
    after = scrape(admin_tier)
    assert metric(after, active[0], **active[1]) == metric(before, active[0], **active[1])
    idle_pooled = metric(after, "sluice_pool_idle_connections", server="db1", user="app")
    assert idle_pooled >= 2  # the unpinned ones went back to the pool


def test_statement_error_byte_and_latency_metrics_count_real_statements(admin_tier, sandbox):
    before = scrape(admin_tier)
    conn = app_client(admin_tier, sandbox)
    try:
        with conn.cursor() as cur:
            for _ in range(5):
                cur.execute("SELECT REPEAT('x', 1000)")
                cur.fetchall()
            with pytest.raises(pymysql.err.ProgrammingError):
                cur.execute("SELECT * FROM no_such_table")
    finally:
        conn.close()
    after = scrape(admin_tier)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # PyMySQL sends SET NAMES / autocommit at connect: at least our 6 statements.
    assert grew("sluice_statements_total", command="query") >= 6
    assert grew("sluice_statement_errors_total", command="query") == 1
    assert grew("sluice_statement_duration_seconds_count") >= 6
    assert grew("sluice_statement_duration_seconds_bucket", le="+Inf") == grew(
        "sluice_statement_duration_seconds_count"
    )
    assert grew("sluice_statement_duration_seconds_sum") > 0
    assert grew("sluice_client_sent_bytes_total") >= 5 * 1000  # the five result sets
    assert grew("sluice_client_received_bytes_total") >= 5 * len("SELECT REPEAT('x', 1000)")
    assert metric(after, "sluice_gate_paused") == 0
    assert metric(after, "sluice_upstream_current", server="db1") == 1  # the first, no monitor


def test_pause_and_proxy_errors_show_in_metrics(admin_tier, sandbox):
    before = scrape(admin_tier)
    conn = app_client(admin_tier, sandbox)  # connected before the pause
    query(admin_tier, "PAUSE")
    try:
        assert metric(scrape(admin_tier), "sluice_gate_paused") == 1
    finally:
        query(admin_tier, "RESUME")
    conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        app_client(admin_tier, sandbox, password="wrong")
    after = scrape(admin_tier)
    assert metric(after, "sluice_gate_paused") == 0
    assert metric(after, "sluice_write_pause_seconds_count") == (
        metric(before, "sluice_write_pause_seconds_count") + 1
    )
    assert metric(after, "sluice_proxy_errors_total", code="1045") == (
        metric(before, "sluice_proxy_errors_total", code="1045") + 1
    )
