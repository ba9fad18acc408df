"""Planned switchover against a real MariaDB cluster of its own (db1 primary, db2 and db3
replicas): the primary moves, clients notice nothing, no write is lost, and every failure
before the promotion aborts cleanly and says why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiomysql
import pymysql
import pytest

from proxy import ctl
from proxy import sandbox as sandbox_mod
from proxy.sandbox import Sandbox
from proxy.switchover import Switchover

from .conftest import short_tmp_dir
from .harness import TierThread, app_connection, fetch_all, scalar, tier_config

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
    return fetch_all(
        statement,
        host=host,
        port=int(port),
        user="admin",
        password="admin-pass",
        cursorclass=pymysql.cursors.DictCursor,
    )


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
                heartbeat={
                    "user": "app",
                    "password": sb.users["app"].password,
                    "interval": "100ms",
                },
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
        # The heartbeat, written through a local tier all along, saw a dip and no gap.
        beats = [t.run(lambda t=t: (t.tier.heartbeat.ok, t.tier.heartbeat.failed)) for t in locals_]
        assert all(ok >= 20 and failed == 0 for ok, failed in beats), beats
        pauses = [r["pause_ms"] for r in records]
        print(
            f"\n{writers.clients} clients, {writers.statements} statements, "
            f"{len(writers.acknowledged)} rows acknowledged, 0 errors; switchover pauses "
            f"{pauses} ms; longest client-visible stall {writers.longest * 1000:.0f} ms"
        )


def last_record(tier: TierThread) -> dict:
    return tier.run(lambda: tier.tier.switchovers[-1].as_dict())


# --- failures abort cleanly ---------------------------------------------------------------------


class Background:
    """A few PyMySQL clients writing through a tier on threads while a test breaks things."""

    def __init__(self, sb: Sandbox, tier: TierThread, clients: int = 4) -> None:
        self.conns = [app_connection(tier, sb) for _ in range(clients)]  # before any pause
        self.acknowledged: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(n, c), daemon=True)
            for n, c in enumerate(self.conns)
        ]

    def _write(self, n: int, conn) -> None:
        row = 10_000 + n * 100_000
        while not self._stop.is_set():
            row += 1
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (%s, 'bg')", (row,))
            except Exception as exc:
                self.errors.append(repr(exc))
                return
            self.acknowledged.append(row)
            time.sleep(0.01)

    def __enter__(self) -> Background:
        for thread in self._threads:
            thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for conn in self.conns:
            conn.close()

    def check(self, sb: Sandbox, primary: str) -> None:
        """No client error, and every acknowledged row is on `primary`."""
        assert not self.errors, self.errors[:3]
        assert self.acknowledged, "nothing was written"
        rows = sandbox_mod.sql(sb.server(primary), "SELECT id FROM app.t")
        assert set(self.acknowledged) <= {int(r[0]) for r in rows}


def assert_untouched(sb: Sandbox, tier: TierThread) -> None:
    """db1 is still the writable primary that the tier uses, and the tier is not paused."""
    assert not read_only(sb, "db1")
    assert tier.run(lambda: tier.tier.upstream.current.name) == "db1"
    assert tier.run(lambda: tier.tier.gate.closed) is False
    assert replication_source(sb, "db2") == f"{sb.server('db1').host}:{sb.server('db1').port}"


def test_a_candidate_that_cannot_catch_up_aborts_before_any_pause(cluster):
    sb = cluster
    config = remote_config(sb, switchover={"catch_up_timeout": "1s"})
    with TierThread(config) as tier, Background(sb, tier) as load:
        db2 = sb.server("db2")
        blocker = pymysql.connect(
            unix_socket=db2.socket, user="root", password=sb.users["root"].password
        )
        try:
            blocker.cursor().execute("FLUSH TABLES WITH READ LOCK")  # db2 cannot apply
            time.sleep(0.1)
            status, answer = http_post(tier, "/switchover?to=db2")
        finally:
            blocker.close()
        assert status == 409, answer
        assert answer["outcome"] == "aborted"
        assert "did not catch up with db1 within switchover.catch_up_timeout (1s" in answer["error"]
        assert "nothing was changed: db1 is still the primary" in answer["error"]
        assert [s["step"] for s in answer["steps"]] == ["preflight", "catch_up"]  # no pause
        time.sleep(0.2)
        assert_untouched(sb, tier)
    load.check(sb, "db1")


def test_a_peer_that_cannot_be_paused_aborts_and_resumes_everyone(cluster):
    sb = cluster
    hung = socket.socket()  # accepts connections (the kernel does) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    peer = f"127.0.0.1:{hung.getsockname()[1]}"
    config = remote_config(sb, switchover={"peers": [peer], "peer_timeout": "1s"})
    try:
        with TierThread(config) as tier, Background(sb, tier) as load:
            [record] = admin_sql(tier, "SHOW SWITCHOVERS") or [None]
            assert record is None
            with pytest.raises(pymysql.err.OperationalError) as info:
                admin_sql(tier, "SWITCHOVER TO 'db2'")
            message = info.value.args[1]
            assert message.startswith("sluice: switchover to db2:")
            assert f"peer {peer} could not be paused" in message
            assert "every tier was resumed); nothing was changed: db1 is still the" in message
            [record] = admin_sql(tier, "SHOW SWITCHOVERS")
            assert record["outcome"] == "aborted"
            assert "pause" in record["steps"] and "demote" not in record["steps"]
            time.sleep(0.2)
            assert_untouched(sb, tier)
        load.check(sb, "db1")
    finally:
        hung.close()


def test_a_candidate_that_dies_mid_switchover_is_undone(cluster, monkeypatch):
    """The candidate is killed (SIGKILL, a real crash) right after the old primary went
    read-only: the demotion is undone and traffic resumes on the old primary."""
    sb = cluster
    victim = sb.server("db2")
    original = Switchover._wait_for

    async def crash_first(self, target, position):
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        return await original(self, target, position)

    monkeypatch.setattr(Switchover, "_wait_for", crash_first)
    with TierThread(remote_config(sb)) as tier, Background(sb, tier) as load:
        status, answer = http_post(tier, "/switchover?to=db2")
        assert status == 409, answer
        assert answer["outcome"] == "aborted", answer
        assert "wait_for_candidate failed" in answer["error"]
        assert "db1 is still the primary and traffic resumed" in answer["error"]
        steps = {s["step"]: s for s in answer["steps"]}
        assert steps["undo"]["ok"] and "make db1 writable again" in steps["undo"]["detail"]
        assert steps["resume"]["ok"]
        time.sleep(0.3)
        assert not read_only(sb, "db1")
        assert tier.run(lambda: tier.tier.upstream.current.name) == "db1"
    load.check(sb, "db1")


def test_a_session_pinned_to_the_old_primary_is_told_to_reconnect(cluster):
    sb = cluster
    with TierThread(remote_config(sb)) as tier:
        pinned = app_connection(tier, sb)
        with pinned.cursor() as cur:
            cur.execute("SET @mine = 1")  # user variables pin the session to its connection
        plain = app_connection(tier, sb)
        [record] = admin_sql(tier, "SWITCHOVER TO 'db2'")
        assert record["outcome"] == "done"
        assert scalar(plain, "SELECT @@server_id") == 2
        with pytest.raises(pymysql.err.OperationalError) as info:
            scalar(pinned, "SELECT @mine")
        code, message = info.value.args
        assert code == 1927
        assert message.startswith("sluice: this session was pinned (user_variable)")
        assert "reconnect" in message
        again = app_connection(tier, sb)
        assert scalar(again, "SELECT @@server_id") == 2
        for conn in (plain, again):
            conn.close()


# --- an external orchestrator moves the primary --------------------------------------------------


def move_primary_by_hand(sb: Sandbox, old: str, new: str) -> None:
    """What an orchestrator does, without sluice: demote, promote, repoint."""
    source = sb.server(old)
    sandbox_mod.sql(source, "SET GLOBAL read_only = ON")
    position = sandbox_mod.sql(source, "SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
    target = sb.server(new)
    assert sandbox_mod.sql(target, f"SELECT MASTER_GTID_WAIT('{position}', 10)") == [["0"]]
    sandbox_mod.sql(target, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF")


def run_hook(name: str, admin: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SLUICE_ADMINS=admin, SLUICE_ADMIN_TOKEN=TOKEN)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"  # the venv's sluice
    hook = Path(__file__).parent.parent / "deploy" / "hooks" / name
    return subprocess.run(
        [str(hook), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_orchestrator_hooks_pause_then_retarget_and_resume(cluster):
    """deploy/hooks: pause before the orchestrator's takeover, retarget and resume after."""
    sb = cluster
    with TierThread(remote_config(sb)) as tier:
        client = app_connection(tier, sb)
        admin = admin_http(tier)
        pre = run_hook("sluice-pre-takeover", admin)
        assert pre.returncode == 0, pre.stderr
        assert tier.run(lambda: tier.tier.gate.closed)
        move_primary_by_hand(sb, "db1", "db2")
        # The hook may name the new primary by its address, as orchestrators do.
        db2 = sb.server("db2")
        post = run_hook("sluice-post-takeover", admin, f"{db2.host}:{db2.port}")
        assert post.returncode == 0, post.stderr
        assert "new work goes to db2 (was db1)" in post.stdout
        assert not tier.run(lambda: tier.tier.gate.closed)
        assert scalar(client, "SELECT @@server_id") == 2
        assert admin_sql(tier, "RETARGET TO 'db2'") == [{"was": "db2", "current": "db2"}]
        with client.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (7, 'hooked')")
        assert ctl.retarget([admin], TOKEN, "db9") == 1  # unknown: refused, nothing changes
        assert tier.run(lambda: tier.tier.upstream.current.name) == "db2"
        status, answer = http_post(tier, "/retarget?to=db9")
        assert status == 409 and "this tier's servers are db1" in answer["error"]
        client.close()


