"""Pool starvation: logins never wait for the pool, idle or endless transactions are bounded,
and one user cannot take every connection of a shared pool."""

from __future__ import annotations

import threading
import time
import uuid

import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.admin import views
from proxy.config import parse_config
from proxy.protocol.constants import Capability
from proxy.session_state import TRACKING_SETUP

from .harness import TierThread, scalar, tier_config
from .rawclient import RawClient

POOL = 4
SECOND_USER = "app2"
TRACK = int(Capability.SESSION_TRACK)
TRACKING_SETUP_COMMAND = b"\x03" + TRACKING_SETUP.encode()


@pytest.fixture(scope="module")
def second_user(sandbox):
    sandbox_mod.sql(
        sandbox.primary,
        f"CREATE USER IF NOT EXISTS '{SECOND_USER}'@'%' IDENTIFIED BY 'app2-pass';"
        f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON app.* TO '{SECOND_USER}'@'%'",
    )
    sandbox_mod.wait_replicas_caught_up(sandbox)
    return SECOND_USER


def users(sandbox, **app_extra):
    return [
        {"name": "app", "password": sandbox.users["app"].password, **app_extra},
        {"name": SECOND_USER, "password": "app2-pass"},
    ]


def local_chain(sandbox, *, pool: dict, app_extra: dict | None = None):
    """A remote tier (generous cap) and a local tier with `pool` in front of it."""
    remote = TierThread(
        tier_config(sandbox, users=users(sandbox), pool={"max_connections": 20})
    ).start()
    local = TierThread(
        parse_config(
            {
                "tier": "local",
                "listen": ["127.0.0.1:0"],
                "users": users(sandbox, **(app_extra or {})),
                "upstream": {
                    "servers": [{"name": "remote1", "address": f"127.0.0.1:{remote.port}"}]
                },
                "pool": {"max_connections": POOL, **pool},
                "limits": {"handshake_timeout": "10s"},
            },
            allow_zero_port=True,
        )
    ).start()
    return remote, local


@pytest.fixture
def chain(sandbox, second_user):
    remote, local = local_chain(sandbox, pool={"acquire_timeout": "20s"})
    yield remote, local
    local.stop()
    remote.stop()


def connect(tier: TierThread, sandbox, user: str = "app", **kw) -> pymysql.Connection:
    password = sandbox.users["app"].password if user == "app" else "app2-pass"
    params = dict(
        host="127.0.0.1",
        port=tier.port,
        user=user,
        password=password,
        database="app",
        autocommit=True,
        connect_timeout=30,
        read_timeout=30,
    )
    params.update(kw)
    return pymysql.connect(**params)


def idle_transactions(tier: TierThread, sandbox, n: int) -> list[pymysql.Connection]:
    """`n` clients that opened a transaction and went idle (each holds a pooled connection)."""
    out = []
    for _ in range(n):
        conn = connect(tier, sandbox)
        conn.begin()
        scalar(conn, "SELECT 1")
        out.append(conn)
    return out


def test_login_does_not_wait_for_a_pool_held_by_idle_transactions(chain, sandbox):
    """Four forgotten BEGINs held the pool of four: a fifth client could not even log in."""
    _, local = chain
    connect(local, sandbox).close()  # the (user, schema) pair is known upstream from now on
    held = idle_transactions(local, sandbox, POOL)
    started = time.monotonic()
    fifth = connect(local, sandbox)
    login_seconds = time.monotonic() - started
    assert login_seconds < 1.0, f"login took {login_seconds:.2f}s"
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(scalar(fifth, "SELECT 5")))
    worker.start()
    time.sleep(0.3)
    assert not result  # it waits for a connection ...
    held[0].commit()  # ... until one frees up
    worker.join(10)
    assert result == [5]
    for conn in [*held, fifth]:
        conn.close()


