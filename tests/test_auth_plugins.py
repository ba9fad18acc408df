"""caching_sha2_password toward clients (the MySQL 9 client has no mysql_native_password) and
toward upstreams (MySQL 8 / Aurora MySQL 3 ask for it), byte by byte and end to end."""

from __future__ import annotations

import socket
import ssl
import struct

import pymysql
import pytest
from pymysql import _auth as oracle  # PyMySQL's client side: an independent implementation

from proxy.backend import UpstreamError, open_connection
from proxy.config import Address, native_password_hash
from proxy.errors import ClientError
from proxy.protocol.auth import native_token, new_scramble, sha2_token, sha256, stage1
from proxy.protocol.constants import Capability
from proxy.protocol.framing import MessageReader, frame
from proxy.protocol.handshake import AuthSwitchRequest, Greeting, HandshakeResponse
from proxy.protocol.plugins import (
    Account,
    CachingSha2Exchange,
    Denied,
    NativeExchange,
    Secrets,
    Send,
    UpstreamAuth,
    UpstreamAuthError,
    Verified,
    sha2_entry_of,
)
from proxy.users import Credential

from .certs import make_certs
from .conftest import short_tmp_dir
from .fake_mysql8 import FakeMySQL8
from .harness import TierThread, scalar, tier_config

PASSWORD = b"app-pass"


def account(*, plaintext: bool, learned: bool = False) -> Account:
    known = Secrets.of_password(PASSWORD) if plaintext else Secrets()
    if learned:
        known = Secrets.of_password(PASSWORD)
    return Account("app", native_password_hash(PASSWORD.decode()), known, sha2_entry_of(known))


# --- the exchanges, byte by byte ---------------------------------------------------------------


def test_native_exchange_verifies_from_the_hash_and_reveals_sha1():
    scramble = new_scramble()
    ex = NativeExchange(scramble, account(plaintext=False))
    (step,) = ex.receive(oracle.scramble_native_password(PASSWORD, scramble))
    assert isinstance(step, Verified) and step.secrets.stage1 == stage1(PASSWORD)
    (step,) = NativeExchange(scramble, account(plaintext=False)).receive(b"x" * 20)
    assert isinstance(step, Denied) and step.used_password


def test_sha2_fast_path_with_a_plaintext_user():
    scramble = new_scramble()
    ex = CachingSha2Exchange(scramble, account(plaintext=True), secure=False)
    steps = ex.receive(oracle.scramble_caching_sha2(PASSWORD, scramble))
    assert steps[0] == Send(b"\x01\x03")
    assert isinstance(steps[1], Verified) and steps[1].secrets.stage1 == stage1(PASSWORD)


def test_sha2_full_authentication_over_tls_for_a_hash_only_user():
    scramble = new_scramble()
    ex = CachingSha2Exchange(scramble, account(plaintext=False), secure=True)
    assert ex.receive(oracle.scramble_caching_sha2(PASSWORD, scramble)) == [Send(b"\x01\x04")]
    (step,) = ex.receive(PASSWORD + b"\0")
    assert isinstance(step, Verified) and step.full and step.secrets.password == PASSWORD


def test_sha2_full_authentication_with_rsa_without_tls():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    scramble = new_scramble()
    ex = CachingSha2Exchange(
        scramble, account(plaintext=False), secure=False, rsa_key=key, public_key_pem=pem
    )
    assert ex.receive(b"\x00" * 32) == [Send(b"\x01\x04")]
    assert ex.receive(b"\x02") == [Send(b"\x01" + pem)]
    (step,) = ex.receive(oracle.sha2_rsa_encrypt(PASSWORD, scramble, pem))
    assert isinstance(step, Verified) and step.secrets.password == PASSWORD


def test_sha2_refuses_cleartext_without_tls_and_wrong_passwords():
    scramble = new_scramble()
    ex = CachingSha2Exchange(scramble, account(plaintext=False), secure=False)
    ex.receive(b"\x00" * 32)
    (step,) = ex.receive(PASSWORD + b"\0")  # cleartext over plain TCP: not accepted
    assert isinstance(step, Denied)
    ex = CachingSha2Exchange(scramble, account(plaintext=True), secure=False)
    (step,) = ex.receive(sha2_token(sha256(b"wrong"), scramble))
    assert isinstance(step, Denied) and step.used_password


