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

from .codec import ProtocolError
from .constants import MAX_PAYLOAD, Command, Status

FIRST, COLUMNS, COLUMNS_EOF, ROWS, PREPARE, SKIP, SINGLE, DONE = range(8)

_u32 = struct.Struct("<I").unpack_from
_MORE = int(Status.MORE_RESULTS_EXISTS)
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


def _ok_status(data: bytes, p: int) -> int:
    """Status flags of an OK packet whose header byte is at p (skips two lenenc integers)."""
    p += 1
    for _ in range(2):
        b = data[p]
        p += 1 if b < 0xFB else 3 if b == 0xFC else 4 if b == 0xFD else 9
    return data[p] | data[p + 1] << 8


class ResponseScanner:
    """Feed it the bytes of one response at a time; `feed` says where the response ends.

    After a response ends: `status` holds the server status flags of its last OK/EOF,
    `failed` tells whether it ended in ERR, and `last_ok` is the payload of its final OK/EOF
    (for session tracking). `infile` is set when the server asked for a LOCAL INFILE upload:
    the caller must then forward the client's file packets, after which the server answers.
    """

    __slots__ = (
        "_carry",
        "_continued",
        "_count",
        "_skip",
        "_state",
        "_want",
        "deprecate_eof",
        "failed",
        "infile",
        "last_ok",
        "status",
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
        self.failed = False
        self.infile = False
        self.last_ok = b""

    @property
    def done(self) -> bool:
        return self._state == DONE

    def start(self, mode: int) -> None:
        """Expect a new response of `mode` (see RESPONSE_MODES)."""
        self._state = mode
        self._count = 0
        self._skip = 0
        self._continued = False
        self._carry.clear()
        self.failed = False
        self.infile = False

    def feed(self, data: bytes) -> int:
        """Consume `data`; return the offset just past the response's end, or -1 if it goes on."""
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
            end = self._scan(buf, 0)
            if end >= 0:
                return pos - (len(buf) - end)
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
        while pos < n:
            if state == ROWS and not self._continued:
                # Fast path for the bulk of a result set: plain rows, neither a terminator, an
                # ERR, nor a 16 MiB piece. Only the header and first payload byte are read.
                while pos + 5 <= n:
                    length = _u32(data, pos)[0] & 0xFFFFFF
                    if data[pos + 4] >= 0xFE or not 0 < length < MAX_PAYLOAD:
                        break
                    pos += 4 + length
                if pos >= n:
                    self._state = state
                    self._skip = pos - n
                    return -1
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
        """EOF or (under DEPRECATE_EOF) OK closing a result set or a piece of one."""
        status = data[p + 3] | data[p + 4] << 8 if length < 9 else _ok_status(data, p)
        self.status = status
        self.last_ok = data[p : p + length]
        return FIRST if status & _MORE else DONE

    def _whole(self, state: int, data: bytes, p: int, length: int) -> int:
        first = data[p]
        if first == 0xFF:
            self.failed = True
            return DONE
        if state == FIRST:
            if first == 0x00:
                status = _ok_status(data, p)
                self.status = status
                self.last_ok = data[p : p + length]
                return FIRST if status & _MORE else DONE
            if first == 0xFE:
                return self._terminator(data, p, length)
            if first == 0xFB:
                self.infile = True
                return FIRST
            count = first
            if first >= 0xFB:
                if first == 0xFC:
                    count = data[p + 1] | data[p + 2] << 8
                else:
                    raise ProtocolError(f"unexpected response header 0x{first:02x}")
            self._count = count
            return COLUMNS
        if state == COLUMNS_EOF:
            if first != 0xFE:
                raise ProtocolError("expected EOF after column definitions")
            status = data[p + 3] | data[p + 4] << 8
            self.status = status
            if status & _CURSOR:
                self.last_ok = data[p : p + length]
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
