"""Upstream connections: log in to a MySQL-protocol server, then relay responses to a client.

A ServerConnection has two modes. While sluice talks to the server itself (handshake,
COM_CHANGE_USER, monitoring queries) incoming bytes are parsed into messages and awaited by
coroutines. Once a client session is attached, it relays: every chunk goes through the response
scanner (headers only) and straight to the client's transport, and the session is told when the
response ends. That relay path is the hot path of sluice: no parsing, no logging, no awaiting.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import errors
from .protocol import capabilities, charsets
from .protocol.codec import ProtocolError, read_lenenc_bytes, read_lenenc_int, read_u32, u32
from .protocol.constants import NATIVE_PASSWORD, Capability, Command
from .protocol.framing import Message, MessageReader, frame
from .protocol.handshake import AuthSwitchRequest, Greeting, HandshakeResponse, ssl_request
from .protocol.messages import ErrPacket, OkPacket, parse_err, parse_ok
from .protocol.plugins import UpstreamAuth, UpstreamAuthError
from .protocol.scanner import ResponseScanner
from .session_state import SessionState

if TYPE_CHECKING:
    from .config import KeepaliveConfig
    from .users import Credential

log = logging.getLogger("sluice.backend")

SERVER_MESSAGE_LIMIT = 1 << 30
"""Largest message sluice reassembles from a server when it reads one itself (not relaying)."""


class RelaySink(Protocol):
    """What a ServerConnection tells the client session it relays for."""

    def response_done(self) -> None: ...
    def infile_requested(self) -> None: ...
    def upstream_lost(self, reason: str) -> None: ...
    def crashed(self, exc: BaseException) -> None: ...
    def refused(self, response: bytes) -> bool: ...
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...


_SESSION_TRACK = int(Capability.SESSION_TRACK)
_DEPRECATE_EOF = int(Capability.DEPRECATE_EOF)
_CONNECT_WITH_DB = int(Capability.CONNECT_WITH_DB)
_SSL = int(Capability.SSL)

PAUSE_UPSTREAM_FULL = 2
"""Pause reason: the upstream's write buffer is full (client reading must wait)."""


class UpstreamError(Exception):
    """The server answered with an ERR packet (during login or to sluice's own command)."""

    def __init__(self, err: ErrPacket, raw: bytes) -> None:
        super().__init__(str(err))
        self.err = err
        self.raw = raw


MAX_STATEMENTS_PER_CONNECTION = 256
"""Prepared statements kept per pooled connection (least recently used ones are closed)."""


@dataclass(slots=True)
class ServerStatement:
    """A statement prepared on one connection, shared by every client that runs its SQL."""

    id: int
    params: int
    types: bytes | None = None  # parameter types the server last received for it


@dataclass(slots=True)
class QueryResult:
    """Result of one of sluice's own queries: columns and text rows (None for NULL)."""

    columns: list[str]
    rows: list[list[str | None]]
    ok: OkPacket | None = None


