"""The control plane over TLS: both admin endpoints with admin.tls, sluice ctl and peer tiers
verifying certificates, refusals that say why, and the token's own hygiene."""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.request

import pymysql
import pytest

from proxy import sandbox as sandbox_mod

from .certs import make_certs
from .conftest import short_tmp_dir
from .harness import TierThread, app_connection, scalar, tier_config
from .test_ctl import ctl
from .test_switchover import TOKEN, remote_config


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(short_tmp_dir(tmp_path_factory, "admincerts"))


def admin_tls(certs, **extra) -> dict:
    return {"cert": certs.server.cert, "key": certs.server.key, "ca": certs.ca, **extra}


def tls_admin_tier(sandbox, certs, **admin_extra) -> TierThread:
    admin = {
        "mysql": "127.0.0.1:0",
        "http": "127.0.0.1:0",
        "password": "admin-pass",
        "token": TOKEN,
        "tls": admin_tls(certs),
        **admin_extra,
    }
    return TierThread(tier_config(sandbox, admin=admin))


def http_address(tier: TierThread) -> str:
    return tier.run(lambda: tier.tier.admin_addresses()["http"])


def https(tier: TierThread, path: str, ca: str, *, method: str = "GET", token: str | None = None):
    request = urllib.request.Request(f"https://{http_address(tier)}{path}", method=method)
    if method == "POST":
        request.data = b""
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def tier(sandbox, certs):
    with tls_admin_tier(sandbox, certs) as running:
        yield running


def test_status_and_the_prometheus_scrape_work_over_verified_tls(tier, certs):
    status, body = https(tier, "/status", certs.ca)
    assert status == 200 and json.loads(body)["tier"] == "remote"
    status, body = https(tier, "/metrics", certs.ca)
    assert status == 200 and b"sluice_client_connections" in body


def test_a_plain_client_and_a_wrong_ca_are_refused_with_clear_errors(tier, certs):
    address = http_address(tier)
    plain = ctl("--admin", address, "--token", TOKEN, "status")
    assert plain.returncode != 0
    assert "if the endpoint speaks HTTPS, give --ca" in plain.stdout + plain.stderr
    wrong = ctl("--admin", address, "--ca", certs.other_ca, "--token", TOKEN, "status")
    assert wrong.returncode != 0
    assert "TLS failed" in wrong.stdout + wrong.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.stdout + wrong.stderr


def test_ctl_over_tls_refuses_a_plain_endpoint(sandbox, certs):
    plain_tier = TierThread(
        tier_config(sandbox, admin={"http": "127.0.0.1:0", "token": TOKEN})
    ).start()
    try:
        out = ctl("--admin", http_address(plain_tier), "--ca", certs.ca, "--token", TOKEN, "status")
        assert out.returncode != 0
        assert "does not fall back to plain text" in out.stdout + out.stderr
    finally:
        plain_tier.stop()


def test_the_admin_sql_port_speaks_tls_and_refuses_plain_clients(tier, certs):
    address = tier.run(lambda: tier.tier.admin_addresses()["mysql"])
    host, _, port = address.rpartition(":")
    conn = pymysql.connect(
        host=host, port=int(port), user="admin", password="admin-pass", ssl={"ca": certs.ca}
    )
    try:
        assert conn._sock.version().startswith("TLSv1.")
        with conn.cursor() as cur:
            cur.execute("SHOW POOLS")
            assert cur.fetchall()
    finally:
        conn.close()
    with pytest.raises(pymysql.err.MySQLError) as info:
        plain = pymysql.connect(
            host=host, port=int(port), user="admin", password="admin-pass", ssl_disabled=True
        )
        with plain.cursor() as cur:
            cur.execute("SHOW POOLS")
    assert "requires TLS" in str(info.value)


def test_wrong_tokens_slow_down_and_every_control_call_is_logged(sandbox, certs, caplog):
    with tls_admin_tier(sandbox, certs) as fresh:
        took = []
        for _ in range(5):
            started = time.monotonic()
            status, _ = https(fresh, "/pause", certs.ca, method="POST", token="wrong")
            took.append(time.monotonic() - started)
            assert status == 401
        assert took[0] < 0.1 and took[-1] >= 0.15
        with caplog.at_level(logging.INFO, logger="sluice.admin.http"):
            status, _ = https(fresh, "/pause", certs.ca, method="POST", token=TOKEN)
            assert status == 200
            status, _ = https(fresh, "/resume", certs.ca, method="POST", token=TOKEN)
            assert status == 200
        assert "POST /pause from 127.0.0.1: 200" in caplog.text
        assert "POST /resume from 127.0.0.1: 200" in caplog.text
        status, body = https(fresh, "/status", certs.ca)
        assert b"admin-pass" not in body and TOKEN.encode() not in body


@pytest.fixture
def cluster(tmp_path_factory):
    path = short_tmp_dir(tmp_path_factory, "tlsfleet")
    sb = sandbox_mod.up(path, replicas=1, max_connections=200)
    try:
        yield sb
    finally:
        sandbox_mod.down(path)


def test_ctl_switchover_over_verified_tls_moves_a_fleet_of_two(cluster, certs):
    """sluice ctl verifies the first tier, which drives the second as its peer over TLS,
    verified against admin.tls.ca."""
    admin = {
        "mysql": "127.0.0.1:0",
        "http": "127.0.0.1:0",
        "password": "admin-pass",
        "token": TOKEN,
        "tls": admin_tls(certs),
    }
    tiers = [TierThread(remote_config(cluster, admin=admin)).start() for _ in range(2)]
    try:
        addresses = [http_address(t) for t in tiers]
        out = ctl(
            *(x for a in addresses for x in ("--admin", a)),
            "--ca",
            certs.ca,
            "--token",
            TOKEN,
            "switchover",
            "--to",
            "db2",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "db1 -> db2 done" in out.stdout
        for tier in tiers:
            assert tier.run(lambda t=tier: t.tier.upstream.current.name) == "db2"
            conn = app_connection(tier, cluster)
            assert scalar(conn, "SELECT @@server_id") == cluster.server("db2").server_id
            conn.close()
    finally:
        for tier in tiers:
            tier.stop()
