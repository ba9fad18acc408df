"""App connections → local tier → remote tier → database: one code path, chained."""

from __future__ import annotations

import asyncio
import threading
import uuid

import aiomysql
import pymysql
import pytest

from proxy.config import parse_config

from .harness import TierThread, tier_config
from .harness import app_connection as connect
from .harness import scalar as value
from .rawclient import RawClient
from .test_multiplexing import ConnectionSampler, small_db  # noqa: F401  (module fixture)

REMOTE_CAP = 6
LOCAL_CAP = 4


@pytest.fixture(scope="module")
def chain(small_db):  # noqa: F811
    """One remote tier (cap 6) in front of the database, two local tiers (pool 4) in front
    of it."""
    remote = TierThread(
        tier_config(small_db, pool={"max_connections": REMOTE_CAP, "acquire_timeout": "30s"})
    ).start()
    locals_ = []
    for _ in range(2):
        config = parse_config(
            {
                "tier": "local",
                "listen": ["127.0.0.1:0"],
                "users": [{"name": "app", "password": small_db.users["app"].password}],
                "upstream": {
                    "servers": [{"name": "remote1", "address": f"127.0.0.1:{remote.port}"}]
                },
                "pool": {"max_connections": LOCAL_CAP, "acquire_timeout": "30s"},
            },
            allow_zero_port=True,
        )
        locals_.append(TierThread(config).start())
    yield remote, locals_
    for tier in locals_:
        tier.stop()
    remote.stop()


def test_queries_errors_and_transactions_pass_through_both_tiers(chain, small_db):  # noqa: F811
    _, (local, _) = chain
    conn = connect(local, small_db)
    assert "MariaDB" in conn.get_server_info()
    table = f"c_{uuid.uuid4().hex[:8]}"
    conn.cursor().execute(f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    with pytest.raises(pymysql.err.ProgrammingError) as info:
        conn.cursor().execute("SELECT * FROM no_such_table")
    assert info.value.args[0] == 1146
    conn.begin()
    conn.cursor().execute(f"INSERT INTO {table} (v) VALUES (1)")
    conn.rollback()
    conn.cursor().execute(f"INSERT INTO {table} (v) VALUES (2)")
    assert value(conn, f"SELECT COUNT(*) FROM {table}") == 1
    assert value(conn, "SELECT LAST_INSERT_ID()") == 2
    conn.close()


def test_session_state_and_pins_hold_across_both_tiers(chain, small_db):  # noqa: F811
    _, (local, _) = chain
    a, b = connect(local, small_db), connect(local, small_db)
    a.cursor().execute("SET time_zone = '+04:00'")
    a.cursor().execute("SET @mine = 'a'")
    for _ in range(3):
        assert value(b, "SELECT @@time_zone") != "+04:00"
        assert value(b, "SELECT @mine") is None
        assert value(a, "SELECT @@time_zone") == "+04:00"
        assert value(a, "SELECT @mine") == "a"
    a.close()
    b.close()


def test_prepared_statements_pass_through_both_tiers(chain, small_db):  # noqa: F811
    _, (local, _) = chain
    with RawClient.connect(("127.0.0.1", local.port), "app", small_db.users["app"].password) as c:
        stmt, _, _ = c.prepare("SELECT ? + 1")
        for i in range(5):
            (r,) = c.execute(stmt, [i])
            assert r.values == [(i + 1,)]


async def test_a_thousand_clients_per_local_tier_stay_under_the_remote_cap(chain, small_db):  # noqa: F811
    remote, locals_ = chain
    errors: list[str] = []

    async def client(n: int) -> None:
        tier = locals_[n % 2]
        try:
            conn = await aiomysql.connect(
                host="127.0.0.1",
                port=tier.port,
                user="app",
                password=small_db.users["app"].password,
                db="app",
                autocommit=True,
            )
            async with conn.cursor() as cur:
                for i in range(3):
                    await cur.execute("SELECT %s * 2", (n + i,))
                    assert (await cur.fetchone()) == (2 * (n + i),)
                await conn.begin()
                await cur.execute("SELECT 1")
                await conn.commit()
            conn.close()
        except Exception as exc:
            errors.append(f"{n}: {exc!r}")

    with ConnectionSampler(small_db) as sampler:
        await asyncio.gather(*(client(n) for n in range(2000)))  # 1000 per local tier
    assert errors == []
    assert 0 < sampler.added <= REMOTE_CAP  # database max_connections is 30
    for tier in locals_:
        assert tier.run(lambda t=tier: t.tier.pools.servers["remote1"].used) <= LOCAL_CAP
    assert remote.run(lambda: remote.tier.pools.servers["db1"].used) <= REMOTE_CAP


def test_a_transaction_keeps_one_path_through_both_tiers(chain, small_db):  # noqa: F811
    _, (local, _) = chain
    a = connect(local, small_db)
    a.begin()
    first = value(a, "SELECT CONNECTION_ID()")
    seen = set()
    done = threading.Event()

    def others() -> None:
        for _ in range(20):
            c = connect(local, small_db)
            seen.add(value(c, "SELECT CONNECTION_ID()"))
            c.close()
        done.set()

    t = threading.Thread(target=others)
    t.start()
    for _ in range(5):
        assert value(a, "SELECT CONNECTION_ID()") == first  # same database connection
    assert done.wait(30)
    t.join()
    assert first not in seen  # nobody else ran inside a's transaction
    a.commit()
    a.close()


def test_local_tier_routes_around_a_dead_remote_tier(small_db):  # noqa: F811
    """Clients between statements notice nothing; a transaction that lived on the dead
    remote tier gets a clear error, and its client can reconnect at once."""
    remotes = [
        TierThread(tier_config(small_db, pool={"max_connections": 4})).start() for _ in range(2)
    ]
    local = TierThread(
        parse_config(
            {
                "tier": "local",
                "listen": ["127.0.0.1:0"],
                "users": [{"name": "app", "password": small_db.users["app"].password}],
                "upstream": {
                    "servers": [
                        {"name": f"remote{i}", "address": f"127.0.0.1:{r.port}"}
                        for i, r in enumerate(remotes, start=1)
                    ]
                },
                "pool": {"max_connections": 4, "acquire_timeout": "10s"},
            },
            allow_zero_port=True,
        )
    ).start()
    crashed = False
    try:
        clients = [connect(local, small_db) for _ in range(10)]
        homes = {
            c: local.run(lambda c=c: local.tier.sessions[c.thread_id()].pool_key.server)
            for c in clients
        }
        assert set(homes.values()) == {"remote1", "remote2"}  # spread over both
        doomed = next(c for c in clients if homes[c] == "remote1")
        survivor = next(c for c in clients if homes[c] == "remote2")
        for c in (doomed, survivor):
            c.begin()
            value(c, "SELECT 1")
        remotes[0].crash()
        crashed = True
        for c in clients:
            if c in (doomed, survivor):
                continue
            for i in range(3):  # between statements when remote1 died: no error at all
                assert value(c, "SELECT %s", (i,)) == i
        assert value(survivor, "SELECT 'still in my transaction'") == "still in my transaction"
        survivor.commit()
        with pytest.raises(pymysql.err.OperationalError):
            value(doomed, "SELECT 1")
            doomed.commit()
        again = connect(local, small_db)
        assert value(again, "SELECT 'back'") == "back"
        again.close()
        for c in clients:
            if c is not doomed:
                c.close()
    finally:
        local.stop()
        if not crashed:
            remotes[0].stop()
        remotes[1].stop()
