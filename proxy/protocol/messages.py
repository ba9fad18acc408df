"""Generic response packets: OK, ERR, EOF, and session-state-change information.

Parsing is only used off the hot path (end of a response, handshake, sluice's own queries); the
relay never decodes rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .codec import (
    ProtocolError,
    lenenc_bytes,
    lenenc_int,
    read_lenenc_bytes,
    read_lenenc_int,
    read_u16,
    u16,
)
from .constants import SQLSTATES, Capability, ErrorCode, Status, TrackerType

OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
LOCAL_INFILE_HEADER = 0xFB

# Plain ints for what parse_ok and parse_session_state test: an IntFlag operator builds an
# enum member and an IntEnum comparison looks up a class attribute, and every OK that reports
# state (each BEGIN and COMMIT: in_transaction, last_gtid) is parsed.
_SESSION_TRACK = int(Capability.SESSION_TRACK)
_STATE_CHANGED = int(Status.SESSION_STATE_CHANGED)
_SYSTEM_VARIABLES = int(TrackerType.SYSTEM_VARIABLES)
_SCHEMA = int(TrackerType.SCHEMA)
_STATE_CHANGE = int(TrackerType.STATE_CHANGE)
_TRANSACTION_STATE = int(TrackerType.TRANSACTION_STATE)
_TRANSACTION_CHARACTERISTICS = int(TrackerType.TRANSACTION_CHARACTERISTICS)
_GTIDS = int(TrackerType.GTIDS)


@dataclass(slots=True)
class SessionState:
    """Session state changes reported by the server (CLIENT_SESSION_TRACK)."""

    system_variables: dict[str, str] = field(default_factory=dict)
    schema: str | None = None
    state_changed: bool = False
    transaction_state: str | None = None
    transaction_characteristics: str | None = None
    gtids: bytes | None = None


@dataclass(slots=True)
class OkPacket:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: bytes = b""
    session_state: SessionState | None = None
    state_block: bytes = b""  # the session-state-change bytes as the server sent them


@dataclass(slots=True)
class ErrPacket:
    code: int
    sqlstate: str
    message: str

    def __str__(self) -> str:
        return f"({self.code}, {self.sqlstate}) {self.message}"


def parse_ok(payload: bytes, capabilities: int) -> OkPacket:
    """Parse an OK packet (header 0x00, or 0xFE when it ends a result set under DEPRECATE_EOF)."""
    if not payload or payload[0] not in (OK_HEADER, EOF_HEADER):
        raise ProtocolError("not an OK packet")
    affected, pos = read_lenenc_int(payload, 1)
    last_id, pos = read_lenenc_int(payload, pos)
    status = read_u16(payload, pos)
    warnings = read_u16(payload, pos + 2)
    pos += 4
    info = b""
    state = None
    data = b""
    if capabilities & _SESSION_TRACK:
        if pos < len(payload):
            info, pos = read_lenenc_bytes(payload, pos)
            if status & _STATE_CHANGED and pos < len(payload):
                data, pos = read_lenenc_bytes(payload, pos)
                state = parse_session_state(data)
    else:
        info = bytes(payload[pos:])
    return OkPacket(affected, last_id, status, warnings, info, state, data)


def parse_session_state(data: bytes) -> SessionState:
    state = SessionState()
    pos = 0
    while pos < len(data):
        kind = data[pos]
        entry, pos = read_lenenc_bytes(data, pos + 1)
        if kind == _SYSTEM_VARIABLES:
            name, p = read_lenenc_bytes(entry, 0)
            value, _ = read_lenenc_bytes(entry, p)
            state.system_variables[_raw_text(name)] = _raw_text(value)
        elif kind == _SCHEMA:
            state.schema = _raw_text(read_lenenc_bytes(entry, 0)[0])
        elif kind == _STATE_CHANGE:
            state.state_changed = True
        elif kind == _TRANSACTION_STATE:
            state.transaction_state = _raw_text(read_lenenc_bytes(entry, 0)[0])
        elif kind == _TRANSACTION_CHARACTERISTICS:
            state.transaction_characteristics = _raw_text(read_lenenc_bytes(entry, 0)[0])
        elif kind == _GTIDS:
            state.gtids = entry
        # Unknown tracker types are skipped: the server may know more than we do.
    return state


def strip_session_state(payload: bytes) -> bytes:
    """The OK packet as MariaDB sends it to a client without CLIENT_SESSION_TRACK.

    The state-change block and the SESSION_STATE_CHANGED flag go; the info text stays
    length-encoded, as MariaDB writes it either way, and is left out when empty (as MariaDB
    does for such clients).
    """
    _, pos = read_lenenc_int(payload, 1)
    _, pos = read_lenenc_int(payload, pos)
    status = read_u16(payload, pos)
    end = pos + 4
    if end < len(payload):
        info, info_end = read_lenenc_bytes(payload, end)
        if info:
            end = info_end
    return payload[:pos] + u16(status & ~_STATE_CHANGED) + payload[pos + 2 : end]


def parse_err(payload: bytes) -> ErrPacket:
    if not payload or payload[0] != ERR_HEADER:
        raise ProtocolError("not an ERR packet")
    code = read_u16(payload, 1)
    if len(payload) > 3 and payload[3] == ord("#"):
        return ErrPacket(code, payload[4:9].decode("ascii", "replace"), _text(payload[9:]))
    return ErrPacket(code, "HY000", _text(payload[3:]))


def parse_eof_status(payload: bytes | memoryview) -> int:
    """Status flags of an EOF packet (0xFE, warnings, status)."""
    return read_u16(payload, 3)


def ok_payload(
    status: int,
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    warnings: int = 0,
    header: int = OK_HEADER,
) -> bytes:
    return (
        bytes((header,))
        + lenenc_int(affected_rows)
        + lenenc_int(last_insert_id)
        + u16(status)
        + u16(warnings)
    )


def eof_payload(status: int, warnings: int = 0) -> bytes:
    return b"\xfe" + u16(warnings) + u16(status)


def err_payload(code: int, message: str, sqlstate: bytes | None = None) -> bytes:
    state = sqlstate if sqlstate is not None else SQLSTATES.get(code, b"HY000")
    return b"\xff" + u16(code) + b"#" + state + message.encode("utf-8", "replace")


def sluice_err_payload(code: ErrorCode, message: str) -> bytes:
    """An ERR payload for an error sluice itself raises: the message says it is ours."""
    return err_payload(code, "sluice: " + message)


def string_payload(text: str) -> bytes:
    return lenenc_bytes(text.encode())


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _raw_text(data: bytes) -> str:
    """Session state as the server reported it: its utf8, with any other bytes kept as they
    were (surrogateescape), so that replaying a value sends the server exactly its own bytes."""
    return data.decode("utf-8", "surrogateescape")


TYPE_LONGLONG = 0x08
TYPE_VAR_STRING = 0xFD
_BINARY_CHARSET = 63
_UTF8_CHARSET = 33


def column_definition(name: str, column_type: int, length: int = 21) -> bytes:
    """A Protocol::ColumnDefinition41 for a result set sluice builds itself."""
    encoded = name.encode()
    charset = _BINARY_CHARSET if column_type == TYPE_LONGLONG else _UTF8_CHARSET
    return b"".join(
        (
            lenenc_bytes(b"def"),
            lenenc_bytes(b""),  # schema
            lenenc_bytes(b""),  # table
            lenenc_bytes(b""),  # org_table
            lenenc_bytes(encoded),
            lenenc_bytes(encoded),
            b"\x0c",
            u16(charset),
            length.to_bytes(4, "little"),
            bytes((column_type,)),
            u16(0x81 if column_type == TYPE_LONGLONG else 0x01),  # (BINARY|)NOT_NULL
            b"\x00\x00\x00",  # decimals, filler
        )
    )


def text_result(
    columns: list[tuple[str, int]],
    rows: list[list[bytes | None]],
    status: int,
    deprecate_eof: bool,
) -> list[bytes]:
    """Payloads of a complete text-protocol result set (for answers sluice gives itself)."""
    out = [lenenc_int(len(columns))]
    out += (column_definition(name, kind) for name, kind in columns)
    if not deprecate_eof:
        out.append(eof_payload(status))
    for row in rows:
        out.append(b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in row))
    out.append(ok_payload(status, header=0xFE) if deprecate_eof else eof_payload(status))
    return out
