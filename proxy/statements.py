"""Prepared statements across pooled connections.

A client's statement ids are sluice's own; each maps to the statement's SQL. A pooled
connection keeps the statements prepared on it by SQL (backend.ServerStatement), so whichever
connection runs a client's COM_STMT_EXECUTE, the statement is prepared there once, lazily, and
shared by every client running the same SQL. Packets that name a statement get the
connection's id written in. One subtlety: an execute may leave out the parameter types
("as last time"), but "last time" on this connection may have been another client's execute
with other types, so sluice puts the client's own types back in when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .protocol.codec import ProtocolError, u32
from .protocol.framing import frame

if TYPE_CHECKING:
    from .backend import ServerStatement

CURSOR_TYPE_MASK = 0x07
"""COM_STMT_EXECUTE flags asking for a cursor (read only, for update, scrollable)."""


@dataclass(slots=True)
class ClientStatement:
    """A statement as one client prepared it."""

    sql: bytes
    params: int
    types: bytes | None = None  # the parameter types the client last sent


def with_statement_id(raw: bytes, server_id: int) -> bytes:
    """A command packet (framed) naming the statement by the connection's id instead.

    The id sits at payload bytes 1..4 of the first packet; lengths do not change."""
    if len(raw) < 9:
        raise ProtocolError("statement command without a statement id")
    return raw[:5] + u32(server_id) + raw[9:]


def bind_execute(
    raw: bytes, payload: bytes, stmt: ClientStatement, server: ServerStatement
) -> bytes:
    """The COM_STMT_EXECUTE to send for `server`, with the client's types when needed."""
    if stmt.params == 0:
        return with_statement_id(raw, server.id)
    flag_at = 10 + (stmt.params + 7) // 8  # after id, flags, iterations and the NULL bitmap
    if flag_at >= len(payload):
        raise ProtocolError("COM_STMT_EXECUTE too short for its parameters")
    if payload[flag_at] == 1:
        types = bytes(payload[flag_at + 1 : flag_at + 1 + 2 * stmt.params])
        stmt.types = server.types = types
        return with_statement_id(raw, server.id)
    if stmt.types is None or server.types == stmt.types:
        return with_statement_id(raw, server.id)
    server.types = stmt.types
    return frame(
        0,
        payload[:1]
        + u32(server.id)
        + payload[5:flag_at]
        + b"\x01"
        + stmt.types
        + payload[flag_at + 1 :],
    )


def wants_cursor(payload: bytes) -> bool:
    return len(payload) > 5 and bool(payload[5] & CURSOR_TYPE_MASK)
