"""TLS on every hop: real clients over verified TLS through both tiers, the database seeing TLS
from the remote tier, refusals that say why, certificates reloaded without dropping anyone."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import mysql.connector
import pymysql
import pytest

from proxy import sandbox as sandbox_mod
from proxy.config import parse_config
from proxy.protocol.auth import native_token, stage1
from proxy.protocol.constants import Capability
from proxy.protocol.framing import MessageReader, frame
from proxy.protocol.handshake import Greeting, HandshakeResponse

from .certs import make_certs
from .conftest import short_tmp_dir
from .harness import TierThread, scalar
from .processes import free_port

PASSWORD = "app-pass"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(short_tmp_dir(tmp_path_factory, "certs"))


@pytest.fixture(scope="module")
def tls_db(tmp_path_factory, certs):
    """A primary that speaks TLS with the test CA's certificate."""
    path = short_tmp_dir(tmp_path_factory, "tlsdb")
    sb = sandbox_mod.up(
        path,
        replicas=0,
        extra_args=[
            f"--ssl-cert={certs.server.cert}",
            f"--ssl-key={certs.server.key}",
            f"--ssl-ca={certs.ca}",
        ],
    )
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


def users() -> list[dict[str, str]]:
    return [{"name": "app", "password": PASSWORD}]


def client_tls(certs, **extra) -> dict:
    return {"cert": certs.server.cert, "key": certs.server.key, "ca": certs.ca, **extra}


def remote_tier(db, certs, **extra) -> TierThread:
    data = {
        "tier": "remote",
        "listen": ["127.0.0.1:0"],
        "users": users(),
        "upstream": {
            "servers": [{"name": "db1", "address": f"127.0.0.1:{db.primary.port}"}],
            "tls": {"mode": "verify_identity", "ca": certs.ca},
        },
        "tls": client_tls(certs),
    }
    data.update(extra)
    return TierThread(parse_config(data, allow_zero_port=True)).start()


def local_tier(remote: TierThread, certs, **extra) -> TierThread:
    data = {
        "tier": "local",
        "listen": ["127.0.0.1:0"],
        "users": users(),
        "upstream": {
            "servers": [{"name": "remote1", "address": f"127.0.0.1:{remote.port}"}],
            "tls": {"mode": "verify_identity", "ca": certs.ca},
        },
        "tls": client_tls(certs),
    }
    data.update(extra)
    return TierThread(parse_config(data, allow_zero_port=True)).start()


@pytest.fixture(scope="module")
def chain(tls_db, certs):
    remote = remote_tier(tls_db, certs)
    local = local_tier(remote, certs)
    yield remote, local
    local.stop()
    remote.stop()


def ssl_version_of_upstream(conn) -> str:
    """What the database says about the connection the statement runs on."""
    return scalar(
        conn,
        "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
        "WHERE VARIABLE_NAME = 'Ssl_version'",
    )


def test_pymysql_over_verified_tls_through_both_tiers_and_the_database_sees_tls(chain, certs):
    _, local = chain
    conn = pymysql.connect(
        host="127.0.0.1",
        port=local.port,
        user="app",
        password=PASSWORD,
        database="app",
        ssl={"ca": certs.ca, "check_hostname": True},
    )
    try:
        assert conn._sock.version().startswith("TLSv1.")  # the client's own hop is TLS
        assert scalar(conn, "SELECT 1") == 1
        assert ssl_version_of_upstream(conn).startswith("TLSv1.")  # and the database's
    finally:
        conn.close()


