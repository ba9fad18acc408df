"""aiomysql through sluice: asyncio applications, many connections at once, and its pool.

The tests run on pytest-asyncio's session loop; the tier runs on its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import uuid

import aiomysql
import pymysql
import pytest

pytestmark = pytest.mark.timeout(120)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def params(sandbox, tier):
    return dict(
        host="127.0.0.1",
        port=tier.port,
        user="app",
        password=sandbox.users["app"].password,
        db="app",
    )


@pytest.fixture
async def aconnect(params):
    """Open aiomysql connections through the tier (closed after the test)."""
    opened = []

    async def _connect(**kwargs):
        conn = await aiomysql.connect(**{**params, **kwargs})
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
async def table(aconnect):
    """A factory of uniquely named tables, dropped after the test."""
    made = []
    admin = await aconnect(autocommit=True)

    async def _table(columns: str) -> str:
        name = unique("t")
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE TABLE {name} ({columns})")
        made.append(name)
        return name

    yield _table
    async with admin.cursor() as cur:
        await cur.execute("SET SESSION lock_wait_timeout = 5")
        for name in made:
            await cur.execute(f"DROP TABLE IF EXISTS {name}")


async def scalar(conn, sql: str, args=None):
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return (await cur.fetchone())[0]


async def test_async_query_returns_rows(aconnect):
    conn = await aconnect()
    async with conn.cursor() as cur:
        await cur.execute("SELECT seq, CONCAT('r', seq) FROM seq_1_to_3")
        rows = await cur.fetchall()
    assert rows == ((1, "r1"), (2, "r2"), (3, "r3"))
    assert "MariaDB" in conn.get_server_info()


async def test_async_server_error_reaches_the_client_and_the_session_continues(aconnect):
    conn = await aconnect()
    async with conn.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError) as info:
            await cur.execute("SELECT * FROM no_such_async_table")
    assert info.value.args[0] == 1146
    assert "no_such_async_table" in info.value.args[1]
    assert await scalar(conn, "SELECT 8") == 8


async def test_async_transaction_commit_persists_rows(aconnect, table):
    name = await table("id INT PRIMARY KEY")
    writer = await aconnect(autocommit=False)
    observer = await aconnect(autocommit=True)
    await writer.begin()
    async with writer.cursor() as cur:
        await cur.execute(f"INSERT INTO {name} VALUES (1), (2)")
    assert await scalar(observer, f"SELECT COUNT(*) FROM {name}") == 0
    await writer.commit()
    assert await scalar(observer, f"SELECT COUNT(*) FROM {name}") == 2


async def test_async_transaction_rollback_discards_rows(aconnect, table):
    name = await table("id INT PRIMARY KEY")
    writer = await aconnect(autocommit=False)
    observer = await aconnect(autocommit=True)
    await writer.begin()
    async with writer.cursor() as cur:
        await cur.execute(f"INSERT INTO {name} VALUES (1), (2)")
    assert await scalar(writer, f"SELECT COUNT(*) FROM {name}") == 2
    await writer.rollback()
    assert await scalar(observer, f"SELECT COUNT(*) FROM {name}") == 0


async def test_async_executemany_inserts_every_row(aconnect, table):
    name = await table("id INT PRIMARY KEY, label VARCHAR(20)")
    conn = await aconnect(autocommit=True)
    rows = [(i, f"label {i}") for i in range(500)]
    async with conn.cursor() as cur:
        await cur.executemany(f"INSERT INTO {name} (id, label) VALUES (%s, %s)", rows)
        assert cur.rowcount == len(rows)
        await cur.execute(f"SELECT id, label FROM {name} ORDER BY id")
        assert await cur.fetchall() == tuple(rows)


async def test_200_concurrent_connections_all_succeed(params):
    clients = 200

    async def one(i: int) -> tuple[int, int, int]:
        conn = await aiomysql.connect(**params, autocommit=True)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT %s", (i,))
                echoed = (await cur.fetchone())[0]
                await cur.execute("SELECT SUM(seq) FROM seq_1_to_100 WHERE seq <= %s", (i % 100,))
                total = (await cur.fetchone())[0]
                await cur.execute("SELECT %s * 2", (i,))
                doubled = (await cur.fetchone())[0]
            return echoed, int(total or 0), doubled
        finally:
            conn.close()

    async with asyncio.timeout(90):
        results = await asyncio.gather(*(one(i) for i in range(clients)))
    expected = [(i, (i % 100) * (i % 100 + 1) // 2, i * 2) for i in range(clients)]
    assert results == expected


async def test_200_connections_open_at_the_same_time_all_succeed(params):
    clients = 200
    connected = 0
    all_connected = asyncio.Event()

    async def one(i: int) -> int:
        nonlocal connected
        conn = await aiomysql.connect(**params, autocommit=True)
        try:
            connected += 1
            if connected == clients:
                all_connected.set()
            await all_connected.wait()  # every client holds its connection at this point
            return await scalar(conn, "SELECT %s + 1", (i,))
        finally:
            conn.close()

    async with asyncio.timeout(90):
        results = await asyncio.gather(*(one(i) for i in range(clients)))
    assert results == [i + 1 for i in range(clients)]


async def test_pool_serves_many_tasks_with_few_connections(params, table):
    name = await table("id INT PRIMARY KEY")
    async with aiomysql.create_pool(minsize=2, maxsize=5, autocommit=True, **params) as pool:

        async def task(i: int) -> int:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(f"INSERT INTO {name} VALUES (%s)", (i,))
                await cur.execute(f"SELECT id FROM {name} WHERE id = %s", (i,))
                return (await cur.fetchone())[0]

        async with asyncio.timeout(60):
            results = await asyncio.gather(*(task(i) for i in range(50)))
        assert results == list(range(50))
        assert pool.size <= 5
        async with pool.acquire() as conn:
            assert await scalar(conn, f"SELECT COUNT(*) FROM {name}") == 50
