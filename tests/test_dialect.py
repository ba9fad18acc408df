"""The switchover SQL of both dialects, statement by statement (MySQL has no server here)."""

from __future__ import annotations

import pytest

from proxy.dialect import DialectError, MariaDB, MySQL, compact_position, for_version, quote


def test_the_dialect_comes_from_the_server_version():
    maria = for_version("5.5.5-10.11.19-MariaDB-0+deb12u1")
    assert isinstance(maria, MariaDB) and maria.version == (10, 11, 19)
    mysql = for_version("8.0.36")
    assert isinstance(mysql, MySQL) and mysql.version == (8, 0, 36)
    assert isinstance(for_version("8.4.2-commercial"), MySQL)
    with pytest.raises(DialectError, match=r"MySQL 8\.0\.23 or later"):
        for_version("5.7.44-log")
    with pytest.raises(DialectError, match=r"MariaDB 10\.2 or later"):
        for_version("5.5.5-10.1.48-MariaDB")
    with pytest.raises(DialectError, match="cannot read"):
        for_version("banana")


def test_mysql_statements():
    d = for_version("8.0.36")
    assert d.read_only_on() == ["SET GLOBAL super_read_only = ON"]
    assert d.read_only_off() == ["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"]
    assert d.position_query == "SELECT @@GLOBAL.gtid_executed"
    # gtid_executed comes with a newline after each comma; the set is sent without it.
    position = (
        "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77,\n5e11fa47-71ca-11e1-9e33-c80aa9429562:1-3"
    )
    assert d.wait_for_position(position, 5) == (
        "SELECT WAIT_FOR_EXECUTED_GTID_SET('3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77,"
        "5e11fa47-71ca-11e1-9e33-c80aa9429562:1-3', 5)"
    )
    assert d.reached("0") and not d.reached("1") and not d.reached(None)
    assert (d.stop_replication, d.reset_replication, d.start_replication) == (
        "STOP REPLICA",
        "RESET REPLICA ALL",
        "START REPLICA",
    )
    assert d.replica_status_query == "SHOW REPLICA STATUS"
    follow = d.follow("10.0.0.2", 3306, "repl", "pa'ss", demote=True)
    assert follow == [
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '10.0.0.2', SOURCE_PORT = 3306, "
        "SOURCE_USER = 'repl', SOURCE_PASSWORD = 'pa''ss', SOURCE_AUTO_POSITION = 1, "
        "GET_SOURCE_PUBLIC_KEY = 1"
    ]
    assert d.follow("10.0.0.2", 3306, "repl", "x", demote=False)[0].startswith(
        "CHANGE REPLICATION SOURCE TO"
    )
    assert d.lock_wait_timeout(0.3) == "SET SESSION lock_wait_timeout = 1"


def test_mysql_replica_status_is_read_by_its_own_column_names():
    d = for_version("8.0.36")
    columns = [
        "Replica_IO_State",
        "Source_Host",
        "Source_Port",
        "Replica_IO_Running",
        "Replica_SQL_Running",
        "Last_IO_Error",
        "Last_SQL_Error",
        "Seconds_Behind_Source",
    ]
    [status] = d.parse_replica_status(
        columns, [["Waiting", "db1", "3306", "Yes", "Yes", "", "", "0"]]
    )
    assert (status.source_host, status.source_port, status.lag) == ("db1", 3306, 0.0)
    assert status.healthy
    [broken] = d.parse_replica_status(
        columns, [["", "db1", "3306", "No", "Yes", "error connecting", "", None]]
    )
    assert not broken.healthy and broken.lag is None and broken.error == "error connecting"


def test_mariadb_statements():
    d = for_version("5.5.5-10.11.6-MariaDB")
    assert d.read_only_on() == ["SET GLOBAL read_only = ON"]
    assert d.read_only_off() == ["SET GLOBAL read_only = OFF"]
    assert d.position_query == "SELECT @@GLOBAL.gtid_binlog_pos"
    assert d.wait_for_position("0-1-5", 2.5) == "SELECT MASTER_GTID_WAIT('0-1-5', 2.5)"
    assert d.reached("0") and not d.reached("-1")
    assert d.replica_status_query == "SHOW ALL SLAVES STATUS"
    assert d.follow("h", 3307, "repl", "pw", demote=True) == [
        "CHANGE MASTER TO MASTER_HOST = 'h', MASTER_PORT = 3307, MASTER_USER = 'repl', "
        "MASTER_PASSWORD = 'pw', MASTER_USE_GTID = slave_pos, MASTER_DEMOTE_TO_SLAVE = 1"
    ]
    assert "DEMOTE" not in d.follow("h", 3307, "repl", "pw", demote=False)[0]
    # Before 10.10 there is no MASTER_DEMOTE_TO_SLAVE: the same done by hand.
    old = for_version("5.5.5-10.6.16-MariaDB")
    assert old.follow("h", 3307, "repl", "pw", demote=True) == [
        "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos",
        "CHANGE MASTER TO MASTER_HOST = 'h', MASTER_PORT = 3307, MASTER_USER = 'repl', "
        "MASTER_PASSWORD = 'pw', MASTER_USE_GTID = slave_pos",
    ]


def test_values_are_quoted_the_same_under_any_sql_mode():
    assert quote("it's") == "'it''s'"
    for bad in ("back\\slash", "new\nline", "nul\0"):
        with pytest.raises(DialectError, match="backslash or control character"):
            quote(bad)
    assert compact_position(" 0-1-5,\n 1-2-3 ") == "0-1-5,1-2-3"
