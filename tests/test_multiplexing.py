"""Many client sessions share few upstream connections, never more than the cap, and no client
ever observes another client's session."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import aiomysql
import pymysql
import pytest
from pymysql.constants import CLIENT

from proxy import sandbox as sandbox_mod

from .asyncraw import AsyncRawClient
from .conftest import short_tmp_dir
from .harness import TierThread, tier_config
from .harness import app_connection as app
from .harness import scalar as one_value

CAP = 10


@pytest.fixture(scope="module")
def small_db(tmp_path_factory):
    """A database that allows only 30 connections: direct clients would hit error 1040."""
    path = short_tmp_dir(tmp_path_factory, "smalldb")
    sb = sandbox_mod.up(path, replicas=0, max_connections=30)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


@pytest.fixture(scope="module")
def funnel(small_db):
    config = tier_config(small_db, pool={"max_connections": CAP, "acquire_timeout": "30s"})
    with TierThread(config) as running:
        yield running


def root(sb) -> pymysql.Connection:
    return pymysql.connect(
        host=sb.primary.host,
        port=sb.primary.port,
        user="root",
        password=sb.users["root"].password,
        autocommit=True,
    )


class ConnectionSampler:
    """Samples the database's Threads_connected in a thread until stopped.

    `added` is the peak minus the count when sampling began (which includes the sampler
    itself and whatever other connections were already open): what the load added."""

    def __init__(self, sb) -> None:
        self.conn = root(sb)
        self.peak = 0
        with self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            self.baseline = int(cur.fetchone()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def added(self) -> int:
        return self.peak - self.baseline

    def _run(self) -> None:
        with self.conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                self.peak = max(self.peak, int(cur.fetchone()[1]))
                time.sleep(0.02)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


async def test_a_thousand_clients_share_the_capped_pool_without_errors(funnel, small_db):
    table = f"t_{uuid.uuid4().hex[:8]}"
    admin = root(small_db)
    admin.cursor().execute(f"CREATE TABLE app.{table} (id INT PRIMARY KEY, client INT, v INT)")
    clients = 1000
    errors: list[str] = []
    acknowledged: list[int] = []

    async def one(n: int) -> None:
        try:
            conn = await aiomysql.connect(
                host="127.0.0.1",
                port=funnel.port,
                user="app",
                password=small_db.users["app"].password,
                db="app",
                autocommit=True,
            )
        except Exception as exc:
            errors.append(f"connect: {exc!r}")
            return
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT %s + 1", (n,))
                assert (await cur.fetchone()) == (n + 1,)
                await cur.execute(f"INSERT INTO {table} VALUES (%s, %s, 0)", (n, n))
                acknowledged.append(n)
                await conn.begin()
                await cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (n,))
                await cur.execute(f"SELECT v FROM {table} WHERE id = %s", (n,))
                assert (await cur.fetchone()) == (1,)
                await conn.commit()
        except Exception as exc:
            errors.append(f"client {n}: {exc!r}")
        finally:
            conn.close()

    async def prepared(n: int) -> None:
        """The same client's server-side prepared statements (aiomysql has none)."""
        try:
            conn = await AsyncRawClient.connect(
                funnel.port, "app", small_db.users["app"].password, "app"
            )
        except Exception as exc:
            errors.append(f"connect: {exc!r}")
            return
        try:
            stmt = await conn.prepare(f"SELECT v + ? FROM {table} WHERE id = ?")
            assert await conn.execute_int(stmt, 100, n) == 101
            double = await conn.prepare("SELECT ? * 2")
            assert await conn.execute_int(double, n) == 2 * n
            await conn.close_statement(stmt)
        except Exception as exc:
            errors.append(f"prepared client {n}: {exc!r}")
        finally:
            conn.close()

    async def client(n: int) -> None:
        await one(n)
        await prepared(n)

    with ConnectionSampler(small_db) as sampler:
        await asyncio.gather(*(client(n) for n in range(clients)))
    assert errors == []
    with admin.cursor() as cur:
        cur.execute(f"SELECT COUNT(*), SUM(v) FROM app.{table}")
        assert cur.fetchone() == (clients, clients)
    admin.close()
    # never more than sluice's cap; the database's own limit of 30 is never approached
    assert 0 < sampler.added <= CAP, (sampler.baseline, sampler.peak)
    assert funnel.run(lambda: funnel.tier.pools.servers["db1"].used) <= CAP


