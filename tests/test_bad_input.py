"""Bad input never wedges a session: names in the client's own character set, a safety net
around every session, and a live fuzz of logins and commands against two real tiers.

Each test here reproduces a way a session used to hang (no answer, a pooled connection never
given back) and checks that the client now gets what the database itself would answer."""

from __future__ import annotations

import random
import socket
import struct
import time

import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.config import parse_config
from proxy.protocol.auth import native_token, stage1
from proxy.protocol.constants import Capability
from proxy.protocol.framing import frame
from proxy.protocol.handshake import Greeting, HandshakeResponse

from .harness import TierThread, scalar, tier_config
from .rawclient import BASE_CAPABILITIES, RawClient, RawError

LOCAL_POOL = 4
LATIN1 = 8  # latin1_swedish_ci
UTF8MB4 = 45
ACCENTED = "jos\xe9"  # "josé": one byte in latin1, two in UTF-8


@pytest.fixture(scope="module")
def accented_user(sandbox):
    """A database user whose name is not ASCII, configured in sluice too."""
    for server in sandbox.servers:
        if server.role == "primary":
            sandbox_mod.sql(
                server,
                f"CREATE USER IF NOT EXISTS '{ACCENTED}'@'%' IDENTIFIED BY 'pw-jose';"
                f"GRANT SELECT ON app.* TO '{ACCENTED}'@'%'",
            )
    sandbox_mod.wait_replicas_caught_up(sandbox)
    return ACCENTED


@pytest.fixture(scope="module")
def chain(sandbox, accented_user):
    """A remote tier and a local tier (pool of 4, 2 s handshake timeout) in front of it."""
    users = [
        {"name": "app", "password": sandbox.users["app"].password},
        {"name": accented_user, "password": "pw-jose"},
    ]
    remote = TierThread(
        tier_config(sandbox, users=users, auth={"failure_delay": {"max": 0}})
    ).start()
    local = TierThread(
        parse_config(
            {
                "tier": "local",
                "listen": ["127.0.0.1:0"],
                "users": users,
                "upstream": {
                    "servers": [{"name": "remote1", "address": f"127.0.0.1:{remote.port}"}]
                },
                "pool": {"max_connections": LOCAL_POOL, "acquire_timeout": "3s"},
                "limits": {"handshake_timeout": "2s"},
                # These tests time each answer to bad logins; the slow-down for repeated
                # failures (tested on its own) would only stretch them.
                "auth": {"failure_delay": {"max": 0}},
            },
            allow_zero_port=True,
        )
    ).start()
    yield remote, local
    local.stop()
    remote.stop()


def handshake_sessions(tier: TierThread) -> int:
    return tier.run(lambda: sum(1 for s in tier.tier.sessions.values() if s.state == 0))


def pool_counts(tier: TierThread) -> tuple[int, int]:
    """(active, idle) over every pool of the tier."""

    def count() -> tuple[int, int]:
        pools = tier.tier.pools.pools.values()
        return sum(p.active for p in pools), sum(len(p.idle) for p in pools)

    return tier.run(count)


