"""Client sessions: greeting, authentication, and the command loop over pooled connections.

A ClientSession is the server side of the protocol toward one client. It greets with the
upstream's version, authenticates with mysql_native_password (switching clients that open with
another plugin), and then runs commands on pooled upstream connections: a connection is taken
for a command and given back when the response ends, unless the client must keep it — inside
a transaction, with more results or a LOCAL INFILE pending, or when its session holds state
that cannot move (pinned). The client's replayable state (schema, system variables) follows it:
a connection whose state differs is brought in line before the command runs.

Commands wait their turn: at most one is in flight per session, and what a client pipelines
behind it stays buffered (bounded) until the response ends.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import errors
from .backend import ServerConnection, ServerStatement, UpstreamError
from .health import set_keepalive
from .login import Login, parse_client_message
from .logs import Throttled
from .pool import POOL_KEY_CAPABILITIES, PoolKey, ServerRetired, Waiter
from .protocol.codec import ProtocolError, read_u32, u32, unpack_u32
from .protocol.constants import MAX_PAYLOAD, Capability, Command, Status
from .protocol.framing import (
    InfileTracker,
    Message,
    MessageReader,
    PacketTooLarge,
    frame,
    single_packet,
)
from .protocol.handshake import ChangeUser
from .protocol.messages import TYPE_LONGLONG, TYPE_VAR_STRING, ok_payload, text_result
from .protocol.scanner import NO_RESPONSE, RESPONSE_MODES
from .session_state import (
    HOLD_NEXT,
    KILL,
    NEEDS_INSERT_ID,
    NEEDS_PREVIOUS,
    PIN_CHANGE_FAILED,
    PIN_SET_OPTION,
    PIN_UNTRACKED,
    SET_HEADS,
    SET_THIRDS,
    TRACKING_SETUP,
    SessionState,
    charset_set_key,
    charset_set_ok,
    diagnostic_query,
    has_kill_statement,
    idle_status,
    parse_kill,
    pin_reason,
    scan_statement,
    sync_statements,
)
from .statements import ClientStatement, bind_execute, wants_cursor, with_statement_id
from .tls import ServerTLS, TLSTransport

_monotonic = time.monotonic


def _without_schema(conn: ServerConnection) -> bool:
    """A schema cannot be unselected: a client without one needs a connection without one."""
    return conn.state.schema is None


LOGIN_REFUSALS = frozenset((1044, 1045, 1049))
"""Errors by which a database refuses a login: access denied to the schema, to the user, no
such schema."""


def wait_limit(session: SessionState) -> float:
    """The idle limit a client set for itself with SET wait_timeout (0: none set)."""
    text = session.variables.get("wait_timeout")
    if text is None:
        return 0.0
    try:
        return max(0.0, float(text))
    except ValueError:
        return 0.0


def refused_login(exc: Exception) -> bool:
    if isinstance(exc, UpstreamError):
        return exc.err.code in LOGIN_REFUSALS
    return isinstance(exc, errors.ClientError) and exc.code in LOGIN_REFUSALS


if TYPE_CHECKING:
    from .tier import Tier
    from .users import Credential

log = logging.getLogger("sluice.frontend")
pins = Throttled(log, every=10.0)  # apps that pin do it on every connection

# Session states
HANDSHAKE, READY, BUSY, INFILE, CLOSED = range(5)
STATE_NAMES = ("handshake", "idle", "busy", "infile", "closed")

PAUSE_PIPELINE = 1
"""Pause reason: the client pipelined more than PIPELINE_LIMIT bytes behind a running command."""
PIPELINE_LIMIT = 1 << 20
DIAGNOSTICS_HOLD_SECONDS = 1.0
"""After warnings or an error the client keeps its connection for its next statement (SHOW
WARNINGS must see them), but an idle client gives it back after this long."""
LINGER_SECONDS = 2.0
HANDSHAKE_MESSAGE_LIMIT = 1 << 16
"""A handshake response is a few hundred bytes; anything announcing more is not a client."""

CLEAR_DIAGNOSTICS = "SELECT 1 FROM (SELECT 1) AS sluice_clear_diagnostics"
"""Resets the warnings/errors a connection keeps (a statement using no table leaves them)."""
_KEEP_STATUS = int(Status.IN_TRANS | Status.CURSOR_EXISTS)
_IN_TRANS = int(Status.IN_TRANS)
_PING = int(Command.PING)
_PROCESS_KILL = int(Command.PROCESS_KILL)
_QUERY = int(Command.QUERY)
_QUIT = int(Command.QUIT)
_RESET_CONNECTION = int(Command.RESET_CONNECTION)
_SET_OPTION = int(Command.SET_OPTION)
_STMT_CLOSE = int(Command.STMT_CLOSE)
_STMT_EXECUTE = int(Command.STMT_EXECUTE)
_STMT_FETCH = int(Command.STMT_FETCH)
_STMT_PREPARE = int(Command.STMT_PREPARE)
_STMT_RESET = int(Command.STMT_RESET)
_STMT_SEND_LONG_DATA = int(Command.STMT_SEND_LONG_DATA)
"""(Plain ints: comparing with an IntEnum member costs a class attribute lookup, ~10x.)"""
READ_ONLY_ERROR = 1290
"""ER_OPTION_PREVENTS_STATEMENT: what a read-only (demoted) server answers a write with."""
_CURSOR_EXISTS = int(Status.CURSOR_EXISTS)
_STATEMENT_COMMANDS = frozenset(
    int(c)
    for c in (
        Command.STMT_PREPARE,
        Command.STMT_EXECUTE,
        Command.STMT_SEND_LONG_DATA,
        Command.STMT_CLOSE,
        Command.STMT_RESET,
        Command.STMT_FETCH,
        Command.STMT_BULK_EXECUTE,
    )
)
_TRACKING_SETUP = TRACKING_SETUP.encode()
_CURSOR_COMMANDS = (int(Command.STMT_EXECUTE), int(Command.STMT_FETCH))


class QueuedCommand(Waiter):
    """A session's command waiting in the pool's queue: one per session, reused for every
    command that waits, so that waiting costs no task, future or timer of its own."""

    __slots__ = ("flags", "mode", "session")

    def __init__(self, session: ClientSession) -> None:
        super().__init__()
        self.session = session
        self.mode = 0
        self.flags = 0

    def served(self, conn: ServerConnection) -> None:
        self.session._served(conn)

    def granted(self) -> None:
        self.session._granted()

    def failed(self, exc: Exception) -> None:
        self.session._queue_failed(exc)


class ClientSession(asyncio.Protocol):
    """One client connection to a tier."""

    __slots__ = (
        "_began",
        "_command_byte",
        "_current_statement",
        "_cursors",
        "_deadline",
        "_diagnostics_hold",
        "_end_after_reply",
        "_fatal",
        "_gated",
        "_handed",
        "_hold",
        "_infile",
        "_last_active",
        "_last_msg",
        "_last_raw",
        "_learning",
        "_long_data",
        "_move_pending",
        "_next_statement",
        "_paused",
        "_previous",
        "_queued",
        "_reader",
        "_reply_seq",
        "_rerun",
        "_reserved",
        "_row_count",
        "_step",
        "_task",
        "_tls",
        "_trans_began",
        "_unverified",
        "_wait_limit",
        "_wait_timer",
        "_waiter",
        "_write_blocked",
        "backend",
        "capabilities",
        "charset",
        "connected_at",
        "credential",
        "id",
        "last_insert_id",
        "max_packet",
        "peer",
        "pinned",
        "pool_key",
        "scramble",
        "session",
        "state",
        "statements",
        "tier",
        "transport",
        "user",
    )

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.id = tier.next_session_id()
        self.state = HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.backend: ServerConnection | None = None
        self.peer = "?"
        self.user = ""
        self.charset = 45
        self.max_packet = 1 << 24
        self.capabilities = 0
        self.credential: Credential | None = None
        self.scramble = b""
        self.connected_at = 0.0
        self.session = SessionState(None)
        self.pool_key: PoolKey | None = None
        self.pinned: str | None = None
        self._hold = 0  # keep the connection for this many more responses
        self.statements: dict[int, ClientStatement] = {}
        self._next_statement = 0
        self._long_data = False  # parameter data sent ahead of an execute lives on the server
        self._cursors: set[int] = set()  # statements with an open cursor on the connection
        self._current_statement: tuple[int, int] | None = None  # (command, client id)
        self.last_insert_id = 0  # what LAST_INSERT_ID() returns for this client
        self._row_count = -1  # what ROW_COUNT() returns after the previous statement
        self._diagnostics_hold: asyncio.TimerHandle | None = None
        self._began = 0.0  # when the current command arrived
        self._command_byte = 0
        self._fatal: errors.ClientError | None = None  # reported at the next command, then close
        self._gated = False  # waiting for the write gate to open
        self._previous: ServerConnection | None = None  # where the last command ran
        self._reader = MessageReader(HANDSHAKE_MESSAGE_LIMIT)
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._infile: InfileTracker | None = None
        self._paused = 0
        self._write_blocked = False  # the client's socket buffer is full (pause_writing)
        self._reply_seq = 1
        self._deadline: asyncio.TimerHandle | None = None  # the handshake's time limit
        self._tls: ServerTLS | None = None  # the client's TLS, once it asked for it
        self._last_active = 0.0  # when the last response ended
        self._trans_began = 0.0  # when the command that opened the current transaction came
        self._unverified = False  # the upstream has not yet taken this session's login
        self._end_after_reply = False  # the error being sent ends the session
        self._learning: bytes | None = None  # a charset statement whose effect to keep
        self._last_raw = b""  # the command in flight, as the client sent it (to run it again
        self._last_msg: Message | None = None  # on the new writer when the old one refused)
        self._rerun = b""  # the command last run again (never twice)
        self._wait_limit = 0.0  # the wait_timeout the client set (0: none): its idle limit
        self._wait_timer: asyncio.TimerHandle | None = None
        self._step = "waiting for the upstream's greeting"  # what the login waits for
        self._queued: QueuedCommand | None = None  # (created the first time a command waits)
        self._handed: ServerConnection | None = None  # from the queue, for the slow path
        self._reserved = False  # the queue granted a slot to open a connection in
        self._move_pending: str | None = None  # move_to, once the connection is given back

    @property
    def database(self) -> str | None:
        return self.session.schema

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected_at = asyncio.get_running_loop().time()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if not self.tier.admit(self):
            self._fail(errors.too_many_clients(self.tier.config.limits.max_clients), seq=0)
            return
        # An app host that vanishes (power loss, partition) is noticed whether its socket is
        # idle (keepalive) or has our bytes unacknowledged (TCP_USER_TIMEOUT).
        set_keepalive(transport.get_extra_info("socket"), self.tier.config.limits.keepalive, True)
        # A timer, not a timeout inside the login coroutine: it holds even if that coroutine
        # is stuck or died.
        self._deadline = asyncio.get_running_loop().call_later(
            self.tier.config.limits.handshake_timeout, self._handshake_expired
        )
        self._spawn(self._handshake())

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            n = len(data)
            if (
                n > 4
                and self.state == READY
                and not self._reader.buf
                and unpack_u32(data)[0] == n - 4 < MAX_PAYLOAD  # (length; sequence id 0)
            ):
                try:  # the common case, one whole command packet (single_packet, inlined)
                    self._command(data, data[4], None)
                except Exception as exc:
                    self.crashed(exc)
                return
        else:
            try:
                data = tls.feed(data)
            except Exception as exc:
                self.crashed(exc)
                return
            if tls.failure is not None:
                log.info("client %s (%s): TLS failed: %s", self.id, self.peer, tls.failure)
                self._close()
                return
            if not data:
                return
        self._plain(data)

    def _plain(self, data: bytes) -> None:
        """What the client sent (decrypted if TLS)."""
        try:  # (free until something raises)
            state = self.state
            if state == READY and not self._reader.buf and single_packet(data):
                self._command(data, data[4] if len(data) > 4 else -1, None)  # the common case
                return
            if state == CLOSED:
                return  # lingering after an error: discard
            if state == INFILE:
                self._infile_data(data)
                return
            self._reader.feed(data)
            if state == READY:
                self._drain()
                return
            self._wake()  # a login or change-user may be waiting for this
            if state == BUSY and self._reader.pending > PIPELINE_LIMIT:
                self.pause_reading(PAUSE_PIPELINE)
        except Exception as exc:
            self.crashed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            if self.state == BUSY or self._reader.pending:
                log.info("client %s (%s) disconnected mid-command", self.id, self.peer)
            self._close()
        self._wake()

    def pause_writing(self) -> None:  # the client reads slower than the upstream sends
        self._write_blocked = True
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.backend is not None:
            self.backend.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- relay sink (called by the backend) ---------------------------------------------------

    def response_done(self) -> None:
        backend = self.backend
        assert backend is not None
        scanner = backend.scanner
        now = _monotonic()
        self.tier.stats.statement(
            self._command_byte, now - self._began, scanner.failed, scanner.fed
        )
        if scanner.state_changes or scanner.untracked:  # (before the idle timer is armed)
            self._track_state(backend)
        self._last_active = now
        if self._wait_limit:
            self._idle_from(now)  # (arms the client's own wait_timeout)
        if scanner.status & _IN_TRANS:
            if not self._trans_began:
                self._trans_began = self._began
        else:
            self._trans_began = 0.0
        if self._learning is not None:
            if not scanner.failed and not scanner.result_set:
                self.tier.charset_sets.learn(
                    self._learning, scanner.state_changes, backend.capabilities
                )
            self._learning = None
        if scanner.insert_id:
            self.last_insert_id = backend.last_insert_id = scanner.insert_id
        if self._current_statement is not None:
            command, stmt_id = self._current_statement
            self._current_statement = None
            if (
                command in _CURSOR_COMMANDS
                and scanner.status & _CURSOR_EXISTS
                and (not scanner.failed)
            ):
                self._cursors.add(stmt_id)
            else:
                self._cursors.discard(stmt_id)
        self.state = READY
        self._row_count = -1 if scanner.failed or scanner.result_set else scanner.affected_rows
        if scanner.warnings or scanner.failed:
            # Sticky: statements that use no table (and SHOW WARNINGS) leave them in place.
            backend.diagnostics = True
        if self._hold:
            self._hold -= 1
        if not self._must_keep(scanner.status, scanner.failed):
            if scanner.warnings or scanner.failed:
                # Its diagnostics live on this connection: keep it for the next statement.
                self._diagnostics_hold = asyncio.get_running_loop().call_later(
                    DIAGNOSTICS_HOLD_SECONDS, self._end_diagnostics_hold
                )
            else:
                self._release(now)
        if self._paused & PAUSE_PIPELINE:
            self.resume_reading(PAUSE_PIPELINE)
        if self._reader.buf:
            self._drain()

    # --- the write gate (PAUSE) -------------------------------------------------------------

    def _inside_work(self) -> bool:
        """Whether the client's next command continues work already started upstream (an
        open transaction, cursor or long data): such commands pass a closed gate."""
        backend = self.backend
        return backend is not None and bool(
            backend.scanner.status & _IN_TRANS or self._cursors or self._long_data
        )

    def has_upstream_work(self) -> bool:
        """Whether this session has work in flight upstream (what PAUSE waits for)."""
        if self.backend is None or self._gated:
            return False
        return self.state in (BUSY, INFILE) or self._inside_work()

    async def _wait_gate(self) -> None:
        """Wait while new work is held: the write gate (PAUSE), then failover buffering."""
        self._gated = True
        try:
            await self.tier.gate.wait()
            if self.tier.failover.buffering:
                await self.tier.failover.wait()
        finally:
            self._gated = False

    async def _after_gate(self, raw: bytes, command: int, msg: Message | None) -> None:
        try:
            await self._wait_gate()
        except errors.ClientError as exc:
            self._reply_error((msg.last_seq if msg is not None else 0) + 1, exc)
            return
        if self.state != CLOSED:
            self.state = READY
            began = self._began  # the wait at the gate is part of the statement's time
            self._command(raw, command, msg)
            self._began = began

    def kill_for_pause(self, drain_timeout: float) -> None:
        """Its transaction outlived the pause's drain timeout: roll it back by closing the
        connection. The client learns why at its next command, then the session closes
        (running that command outside its transaction would break the transaction)."""
        if self._inside_work():
            what = "your transaction was rolled back"
        else:  # a statement still running: the server may or may not have finished it
            what = "your statement was interrupted and may or may not have taken effect"
        self._end_work(
            f"{what}: work was paused for a switchover and it was still running after "
            f"pause.drain_timeout ({drain_timeout:g}s); check, then retry it"
        )

    def idle_in_transaction(self, now: float) -> float:
        """Seconds this session has sat idle holding an open transaction (0: it does not)."""
        if self.state != READY or not self._trans_began or self.backend is None:
            return 0.0
        return now - self._last_active

    def upkeep(self, now: float, idle_limit: float, time_limit: float) -> None:
        """The janitor's round (every second): the starvation guards."""
        if idle_limit or time_limit:
            self.bound_transaction(now, idle_limit, time_limit)

    def _idle_from(self, now: float) -> None:
        """The session is idle from `now`: a wait_timeout the client set starts counting."""
        self._last_active = now
        if self._wait_limit:
            if self._wait_timer is not None:
                self._wait_timer.cancel()
            self._wait_timer = asyncio.get_running_loop().call_later(
                self._wait_limit, self._wait_expired
            )

    def _wait_expired(self) -> None:
        """Idle for the wait_timeout the client set: end the session, as the server would
        have (drivers' "server has gone away" handling relies on it)."""
        self._wait_timer = None
        if self.state != READY or _monotonic() - self._last_active < self._wait_limit - 0.01:
            return  # busy, or active meanwhile: the end of its work arms the timer again
        log.info(
            "client %s (%s@%s): idle past its wait_timeout (%gs); closing",
            self.id,
            self.user,
            self.peer,
            self._wait_limit,
        )
        self._close()

    def bound_transaction(self, now: float, idle_limit: float, time_limit: float) -> None:
        """Starvation guards: a transaction idle past `pool.idle_transaction_timeout`, or
        open past `pool.max_transaction_time`, is rolled back so the connection serves
        others."""
        if not self._trans_began or self.backend is None or self._fatal is not None:
            return
        if time_limit and now - self._trans_began > time_limit:
            why = f"was open longer than pool.max_transaction_time ({time_limit:g}s)"
        elif idle_limit and self.idle_in_transaction(now) > idle_limit:
            why = f"sat idle longer than pool.idle_transaction_timeout ({idle_limit:g}s)"
        else:
            return
        log.warning(
            "client %s (%s@%s): its transaction %s; rolling it back",
            self.id,
            self.user,
            self.peer,
            why,
        )
        self._end_work(
            f"your transaction {why} and was rolled back so that others can use its "
            "connection; reconnect and retry the transaction"
        )

    def _end_work(self, message: str) -> None:
        """Close the held connection (rolling back what runs or is open there); the client
        is told `message` with 1927: now if it waits for an answer, else at its next command,
        and the session then ends."""
        self._fatal = errors.ClientError(errors.ErrorCode.CONNECTION_KILLED, message)
        backend = self.backend
        if backend is None:
            return
        if self.state in (BUSY, INFILE):
            # Stop the statement on the database too; upstream_lost then reports _fatal to
            # the waiting client.
            self.backend = None
            backend.detach()
            self.tier.abandon(backend)
            if backend.response_started:  # an ERR now would land inside the response
                self._close()
            else:
                self._fail(self._fatal, seq=self._reply_seq)
            return
        self.backend = None
        backend.detach()
        backend.abort()
        self.tier.pools.discard(backend)

    def server_hung(self, server: str) -> None:
        """`server` stopped answering its health probes: a command running there gets 1927
        now (the session goes on elsewhere unless it holds a transaction or pinned state
        there), and a connection held there is given up."""
        backend = self.backend
        if backend is None or backend.server_name != server:
            return
        if self.state in (BUSY, INFILE) and not self._gated:
            backend.lost_reason = f"{server} stopped answering"
            backend.abort()  # upstream_lost answers the client
            return
        self.leave_server(server, "stopped answering")

    def leave_server(self, server: str, why: str = "stopped being the primary") -> None:
        """`server` is no longer the writer (or stopped answering): give back a connection
        held there.

        In a switchover the gate is closed and drained, so nothing runs on it; a writer check
        or an orchestrator's retarget may come at any time. A transaction open there, or a
        pinned session's state, lives only on that connection and cannot follow: the
        connection is closed (rolling the transaction back), the client is told at its next
        command, and the session ends."""
        backend = self.backend
        if backend is None or backend.server_name != server or backend.pool_key is None:
            return
        if self.state in (BUSY, INFILE) and not self._gated:
            return  # still running (a drain that timed out is killing it): it ends by itself
        if self._diagnostics_hold is not None:
            self._diagnostics_hold.cancel()
            self._diagnostics_hold = None
        self._hold = 0
        if self.pinned or self._inside_work():
            if self.pinned:
                what = f"this session was pinned ({self.pinned}) to a connection on {server}"
            else:
                what = f"your open transaction on {server} was rolled back"
            self._fatal = errors.ClientError(
                errors.ErrorCode.CONNECTION_KILLED,
                f"{what}, and {server} {why}; its state cannot move: "
                "reconnect (and retry the transaction)",
            )
            self.backend = None
            backend.detach()
            self.tier.pools.discard(backend)
            return
        self._release()

    def _end_diagnostics_hold(self) -> None:
        self._diagnostics_hold = None
        backend = self.backend
        if (
            self.state == READY
            and backend is not None
            and not self._must_keep(backend.scanner.status, False)
        ):
            self._release()

    def _must_keep(self, status: int, failed: bool) -> bool:
        """Whether the session must keep its connection after a response."""
        if self._hold or self.pinned or status & _KEEP_STATUS or self._long_data or self._cursors:
            return True
        # An ERR does not say whether a transaction is open: with autocommit off, a failed
        # statement may have started one. Keep the connection until a reply says otherwise.
        return failed and self.session.variables.get("autocommit") == "OFF"

    def refused(self, response: bytes) -> bool:
        """The writer answered a command with 1290 (read-only: it is being demoted). The
        command did not run, so outside any transaction it waits, with failover buffering,
        for the new writer and runs there instead of failing (Vitess buffers on 1290 too)."""
        backend = self.backend
        if (
            backend is None
            or len(response) < 7
            or response[4] != 0xFF
            or (response[5] | response[6] << 8) != READ_ONLY_ERROR
            or not self._may_run_again()
            or not self.tier.failover.writer_lost(f"{backend.server_name} answered read-only")
        ):
            return False
        self.backend = None
        backend.detach()
        self.tier.pools.release(backend)  # clean: the command did not run
        self._run_again()
        return True

    def _may_run_again(self) -> bool:
        """Whether the command in flight may run on another connection: nothing of the
        session lives only on this one (no transaction, pin, cursor, long data, pending SET
        TRANSACTION), and it has not been run again once already."""
        return not (
            self._trans_began
            or self.pinned
            or self._cursors
            or self._long_data
            or self._hold
            or self._fatal is not None
            or self.session.variables.get("autocommit") == "OFF"
            or self._rerun is self._last_raw
        )

    def _run_again(self) -> None:
        """Dispatch the command in flight once more (it never ran where it went)."""
        self.state = READY
        began = self._began
        raw = self._rerun = self._last_raw
        self._command(raw, raw[4] if len(raw) > 4 else -1, self._last_msg)
        self._began = began  # the wait for the new writer is part of the statement's time

    def infile_requested(self) -> None:
        self.state = INFILE
        self._infile = InfileTracker()
        if self._reader.pending:  # bytes the client sent before we asked: they are file data
            self._infile_data(self._reader.take())

    def upstream_lost(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        backend = self.backend
        assert backend is not None
        self.backend = None
        self.tier.pools.discard(backend)
        name = backend.server_name
        in_transaction = bool(backend.scanner.status & Status.IN_TRANS)
        answerable = self.state == BUSY and not backend.response_started
        if self.pinned or in_transaction or not answerable or self._fatal is not None:
            log.warning(
                "client %s: upstream %s lost (%s); its session state is gone, closing",
                self.id,
                name,
                reason,
            )
            if answerable:
                self._fail(self._fatal or errors.upstream_lost(name), seq=self._reply_seq)
            else:
                self._close()
            return
        if backend.reset and self._may_run_again():
            # The server never read this command (it was gone when it arrived): run it
            # again, on the new writer once failover finds one, or on another remote tier.
            log.info(
                "client %s: %s was gone before it read the command; running it again", self.id, name
            )
            if self.tier.config.tier == "remote":
                self.tier.failover.writer_lost(f"{name}: {reason}")
            else:
                self.tier.upstream.mark_down(name)
                other = self.tier.upstream.pick(exclude={name})
                if other is not None and self.pool_key is not None:
                    self.pool_key = self.pool_key._replace(server=other.name)
            self._run_again()
            return
        # Nothing of this client's session lived only on that connection: report the failed
        # command and carry on; the next command gets another connection.
        log.warning("client %s: upstream %s lost during a command (%s)", self.id, name, reason)
        self._hold = 0
        self._reply_error(self._reply_seq, errors.upstream_lost(name))

    def pause_reading(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        was = self._paused
        self._paused &= ~reason
        if was and not self._paused and self.transport is not None and self.state != CLOSED:
            self.transport.resume_reading()

    # --- command loop -----------------------------------------------------------------------

    def _drain(self) -> None:
        """Run buffered commands while the session is free to."""
        while self.state == READY:
            try:
                msg = self._reader.next_message()
            except PacketTooLarge as exc:
                log.warning("client %s (%s): %s; disconnecting", self.id, self.peer, exc)
                self._fail(errors.packet_too_large(exc.size, exc.limit), seq=1, linger=True)
                return
            if msg is None:
                return
            self._command(msg.raw, msg.payload[0] if msg.payload else -1, msg)

    def _command(self, raw: bytes, command: int, msg: Message | None) -> None:
        if raw[3] != 0:
            self._protocol_violation(f"command packet with sequence id {raw[3]} (expected 0)")
            return
        if command < 0:
            self._protocol_violation("empty command packet")
            return
        mode = RESPONSE_MODES.get(command)
        if mode is None or command in (_RESET_CONNECTION, _PROCESS_KILL):
            self._special_command(command, msg.payload if msg is not None else raw[4:])
            return
        if command == _QUIT:
            self._close()
            return
        self._began = _monotonic()
        self._command_byte = command
        self._last_raw = raw
        self._last_msg = msg
        self._reply_seq = (msg.last_seq if msg is not None else 0) + 1
        self.tier.stats.bytes_in += len(raw)
        if self._fatal is not None:  # its transaction was killed by a pause
            self._fail(self._fatal, seq=(msg.last_seq if msg is not None else 0) + 1)
            return
        if command == _PING and self.backend is None:
            # Is sluice there? It is: health probes (a local tier's of its remote tiers, a
            # driver's pre-ping) must not wait for the pool or a writer.
            self._reply(frame(self._reply_seq, ok_payload(idle_status(self.session))))
            return
        if self.tier.hold_new_work and not self._inside_work():
            self.state = BUSY
            self._spawn(self._after_gate(raw, command, msg))
            return
        if self._diagnostics_hold is not None:
            self._diagnostics_hold.cancel()
            self._diagnostics_hold = None
        flags = 0
        if command == _QUERY:
            sql = raw[5:] if msg is None else msg.payload[1:]
            reason, flags = scan_statement(sql)
            if reason is not None:
                self._pin(reason)
            if flags:
                if flags & KILL and self._kill_statement(sql, msg):
                    return
                if flags & HOLD_NEXT:
                    self._hold = 2  # this statement and the transaction it sets up
            elif (
                len(sql) > 10
                and sql[0] in SET_HEADS
                and sql[2] in SET_THIRDS
                and (self._charset_set(sql) or self._tracking_setup(sql))
            ):
                return
        elif command in _STATEMENT_COMMANDS:
            self._statement_command(raw, command, mode, msg)
            return
        elif command == _SET_OPTION:
            # Multi-statement mode belongs to the server connection: it must not follow the
            # connection to clients that never asked for it.
            self._pin(PIN_SET_OPTION)
        backend = self.backend
        if backend is None:
            previous = self._previous
            if (
                flags & NEEDS_PREVIOUS
                and previous is not None
                and previous.last_session == self.id
                and self.tier.pools.take_specific(previous)
            ):
                backend = previous  # still untouched by others: its context is ours
            elif flags & NEEDS_PREVIOUS and self._answer_diagnostics(
                raw[5:] if msg is None else msg.payload[1:]
            ):
                return
            else:
                backend = self.tier.pools.take_idle_exact(
                    self.pool_key, self.session, self.id, self._began
                )
            if backend is not None:
                self._attach(backend)
        if backend is None:
            self.state = BUSY
            if not self._queue(mode, flags):
                self._spawn(self._acquire_and_run(raw, mode, msg, flags))
            return
        if flags & NEEDS_INSERT_ID and backend.last_insert_id != self.last_insert_id:
            self.state = BUSY
            self._spawn(self._acquire_and_run(raw, mode, msg, flags))
            return
        self._run(backend, raw, mode, msg)

    # --- the queued path: waiting for a pooled connection without a task --------------------

    def _queue(self, mode: int, flags: int) -> bool:
        """Queue the command in flight for a pooled connection when the pool is full and
        nothing unusual goes on (no failover, its server up); False: take the slow path,
        which opens, syncs, follows the writer or waits for one."""
        if mode == NO_RESPONSE:
            return False
        tier = self.tier
        key = self.pool_key
        assert key is not None
        if tier.remote:
            current = tier.upstream.current
            if current is None or key.server != current.name or tier.failover.buffering:
                return False
        elif key.server in tier.upstream.down:
            return False
        queued = self._queued
        if queued is None:
            queued = self._queued = QueuedCommand(self)
        queued.mode = mode
        queued.flags = flags
        return tier.pools.queue_when_full(
            queued, key, None if self.session.schema is not None else _without_schema, self._began
        )

    def _served(self, conn: ServerConnection) -> None:
        """The pool hands over a connection a release freed: run the command on it now if it
        is in this session's state, else bring it in line on the slow path."""
        self._handed = conn
        try:
            queued = self._queued
            assert queued is not None
            tier = self.tier
            if (
                conn.state == self.session
                and (not conn.diagnostics or conn.last_session == self.id)
                and not (
                    queued.flags & NEEDS_INSERT_ID and conn.last_insert_id != self.last_insert_id
                )
                and not tier.hold_new_work
                and (
                    not tier.remote
                    or conn.pool_key.server == getattr(tier.upstream.current, "name", None)
                )
            ):
                self._handed = None
                tier.stats.pool_wait.observe(conn.last_used - queued.since)
                self._attach(conn)
                self._run(conn, self._last_raw, queued.mode, self._last_msg)
                return
            self._spawn(
                self._acquire_and_run(self._last_raw, queued.mode, self._last_msg, queued.flags)
            )
        except Exception as exc:
            self.crashed(exc)

    def _granted(self) -> None:
        """The pool reserved a slot for this session: open a connection in it."""
        queued = self._queued
        assert queued is not None
        self._reserved = True
        self.pool_key = queued.key
        self._spawn(
            self._acquire_and_run(self._last_raw, queued.mode, self._last_msg, queued.flags)
        )

    def _queue_failed(self, exc: Exception) -> None:
        queued = self._queued
        assert queued is not None
        if isinstance(exc, ServerRetired):  # the writer moved while we waited: follow it
            self._spawn(
                self._acquire_and_run(self._last_raw, queued.mode, self._last_msg, queued.flags)
            )
        elif isinstance(exc, errors.ClientError):
            self._reply_error(self._reply_seq, exc)
        else:
            self.crashed(exc)

    def _run(self, backend: ServerConnection, raw: bytes, mode: int, msg: Message | None) -> None:
        if mode == NO_RESPONSE:
            backend.send_raw(raw)
            return
        self.state = BUSY
        backend.send_command(raw, mode)

    async def _acquire_and_run(
        self, raw: bytes, mode: int, msg: Message | None, flags: int = 0
    ) -> None:
        seq = (msg.last_seq if msg else 0) + 1
        backend = self.backend
        acquired = None
        try:
            if backend is None:
                backend = acquired = await self._acquire()
            if flags & NEEDS_INSERT_ID and backend.last_insert_id != self.last_insert_id:
                backend.detach()
                await backend.query(f"DO LAST_INSERT_ID({self.last_insert_id})")
                backend.last_insert_id = self.last_insert_id
        except errors.ClientError as exc:
            self._reply_error(seq, exc)
            return
        except UpstreamError as exc:
            if acquired is not None:
                self.tier.pools.release(acquired)
            self._reply(frame(seq, exc.raw))
            return
        except BaseException:
            if acquired is not None:
                acquired.abort()
                self.tier.pools.discard(acquired)
            raise
        if self.state == CLOSED:
            if acquired is not None:
                self.tier.pools.release(acquired)
            return
        self._attach(backend)
        self._run(backend, raw, mode, msg)
        if mode == NO_RESPONSE:
            self._reply(b"")

    def _reply_error(self, seq: int, error: errors.ClientError) -> None:
        """Answer a command with one of sluice's own errors (counted for /metrics)."""
        self.tier.stats.sluice_error(error.code)
        self._reply(frame(seq, error.payload()))

    def _reply(self, data: bytes) -> None:
        """Answer a command without the upstream and get ready for the next one."""
        if self.state == CLOSED:
            return
        if data:
            self._send(data)
        if self._end_after_reply:
            self._close()
            return
        if self._wait_limit:
            self._idle_from(_monotonic())
        self.state = READY
        if self._reader.pending:
            self._drain()

    # --- prepared statements ------------------------------------------------------------------

    def _statement_command(self, raw: bytes, command: int, mode: int, msg: Message | None) -> None:
        payload = msg.payload if msg is not None else raw[4:]
        if command == _STMT_PREPARE:
            reason = pin_reason(payload[1:])
            if reason is not None:
                self._pin(reason)
            self.state = BUSY
            self._spawn(self._prepare(bytes(payload[1:]), msg.last_seq if msg is not None else 0))
            return
        if len(payload) < 5:
            self._protocol_violation(f"statement command 0x{command:02x} without an id")
            return
        stmt_id = read_u32(payload, 1)
        stmt = self.statements.get(stmt_id)
        if command == _STMT_CLOSE:
            self.statements.pop(stmt_id, None)  # the connection keeps it for other clients
            if stmt_id in self._cursors:
                self._cursors.discard(stmt_id)
                if self.backend is not None and not self._must_keep(0, False):
                    self._release()
            return
        if stmt is None:
            if mode != NO_RESPONSE:
                self._send(frame(1, errors.unknown_statement(stmt_id).payload()))
            return
        if command == _STMT_RESET and self.backend is None:
            # Without a held connection there is no long data or cursor to reset.
            self._send(frame(1, ok_payload(Status.AUTOCOMMIT)))
            return
        backend = self.backend
        if backend is None:
            backend = self.tier.pools.take_idle_exact(self.pool_key, self.session, self.id)
            if backend is not None and stmt.sql not in backend.statements:
                self.tier.pools.release(backend)
                backend = None
            if backend is not None:
                self._attach(backend)
        if backend is not None and stmt.sql in backend.statements:
            self._run_statement(backend, raw, payload, command, mode, msg, stmt_id, stmt)
            return
        self.state = BUSY
        self._spawn(self._statement_elsewhere(raw, payload, command, mode, msg, stmt_id, stmt))

    def _run_statement(
        self,
        backend: ServerConnection,
        raw: bytes,
        payload: bytes,
        command: int,
        mode: int,
        msg: Message | None,
        stmt_id: int,
        stmt: ClientStatement,
    ) -> None:
        server = backend.statements[stmt.sql]
        backend.statements.move_to_end(stmt.sql)
        if command == _STMT_EXECUTE:
            try:
                data = bind_execute(raw, payload, stmt, server)
            except ProtocolError as exc:
                self._protocol_violation(str(exc))
                return
        else:
            data = with_statement_id(raw, server.id)
        if command == _STMT_SEND_LONG_DATA:
            self._long_data = True
        elif command != _STMT_FETCH:
            self._long_data = False  # execute and reset consume or drop it
        if command in _CURSOR_COMMANDS or command == _STMT_RESET:
            if command != _STMT_EXECUTE or wants_cursor(payload):
                self._current_statement = (command, stmt_id)
            else:
                self._current_statement = (_STMT_RESET, stmt_id)
        self._run(backend, data, mode, msg)

    async def _statement_elsewhere(
        self,
        raw: bytes,
        payload: bytes,
        command: int,
        mode: int,
        msg: Message | None,
        stmt_id: int,
        stmt: ClientStatement,
    ) -> None:
        """Run a statement command on a connection where the statement is not prepared yet."""
        seq = (msg.last_seq if msg is not None else 0) + 1
        prepared = await self._prepare_on_connection(stmt.sql, seq)
        if prepared is None:
            return
        backend, server, messages = prepared
        if server is None:  # the statement no longer prepares (e.g. its table is gone)
            if not self._must_keep(backend.scanner.status, True):
                self._release()
            self._reply(frame(seq, messages[0].payload))
            return
        self._run_statement(backend, raw, payload, command, mode, msg, stmt_id, stmt)
        if mode == NO_RESPONSE:
            self._reply(b"")

    async def _prepare_on_connection(
        self, sql: bytes, seq: int
    ) -> tuple[ServerConnection, ServerStatement | None, list[Message]] | None:
        """Prepare `sql` on the held connection, or on one acquired for it, and attach it.

        Returns None when the client has been answered (an error) or is gone."""
        backend = self.backend
        acquired = None
        try:
            if backend is None:
                backend = acquired = await self._acquire()
            backend.detach()
            server, messages = await backend.prepare(sql)
        except errors.ClientError as exc:
            self._reply_error(seq, exc)
            return None
        except UpstreamError as exc:
            if acquired is not None:
                self.tier.pools.release(acquired)
            self._reply(frame(seq, exc.raw))
            return None
        except BaseException as exc:
            if acquired is not None:  # held ones are dealt with by _close / upstream_lost
                acquired.abort()
                self.tier.pools.discard(acquired)
            if isinstance(exc, ConnectionError | ProtocolError):
                log.warning("client %s: preparing a statement upstream failed: %s", self.id, exc)
                self._close()
                return None
            raise
        if self.state == CLOSED:
            if acquired is not None:  # a held one was already dealt with by _close
                self.tier.pools.release(acquired)
            return None
        self._attach(backend)
        return backend, server, messages

    async def _prepare(self, sql: bytes, last_seq: int) -> None:
        """COM_STMT_PREPARE: prepare on a connection, answer with a client statement id."""
        prepared = await self._prepare_on_connection(sql, last_seq + 1)
        if prepared is None:
            return
        backend, server, messages = prepared
        out = []
        if server is None:
            out.append(frame(messages[0].seq, messages[0].payload))
        else:
            self._next_statement += 1
            stmt_id = self._next_statement
            self.statements[stmt_id] = ClientStatement(sql, server.params)
            first = messages[0].payload
            out.append(frame(messages[0].seq, first[:1] + u32(stmt_id) + first[5:]))
            out += (frame(m.seq, m.payload) for m in messages[1:])
        self.state = READY
        if not self._must_keep(backend.scanner.status, server is None):
            self._release()
        self._reply(b"".join(out))

    def _infile_data(self, data: bytes) -> None:
        tracker = self._infile
        assert tracker is not None and self.backend is not None
        end = tracker.feed(data)
        if end < 0:
            self.backend.send_raw(data)
            return
        self.backend.send_raw(data[:end] if end < len(data) else data)
        self._infile = None
        self.state = BUSY  # the server now answers the upload
        self._reply_seq = tracker.last_seq + 1
        if end < len(data):
            self._reader.feed(data[end:])

    # --- connections ------------------------------------------------------------------------

    def _attach(self, backend: ServerConnection) -> None:
        self.backend = backend
        self._trans_began = 0.0
        self._unverified = False  # a connection in this session's state: the login holds
        backend.last_session = self.id
        backend.attach(self, self.transport, self.capabilities)  # type: ignore[arg-type]
        if self._write_blocked:
            backend.pause_reading()

    def _release(self, now: float = 0.0) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            self._previous = backend
            backend.detach()
            self.tier.pools.release(backend, now)
            if self._move_pending is not None and self.pool_key is not None:
                self.pool_key = self.pool_key._replace(server=self._move_pending)
                self._move_pending = None

    def _pin(self, reason: str) -> None:
        if self.pinned is None:
            self.pinned = reason
            self.tier.pins[reason] = self.tier.pins.get(reason, 0) + 1
            pins.log(
                logging.INFO,
                reason,
                "client %s (%s@%s) pinned to its upstream connection: %s",
                self.id,
                self.user,
                self.peer,
                reason,
            )

    def _track_state(self, backend: ServerConnection) -> None:
        """Take the state changes the server reported into the session (and the connection)."""
        scanner = backend.scanner
        described = self.session.apply(scanner.state_changes, backend.capabilities)
        if scanner.untracked or not described:
            self._pin(PIN_UNTRACKED)
        backend.state = self.session.copy()
        self._wait_limit = wait_limit(self.session)

    async def _acquire(self, gated: bool = True, wait: bool = True) -> ServerConnection:
        """A pooled connection whose session state matches this client's (without `wait`:
        one free right now, or None).

        If the session's upstream refuses connections, a local tier moves the session to
        another of its remote tiers (its state replays there like anywhere else)."""
        tier = self.tier
        upstream = tier.upstream
        remote = tier.remote
        tried: set[str] = set()
        # A connection (or slot) the queue handed over goes to _acquire_here first: what
        # follows the wait below checks that it still fits.
        handed = self._handed is not None or self._reserved
        while True:
            assert self.pool_key is not None
            if handed:
                handed = False  # (it was checked when it was handed over)
            elif await self._choose_server(gated, tried):
                continue
            try:
                conn = await self._acquire_here(wait)
            except ServerRetired:
                continue  # the writer moved while we waited: follow it
            except errors.UpstreamUnreachable as exc:
                assert self.pool_key is not None
                if remote and gated and tier.failover.writer_lost(f"{exc.server}: {exc.reason}"):
                    continue  # wait for a writer (the loop's first step)
                upstream.mark_down(exc.server)
                tried.add(exc.server)
                other = upstream.pick(exclude=tried)
                if other is None:
                    raise
                self.pool_key = self.pool_key._replace(server=other.name)
                continue
            except (UpstreamError, errors.ClientError) as exc:
                if self._unverified and refused_login(exc):
                    # The upstream refuses this login: end the session as a login refused
                    # at once would have (the error is its last answer).
                    self.tier.logins.forget(self.pool_key.server, self.user, self.session.schema)
                    self._end_after_reply = True
                raise
            if conn is None:
                return None  # type: ignore[return-value]  # (only without `wait`)
            current = upstream.current if remote else None
            if remote and (current is None or conn.pool_key.server != current.name):
                self.tier.pools.release(conn)  # the writer moved while we waited: follow it
                continue
            if not gated or not self.tier.gate.closed or self._inside_work():
                return conn
            # A pause began while this command waited for a connection: it is new work.
            self.tier.pools.release(conn)
            await self._wait_gate()

    def move_to(self, server: str) -> None:
        """Send this session's next work to `server` (a local tier spreading its sessions
        over a remote tier that joined), unless it holds a connection or pinned state."""
        if self.pinned is not None or self.pool_key is None:
            return
        if (
            self.state == READY
            and self.backend is None
            and self._handed is None
            and not self._reserved
        ):
            self.pool_key = self.pool_key._replace(server=server)
        else:
            self._move_pending = server  # when it next gives its connection back

    async def _choose_server(self, gated: bool, tried: set[str]) -> bool:
        """Before acquiring: wait while there is no writer, follow a moved writer, or leave
        a remote tier found down. True: look again (a writer was found meanwhile)."""
        tier = self.tier
        upstream = tier.upstream
        assert self.pool_key is not None
        if tier.remote and gated and tier.failover.buffering and not self._inside_work():
            await self._wait_gate()  # no writer for now: new work waits for one
        if tier.remote and self.pool_key.server != getattr(upstream.current, "name", None):
            # The writer moved (switchover) or is unknown: follow it, or say why not.
            if upstream.current is None:
                problem = upstream.writer_problem or "no writer is known"
                if gated and tier.failover.writer_lost(problem):
                    return True
                raise errors.no_writer(problem)
            self.pool_key = self.pool_key._replace(server=upstream.current.name)
        elif not tier.remote and tier.server_is_down(self.pool_key.server):
            # A remote tier stopped answering: this session moves to another.
            other = upstream.pick(exclude={self.pool_key.server, *tried})
            if other is not None:
                self.pool_key = self.pool_key._replace(server=other.name)
        return False

    async def _acquire_here(self, wait: bool = True) -> ServerConnection | None:
        pools = self.tier.pools
        assert self.pool_key is not None
        for _ in range(3):
            began = _monotonic()
            conn = self._handed
            if conn is not None:  # from the queue (see _served)
                self._handed = None
                began = self._began
            else:
                usable = None if self.session.schema is not None else _without_schema
                reserved, self._reserved = self._reserved, False
                conn = await pools.acquire(
                    self.pool_key, self._open, self._matches, usable, wait=wait, reserved=reserved
                )
                if conn is None:
                    return None
            self.tier.stats.pool_wait.observe(_monotonic() - began)
            try:
                if await self._sync(conn):
                    self.tier.logins.remember(conn.pool_key.server, self.user, self.session.schema)
                    return conn
            except UpstreamError as exc:
                pools.discard(conn)
                if exc.err.code in LOGIN_REFUSALS:  # no such database, or no access to it
                    raise
                self._pin(PIN_CHANGE_FAILED)
                raise errors.ClientError(
                    errors.ErrorCode.UNKNOWN_ERROR,
                    f"could not restore this session's state on a pooled connection "
                    f"({exc.err}); reconnect to start from a clean session",
                ) from exc
            except BaseException:
                pools.discard(conn)
                raise
            pools.discard(conn)  # cannot be brought in line (a schema cannot be unselected)
        raise errors.ClientError(
            errors.ErrorCode.UNKNOWN_ERROR,
            "could not find or open a pooled connection matching this session; retry",
        )

    def _matches(self, conn: ServerConnection) -> bool:
        return conn.state == self.session and (not conn.diagnostics or conn.last_session == self.id)

    async def _sync(self, conn: ServerConnection) -> bool:
        """Bring the connection's state in line with the session's; False if impossible."""
        if conn.diagnostics and conn.last_session != self.id:
            # Another client's warnings or error would answer this client's SHOW WARNINGS.
            await conn.query(CLEAR_DIAGNOSTICS)
            conn.diagnostics = False
        want = self.session
        have = conn.state
        if have == want:
            return True
        if want.schema is None and have.schema is not None:
            return False
        baseline = self.tier.pools.baselines.get(conn.pool_key, {})
        statement, schema = sync_statements(want, have, baseline)
        if schema is not None:
            await conn.init_db(schema)
        if statement is not None:
            await conn.query(statement)
        conn.state = want.copy()
        return True

    async def _open(self, key: PoolKey) -> ServerConnection:
        """Open a pooled connection for this client's pool (the pool's opener)."""
        assert self.credential is not None
        return await self.tier.upstream.open_pooled(
            self.credential,
            key,
            client_capabilities=self.capabilities,
            database=self.session.schema,
            max_packet=self.tier.config.limits.max_packet_size,
            baselines=self.tier.pools.baselines,
        )

    # --- commands sluice answers itself -----------------------------------------------------

    def _charset_set(self, sql: bytes) -> bool:
        """SET NAMES & co.: answered here, for a session holding no connection, once a server
        has shown what the statement does; else it runs upstream, which shows it."""
        key = charset_set_key(sql)
        if key is None:
            return False
        effect = self.tier.charset_sets.get(key) if self.backend is None else None
        if effect is None:
            self._learning = key
            return False
        self.session.apply_variables(effect.variables)
        self._row_count = 0
        self._previous = None  # its ROW_COUNT() and warnings are no longer this session's
        now = _monotonic()
        self.tier.stats.statement(Command.QUERY, now - self._began, False, 0)
        self._idle_from(now)
        tracking = bool(self.capabilities & Capability.SESSION_TRACK)
        self._reply(frame(self._reply_seq, charset_set_ok(effect, self.session, tracking)))
        return True

    def _tracking_setup(self, sql: bytes) -> bool:
        """A local tier's new pooled connection asks for session tracking: a remote tier's
        own connections always report every change, so it is acknowledged here, without
        taking a connection of the pool."""
        if not self.tier.remote or self.backend is not None or sql != _TRACKING_SETUP:
            return False
        self._row_count = 0
        self._previous = None
        now = _monotonic()
        self.tier.stats.statement(Command.QUERY, now - self._began, False, 0)
        self._idle_from(now)
        self._reply(frame(self._reply_seq, ok_payload(idle_status(self.session))))
        return True

    def _answer_diagnostics(self, sql: bytes) -> bool:
        """Answer SHOW WARNINGS & co. for a client that holds no connection.

        Holding none means its previous statement left no warnings or errors (it would have
        kept its connection), so the answer is known here; the connection a pool would hand
        out carries someone else's diagnostics."""
        query = diagnostic_query(sql)
        if query is None:
            return False
        kind, text = query
        if kind == "list":
            columns = [
                ("Level", TYPE_VAR_STRING),
                ("Code", TYPE_LONGLONG),
                ("Message", TYPE_VAR_STRING),
            ]
            rows: list[list[bytes | None]] = []
        elif kind == "count":
            name = "warning_count" if text.lower() == b"warnings" else "error_count"
            columns = [(f"@@session.{name}", TYPE_LONGLONG)]
            rows = [[b"0"]]
        elif kind == "var":
            columns = [(text.decode(), TYPE_LONGLONG)]
            rows = [[b"0"]]
        else:
            columns = [(text.decode(), TYPE_LONGLONG)]
            rows = [[str(self._row_count).encode()]]
        status = 0 if self.session.variables.get("autocommit") == "OFF" else Status.AUTOCOMMIT
        payloads = text_result(
            columns, rows, status, bool(self.capabilities & Capability.DEPRECATE_EOF)
        )
        self._send(b"".join(frame(seq, p) for seq, p in enumerate(payloads, start=1)))
        self._row_count = -1
        return True

    def _kill_statement(self, sql: bytes, msg: Message | None) -> bool:
        """KILL [CONNECTION|QUERY] n, where n is a sluice client id (from the handshake), is
        carried out; any other KILL refused. False: not a KILL after all."""
        seq = (msg.last_seq if msg else 0) + 1
        parsed = parse_kill(sql)
        if parsed is None:
            if not has_kill_statement(sql):
                return False  # (a `; kill` inside a string literal, say)
            # On the database it would name a server thread, any of this user's: maybe
            # another client's pooled connection.
            self._reply_error(seq, errors.kill_not_alone())
            return True
        query_only, target = parsed
        self._start_kill(target, query_only, seq)
        return True

    def _start_kill(self, target_id: int, query_only: bool, seq: int) -> None:
        self.state = BUSY
        self._spawn(self._kill(target_id, query_only, seq))

    async def _kill(self, target_id: int, query_only: bool, seq: int) -> None:
        """Stop another session's running statement (and, unless QUERY, the session too).

        The id is the one sluice gave the client in its handshake, or the server thread id
        of a connection a session holds right now (what CONNECTION_ID() showed it). Like the
        server: only sessions of one's own user; the statement is killed on the database
        through one of this client's pooled connections."""
        target = self.tier.sessions.get(target_id) or self.tier.session_on_thread(target_id)
        if target is None:
            self._kill_idle_thread(target_id, query_only, seq)
            return
        if target.user != self.user:
            self._reply_error(seq, errors.not_thread_owner(target_id))
            return
        running = target.backend if target.state in (BUSY, INFILE) else None
        if running is not None and target is not self:
            verb = "KILL QUERY" if query_only else "KILL"
            try:
                await self._run_own(f"{verb} {running.thread_id}")
            except errors.ClientError as exc:
                self._reply_error(seq, exc)
                return
            except UpstreamError as exc:
                if exc.err.code != 1094:  # already gone: fine
                    self._reply(frame(seq, exc.raw))
                    return
        if not query_only:
            log.info("client %s killed client %s", self.id, target_id)
            target.close()
            if target is self:
                return
        self._reply(frame(seq, ok_payload(Status.AUTOCOMMIT)))

    def _kill_idle_thread(self, thread_id: int, query_only: bool, seq: int) -> None:
        """KILL of a server thread id that is an idle pooled connection (a client saw it in
        SHOW PROCESSLIST, where its own statement ran): that connection closes, so the
        process list no longer shows it, and unless QUERY so does the session that used it
        last, whose connection it was as far as its client knows."""
        conn = self.tier.pools.idle_on_thread(thread_id)
        if conn is None:
            self._reply_error(seq, errors.unknown_thread(thread_id))
            return
        if conn.pool_key.user != self.user:
            self._reply_error(seq, errors.not_thread_owner(thread_id))
            return
        if not query_only:
            self.tier.pools.close_idle_connection(conn)
            owner = self.tier.sessions.get(conn.last_session)
            if owner is not None and owner.user == self.user and owner.backend is None:
                log.info("client %s killed client %s (thread %s)", self.id, owner.id, thread_id)
                owner.close()
                if owner is self:
                    return
        self._reply(frame(seq, ok_payload(Status.AUTOCOMMIT)))

    async def _run_own(self, sql: str) -> None:
        """Run a statement of sluice's for this client on a pooled connection of its own."""
        backend = self.backend
        if backend is not None:
            backend.detach()
            try:
                await backend.query(sql)
            finally:
                if self.backend is backend:
                    backend.attach(self, self.transport, self.capabilities)  # type: ignore[arg-type]
            return
        backend = await self._acquire()
        try:
            await backend.query(sql)
        except UpstreamError:
            self.tier.pools.release(backend)
            raise
        except BaseException:
            backend.abort()
            self.tier.pools.discard(backend)
            raise
        self.tier.pools.release(backend)

    def _special_command(self, command: int, payload: bytes) -> None:
        if command == Command.PROCESS_KILL and len(payload) >= 5:
            self._start_kill(read_u32(payload, 1), False, 1)
            return
        if command == Command.CHANGE_USER:
            self.state = BUSY
            self._spawn(self._change_user(payload))
        elif command == Command.RESET_CONNECTION:
            self._reset_session(self.session.schema)
            self._send(frame(1, ok_payload(Status.AUTOCOMMIT)))
        else:
            log.info("client %s: unsupported command 0x%02x refused", self.id, command)
            self._send(frame(1, errors.unsupported_command(command).payload()))

    def _reset_session(self, schema: str | None) -> None:
        """Back to a fresh login's state: drop a connection that held state of this session."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.detach()
            if self.pinned or backend.scanner.status & _KEEP_STATUS or self._long_data:
                self.tier.pools.discard(backend)  # its state dies with it
            else:
                self.tier.pools.release(backend)
        self.session = SessionState(schema)
        self._wait_limit = 0.0
        self.pinned = None
        self._hold = 0
        self.statements.clear()
        self._cursors.clear()
        self._long_data = False

    # --- connection phase -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._send(data)

    async def next_message(self) -> Message:
        return await self._next_message()

    @property
    def secure(self) -> bool:
        """TLS, or a unix socket: the password may travel in clear."""
        return self._tls is not None or self.peer == "unix"

    @property
    def source(self) -> str:
        """The client's address without its port (what a MySQL account's host matches)."""
        return "localhost" if self.peer == "unix" else self.peer.rsplit(":", 1)[0]

    def answered_late(self) -> None:
        """A failed login's answer waits (auth.failure_delay): not a handshake timeout."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def start_tls(self, context: ssl.SSLContext) -> None:
        """The client sent SSLRequest: from now on its bytes are TLS. What arrived with the
        SSLRequest (often the ClientHello) is TLS already."""
        raw = self.transport
        assert raw is not None
        self._tls = ServerTLS(context, raw)
        self.transport = TLSTransport(raw, self._tls)
        early = self._reader.take()
        if early:
            self._plain(self._tls.feed(early))

    async def _next_message(self) -> Message:
        while True:
            msg = self._reader.next_message()
            if msg is not None:
                return msg
            if self.state == CLOSED:
                raise ConnectionError("client went away")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _handshake(self) -> None:
        try:
            await self._authenticate()
        except errors.ClientError as exc:
            log.info("client %s (%s) refused: %s", self.id, self.peer, exc.message)
            self._fail(exc, seq=self._reply_seq)
        except UpstreamError as exc:  # e.g. unknown database: the server's own answer
            log.info("client %s (%s): upstream refused login: %s", self.id, self.peer, exc.err)
            self._send(frame(self._reply_seq, exc.raw))
            self._close()
        except PacketTooLarge as exc:
            log.warning("client %s (%s): bad handshake: %s", self.id, self.peer, exc)
            self._fail(errors.handshake_failed(f"handshake {exc}"), seq=self._reply_seq)
        except ProtocolError as exc:
            log.warning("client %s (%s): bad handshake: %s", self.id, self.peer, exc)
            self._fail(errors.handshake_failed(str(exc)), seq=self._reply_seq)
        except ConnectionError:
            self._close()

    async def _authenticate(self) -> None:
        response, credential = await Login(self).handshake()
        self.charset = response.charset
        self.max_packet = response.max_packet
        await self._log_in(credential, response.database)
        if self.state == CLOSED:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._last_active = _monotonic()
        self._send(frame(self._reply_seq, ok_payload(Status.AUTOCOMMIT)))
        self._reader.max_size = self.tier.config.limits.max_packet_size
        self.state = READY
        if self._reader.pending:
            self._drain()

    async def _log_in(self, credential: Credential, database: str | None) -> None:
        """Become `credential`'s session in `database`, never waiting for the pool.

        In the funnel a login that queued for a pooled connection would wait behind the
        work of a thousand clients (and a storm of reconnects behind the pool it is about to
        use). The password is checked against the config; whether the upstream takes the
        user and schema is known from an earlier login (tier.logins), or checked on a
        connection that is free right now, or else at the client's first command. Until a
        connection has taken the session, an upstream refusal of the login (1044, 1045,
        1049) ends the session with the database's own error, as a refused login would."""
        self.credential = credential
        self.user = credential.user
        tier = self.tier
        buffering = tier.failover.enabled
        home = tier.upstream.pick()
        if home is None:
            if not buffering:
                raise errors.no_writer(tier.upstream.writer_problem or "no upstream is known")
            # No writer right now: the login completes, the first command waits for one (the
            # pool key follows the writer anyway).
            home = tier.upstream.servers[0]
        self.pool_key = PoolKey(
            home.name,
            credential.user,
            self.capabilities & POOL_KEY_CAPABILITIES,
            self.charset,
        )
        self.session = SessionState(database)
        self._unverified = True
        if self.tier.logins.accepted(home.name, credential.user, database):
            return
        if buffering and (tier.failover.buffering or tier.upstream.current is None):
            return  # checked at the first command, once there is a writer
        self._step = f"checking the login on a free connection to {home.name}"
        # Logging in is no work to pause (and a pause must not turn into handshake timeouts
        # for new clients).
        try:
            backend = await self._acquire(gated=False, wait=False)
        except errors.UpstreamUnreachable as exc:
            if not (buffering and tier.failover.writer_lost(f"{exc.server}: {exc.reason}")):
                raise
            return  # the first command waits for a writer
        if backend is not None:
            self.tier.pools.release(backend)
            if self.state != CLOSED:
                self._unverified = False

    async def _change_user(self, payload: bytes) -> None:
        """COM_CHANGE_USER: authenticate here; the session starts over as the new user."""
        self._reply_seq = 1
        try:
            request = parse_client_message(
                ChangeUser.parse, payload, self.capabilities, self.charset
            )
            timeout = self.tier.config.limits.handshake_timeout
            try:
                async with asyncio.timeout(timeout):
                    credential = await Login(self).change_user(request)
            except TimeoutError:
                raise errors.login_timed_out(timeout, self._step) from None
            self._reset_session(None)
            if request.charset:
                self.charset = request.charset
            await self._log_in(credential, request.database)
        except errors.ClientError as exc:
            log.info("client %s: change user refused: %s", self.id, exc.message)
            self._fail(exc, seq=self._reply_seq)
            return
        except UpstreamError as exc:
            log.info("client %s: upstream refused change user: %s", self.id, exc.err)
            self._send(frame(self._reply_seq, exc.raw))
            self._close()
            return
        except ProtocolError as exc:
            log.warning("client %s (%s): bad COM_CHANGE_USER: %s", self.id, self.peer, exc)
            self._fail(errors.handshake_failed(str(exc)), seq=self._reply_seq)
            return
        except ConnectionError as exc:
            log.warning("client %s: change user failed: %s", self.id, exc)
            self._close()
            return
        self._reply(frame(self._reply_seq, ok_payload(Status.AUTOCOMMIT)))

    # --- the safety net ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the session's slow path (login, queued commands, KILL …) as its one task."""
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._task_done)
        self._task = task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.crashed(task.exception())  # type: ignore[arg-type]

    def crashed(self, exc: BaseException) -> None:
        """Something this session's handling raised that nothing else caught (a bug, or input
        no parser foresaw). The session must not hang half-done: the client gets an ERR, a
        pooled connection it held is closed (its state is unknown, so it is never handed to
        another client), and the failure is logged once with the client's id."""
        if self.state == CLOSED:
            return
        log.error(
            "client %s (%s@%s): internal error while %s: %s: %s; closing the session",
            self.id,
            self.user or "?",
            self.peer,
            self._step if self.state == HANDSHAKE else "handling a command",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.detach()
            backend.abort()
            self.tier.pools.discard(backend)
        self._fail(errors.internal_error(type(exc).__name__), seq=self._reply_seq)

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self.state != HANDSHAKE:
            return
        timeout = self.tier.config.limits.handshake_timeout
        log.info(
            "client %s (%s): handshake timed out after %gs %s",
            self.id,
            self.peer,
            timeout,
            self._step,
        )
        self._fail(errors.login_timed_out(timeout, self._step), seq=self._reply_seq)

    # --- endings ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, error: errors.ClientError, seq: int, linger: bool = False) -> None:
        """Tell the client what went wrong, then disconnect it.

        With `linger`, the client may still be sending (an oversized statement): closing a
        socket with unread input makes the kernel send RST, which can destroy the ERR before
        the client reads it. So half-close, discard input for a moment, then close.
        """
        self.tier.stats.sluice_error(error.code)
        self._send(frame(seq, error.payload()))
        transport = self.transport
        if linger and transport is not None and transport.can_write_eof():
            self.transport = None  # _close() must leave the socket open for now
            self._close()
            self.transport = transport
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
            return
        self._close()

    def _protocol_violation(self, reason: str) -> None:
        log.warning(
            "client %s (%s): protocol violation: %s; disconnecting", self.id, self.peer, reason
        )
        self._close()

    def _close(self) -> None:
        if self.state == CLOSED:
            return
        if self._diagnostics_hold is not None:
            self._diagnostics_hold.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._wait_timer is not None:
            self._wait_timer.cancel()
        busy = self.state in (BUSY, INFILE)
        self.state = CLOSED
        queued = self._queued
        if queued is not None and not queued.done:
            queued.done = True  # dropped when the queue reaches it
        handed, self._handed = self._handed, None
        if handed is not None:  # the slow path never took it
            self.tier.pools.release(handed)
        if self._reserved and queued is not None:
            self._reserved = False
            self.tier.pools.unreserve(queued.key)
        backend = self.backend
        self.backend = None
        if backend is not None:
            backend.detach()
            if busy:  # the client left mid-command: stop the command upstream as well
                self.tier.abandon(backend)
            elif self.pinned or backend.scanner.status & _KEEP_STATUS or self._long_data:
                self.tier.pools.discard(backend)  # open transaction or session state: drop it
            else:
                self.tier.pools.release(backend)
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self.transport is not None:
            self.transport.close()
        self.tier.forget(self)

    def close(self) -> None:
        """Disconnect this client (tier shutdown, admin kill)."""
        self._close()
