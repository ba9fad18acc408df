"""Fuzz targets for every parser that reads bytes from a peer.

Each target feeds arbitrary (and arbitrarily mutated valid) bytes to one parser and accepts only
two outcomes: a result, or the protocol's own ProtocolError. Anything else (UnicodeDecodeError,
IndexError, struct.error …) is how a session used to die silently.

The default run is short (a few seconds in all). A longer run, for a person hunting bugs:

    SLUICE_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest tests/test_fuzz_parsers.py -q

(hypothesis' database in .hypothesis/ keeps what it found for the next run).
"""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.protocol.codec import ProtocolError
from proxy.protocol.constants import Capability
from proxy.protocol.framing import InfileTracker, MessageReader, frame
from proxy.protocol.handshake import (
    AuthSwitchRequest,
    ChangeUser,
    Greeting,
    HandshakeResponse,
)
from proxy.protocol.messages import (
    parse_eof_status,
    parse_err,
    parse_ok,
    parse_session_state,
    strip_session_state,
)
from proxy.protocol.scanner import FIRST, PREPARE, ROWS, SINGLE, ResponseScanner
from proxy.session_state import (
    SessionState,
    classify,
    diagnostic_query,
    parse_kill,
    scan_statement,
)
from proxy.statements import ClientStatement, bind_execute, wants_cursor, with_statement_id

EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "300"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ALL_CAPS = (1 << 38) - 1
SESSION_TRACK = int(Capability.SESSION_TRACK)