class ServerConnection(asyncio.Protocol):
    """One connection to an upstream server (a database, or a remote sluice tier)."""

    __slots__ = (
        "_client_transport",
        "_forwarded",
        "_held",
        "_reader",
        "_reading_paused",
        "_sink",
        "_waiter",
        "address",
        "auth_ok",
        "capabilities",
        "charset",
        "closed",
        "counted_closed",
        "diagnostics",
        "greeting",
        "last_insert_id",
        "last_session",
        "last_used",
        "lost_reason",
        "on_lost",
        "opened_at",
        "pool_key",
        "reset",
        "scanner",
        "server_name",
        "state",
        "statements",
        "transport",
    )

    def __init__(self, server_name: str, address: str) -> None:
        self.server_name = server_name
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.greeting: Greeting | None = None
        self.capabilities = 0
        self.charset = 45  # the collation it logged in with
        self.auth_ok = b""
        self.scanner = ResponseScanner()
        self.closed = False
        self.lost_reason = ""
        self.reset = False  # the peer answered with a reset: it did not read what we sent
        self._reader = MessageReader(SERVER_MESSAGE_LIMIT)
        self._waiter: asyncio.Future[None] | None = None
        self._sink: RelaySink | None = None
        self._client_transport: asyncio.Transport | None = None
        self._forwarded = False
        self._held = b""
        self._reading_paused = False
        # Pool bookkeeping (set by the pool that opened it).
        self.pool_key: Any = None
        self.opened_at = 0.0
        self.last_used = 0.0
        self.on_lost: Callable[[ServerConnection], None] | None = None
        self.counted_closed = False
        self.state: SessionState = SessionState(None)
        self.statements: OrderedDict[bytes, ServerStatement] = OrderedDict()
        self.last_insert_id = 0  # what LAST_INSERT_ID() returns on this connection
        self.last_session = 0  # the client session that ran the latest command here
        self.diagnostics = False  # warnings/errors of that session's last statement remain

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self._reader.feed(data)
            self._wake()
            return
        try:  # (free until something raises)
            scanner = self.scanner
            if scanner.strip_state:
                self._relay_stripping(data, sink)
                return
            try:
                end = scanner.feed(data)
            except ProtocolError as exc:
                self._relay_failed(f"malformed response: {exc}")
                return
            n = len(data)
            if scanner.failed and end == n and not self._forwarded and sink.refused(data):
                return  # the session retries it elsewhere (failover buffering)
            self._forwarded = True
            if end < 0:
                self._client_transport.write(data)  # type: ignore[union-attr]
                if scanner.infile:
                    sink.infile_requested()
                return
            if end != n:
                self._client_transport.write(data[:end])  # type: ignore[union-attr]
                self._relay_failed("server sent data after the end of its response")
                return
            self._client_transport.write(data)  # type: ignore[union-attr]
            sink.response_done()
        except Exception as exc:
            sink.crashed(exc)  # the session ends, and this connection with it

    def _relay_stripping(self, data: bytes, sink: RelaySink) -> None:
        """The relay for clients without CLIENT_SESSION_TRACK: OK packets that carry session
        state are rewritten without it. Bytes of a packet still being inspected are held back
        until it is complete, so a rewritten packet never goes out half original."""
        scanner = self.scanner
        held = self._held
        start = scanner.fed - len(held)  # stream offset of buf[0]
        try:
            end = scanner.feed(data)
        except ProtocolError as exc:
            self._relay_failed(f"malformed response: {exc}")
            return
        if (
            end == len(data)
            and scanner.failed
            and not self._forwarded
            and not held
            and sink.refused(data)
        ):
            return  # the session retries it elsewhere (failover buffering)
        self._forwarded = True
        buf = held + data if held else data
        upto = len(buf) - (len(data) - end) if end >= 0 else len(buf) - scanner.held
        out = buf[:upto]
        if scanner.edits:
            pieces = []
            last = 0
            for a, b, replacement in scanner.edits:
                pieces += (out[last : a - start], replacement)
                last = b - start
            pieces.append(out[last:])
            out = b"".join(pieces)
            scanner.edits.clear()
        self._held = buf[upto:] if end < 0 else b""
        self._client_transport.write(out)  # type: ignore[union-attr]
        if end < 0:
            if scanner.infile:
                sink.infile_requested()
        elif end != len(data):
            self._relay_failed("server sent data after the end of its response")
        else:
            sink.response_done()

    def eof_received(self) -> bool | None:
        """The server closed (a FIN). Before the socket goes, ask the kernel whether what we
        last sent can have been read: a server that died before our command arrived answers
        it with a reset, never an acknowledgement (see connection_lost)."""
        if self._sink is not None and not self.reset:
            self.reset = never_read(self.transport)
        # Dead for reuse from now on: until connection_lost comes (a loop turn later) it
        # still sits in its pool, and a command handed to it would be lost unsent.
        self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # A reset means the peer's socket was closed (its process gone) or closed with our
        # bytes unread: either way the command in flight was never read, so never run. A
        # server that read it and then died closes with a FIN that acknowledges it.
        self.reset = self.reset or isinstance(exc, ConnectionResetError | BrokenPipeError)
        if not self.lost_reason:
            self.lost_reason = f"connection lost: {exc}" if exc else "connection closed by server"
        on_lost = self.on_lost
        if on_lost is not None:
            self.on_lost = None
            on_lost(self)
        self._wake()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.upstream_lost(self.lost_reason)

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.pause_reading(PAUSE_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.resume_reading(PAUSE_UPSTREAM_FULL)

    # --- relay mode -------------------------------------------------------------------------

    def attach(
        self, sink: RelaySink, client_transport: asyncio.Transport, client_capabilities: int
    ) -> None:
        """Relay responses from now on to this client (the session's commands come via send)."""
        self._sink = sink
        self._client_transport = client_transport
        # Plain ints: IntFlag operators allocate enum members, and this runs per command.
        self.scanner.strip_state = bool(self.capabilities & _SESSION_TRACK) and not (
            client_capabilities & _SESSION_TRACK
        )

    def detach(self) -> None:
        self._sink = None
        self._client_transport = None
        if self._reading_paused:  # paused for a slow client that no longer owns it
            self.resume_reading()

    def send_command(self, raw: bytes, mode: int) -> None:
        """Forward a client's command (framed bytes) and expect a response of `mode`."""
        self.scanner.start(mode)
        self._forwarded = False
        self.transport.write(raw)  # type: ignore[union-attr]

    def send_raw(self, raw: bytes | memoryview) -> None:
        """Forward bytes that expect no response of their own (STMT_CLOSE, infile data)."""
        self.transport.write(raw)  # type: ignore[union-attr]

    @property
    def thread_id(self) -> int:
        """The server's id for this connection (what KILL on the server takes)."""
        return self.greeting.connection_id if self.greeting is not None else 0

    @property
    def response_started(self) -> bool:
        """Whether any byte of the current response has reached the client."""
        return self._forwarded

    def pause_reading(self) -> None:
        if not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _relay_failed(self, reason: str) -> None:
        log.warning("upstream %s: %s; closing the connection", self.server_name, reason)
        self.lost_reason = reason
        self.abort()

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close politely (COM_QUIT) when idle; the server then frees the session at once."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        self._sink = None
        if self.scanner.done:
            self.transport.write(frame(0, bytes((Command.QUIT,))))
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.closed = True

    # --- sluice's own conversation with the server ------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_message(self) -> Message:
        while True:
            msg = self._reader.next_message()
            if msg is not None:
                return msg
            if self.closed:
                raise ConnectionError(self.lost_reason or "connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def login(
        self,
        credential: Credential,
        client_capabilities: int,
        *,
        database: str | None = None,
        charset: int = 45,
        max_packet: int = 1 << 24,
        attributes: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_mode: str = "disabled",
        server_hostname: str | None = None,
    ) -> None:
        """Read the greeting, upgrade to TLS as `tls_mode` says, and log in; raises
        UpstreamError (the server's ERR) or errors.ClientError."""
        msg = await self.read_message()
        if msg.payload[:1] == b"\xff":
            raise UpstreamError(parse_err(msg.payload), msg.payload)
        greeting = Greeting.parse(msg.payload)
        self.greeting = greeting
        caps = capabilities.for_upstream(client_capabilities, greeting.capabilities)
        if database:
            caps |= _CONNECT_WITH_DB & greeting.capabilities
        else:
            caps &= ~_CONNECT_WITH_DB
        seq = msg.seq + 1
        secure = self.address.startswith("unix:")
        if tls is not None and tls_mode != "disabled" and not secure:
            if greeting.capabilities & _SSL:
                caps |= _SSL
                self.transport.write(frame(seq, ssl_request(caps, max_packet, charset)))  # type: ignore[union-attr]
                seq += 1
                await self._start_tls(tls, server_hostname)
                secure = True
            elif tls_mode != "preferred":
                raise errors.upstream_tls_missing(self.server_name, self.address, tls_mode)
        self.capabilities = caps & ~_SSL
        self.charset = charset
        auth = UpstreamAuth(credential.user, credential.secrets, secure=secure)
        plugin = greeting.auth_plugin or NATIVE_PASSWORD
        try:
            data = auth.answer(plugin, greeting.scramble)
        except UpstreamAuthError as exc:
            raise errors.auth_plugin_unsupported(self.server_name, exc.plugin, str(exc)) from exc
        response = HandshakeResponse(
            caps,
            max_packet,
            charset,
            credential.user,
            data,
            database,
            plugin,
            dict(attributes or {}),
        )
        self.transport.write(frame(seq, response.payload()))  # type: ignore[union-attr]
        self.scanner.deprecate_eof = bool(caps & _DEPRECATE_EOF)
        self.auth_ok = await self._finish_auth(auth)

    async def _start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport,  # type: ignore[arg-type]
                self,
                context,
                server_side=False,
                server_hostname=server_hostname,
            )
        except ssl.SSLError as exc:
            reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            raise errors.upstream_tls_failed(self.server_name, self.address, reason) from exc
        if transport is None:
            raise ConnectionError("connection closed during the TLS handshake")
        self.transport = transport  # type: ignore[assignment]

    async def _finish_auth(self, auth: UpstreamAuth) -> bytes:
        """Answer auth switches and AuthMoreData until the server says OK (returned) or ERR
        (raised)."""
        while True:
            msg = await self.read_message()
            head = msg.payload[:1]
            if head == b"\x00":
                return msg.payload
            if head == b"\xff":
                raise UpstreamError(parse_err(msg.payload), msg.payload)
            try:
                if head == b"\xfe":
                    switch = AuthSwitchRequest.parse(msg.payload)
                    answer: bytes | None = auth.answer(switch.plugin, switch.data)
                elif head == b"\x01":
                    answer = auth.more(msg.payload)
                else:
                    raise ProtocolError(f"unexpected packet 0x{msg.payload[0]:02x} during login")
            except UpstreamAuthError as exc:
                raise errors.auth_plugin_unsupported(
                    self.server_name, exc.plugin, str(exc)
                ) from exc
            if answer is not None:
                self.transport.write(frame(msg.seq + 1, answer))  # type: ignore[union-attr]

    async def simple_command(self, payload: bytes) -> OkPacket:
        """A command answered by OK or ERR (COM_PING, COM_INIT_DB, COM_RESET_CONNECTION)."""
        assert self._sink is None, "command on a relaying connection"
        self.transport.write(frame(0, payload))  # type: ignore[union-attr]
        msg = await self.read_message()
        if msg.payload[:1] == b"\xff":
            raise UpstreamError(parse_err(msg.payload), msg.payload)
        return parse_ok(msg.payload, self.capabilities)

    async def prepare(self, sql: bytes) -> tuple[ServerStatement | None, list[Message]]:
        """COM_STMT_PREPARE for sluice: the statement (None on ERR) and the whole response.

        The statement is cached on this connection by its SQL; a statement prepared again
        replaces the older one, and the least recently used are closed past the bound.
        """
        assert self._sink is None, "prepare on a relaying connection"
        self.transport.write(frame(0, bytes((Command.STMT_PREPARE,)) + sql))  # type: ignore[union-attr]
        first = await self.read_message()
        if first.payload[:1] == b"\xff":
            return None, [first]
        if len(first.payload) < 9 or first.payload[0] != 0:
            raise ProtocolError("malformed COM_STMT_PREPARE response")
        payload = first.payload
        stmt_id = read_u32(payload, 1)
        columns = payload[5] | payload[6] << 8
        params = payload[7] | payload[8] << 8
        deprecate_eof = self.capabilities & Capability.DEPRECATE_EOF
        count = params + columns + (0 if deprecate_eof else (params > 0) + (columns > 0))
        messages = [first]
        for _ in range(count):
            messages.append(await self.read_message())
        statement = ServerStatement(stmt_id, params)
        old = self.statements.pop(sql, None)
        if old is not None:
            self.close_statement(old.id)
        self.statements[sql] = statement
        while len(self.statements) > MAX_STATEMENTS_PER_CONNECTION:
            _, evicted = self.statements.popitem(last=False)
            self.close_statement(evicted.id)
        return statement, messages

    def close_statement(self, stmt_id: int) -> None:
        """COM_STMT_CLOSE (the server sends no reply)."""
        self.transport.write(frame(0, bytes((Command.STMT_CLOSE,)) + u32(stmt_id)))  # type: ignore[union-attr]

    async def ping(self) -> None:
        await self.simple_command(bytes((Command.PING,)))

    async def init_db(self, schema: str) -> OkPacket:
        """COM_INIT_DB: the server reads the name in the connection's character_set_client."""
        name = self.state.variables.get("character_set_client")
        codec = charsets.codec_of_charset(name) if name else charsets.codec_of(self.charset)
        return await self.simple_command(bytes((Command.INIT_DB,)) + charsets.encode(schema, codec))

    async def query(self, sql: str) -> QueryResult:
        """Run one statement for sluice itself (never on a connection that is relaying)."""
        assert self._sink is None, "query() on a relaying connection"
        data = sql.encode("utf-8", "surrogateescape")  # tracked values go back byte for byte
        self.transport.write(frame(0, b"\x03" + data))  # type: ignore[union-attr]
        deprecate_eof = bool(self.capabilities & Capability.DEPRECATE_EOF)
        msg = await self.read_message()
        head = msg.payload[0]
        if head == 0xFF:
            raise UpstreamError(parse_err(msg.payload), msg.payload)
        if head == 0x00:
            return QueryResult([], [], parse_ok(msg.payload, self.capabilities))
        count, _ = read_lenenc_int(msg.payload, 0)
        columns = []
        for _ in range(count):
            col = (await self.read_message()).payload
            pos = 0
            for _ in range(4):  # catalog, schema, table, org_table
                _, pos = read_lenenc_bytes(col, pos)
            name, _ = read_lenenc_bytes(col, pos)
            columns.append(name.decode("utf-8", "replace"))
        if not deprecate_eof:
            await self.read_message()
        rows: list[list[str | None]] = []
        while True:
            payload = (await self.read_message()).payload
            if payload[0] == 0xFE and len(payload) < 0xFFFFFF:
                ok = parse_ok(payload, self.capabilities) if deprecate_eof else None
                return QueryResult(columns, rows, ok)
            if payload[0] == 0xFF:
                raise UpstreamError(parse_err(payload), payload)
            row: list[str | None] = []
            pos = 0
            while pos < len(payload):
                if payload[pos] == 0xFB:
                    row.append(None)
                    pos += 1
                else:
                    value, pos = read_lenenc_bytes(payload, pos)
                    row.append(value.decode("utf-8", "replace"))
            rows.append(row)


