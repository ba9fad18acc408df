"""Planned switchover against a real MariaDB cluster of its own (db1 primary, db2 and db3
replicas): the primary moves, clients notice nothing, no write is lost, and every failure
before the promotion aborts cleanly and says why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import aiomysql
import pymysql
import pytest

from proxy import ctl
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


# --- the whole story: a fleet under load ------------------------------------------------------


@contextlib.contextmanager
def fleet(sb: Sandbox, *, local_tiers: int = 2) -> Iterator[tuple[list, list]]:
    """Two remote tiers in front of the cluster, each other's peers only through `sluice ctl`
    (which names them all), and local tiers spreading their sessions over both."""
    remotes = [TierThread(remote_config(sb)).start() for _ in range(2)]
    servers = [
        {"name": f"remote{i + 1}", "address": f"127.0.0.1:{r.port}"} for i, r in enumerate(remotes)
    ]
    locals_ = [
        TierThread(
            tier_config(
                sb,
                tier="local",
                upstream={"servers": servers},
                pool={"max_connections": 24, "acquire_timeout": "30s"},
            )
        ).start()
        for _ in range(local_tiers)
    ]
    try:
        yield remotes, locals_
    finally:
        for tier in [*locals_, *remotes]:
            tier.stop()


def admin_http(tier: TierThread) -> str:
    return tier.run(lambda: tier.tier.admin_addresses()["http"])


class Writers:
    """Clients writing rows as fast as they can through the local tiers: autocommit inserts
    and two-row transactions. Records every acknowledged row, every error and the longest
    wait for one statement."""

    def __init__(self, sb: Sandbox, tiers: list[TierThread], clients: int) -> None:
        self.sb = sb
        self.ports = [t.port for t in tiers]
        self.clients = clients
        self.acknowledged: set[int] = set()
        self.errors: list[str] = []
        self.longest = 0.0
        self.statements = 0
        self._stop = asyncio.Event()

    async def run(self, started: asyncio.Event) -> None:
        ready = 0

        async def client(n: int) -> None:
            nonlocal ready
            conn = await aiomysql.connect(
                host="127.0.0.1",
                port=self.ports[n % len(self.ports)],
                user="app",
                password=self.sb.users["app"].password,
                db="app",
                autocommit=True,
            )
            ready += 1
            if ready == self.clients:
                started.set()
            next_id = n * 1_000_000
            try:
                while not self._stop.is_set():
                    next_id += 2
                    began = time.monotonic()
                    try:
                        async with conn.cursor() as cur:
                            if next_id % 10 == 0:
                                await conn.begin()
                                await cur.execute("INSERT INTO t VALUES (%s, 'tx')", (next_id,))
                                await cur.execute("INSERT INTO t VALUES (%s, 'tx')", (next_id + 1,))
                                await conn.commit()
                                self.acknowledged.update((next_id, next_id + 1))
                            else:
                                await cur.execute("INSERT INTO t VALUES (%s, 'ac')", (next_id,))
                                self.acknowledged.add(next_id)
                    except Exception as exc:  # every one is a failure of the test
                        self.errors.append(f"client {n}: {exc!r}")
                        return
                    self.statements += 1
                    self.longest = max(self.longest, time.monotonic() - began)
                    await asyncio.sleep(0.005)
            finally:
                conn.close()

        await asyncio.gather(*(client(n) for n in range(self.clients)))

    def stop(self) -> None:
        self._stop.set()


async def test_switchovers_under_load_lose_nothing_and_show_no_errors(cluster):
    sb = cluster
    with fleet(sb) as (remotes, locals_):
        admins = [admin_http(r) for r in remotes]
        writers = Writers(sb, locals_, clients=220)
        started = asyncio.Event()
        load = asyncio.ensure_future(writers.run(started))
        await asyncio.wait_for(started.wait(), 60)
        records = []
        for target in ("db2", "db1", "db3", "db1"):
            await asyncio.sleep(0.5)
            before = writers.statements
            assert await asyncio.to_thread(ctl.switchover, admins, TOKEN, target) == 0
            records.append(await asyncio.to_thread(last_record, remotes[0]))
            await asyncio.sleep(0.3)
            assert writers.statements > before, "writes stopped"
            assert not writers.errors, writers.errors[:5]
        await asyncio.sleep(0.5)
        writers.stop()
        await asyncio.wait_for(load, 60)

        assert not writers.errors, writers.errors[:5]
        for record in records:
            assert record["outcome"] == "done" and not record["warnings"], record
            assert record["peers"] == [admins[1]]
        for remote in remotes:  # both tiers of the fleet follow
            assert remote.run(lambda r=remote: r.tier.upstream.current.name) == "db1"
        # Every acknowledged write is on the final primary, and on the replicas behind it.
        wait_following(sb, "db1")
        caught_up(sb, "db1")
        for server in sb.servers:
            rows = sandbox_mod.sql(server, "SELECT id FROM app.t")
            missing = writers.acknowledged - {int(r[0]) for r in rows}
            assert not missing, f"{server.name} lacks {len(missing)} acknowledged rows"
        pauses = [r["pause_ms"] for r in records]
        print(
            f"\n{writers.clients} clients, {writers.statements} statements, "
            f"{len(writers.acknowledged)} rows acknowledged, 0 errors; switchover pauses "
            f"{pauses} ms; longest client-visible stall {writers.longest * 1000:.0f} ms"
        )


def last_record(tier: TierThread) -> dict:
    return tier.run(lambda: tier.tier.switchovers[-1].as_dict())
