"""Incremental response scanner: where does a server response end?

A proxy relays responses chunk by chunk as they arrive; to know when the upstream connection is
free again (and what the transaction state is) it must find the end of each response without
holding or decoding it. The scanner walks packet headers only. It inspects the whole packet just
for the few packets that steer the state machine (OK/ERR/EOF, column counts, prepare OK), and
only the first payload byte of a row. Packets that straddle chunks are carried over in a small
buffer; everything else is never copied.

States (per response):
  FIRST        OK | ERR | EOF | LOCAL INFILE request | column count (a result set follows)
  COLUMNS      skip `count` column definitions, then COLUMNS_EOF (or ROWS under DEPRECATE_EOF)
  COLUMNS_EOF  EOF after the definitions; CURSOR_EXISTS ends the response (rows come by FETCH)
  ROWS         rows until a terminator: EOF/OK (0xFE, short) or ERR
  PREPARE      COM_STMT_PREPARE OK (then SKIP its parameter/column definitions) or ERR
  SKIP         skip `count` packets, then DONE
  SINGLE       one packet of any content (COM_STATISTICS)
A terminator with MORE_RESULTS_EXISTS goes back to FIRST (multi-statements, CALL).
"""

from __future__ import annotations

import struct

from .codec import ProtocolError, unpack_u32
from .constants import MAX_PAYLOAD, Command, Status
from .framing import frame
from .messages import strip_session_state

FIRST, COLUMNS, COLUMNS_EOF, ROWS, PREPARE, SKIP, SINGLE, DONE = range(8)

_row_head = struct.Struct("<IB").unpack_from
"""A packet's header (length, sequence id in the top byte) and its first payload byte."""
_two_u16 = struct.Struct("<HH").unpack_from
"""Two u16 in a row: an OK's status and warnings, an EOF's warnings and status."""
_MORE = int(Status.MORE_RESULTS_EXISTS)
_STATE_CHANGED = int(Status.SESSION_STATE_CHANGED)
_CURSOR = int(Status.CURSOR_EXISTS)

NO_RESPONSE = -1
"""Mode of commands the server never answers (STMT_CLOSE, STMT_SEND_LONG_DATA, QUIT)."""

RESPONSE_MODES: dict[int, int] = {
    Command.QUERY: FIRST,
    Command.STMT_EXECUTE: FIRST,
    Command.STMT_BULK_EXECUTE: FIRST,
    Command.INIT_DB: FIRST,
    Command.PING: FIRST,
    Command.RESET_CONNECTION: FIRST,
    Command.STMT_RESET: FIRST,
    Command.SET_OPTION: FIRST,
    Command.REFRESH: FIRST,
    Command.PROCESS_KILL: FIRST,
    Command.PROCESS_INFO: FIRST,
    Command.DEBUG: FIRST,
    Command.CREATE_DB: FIRST,
    Command.DROP_DB: FIRST,
    Command.SHUTDOWN: FIRST,
    Command.STMT_FETCH: ROWS,
    Command.FIELD_LIST: ROWS,
    Command.STMT_PREPARE: PREPARE,
    Command.STATISTICS: SINGLE,
    Command.STMT_CLOSE: NO_RESPONSE,
    Command.STMT_SEND_LONG_DATA: NO_RESPONSE,
    Command.QUIT: NO_RESPONSE,
}
"""How the response to each relayable command starts. Commands not listed are not relayed."""