def test_first_login_of_a_pair_under_saturation_is_checked_at_its_first_command(chain, sandbox):
    """An unknown (user, schema) pair cannot be checked while the pool is saturated: the login
    completes, and the first command gets the database's own answer for a bad schema."""
    _, local = chain
    held = idle_transactions(local, sandbox, POOL)
    started = time.monotonic()
    bad = connect(local, sandbox, database="no_such_db", read_timeout=30)
    assert time.monotonic() - started < 1.0
    worker_error: list[BaseException] = []

    def first_command() -> None:
        try:
            scalar(bad, "SELECT 1")
        except BaseException as exc:
            worker_error.append(exc)

    worker = threading.Thread(target=first_command)
    worker.start()
    time.sleep(0.2)
    held[0].commit()
    worker.join(10)
    assert worker_error, "a login to a missing schema must not be served"
    assert isinstance(worker_error[0], pymysql.err.OperationalError | pymysql.err.InternalError)
    assert worker_error[0].args[0] == 1049
    for conn in held:
        conn.close()


def test_pool_wait_timeout_is_a_1040_for_the_command_not_a_bad_handshake(sandbox, second_user):
    remote, local = local_chain(sandbox, pool={"acquire_timeout": "1s"})
    try:
        connect(local, sandbox).close()
        held = idle_transactions(local, sandbox, POOL)
        fifth = connect(local, sandbox)  # logs in at once
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            scalar(fifth, "SELECT 1")
        assert 0.9 < time.monotonic() - started < 5
        code, message = info.value.args
        assert code == 1040
        assert "no upstream connection" in message and "bad handshake" not in message
        # The session stays usable once a connection frees up.
        held[0].commit()
        assert scalar(fifth, "SELECT 7") == 7
        for conn in [*held, fifth]:
            conn.close()
    finally:
        local.stop()
        remote.stop()


def test_idle_transaction_past_its_timeout_is_rolled_back_and_the_pool_serves_others(
    sandbox, second_user
):
    remote, local = local_chain(
        sandbox, pool={"max_connections": 1, "idle_transaction_timeout": "1s"}
    )
    table = f"itt_{uuid.uuid4().hex[:8]}"
    try:
        admin = connect(local, sandbox)
        admin.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        forgetful = connect(local, sandbox)
        forgetful.begin()
        forgetful.cursor().execute(f"INSERT INTO {table} VALUES (1)")
        started = time.monotonic()
        # The one pooled connection is held by that transaction; another client is served
        # once the timeout rolled it back.
        assert scalar(admin, f"SELECT COUNT(*) FROM {table}") == 0
        assert 0.9 < time.monotonic() - started < 4
        with pytest.raises(pymysql.err.OperationalError) as info:
            forgetful.cursor().execute(f"INSERT INTO {table} VALUES (2)")
        assert info.value.args[0] == 1927
        assert "idle_transaction_timeout" in info.value.args[1]
        assert scalar(admin, f"SELECT COUNT(*) FROM {table}") == 0  # nothing of it stayed
        stats = local.run(lambda: views.pool_rows(local.tier))
        assert stats and all(row.idle_in_transaction_ms == 0 for row in stats)
        admin.cursor().execute(f"DROP TABLE {table}")
        admin.close()
    finally:
        local.stop()
        remote.stop()


def test_transaction_past_max_transaction_time_is_ended_even_while_busy(sandbox, second_user):
    remote, local = local_chain(sandbox, pool={"max_transaction_time": "1s"})
    try:
        conn = connect(local, sandbox)
        conn.begin()
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            scalar(conn, "SELECT SLEEP(10)")
        assert time.monotonic() - started < 4
        assert info.value.args[0] == 1927
        assert "max_transaction_time" in info.value.args[1]
        other = connect(local, sandbox)
        assert scalar(other, "SELECT 3") == 3
        other.close()
    finally:
        local.stop()
        remote.stop()


