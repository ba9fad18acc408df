"""Packet framing: 4-byte headers, 16 MiB continuation, logical messages.

A logical message is one or more packets; every packet but the last has a payload of exactly
MAX_PAYLOAD bytes. Messages keep their raw framed bytes so a proxy can forward them untouched
(no re-framing, no copy) and their reassembled payload so it can look inside.
"""

from __future__ import annotations

from .codec import ProtocolError
from .constants import MAX_PAYLOAD


class PacketTooLarge(ProtocolError):
    """A message is larger than the configured limit (max_packet_size)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def frame(seq: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Frame a payload as packets starting at sequence id `seq` (continuations included)."""
    length = len(payload)
    if length < MAX_PAYLOAD:
        return length.to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_PAYLOAD]
        out += len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,))
        out += chunk
        seq += 1
        pos += MAX_PAYLOAD
        if len(chunk) < MAX_PAYLOAD:
            return bytes(out)


def packet_count(payload_length: int) -> int:
    """Number of packets `frame` produces for a payload of this length."""
    return payload_length // MAX_PAYLOAD + 1


class Message:
    """One logical message as received: where it started, its payload and its framed bytes."""

    __slots__ = ("last_seq", "payload", "raw", "seq")

    def __init__(self, seq: int, last_seq: int, payload: bytes, raw: bytes) -> None:
        self.seq = seq
        self.last_seq = last_seq
        self.payload = payload
        self.raw = raw

    def __repr__(self) -> str:
        return f"Message(seq={self.seq}, len={len(self.payload)}, head={self.payload[:16]!r})"


def single_packet(data: bytes) -> bool:
    """True when `data` is exactly one complete packet that ends a message (the common case)."""
    n = len(data)
    if n < 4:
        return False
    length = data[0] | data[1] << 8 | data[2] << 16
    return length + 4 == n and length != MAX_PAYLOAD


class MessageReader:
    """Buffers a byte stream and hands out complete logical messages.

    `max_size` bounds the reassembled payload: a peer announcing more is refused with
    PacketTooLarge as soon as the header says so, before any of it is buffered.
    """

    __slots__ = ("_max_size", "buf")

    def __init__(self, max_size: int) -> None:
        self.buf = bytearray()  # what does not yet form a whole message (the hot path tests it)
        self._max_size = max_size

    @property
    def max_size(self) -> int:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        self._max_size = value

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole message."""
        return len(self.buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data

    def take(self) -> bytes:
        """Remove and return everything buffered (for switching to raw forwarding)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def next_message(self) -> Message | None:
        buf = self.buf
        n = len(buf)
        pos = 0
        total = 0
        parts: list[int] = []
        while True:
            if n - pos < 4:
                return None
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            total += length
            if total > self._max_size:
                raise PacketTooLarge(total, self._max_size)
            if pos + 4 + length > n:
                return None
            parts.append(pos)
            pos += 4 + length
            if length != MAX_PAYLOAD:
                break
        raw = bytes(buf[:pos])
        del buf[:pos]
        first_seq = raw[3]
        if len(parts) == 1:
            payload = raw[4:]
        else:
            payload = b"".join(
                raw[p + 4 : p + 4 + (raw[p] | raw[p + 1] << 8 | raw[p + 2] << 16)] for p in parts
            )
        return Message(first_seq, raw[parts[-1] + 3], payload, raw)


class InfileTracker:
    """Finds the empty packet that ends a LOCAL INFILE upload, walking headers only."""

    __slots__ = ("_carry", "_continued", "_skip", "last_seq")

    def __init__(self) -> None:
        self._skip = 0
        self._continued = False
        self._carry = b""
        self.last_seq = 0

    def feed(self, data: bytes) -> int:
        """Offset just past the terminating empty packet in `data`, or -1."""
        base = len(self._carry)  # a carried partial header precedes `data`
        buf = self._carry + data if base else data
        self._carry = b""
        pos = 0
        n = len(buf)
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return -1
            pos = self._skip
            self._skip = 0
        while pos < n:
            if n - pos < 4:
                self._carry = bytes(buf[pos:])
                return -1
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            self.last_seq = buf[pos + 3]
            end = pos + 4 + length
            if length == 0 and not self._continued:
                return end - base
            self._continued = length == MAX_PAYLOAD
            if end > n:
                self._skip = end - n
                return -1
            pos = end
        return -1