class ResponseScanner:
    """Feed it the bytes of one response at a time; `feed` says where the response ends.

    After a response ends: `status` and `warnings` are those of its last OK/EOF, `failed`
    tells whether it ended in ERR, `state_changes` holds the OK payloads that reported
    session state, and `untracked` says an EOF reported a change it could not describe.
    With `strip_state` (a client without CLIENT_SESSION_TRACK), `edits` lists the OK packets
    to rewrite without their state block, as (start, end, replacement) stream offsets.
    `infile` is set when the server asked for a LOCAL INFILE upload: the caller must then
    forward the client's file packets, after which the server answers.
    """

    __slots__ = (
        "_base",
        "_carry",
        "_continued",
        "_count",
        "_skip",
        "_state",
        "_want",
        "affected_rows",
        "deprecate_eof",
        "edits",
        "failed",
        "fed",
        "infile",
        "insert_id",
        "result_set",
        "state_changes",
        "status",
        "strip_state",
        "untracked",
        "warnings",
    )

    def __init__(self, deprecate_eof: bool = False) -> None:
        self.deprecate_eof = deprecate_eof
        self._carry = bytearray()
        self._state = DONE
        self._count = 0
        self._skip = 0
        self._want = 0
        self._continued = False
        self.status = 0
        self.warnings = 0
        self.failed = False
        self.infile = False
        self.insert_id = 0
        self.affected_rows = 0
        self.result_set = False
        self.state_changes: list[bytes] = []
        self.untracked = False
        self.strip_state = False
        self.edits: list[tuple[int, int, bytes]] = []
        self.fed = 0  # bytes of the current response consumed so far (offsets for `edits`)
        self._base = 0

    @property
    def done(self) -> bool:
        return self._state == DONE

    def start(self, mode: int) -> None:
        """Expect a new response of `mode` (see RESPONSE_MODES)."""
        self._state = mode
        self._count = 0
        self._skip = 0
        self._continued = False
        if self._carry:
            self._carry.clear()
        self.failed = False
        self.infile = False
        self.insert_id = 0
        self.warnings = 0
        self.fed = 0
        if self.state_changes:
            self.state_changes = []
        self.untracked = False

    @property
    def held(self) -> int:
        """Bytes at the end of what was fed that belong to a packet not yet complete."""
        return len(self._carry)

    def feed(self, data: bytes) -> int:
        """Consume `data`; return the offset just past the response's end, or -1 if it goes on."""
        if self._carry:
            end = self._feed(data)
        else:  # (the common case: no packet straddles the previous chunk)
            self._base = self.fed
            end = self._scan(data, 0)
        self.fed += len(data)
        return end

    def _feed(self, data: bytes) -> int:
        pos = 0
        carry = self._carry
        while carry:  # finish the packet that straddled the previous chunk
            need = self._want - len(carry)
            if need > len(data) - pos:
                carry += data[pos:]
                return -1
            carry += data[pos : pos + need]
            pos += need
            buf = bytes(carry)
            carry.clear()
            self._base = self.fed + pos - len(buf)
            end = self._scan(buf, 0)
            if end >= 0:
                return pos - (len(buf) - end)
        self._base = self.fed
        return self._scan(data, pos)

    def _stash(self, data: bytes, pos: int, want: int) -> int:
        self._carry += data[pos:]
        self._want = want
        return -1

    def _scan(self, data: bytes, pos: int) -> int:
        n = len(data)
        if self._skip:
            if self._skip > n - pos:
                self._skip -= n - pos
                return -1
            pos += self._skip
            self._skip = 0
            if self._state == DONE:  # the skipped packet was the response's last
                return pos
        state = self._state
        if state == FIRST and n - pos > 4:
            head, count = _row_head(data, pos)
            length = head & 0xFFFFFF
            if not count and 0 < length < MAX_PAYLOAD and pos + 4 + length <= n:
                # Fast path for an OK, whole (the loop below takes any other first packet).
                self.result_set = False
                status = self._ok(data, pos + 4, length)
                self.status = status
                pos += 4 + length
                if not status & _MORE:
                    self._state = DONE
                    return pos
            elif length == 1 and 0 < count < 0xFB:
                # Fast path for the head of a result set: its column count, the column
                # definitions (headers only) and, without DEPRECATE_EOF, their EOF. What it
                # does not expect (a piece of a packet, 16 MiB ones) the loop below takes on.
                self.result_set = True
                pos += 5
                state = COLUMNS
                while pos + 4 <= n:
                    length = unpack_u32(data, pos)[0] & 0xFFFFFF
                    if length == MAX_PAYLOAD:
                        break
                    pos += 4 + length
                    count -= 1
                    if not count:
                        state = ROWS if self.deprecate_eof else COLUMNS_EOF
                        break
                self._count = count
                if pos >= n:
                    self._state = state
                    self._skip = pos - n
                    return -1
                if (
                    state == COLUMNS_EOF
                    and pos + 9 <= n
                    and unpack_u32(data, pos)[0] & 0xFFFFFF == 5
                    and data[pos + 4] == 0xFE
                ):
                    status = data[pos + 7] | data[pos + 8] << 8
                    self.status = status
                    if status & _STATE_CHANGED:
                        self.untracked = True
                    pos += 9
                    if status & _CURSOR:
                        self._state = DONE
                        return pos
                    state = ROWS
        while pos < n:
            if state == ROWS and not self._continued:
                # Fast path for the bulk of a result set: plain rows, neither a terminator, an
                # ERR, nor a 16 MiB piece. Only the header and first payload byte are read (an
                # empty packet is a row here, as below; its "first byte" is the next header's).
                last = n - 5
                while pos <= last:
                    head, first = _row_head(data, pos)
                    length = head & 0xFFFFFF
                    if first >= 0xFE or length == MAX_PAYLOAD:
                        if (
                            first == 0xFE
                            and length > 0
                            and (length < 9 or (self.deprecate_eof and length < MAX_PAYLOAD))
                            and pos + 4 + length <= n
                        ):  # its terminator, whole (the loop below takes any other case)
                            state = self._terminator(data, pos + 4, length)
                            pos += 4 + length
                            if state == DONE:
                                self._state = DONE
                                return pos
                        break
                    pos += 4 + length
                else:
                    if pos >= n:
                        self._state = state
                        self._skip = pos - n
                        return -1
                if state != ROWS:
                    continue
            if n - pos < 4:
                self._state = state
                return self._stash(data, pos, 4)
            length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            end = pos + 4 + length
            if self._continued:
                self._continued = length == MAX_PAYLOAD
            elif state == ROWS:
                if length:
                    if n - pos < 5:
                        self._state = state
                        return self._stash(data, pos, 5)
                    first = data[pos + 4]
                    if first == 0xFE and (
                        length < 9 or (self.deprecate_eof and length < MAX_PAYLOAD)
                    ):
                        if end > n:
                            self._state = state
                            return self._stash(data, pos, 4 + length)
                        state = self._terminator(data, pos + 4, length)
                    elif first == 0xFF:
                        if end > n:
                            self._state = state
                            return self._stash(data, pos, 4 + length)
                        self.failed = True
                        state = DONE
                    else:
                        self._continued = length == MAX_PAYLOAD
            elif state == COLUMNS:
                self._count -= 1
                if not self._count:
                    state = ROWS if self.deprecate_eof else COLUMNS_EOF
            elif state == SKIP:
                self._count -= 1
                if not self._count:
                    state = DONE
            elif state == DONE:
                raise ProtocolError("server sent data after the end of its response")
            else:
                if end > n:
                    self._state = state
                    return self._stash(data, pos, 4 + length)
                if not length:
                    raise ProtocolError("empty packet where a response was expected")
                state = self._whole(state, data, pos + 4, length)
            if end > n:
                self._state = state
                self._skip = end - n
                return -1
            pos = end
            if state == DONE:
                self._state = DONE
                return pos
        self._state = state
        return -1

    def _terminator(self, data: bytes, p: int, length: int) -> int:
        """EOF or (under DEPRECATE_EOF) OK closing a result set or a piece of one. Under
        DEPRECATE_EOF it is an OK, however short (its warnings follow affected rows and
        last insert id), unless it has an EOF's 5 bytes (an OK has at least 7)."""
        if length < 9 and (not self.deprecate_eof or length < 7):
            if length < 5:
                raise ProtocolError(f"EOF packet of {length} bytes (expected 5)")
            self.warnings, status = _two_u16(data, p + 1)
            if status & _STATE_CHANGED:
                self.untracked = True  # an EOF says state changed but cannot say how
        else:
            status = self._ok(data, p, length)
        self.status = status
        return FIRST if status & _MORE else DONE

    def _ok(self, data: bytes, p: int, length: int) -> int:
        """Status of an OK packet; keeps what it reports of session state.

        The packet is whole in `data` (which may go on with the next ones): every read is
        checked against its length, never against the end of `data`."""
        if length < 7:
            raise ProtocolError(f"OK packet of {length} bytes (expected at least 7)")
        b = data[p + 1]  # affected rows: what ROW_COUNT() now returns for a statement
        c = data[p + 2]  # last insert id: what LAST_INSERT_ID() now returns on this connection
        if b < 0xFB and c < 0xFB:  # (the common case: both are one byte)
            self.affected_rows = b
            if c:
                self.insert_id = c
            q = p + 3
        else:
            end = p + length
            if b < 0xFB:
                self.affected_rows = b
                q = p + 2
            else:
                n = 2 if b == 0xFC else 3 if b == 0xFD else 8
                self.affected_rows = int.from_bytes(data[p + 2 : p + 2 + n], "little")
                q = p + 2 + n
                if q + 5 > end:
                    raise ProtocolError("truncated OK packet")
            b = data[q]
            if b:
                if b < 0xFB:
                    self.insert_id = b
                    q += 1
                else:
                    n = 2 if b == 0xFC else 3 if b == 0xFD else 8
                    self.insert_id = int.from_bytes(data[q + 1 : q + 1 + n], "little")
                    q += 1 + n
                    if q + 4 > end:
                        raise ProtocolError("truncated OK packet")
            else:
                q += 1
        status, self.warnings = _two_u16(data, q)
        if status & _STATE_CHANGED:
            payload = bytes(data[p : p + length])
            self.state_changes.append(payload)
            if self.strip_state:
                start = self._base + p - 4
                stripped = strip_session_state(payload)
                self.edits.append((start, start + 4 + length, frame(data[p - 1], stripped)))
        return status

    def _whole(self, state: int, data: bytes, p: int, length: int) -> int:
        first = data[p]
        if first == 0xFF:
            self.failed = True
            return DONE
        if state == FIRST:
            if first == 0x00:
                self.result_set = False
                status = self._ok(data, p, length)
                self.status = status
                return FIRST if status & _MORE else DONE
            if first == 0xFE:
                return self._terminator(data, p, length)
            if first == 0xFB:
                self.infile = True
                return FIRST
            count = first
            if first >= 0xFB:
                if first == 0xFC and length >= 3:
                    count = data[p + 1] | data[p + 2] << 8
                else:
                    raise ProtocolError(f"unexpected response header 0x{first:02x}")
            self._count = count
            self.result_set = True
            return COLUMNS
        if state == COLUMNS_EOF:
            if first != 0xFE or length < 5:
                raise ProtocolError("expected EOF after column definitions")
            status = data[p + 3] | data[p + 4] << 8
            self.status = status
            if status & _STATE_CHANGED:
                self.untracked = True
            if status & _CURSOR:
                return DONE
            return ROWS
        if state == PREPARE:
            if first != 0x00 or length < 9:
                raise ProtocolError("malformed COM_STMT_PREPARE response")
            columns = data[p + 5] | data[p + 6] << 8
            params = data[p + 7] | data[p + 8] << 8
            eofs = 0 if self.deprecate_eof else (params > 0) + (columns > 0)
            self._count = params + columns + eofs
            return SKIP if self._count else DONE
        return DONE  # SINGLE