def session_settles(tier: TierThread, session_id: int, within: float = 3.0) -> bool:
    """Whether the session ends up idle or gone (not busy or logging in) within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = tier.run(lambda: getattr(tier.tier.sessions.get(session_id), "state", None))
        if state not in (0, 2):  # HANDSHAKE, BUSY
            return True
        time.sleep(0.05)
    return False


def login_error(port: int, user: str, charset: str, password: str = "x") -> int:
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(
            host="127.0.0.1",
            port=port,
            user=user,
            password=password,
            charset=charset,
            connect_timeout=10,
            read_timeout=10,
        )
    assert time.monotonic() - started < 5, "the login got no prompt answer"
    return info.value.args[0]


def test_unknown_latin1_name_gets_the_databases_1045_through_both_tiers(sandbox, chain):
    remote, local = chain
    direct = sandbox.primary
    assert login_error(direct.port, "jos\xe9x", "latin1") == 1045
    for _ in range(50):
        assert login_error(local.port, "jos\xe9x", "latin1") == 1045
    assert login_error(remote.port, "jos\xe9x", "latin1") == 1045
    assert handshake_sessions(local) == 0
    assert handshake_sessions(remote) == 0


@pytest.mark.parametrize("charset", ["latin1", "utf8mb4"])
def test_configured_accented_user_logs_in_with_its_own_charset(chain, accented_user, charset):
    _, local = chain
    conn = pymysql.connect(
        host="127.0.0.1",
        port=local.port,
        user=accented_user,
        password="pw-jose",
        charset=charset,
        database="app",
    )
    try:
        assert scalar(conn, "SELECT CURRENT_USER()") == f"{accented_user}@%"
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def change_user_payload(user: bytes, charset: int) -> bytes:
    """COM_CHANGE_USER with a raw user name and a trailing charset."""
    return b"\x11" + user + b"\0" + b"\x00" + b"app\0" + struct.pack("<H", charset)


def test_change_user_to_a_latin1_name_inside_a_transaction_answers_and_frees_the_pool(
    sandbox, chain
):
    """Once, 4 such change-users on a pool of 4 left no connection for anyone."""
    _, local = chain
    clients = []
    for _ in range(LOCAL_POOL):
        client = RawClient.connect(
            ("127.0.0.1", local.port), "app", sandbox.users["app"].password, "app"
        )
        client.query("BEGIN")
        client.query("SELECT 1")  # the transaction holds a pooled connection now
        clients.append(client)
    for client in clients:
        client.command(change_user_payload("jos\xe9".encode("latin1"), LATIN1))
        client.sock.settimeout(5)
        payload = client.read_payload()
        assert payload[0] == 0xFF, payload
        assert struct.unpack_from("<H", payload, 1)[0] == 1045
        client.sock.close()
    started = time.monotonic()
    conn = pymysql.connect(
        host="127.0.0.1",
        port=local.port,
        user="app",
        password=sandbox.users["app"].password,
        database="app",
        connect_timeout=5,
    )
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()
    assert time.monotonic() - started < 2
    deadline = time.monotonic() + 5
    while pool_counts(local)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_counts(local)[0] == 0


def test_change_user_auth_switch_answered_in_a_later_packet_is_read(sandbox, chain):
    """The live fuzz found it: a change-user that needs an auth switch waited forever when the
    client's answer arrived after sluice had started waiting for it."""
    _, local = chain
    password = sandbox.users["app"].password
    client = RawClient.connect(("127.0.0.1", local.port), "app", password, "app")
    client.query("BEGIN")
    client.query("SELECT 1")
    # A token of the wrong length makes sluice switch the client to mysql_native_password.
    client.command(b"\x11app\x00\x05short" + b"app\x00" + struct.pack("<H", UTF8MB4))
    client.sock.settimeout(5)
    switch = client.read_message()
    assert switch.payload[:1] == b"\xfe"
    time.sleep(0.3)  # sluice waits for the answer before it arrives
    scramble = switch.payload.split(b"\0", 1)[1].rstrip(b"\0")
    client.send(switch.last_seq + 1, native_token(stage1(password), scramble))
    assert client.read_payload()[:1] == b"\x00"  # changed: the session starts over
    assert client.query_one("SELECT 1").values == [("1",)]
    client.close()


def test_change_user_whose_client_never_answers_the_switch_times_out(sandbox, chain):
    _, local = chain
    password = sandbox.users["app"].password
    client = RawClient.connect(("127.0.0.1", local.port), "app", password, "app")
    client.query("BEGIN")
    client.query("SELECT 1")
    client.command(b"\x11app\x00\x05short" + b"app\x00" + struct.pack("<H", UTF8MB4))
    client.sock.settimeout(6)
    assert client.read_payload()[:1] == b"\xfe"
    started = time.monotonic()
    err = client.read_payload()  # no answer to the switch: limits.handshake_timeout (2 s)
    assert err[:1] == b"\xff" and struct.unpack_from("<H", err, 1)[0] == 1043
    assert b"timed out" in err
    assert 1.5 < time.monotonic() - started < 4
    client.sock.close()
    deadline = time.monotonic() + 3
    while pool_counts(local)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_counts(local)[0] == 0  # its transaction's connection is not held forever


# --- the live fuzz ----------------------------------------------------------------------------