def test_a_primary_moved_without_sluice_is_followed_by_the_writer_check(cluster):
    sb = cluster
    with TierThread(remote_config(sb)) as tier:
        client = app_connection(tier, sb)
        move_primary_by_hand(sb, "db1", "db2")
        deadline = time.monotonic() + 15  # checked every 5 s
        while tier.run(lambda: tier.tier.upstream.current.name) != "db2":
            assert time.monotonic() < deadline, "the tier did not follow the new primary"
            time.sleep(0.2)
        with client.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (8, 'followed')")
        assert scalar(client, "SELECT @@server_id") == 2
        client.close()


def test_a_retarget_ends_open_transactions_there_and_moves_queued_clients(cluster):
    """A retarget can come at any moment (an orchestrator, the writer check): a transaction
    open on the old primary is rolled back and its client told; a client queued for a
    connection to the old primary is served by the new one."""
    sb = cluster
    with TierThread(remote_config(sb, pool={"max_connections": 1})) as tier:
        holder = app_connection(tier, sb)
        queued = app_connection(tier, sb)  # logs in while the connection is free
        holder.begin()
        with holder.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (21, 'open')")  # holds the only connection
        answer: list = []
        waiter = threading.Thread(
            target=lambda: answer.append(scalar(queued, "SELECT @@server_id")), daemon=True
        )
        waiter.start()
        deadline = time.monotonic() + 5
        while not tier.run(lambda: len(tier.tier.pools.servers["db1"].waiters)):
            assert time.monotonic() < deadline, "the second client never queued"
            time.sleep(0.02)
        move_primary_by_hand(sb, "db1", "db2")
        status, result = http_post(tier, "/retarget?to=db2")
        assert status == 200 and result["current"] == "db2", result
        waiter.join(10)
        assert answer == [2]  # served by the new primary, not the old one
        with pytest.raises(pymysql.err.OperationalError) as info, holder.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (22, 'after')")
        code, message = info.value.args
        assert code == 1927
        assert "your open transaction on db1 was rolled back" in message
        rows = sandbox_mod.sql(sb.server("db2"), "SELECT id FROM app.t WHERE id IN (21, 22)")
        assert rows == []  # nothing of it was committed anywhere
        queued.close()


