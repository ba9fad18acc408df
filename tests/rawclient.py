"""A tiny blocking MySQL protocol client for tests that need what drivers do not expose.

It frames and authenticates with sluice's own protocol helpers (framing, handshake, auth), but
reads responses with its own small decoder below, written from the protocol documentation, so
tests do not check sluice's response scanner against itself. Only the pieces the tests use are
here: text results, binary rows of integer and string columns, prepared statements, cursors.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field

from proxy.protocol.auth import native_token, stage1
from proxy.protocol.codec import read_lenenc_bytes, read_lenenc_int
from proxy.protocol.constants import MAX_PAYLOAD, NATIVE_PASSWORD, Capability, Status
from proxy.protocol.framing import MessageReader, frame
from proxy.protocol.handshake import AuthSwitchRequest, Greeting, HandshakeResponse

BASE_CAPABILITIES = (
    Capability.LONG_PASSWORD
    | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
)

# Column types (enum_field_types) the binary row decoder understands.
TYPE_TINY, TYPE_SHORT, TYPE_LONG, TYPE_LONGLONG, TYPE_INT24 = 1, 2, 3, 8, 9
TYPE_VAR_STRING = 0xFD
INT_SIZES = {TYPE_TINY: 1, TYPE_SHORT: 2, TYPE_LONG: 4, TYPE_INT24: 4, TYPE_LONGLONG: 8}
LENENC_TYPES = {0x0F, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0x00}

CURSOR_TYPE_READ_ONLY = 1
OPTION_MULTI_STATEMENTS_ON = 0
OPTION_MULTI_STATEMENTS_OFF = 1


class RawError(Exception):
    """The peer answered with an ERR packet."""

    def __init__(self, code: int, sqlstate: str, message: str, payload: bytes) -> None:
        super().__init__(f"({code}, {sqlstate}) {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message
        self.payload = payload


def parse_error(payload: bytes) -> RawError:
    assert payload[0] == 0xFF, payload[:16]
    code = struct.unpack_from("<H", payload, 1)[0]
    assert payload[3:4] == b"#", f"ERR packet without a SQLSTATE marker: {payload!r}"
    sqlstate = payload[4:9].decode()
    return RawError(code, sqlstate, payload[9:].decode("utf-8", "replace"), payload)


@dataclass
class Column:
    name: str
    table: str
    type: int
    flags: int


@dataclass
class Result:
    """One result of a response: an OK (columns is None) or a result set."""

    status: int
    columns: list[Column] | None = None
    rows: list[list[object]] = field(default_factory=list)
    affected_rows: int = 0
    warnings: int = 0

    @property
    def values(self) -> list[tuple[object, ...]]:
        return [tuple(r) for r in self.rows]


def parse_column(payload: bytes) -> Column:
    pos = 0
    parts = []
    for _ in range(6):  # catalog, schema, table, org_table, name, org_name
        value, pos = read_lenenc_bytes(payload, pos)
        parts.append(value)
    _, pos = read_lenenc_int(payload, pos)  # length of the fixed fields (0x0c)
    col_type = payload[pos + 6]
    flags = struct.unpack_from("<H", payload, pos + 7)[0]
    return Column(parts[4].decode(), parts[2].decode(), col_type, flags)


def ok_fields(payload: bytes) -> tuple[int, int, int]:
    """(affected rows, status, warnings) of an OK packet (header 0x00 or 0xFE)."""
    affected, pos = read_lenenc_int(payload, 1)
    _, pos = read_lenenc_int(payload, pos)
    status, warnings = struct.unpack_from("<HH", payload, pos)
    return affected, status, warnings


class RawClient:
    """One blocking connection: `command` sends a command, the read_* methods read answers."""

    def __init__(self, sock: socket.socket, deprecate_eof: bool) -> None:
        self.sock = sock
        self.deprecate_eof = deprecate_eof
        self.reader = MessageReader(1 << 30)
        self.greeting: Greeting | None = None
        self.capabilities = 0

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        user: str,
        password: str,
        database: str | None = "app",
        *,
        deprecate_eof: bool = True,
        extra_capabilities: int = 0,
        timeout: float = 10.0,
    ) -> RawClient:
        sock = socket.create_connection(address, timeout=timeout)
        client = cls(sock, deprecate_eof)
        try:
            client._login(user, password, database, extra_capabilities)
        except BaseException:
            sock.close()
            raise
        return client

    def _login(self, user: str, password: str, database: str | None, extra: int) -> None:
        first = self.read_message()
        greeting = Greeting.parse(first.payload)
        self.greeting = greeting
        caps = BASE_CAPABILITIES | extra
        if self.deprecate_eof:
            caps |= Capability.DEPRECATE_EOF
        if not database:
            caps &= ~Capability.CONNECT_WITH_DB
        caps &= greeting.capabilities | Capability.LONG_PASSWORD
        self.capabilities = caps
        s1 = stage1(password) if password else b""
        token = native_token(s1, greeting.scramble) if s1 else b""
        response = HandshakeResponse(caps, 1 << 30, 45, user, token, database, NATIVE_PASSWORD)
        self.send(first.last_seq + 1, response.payload())
        while True:
            msg = self.read_message()
            head = msg.payload[0]
            if head == 0x00:
                return
            if head == 0xFF:
                raise parse_error(msg.payload)
            if head == 0xFE:
                switch = AuthSwitchRequest.parse(msg.payload)
                assert switch.plugin == NATIVE_PASSWORD, switch.plugin
                self.send(msg.last_seq + 1, native_token(s1, switch.data) if s1 else b"")
                continue
            raise AssertionError(f"unexpected packet during login: {msg.payload[:16]!r}")

    # --- bytes ------------------------------------------------------------------------------

    def send(self, seq: int, payload: bytes) -> None:
        self.sock.sendall(frame(seq, payload))

    def command(self, payload: bytes) -> None:
        self.send(0, payload)

    def read_message(self):  # -> Message
        while True:
            msg = self.reader.next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("connection closed by peer")
            self.reader.feed(data)

    def read_payload(self) -> bytes:
        return self.read_message().payload

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command(b"\x01")
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- responses --------------------------------------------------------------------------

    def _is_terminator(self, payload: bytes) -> bool:
        if payload[0] != 0xFE:
            return False
        return len(payload) < 9 or (self.deprecate_eof and len(payload) < MAX_PAYLOAD)

    def _terminator_status(self, payload: bytes) -> tuple[int, int]:
        """(status, warnings) of an EOF, or of the OK that replaces it under DEPRECATE_EOF."""
        if len(payload) < 9 and not self.deprecate_eof:
            warnings, status = struct.unpack_from("<HH", payload, 1)
            return status, warnings
        _, status, warnings = ok_fields(payload)
        return status, warnings

    def read_columns(self, count: int) -> list[Column]:
        return [parse_column(self.read_payload()) for _ in range(count)]

    def read_eof(self) -> int:
        """The EOF after column definitions (only without DEPRECATE_EOF); returns status."""
        payload = self.read_payload()
        assert payload[0] == 0xFE and len(payload) < 9, f"expected EOF, got {payload[:16]!r}"
        return struct.unpack_from("<H", payload, 3)[0]

    def read_rows(self, columns: list[Column], binary: bool) -> tuple[list[list[object]], int]:
        """Rows up to the terminator; returns (rows, status). Raises RawError on ERR."""
        rows: list[list[object]] = []
        while True:
            payload = self.read_payload()
            if payload[0] == 0xFF:
                raise parse_error(payload)
            if self._is_terminator(payload):
                status, _ = self._terminator_status(payload)
                return rows, status
            rows.append(binary_row(payload, columns) if binary else text_row(payload))

    def read_result(self, binary: bool = False) -> Result:
        """One result of a COM_QUERY / COM_STMT_EXECUTE response."""
        payload = self.read_payload()
        head = payload[0]
        if head == 0xFF:
            raise parse_error(payload)
        if head == 0x00:
            affected, status, warnings = ok_fields(payload)
            return Result(status, affected_rows=affected, warnings=warnings)
        if head == 0xFE:  # COM_SET_OPTION answers with EOF (or OK-as-EOF)
            status, warnings = self._terminator_status(payload)
            return Result(status, warnings=warnings)
        count, _ = read_lenenc_int(payload, 0)
        columns = self.read_columns(count)
        if not self.deprecate_eof:
            status = self.read_eof()
            if status & Status.CURSOR_EXISTS:
                return Result(status, columns)
        else:
            # Under DEPRECATE_EOF an open cursor is announced by an OK-as-EOF right away.
            pass
        rows, status = self.read_rows(columns, binary)
        return Result(status, columns, rows)

    def read_results(self, binary: bool = False) -> list[Result]:
        """All results of a response (multi-statements, CALL), up to the first error."""
        results = [self.read_result(binary)]
        while results[-1].status & Status.MORE_RESULTS_EXISTS:
            results.append(self.read_result(binary))
        return results

    def query(self, sql: str) -> list[Result]:
        self.command(b"\x03" + sql.encode())
        return self.read_results()

    def query_one(self, sql: str) -> Result:
        results = self.query(sql)
        assert len(results) == 1, results
        return results[0]

    # --- prepared statements ----------------------------------------------------------------

    def prepare(self, sql: str) -> tuple[int, int, list[Column]]:
        """COM_STMT_PREPARE: (statement id, parameter count, result columns)."""
        self.command(b"\x16" + sql.encode())
        payload = self.read_payload()
        if payload[0] == 0xFF:
            raise parse_error(payload)
        assert payload[0] == 0x00, payload[:16]
        stmt_id, columns, params = struct.unpack_from("<IHH", payload, 1)
        if params:
            self.read_columns(params)
            if not self.deprecate_eof:
                self.read_eof()
        cols: list[Column] = []
        if columns:
            cols = self.read_columns(columns)
            if not self.deprecate_eof:
                self.read_eof()
        return stmt_id, params, cols

    def execute_payload(self, stmt_id: int, params: list[object], flags: int = 0) -> bytes:
        out = bytearray(b"\x17" + struct.pack("<IBI", stmt_id, flags, 1))
        if params:
            bitmap = bytearray((len(params) + 7) // 8)
            for i, value in enumerate(params):
                if value is None:
                    bitmap[i // 8] |= 1 << (i % 8)
            out += bitmap + b"\x01"  # new parameters bound: types follow
            values = bytearray()
            for value in params:
                if value is None:
                    out += bytes((6, 0))  # MYSQL_TYPE_NULL
                elif isinstance(value, int):
                    out += bytes((TYPE_LONGLONG, 0))
                    values += struct.pack("<q", value)
                elif value is LONG_DATA:
                    out += bytes((0xFC, 0))  # BLOB: its value came by COM_STMT_SEND_LONG_DATA
                else:
                    data = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
                    out += bytes((TYPE_VAR_STRING, 0))
                    values += lenenc(data)
            out += values
        return bytes(out)

    def execute(self, stmt_id: int, params: list[object], flags: int = 0) -> list[Result]:
        self.command(self.execute_payload(stmt_id, params, flags))
        return self.read_results(binary=True)

    def fetch(self, stmt_id: int, count: int, columns: list[Column]) -> tuple[list, int]:
        """COM_STMT_FETCH: (binary rows, status of the closing EOF/OK)."""
        self.command(b"\x1c" + struct.pack("<II", stmt_id, count))
        return self.read_rows(columns, binary=True)

    def send_long_data(self, stmt_id: int, param: int, data: bytes) -> None:
        self.command(b"\x18" + struct.pack("<IH", stmt_id, param) + data)

    def close_statement(self, stmt_id: int) -> None:
        self.command(b"\x19" + struct.pack("<I", stmt_id))

    def reset_statement(self, stmt_id: int) -> Result:
        self.command(b"\x1a" + struct.pack("<I", stmt_id))
        return self.read_result()

    def set_option(self, option: int) -> Result:
        self.command(b"\x1b" + struct.pack("<H", option))
        return self.read_result()

    def field_list(self, table: str, wildcard: str = "") -> list[Column]:
        """COM_FIELD_LIST: column definitions up to the EOF (or OK-as-EOF)."""
        self.command(b"\x04" + table.encode() + b"\0" + wildcard.encode())
        columns = []
        while True:
            payload = self.read_payload()
            if payload[0] == 0xFF:
                raise parse_error(payload)
            if self._is_terminator(payload):
                return columns
            columns.append(parse_column(payload))


class _LongData:
    """Marker for a parameter whose value was sent with COM_STMT_SEND_LONG_DATA."""


LONG_DATA = _LongData()


def lenenc(data: bytes) -> bytes:
    n = len(data)
    if n < 0xFB:
        head = bytes((n,))
    elif n < 1 << 16:
        head = b"\xfc" + struct.pack("<H", n)
    elif n < 1 << 24:
        head = b"\xfd" + n.to_bytes(3, "little")
    else:
        head = b"\xfe" + struct.pack("<Q", n)
    return head + data


def text_row(payload: bytes) -> list[object]:
    row: list[object] = []
    pos = 0
    while pos < len(payload):
        if payload[pos] == 0xFB:
            row.append(None)
            pos += 1
        else:
            value, pos = read_lenenc_bytes(payload, pos)
            row.append(value.decode("utf-8", "replace"))
    return row


def binary_row(payload: bytes, columns: list[Column]) -> list[object]:
    assert payload[0] == 0x00, f"binary row must start with 0x00, got {payload[:8]!r}"
    bitmap_len = (len(columns) + 7 + 2) // 8
    bitmap = payload[1 : 1 + bitmap_len]
    pos = 1 + bitmap_len
    row: list[object] = []
    for i, col in enumerate(columns):
        bit = i + 2
        if bitmap[bit // 8] & (1 << (bit % 8)):
            row.append(None)
            continue
        if col.type in INT_SIZES:
            size = INT_SIZES[col.type]
            unsigned = bool(col.flags & 32)
            row.append(int.from_bytes(payload[pos : pos + size], "little", signed=not unsigned))
            pos += size
        elif col.type in LENENC_TYPES:
            value, pos = read_lenenc_bytes(payload, pos)
            row.append(value)
        else:
            raise AssertionError(f"binary decoding of column type {col.type} not implemented")
    return row