_TCP_INFO_UNACKED = struct.Struct("<I")  # struct tcp_info's tcpi_unacked, at byte 24
_TCP_CLOSE = 7  # tcpi_state after a reset


def never_read(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the peer cannot have read what we last sent on this TCP transport (Linux
    TCP_INFO, read when its FIN arrives): our bytes are still unacknowledged, or the peer
    reset the connection after its FIN, which a closed socket does to data that arrives."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return False
    if len(info) < 28:
        return False
    return info[0] == _TCP_CLOSE or _TCP_INFO_UNACKED.unpack_from(info, 24)[0] > 0


async def open_connection(
    server_name: str, address: object, timeout: float, keepalive: KeepaliveConfig | None = None
) -> ServerConnection:
    """Open a transport to `address` (a config Address) and return its ServerConnection;
    with `keepalive`, a TCP one gets TCP keepalive and TCP_USER_TIMEOUT (see health)."""
    loop = asyncio.get_running_loop()
    text = str(address)

    def factory() -> ServerConnection:
        return ServerConnection(server_name, text)

    async with asyncio.timeout(timeout):
        if address.kind == "unix":  # type: ignore[attr-defined]
            _, conn = await loop.create_unix_connection(factory, address.path)  # type: ignore[attr-defined]
        else:
            transport, conn = await loop.create_connection(
                factory,
                address.host,  # type: ignore[attr-defined]
                address.port,  # type: ignore[attr-defined]
            )
            if keepalive is not None:
                from .health import set_keepalive

                set_keepalive(transport.get_extra_info("socket"), keepalive, user_timeout=True)
    return conn
