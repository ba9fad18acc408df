"""Protocol commands that drivers do not expose, through sluice on a raw socket.

Every test runs twice: with CLIENT_DEPRECATE_EOF (result sets end with an OK packet) and
without it (classic EOF packets), since sluice must find response ends in both framings.
Where it makes the assertion meaningful, the same exchange is done directly against the
sandbox primary and the answers must match.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid

import pytest

from proxy.protocol.constants import Capability, Status

from .rawclient import (
    CURSOR_TYPE_READ_ONLY,
    LONG_DATA,
    OPTION_MULTI_STATEMENTS_OFF,
    OPTION_MULTI_STATEMENTS_ON,
    RawClient,
    RawError,
    parse_error,
)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=[True, False], ids=["deprecate_eof", "classic_eof"])
def deprecate_eof(request) -> bool:
    return request.param


@pytest.fixture
def raw(sandbox, tier, deprecate_eof):
    """Open raw connections: raw() through sluice, raw(direct=True) to the primary itself."""
    opened: list[RawClient] = []

    def _open(direct: bool = False, **kwargs) -> RawClient:
        if direct:
            address = (sandbox.primary.host, sandbox.primary.port)
        else:
            address = (tier.address.host, tier.port)
        kwargs.setdefault("deprecate_eof", deprecate_eof)
        client = RawClient.connect(address, "app", sandbox.users["app"].password, **kwargs)
        opened.append(client)
        return client

    yield _open
    for client in opened:
        client.close()


def test_text_result_is_framed_as_the_client_negotiated(raw, deprecate_eof):
    client = raw()
    assert client.greeting.capabilities & Capability.DEPRECATE_EOF  # sluice offers both
    assert bool(client.capabilities & Capability.DEPRECATE_EOF) == deprecate_eof
    result = client.query_one("SELECT 1, 'two', NULL")
    assert result.values == [("1", "two", None)]
    assert [c.name for c in result.columns] == ["1", "two", "NULL"]


def test_missing_table_error_carries_sqlstate_42S02_exactly_as_direct(raw):
    errors = []
    for direct in (False, True):
        client = raw(direct=direct)
        with pytest.raises(RawError) as info:
            client.query("SELECT * FROM no_such_table_here")
        errors.append(info.value)
        assert client.query_one("SELECT 5").values == [("5",)]  # the session carries on
    through, straight = errors
    assert through.code == 1146
    assert through.sqlstate == "42S02"
    assert through.payload[3:4] == b"#"
    assert "no_such_table_here" in through.message
    assert through.payload == straight.payload


def test_field_list_returns_the_columns_of_a_table_like_direct(raw):
    table = unique("fl")
    client = raw()
    client.query(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20), note TEXT)")
    try:
        columns = client.field_list(table)
        assert [c.name for c in columns] == ["id", "name", "note"]
        assert all(c.table == table for c in columns)
        assert [c.name for c in client.field_list(table, "na%")] == ["name"]
        direct = raw(direct=True).field_list(table)
        assert columns == direct
        assert client.query_one("SELECT 1").values == [("1",)]
    finally:
        client.query(f"DROP TABLE {table}")


def test_set_option_turns_multi_statements_on_and_off(raw):
    client = raw()
    assert not client.capabilities & Capability.MULTI_STATEMENTS
    with pytest.raises(RawError) as info:
        client.query("SELECT 1; SELECT 2")
    assert info.value.code == 1064  # without MULTI_STATEMENTS the ';' is a syntax error

    ok = client.set_option(OPTION_MULTI_STATEMENTS_ON)
    assert ok.columns is None
    results = client.query("SELECT 1; SELECT 2")
    assert [r.values for r in results] == [[("1",)], [("2",)]]
    assert results[0].status & Status.MORE_RESULTS_EXISTS
    assert not results[1].status & Status.MORE_RESULTS_EXISTS

    client.set_option(OPTION_MULTI_STATEMENTS_OFF)
    with pytest.raises(RawError) as info:
        client.query("SELECT 1; SELECT 2")
    assert info.value.code == 1064
    assert client.query_one("SELECT 3").values == [("3",)]


def test_long_data_sent_in_pieces_reaches_the_statement(raw):
    table = unique("ld")
    client = raw()
    client.query(f"CREATE TABLE {table} (id INT PRIMARY KEY, b LONGBLOB)")
    try:
        stmt, params, _ = client.prepare(f"INSERT INTO {table} (id, b) VALUES (?, ?)")
        assert params == 2
        pieces = [os.urandom(100_000), os.urandom(70_000), b"tail"]
        for piece in pieces:
            client.send_long_data(stmt, 1, piece)  # no response: the next read is EXECUTE's
        (ok,) = client.execute(stmt, [1, LONG_DATA])
        assert ok.columns is None and ok.affected_rows == 1
        data = b"".join(pieces)
        row = client.query_one(f"SELECT LENGTH(b), MD5(b) FROM {table} WHERE id = 1").values
        assert row == [(str(len(data)), hashlib.md5(data).hexdigest())]
    finally:
        client.query(f"DROP TABLE {table}")


def test_cursor_fetch_returns_rows_in_batches_until_last_row_sent(raw):
    sql = "SELECT seq FROM seq_1_to_5"
    batches_seen = []
    for direct in (False, True):
        client = raw(direct=direct)
        stmt, _, columns = client.prepare(sql)
        (opened,) = client.execute(stmt, [], flags=CURSOR_TYPE_READ_ONLY)
        assert opened.status & Status.CURSOR_EXISTS
        assert opened.rows == []  # rows only come by COM_STMT_FETCH
        batches = []
        for _ in range(4):  # bounded: 5 rows in batches of 3 take two fetches
            rows, status = client.fetch(stmt, 3, columns)
            batches.append([r[0] for r in rows])
            if status & Status.LAST_ROW_SENT:
                break
        assert batches == [[1, 2, 3], [4, 5]]
        batches_seen.append(batches)
        assert client.query_one("SELECT 'after'").values == [("after",)]
    assert batches_seen[0] == batches_seen[1]


def test_stmt_reset_clears_long_data_and_closes_the_cursor(raw):
    client = raw()
    stmt, _, _ = client.prepare("SELECT CAST(? AS CHAR)")
    client.send_long_data(stmt, 0, b"discarded")
    reset = client.reset_statement(stmt)
    assert reset.columns is None
    client.send_long_data(stmt, 0, b"kept")
    (result,) = client.execute(stmt, [LONG_DATA])
    assert result.values == [(b"kept",)]

    cursor_stmt, _, columns = client.prepare("SELECT seq FROM seq_1_to_10")
    client.execute(cursor_stmt, [], flags=CURSOR_TYPE_READ_ONLY)
    rows, _ = client.fetch(cursor_stmt, 2, columns)
    assert [r[0] for r in rows] == [1, 2]
    client.reset_statement(cursor_stmt)
    with pytest.raises(RawError) as info:
        client.fetch(cursor_stmt, 2, columns)
    assert info.value.code == 1421  # ER_STMT_HAS_NO_OPEN_CURSOR
    assert client.query_one("SELECT 'still here'").values == [("still here",)]


def test_stmt_close_gets_no_response_and_the_next_command_is_answered(raw):
    client = raw()
    stmt, _, _ = client.prepare("SELECT ? + 1")
    (result,) = client.execute(stmt, [41])
    assert result.values == [(42,)]
    client.close_statement(stmt)
    client.command(b"\x03SELECT 'next'")
    assert client.read_result().values == [("next",)]  # not an answer to the CLOSE
    with pytest.raises(RawError) as info:
        client.execute(stmt, [1])
    assert info.value.code == 1243  # ER_UNKNOWN_STMT_HANDLER: the statement really is gone


@pytest.mark.parametrize("command", [0x12, 0x1D], ids=["binlog_dump", "daemon"])
def test_unsupported_command_is_refused_with_1047_and_the_session_continues(raw, command):
    client = raw()
    client.command(bytes((command,)) + b"\0" * 10)
    payload = client.read_payload()
    assert payload[:1] == b"\xff", f"expected an ERR packet, got {payload[:32]!r}"
    err = parse_error(payload)
    assert err.code == 1047
    assert err.sqlstate == "08S01"
    assert err.message.startswith("sluice:")
    assert client.query_one("SELECT 'alive'").values == [("alive",)]


def test_pipelined_queries_are_answered_in_order(raw):
    client = raw()
    packets = b"".join(
        struct.pack("<I", len(sql) + 1)[:3] + b"\x00" + b"\x03" + sql
        for sql in (b"SELECT SLEEP(0.2), 'first'", b"SELECT 'second'")
    )
    client.sock.sendall(packets)  # both commands in one write
    assert client.read_result().values == [("0", "first")]
    assert client.read_result().values == [("second",)]


def test_pipelined_commands_after_an_error_are_still_answered(raw):
    client = raw()
    sqls = [b"SELECT * FROM no_such_pipelined_table", b"SELECT 'b'", b"SELECT 'c'"]
    client.sock.sendall(b"".join(struct.pack("<I", len(s) + 1)[:3] + b"\x00\x03" + s for s in sqls))
    with pytest.raises(RawError) as info:
        client.read_result()
    assert info.value.code == 1146
    assert client.read_result().values == [("b",)]
    assert client.read_result().values == [("c",)]
