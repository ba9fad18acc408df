"""Unplanned faults against real `sluice run` processes and real MariaDB servers.

Each test plays one fault of issue "Gray failures" (a hung remote tier, a dead primary that an
outside orchestrator replaces, a client that vanishes mid-query, a client's own wait_timeout, a
host that vanishes without a reset) and checks what clients see against what they must see.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pymysql
import pytest

from proxy import sandbox as sandbox_mod

from .conftest import short_tmp_dir
from .harness import scalar
from .processes import Load, NetNamespace, TierProcess, make_table
from .rawclient import RawClient

APP_PASSWORD = "app-pass"


def app_users() -> list[dict[str, str]]:
    return [{"name": "app", "password": APP_PASSWORD}]


def remote_config(sb, *, monitor: bool = False, **extra) -> dict:
    upstream: dict = {
        "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers]
        if monitor
        else [{"name": sb.primary.name, "address": f"{sb.primary.host}:{sb.primary.port}"}]
    }
    if monitor:
        upstream["monitor"] = {
            "user": sb.users["monitor"].name,
            "password": sb.users["monitor"].password,
        }
    config = {
        "tier": "remote",
        "users": app_users(),
        "upstream": upstream,
        "pool": {"max_connections": 20, "acquire_timeout": "20s"},
    }
    config.update(extra)
    return config


def local_config(*remotes: TierProcess, **extra) -> dict:
    config = {
        "tier": "local",
        "users": app_users(),
        "upstream": {
            "servers": [
                {"name": f"remote{i}", "address": r.address} for i, r in enumerate(remotes, 1)
            ]
        },
        "pool": {"max_connections": 24, "acquire_timeout": "20s"},
    }
    config.update(extra)
    return config


@pytest.fixture
def work(tmp_path_factory) -> Path:
    return short_tmp_dir(tmp_path_factory, "faults")


def run(coro):
    return asyncio.run(coro)


# --- a hung remote tier ----------------------------------------------------------------------


def test_a_hung_remote_tier_is_routed_around_within_seconds(sandbox, work, processes):
    """One of two remote tiers stops (SIGSTOP; its kernel still accepts connections): from 3 s
    into the hang the other serves everyone at >= 70% of the rate before, and each client sees
    at most one error (its command in flight on the hung tier)."""
    table = make_table(sandbox)
    remote_a = TierProcess(work, "remote-a", remote_config(sandbox)).start()
    processes.append(remote_a)
    remote_b = TierProcess(work, "remote-b", remote_config(sandbox)).start()
    processes.append(remote_b)
    local = TierProcess(work, "local", local_config(remote_a, remote_b)).start()
    processes.append(local)
    # Clients that pause between commands, so the rate measures how many are being served,
    # not how fast this one test process can drive them.
    load = Load("127.0.0.1", local.port, APP_PASSWORD, table, clients=20, think=0.01)
    marks: dict[str, float] = {}

    async def fault() -> None:
        await asyncio.sleep(3.0)
        marks["stop"] = time.monotonic()
        remote_a.signal(signal.SIGSTOP)
        await asyncio.sleep(8.0)
        remote_a.signal(signal.SIGCONT)
        marks["cont"] = time.monotonic()

    run(load.run(13.0, fault()))
    stop = marks["stop"]
    before = load.rate(stop - 2.0, stop)
    during = load.rate(stop + 3.0, stop + 8.0)
    errors = load.errors(issued_after=stop - 1.0)
    per_client = Counter(o.client for o in errors)
    print(
        f"hung remote tier: {before:.0f}/s before, {during:.0f}/s from 3 s into the hang, "
        f"{len(errors)} errors ({dict(Counter(o.error for o in errors))}), "
        f"longest stall {load.stall(stop - 1.0):.2f}s"
    )
    assert before > 50, f"the load did not run ({before:.0f}/s)"
    assert during >= 0.7 * before, f"{during:.0f}/s while hung vs {before:.0f}/s before"
    served = {o.client for o in load.outcomes if o.error is None and o.ended > stop + 3.0}
    stuck = [o for o in load.outcomes if o.issued < stop + 3.0 and o.ended > stop + 7.5]
    assert len(served) == load.clients and not stuck, f"{len(stuck)} clients stuck in the hang"
    assert max(per_client.values(), default=0) <= 1, per_client
    assert {o.error for o in errors} <= {"1927"}, Counter(o.error for o in errors)
    assert "remote1 is down" in local.log()
    servers = {s["name"]: s for s in local.status()["servers"]}
    assert servers["remote1"]["health"].startswith("ok")  # back after SIGCONT


# --- a dead primary, replaced by an outside orchestrator --------------------------------------


@pytest.fixture
def semi_sync_cluster(tmp_path_factory):
    path = short_tmp_dir(tmp_path_factory, "semisync")
    sb = sandbox_mod.up(path, replicas=1, semi_sync=True, max_connections=200)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


def kill_dead(pid: int) -> None:
    """kill -9, and return once every thread of the process is gone (its sockets closed by
    the kernel): a thread group leader shows as a zombie while other threads still exit."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            states = [
                Path(f"/proc/{pid}/task/{t}/stat").read_text().split(") ", 1)[1][0] for t in tasks
            ]
        except (FileNotFoundError, IndexError, ProcessLookupError):
            return
        if all(state in "ZX" for state in states):
            return
        time.sleep(0.002)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def promote(sb, name: str) -> None:
    """What an orchestrator does once the primary is dead: let the replica apply all it
    received (with AFTER_SYNC semi-sync that is every acknowledged write), then make it the
    writer."""
    replica = sb.server(name)
    deadline = time.monotonic() + 20
    while True:
        status = sandbox_mod._replica_status(replica)
        applied = sandbox_mod.sql(replica, "SELECT @@gtid_slave_pos")[0][0]
        if status.get("Gtid_IO_Pos", "") in ("", applied):
            break
        assert time.monotonic() < deadline, f"{name} did not apply its relay log: {status}"
        time.sleep(0.05)
    sandbox_mod.sql(replica, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF")


def test_a_dead_primary_replaced_by_an_orchestrator_costs_no_error_and_no_write(
    semi_sync_cluster, work, processes
):
    """kill -9 of the primary, the replica promoted 1.5 s later from outside: commands
    issued after the kill wait instead of failing, the first write lands <= 1.5 s after the
    promotion, and every acknowledged write is on the new primary (lossless semi-sync)."""
    sb = semi_sync_cluster
    table = make_table(sb)
    sandbox_mod.wait_replicas_caught_up(sb)
    remote = TierProcess(work, "remote", remote_config(sb, monitor=True)).start()
    processes.append(remote)
    local = TierProcess(work, "local", local_config(remote)).start()
    processes.append(local)
    load = Load("127.0.0.1", local.port, APP_PASSWORD, table, clients=20, think=0.005)
    marks: dict[str, float] = {}

    async def fault() -> None:
        await asyncio.sleep(3.0)
        kill_dead(sb.primary.pid)
        marks["kill"] = time.monotonic()  # commands issued from now on find it dead
        await asyncio.sleep(1.5)
        await asyncio.to_thread(promote, sb, "db2")
        marks["promoted"] = time.monotonic()

    run(load.run(9.0, fault()))
    kill, promoted = marks["kill"], marks["promoted"]
    after = load.errors(issued_after=kill)
    first = min(o.ended for o in load.outcomes if o.error is None and o.issued > kill)
    acked = load.acknowledged()
    on_new = {int(row[0]) for row in sandbox_mod.sql(sb.server("db2"), f"SELECT id FROM {table}")}
    lost = [row for row in acked if row not in on_new]
    print(
        f"dead primary: {len(load.errors())} errors in all "
        f"({len(load.errors()) - len(after)} in flight at the kill, {len(after)} after it); "
        f"first write {first - promoted:+.3f}s after the promotion; "
        f"{len(acked)} acknowledged, {len(lost)} lost; longest stall {load.stall(kill):.2f}s"
    )
    assert not after, Counter(o.error for o in after)
    assert 0 < first - promoted <= 1.5
    assert not lost
    status = remote.status()
    assert status["upstream"]["current"] == "db2"
    assert status["failover"]["last"]["writer"] == "db2"


# --- no work for clients that left ------------------------------------------------------------


def running_benchmarks(sb) -> int:
    rows = sandbox_mod.sql(
        sb.primary,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
        "WHERE INFO LIKE 'SELECT BENCHMARK(4000000000%'",
    )
    return int(rows[0][0])


def test_a_query_whose_client_vanished_is_killed_on_the_database(sandbox, work, processes):
    """A client that leaves (RST) during a long query through both tiers: the query is gone
    from the database within 3 s (it used to run on for as long as it takes)."""
    remote = TierProcess(work, "remote", remote_config(sandbox, monitor=True)).start()
    processes.append(remote)
    local = TierProcess(work, "local", local_config(remote)).start()
    processes.append(local)
    client = RawClient.connect(("127.0.0.1", local.port), "app", APP_PASSWORD, "app")
    client.command(b"\x03SELECT BENCHMARK(4000000000, SHA1('x'))")
    deadline = time.monotonic() + 10
    while running_benchmarks(sandbox) == 0:
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.05)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()  # a reset, not a polite close
    left = time.monotonic()
    while running_benchmarks(sandbox):
        assert time.monotonic() - left < 3.0, "the abandoned query still runs"
        time.sleep(0.05)
    print(f"abandoned query gone from the database {time.monotonic() - left:.2f}s after its client")


