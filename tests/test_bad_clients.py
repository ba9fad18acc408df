"""Malformed, oversized, truncated and slow clients get a clear answer and a logged reason;
sluice and every other client carry on."""

from __future__ import annotations

import logging
import socket
import time

import pymysql
import pytest

from proxy.protocol.auth import native_token, stage1
from proxy.protocol.constants import Capability
from proxy.protocol.framing import MessageReader, frame
from proxy.protocol.handshake import Greeting, HandshakeResponse
from proxy.protocol.messages import parse_err

from .harness import TierThread, tier_config

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def strict_tier(sandbox):
    config = tier_config(sandbox, limits={"max_packet_size": "1MiB", "handshake_timeout": "1s"})
    with TierThread(config) as running:
        yield running


def raw_connect(port: int) -> tuple[socket.socket, MessageReader]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock, MessageReader(1 << 26)


def read_message(sock: socket.socket, reader: MessageReader):
    while True:
        msg = reader.next_message()
        if msg is not None:
            return msg
        data = sock.recv(65536)
        if not data:
            return None
        reader.feed(data)


def login(port: int, password: str) -> tuple[socket.socket, MessageReader]:
    sock, reader = raw_connect(port)
    greeting = Greeting.parse(read_message(sock, reader).payload)
    caps = (
        Capability.PROTOCOL_41
        | Capability.SECURE_CONNECTION
        | Capability.PLUGIN_AUTH
        | Capability.LONG_PASSWORD
        | Capability.TRANSACTIONS
    )
    response = HandshakeResponse(
        caps,
        1 << 24,
        45,
        "app",
        native_token(stage1(password), greeting.scramble),
        None,
        "mysql_native_password",
    )
    sock.sendall(frame(1, response.payload()))
    assert read_message(sock, reader).payload[0] == 0x00
    return sock, reader


def assert_closed(sock: socket.socket, reader: MessageReader) -> None:
    """The server closed the connection (after whatever it still had to say)."""
    sock.settimeout(5)
    while read_message(sock, reader) is not None:
        pass


def still_serves(tier: TierThread, sandbox) -> None:
    conn = pymysql.connect(
        host="127.0.0.1", port=tier.port, user="app", password=sandbox.users["app"].password
    )
    with conn.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)
    conn.close()


def test_garbage_instead_of_a_handshake_gets_a_handshake_error(strict_tier, sandbox, caplog):
    sock, reader = raw_connect(strict_tier.port)
    read_message(sock, reader)  # greeting
    started = time.monotonic()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # header announces a ~5 MB packet
    err = parse_err(read_message(sock, reader).payload)
    assert err.code == 1043
    assert err.message.startswith("sluice: bad handshake")
    assert time.monotonic() - started < 1.0  # refused at once, not after a timeout
    assert_closed(sock, reader)
    assert "bad handshake" in caplog.text
    still_serves(strict_tier, sandbox)


def test_truncated_handshake_response_times_out_with_an_error(strict_tier, sandbox, caplog):
    sock, reader = raw_connect(strict_tier.port)
    read_message(sock, reader)
    sock.sendall(b"\x40\x00\x00\x01" + b"\x00" * 10)  # 64-byte packet announced, 10 sent
    err = parse_err(read_message(sock, reader).payload)
    assert err.code == 1043
    assert "timed out" in err.message
    assert_closed(sock, reader)
    assert "handshake timed out" in caplog.text
    still_serves(strict_tier, sandbox)


def test_short_handshake_response_is_refused(strict_tier, sandbox):
    sock, reader = raw_connect(strict_tier.port)
    read_message(sock, reader)
    sock.sendall(frame(1, b"\x01\x02\x03"))
    err = parse_err(read_message(sock, reader).payload)
    assert err.code == 1043 and err.message.startswith("sluice:")
    assert_closed(sock, reader)


def test_client_that_connects_and_says_nothing_is_dropped_after_the_timeout(strict_tier):
    sock, reader = raw_connect(strict_tier.port)
    read_message(sock, reader)
    started = time.monotonic()
    err = parse_err(read_message(sock, reader).payload)
    assert err.code == 1043
    assert 0.5 < time.monotonic() - started < 5
    assert_closed(sock, reader)


def test_command_with_a_wrong_sequence_id_disconnects_that_client_only(
    strict_tier, sandbox, caplog
):
    other = pymysql.connect(
        host="127.0.0.1", port=strict_tier.port, user="app", password=sandbox.users["app"].password
    )
    sock, reader = login(strict_tier.port, sandbox.users["app"].password)
    sock.sendall(frame(5, b"\x03SELECT 1"))
    assert_closed(sock, reader)
    assert "protocol violation" in caplog.text
    with other.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    other.close()


def test_oversized_statement_gets_error_1153_and_others_carry_on(strict_tier, sandbox, caplog):
    conn = pymysql.connect(
        host="127.0.0.1",
        port=strict_tier.port,
        user="app",
        password=sandbox.users["app"].password,
        max_allowed_packet=64 << 20,
    )
    with pytest.raises(pymysql.err.OperationalError) as info, conn.cursor() as cur:
        cur.execute("SELECT %s", ("x" * (2 * LIMIT),))
    assert info.value.args[0] == 1153
    assert info.value.args[1].startswith("sluice:")
    assert "max_packet_size" in info.value.args[1]
    assert "exceeds the limit" in caplog.text
    still_serves(strict_tier, sandbox)


def test_garbage_after_login_is_answered_or_disconnected_never_hangs(strict_tier, sandbox):
    sock, reader = login(strict_tier.port, sandbox.users["app"].password)
    sock.sendall(b"\x05\x00\x00\x00\xee\xee\xee\xee\xee")  # unknown command 0xee
    err = parse_err(read_message(sock, reader).payload)
    assert err.code == 1047 and err.message.startswith("sluice:")
    sock.sendall(frame(0, b"\x03SELECT 5"))
    assert read_message(sock, reader).payload == b"\x01"  # one column: still serving
    sock.close()


def test_client_vanishing_mid_packet_leaves_nothing_behind(strict_tier, sandbox, caplog):
    caplog.set_level(logging.INFO)
    sock, _ = login(strict_tier.port, sandbox.users["app"].password)
    sock.sendall(b"\xff\x00\x00\x00\x03SELECT")  # 255-byte packet, 7 bytes sent
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and strict_tier.run(lambda: len(strict_tier.tier.sessions)):
        time.sleep(0.05)
    assert strict_tier.run(lambda: len(strict_tier.tier.sessions)) == 0
    still_serves(strict_tier, sandbox)


def test_client_beyond_max_clients_gets_1040_not_a_reset(sandbox):
    config = tier_config(sandbox, limits={"max_clients": 3})
    with TierThread(config) as tier:
        kept = [
            pymysql.connect(
                host="127.0.0.1", port=tier.port, user="app", password=sandbox.users["app"].password
            )
            for _ in range(3)
        ]
        with pytest.raises(pymysql.err.OperationalError) as info:
            pymysql.connect(
                host="127.0.0.1", port=tier.port, user="app", password=sandbox.users["app"].password
            )
        code, message = info.value.args
        assert code == 1040
        assert message.startswith("sluice: too many client connections (limits.max_clients = 3)")
        kept.pop().close()
        deadline = time.monotonic() + 5
        while tier.run(lambda: len(tier.tier.sessions)) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        again = pymysql.connect(
            host="127.0.0.1", port=tier.port, user="app", password=sandbox.users["app"].password
        )  # room again
        again.close()
        for conn in kept:
            conn.close()
