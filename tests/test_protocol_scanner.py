"""The response scanner finds the end of every kind of response, however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.codec import lenenc_bytes, lenenc_int
from proxy.protocol.constants import MAX_PAYLOAD, Command, Status
from proxy.protocol.framing import frame
from proxy.protocol.messages import eof_payload, err_payload, ok_payload
from proxy.protocol.scanner import RESPONSE_MODES, ResponseScanner

MORE = Status.MORE_RESULTS_EXISTS
AUTOCOMMIT = Status.AUTOCOMMIT


def packets(payloads: list[bytes]) -> bytes:
    out = b""
    seq = 1
    for p in payloads:
        out += frame(seq, p)
        seq += len(p) // MAX_PAYLOAD + 1
    return out


def column_def(name: bytes) -> bytes:
    return b"".join(lenenc_bytes(x) for x in (b"def", b"db", b"t", b"t", name, name)) + (
        b"\x0c" + b"\x21\x00" + b"\x00\x01\x00\x00" + b"\xfd" + b"\x00\x00" + b"\x00" + b"\0\0"
    )


def result_set(
    rows: list[bytes], deprecate_eof: bool, status: int = AUTOCOMMIT, columns: int = 1
) -> list[bytes]:
    out = [lenenc_int(columns)] + [column_def(b"c%d" % i) for i in range(columns)]
    if not deprecate_eof:
        out.append(eof_payload(status))
    out += rows
    out.append(ok_payload(status, header=0xFE) if deprecate_eof else eof_payload(status))
    return out


def text_row(*values: bytes | None) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in values)


rows_strategy = st.lists(
    st.one_of(
        st.binary(max_size=40).map(text_row),
        st.just(text_row(None)),
        st.just(text_row(b"\xfe" * 8)),
        st.just(text_row(b"\xff\x00\x00")),
    ),
    max_size=12,
)


@st.composite
def responses(draw, deprecate_eof: bool):
    """(mode, payloads, status) for one response of a random shape."""
    kind = draw(st.sampled_from(["ok", "err", "rs", "multi", "prepare", "stats", "fetch"]))
    if kind == "ok":
        return (
            Command.QUERY,
            [
                ok_payload(
                    AUTOCOMMIT, affected_rows=draw(st.integers(0, 1 << 40)), last_insert_id=300
                )
            ],
            AUTOCOMMIT,
        )
    if kind == "err":
        return Command.QUERY, [err_payload(1146, "Table 'x.y' doesn't exist")], None
    if kind == "rs":
        status = draw(st.sampled_from([AUTOCOMMIT, Status.IN_TRANS]))
        return (
            Command.QUERY,
            result_set(draw(rows_strategy), deprecate_eof, status, draw(st.integers(1, 300))),
            status,
        )
    if kind == "multi":
        parts: list[bytes] = []
        n = draw(st.integers(2, 4))
        fails = draw(st.booleans())  # a later statement fails: ERR ends the whole response
        for i in range(n):
            st_flags = AUTOCOMMIT | (MORE if i < n - 1 or fails else 0)
            if draw(st.booleans()):
                parts += result_set(draw(rows_strategy), deprecate_eof, st_flags)
            else:
                parts.append(ok_payload(st_flags, affected_rows=i))
        if fails:
            parts.append(err_payload(1064, "syntax"))
            return Command.QUERY, parts, None
        return Command.QUERY, parts, AUTOCOMMIT
    if kind == "prepare":
        cols = draw(st.integers(0, 5))
        params = draw(st.integers(0, 5))
        out = [
            b"\x00"
            + (7).to_bytes(4, "little")
            + cols.to_bytes(2, "little")
            + params.to_bytes(2, "little")
            + b"\x00\x00\x00"
        ]
        for group in (params, cols):
            out += [column_def(b"p")] * group
            if group and not deprecate_eof:
                out.append(eof_payload(AUTOCOMMIT))
        return Command.STMT_PREPARE, out, None
    if kind == "stats":
        return Command.STATISTICS, [b"Uptime: 5  Threads: 1  Questions: 2"], None
    rows = [b"\x00\x00" + lenenc_bytes(r) for r in draw(st.lists(st.binary(max_size=20)))]
    status = AUTOCOMMIT | Status.CURSOR_EXISTS | Status.LAST_ROW_SENT
    return (
        Command.STMT_FETCH,
        [*rows, ok_payload(status, header=0xFE) if deprecate_eof else eof_payload(status)],
        status,
    )


def scan_in_chunks(scanner: ResponseScanner, data: bytes, cuts: list[int]) -> int:
    """Feed `data` split at `cuts`; return the absolute end offset the scanner reports."""
    bounds = [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    start = 0
    for b in bounds:
        end = scanner.feed(data[start:b])
        if end >= 0:
            return start + end
        start = b
    return -1


@settings(max_examples=400, deadline=None)
@given(data=st.data(), deprecate_eof=st.booleans())
def test_scanner_finds_every_response_end_at_any_split(data, deprecate_eof):
    scanner = ResponseScanner(deprecate_eof)
    stream = b""
    expected = []
    for _ in range(data.draw(st.integers(1, 4))):
        command, payloads, status = data.draw(responses(deprecate_eof))
        stream += packets(payloads)
        expected.append((command, len(stream), status, payloads[-1][0] == 0xFF))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    pos = 0
    for command, end, status, failed in expected:
        scanner.start(RESPONSE_MODES[command])
        found = scan_in_chunks(scanner, stream[pos:end] + b"", [c - pos for c in cuts])
        assert found == end - pos
        assert scanner.done
        assert scanner.failed == failed
        if status is not None:
            assert scanner.status == status
        pos = end


def test_one_byte_at_a_time():
    payloads = result_set([text_row(b"a" * 300), text_row(None)], deprecate_eof=False)
    data = packets(payloads)
    scanner = ResponseScanner()
    scanner.start(RESPONSE_MODES[Command.QUERY])
    for i in range(len(data) - 1):
        assert scanner.feed(data[i : i + 1]) == -1
    assert scanner.feed(data[-1:]) == 1


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_row_larger_than_16mib_spans_continuation_packets(deprecate_eof):
    # The continuation packet of a 16 MiB row may start with any byte, including 0xFE and 0xFF.
    big = text_row(b"\xfe" * (MAX_PAYLOAD + 10))
    assert big[0] == 0xFE  # 8-byte length prefix: looks like an EOF header
    tail_like_err = text_row(b"x" * (2 * MAX_PAYLOAD - 9 - 1)) + b"\xff"
    payloads = result_set([big, tail_like_err, text_row(b"z")], deprecate_eof)
    data = packets(payloads)
    scanner = ResponseScanner(deprecate_eof)
    scanner.start(RESPONSE_MODES[Command.QUERY])
    assert scan_in_chunks(scanner, data, list(range(0, len(data), 65536))) == len(data)
    assert not scanner.failed


def test_row_of_exactly_max_payload_is_followed_by_an_empty_packet():
    row = text_row(b"q" * (MAX_PAYLOAD - 4))
    assert len(row) == MAX_PAYLOAD
    data = packets(result_set([row, text_row(b"after")], deprecate_eof=True))
    scanner = ResponseScanner(True)
    scanner.start(RESPONSE_MODES[Command.QUERY])
    assert scanner.feed(data) == len(data)


def test_local_infile_request_waits_for_the_client_then_reads_the_answer():
    scanner = ResponseScanner()
    scanner.start(RESPONSE_MODES[Command.QUERY])
    request = frame(1, b"\xfb/tmp/data.csv")
    assert scanner.feed(request) == -1
    assert scanner.infile
    answer = frame(4, ok_payload(AUTOCOMMIT, affected_rows=3))
    assert scanner.feed(answer) == len(answer)


def test_cursor_open_ends_after_column_definitions():
    status = AUTOCOMMIT | Status.CURSOR_EXISTS
    payloads = [lenenc_int(1), column_def(b"a"), eof_payload(status)]
    data = packets(payloads)
    scanner = ResponseScanner(deprecate_eof=False)
    scanner.start(RESPONSE_MODES[Command.STMT_EXECUTE])
    assert scanner.feed(data) == len(data)
    assert scanner.status & Status.CURSOR_EXISTS


def test_reports_end_inside_a_chunk_that_carries_more():
    first = packets([ok_payload(AUTOCOMMIT)])
    scanner = ResponseScanner()
    scanner.start(RESPONSE_MODES[Command.PING])
    assert scanner.feed(first + b"\x01\x00\x00\x01\x00") == len(first)


def test_an_empty_packet_where_a_response_should_start_is_a_protocol_error():
    from proxy.protocol.codec import ProtocolError

    scanner = ResponseScanner()
    scanner.start(RESPONSE_MODES[Command.QUERY])
    with pytest.raises(ProtocolError):
        scanner.feed(b"\x00\x00\x00\x01")


def test_data_after_the_end_of_a_response_is_a_protocol_error():
    from proxy.protocol.codec import ProtocolError

    scanner = ResponseScanner(deprecate_eof=True)
    scanner.start(RESPONSE_MODES[Command.STMT_PREPARE])
    prepare_ok = b"\x00" + b"\x01\x00\x00\x00" + b"\x00\x00" + b"\x01\x00" + b"\x00\x00\x00"
    data = packets([prepare_ok, column_def(b"p")])
    assert scanner.feed(data) == len(data)
    with pytest.raises(ProtocolError):
        scanner.feed(frame(3, b"\x00"))


def test_state_changes_are_collected_and_stripped_for_clients_without_tracking():
    from proxy.protocol.codec import lenenc_bytes
    from proxy.protocol.messages import strip_session_state

    state = b"\x00" + lenenc_bytes(lenenc_bytes(b"time_zone") + lenenc_bytes(b"+01:00"))
    ok = (
        ok_payload(AUTOCOMMIT | Status.SESSION_STATE_CHANGED)
        + lenenc_bytes(b"")
        + (lenenc_bytes(state))
    )
    data = packets([ok])
    stripped = strip_session_state(ok)
    assert stripped == ok_payload(AUTOCOMMIT)  # empty info: left out, as MariaDB does
    for cut in range(1, len(data)):  # the OK straddles two chunks at every possible point
        scanner = ResponseScanner()
        scanner.strip_state = True
        scanner.start(RESPONSE_MODES[Command.QUERY])
        assert scanner.feed(data[:cut]) == -1
        assert scanner.held == cut  # nothing of the packet may go out before it is rewritten
        assert scanner.feed(data[cut:]) == len(data) - cut
        assert scanner.state_changes == [ok]
        assert scanner.edits == [(0, len(data), frame(1, stripped))]


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_warnings_and_status_of_a_result_sets_terminator(deprecate_eof):
    """Under DEPRECATE_EOF a result set ends with an OK packet (header 0xFE), whose warnings
    sit after affected rows and last insert id, not where an EOF keeps them: read as an EOF,
    a SELECT's warnings were lost and its connection was handed on before SHOW WARNINGS."""
    status = int(AUTOCOMMIT | Status.IN_TRANS)
    rows = [text_row(b"1")]
    payloads = [lenenc_int(1), column_def(b"c0")]
    if deprecate_eof:
        payloads += [*rows, ok_payload(status, warnings=3, header=0xFE)]
    else:
        payloads += [eof_payload(AUTOCOMMIT), *rows, eof_payload(status, warnings=3)]
    data = packets(payloads)
    scanner = ResponseScanner(deprecate_eof)
    scanner.start(RESPONSE_MODES[Command.QUERY])
    assert scanner.feed(data) == len(data)
    assert (scanner.warnings, scanner.status, scanner.failed) == (3, status, False)