def test_mysql_connector_over_verified_tls(chain, certs):
    _, local = chain
    cnx = mysql.connector.connect(
        host="127.0.0.1",
        port=local.port,
        user="app",
        password=PASSWORD,
        database="app",
        ssl_ca=certs.ca,
        ssl_verify_cert=True,
        ssl_verify_identity=True,
        use_pure=True,
    )
    try:
        cur = cnx.cursor()
        cur.execute("SELECT 41 + 1")
        assert cur.fetchone() == (42,)
    finally:
        cnx.close()


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="needs the mariadb client")
def test_the_mariadb_cli_with_ssl_verify_server_cert(chain, certs):
    _, local = chain
    out = subprocess.run(
        [
            "mariadb",
            "--no-defaults",
            "-h127.0.0.1",
            f"-P{local.port}",
            "-uapp",
            f"-p{PASSWORD}",
            "--ssl",
            f"--ssl-ca={certs.ca}",
            "--ssl-verify-server-cert",
            "-N",
            "-e",
            "SELECT 7; SHOW SESSION STATUS LIKE 'Ssl_cipher'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "7"


def test_a_client_presenting_a_certificate_is_verified(tls_db, certs):
    remote = remote_tier(tls_db, certs, tls=client_tls(certs, client_cert="required"))
    try:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=remote.port,
            user="app",
            password=PASSWORD,
            ssl={"ca": certs.ca, "cert": certs.client.cert, "key": certs.client.key},
        )
        assert scalar(conn, "SELECT 1") == 1
        peer = remote.run(
            lambda: [s.transport.get_extra_info("peercert") for s in remote.tier.sessions.values()]
        )
        assert peer and dict(x[0] for x in peer[0]["subject"])["commonName"] == "app"
        conn.close()
        with pytest.raises(pymysql.err.OperationalError):  # no certificate: refused
            pymysql.connect(
                host="127.0.0.1",
                port=remote.port,
                user="app",
                password=PASSWORD,
                ssl={"ca": certs.ca},
                connect_timeout=5,
            )
    finally:
        remote.stop()


def test_a_plain_client_of_a_required_listener_gets_3159(tls_db, certs):
    remote = remote_tier(tls_db, certs, tls=client_tls(certs, mode="required"))
    try:
        with pytest.raises(pymysql.err.OperationalError) as info:
            pymysql.connect(  # PyMySQL uses TLS when offered unless told not to
                host="127.0.0.1", port=remote.port, user="app", password=PASSWORD, ssl_disabled=True
            )
        code, message = info.value.args
        assert code == 3159
        assert message.startswith("sluice: this listener requires TLS")
    finally:
        remote.stop()


def test_a_client_with_the_wrong_ca_refuses_sluice(chain, certs):
    _, local = chain
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(
            host="127.0.0.1",
            port=local.port,
            user="app",
            password=PASSWORD,
            ssl={"ca": certs.other_ca, "check_hostname": True},
            connect_timeout=5,
        )
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


def test_an_upstream_with_a_certificate_sluice_cannot_verify_is_refused_clearly(tls_db, certs):
    """Never a silent fall back to plain text: the client learns which server and why."""
    remote = remote_tier(
        tls_db,
        certs,
        upstream={
            "servers": [{"name": "db1", "address": f"127.0.0.1:{tls_db.primary.port}"}],
            "tls": {"mode": "verify_ca", "ca": certs.other_ca},
        },
    )
    try:
        with pytest.raises(pymysql.err.OperationalError) as info:
            conn = pymysql.connect(
                host="127.0.0.1", port=remote.port, user="app", password=PASSWORD
            )
            scalar(conn, "SELECT 1")
        code, message = info.value.args
        assert code == 1429
        assert "TLS to upstream 'db1'" in message and "certificate" in message
        assert "never falls back to plain text" in message
    finally:
        remote.stop()


def test_the_clienthello_in_the_same_segment_as_the_sslrequest_is_not_lost(chain, certs):
    """uvloop #707 / CPython gh-142352: bytes that arrive with the SSLRequest are TLS."""
    _, local = chain
    sock = socket.create_connection(("127.0.0.1", local.port), timeout=5)
    reader = MessageReader(1 << 24)
    while (msg := reader.next_message()) is None:
        reader.feed(sock.recv(65536))
    greeting = Greeting.parse(msg.payload)
    assert greeting.capabilities & Capability.SSL
    caps = int(
        Capability.PROTOCOL_41
        | Capability.SECURE_CONNECTION
        | Capability.PLUGIN_AUTH
        | Capability.LONG_PASSWORD
        | Capability.SSL
    )
    ctx = ssl.create_default_context(cafile=certs.ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    ssl_request = struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23
    sock.sendall(frame(1, ssl_request) + outgoing.read())  # one segment: SSLRequest + hello
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            outgoing_bytes = outgoing.read()
            if outgoing_bytes:
                sock.sendall(outgoing_bytes)
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())
    response = HandshakeResponse(
        caps,
        1 << 24,
        45,
        "app",
        native_token(stage1(PASSWORD), greeting.scramble),
        None,
        "mysql_native_password",
    )
    tls.write(frame(2, response.payload()))
    sock.sendall(outgoing.read())
    plain = MessageReader(1 << 24)
    while (msg := plain.next_message()) is None:
        incoming.write(sock.recv(65536))
        with contextlib.suppress(ssl.SSLWantReadError):
            plain.feed(tls.read(65536))
    assert msg.payload[0] == 0x00  # logged in over TLS
    sock.close()


def test_certificates_are_read_again_on_reload_without_dropping_sessions(tls_db, certs, tmp_path):
    cert = tmp_path / "tier.pem"
    key = tmp_path / "tier.key"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    remote = remote_tier(tls_db, certs, tls={"cert": str(cert), "key": str(key)})
    try:

        def serial_seen() -> tuple[int, pymysql.Connection]:
            conn = pymysql.connect(
                host="127.0.0.1",
                port=remote.port,
                user="app",
                password=PASSWORD,
                ssl={"ca": certs.ca},
            )
            der = conn._sock.getpeercert(binary_form=True)
            from cryptography import x509

            return x509.load_der_x509_certificate(der).serial_number, conn

        before, old = serial_seen()
        rotated = certs.new_server("rotated")
        shutil.copy(rotated.cert, cert)
        shutil.copy(rotated.key, key)
        remote.run(lambda: remote.tier.reload(remote.tier.config))  # what SIGHUP does
        after, new = serial_seen()
        assert after != before  # new sessions get the new certificate
        assert scalar(old, "SELECT 1") == 1  # and the old session goes on
        for conn in (old, new):
            conn.close()
    finally:
        remote.stop()


def test_repeated_failed_logins_from_one_address_slow_down(tls_db, certs):
    remote = remote_tier(
        tls_db, certs, auth={"failure_delay": {"after": 2, "max": "400ms"}}, tls=None
    )
    try:
        took = []
        for _ in range(6):
            started = time.monotonic()
            with pytest.raises(pymysql.err.OperationalError):
                pymysql.connect(host="127.0.0.1", port=remote.port, user="app", password="nope")
            took.append(time.monotonic() - started)
        assert max(took[:2]) < 0.1  # the first failures are answered at once
        assert took[-1] >= 0.35  # then up to auth.failure_delay.max
        pymysql.connect(host="127.0.0.1", port=remote.port, user="app", password=PASSWORD).close()
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(host="127.0.0.1", port=remote.port, user="app", password="nope")
        assert time.monotonic() - started < 0.1  # a success reset it
    finally:
        remote.stop()


def test_a_certificate_that_cannot_be_read_stops_sluice_run_with_its_path(tmp_path, sandbox):
    config = tmp_path / "tier.yaml"
    config.write_text(
        f"tier: remote\nlisten: ['127.0.0.1:{free_port()}']\nusers: [{{name: app, password: x}}]\n"
        f"upstream: {{servers: [{{name: db1, address: '127.0.0.1:{sandbox.primary.port}'}}]}}\n"
        f"tls: {{cert: {tmp_path}/missing.pem, key: {tmp_path}/missing.key}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 2
    assert f"cannot load certificate {tmp_path}/missing.pem" in out.stderr
