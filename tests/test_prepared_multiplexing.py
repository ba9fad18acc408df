"""Server-side prepared statements do not collapse multiplexing: they run on whichever pooled
connection a command gets, re-prepared there once, and never leak between clients."""

from __future__ import annotations

import struct
import threading

import pytest

from .harness import TierThread, tier_config
from .rawclient import CURSOR_TYPE_READ_ONLY, RawClient, RawError
from .test_multiplexing import ConnectionSampler, small_db  # noqa: F401  (module fixture)


def tier_with_cap(sb, cap: int) -> TierThread:
    return TierThread(tier_config(sb, pool={"max_connections": cap, "acquire_timeout": "30s"}))


def raw(tier: TierThread, sb) -> RawClient:
    return RawClient.connect(("127.0.0.1", tier.port), "app", sb.users["app"].password)


def execute_without_types(client: RawClient, stmt_id: int, value: int) -> list:
    """COM_STMT_EXECUTE with new_params_bound_flag = 0: "types as last time"."""
    payload = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00" + b"\x00"
    payload += struct.pack("<q", value)
    client.command(payload)
    return client.read_results(binary=True)


def test_two_hundred_clients_run_prepared_statements_through_a_cap_of_ten(small_db):  # noqa: F811
    with tier_with_cap(small_db, 10) as tier, ConnectionSampler(small_db) as sampler:
        errors: list[str] = []

        def client(n: int) -> None:
            try:
                with raw(tier, small_db) as c:
                    stmt, _, _ = c.prepare("SELECT ? * 2, CONNECTION_ID()")
                    for i in range(5):
                        (result,) = c.execute(stmt, [n * 10 + i])
                        assert result.values[0][0] == (n * 10 + i) * 2
                    other, _, _ = c.prepare("SELECT CONCAT(?, '-', ?)")
                    (result,) = c.execute(other, [f"c{n}", "x"])
                    assert result.values == [(f"c{n}-x".encode(),)]
                    c.close_statement(stmt)
            except Exception as exc:
                errors.append(f"client {n}: {exc!r}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        pins = tier.run(lambda: dict(tier.tier.pins))
    assert errors == []
    assert pins == {}  # nobody was pinned for using prepared statements
    assert 0 < sampler.added <= 10


def test_omitted_parameter_types_are_the_clients_own(small_db):  # noqa: F811
    """Another client's execute of the same SQL on the same connection bound other types."""
    with tier_with_cap(small_db, 1) as tier:
        a, b = raw(tier, small_db), raw(tier, small_db)
        sa, _, _ = a.prepare("SELECT ?")
        sb_, _, _ = b.prepare("SELECT ?")
        (r,) = a.execute(sa, [5])  # types: LONGLONG
        assert r.values == [(5,)]
        (r,) = b.execute(sb_, ["text"])  # types: VAR_STRING, same server statement
        assert r.values == [(b"text",)]
        (r,) = execute_without_types(a, sa, 7)  # a means LONGLONG again
        assert r.values == [(7,)]
        a.close()
        b.close()


def test_statement_ids_belong_to_their_client(small_db):  # noqa: F811
    with tier_with_cap(small_db, 1) as tier:
        a, b = raw(tier, small_db), raw(tier, small_db)
        sa, _, _ = a.prepare("SELECT 'a'")
        sb_, _, _ = b.prepare("SELECT 'b'")
        assert sa == sb_ == 1  # ids are per session, like a server's
        a.close_statement(sa)
        with pytest.raises(RawError) as info:
            a.execute(sa, [])
        assert info.value.code == 1243
        assert info.value.message.startswith("sluice: unknown prepared statement id 1")
        (r,) = b.execute(sb_, [])
        assert r.values == [(b"b",)]
        a.close()
        b.close()


def test_open_cursor_holds_its_connection_until_exhausted(small_db):  # noqa: F811
    with tier_with_cap(small_db, 1) as tier:
        a, b = raw(tier, small_db), raw(tier, small_db)
        stmt, _, columns = a.prepare("SELECT seq FROM seq_1_to_10")
        a.execute(stmt, [], flags=CURSOR_TYPE_READ_ONLY)
        done = threading.Event()

        def other() -> None:
            b.query("SELECT 1")
            done.set()

        t = threading.Thread(target=other)
        t.start()
        assert not done.wait(0.5)  # the cursor lives on the only connection
        rows, _ = a.fetch(stmt, 4, columns)
        assert [r[0] for r in rows] == [1, 2, 3, 4]
        assert not done.wait(0.2)
        rows, _ = a.fetch(stmt, 100, columns)
        assert [r[0] for r in rows] == list(range(5, 11))
        assert done.wait(5)  # exhausted: the connection is free again
        t.join()
        a.close()
        b.close()


def test_long_data_stays_with_its_execute(small_db):  # noqa: F811
    with tier_with_cap(small_db, 2) as tier:
        a, b = raw(tier, small_db), raw(tier, small_db)
        stmt, _, _ = a.prepare("SELECT LENGTH(?)")
        a.send_long_data(stmt, 0, b"x" * 1000)
        b.query("SELECT 1")  # another client works meanwhile
        a.send_long_data(stmt, 0, b"y" * 500)
        from .rawclient import LONG_DATA

        (r,) = a.execute(stmt, [LONG_DATA])
        assert r.values == [(1500,)]
        a.close()
        b.close()
