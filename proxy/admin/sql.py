"""The admin SQL port on `admin.mysql`: any MySQL client can ask a tier what it is doing.

Built on mysql-mimic (handshake, auth, result sets), but the admin commands never reach its
SQL parser: sqlglot would read `SHOW POOLS` or `KILL CLIENT 5` as something else, so the raw
statement text is matched here first. The few statements drivers send on their own at connect
(`SET autocommit=…`, `SELECT @@version_comment`) are left to mysql-mimic; anything else is an
error that lists the commands there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from mysql_mimic import (
    AllowedResult,
    ColumnType,
    IdentityProvider,
    MysqlServer,
    NativePasswordAuthPlugin,
    NoLoginAuthPlugin,
    ResultColumn,
    Session,
    User,
)
from mysql_mimic.errors import ErrorCode, MysqlError

from ..config import ConfigError, load_config
from ..protocol.constants import ErrorCode as SluiceErrorCode
from ..protocol.messages import sluice_err_payload
from ..tls import InBandTLSFront
from . import control, views

if TYPE_CHECKING:
    from mysql_mimic.connection import Connection
    from sqlglot import expressions as exp

    from ..config import Address
    from ..switchover import Switchover
    from ..tier import Tier

log = logging.getLogger("sluice.admin.sql")

COMMANDS = (
    "SHOW POOLS",
    "SHOW CLIENTS",
    "SHOW SERVERS",
    "SHOW CONFIG",
    "SHOW SWITCHOVERS",
    "SHOW FLEET",
    "KILL CLIENT <id>",
    "RELOAD",
    "PAUSE",
    "RESUME",
    "SWITCHOVER TO '<server>'",
    "RETARGET TO '<server>'",
)
ER_NO_SUCH_THREAD = 1094
ER_UNKNOWN_ERROR = 1105

_COMMAND_RE = re.compile(
    r"\s*(?:SHOW\s+(?P<show>POOLS|CLIENTS|SERVERS|CONFIG|SWITCHOVERS|FLEET)"
    r"|KILL\s+CLIENT\s+(?P<kill>\d+)|(?P<reload>RELOAD)|(?P<pause>PAUSE)|(?P<resume>RESUME)"
    r"|SWITCHOVER\s+TO\s+(?P<switchover>'[^']+'|`[^`]+`|\w[\w.-]*)"
    r"|RETARGET\s+TO\s+(?P<retarget>'[^']+'|`[^`]+`|\w[\w.-]*))\s*;?\s*",
    re.IGNORECASE,
)
_DRIVER_SETUP_RE = re.compile(r"\s*(?:SET|SELECT)\b", re.IGNORECASE)
"""Statements drivers send by themselves after connecting; mysql-mimic answers them."""

_INT = ColumnType.LONGLONG
_TEXT = ColumnType.VARCHAR


def _columns(*spec: tuple[str, ColumnType]) -> list[ResultColumn]:
    return [ResultColumn(name, kind) for name, kind in spec]


POOL_COLUMNS = _columns(
    ("server", _TEXT),
    ("user", _TEXT),
    ("active", _INT),
    ("idle", _INT),
    ("waiting", _INT),
    ("max_wait_ms", _INT),
    ("cap", _INT),
    ("oldest_wait_ms", _INT),
    ("idle_in_transaction_ms", _INT),
)
CLIENT_COLUMNS = _columns(
    ("id", _INT),
    ("user", _TEXT),
    ("address", _TEXT),
    ("state", _TEXT),
    ("pinned_reason", _TEXT),
    ("upstream", _TEXT),
)
SERVER_COLUMNS = _columns(
    ("name", _TEXT),
    ("address", _TEXT),
    ("role", _TEXT),
    ("health", _TEXT),
    ("read_only", _TEXT),
    ("lag_s", ColumnType.DOUBLE),
    ("open", _INT),
    ("limit", _INT),
)
CONFIG_COLUMNS = _columns(("key", _TEXT), ("value", _TEXT))
RELOAD_COLUMNS = _columns(("reloaded", _TEXT), ("needs_restart", _TEXT))
PAUSE_COLUMNS = _columns(("paused", _TEXT), ("drained_ms", _INT), ("killed", _INT))
RESUME_COLUMNS = _columns(("resumed", _TEXT), ("paused_ms", _INT))
SWITCHOVER_COLUMNS = _columns(
    ("id", _INT),
    ("started_at", _TEXT),
    ("from", _TEXT),
    ("to", _TEXT),
    ("outcome", _TEXT),
    ("pause_ms", _INT),
    ("total_ms", _INT),
    ("steps", _TEXT),
    ("error", _TEXT),
    ("warnings", _TEXT),
)
RETARGET_COLUMNS = _columns(("was", _TEXT), ("current", _TEXT))
FLEET_COLUMNS = _columns(
    ("name", _TEXT),
    ("tier", _TEXT),
    ("address", _TEXT),
    ("admin", _TEXT),
    ("pool_max_connections", _INT),
    ("etcd", _TEXT),
)


def unknown_command(sql: str) -> MysqlError:
    shown = " ".join(sql.split())
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return MysqlError(
        f"sluice: unknown admin command '{shown}'; the admin port answers " + ", ".join(COMMANDS),
        ErrorCode.PARSE_ERROR,
    )


class AdminIdentity(IdentityProvider):
    """One account, `admin.user` with `admin.password`, logging in with mysql_native_password.

    Any other user name gets the no-login plugin, so it is refused with "access denied" exactly
    like a wrong password (without telling which of the two was wrong)."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.auth_string = NativePasswordAuthPlugin.create_auth_string(password)

    def get_plugins(self) -> Sequence[NativePasswordAuthPlugin | NoLoginAuthPlugin]:
        return [NativePasswordAuthPlugin(), NoLoginAuthPlugin()]

    async def get_user(self, username: str) -> User | None:
        if username == self.user:
            return User(
                name=username,
                auth_string=self.auth_string,
                auth_plugin=NativePasswordAuthPlugin.name,
            )
        return User(name=username, auth_plugin=NoLoginAuthPlugin.name)