def test_a_user_over_its_share_waits_while_others_are_served(sandbox, second_user):
    remote, local = local_chain(
        sandbox, pool={"acquire_timeout": "20s"}, app_extra={"max_connections": 2}
    )
    try:
        held = idle_transactions(local, sandbox, 2)  # app's whole share
        third: list[object] = []
        waiting = connect(local, sandbox)
        worker = threading.Thread(target=lambda: third.append(scalar(waiting, "SELECT 3")))
        worker.start()
        time.sleep(0.3)
        assert not third, "app is at its share of 2: its third command must wait"
        # Two connections of the pool of four are still free: the other user gets them.
        others = [connect(local, sandbox, user=SECOND_USER) for _ in range(2)]
        for other in others:
            other.begin()
            assert scalar(other, "SELECT 2") == 2
        rows = {r.user: r for r in local.run(lambda: views.pool_rows(local.tier))}
        assert rows["app"].active == 2 and rows["app"].waiting == 1
        assert rows["app"].oldest_wait_ms >= 200
        assert rows["app"].idle_in_transaction_ms > 0
        held[0].commit()
        worker.join(10)
        assert third == [3]
        for conn in [*held, waiting, *others]:
            conn.close()
    finally:
        local.stop()
        remote.stop()


def test_set_names_is_answered_without_a_connection_exactly_as_relayed(sandbox, second_user):
    """Drivers send SET NAMES on every connect: once the upstream has answered it, sluice
    answers it for a session holding no connection (byte for byte as relayed), so even a
    saturated pool does not hold up a PyMySQL connect."""
    remote, local = local_chain(sandbox, pool={"max_connections": 1, "acquire_timeout": "20s"})
    password = sandbox.users["app"].password
    address = ("127.0.0.1", local.port)
    try:
        first = RawClient.connect(address, "app", password, "app", extra_capabilities=TRACK)
        first.command(b"\x03SET NAMES latin1")
        relayed = first.read_payload()
        first.close()
        plain_direct = RawClient.connect(
            ("127.0.0.1", sandbox.primary.port), "app", password, "app"
        )
        plain_direct.command(b"\x03SET NAMES latin1")
        direct = plain_direct.read_payload()
        plain_direct.close()

        holder = connect(local, sandbox)
        holder.begin()
        scalar(holder, "SELECT 1")  # the only pooled connection is taken
        tracking = RawClient.connect(address, "app", password, "app", extra_capabilities=TRACK)
        plain = RawClient.connect(address, "app", password, "app")
        for client in (tracking, plain):
            client.sock.settimeout(2)  # answered at once, not after the pool frees up
            client.command(b"\x03SET NAMES latin1")
        assert tracking.read_payload() == relayed
        assert plain.read_payload() == direct
        holder.commit()
        assert plain.query_one("SELECT @@character_set_client").values == [("latin1",)]
        for client in (tracking, plain):
            client.close()
        holder.close()
    finally:
        local.stop()
        remote.stop()


def test_a_remote_tier_acknowledges_session_tracking_setup_without_a_connection(
    sandbox, second_user
):
    """A local tier's every new pooled connection asks its remote tier for session tracking;
    the remote tier's own connections always report every change, so it answers at once,
    even with its pool taken, and the state changes after it are still reported."""
    remote = TierThread(
        tier_config(
            sandbox,
            users=users(sandbox),
            pool={"max_connections": 1, "acquire_timeout": "20s"},
        )
    ).start()
    password = sandbox.users["app"].password
    address = ("127.0.0.1", remote.port)
    try:
        holder = connect(remote, sandbox)
        holder.begin()
        scalar(holder, "SELECT 1")  # the only pooled connection is taken
        client = RawClient.connect(address, "app", password, "app", extra_capabilities=TRACK)
        client.sock.settimeout(2)  # answered at once, not after the pool frees up
        client.command(TRACKING_SETUP_COMMAND)
        assert client.read_payload()[0] == 0x00  # OK
        holder.commit()
        client.sock.settimeout(30)
        assert client.query_one("SELECT @@session_track_schema").values == [("1",)]
        client.command(b"\x03SET SESSION sql_mode='ANSI'")
        ok = client.read_payload()
        assert ok[0] == 0x00 and b"sql_mode" in ok  # the change is reported
        client.close()
        holder.close()
    finally:
        remote.stop()
