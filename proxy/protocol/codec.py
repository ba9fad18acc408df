"""Primitive field codecs: length-encoded integers and strings, NUL-terminated strings.

Readers take a buffer and an offset and return (value, next offset); they raise ProtocolError on
truncated input so that malformed packets fail loudly instead of being misread.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
unpack_u32 = _U32.unpack_from
"""(value,) of the little-endian u32 at an offset, for hot paths: a packet's header read as
one number is its length, with its sequence id in the top byte."""


class ProtocolError(ValueError):
    """The peer sent bytes that are not valid protocol at this point."""


def read_lenenc_int(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    try:
        first = buf[pos]
        if first < 0xFB:
            return first, pos + 1
        if first == 0xFC:
            return buf[pos + 1] | buf[pos + 2] << 8, pos + 3
        if first == 0xFD:
            return buf[pos + 1] | buf[pos + 2] << 8 | buf[pos + 3] << 16, pos + 4
        if first == 0xFE:
            if pos + 9 > len(buf):
                raise ProtocolError("truncated 8-byte length-encoded integer")
            return _U64.unpack_from(buf, pos + 1)[0], pos + 9
    except IndexError:
        raise ProtocolError("truncated length-encoded integer") from None
    raise ProtocolError(f"invalid length-encoded integer prefix 0x{first:02x}")


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + _U16.pack(value)
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + _U64.pack(value)


def read_lenenc_bytes(buf: bytes | bytearray | memoryview, pos: int) -> tuple[bytes, int]:
    length, pos = read_lenenc_int(buf, pos)
    end = pos + length
    if end > len(buf):
        raise ProtocolError("truncated length-encoded string")
    return bytes(buf[pos:end]), end


def lenenc_bytes(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def read_nul_bytes(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("missing NUL terminator")
    return bytes(buf[pos:end]), end + 1


def read_u16(buf: bytes | bytearray | memoryview, pos: int) -> int:
    if pos + 2 > len(buf):
        raise ProtocolError("truncated 2-byte integer")
    return buf[pos] | buf[pos + 1] << 8


def read_u32(buf: bytes | bytearray | memoryview, pos: int) -> int:
    if pos + 4 > len(buf):
        raise ProtocolError("truncated 4-byte integer")
    return _U32.unpack_from(buf, pos)[0]


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)