def mutated(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    """Valid messages with bytes flipped, cut off or inserted: closer to the parsers' edges
    than random bytes are."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.integers(0, 2))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == 0 and data:
                data[pos] = draw(st.integers(0, 255))
            elif kind == 1:
                del data[pos:]
            else:
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        return bytes(data)

    return build()


def payloads(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(valid))


def only_protocol_errors(parse, *args) -> None:
    with contextlib.suppress(ProtocolError):
        parse(*args)


# --- what clients send -------------------------------------------------------------------------

_CLIENT_CAPS = int(
    Capability.PROTOCOL_41
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CONNECT_ATTRS
    | Capability.CONNECT_WITH_DB
)
_RESPONSES = [
    HandshakeResponse(
        _CLIENT_CAPS, 1 << 24, 45, "app", b"x" * 20, "app", "mysql_native_password", {"a": "b"}
    ).payload(),
    HandshakeResponse(
        _CLIENT_CAPS & ~Capability.LONG_PASSWORD, 1 << 24, 8, "jos\xe9", b"", None, None
    ).payload(),
    HandshakeResponse(
        int(Capability.PROTOCOL_41 | Capability.SSL), 1 << 24, 33, "u", b""
    ).payload()[:32],
]
_CHANGE_USERS = [
    ChangeUser("app", b"y" * 20, "app", 45, "mysql_native_password", {"k": "v"}).payload(ALL_CAPS),
    ChangeUser("jos\xe9", b"", None, 8).payload(0),
]


@fuzz
@given(payloads(_RESPONSES))
def test_handshake_response(data: bytes) -> None:
    only_protocol_errors(HandshakeResponse.parse, data)


@fuzz
@given(payloads(_CHANGE_USERS), st.sampled_from([0, ALL_CAPS]), st.integers(0, 300))
def test_change_user(data: bytes, caps: int, charset: int) -> None:
    only_protocol_errors(ChangeUser.parse, b"\x11" + data[1:], caps, charset)


@fuzz
@given(st.binary(max_size=2000))
def test_statement_scan(sql: bytes) -> None:
    assert scan_statement(sql) == classify(sql.lower())
    diagnostic_query(sql)
    parse_kill(sql)


SQL_WORDS = [
    *(  # noqa: SIM905 (a list of 90 quoted words reads worse)
        "select set show warnings errors count(*) transaction session handler prepare xa kill "
        "query connection lock tables table get_lock( flush with read create or replace "
        "temporary sql_calc_found_rows found_rows( row_count( last_insert_id( last_insert_id "
        "@x @ := = into @@identity @@session. @@last_insert_id identity warning_count "
        "error_count get current diagnostics session_track_schema session_track_state_change "
        "session_track_system_variables '*' 'on' on off true 1 0 42 t c id sbtest1 where from "
        "( ) ; , ' \" * /* */ /*! /*!50000 /*M! # -- `"
    ).split(),
    "show errors",
    "show count(*) errors",
    "show warnings",
    "get diagnostics",
    "get current diagnostics",
    "set transaction",
    "lock tables",
    "lock table",
    "flush tables with read lock",
    "create temporary",
    "create or replace temporary",
    "into @v",
    "set @v",
    "kill query 5",
]
"""Every word and phrase the statement patterns look for, and what goes around them."""
sql_texts = st.lists(
    st.tuples(
        st.sampled_from(SQL_WORDS),
        st.sampled_from((str.lower, str.upper, str.title)),
        st.sampled_from(("", " ", "  ", "\n", "\t", "\x0b")),
    ),
    max_size=12,
).map(lambda parts: "".join(sep + case(word) for word, case, sep in parts).encode())


@settings(
    max_examples=max(EXAMPLES, 1000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sql_texts)
def test_the_statement_prefilters_never_change_a_classification(sql: bytes) -> None:
    # The cheap checks in front of the patterns may only say "nothing" where the patterns
    # would: a word they miss is a pin or a routing need silently lost.
    assert scan_statement(sql) == classify(sql.lower())


_EXECUTES = [
    b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x00\x01\x00\x00\x00",
    b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00",
]


@fuzz
@given(payloads(_EXECUTES), st.integers(0, 70), st.none() | st.binary(max_size=20))
def test_statement_execute_binding(payload: bytes, params: int, types: bytes | None) -> None:
    from proxy.backend import ServerStatement

    payload = payload or b"\x17"
    raw = frame(0, payload)
    stmt = ClientStatement(b"SELECT ?", params, types)
    try:
        data = bind_execute(raw, payload, stmt, ServerStatement(7, params, None))
    except ProtocolError:
        return
    assert int.from_bytes(data[:3], "little") == len(data) - 4  # still one whole packet
    only_protocol_errors(with_statement_id, raw, 9)
    wants_cursor(payload)


@fuzz
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_infile_framing(chunks: list[bytes]) -> None:
    tracker = InfileTracker()
    for chunk in chunks:
        if tracker.feed(chunk) >= 0:
            break


@fuzz
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(8, 1 << 20))
def test_message_framing(chunks: list[bytes], limit: int) -> None:
    reader = MessageReader(limit)
    for chunk in chunks:
        reader.feed(chunk)
        try:
            while reader.next_message() is not None:
                pass
        except ProtocolError:
            return


# --- what servers send -------------------------------------------------------------------------

_GREETINGS = [
    Greeting("11.4.2-MariaDB", 7, b"a" * 20, ALL_CAPS & ~1, 45, 2).payload(),
    Greeting("8.0.36", 9, b"b" * 20, int(Capability.PROTOCOL_41) | 1, 255, 2).payload(),
]
_OKS = [
    bytes.fromhex("00000002400000")
    + bytes.fromhex("0011")
    + b"\x00\x0f\x0a\x05schema\x03app"
    + b"\x00\x0a\x04name\x04\xe9\xff\xfe\x00",
    bytes.fromhex("fe000002000000"),
]


@fuzz
@given(payloads(_GREETINGS))
def test_greeting(data: bytes) -> None:
    only_protocol_errors(Greeting.parse, data)


@fuzz
@given(payloads([b"\xfemysql_native_password\x00" + b"s" * 20 + b"\x00", b"\xfe"]))
def test_auth_switch(data: bytes) -> None:
    only_protocol_errors(AuthSwitchRequest.parse, data)


@fuzz
@given(payloads(_OKS), st.sampled_from([0, SESSION_TRACK]))
def test_ok_and_session_state(data: bytes, caps: int) -> None:
    only_protocol_errors(parse_ok, data, caps)
    only_protocol_errors(parse_session_state, data)
    only_protocol_errors(parse_eof_status, data)
    if data[:1] in (b"\x00", b"\xfe"):
        only_protocol_errors(strip_session_state, data)
    SessionState(None).apply([data], caps)


@fuzz
@given(payloads([b"\xff\x7a\x04#42S02Table 'x' doesn't exist", b"\xff\x15\x04\xe9\xe9"]))
def test_err(data: bytes) -> None:
    only_protocol_errors(parse_err, data)


_RESPONSE_CHUNKS = [
    frame(1, b"\x01") + frame(2, b"\x03def\x00\x00\x00\x01a\x00\x0c") + frame(3, b"\xfe\0\0\2\0"),
    frame(1, b"\x00\x00\x00\x02\x40\x00\x00\x00\x03\x01\x01x"),
    frame(1, b"\xfbfile.csv"),
    frame(1, b"\x00\x01\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00"),
]


@fuzz
@given(
    st.lists(payloads(_RESPONSE_CHUNKS), min_size=1, max_size=4),
    st.sampled_from([FIRST, ROWS, PREPARE, SINGLE]),
    st.booleans(),
    st.booleans(),
)
def test_response_scanner(chunks: list[bytes], mode: int, deprecate_eof: bool, strip: bool) -> None:
    scanner = ResponseScanner(deprecate_eof)
    scanner.strip_state = strip
    scanner.start(mode)
    for chunk in chunks:
        try:
            if scanner.feed(chunk) >= 0:
                return
        except ProtocolError:
            return