# --- the client's own wait_timeout ------------------------------------------------------------


@pytest.mark.parametrize("target", ["direct", "sluice"])
def test_connection_gone_away_after_the_clients_own_wait_timeout(sandbox, work, processes, target):
    """PyMySQL's and aiomysql's own test_connection_gone_away: SET wait_timeout=1, idle 2 s,
    the next statement fails with 2006/2013, through both tiers as direct."""
    port = sandbox.primary.port
    if target == "sluice":
        remote = TierProcess(work, "remote", remote_config(sandbox)).start()
        processes.append(remote)
        local = TierProcess(work, "local", local_config(remote)).start()
        processes.append(local)
        port = local.port
    conn = pymysql.connect(
        host="127.0.0.1", port=port, user="app", password=APP_PASSWORD, database="app"
    )
    cur = conn.cursor()
    cur.execute("SET wait_timeout=1")
    time.sleep(2)
    with pytest.raises(pymysql.OperationalError) as info:
        cur.execute("SELECT 1+1")
    assert info.value.args[0] in (2006, 2013)

    async def aiomysql_gone_away() -> int:  # aiomysql's own test_connection_gone_away
        import aiomysql

        aconn = await aiomysql.connect(
            host="127.0.0.1", port=port, user="app", password=APP_PASSWORD, db="app"
        )
        acur = await aconn.cursor()
        await acur.execute("SET wait_timeout=1")
        await asyncio.sleep(2)
        try:
            await acur.execute("SELECT 1+1")
        except pymysql.OperationalError as exc:
            return exc.args[0]
        finally:
            aconn.close()
        return 0

    assert run(aiomysql_gone_away()) in (2006, 2013)


