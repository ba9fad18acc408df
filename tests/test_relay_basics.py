"""Real clients through one tier to the sandbox: the basics behave exactly as direct."""

from __future__ import annotations

import pymysql
import pytest


def test_query_reaches_the_database_and_reports_its_version(connect):
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT @@version, 1 + 1")
        version, two = cur.fetchone()
    assert "MariaDB" in version
    assert two == 2
    assert "MariaDB" in conn.get_server_info()  # greeting mirrors the upstream's version


def test_server_error_reaches_the_client_with_code_sqlstate_and_message(connect):
    conn = connect()
    with conn.cursor() as cur, pytest.raises(pymysql.err.ProgrammingError) as info:
        cur.execute("SELECT * FROM no_such_table")
    code, message = info.value.args
    assert code == 1146
    assert "no_such_table" in message
    with conn.cursor() as cur:  # the session carries on after an error
        cur.execute("SELECT 7")
        assert cur.fetchone() == (7,)