class AdminSession(Session):
    """One admin client: admin commands by their raw text, nothing else."""

    def __init__(self, tier: Tier, open_sessions: set[AdminSession]) -> None:
        super().__init__()
        self.tier = tier
        self._open_sessions = open_sessions
        self._handlers: dict[str, Callable[[re.Match[str]], Awaitable[AllowedResult]]] = {
            "show": self._show,
            "kill": self._kill_client,
            "reload": self._reload,
            "pause": self._pause,
            "resume": self._resume,
            "switchover": self._switchover,
            "retarget": self._retarget,
        }

    async def init(self, connection: Connection) -> None:
        await super().init(connection)
        self._open_sessions.add(self)

    async def close(self) -> None:
        self._open_sessions.discard(self)
        await super().close()

    async def handle_query(self, sql: str, attrs: dict[str, str]) -> AllowedResult:
        match = _COMMAND_RE.fullmatch(sql)
        if match is not None:
            return await self._handlers[str(match.lastgroup)](match)
        if _DRIVER_SETUP_RE.match(sql):
            return await super().handle_query(sql, attrs)
        raise unknown_command(sql)

    async def query(self, expression: exp.Expression, sql: str, attrs: dict[str, str]) -> Any:
        """What mysql-mimic's own handling of SET/SELECT did not answer (e.g. a table)."""
        raise unknown_command(sql)

    # --- commands ---------------------------------------------------------------------------

    async def _show(self, match: re.Match[str]) -> AllowedResult:
        what = match["show"].upper()
        tier = self.tier
        if what == "POOLS":
            rows: list[tuple[object, ...]] = [
                (
                    r.server,
                    r.user,
                    r.active,
                    r.idle,
                    r.waiting,
                    r.max_wait_ms,
                    r.cap,
                    r.oldest_wait_ms,
                    r.idle_in_transaction_ms,
                )
                for r in views.pool_rows(tier)
            ]
            return rows, POOL_COLUMNS
        if what == "CLIENTS":
            rows = [
                (r.id, r.user, r.address, r.state, r.pinned_reason, r.upstream)
                for r in views.client_rows(tier)
            ]
            return rows, CLIENT_COLUMNS
        if what == "SERVERS":
            rows = [
                (r.name, r.address, r.role, r.health, r.read_only, r.lag_s, r.open, r.limit)
                for r in views.server_rows(tier)
            ]
            return rows, SERVER_COLUMNS
        if what == "SWITCHOVERS":
            running = [tier.switchover] if tier.switchover is not None else []
            return [
                _switchover_row(s) for s in [*running, *reversed(tier.switchovers)]
            ], SWITCHOVER_COLUMNS
        if what == "FLEET":
            return views.fleet_rows(tier), FLEET_COLUMNS
        return list(views.config_rows(tier)), CONFIG_COLUMNS

    async def _kill_client(self, match: re.Match[str]) -> AllowedResult:
        client_id = int(match["kill"])
        session = self.tier.sessions.get(client_id)
        if session is None:
            raise MysqlError(
                f"sluice: no client session {client_id}; SHOW CLIENTS lists the ids",
                ER_NO_SUCH_THREAD,  # type: ignore[arg-type]
            )
        log.info("admin: closing client session %d (%s@%s)", client_id, session.user, session.peer)
        session.close()
        return None

    async def _reload(self, match: re.Match[str]) -> AllowedResult:
        path = self.tier.config_path
        if path is None:
            raise MysqlError(
                "sluice: RELOAD re-reads the config file, but this tier was started from an "
                "in-memory config; restart it with a config file (sluice run -c FILE)",
                ER_UNKNOWN_ERROR,  # type: ignore[arg-type]
            )
        running = self.tier.config
        # A tier started with port 0 somewhere (tests) must be able to read the same file again.
        zero_port = any(
            a is not None and a.kind == "tcp" and a.port == 0
            for a in (*running.listen, running.admin.mysql, running.admin.http)
        )
        try:
            config = load_config(path, allow_zero_port=zero_port)
        except ConfigError as exc:
            raise MysqlError(
                f"sluice: config not reloaded, the running one stays: {exc}",
                ER_UNKNOWN_ERROR,  # type: ignore[arg-type]
            ) from None
        restart = self.tier.reload(config)
        return [("yes", ", ".join(restart))], RELOAD_COLUMNS

    async def _pause(self, match: re.Match[str]) -> AllowedResult:
        """Returns once no upstream work is in flight (see proxy/gate.py)."""
        result = await self.tier.gate.pause()
        return [("yes", round(result.drained_seconds * 1000), result.killed)], PAUSE_COLUMNS

    async def _resume(self, match: re.Match[str]) -> AllowedResult:
        try:
            paused = control.resume(self.tier)
        except control.ControlRefused as exc:
            raise MysqlError(str(exc), ER_UNKNOWN_ERROR) from None  # type: ignore[arg-type]
        return [("yes", round(paused * 1000))], RESUME_COLUMNS

    async def _switchover(self, match: re.Match[str]) -> AllowedResult:
        """Returns when the switchover is over: its record, or an error saying why not."""
        record, error = await control.switchover(self.tier, _name(match["switchover"]), [])
        if error is not None:
            raise MysqlError(error, ER_UNKNOWN_ERROR)  # type: ignore[arg-type]
        assert record is not None
        return [_switchover_row(record)], SWITCHOVER_COLUMNS

    async def _retarget(self, match: re.Match[str]) -> AllowedResult:
        try:
            was, now = await control.retarget_by_request(self.tier, _name(match["retarget"]))
        except control.ControlRefused as exc:
            raise MysqlError(str(exc), ER_UNKNOWN_ERROR) from None  # type: ignore[arg-type]
        return [(was, now)], RETARGET_COLUMNS


