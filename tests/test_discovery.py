"""Writer discovery: the primary is found by asking, never taken from the config's order."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pymysql
import pytest

from proxy import sandbox as sandbox_mod

from .harness import TierThread, app_connection, scalar, tier_config


def monitor(sb) -> dict:
    return {"user": sb.users["monitor"].name, "password": sb.users["monitor"].password}


def test_a_remote_tier_finds_the_primary_whatever_the_config_order(sandbox):
    servers = [
        {"name": s.name, "address": f"{s.host}:{s.port}"} for s in reversed(sandbox.servers)
    ]  # the replica first
    config = tier_config(sandbox, upstream={"servers": servers, "monitor": monitor(sandbox)})
    with TierThread(config) as tier:
        assert tier.run(lambda: tier.tier.upstream.current.name) == sandbox.primary.name
        assert tier.run(lambda: tier.tier.upstream.roles) == {"db1": "primary", "db2": "replica"}
        conn = app_connection(tier, sandbox)
        assert scalar(conn, "SELECT @@server_id") == sandbox.primary.server_id
        conn.close()


@pytest.fixture
def two_replicas_only(sandbox):
    """The primary made read-only for the test (as during a half-done switchover)."""
    sandbox_mod.sql(sandbox.primary, "SET GLOBAL read_only = ON")
    try:
        yield sandbox
    finally:
        sandbox_mod.sql(sandbox.primary, "SET GLOBAL read_only = OFF")


def test_no_clear_writer_means_a_clear_error_never_a_guess(two_replicas_only):
    """Without failover buffering (failover.mode: off) statements are refused at once."""
    sb = two_replicas_only
    servers = [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers]
    config = tier_config(
        sb,
        upstream={"servers": servers, "monitor": monitor(sb)},
        admin={"http": "127.0.0.1:0"},
        failover={"mode": "off"},
    )
    with TierThread(config) as tier:
        assert tier.run(lambda: tier.tier.upstream.current) is None
        with pytest.raises(pymysql.err.OperationalError) as info:
            app_connection(tier, sb)
        code, message = info.value.args
        assert code == 1290
        assert message.startswith("sluice: no clear writer among db1, db2")
        assert "db1: read_only" in message and "db2: read_only, replicating" in message
        address = tier.run(lambda: tier.tier.admin_addresses()["http"])
        with pytest.raises(urllib.error.HTTPError) as ready:
            urllib.request.urlopen(f"http://{address}/readyz", timeout=10)
        assert ready.value.code == 503
        assert "no clear writer" in json.loads(ready.value.read())["reason"]
        sandbox_mod.sql(sb.primary, "SET GLOBAL read_only = OFF")  # the cluster is fixed
        deadline = time.monotonic() + 15
        while tier.run(lambda: tier.tier.upstream.current) is None:
            assert time.monotonic() < deadline, "the writer was not found again"
            time.sleep(0.2)
        conn = app_connection(tier, sb)  # found by itself: clients are served again
        assert scalar(conn, "SELECT @@server_id") == sb.primary.server_id
        conn.close()


def buffering_tier(sb, window: str) -> TierThread:
    servers = [{"name": s.name, "address": f"{s.host}:{s.port}"} for s in sb.servers]
    return TierThread(
        tier_config(
            sb,
            upstream={"servers": servers, "monitor": monitor(sb)},
            failover={"buffer_window": window},
        )
    )


def test_with_failover_buffering_a_command_waits_for_a_writer_instead(two_replicas_only):
    """failover.mode buffer (the default with a monitor account): logins complete, commands
    wait, and run as soon as one server is writable."""
    sb = two_replicas_only
    with buffering_tier(sb, "10s") as tier:
        assert tier.run(lambda: tier.tier.upstream.current) is None
        waited: list[object] = []

        def client() -> None:
            # PyMySQL's connect runs SET NAMES: it waits for a writer like any statement.
            conn = app_connection(tier, sb)
            waited.append(scalar(conn, "SELECT @@server_id"))
            conn.close()

        worker = threading.Thread(target=client)
        worker.start()
        time.sleep(0.5)
        assert not waited
        sandbox_mod.sql(sb.primary, "SET GLOBAL read_only = OFF")  # the cluster is fixed
        fixed = time.monotonic()
        worker.join(5)
        assert waited == [sb.primary.server_id]
        assert time.monotonic() - fixed < 1.0


def test_failover_buffering_ends_with_a_clear_error_after_its_window(two_replicas_only):
    sb = two_replicas_only
    with buffering_tier(sb, "1s") as tier:
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            app_connection(tier, sb)  # its SET NAMES waits, then gets the error
        assert 0.9 < time.monotonic() - started < 3
        code, message = info.value.args
        assert code == 1290
        assert "no writer for 1s (failover.buffer_window)" in message
        assert "db1: read_only" in message
