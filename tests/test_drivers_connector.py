"""mysql-connector-python through sluice: server-side prepared statements, the cmd_* commands,
COM_CHANGE_USER and auth plugin negotiation.

Every test runs with the pure-Python protocol and with the C extension (skipped where the
extension cannot load on this machine).
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from decimal import Decimal

import mysql.connector
import pytest
from mysql.connector import errorcode

pytestmark = pytest.mark.timeout(120)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=[
        pytest.param(True, id="pure"),
        pytest.param(
            False,
            id="cext",
            marks=pytest.mark.skipif(
                not mysql.connector.HAVE_CEXT,
                reason="mysql-connector C extension cannot be loaded here",
            ),
        ),
    ]
)
def use_pure(request) -> bool:
    return request.param


@pytest.fixture
def cconnect(sandbox, tier, use_pure):
    """Open mysql-connector connections through the tier (closed after the test)."""
    opened = []

    def _connect(**kwargs):
        params = dict(
            host="127.0.0.1",
            port=tier.port,
            user="app",
            password=sandbox.users["app"].password,
            database="app",
            use_pure=use_pure,
            autocommit=True,
        )
        params.update(kwargs)
        cnx = mysql.connector.connect(**params)
        opened.append(cnx)
        return cnx

    yield _connect
    for cnx in opened:
        with contextlib.suppress(Exception):
            cnx.close()


@pytest.fixture
def table(cconnect):
    """A factory of uniquely named tables, dropped after the test."""
    made = []
    admin = cconnect()

    def _table(columns: str) -> str:
        name = unique("t")
        cur = admin.cursor()
        cur.execute(f"CREATE TABLE {name} ({columns})")
        cur.close()
        made.append(name)
        return name

    yield _table
    cur = admin.cursor()
    cur.execute("SET SESSION lock_wait_timeout = 5")
    for name in made:
        cur.execute(f"DROP TABLE IF EXISTS {name}")
    cur.close()


@pytest.fixture
def other_database(cconnect):
    name = unique("db")
    admin = cconnect()
    cur = admin.cursor()
    cur.execute(f"CREATE DATABASE {name}")
    yield name
    cur.execute(f"DROP DATABASE IF EXISTS {name}")
    cur.close()


def scalar(cnx, sql: str, args=None):
    cur = cnx.cursor()
    cur.execute(sql, args)
    (value,) = cur.fetchone()
    cur.close()
    return value


# --- server-side prepared statements ------------------------------------------------------------

TYPED_COLUMNS = (
    "id INT PRIMARY KEY, i INT, bi BIGINT, f DOUBLE, d DECIMAL(20,6), "
    "s VARCHAR(100) CHARACTER SET utf8mb4, b VARBINARY(300), n INT NULL, "
    "dt DATETIME(6), dd DATE"
)
TYPED_ROWS = [
    (
        1,
        -7,
        2**62 + 11,
        3.25,
        Decimal("12345678901234.567891"),
        "plain text",
        bytes(range(256)),
        None,
        datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
        datetime.date(1999, 12, 31),
    ),
    (
        2,
        2**31 - 1,
        -(2**63),
        -1.5e-300,
        Decimal("-0.000001"),
        "😀 汉字 ключ",
        b"\x00'\"\\\x1a\xff",
        None,
        datetime.datetime(1970, 1, 1, 0, 0, 1),
        datetime.date(2038, 1, 19),
    ),
]


def test_prepared_insert_and_select_keep_every_parameter_type(cconnect, table):
    name = table(TYPED_COLUMNS)
    cnx = cconnect()
    cur = cnx.cursor(prepared=True)
    for row in TYPED_ROWS:
        cur.execute(f"INSERT INTO {name} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        assert cur.rowcount == 1
    back = []
    for row in TYPED_ROWS:
        cur.execute(f"SELECT * FROM {name} WHERE id = ?", (row[0],))
        back.append(cur.fetchone())
    cur.close()
    assert [tuple(bytes(v) if isinstance(v, bytearray) else v for v in r) for r in back] == (
        TYPED_ROWS
    )
    # And the text protocol reads the same stored values.
    text = cnx.cursor()
    text.execute(f"SELECT bi, d, HEX(b), s FROM {name} ORDER BY id")
    assert text.fetchall() == [(r[2], r[4], r[6].hex().upper(), r[5]) for r in TYPED_ROWS]
    text.close()


def test_prepared_statement_reexecuted_many_times(cconnect, table):
    name = table("id INT PRIMARY KEY, v VARCHAR(20)")
    cnx = cconnect()
    insert = cnx.cursor(prepared=True)
    # Kept short: the pure-Python driver's writes meet delayed ACKs (~40 ms per INSERT), direct
    # or through sluice alike.
    for i in range(60):
        insert.execute(f"INSERT INTO {name} VALUES (?, ?)", (i, f"v{i}"))
    insert.close()
    select = cnx.cursor(prepared=True)
    for i in range(60):
        select.execute(f"SELECT v FROM {name} WHERE id = ?", (i,))
        assert select.fetchall() == [(f"v{i}",)]
    select.execute(f"SELECT COUNT(*), SUM(id) FROM {name} WHERE id >= ?", (0,))
    assert select.fetchone() == (60, Decimal(sum(range(60))))
    select.close()


def test_two_prepared_statements_interleaved(cconnect, table):
    name = table("id INT PRIMARY KEY, v INT")
    cnx = cconnect()
    insert = cnx.cursor(prepared=True)
    select = cnx.cursor(prepared=True)
    for i in range(30):
        insert.execute(f"INSERT INTO {name} VALUES (?, ?)", (i, i * i))
        select.execute(f"SELECT COUNT(*), MAX(v) FROM {name} WHERE id <= ?", (i,))
        assert select.fetchone() == (i + 1, i * i)
    insert.close()
    select.close()


def test_prepared_executemany_inserts_every_row(cconnect, table):
    name = table("id INT PRIMARY KEY, s VARCHAR(20), d DATE")
    rows = [
        (i, f"row {i}", datetime.date(2020, 1, 1) + datetime.timedelta(days=i)) for i in range(200)
    ]
    cnx = cconnect()
    cur = cnx.cursor(prepared=True)
    cur.executemany(f"INSERT INTO {name} VALUES (?, ?, ?)", rows)
    cur.execute(f"SELECT id, s, d FROM {name} WHERE id >= ? ORDER BY id", (0,))
    assert cur.fetchall() == rows
    cur.close()


def test_prepared_statement_error_reaches_the_client_with_code_and_sqlstate(cconnect, table):
    name = table("id INT PRIMARY KEY")
    cnx = cconnect()
    cur = cnx.cursor(prepared=True)
    cur.execute(f"INSERT INTO {name} VALUES (?)", (1,))
    with pytest.raises(mysql.connector.IntegrityError) as info:
        cur.execute(f"INSERT INTO {name} VALUES (?)", (1,))
    assert info.value.errno == errorcode.ER_DUP_ENTRY  # 1062
    assert info.value.sqlstate == "23000"
    assert "Duplicate entry '1'" in info.value.msg
    cur.execute(f"INSERT INTO {name} VALUES (?)", (2,))  # the statement is still usable
    cur.close()
    assert scalar(cnx, f"SELECT COUNT(*) FROM {name}") == 2

    with pytest.raises(mysql.connector.ProgrammingError) as info:
        cnx.cursor(prepared=True).execute("SELECT * FROM no_such_prepared_table WHERE id = ?", (1,))
    assert info.value.errno == 1146
    assert info.value.sqlstate == "42S02"


# --- cmd_* commands ---------------------------------------------------------------------------


def test_cmd_query_returns_columns_and_rows(cconnect, table):
    cnx = cconnect()
    result = cnx.cmd_query("SELECT 1 AS one, 'two' AS two")
    assert [c[0] for c in result["columns"]] == ["one", "two"]
    rows, _eof = cnx.get_rows()
    assert [tuple(r) for r in rows] == [(1, "two")]

    name = table("id INT PRIMARY KEY")
    ok = cnx.cmd_query(f"INSERT INTO {name} VALUES (1), (2), (3)")
    assert ok["affected_rows"] == 3
    with pytest.raises(mysql.connector.ProgrammingError) as info:
        cnx.cmd_query("SELECT * FROM no_such_cmd_table")
    assert info.value.errno == 1146
    assert info.value.sqlstate == "42S02"
    assert scalar(cnx, "SELECT 9") == 9


def test_cmd_statistics_reports_server_statistics(cconnect):
    cnx = cconnect()
    stats = cnx.cmd_statistics()
    assert stats["Uptime"] > 0
    assert "Questions" in stats and "Threads" in stats
    assert scalar(cnx, "SELECT 'after'") == "after"


def test_cmd_reset_connection_clears_session_state(cconnect):
    cnx = cconnect()
    cur = cnx.cursor()
    cur.execute("SET @kept = 'yes'")
    cur.execute("SELECT @kept")
    assert cur.fetchone() == ("yes",)
    cur.close()
    assert cnx.cmd_reset_connection() is True
    assert scalar(cnx, "SELECT @kept") is None
    assert scalar(cnx, "SELECT DATABASE()") == "app"


def test_cmd_change_user_switches_database_and_resets_the_session(
    cconnect, sandbox, other_database
):
    cnx = cconnect()
    cur = cnx.cursor()
    cur.execute("SET @before_change = 1")
    cur.close()
    cnx.cmd_change_user(
        username="app", password=sandbox.users["app"].password, database=other_database
    )
    assert scalar(cnx, "SELECT DATABASE()") == other_database
    assert scalar(cnx, "SELECT @before_change") is None  # a new session
    assert scalar(cnx, "SELECT CURRENT_USER()").startswith("app@")
    cnx.cmd_change_user(username="app", password=sandbox.users["app"].password, database="app")
    assert scalar(cnx, "SELECT DATABASE()") == "app"


def test_cmd_change_user_with_a_wrong_password_is_refused_with_1045(cconnect):
    cnx = cconnect()
    with pytest.raises(mysql.connector.Error) as info:
        cnx.cmd_change_user(username="app", password="wrong-password", database="app")
    assert info.value.errno == errorcode.ER_ACCESS_DENIED_ERROR  # 1045
    assert info.value.sqlstate == "28000"
    assert info.value.msg.startswith("sluice:")


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", [None, "mysql_native_password", "caching_sha2_password"])
def test_connects_whatever_auth_plugin_the_client_starts_with(cconnect, plugin):
    kwargs = {"auth_plugin": plugin} if plugin else {}
    cnx = cconnect(**kwargs)
    assert scalar(cnx, "SELECT CURRENT_USER()").startswith("app@")
    assert "MariaDB" in cnx.server_info


@pytest.mark.parametrize("plugin", ["mysql_native_password", "caching_sha2_password"])
def test_wrong_password_is_refused_with_1045_whatever_the_plugin(cconnect, plugin):
    with pytest.raises(mysql.connector.Error) as info:
        cconnect(password="wrong-password", auth_plugin=plugin)
    assert info.value.errno == errorcode.ER_ACCESS_DENIED_ERROR
    assert info.value.sqlstate == "28000"
    assert info.value.msg.startswith("sluice:")