def _greeting(sock: socket.socket) -> Greeting:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the greeting")
        data += chunk
    return Greeting.parse(data[4 : 4 + int.from_bytes(data[:3], "little")])


def _drain(sock: socket.socket, seconds: float) -> None:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _mutated_login(rng: random.Random, greeting: Greeting, password: str) -> bytes:
    caps = int(BASE_CAPABILITIES | Capability.CONNECT_ATTRS | Capability.CONNECT_WITH_DB)
    response = HandshakeResponse(
        caps,
        1 << 24,
        rng.choice((LATIN1, UTF8MB4, 63, 255, 0)),
        "app",
        native_token(stage1(password), greeting.scramble),
        "app",
        "mysql_native_password",
        {"_client_name": "fuzz"},
    )
    payload = bytearray(response.payload())
    for _ in range(rng.randint(1, 6)):
        what = rng.random()
        pos = rng.randrange(len(payload))
        if what < 0.5:
            payload[pos] = rng.randrange(256)
        elif what < 0.75:
            del payload[pos:]
            if not payload:
                payload.append(0)
        else:
            payload[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return frame(1, bytes(payload))


_COMMANDS = [
    b"\x03SELECT 1",
    b"\x11app\x00\x00app\x00\x2d\x00",  # change user
    b"\x16SELECT ?",  # prepare
    b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00",  # execute
    b"\x18\x01\x00\x00\x00\x00\x00abc",  # long data
    b"\x19\x01\x00\x00\x00",  # close
    b"\x1c\x01\x00\x00\x00\x01\x00\x00\x00",  # fetch
    b"\x0c\x01\x00\x00\x00",  # process kill
    b"\x1b\x00\x00",  # set option
    b"\x02app",  # init db
    b"\x04t\x00",  # field list
]


def _mutated_command(rng: random.Random) -> bytes:
    payload = bytearray(rng.choice(_COMMANDS))
    for _ in range(rng.randint(0, 4)):
        pos = rng.randrange(len(payload))
        if rng.random() < 0.6:
            payload[pos] = rng.randrange(256)
        else:
            payload[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    return bytes(payload)


def test_live_fuzz_of_logins_and_commands_leaves_both_tiers_serving(sandbox, chain):
    """Hundreds of mangled logins and commands through the local tier: afterwards nothing is
    stuck in the handshake, every pooled connection is back, a new client is served at once."""
    remote, local = chain
    rng = random.Random(15)
    password = sandbox.users["app"].password
    sockets = []
    for i in range(150):
        sock = socket.create_connection(("127.0.0.1", local.port), timeout=5)
        sockets.append(sock)
        greeting = _greeting(sock)
        sock.sendall(_mutated_login(rng, greeting, password))
        if i % 3 == 0:
            sock.close()  # some leave at once, the rest stay connected
    for _ in range(40):
        try:
            client = RawClient.connect(("127.0.0.1", local.port), "app", password, "app")
        except (RawError, OSError):
            continue
        try:
            if rng.random() < 0.5:
                client.query("BEGIN")
            for _ in range(rng.randint(1, 6)):
                client.command(_mutated_command(rng))
            _drain(client.sock, 0.2)
            # Every command got its answer (or the session was ended): none is left waiting
            # for something that will never come, with whatever it held.
            assert session_settles(local, client.greeting.connection_id), "a session hung"
        except OSError:
            pass
        finally:
            client.sock.close()
    try:
        # Past the 2 s handshake timeout nothing may be left half logged in (most of those
        # clients are still connected), and every pooled connection is back.
        deadline = time.monotonic() + 6
        while (handshake_sessions(local) or pool_counts(local)[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert handshake_sessions(local) == 0
        assert pool_counts(local)[0] == 0, "a pooled connection was never given back"
        started = time.monotonic()
        conn = pymysql.connect(
            host="127.0.0.1", port=local.port, user="app", password=password, database="app"
        )
        try:
            assert scalar(conn, "SELECT 2") == 2
        finally:
            conn.close()
        assert time.monotonic() - started < 1
        assert handshake_sessions(remote) == 0
    finally:
        for sock in sockets:
            sock.close()
