"""Liveness details that need no process faults: socket options, COM_PING, KILL of a thread id
from SHOW PROCESSLIST, pools listed before any traffic, and an outside orchestrator's
read-only switch buffered instead of failing."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import aiomysql
import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.admin import views

from .harness import TierThread, app_connection, monitored_upstream, scalar, tier_config
from .rawclient import RawClient


def test_client_and_upstream_sockets_get_keepalive_and_a_user_timeout(sandbox):
    config = tier_config(
        sandbox,
        limits={"keepalive": {"idle": "7s", "interval": "3s", "count": 4}},
        upstream={
            "servers": [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sandbox.servers],
            "keepalive": {"idle": "5s", "interval": "2s", "count": 3, "user_timeout": "9s"},
        },
    )
    with TierThread(config) as tier:
        conn = app_connection(tier, sandbox)
        conn.begin()
        scalar(conn, "SELECT 1")  # holds its upstream connection

        def options() -> tuple[tuple[int, ...], tuple[int, ...]]:
            (session,) = tier.tier.sessions.values()

            def read(sock) -> tuple[int, ...]:
                return (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                )

            client = read(session.transport.get_extra_info("socket"))
            upstream = read(session.backend.transport.get_extra_info("socket"))
            return client, upstream

        client, upstream = tier.run(options)
        assert client == (1, 7, 3, 4, 19_000)  # user timeout: idle + interval x count
        assert upstream == (1, 5, 2, 3, 9_000)
        conn.close()


def test_ping_is_answered_without_a_connection_as_the_server_answers_it(sandbox):
    """Health probes and drivers' pre-ping must not wait for the pool or for a writer."""
    password = sandbox.users["app"].password
    with TierThread(tier_config(sandbox, pool={"max_connections": 1})) as tier:
        holder = app_connection(tier, sandbox)
        holder.begin()
        scalar(holder, "SELECT 1")  # the only pooled connection is taken
        answers = []
        for port in (sandbox.primary.port, tier.port):
            client = RawClient.connect(("127.0.0.1", port), "app", password, timeout=2)
            client.command(b"\x0e")
            answers.append(client.read_payload())
            client.close()
        assert answers[0] == answers[1] == b"\x00\x00\x00\x02\x00\x00\x00"
        holder.close()


def test_show_pools_lists_every_server_and_user_before_any_traffic(sandbox):
    with TierThread(tier_config(sandbox, pool={"max_connections": 7})) as tier:
        rows = tier.run(lambda: views.pool_rows(tier.tier))
        assert {(r.server, r.user) for r in rows} == {(s.name, "app") for s in sandbox.servers}
        assert all(r.active == r.idle == r.waiting == 0 and r.cap == 7 for r in rows)


async def test_kill_of_a_thread_id_from_show_processlist_ends_that_connection(sandbox, tier):
    """aiomysql's test_issue_36: the id SHOW PROCESSLIST gives for the client's own statement
    is killed; its session breaks and the process list no longer shows it."""
    password = sandbox.users["app"].password
    conn = await aiomysql.connect(
        host="127.0.0.1", port=tier.port, user="app", password=password, db="app"
    )
    cur = await conn.cursor()
    await cur.execute("show processlist")
    kill_id = next(row[0] for row in await cur.fetchall() if row[7] == "show processlist")
    with pytest.raises(Exception):  # noqa: B017 - any error: the connection is broken
        await conn.kill(kill_id)
        await cur.execute("show tables")
    other = await aiomysql.connect(
        host="127.0.0.1", port=tier.port, user="app", password=password, db="app"
    )
    cur2 = await other.cursor()
    await cur2.execute("show processlist")
    assert kill_id not in [row[0] for row in await cur2.fetchall()]
    other.close()
    conn.close()


@pytest.fixture
def cluster(tmp_path_factory):
    """A primary and a replica of our own: the test moves the writer."""
    from .conftest import short_tmp_dir

    path = short_tmp_dir(tmp_path_factory, "orchestrated")
    sb = sandbox_mod.up(path, replicas=1)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


def test_an_outside_switch_read_only_first_costs_writers_no_error(cluster):
    """An orchestrator demotes the primary (read_only) and then promotes the replica: the
    writes the old primary refused with 1290 meanwhile wait and land on the new primary."""
    sb = cluster
    table = f"app.moved_{uuid.uuid4().hex[:8]}"
    sandbox_mod.sql(sb.primary, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    sandbox_mod.wait_replicas_caught_up(sb)
    with TierThread(tier_config(sb, upstream=monitored_upstream(sb))) as tier:
        errors: list[BaseException] = []
        acked: list[int] = []
        stop = threading.Event()

        def writer(start: int) -> None:
            conn = app_connection(tier, sb)
            n = start
            while not stop.is_set():
                n += 1
                try:
                    conn.cursor().execute(f"INSERT INTO {table} VALUES ({n})")
                    acked.append(n)
                except pymysql.MySQLError as exc:
                    errors.append(exc)
            conn.close()

        threads = [threading.Thread(target=writer, args=(i * 1_000_000,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        replica = sb.server("db2")
        sandbox_mod.sql(sb.primary, "SET GLOBAL read_only = ON")  # writes now get 1290
        time.sleep(0.5)
        sandbox_mod.sql(replica, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF")
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(20)
        assert not errors, errors[:3]
        assert tier.run(lambda: tier.tier.upstream.current.name) == "db2"
        rows = {int(r[0]) for r in sandbox_mod.sql(replica, f"SELECT id FROM {table}")}
        assert set(acked) <= rows
        # The old primary comes back writable (not replicating): two writers, and sluice
        # keeps the one it follows rather than guessing.
        sandbox_mod.sql(sb.primary, "SET GLOBAL read_only = OFF")
        tier.call(tier.tier.check_writer())
        assert tier.run(lambda: tier.tier.upstream.current.name) == "db2"
        conn = app_connection(tier, sb)
        assert scalar(conn, "SELECT @@server_id") == replica.server_id
        conn.close()