def test_transaction_keeps_its_connection_until_commit(small_db):
    config = tier_config(small_db, pool={"max_connections": 1, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        ca, cb = a.cursor(), b.cursor()
        ca.execute("SELECT CONNECTION_ID()")
        cb.execute("SELECT CONNECTION_ID()")
        assert ca.fetchone() == cb.fetchone()  # one upstream connection serves both
        a.begin()
        ca.execute("SELECT 1")
        done = threading.Event()

        def other() -> None:
            cb.execute("SELECT 2")
            done.set()

        t = threading.Thread(target=other)
        t.start()
        assert not done.wait(0.5)  # b waits: a's transaction holds the only connection
        a.commit()
        assert done.wait(5)
        t.join()
        a.close()
        b.close()


def test_full_pool_gives_a_clear_error_after_acquire_timeout(small_db):
    config = tier_config(small_db, pool={"max_connections": 1, "acquire_timeout": "300ms"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        a.begin()
        a.cursor().execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            b.cursor().execute("SELECT 2")
        assert 0.25 < time.monotonic() - started < 3
        code, message = info.value.args
        assert code == 1040
        assert message.startswith("sluice: no upstream connection to 'db1' for user 'app'")
        assert "all 1 allowed connections are busy" in message
        a.commit()
        with b.cursor() as cur:  # the waiting client's session survived the error
            cur.execute("SELECT 3")
            assert cur.fetchone() == (3,)
        a.close()
        b.close()


@pytest.fixture
def pair(small_db):
    """Two clients over a single shared upstream connection: every hop crosses sessions."""
    config = tier_config(small_db, pool={"max_connections": 1, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        yield tier, a, b
        a.close()
        b.close()


def test_session_variables_follow_each_client(pair):
    _, a, b = pair
    one_value(a, "SELECT 1")
    a.cursor().execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
    a.cursor().execute("SET time_zone = '+05:00'")
    assert one_value(b, "SELECT @@sql_mode") != "ANSI_QUOTES"
    assert one_value(b, "SELECT @@time_zone") != "+05:00"
    assert one_value(a, "SELECT @@sql_mode") == "ANSI_QUOTES"
    assert one_value(a, "SELECT @@time_zone") == "+05:00"
    b.cursor().execute("SET time_zone = '-03:00'")
    assert one_value(a, "SELECT @@time_zone") == "+05:00"
    assert one_value(b, "SELECT @@time_zone") == "-03:00"
    a.cursor().execute("SET time_zone = DEFAULT")
    assert one_value(a, "SELECT @@time_zone") == one_value(b, "SELECT @@global.time_zone")


def test_schema_follows_each_client(pair, small_db):
    _, a, b = pair
    admin = root(small_db)
    admin.cursor().execute("CREATE DATABASE IF NOT EXISTS other")
    admin.close()
    a.select_db("other")
    assert one_value(b, "SELECT DATABASE()") == "app"
    assert one_value(a, "SELECT DATABASE()") == "other"
    b.cursor().execute("USE mysql")
    assert one_value(a, "SELECT DATABASE()") == "other"
    assert one_value(b, "SELECT DATABASE()") == "mysql"


def test_a_client_switching_session_tracking_off_keeps_its_connection(pair, small_db):
    """With tracking off, a USE is not reported: the connection must not reach another client
    as if it were still in the old schema."""
    tier, _, b = pair
    a = app(tier, small_db)
    a.cursor().execute("SET SESSION session_track_state_change = OFF, session_track_schema = OFF")
    a.cursor().execute("USE mysql")
    assert one_value(a, "SELECT DATABASE()") == "mysql"
    assert tier.run(lambda: dict(tier.tier.pins)).get("untracked_state") == 1
    a.close()  # pinned: its connection goes with it
    assert one_value(b, "SELECT DATABASE()") == "app"


def test_character_set_follows_each_client(pair):
    _, a, b = pair
    a.cursor().execute("SET NAMES latin1")
    assert one_value(b, "SELECT @@character_set_client") == "utf8mb4"
    assert one_value(a, "SELECT @@character_set_client") == "latin1"
    assert one_value(b, "SELECT @@character_set_results") == "utf8mb4"


def test_autocommit_off_follows_the_client(pair):
    _, a, b = pair
    a.autocommit(False)
    assert one_value(b, "SELECT @@autocommit") == 1
    assert one_value(a, "SELECT @@autocommit") == 0
    a.rollback()


def test_user_variables_pin_and_never_leak(small_db):
    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        a.cursor().execute("SET @secret = 'a-only'")
        for _ in range(5):
            assert one_value(b, "SELECT @secret") is None
            assert one_value(a, "SELECT @secret") == "a-only"
        assert tier.run(lambda: dict(tier.tier.pins)).get("user_variable") == 1
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("prepare", "client_flag"),
    [
        # Tools tag statements with a leading comment.
        ("/* app:checkout */ PREPARE s FROM 'SELECT 41 + 1'", 0),
        ("SELECT 1; PREPARE s FROM 'SELECT 41 + 1'", CLIENT.MULTI_STATEMENTS),
    ],
)
def test_a_text_prepare_not_at_the_start_pins_the_client(small_db, prepare, client_flag):
    # The PREPARE still leaves a statement on its connection that only this client may
    # EXECUTE.
    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a = app(tier, small_db, client_flag=client_flag)
        b = app(tier, small_db)
        cur = a.cursor()
        cur.execute(prepare)
        while cur.nextset():
            pass
        b.begin()  # b holds the connection a prepared on (the warmest idle one) ...
        assert one_value(b, "SELECT 1") == 1
        assert one_value(a, "EXECUTE s") == 42  # ... so a runs on the other one, unless pinned
        b.commit()
        for _ in range(3):
            assert one_value(b, "SELECT 2") == 2
            assert one_value(a, "EXECUTE s") == 42
        assert tier.run(lambda: dict(tier.tier.pins)).get("text_prepare") == 1
        a.close()
        b.close()


def test_temporary_tables_pin_and_never_leak(small_db):
    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        a.cursor().execute("CREATE TEMPORARY TABLE scratch (x INT)")
        a.cursor().execute("INSERT INTO scratch VALUES (1)")
        with pytest.raises(pymysql.err.ProgrammingError):
            b.cursor().execute("SELECT * FROM scratch")
        assert one_value(a, "SELECT COUNT(*) FROM scratch") == 1
        a.close()
        # a's connection held its temporary table: it must not serve anyone again as it is
        c = app(tier, small_db)
        for _ in range(3):
            with pytest.raises(pymysql.err.ProgrammingError):
                c.cursor().execute("SELECT * FROM scratch")
        b.close()
        c.close()


def test_named_locks_found_by_keyword_pin_the_client(small_db):
    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a = app(tier, small_db)
        first = one_value(a, "SELECT CONNECTION_ID()")
        assert one_value(a, "SELECT GET_LOCK('sluice-test', 1)") == 1
        b = app(tier, small_db)
        b.begin()
        one_value(b, "SELECT 1")  # b now holds the other connection
        assert one_value(a, "SELECT IS_USED_LOCK('sluice-test')") == first
        assert one_value(a, "SELECT RELEASE_LOCK('sluice-test')") == 1
        b.rollback()
        assert tier.run(lambda: dict(tier.tier.pins)).get("named_lock") == 1
        a.close()
        b.close()


def test_uncommitted_rows_stay_in_their_transaction(small_db):
    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        table = f"u_{uuid.uuid4().hex[:8]}"
        a.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        a.begin()
        a.cursor().execute(f"INSERT INTO {table} VALUES (1)")
        for _ in range(3):  # b runs beside a's open transaction, never inside it
            assert one_value(b, f"SELECT COUNT(*) FROM {table}") == 0
            assert one_value(b, "SELECT @@in_transaction") == 0
        assert one_value(a, f"SELECT COUNT(*) FROM {table}") == 1
        a.rollback()
        a.begin()
        a.cursor().execute(f"INSERT INTO {table} VALUES (2)")
        a.commit()
        assert one_value(b, f"SELECT id FROM {table}") == 2
        a.close()
        b.close()


def test_reset_connection_unpins_and_starts_from_a_clean_session(small_db):
    import mysql.connector

    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        cnx = mysql.connector.connect(
            host="127.0.0.1",
            port=tier.port,
            user="app",
            password=small_db.users["app"].password,
            database="app",
            use_pure=True,
        )
        cur = cnx.cursor()
        cur.execute("SET @x = 5, time_zone = '+02:00'")
        cnx.cmd_reset_connection()
        cur.execute("SELECT @x, @@time_zone = @@global.time_zone")
        assert cur.fetchone() == (None, 1)
        cnx.close()


def test_connection_storm_never_exceeds_the_cap(small_db):
    """Many clients connect at the same moment: logins wait their turn, the cap holds."""
    config = tier_config(small_db, pool={"max_connections": 4, "acquire_timeout": "30s"})
    with TierThread(config) as tier, ConnectionSampler(small_db) as sampler:
        errors: list[str] = []

        def login() -> None:
            try:
                conn = app(tier, small_db)
                one_value(conn, "SELECT 1")
                conn.close()
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=login) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert 0 < sampler.added <= 4, (sampler.baseline, sampler.peak)


def test_last_insert_id_is_each_clients_own(pair):
    _, a, b = pair
    table = f"ai_{uuid.uuid4().hex[:8]}"
    a.cursor().execute(f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, who CHAR(1))")
    a.cursor().execute(f"INSERT INTO {table} (who) VALUES ('a')")
    b.cursor().execute(f"INSERT INTO {table} (who) VALUES ('b'), ('b')")
    # one shared connection: the server's LAST_INSERT_ID() there is now b's
    assert one_value(a, "SELECT LAST_INSERT_ID()") == 1
    assert one_value(b, "SELECT LAST_INSERT_ID()") == 2
    assert one_value(a, f"SELECT who FROM {table} WHERE id = LAST_INSERT_ID()") == "a"
    assert one_value(a, "SELECT @@identity") == 1


def test_row_count_comes_from_the_clients_previous_statement_when_uninterrupted(small_db):
    """Guaranteed only while nobody else used that connection in between (see README)."""
    config = tier_config(small_db, pool={"max_connections": 2, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a, b = app(tier, small_db), app(tier, small_db)
        table = f"rc_{uuid.uuid4().hex[:8]}"
        a.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v TINYINT)")
        a.cursor().execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0), (3, 0)")
        b.begin()
        one_value(b, "SELECT 1")  # b holds the other connection meanwhile
        a.cursor().execute(f"UPDATE {table} SET v = 1 WHERE id < 3")
        assert one_value(a, "SELECT ROW_COUNT()") == 2
        b.commit()
        a.close()
        b.close()


def test_warnings_stay_with_the_client_that_caused_them(pair):
    _, a, b = pair
    done = threading.Event()
    assert one_value(a, "SELECT CAST('12abc' AS SIGNED)") == 12  # with warning 1292
    # a keeps its connection for the next statement, so b (one connection in all) waits
    t = threading.Thread(target=lambda: (one_value(b, "SELECT 1"), done.set()))
    t.start()
    assert not done.wait(0.3)
    with a.cursor() as cur:
        cur.execute("SHOW WARNINGS")
        assert [row[1] for row in cur.fetchall()] == [1292]
    assert done.wait(5)
    t.join()
    with b.cursor() as cur:
        cur.execute("SHOW WARNINGS")  # b's previous statement had none
        assert cur.fetchall() == ()


def test_kill_query_takes_the_handshake_id_and_stops_only_that_clients_work(small_db):
    config = tier_config(small_db, pool={"max_connections": 3, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        victim, bystander, killer = (app(tier, small_db) for _ in range(3))
        assert victim.thread_id() > 1_000_000_000  # sluice's id, not a server thread id
        outcome: dict[str, object] = {}

        def sleep(conn, key) -> None:
            try:
                outcome[key] = one_value(conn, "SELECT SLEEP(3)")
            except pymysql.err.OperationalError as exc:
                outcome[key] = exc.args[0]

        threads = [
            threading.Thread(target=sleep, args=(victim, "victim")),
            threading.Thread(target=sleep, args=(bystander, "bystander")),
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)
        started = time.monotonic()
        killer.cursor().execute(f"KILL QUERY {victim.thread_id()}")
        threads[0].join(5)
        assert outcome["victim"] == 1317
        assert time.monotonic() - started < 2
        threads[1].join(5)
        assert outcome["bystander"] == 0  # untouched
        assert one_value(victim, "SELECT 'alive'") == "alive"
        with pytest.raises(pymysql.err.OperationalError) as info:
            killer.cursor().execute("KILL QUERY 4000000000")
        assert info.value.args[0] == 1094
        assert info.value.args[1].startswith("sluice: unknown thread id")
        killer.cursor().execute(f"KILL {victim.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError):
            one_value(victim, "SELECT 1")
        for conn in (bystander, killer):
            conn.close()


@pytest.mark.parametrize(
    "statement",
    ["SELECT 1; KILL {tid}", "SELECT 1; KILL QUERY {tid}", "KILL HARD {tid}", "KILL USER app"],
)
def test_a_kill_sluice_cannot_carry_out_is_refused_not_sent_to_the_database(small_db, statement):
    """On the database, a KILL in a multi-statement (or of a USER, HARD, ...) names a server
    thread of this user: maybe the pooled connection another client is using."""
    config = tier_config(small_db, pool={"max_connections": 3, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        victim = app(tier, small_db)
        killer = app(tier, small_db, client_flag=CLIENT.MULTI_STATEMENTS)
        victim.cursor().execute("BEGIN")  # (the transaction holds its connection)
        tid = one_value(victim, "SELECT CONNECTION_ID()")
        with pytest.raises(pymysql.err.NotSupportedError) as info:
            killer.cursor().execute(statement.format(tid=tid))
        assert info.value.args[0] == 1235
        assert info.value.args[1].startswith("sluice: this KILL is not carried out")
        assert one_value(victim, "SELECT CONNECTION_ID()") == tid  # its connection lives on
        victim.cursor().execute("COMMIT")
        # A `; kill` in a string literal is no KILL.
        assert one_value(killer, f"SELECT 'x; KILL {tid}'") == f"x; KILL {tid}"
        assert one_value(killer, "SELECT 'still here'") == "still here"
        victim.close()
        killer.close()


def test_kill_refuses_another_users_session(small_db):
    config = tier_config(
        small_db,
        pool={"max_connections": 3, "acquire_timeout": "5s"},
        users=[
            {"name": "app", "password": small_db.users["app"].password},
            {"name": "root", "password": small_db.users["root"].password},
        ],
    )
    with TierThread(config) as tier:
        victim = app(tier, small_db)
        other = app(tier, small_db, user="root", password=small_db.users["root"].password)
        with pytest.raises(pymysql.err.OperationalError) as info:
            other.cursor().execute(f"KILL {victim.thread_id()}")
        assert info.value.args[0] == 1095
        assert one_value(victim, "SELECT 'still here'") == "still here"
        victim.close()
        other.close()


def test_row_count_survives_another_clients_statement_in_between(pair):
    _, a, b = pair
    table = f"rc_{uuid.uuid4().hex[:8]}"
    a.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT)")
    a.cursor().execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0), (3, 0)")
    a.cursor().execute(f"UPDATE {table} SET v = 1 WHERE id < 3")
    b.cursor().execute(f"DELETE FROM {table} WHERE id = 3")  # same, only connection
    assert one_value(a, "SELECT ROW_COUNT()") == 2
    assert one_value(b, "select row_count()") == 1
    one_value(a, f"SELECT * FROM {table}")
    assert one_value(a, "SELECT ROW_COUNT()") == -1  # after a result set, as the server says
    with a.cursor() as cur:
        cur.execute("SHOW COUNT(*) WARNINGS")
        assert cur.fetchone() == (0,)


def test_clients_without_session_tracking_get_ok_packets_as_from_the_server(pair, small_db):
    _, a, _ = pair
    direct = pymysql.connect(
        host=small_db.primary.host,
        port=small_db.primary.port,
        user="app",
        password=small_db.users["app"].password,
        database="app",
        autocommit=True,
    )
    table = f"ok_{uuid.uuid4().hex[:8]}"
    direct.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    seen = []
    for n, conn in enumerate((direct, a)):  # PyMySQL does not ask for CLIENT_SESSION_TRACK
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+01:00'")
            oks = [(conn._result.message, conn.server_status)]
            cur.execute(f"INSERT INTO {table} VALUES ({n * 2}), ({n * 2 + 1})")  # last_gtid
            oks.append((conn._result.message, conn.server_status))
        seen.append(oks)
    direct.close()
    assert seen[0] == seen[1]
    assert b"Records: 2" in seen[1][1][0]  # MariaDB length-encodes it; PyMySQL keeps the byte
    assert not seen[1][0][1] & 0x4000  # no SESSION_STATE_CHANGED for a client that cannot read it


def test_multi_statement_mode_set_by_one_client_never_reaches_another(small_db):
    """COM_SET_OPTION changes the server connection: it must not travel with it."""
    from .rawclient import RawClient

    config = tier_config(small_db, pool={"max_connections": 1, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        a = RawClient.connect(("127.0.0.1", tier.port), "app", small_db.users["app"].password)
        a.set_option(0)  # MYSQL_OPTION_MULTI_STATEMENTS_ON
        assert len(a.query("SELECT 1; SELECT 2")) == 2
        done = threading.Event()
        outcome: dict[str, object] = {}

        def attempt() -> None:
            b = app(tier, small_db)  # PyMySQL without CLIENT_MULTI_STATEMENTS
            try:
                with b.cursor() as cur:
                    cur.execute("SELECT 1; SELECT 2")
                outcome["result"] = "ran both"
            except pymysql.err.MySQLError as exc:
                outcome["result"] = exc.args[0]
            b.close()
            done.set()

        t = threading.Thread(target=attempt)
        t.start()
        assert not done.wait(0.5)  # a is pinned to the only connection: b waits
        a.close()
        t.join(10)
        assert outcome["result"] == 1064  # syntax error, as on a direct connection
        assert tier.run(lambda: dict(tier.tier.pins)).get("set_option") == 1


def test_min_idle_keeps_connections_ready_within_the_cap(small_db):
    config = tier_config(
        small_db, pool={"max_connections": 4, "min_idle": 3, "acquire_timeout": "5s"}
    )
    with TierThread(config) as tier:
        conn = app(tier, small_db)  # the pool exists once a client has used it
        one_value(conn, "SELECT 1")
        deadline = time.monotonic() + 5
        idle = lambda: sum(len(p.idle) for p in tier.tier.pools.pools.values())  # noqa: E731
        while time.monotonic() < deadline and tier.run(idle) < 3:
            time.sleep(0.1)
        assert tier.run(idle) == 3
        time.sleep(1.5)  # the janitor does not overshoot
        assert tier.run(idle) == 3
        assert tier.run(lambda: tier.tier.pools.servers["db1"].used) == 3
        conn.close()


def test_a_client_without_a_database_is_served_when_every_pooled_connection_has_one(sandbox):
    """A schema cannot be unselected on a connection: such a client needs one without, and
    gets it even when the pool is full of connections that have one (idle or handed over)."""
    with TierThread(tier_config(sandbox, pool={"max_connections": 4})) as tier:
        no_db = app(tier, sandbox, database=None)
        with_db = [app(tier, sandbox) for _ in range(4)]  # database "app"
        for conn in with_db:
            conn.begin()  # all four connections in use, each with "app" selected
            assert one_value(conn, "SELECT DATABASE()") == "app"
        answers: list = []
        waiter = threading.Thread(
            target=lambda: answers.append(one_value(no_db, "SELECT DATABASE()")), daemon=True
        )
        waiter.start()  # queues for a connection
        time.sleep(0.2)
        for conn in with_db:
            conn.commit()  # handed back: none suits the waiting client as it is
        waiter.join(10)
        assert answers == [None]
        for conn in with_db:  # the pool is full of idle connections with a schema again
            conn.begin()
            one_value(conn, "SELECT 1")
        for conn in with_db:
            conn.commit()
        assert one_value(no_db, "SELECT DATABASE()") is None
        for conn in [*with_db, no_db]:
            conn.close()