def test_upstream_auth_answers_each_plugin_and_says_why_it_cannot():
    nonce = new_scramble()
    auth = UpstreamAuth("app", Secrets.of_password(PASSWORD), secure=False)
    assert auth.answer("mysql_native_password", nonce) == native_token(stage1(PASSWORD), nonce)
    assert auth.answer("caching_sha2_password", nonce) == oracle.scramble_caching_sha2(
        PASSWORD, nonce
    )
    assert auth.more(b"\x01\x03") is None
    assert auth.more(b"\x01\x04") == b"\x02"  # no TLS: ask for the key
    with pytest.raises(UpstreamAuthError):
        UpstreamAuth("app", Secrets(stage1=stage1(PASSWORD)), secure=True).answer(
            "client_ed25519", nonce
        )
    only_sha1 = UpstreamAuth("app", Secrets(stage1=stage1(PASSWORD)), secure=True)
    with pytest.raises(UpstreamAuthError, match="knows no secret of user 'app'"):
        only_sha1.answer("caching_sha2_password", nonce)


# --- clients: a MySQL 9 client (no mysql_native_password at all) -------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(short_tmp_dir(tmp_path_factory, "authcerts"))


@pytest.fixture(scope="module")
def plain_user(sandbox):
    """A second database user, configured in sluice with its plaintext password."""
    from proxy import sandbox as sandbox_mod

    password = sandbox.users["app"].password
    sandbox_mod.sql(
        sandbox.primary,
        f"CREATE USER IF NOT EXISTS 'plain'@'%' IDENTIFIED BY '{password}';"
        "GRANT SELECT ON app.* TO 'plain'@'%'",
    )
    sandbox_mod.wait_replicas_caught_up(sandbox)
    return "plain"


@pytest.fixture(scope="module")
def sha2_tier(sandbox, certs, plain_user):
    """A tier greeting with mysql_native_password (the default), a plaintext and a hash-only
    user, TLS offered on TCP."""
    app = sandbox.users["app"]
    config = tier_config(
        sandbox,
        users=[
            {"name": "app", "password_hash": "*" + native_password_hash(app.password).hex()},
            {"name": "plain", "password": app.password},
        ],
        tls={"cert": certs.server.cert, "key": certs.server.key},
    )
    with TierThread(config) as tier:
        yield tier