def _name(quoted: str) -> str:
    return quoted[1:-1] if quoted[:1] in ("'", "`") else quoted


def _switchover_row(run: Switchover) -> tuple[object, ...]:
    record = run.as_dict()
    return (
        record["id"],
        record["started_at"],
        record["from"],
        record["to"],
        record["outcome"],
        None if run.pause_ms is None else round(run.pause_ms),
        None if run.total_ms is None else round(run.total_ms),
        run.steps_summary(),
        run.error,
        "; ".join(run.warnings) or None,
    )


class SqlAdmin:
    """The admin SQL server of one tier, on the tier's own event loop."""

    def __init__(self, tier: Tier, tls: ssl.SSLContext | None = None) -> None:
        admin = tier.config.admin
        if admin.password is None:  # config validation already insists on it
            raise ValueError("admin.password is required for the admin SQL port")
        self.sessions: set[AdminSession] = set()
        self.tls = tls
        self.required = admin.tls is not None and admin.tls.mode == "required"
        self.server = MysqlServer(
            session_factory=lambda: AdminSession(tier, self.sessions),
            identity_provider=AdminIdentity(admin.user, admin.password),
        )
        self._front: asyncio.Server | None = None
        self._inner: str | None = None

    async def start(self, address: Address) -> None:
        if address.kind == "unix":  # a unix socket counts as secure: no TLS there
            await self.server.start_unix_server(path=address.path)
            return
        if self.tls is None:
            await self.server.start_server(host=address.host, port=address.port, reuse_address=True)
            return
        # TLS in front of mysql-mimic (whose own start_tls loses a ClientHello that arrives
        # with the SSLRequest): it listens on a private unix socket, and the TCP address is
        # an InBandTLSFront relaying to it.
        self._inner = os.path.join(tempfile.mkdtemp(prefix="sluice-admin-"), "sql.sock")
        await self.server.start_unix_server(path=self._inner)
        refusal = None
        if self.required:
            refusal = sluice_err_payload(
                SluiceErrorCode.SECURE_TRANSPORT_REQUIRED,
                "the admin port requires TLS (admin.tls): connect with --ssl and the admin "
                "CA, or through a unix socket",
            )
        inner = self._inner
        loop = asyncio.get_running_loop()

        async def open_inner(protocol: asyncio.Protocol) -> asyncio.Transport:
            transport, _ = await loop.create_unix_connection(lambda: protocol, inner)
            return transport

        context = self.tls
        self._front = await loop.create_server(
            lambda: InBandTLSFront(context, open_inner, refusal),
            address.host,
            address.port,
            reuse_address=True,
        )

    def sockets(self) -> Sequence[Any]:
        return self._front.sockets if self._front is not None else self.server.sockets()

    async def stop(self) -> None:
        if self._front is not None:
            self._front.close()
        if self._inner is not None:
            shutil.rmtree(os.path.dirname(self._inner), ignore_errors=True)
        self.server.close()
        for session in list(self.sessions):  # admin clients still connected
            with contextlib.suppress(Exception):
                session.connection.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)
