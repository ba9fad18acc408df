"""The SQL that moves a primary, in the two dialects sluice speaks: MariaDB and MySQL 8.

Sans-I/O: statements out, answers in. The switchover (and writer discovery) run them on a
monitor connection; the dialect is chosen from the server's version string, so one cluster
speaks one dialect. MySQL is covered by unit tests only: no MySQL server runs where sluice is
tested, and these statements follow the MySQL 8.0.23+ reference (the first release with
`CHANGE REPLICATION SOURCE TO`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_VERSION_RE = re.compile(r"(?:5\.5\.5-)?(\d+)\.(\d+)\.(\d+)")


class DialectError(ValueError):
    """The server (or a value to send it) is one a switchover cannot handle."""


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replication channel of a replica, as SHOW [ALL] SLAVES / REPLICA STATUS says."""

    source_host: str
    source_port: int
    io_running: bool
    sql_running: bool
    lag: float | None  # seconds behind its source; None while it cannot tell
    error: str  # the last IO or SQL error, "" when none
    name: str = ""  # the connection (MariaDB) or channel (MySQL) name; "" is the default

    @property
    def healthy(self) -> bool:
        return self.io_running and self.sql_running and not self.error


def quote(text: str) -> str:
    """A SQL string literal that reads the same whatever sql_mode says about backslashes."""
    if "\\" in text or any(ord(c) < 32 for c in text):
        raise DialectError(
            f"{text!r} contains a backslash or control character, which sluice does not send "
            "in replication settings; use a host name, user and password without them"
        )
    return "'" + text.replace("'", "''") + "'"


def compact_position(position: str) -> str:
    """A GTID position without the whitespace MySQL puts after commas in gtid_executed."""
    return "".join(position.split())


class Dialect:
    """What the two dialects share; subclasses fill in the words."""

    name = ""
    position_query = ""
    replica_status_query = ""
    stop_replication = ""
    reset_replication = ""
    start_replication = ""
    _status_columns: tuple[str, str, str, str, str] = ("", "", "", "", "")

    def __init__(self, version: tuple[int, int, int]) -> None:
        self.version = version

    def lock_wait_timeout(self, seconds: float) -> str:
        """Bound how long read_only waits for running writes (the server counts whole
        seconds; a running write makes SET GLOBAL read_only fail with 1205 after it)."""
        return f"SET SESSION lock_wait_timeout = {max(1, math.ceil(seconds))}"

    def read_only_on(self) -> list[str]:
        raise NotImplementedError

    def read_only_off(self) -> list[str]:
        raise NotImplementedError

    def wait_for_position(self, position: str, timeout: float) -> str:
        raise NotImplementedError

    def reached(self, answer: str | None) -> bool:
        """Whether the wait_for_position answer says the position was reached in time."""
        return answer == "0"

    def follow(self, host: str, port: int, user: str, password: str, *, demote: bool) -> list[str]:
        """Statements that make this server replicate from host:port (it is stopped first).

        `demote` is for the old primary: its own binlog position becomes where it continues
        from, so it neither replays nor skips what it wrote while primary."""
        raise NotImplementedError

    def parse_replica_status(
        self, columns: list[str], rows: list[list[str | None]]
    ) -> list[ReplicaStatus]:
        host, port, io, sql, lag = self._status_columns
        out = []
        for row in rows:
            values = dict(zip(columns, row, strict=False))
            behind = values.get(lag)
            errors = [values.get("Last_IO_Error") or "", values.get("Last_SQL_Error") or ""]
            out.append(
                ReplicaStatus(
                    source_host=values.get(host) or "",
                    source_port=int(values.get(port) or 0),
                    io_running=values.get(io) == "Yes",
                    sql_running=values.get(sql) == "Yes",
                    lag=float(behind) if behind not in (None, "") else None,
                    error="; ".join(e for e in errors if e),
                    name=values.get("Connection_name") or values.get("Channel_Name") or "",
                )
            )
        return out

    def is_read_only(self, value: str | None) -> bool:
        return value not in ("0", "OFF")

    semi_sync_query: str | None = None
    """The semi-sync variables (None: sluice does not move semi-sync for this server)."""

    def semi_sync_primary(self, settings: dict[str, str]) -> list[str]:
        return []

    def semi_sync_replica(self, settings: dict[str, str], *, was_primary: bool) -> list[str]:
        return []