def mysql9_login(port: int, user: str, password: bytes, *, tls: ssl.SSLContext | None) -> str:
    """Log in as a MySQL 9 client does: caching_sha2_password only, and a request to switch to
    mysql_native_password is a failure (it has no such plugin). Returns how it went."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = MessageReader(1 << 24)

    def read() -> tuple[int, bytes]:
        while (msg := reader.next_message()) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            reader.feed(data)
        return msg.last_seq, msg.payload

    try:
        seq, payload = read()
        greeting = Greeting.parse(payload)
        caps = int(
            Capability.PROTOCOL_41
            | Capability.SECURE_CONNECTION
            | Capability.PLUGIN_AUTH
            | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
            | Capability.LONG_PASSWORD
            | Capability.CONNECT_WITH_DB
        )
        if tls is not None:
            caps |= int(Capability.SSL)
            sock.sendall(frame(seq + 1, struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23))
            seq += 1
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        nonce = greeting.scramble
        response = HandshakeResponse(
            caps,
            1 << 24,
            45,
            user,
            oracle.scramble_caching_sha2(password, nonce),
            "app",
            "caching_sha2_password",
        )
        sock.sendall(frame(seq + 1, response.payload()))
        how = "fast"
        while True:
            seq, payload = read()
            head = payload[:1]
            if head == b"\x00":
                return how
            if head == b"\xff":
                raise pymysql.err.OperationalError(struct.unpack_from("<H", payload, 1)[0])
            if head == b"\xfe":
                switch = AuthSwitchRequest.parse(payload)
                assert switch.plugin == "caching_sha2_password", "a MySQL 9 client cannot switch"
                nonce = switch.data
                sock.sendall(frame(seq + 1, oracle.scramble_caching_sha2(password, nonce)))
            elif payload == b"\x01\x03":
                how = "fast"
            elif payload == b"\x01\x04":
                if tls is not None:
                    how = "full over TLS"
                    sock.sendall(frame(seq + 1, password + b"\0"))
                else:
                    how = "full with RSA"
                    sock.sendall(frame(seq + 1, b"\x02"))
            elif head == b"\x01":  # the public key
                sock.sendall(frame(seq + 1, oracle.sha2_rsa_encrypt(password, nonce, payload[1:])))
            else:
                raise AssertionError(f"unexpected {payload[:8]!r}")
    finally:
        sock.close()


@pytest.mark.parametrize("user", ["plain", "app"])  # plaintext in the config, hash only
def test_a_mysql9_client_logs_in_over_tls_and_over_rsa(sha2_tier, sandbox, certs, user):
    password = sandbox.users["app"].password.encode()
    ctx = ssl.create_default_context(cafile=certs.ca)
    first = mysql9_login(sha2_tier.port, user, password, tls=None)
    again = mysql9_login(sha2_tier.port, user, password, tls=ctx)
    if user == "plain":  # the config's password gives the fast path from the start
        assert first == again == "fast"
    else:  # full authentication teaches sluice the cache entry: the fast path after that
        assert first == "full with RSA" and again == "fast"
    with pytest.raises(pymysql.err.OperationalError):
        mysql9_login(sha2_tier.port, user, b"wrong", tls=ctx)


def test_a_hash_only_user_logged_in_with_sha2_is_served_upstream(sandbox, certs):
    """The full authentication gave sluice the password: it logs in upstream (MariaDB, native)
    for that client, and after a restart-free fast path too."""
    app = sandbox.users["app"]
    config = tier_config(
        sandbox,
        users=[{"name": "app", "password_hash": "*" + native_password_hash(app.password).hex()}],
        tls={"cert": certs.server.cert, "key": certs.server.key},
        auth={"default_plugin": "caching_sha2_password"},
    )
    with TierThread(config) as tier:
        for ssl_param in ({"ca": certs.ca}, None):  # full auth over TLS, then the fast path
            conn = pymysql.connect(
                host="127.0.0.1",
                port=tier.port,
                user="app",
                password=app.password,
                database="app",
                ssl=ssl_param,
                ssl_disabled=ssl_param is None,
            )
            assert conn.server_version
            assert scalar(conn, "SELECT CURRENT_USER()") == "app@%"
            conn.close()


# --- upstream: the MySQL 8 login against the fake ---------------------------------------------


async def login_to(fake: FakeMySQL8, credential: Credential, **tls) -> None:
    port = await fake.start()
    try:
        conn = await open_connection("mysql8", Address("tcp", host="127.0.0.1", port=port), 5)
        try:
            await conn.login(credential, int(Capability.PROTOCOL_41), **tls)
            await conn.ping()
        finally:
            conn.abort()
    finally:
        await fake.stop()


async def test_upstream_caching_sha2_fast_path():
    fake = FakeMySQL8(PASSWORD, cache={"app"})
    await login_to(fake, Credential.of_password("app", PASSWORD.decode()))
    assert fake.seen == ["fast"]


async def test_upstream_caching_sha2_full_authentication_over_tls(tmp_path):
    certs = make_certs(tmp_path / "certs")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server.cert, certs.server.key)
    client = ssl.create_default_context(cafile=certs.ca)
    fake = FakeMySQL8(PASSWORD, tls=server)
    await login_to(
        fake,
        Credential.of_password("app", PASSWORD.decode()),
        tls=client,
        tls_mode="verify_identity",
        server_hostname="localhost",
    )
    assert fake.seen == ["full-tls"]


async def test_upstream_caching_sha2_full_authentication_with_rsa():
    fake = FakeMySQL8(PASSWORD)
    await login_to(fake, Credential.of_password("app", PASSWORD.decode()))
    assert fake.seen == ["full-rsa"]


async def test_upstream_caching_sha2_without_the_password_is_a_clear_1251():
    """A hash-only user whose client logged in with native: sluice knows SHA1(password)
    only, and the server wants the password itself."""
    fake = FakeMySQL8(PASSWORD)
    with pytest.raises(ClientError) as info:
        await login_to(fake, Credential("app", Secrets(stage1=stage1(PASSWORD))))
    assert info.value.code == 1251
    assert "knows no secret of user 'app'" in info.value.message
    with pytest.raises(ClientError) as info:
        await login_to(
            FakeMySQL8(PASSWORD, switch_to="client_ed25519"),
            Credential.of_password("app", PASSWORD.decode()),
        )
    assert info.value.code == 1251 and "client_ed25519" in info.value.message


async def test_upstream_wrong_password_is_the_servers_error():
    with pytest.raises(UpstreamError) as info:
        await login_to(FakeMySQL8(PASSWORD, cache={"app"}), Credential.of_password("app", "no"))
    assert info.value.err.code == 1045
