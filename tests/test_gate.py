"""PAUSE/RESUME: new work waits, open transactions finish (or are killed after the drain
timeout), and the bounds turn a stuck pause into an answer, never a hang."""

from __future__ import annotations

import threading
import time
import uuid

import pymysql
import pytest

from proxy.frontend import HANDSHAKE

from .harness import TierThread, tier_config
from .harness import app_connection as app
from .harness import scalar as value


class Background:
    """Run a function in a thread; remember its result or error and when it finished."""

    def __init__(self, fn) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc
            self.finished_at = time.monotonic()
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


@pytest.fixture
def gated(sandbox):
    config = tier_config(
        sandbox,
        pause={"drain_timeout": "2s", "max_pause": "10s"},
        admin={"mysql": "127.0.0.1:0", "password": "admin-pass"},
    )
    with TierThread(config) as tier:
        yield tier


def admin(tier) -> pymysql.Connection:
    host, _, port = tier.run(lambda: tier.tier.admin_addresses()["mysql"]).rpartition(":")
    return pymysql.connect(host=host, port=int(port), user="admin", password="admin-pass")


def test_new_work_waits_while_paused_and_runs_after_resume(gated, sandbox):
    client = app(gated, sandbox)
    value(client, "SELECT 1")
    control = admin(gated)
    with control.cursor() as cur:
        cur.execute("PAUSE")
        paused, drained_ms, killed = cur.fetchone()
    assert (paused, killed) == ("yes", 0)
    assert drained_ms < 500  # nothing was in flight: the pause is immediate
    waiting = Background(lambda: value(client, "SELECT 'after the pause'"))
    assert not waiting.done.wait(0.5)
    newcomer = Background(lambda: value(app(gated, sandbox), "SELECT 'new client'"))
    assert not newcomer.done.wait(0.2)
    resumed = time.monotonic()
    with control.cursor() as cur:
        cur.execute("RESUME")
        assert cur.fetchone()[0] == "yes"
    assert waiting.done.wait(5) and newcomer.done.wait(5)
    assert waiting.result == "after the pause" and newcomer.result == "new client"
    assert waiting.finished_at >= resumed
    control.close()


def test_pause_returns_only_when_running_statements_are_done(gated, sandbox):
    client = app(gated, sandbox)
    running = Background(lambda: value(client, "SELECT SLEEP(0.6)"))
    time.sleep(0.1)
    started = time.monotonic()
    result = gated.call(gated.tier.gate.pause())
    assert time.monotonic() - started >= 0.4  # it waited for the statement in flight
    assert result.killed == 0
    assert running.done.is_set() and running.error is None
    gated.run(gated.tier.gate.resume)


def test_open_transactions_finish_during_the_pause(gated, sandbox):
    table = f"g_{uuid.uuid4().hex[:8]}"
    setup = app(gated, sandbox)
    setup.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    inside = app(gated, sandbox)
    inside.begin()
    inside.cursor().execute(f"INSERT INTO {table} VALUES (1)")
    pausing = Background(lambda: gated.call(gated.tier.gate.pause()))
    assert not pausing.done.wait(0.3)  # waits for the open transaction
    inside.cursor().execute(f"INSERT INTO {table} VALUES (2)")  # inside: goes on
    outside = Background(lambda: value(setup, f"SELECT COUNT(*) FROM {table}"))
    inside.commit()
    assert pausing.done.wait(5) and pausing.result.killed == 0
    assert not outside.done.wait(0.3)  # new work still waits
    gated.run(gated.tier.gate.resume)
    assert outside.done.wait(5) and outside.result == 2


def test_a_transaction_still_open_after_the_drain_timeout_is_rolled_back_clearly(sandbox):
    config = tier_config(sandbox, pause={"drain_timeout": "300ms"})
    with TierThread(config) as tier:
        table = f"k_{uuid.uuid4().hex[:8]}"
        slow = app(tier, sandbox)
        slow.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        slow.begin()
        slow.cursor().execute(f"INSERT INTO {table} VALUES (1)")
        started = time.monotonic()
        result = tier.call(tier.tier.gate.pause())
        assert 0.25 < time.monotonic() - started < 2
        assert result.killed == 1
        tier.run(tier.tier.gate.resume)
        with pytest.raises(pymysql.err.OperationalError) as info:
            slow.cursor().execute(f"INSERT INTO {table} VALUES (2)")
        code, message = info.value.args
        assert code == 1927
        assert message.startswith("sluice: your transaction was rolled back")
        check = app(tier, sandbox)
        assert value(check, f"SELECT COUNT(*) FROM {table}") == 0  # nothing half-committed


def test_a_pause_longer_than_max_pause_ends_by_itself(sandbox, caplog):
    config = tier_config(sandbox, pause={"max_pause": "500ms"})
    with TierThread(config) as tier:
        client = app(tier, sandbox)
        tier.call(tier.tier.gate.pause())
        started = time.monotonic()
        assert value(client, "SELECT 'released'") == "released"
        assert 0.3 < time.monotonic() - started < 3
        assert "exceeded pause.max_pause" in caplog.text
        assert not tier.run(lambda: tier.tier.gate.closed)


def test_past_max_queued_clients_get_an_error_not_a_hang(sandbox):
    config = tier_config(sandbox, pause={"max_queued": 0})
    with TierThread(config) as tier:
        client = app(tier, sandbox)
        tier.call(tier.tier.gate.pause())
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            value(client, "SELECT 1")
        assert time.monotonic() - started < 1
        assert info.value.args[0] == 1205
        assert "pause.max_queued" in info.value.args[1]
        tier.run(tier.tier.gate.resume)
        assert value(client, "SELECT 2") == 2  # the session carries on


def test_new_clients_log_in_during_a_pause_and_wait_at_their_first_statement(sandbox):
    config = tier_config(sandbox, limits={"handshake_timeout": "500ms"})
    with TierThread(config) as tier:
        tier.call(tier.tier.gate.pause())
        # PyMySQL sends a statement while connecting (SET NAMES): that is new work and waits;
        # the login itself must not, or a pause longer than handshake_timeout fails logins.
        first = Background(lambda: value(app(tier, sandbox), "SELECT 'first'"))
        assert not first.done.wait(0.8), (first.result, first.error)
        states = tier.run(lambda: [s.state for s in tier.tier.sessions.values()])
        assert states and HANDSHAKE not in states  # logged in, waiting at the gate
        tier.run(tier.tier.gate.resume)
        assert first.done.wait(5) and first.error is None and first.result == "first"