@pytest.mark.parametrize("deprecate_eof", [False, True])
@pytest.mark.parametrize("kind", ["result set", "ok", "ok then result set"])
def test_a_response_split_in_two_anywhere_ends_in_the_same_place(kind, deprecate_eof):
    """A whole OK, the head of a result set and its terminator have fast paths: every cut,
    inside or between packets, must give the same end, status and warnings."""
    status = int(AUTOCOMMIT | Status.IN_TRANS)
    rows = [text_row(b"1", None, b"three"), text_row(b"\xfe" * 7, b"", b"x")]
    payloads = [lenenc_int(3), column_def(b"a"), column_def(b"b"), column_def(b"c")]
    if deprecate_eof:
        payloads += [*rows, ok_payload(status, warnings=2, header=0xFE)]
    else:
        payloads += [eof_payload(AUTOCOMMIT), *rows, eof_payload(status, warnings=2)]
    ok = ok_payload(status, affected_rows=300, last_insert_id=7, warnings=2)
    if kind == "ok":
        payloads = [ok]
    elif kind == "ok then result set":
        payloads = [ok_payload(AUTOCOMMIT | MORE, affected_rows=1), *payloads]
    data = packets(payloads) + b"\x01\x00\x00\x00\x00"  # (the start of whatever comes next)
    end = len(data) - 5
    for cut in range(len(data) + 1):
        scanner = ResponseScanner(deprecate_eof)
        scanner.start(RESPONSE_MODES[Command.QUERY])
        first = scanner.feed(data[:cut]) if cut else -1
        found = first if first >= 0 else cut + scanner.feed(data[cut:])
        assert found == end, cut
        assert (scanner.warnings, scanner.status) == (2, status), cut
        assert scanner.result_set == (kind != "ok"), cut
        if kind == "ok":
            assert (scanner.affected_rows, scanner.insert_id) == (300, 7), cut
