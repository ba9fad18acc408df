"""Unit tests of what pins a client, what a statement needs, and how state is replayed."""

from __future__ import annotations

import time

import pytest

from proxy.protocol.codec import lenenc_bytes
from proxy.protocol.constants import Status
from proxy.protocol.messages import ok_payload
from proxy.session_state import (
    HOLD_NEXT,
    KILL,
    NEEDS_INSERT_ID,
    NEEDS_PREVIOUS,
    SCAN_LIMIT,
    TRACKING_SETUP,
    SessionState,
    diagnostic_query,
    has_kill_statement,
    parse_kill,
    scan_statement,
    sql_value,
    sync_statements,
)


@pytest.mark.parametrize(
    ("sql", "pin"),
    [
        (b"SELECT 1", None),
        (b"INSERT INTO t VALUES (1)", None),
        (b"SELECT * FROM t WHERE c = 'lock tables'", "lock_tables"),  # conservative
        (b"SET @x = 1", "user_variable"),
        (b"select @a := 5", "user_variable"),
        (b"SELECT c INTO @v FROM t", "user_variable"),
        (b"SELECT @@session.sql_mode", None),
        (b"SET @@session.time_zone = '+00:00'", None),
        (b"CREATE TEMPORARY TABLE x (a INT)", "temporary_table"),
        (b"create or replace temporary table x (a int)", "temporary_table"),
        (b"SELECT GET_LOCK('a', 1)", "named_lock"),
        (b"LOCK TABLES t WRITE", "lock_tables"),
        (b"FLUSH TABLES WITH READ LOCK", "lock_tables"),
        (b"PREPARE s FROM 'SELECT 1'", "text_prepare"),
        (b"SELECT SQL_CALC_FOUND_ROWS * FROM t", "found_rows"),
        (b"SELECT LAST_INSERT_ID(42)", "last_insert_id_expr"),
        (b"XA START 'x'", "xa_transaction"),
        (b"HANDLER t OPEN", "handler"),
        (b"\thandler t read first", "handler"),
        (b"xa begin 'x'", "xa_transaction"),
        (b" Prepare s FROM 'SELECT 1'", "text_prepare"),
        (b"CREATE TEMPORARY TABLE t2 SELECT * FROM t", "temporary_table"),
        (b"/* app:checkout */ PREPARE s FROM 'SELECT 1'", "text_prepare"),
        (b"/*!50000 PREPARE s FROM 'SELECT 1' */", "text_prepare"),  # (the server runs it)
        (b"/*+ hint */ /*M!100100 xa start 'x'", "xa_transaction"),
        (b"/* a\n b */ XA END 'x'", "xa_transaction"),
        (b"-- tag\n# another\nHANDLER t OPEN", "handler"),
        (b"--x\nHANDLER t OPEN", None),  # (not a comment: "--" needs a space after it)
        (b"/* PREPARE s FROM 'SELECT 1' */ SELECT 1", None),
        (b"SELECT 1; PREPARE s FROM 'SELECT 2'", "text_prepare"),  # (multi-statements)
        (b"select 1;xa start 'x'", "xa_transaction"),
        (b"SELECT 1;\n  HANDLER t OPEN", "handler"),
        (b"/*!50000 */ PREPARE s FROM 'SELECT 1'", "text_prepare"),  # (an empty one)
        (b"--\x01\nPREPARE s FROM 'SELECT 1'", "text_prepare"),  # (-- and a control byte)
        (b"SELECT 'a; prepare'", "text_prepare"),  # (conservative)
        (b"SELECT 1;", None),
        (b"SELECT LAST_INSERT_ID(), GET_LOCK('x', 1)", "named_lock"),
        (b"SET SESSION session_track_schema = OFF", "untracked_state"),
        (b"set session_track_system_variables=''", "untracked_state"),  # not even reported
        (b"SET @@session.session_track_state_change = 0", "untracked_state"),
        (b"SET time_zone = '+00:00', session_track_schema = off", "untracked_state"),
        (TRACKING_SETUP.encode(), None),  # sluice's own values (a local tier's connections)
        (b"SET session_track_schema = 'ON'", None),
        (b"SET session_track_system_variables = '*'", None),
        (b"SELECT @@session_track_schema", None),
    ],
)
def test_pin_reasons(sql, pin):
    assert scan_statement(sql)[0] == pin