# --- a host that vanishes without a reset -----------------------------------------------------

netns = pytest.mark.skipif(
    not NetNamespace.available(), reason="needs root and iproute2 for network namespaces"
)
KEEPALIVE = {"idle": "1s", "interval": "1s", "count": 2}

CLIENT_IN_NAMESPACE = """
import sys, time, pymysql
conn = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="app",
                       password=sys.argv[3], database="app")
conn.begin()
conn.cursor().execute("SELECT 1")   # the transaction holds a pooled connection now
print("ready", flush=True)
time.sleep(120)
"""


@netns
def test_an_app_host_that_vanishes_frees_its_session_within_the_keepalive_bound(
    sandbox, work, processes
):
    """The app host loses its link (packets dropped, no RST): its session and the pooled
    connection its transaction held are freed within limits.keepalive, not Linux's ~15 min."""
    ns = NetNamespace("sluice-app", 61).create()
    try:
        tier = TierProcess(
            work,
            "remote",
            remote_config(sandbox, limits={"keepalive": KEEPALIVE}),
            host=ns.outer_ip,
        ).start()
        processes.append(tier)
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                sys.executable,
                "-c",
                CLIENT_IN_NAMESPACE,
                ns.outer_ip,
                str(tier.port),
                APP_PASSWORD,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout.readline().strip() == "ready"
            pools = tier.status()["pools"]
            assert sum(p["active"] for p in pools) == 1
            ns.down()
            gone = time.monotonic()
            while tier.status()["sessions"]["total"]:
                assert time.monotonic() - gone < 8, "the vanished client's session lingers"
                time.sleep(0.2)
            assert sum(p["active"] for p in tier.status()["pools"]) == 0
            print(f"vanished app host: session freed {time.monotonic() - gone:.1f}s after")
        finally:
            client.kill()
            client.wait(10)
    finally:
        ns.destroy()


@netns
def test_a_remote_tier_that_vanishes_mid_command_is_noticed_within_the_keepalive_bound(
    sandbox, work, processes
):
    """The remote tier's host loses its link while a command runs there: the local tier's
    keepalive (health probes slowed down, so the keepalive is what notices) ends it within
    a few seconds with 1927 instead of waiting for a reply that never comes."""
    ns = NetNamespace("sluice-rt", 62).create()
    try:
        remote_cfg = remote_config(sandbox)
        remote_cfg["upstream"] = {
            "servers": [{"name": "db1", "address": f"unix:{sandbox.primary.socket}"}]
        }
        remote = TierProcess(work, "remote", remote_cfg, host=ns.inner_ip, netns=ns.name).start()
        processes.append(remote)
        local = TierProcess(
            work,
            "local",
            local_config(
                remote,
                upstream={
                    "servers": [{"name": "remote1", "address": remote.address}],
                    "keepalive": KEEPALIVE,
                    "health": {"interval": "60s"},
                },
            ),
        ).start()
        processes.append(local)
        conn = pymysql.connect(
            host="127.0.0.1",
            port=local.port,
            user="app",
            password=APP_PASSWORD,
            database="app",
            read_timeout=30,
        )
        assert scalar(conn, "SELECT 1") == 1
        errors: list[BaseException] = []

        def long_query() -> None:
            try:
                scalar(conn, "SELECT SLEEP(25)")
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=long_query)
        worker.start()
        time.sleep(0.5)
        ns.down()
        gone = time.monotonic()
        worker.join(20)
        took = time.monotonic() - gone
        assert errors and errors[0].args[0] == 1927, errors
        assert took < 8, f"noticed after {took:.1f}s"
        print(f"vanished remote tier: the command in flight ended {took:.1f}s after")
    finally:
        ns.destroy()