def test_semi_sync_follows_the_writer(cluster):
    """The new primary waits for semi-sync replicas as the old one did, and every server
    that now replicates from it (the old primary included) acknowledges as a semi-sync
    replica: a lossless cluster stays lossless after the switchover."""
    sb = cluster
    sandbox_mod.sql(
        sb.server("db1"),
        "SET GLOBAL rpl_semi_sync_master_enabled = ON;"
        "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC;"
        "SET GLOBAL rpl_semi_sync_master_timeout = 4000",
    )
    for name in ("db2", "db3"):
        sandbox_mod.sql(
            sb.server(name),
            "SET GLOBAL rpl_semi_sync_slave_enabled = ON; STOP SLAVE IO_THREAD;"
            "START SLAVE IO_THREAD",
        )

    def variables(name: str) -> dict[str, str]:
        rows = sandbox_mod.sql(sb.server(name), "SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%'")
        return {row[0]: row[1] for row in rows}

    with TierThread(remote_config(sb)) as tier:
        [record] = admin_sql(tier, "SWITCHOVER TO 'db2'")
        assert record["outcome"] == "done", record
        assert record["warnings"] is None, record
    new = variables("db2")
    assert new["rpl_semi_sync_master_enabled"] == "ON"
    assert new["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
    assert new["rpl_semi_sync_master_timeout"] == "4000"
    old = variables("db1")
    assert old["rpl_semi_sync_slave_enabled"] == "ON"
    assert old["rpl_semi_sync_master_enabled"] == "OFF"
    assert variables("db3")["rpl_semi_sync_slave_enabled"] == "ON"
    wait_following(sb, "db2")
    deadline = time.monotonic() + 10
    while True:  # both replicas connected to it as semi-sync replicas
        status = sandbox_mod.sql(
            sb.server("db2"), "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'"
        )
        if int(status[0][1]) == 2:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