@pytest.mark.parametrize(
    ("sql", "flags"),
    [
        (b"SELECT LAST_INSERT_ID()", NEEDS_INSERT_ID),
        (b"select @@identity", NEEDS_INSERT_ID),
        (b"SELECT ROW_COUNT()", NEEDS_PREVIOUS),
        (b"SHOW WARNINGS", NEEDS_PREVIOUS),
        (b"SELECT FOUND_ROWS()", NEEDS_PREVIOUS),
        (b"GET DIAGNOSTICS @n = NUMBER", NEEDS_PREVIOUS),
        (b"get diagnostics n = number", NEEDS_PREVIOUS),  # (in a stored program)
        (b"SHOW ERRORS", NEEDS_PREVIOUS),
        (b"/* tagged */ show count(*) errors", NEEDS_PREVIOUS),
        (b"SELECT 1; SHOW ERRORS", NEEDS_PREVIOUS),
        (b"\n  SET TRANSACTION READ ONLY", HOLD_NEXT),
        (b"/* tx */ SET TRANSACTION READ ONLY", HOLD_NEXT),
        (b"/* admin */ KILL 5", KILL),
        (b"COMMIT; SET TRANSACTION READ ONLY", HOLD_NEXT),
        (b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", HOLD_NEXT),
        (b"SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0),  # tracked variable
        (b"START TRANSACTION", 0),
        (b"KILL QUERY 5", KILL),
        (b"SELECT 'kill'", 0),
    ],
)
def test_statement_needs(sql, flags):
    assert scan_statement(sql)[1] == flags


@pytest.mark.parametrize("run", [b";/*", b";#", b";/* ", b"; -- "])
def test_long_runs_of_semicolons_and_comments_scan_in_linear_time(run):
    # Matching a statement's start after every `;` must not rescan the comment around it:
    # 16 KiB of this took seconds (64 KiB, the scan limit, a minute, every client waiting).
    sql = b"SELECT @a " + run * (16384 // len(run))  # (the @ takes it past the prefilters)
    started = time.monotonic()
    scan_statement(sql)
    assert time.monotonic() - started < 1


def test_a_huge_statement_is_not_split_into_two_statements():
    # Past SCAN_LIMIT the head and tail are scanned joined: what starts the tail is data.
    tail = b"xa " + b"b" * (SCAN_LIMIT // 2 - 5) + b"')"
    sql = b"INSERT INTO t VALUES ('" + b"a" * SCAN_LIMIT + tail
    assert sql[-SCAN_LIMIT // 2 :].startswith(b"xa ")
    assert scan_statement(sql) == (None, 0)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (b"KILL 5", True),
        (b"SELECT 1; KILL 5", True),
        (b"select 1;kill query 5", True),
        (b"SELECT 1; /* ops */ KILL 5", True),
        (b"/*!50000 KILL 5 */", True),
        (b"KILL USER app", True),
        (b"SELECT 'a; kill 5'", False),
        (b'SELECT "a; kill 5"', False),
        (b"SELECT `a; kill 5` FROM t", False),
        (b"SELECT 'it''s; kill 5'", False),
        (b"SELECT 'a\\'; kill 5'", False),  # (an escaped quote: one literal)
        (b"SELECT 1 /* ; kill 5 */", False),
        (b"SELECT 1 # ; kill 5", False),
        (b"SELECT 1 -- ; kill 5", False),
        (b"SELECT skill FROM t; SELECT 1", False),
        (b"SELECT 1; killer()", False),
    ],
)
def test_kill_statements_are_found_outside_literals_and_comments(sql, expected):
    assert has_kill_statement(sql) is expected


def test_finding_kill_statements_takes_linear_time():
    for sql in (b"'" + b"x" * 65536, b"';'" * 20000 + b"'", b"/*" * 30000, b";/*" * 20000):
        began = time.perf_counter()
        has_kill_statement(sql)
        assert time.perf_counter() - began < 0.5


def test_kill_parsing():
    assert parse_kill(b"KILL 5") == (False, 5)
    assert parse_kill(b" kill connection 7 ;") == (False, 7)
    assert parse_kill(b"/* ops */\nKILL QUERY 7") == (True, 7)
    assert parse_kill(b"SELECT 1; KILL 7") is None  # (not a lone KILL: refused)
    assert parse_kill(b"KILL QUERY 1000000001") == (True, 1000000001)
    assert parse_kill(b"KILL QUERY ID 5") is None  # MariaDB's by-query-id form: not ours
    assert parse_kill(b"KILL USER app") is None


def test_diagnostic_queries_sluice_can_answer():
    assert diagnostic_query(b"SHOW WARNINGS") == ("list", b"WARNINGS")
    assert diagnostic_query(b"show errors;") == ("list", b"errors")
    assert diagnostic_query(b"SHOW COUNT(*) WARNINGS") == ("count", b"WARNINGS")
    assert diagnostic_query(b"SELECT @@warning_count") == ("var", b"@@warning_count")
    assert diagnostic_query(b"SELECT ROW_COUNT()") == ("row_count", b"ROW_COUNT()")
    assert diagnostic_query(b"SHOW WARNINGS LIMIT 1") is None  # runs on the server
    assert diagnostic_query(b"SELECT ROW_COUNT() + 1") is None


def ok_with_state(*entries: tuple[int, bytes]) -> bytes:
    state = b"".join(bytes((kind,)) + lenenc_bytes(data) for kind, data in entries)
    return (
        ok_payload(Status.AUTOCOMMIT | Status.SESSION_STATE_CHANGED)
        + lenenc_bytes(b"")
        + lenenc_bytes(state)
    )


def sysvar(name: str, value: str) -> tuple[int, bytes]:
    return 0, lenenc_bytes(name.encode()) + lenenc_bytes(value.encode())


def test_apply_takes_variables_and_schema_and_ignores_read_only_ones():
    state = SessionState("app")
    described = state.apply(
        [
            ok_with_state(sysvar("time_zone", "+01:00"), (2, lenenc_bytes(b"1"))),
            ok_with_state((1, lenenc_bytes(b"other")), (2, lenenc_bytes(b"1"))),
            ok_with_state(sysvar("last_gtid", "0-1-5")),
        ],
        0,
    )
    assert described
    assert state.schema == "other"
    assert state.variables == {"time_zone": "+01:00"}


def test_a_connection_whose_tracking_was_switched_off_is_not_describable():
    """Reported OFF (e.g. by a stored procedure the statement scan never saw): what changes
    next on that connection would go unreported."""
    assert SessionState("app").apply([ok_with_state(sysvar("session_track_schema", "ON"))], 0)
    for name, value in (("session_track_schema", "OFF"), ("session_track_state_change", "OFF")):
        state = SessionState("app")
        assert not state.apply([ok_with_state(sysvar(name, value))], 0)
        assert state.variables == {}


def test_a_state_change_without_details_is_not_describable():
    state = SessionState("app")
    assert not state.apply([ok_with_state((2, lenenc_bytes(b"1")))], 0)


def test_sync_sets_what_differs_and_restores_what_the_connection_changed():
    want = SessionState("app", {"sql_mode": "ANSI", "autocommit": "OFF"})
    have = SessionState(
        "other", {"sql_mode": "", "time_zone": "+05:00", "character_set_client": "latin1"}
    )
    baseline = {"character_set_client": "utf8mb4"}
    statement, schema = sync_statements(want, have, baseline)
    assert schema == "app"
    assert statement == (
        "SET SESSION sql_mode = 'ANSI', autocommit = 'OFF', time_zone = DEFAULT, "
        "character_set_client = 'utf8mb4'"
    )
    assert sync_statements(want, want.copy(), baseline) == (None, None)


def test_values_are_quoted_safely():
    assert sql_value("42") == "42"
    assert sql_value("-1.5") == "-1.5"
    assert sql_value("ANSI_QUOTES") == "'ANSI_QUOTES'"
    assert sql_value("it's \\ here") == "'it''s \\\\ here'"
