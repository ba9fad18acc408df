"""A minimal asyncio MySQL client for prepared statements under load (aiomysql has none).

Built on sluice's sans-I/O protocol code; enough for: log in, prepare, execute with integer
parameters, read the first column of a binary row.
"""

from __future__ import annotations

import asyncio
import struct

from proxy.protocol.auth import native_token, stage1
from proxy.protocol.capabilities import AS_CLIENT
from proxy.protocol.framing import MessageReader, frame
from proxy.protocol.handshake import Greeting, HandshakeResponse
from proxy.protocol.messages import parse_err

CAPS = AS_CLIENT  # what sluice asks for as a plain client


class AsyncRawError(Exception):
    pass


class AsyncRawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages = MessageReader(1 << 26)

    @classmethod
    async def connect(cls, port: int, user: str, password: str, db: str) -> AsyncRawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        greeting = Greeting.parse((await client.read()).payload)
        token = native_token(stage1(password), greeting.scramble)
        response = HandshakeResponse(CAPS, 1 << 24, 45, user, token, db, "mysql_native_password")
        writer.write(frame(1, response.payload()))
        client.check(await client.read())
        return client

    async def read(self):
        while True:
            msg = self.messages.next_message()
            if msg is not None:
                return msg
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            self.messages.feed(data)

    @staticmethod
    def check(msg):
        if msg.payload[0] == 0xFF:
            raise AsyncRawError(str(parse_err(msg.payload)))
        return msg

    async def prepare(self, sql: str) -> int:
        self.writer.write(frame(0, b"\x16" + sql.encode()))
        first = self.check(await self.read()).payload
        stmt_id, columns, params = struct.unpack_from("<IHH", first, 1)
        for _ in range(columns + params):  # DEPRECATE_EOF: no EOFs after definitions
            await self.read()
        return stmt_id

    async def execute_int(self, stmt_id: int, *values: int) -> int:
        """Execute with integer parameters; the first column of the first row, as an int."""
        payload = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1)
        if values:
            payload += bytes((len(values) + 7) // 8) + b"\x01"
            payload += b"\x08\x00" * len(values) + b"".join(struct.pack("<q", v) for v in values)
        self.writer.write(frame(0, payload))
        count = self.check(await self.read()).payload[0]
        for _ in range(count):
            await self.read()  # column definitions
        row = (await self.read()).payload  # 0x00, NULL bitmap, first value (LONGLONG)
        result = struct.unpack_from("<q", row, 1 + (count + 7 + 2) // 8)[0]
        while (await self.read()).payload[0] != 0xFE:  # until the closing OK
            pass
        return result

    async def close_statement(self, stmt_id: int) -> None:
        self.writer.write(frame(0, b"\x19" + struct.pack("<I", stmt_id)))

    def close(self) -> None:
        self.writer.write(frame(0, b"\x01"))
        self.writer.close()