class MariaDB(Dialect):
    name = "mariadb"
    position_query = "SELECT @@GLOBAL.gtid_binlog_pos"
    replica_status_query = "SHOW ALL SLAVES STATUS"
    stop_replication = "STOP SLAVE"
    reset_replication = "RESET SLAVE ALL"
    start_replication = "START SLAVE"
    _status_columns = (
        "Master_Host",
        "Master_Port",
        "Slave_IO_Running",
        "Slave_SQL_Running",
        "Seconds_Behind_Master",
    )

    def read_only_on(self) -> list[str]:
        return ["SET GLOBAL read_only = ON"]

    def read_only_off(self) -> list[str]:
        return ["SET GLOBAL read_only = OFF"]

    semi_sync_query = "SHOW GLOBAL VARIABLES LIKE 'rpl\\_semi\\_sync\\_%'"

    def semi_sync_primary(self, settings: dict[str, str]) -> list[str]:
        """What makes the new primary wait for replicas as the old one did (`settings`:
        the old primary's rpl_semi_sync_* variables); nothing when it did not."""
        if settings.get("rpl_semi_sync_master_enabled", "OFF").upper() != "ON":
            return []
        out = ["SET GLOBAL rpl_semi_sync_master_enabled = ON"]
        point = settings.get("rpl_semi_sync_master_wait_point", "").upper()
        if point in ("AFTER_SYNC", "AFTER_COMMIT"):
            out.append(f"SET GLOBAL rpl_semi_sync_master_wait_point = {point}")
        timeout = settings.get("rpl_semi_sync_master_timeout", "")
        if timeout.isdigit():
            out.append(f"SET GLOBAL rpl_semi_sync_master_timeout = {int(timeout)}")
        return out

    def semi_sync_replica(self, settings: dict[str, str], *, was_primary: bool) -> list[str]:
        """What makes a replica of the new primary acknowledge as semi-sync replicas did
        (before START SLAVE: the IO thread reads it when it starts); the old primary also
        stops waiting for acknowledgements itself."""
        if settings.get("rpl_semi_sync_master_enabled", "OFF").upper() != "ON":
            return []
        out = ["SET GLOBAL rpl_semi_sync_slave_enabled = ON"]
        if was_primary:
            out.append("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
        return out

    def wait_for_position(self, position: str, timeout: float) -> str:
        # 0: reached; -1: timed out.
        return f"SELECT MASTER_GTID_WAIT({quote(compact_position(position))}, {timeout:g})"

    def follow(self, host: str, port: int, user: str, password: str, *, demote: bool) -> list[str]:
        change = (
            f"CHANGE MASTER TO MASTER_HOST = {quote(host)}, MASTER_PORT = {int(port)}, "
            f"MASTER_USER = {quote(user)}, MASTER_PASSWORD = {quote(password)}, "
            "MASTER_USE_GTID = slave_pos"
        )
        if not demote:
            return [change]
        if self.version >= (10, 10, 0):
            return [change + ", MASTER_DEMOTE_TO_SLAVE = 1"]
        # Before 10.10 the same by hand: continue from what this server wrote itself.
        return ["SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos", change]


class MySQL(Dialect):
    name = "mysql"
    position_query = "SELECT @@GLOBAL.gtid_executed"
    replica_status_query = "SHOW REPLICA STATUS"
    stop_replication = "STOP REPLICA"
    reset_replication = "RESET REPLICA ALL"
    start_replication = "START REPLICA"
    _status_columns = (
        "Source_Host",
        "Source_Port",
        "Replica_IO_Running",
        "Replica_SQL_Running",
        "Seconds_Behind_Source",
    )

    def read_only_on(self) -> list[str]:
        # super_read_only also stops accounts with SUPER / CONNECTION_ADMIN, and implies
        # read_only.
        return ["SET GLOBAL super_read_only = ON"]

    def read_only_off(self) -> list[str]:
        return ["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"]

    def wait_for_position(self, position: str, timeout: float) -> str:
        # 0: reached; 1: timed out.
        return (
            f"SELECT WAIT_FOR_EXECUTED_GTID_SET({quote(compact_position(position))}, {timeout:g})"
        )

    def follow(self, host: str, port: int, user: str, password: str, *, demote: bool) -> list[str]:
        # With GTID auto-positioning the old primary needs nothing more than any replica:
        # gtid_executed already holds what it wrote. GET_SOURCE_PUBLIC_KEY lets a
        # caching_sha2_password replication account log in without TLS.
        return [
            f"CHANGE REPLICATION SOURCE TO SOURCE_HOST = {quote(host)}, "
            f"SOURCE_PORT = {int(port)}, SOURCE_USER = {quote(user)}, "
            f"SOURCE_PASSWORD = {quote(password)}, SOURCE_AUTO_POSITION = 1, "
            "GET_SOURCE_PUBLIC_KEY = 1"
        ]


def for_version(server_version: str) -> Dialect:
    """The dialect of a server, from the version in its greeting (MariaDB's starts with the
    "5.5.5-" that old clients need)."""
    match = _VERSION_RE.match(server_version)
    if match is None:
        raise DialectError(f"cannot read the server version {server_version!r}")
    version = (int(match[1]), int(match[2]), int(match[3]))
    if "mariadb" in server_version.lower():
        if version < (10, 2, 0):
            raise DialectError(
                f"MariaDB {'.'.join(map(str, version))} has no session tracking or "
                "MASTER_GTID_WAIT; sluice needs MariaDB 10.2 or later"
            )
        return MariaDB(version)
    if version < (8, 0, 23):
        raise DialectError(
            f"MySQL {'.'.join(map(str, version))} predates CHANGE REPLICATION SOURCE TO; "
            "sluice switches over MySQL 8.0.23 or later"
        )
    return MySQL(version)
