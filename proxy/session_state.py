"""Session state that follows a client across pooled connections, and what pins a client.

The server tells sluice what changed (session tracking on every pooled connection): schema and
system variables come with their new values and can be replayed on another connection; a
state change it cannot describe (user variables, temporary tables, text PREPARE) cannot, so the
client is pinned to its connection until the state is gone. State changed inside a SELECT is
not reported at all (GET_LOCK, SELECT @v:=…, SQL_CALC_FOUND_ROWS, LAST_INSERT_ID(expr)), so a
cheap keyword scan of each statement catches those first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .protocol.codec import ProtocolError, lenenc_bytes
from .protocol.constants import Capability, Status
from .protocol.messages import ok_payload, parse_ok

TRACKING_SETUP = (
    "SET SESSION session_track_system_variables='*', session_track_schema=ON, "
    "session_track_state_change=ON"
)
"""Run on every new pooled connection: report every change of session state in OK packets.
A remote tier acknowledges it itself (its own connections always report), so a local tier's
new connection costs the remote tier no pooled connection."""

TRACKING_VALUES = {
    "session_track_system_variables": "*",
    "session_track_schema": "ON",
    "session_track_state_change": "ON",
}
"""sluice's tracking settings: a connection whose client changed one of them no longer reports
what changes on it, so that client is pinned (its state is no longer known)."""

IGNORED_VARIABLES = frozenset(
    (
        *TRACKING_VALUES,
        # read-only, updated by the server itself: reported, but nothing to replay
        "last_gtid",
        "in_transaction",
        "warning_count",
        "error_count",
    )
)

# Pin reasons (also metric labels, keep them stable).
PIN_USER_VARIABLE = "user_variable"
PIN_TEMPORARY_TABLE = "temporary_table"
PIN_LOCK = "named_lock"
PIN_TABLE_LOCK = "lock_tables"
PIN_PREPARE = "text_prepare"
PIN_FOUND_ROWS = "found_rows"
PIN_LAST_INSERT_ID = "last_insert_id_expr"
PIN_XA = "xa_transaction"
PIN_HANDLER = "handler"
PIN_UNTRACKED = "untracked_state"
PIN_CHANGE_FAILED = "state_replay_failed"
PIN_SET_OPTION = "set_option"

_LEAD = rb"(?:\s++|/\*(?!m?!).*?\*/|/\*m?!\d*+|\*/|#[^\n]*+|--(?=[\x00-\x20])[^\n]*+)*+"
"""Space and comments before a statement's first word (tools tag statements with /* ... */).
Of an executable comment only its opening and closing: the server runs what is inside."""
_HEAD = rb"(?:^" + _LEAD + rb"|;\s*+)"
"""Where a statement's first word may be: at the start, or after a `;` and space
(multi-statements; a `;` in a string literal makes at worst a needless pin). Not comments
after a `;`: retried from every `;` inside a long comment, they would cost quadratic time."""

_PATTERNS: list[tuple[str, bytes]] = [
    (PIN_USER_VARIABLE, rb"@[\w$`'\"]+\s*:=|\binto\s+@|\bset\s+@(?!@)"),
    (PIN_TEMPORARY_TABLE, rb"\bcreate\s+(?:or\s+replace\s+)?temporary\b"),
    (PIN_LOCK, rb"\bget_lock\s*\("),
    (PIN_TABLE_LOCK, rb"\block\s+tables?\b|\bflush\s+tables?\b.*\bwith\s+read\s+lock"),
    (PIN_PREPARE, _HEAD + rb"prepare\b"),
    (PIN_FOUND_ROWS, rb"\bsql_calc_found_rows\b"),
    (PIN_LAST_INSERT_ID, rb"\blast_insert_id\s*\(\s*[^)\s]"),
    (PIN_XA, _HEAD + rb"xa\b"),
    (PIN_HANDLER, _HEAD + rb"handler\b"),
    # Switching sluice's session tracking off: whatever changes next goes unreported (turning
    # the variable list off is not even reported itself). Setting sluice's own values is fine.
    (
        PIN_UNTRACKED,
        rb"\bsession_track_(?:system_variables|schema|state_change)\s*:?=\s*+"
        rb"(?!['\"]\*['\"]|['\"]?(?:on|1|true)\b)",
    ),
]
NEEDS_INSERT_ID = 1
"""The statement reads LAST_INSERT_ID(): the connection must hold this client's value."""
NEEDS_PREVIOUS = 2
"""The statement reads what the client's previous statement left on its connection
(ROW_COUNT(), FOUND_ROWS(), warnings, errors): run it there when that is still possible."""
HOLD_NEXT = 4
"""SET TRANSACTION (no SESSION/GLOBAL) applies to the next transaction on this connection."""
KILL = 8
"""KILL [CONNECTION|QUERY] n: n is a sluice client id, so sluice carries it out."""

_FLAG_PATTERNS: list[tuple[str, bytes]] = [
    ("insert_id", rb"\blast_insert_id\s*\(\s*\)|@@(?:session\.)?(?:identity|last_insert_id)\b"),
    (
        "previous",
        rb"\b(?:row_count|found_rows)\s*\(|\bshow\s+(?:warnings|errors)\b"
        rb"|\bshow\s+count\s*\(\s*\*\s*\)\s*(?:warnings|errors)\b"
        rb"|@@(?:session\.)?(?:warning_count|error_count)\b|\bget\s+(?:current\s+)?diagnostics\b",
    ),
    ("hold_next", _HEAD + rb"set\s+transaction\b"),
    ("kill", _HEAD + rb"kill\b"),
]
_FLAGS = {
    "insert_id": NEEDS_INSERT_ID,
    "previous": NEEDS_PREVIOUS,
    "hold_next": HOLD_NEXT,
    "kill": KILL,
}
_SCAN_RE = re.compile(
    b"|".join(b"(?P<%s>%s)" % (name.encode(), rx) for name, rx in _PATTERNS + _FLAG_PATTERNS),
    re.DOTALL,
)
_UNTELLING = bytes(sorted(set(range(256)) - set(b"@_kgy;")))
"""Every byte but those the patterns above are found by, once lowered: `@` (user and system
variables), `_` (found_rows, row_count, last_insert_id, get_lock, session_track_), `k`
(lock, kill), `g` (get diagnostics), `y` (temporary); and `;`, after which the anchored
patterns may match too. SHOW (warnings, errors) is looked for on its own; HANDLER, PREPARE,
SET TRANSACTION and XA at the start by their first bytes. A statement with none of these (a
point select, much plain DML) costs a translate and a find; the prefilters below cost 1 to 2 µs
even when nothing matches."""
_SCANNED_FIRSTS = frozenset(b"hpx \t\n\r\x0b\x0c/#-")
"""First bytes of HANDLER, PREPARE and XA, and those of space and comments (`_HEAD`)."""
_ANCHORED_WORDS = rb"(?:prepare|xa|handler|set\s+transaction|kill)"
_ANCHORED_PREFILTER = re.compile(_LEAD + _ANCHORED_WORDS, re.DOTALL)
"""The first words of the anchored patterns, at the start (matched, not searched)."""
_PREFILTER = re.compile(
    rb"@|k(?<=lock)|y(?<=temporary)|w(?<=show)|g(?<=diag)"
    rb"|_(?:(?<=found_)rows|(?<=last_)insert_id|(?<=row_)count|(?<=session_)track_)"
    rb"|;\s*+" + _ANCHORED_WORDS
)
"""A word each unanchored pattern needs, or an anchored one's after a `;`: each found from a
byte rarer than its first (the search skips to `@ k y w g _ ;` and looks back), half what an
alternation of the words themselves costs, which tries each word at almost every byte."""
_KILL_RE = re.compile(_LEAD + rb"kill\s+(?:(connection|query)\s+)?(\d+)\s*;?\s*\Z", re.DOTALL)
_STATE_CHANGED = int(Status.SESSION_STATE_CHANGED)
_SESSION_TRACK = int(Capability.SESSION_TRACK)  # (an IntFlag operator builds an enum member)

NOTHING = (None, 0)
SCAN_LIMIT = 64 * 1024
"""Statements longer than this are classified by their first and last 32 KiB."""


def scan_statement(sql: bytes) -> tuple[str | None, int]:
    """(pin reason or None, NEEDS_*/HOLD_NEXT flags) for a statement's text.

    One pass finds every match, so a statement that both pins and reads, say,
    LAST_INSERT_ID() is classified fully."""
    if len(sql) > SCAN_LIMIT:
        # A huge statement is mostly data: scanning all of it would stall every client of
        # the tier for seconds. Its head and tail hold the statement's own words.
        sql = sql[: SCAN_LIMIT // 2] + b"\n\x00\n" + sql[-SCAN_LIMIT // 2 :]  # (no `;`)
    text = sql.lower()
    if (
        len(text) > 2
        and not text.translate(None, _UNTELLING)
        and text[0] not in _SCANNED_FIRSTS
        and not (text[0] == 115 and text[2] == 116)  # s?t: SET [TRANSACTION]
        and text.find(b"show") < 0
    ):
        return NOTHING
    if _PREFILTER.search(text) is None and _ANCHORED_PREFILTER.match(text) is None:
        return NOTHING
    return classify(text)


def classify(text: bytes) -> tuple[str | None, int]:
    """`scan_statement` of lowered text without the prefilters: what they must agree with."""
    pin = None
    flags = 0
    for match in _SCAN_RE.finditer(text):
        group = match.lastgroup
        flag = _FLAGS.get(group or "")
        if flag is not None:
            flags |= flag
        elif pin is None:
            pin = group
    return pin, flags


def pin_reason(sql: bytes) -> str | None:
    """Why running `sql` would tie the client to its connection, or None."""
    return scan_statement(sql)[0]


_STATEMENT_ENDS = re.compile(
    rb"'(?:[^'\\]|\\.|'')*+(?:'|\\?\Z)|\"(?:[^\"\\]|\\.|\"\")*+(?:\"|\\?\Z)|`[^`]*+`?"
    rb"|/\*(?!m?!)(?:.*?\*/|.*+)|#[^\n]*+|--(?=[\x00-\x20])[^\n]*+|;",
    re.DOTALL,
)
"""String literals, quoted names and comments (their `;` ends nothing), and `;`. One left
open runs to the end (as the server reads it), so that no `;` or quote is searched twice."""
_KILL_HEAD = re.compile(_LEAD + rb"kill\b", re.DOTALL)


def has_kill_statement(sql: bytes) -> bool:
    """Whether a statement of `sql` is a KILL: at its start, or after a `;` that is not in
    a string literal, a quoted name or a comment (the server would run it)."""
    text = sql.lower()
    if _KILL_HEAD.match(text):
        return True
    for match in _STATEMENT_ENDS.finditer(text):
        if match.group() == b";" and _KILL_HEAD.match(text, match.end()):
            return True
    return False


def parse_kill(sql: bytes) -> tuple[bool, int] | None:
    """(query only?, id) for `KILL [CONNECTION|QUERY] id`, else None."""
    match = _KILL_RE.match(sql.lower())
    if match is None:
        return None
    return (match.group(1) or b"").lower() == b"query", int(match.group(2))


class SessionState:
    """Replayable state: current schema and system variables changed since login."""

    __slots__ = ("schema", "variables")

    def __init__(self, schema: str | None, variables: dict[str, str] | None = None) -> None:
        self.schema = schema
        self.variables = dict(variables or {})

    def copy(self) -> SessionState:
        return SessionState(self.schema, self.variables)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SessionState)
            and self.schema == other.schema
            and self.variables == other.variables
        )

    def __repr__(self) -> str:
        return f"SessionState(schema={self.schema!r}, variables={self.variables!r})"

    def apply_variables(self, pairs: tuple[tuple[str, str], ...]) -> None:
        for name, value in pairs:
            if name not in IGNORED_VARIABLES:
                self.variables[name] = value

    def apply(self, ok_payloads: list[bytes], capabilities: int) -> bool:
        """Apply the changes reported in these OK packets; False if one was not describable."""
        described = True
        for payload in ok_payloads:
            try:
                ok = parse_ok(payload, capabilities | _SESSION_TRACK)
            except ProtocolError:
                return False
            state = ok.session_state
            if state is None:
                continue
            for name, value in state.system_variables.items():
                if name not in IGNORED_VARIABLES:
                    self.variables[name] = value
                elif TRACKING_VALUES.get(name, value) != value:
                    described = False  # e.g. set in a stored procedure the scan cannot see
            if state.schema is not None:
                self.schema = state.schema
            if state.state_changed and not state.system_variables and state.schema is None:
                described = False
        return described


def sync_statements(
    want: SessionState, have: SessionState, baseline: dict[str, str]
) -> tuple[str | None, str | None]:
    """(SET statement, schema for COM_INIT_DB) that turn a connection's `have` into `want`.

    Variables the connection changed but the client did not go back to their login values:
    the value recorded in `baseline` when known, else the session DEFAULT (the global value,
    which is what a fresh login starts from).
    """
    assignments = []
    for name, value in want.variables.items():
        if have.variables.get(name) != value:
            assignments.append(f"{name} = {sql_value(value)}")
    for name in have.variables:
        if name not in want.variables:
            base = baseline.get(name)
            assignments.append(f"{name} = {sql_value(base) if base is not None else 'DEFAULT'}")
    statement = "SET SESSION " + ", ".join(assignments) if assignments else None
    schema = want.schema if want.schema != have.schema and want.schema is not None else None
    return statement, schema


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\Z")


def sql_value(value: str) -> str:
    """A tracked variable value as SQL: numbers bare, everything else a quoted string."""
    if _NUMBER.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


_DIAGNOSTIC_RE = re.compile(
    rb"\s*(?:show\s+(?P<list>warnings|errors)"
    rb"|show\s+count\s*\(\s*\*\s*\)\s+(?P<count>warnings|errors)"
    rb"|select\s+(?P<var>@@(?:session\.)?(?:warning_count|error_count))"
    rb"|select\s+(?P<row_count>row_count\s*\(\s*\)))\s*;?\s*\Z",
    re.IGNORECASE,
)


def diagnostic_query(sql: bytes) -> tuple[str, bytes] | None:
    """(kind, text) for the plain diagnostic statements sluice can answer from what it knows
    of the client's previous statement: list|count|var|row_count, else None."""
    match = _DIAGNOSTIC_RE.match(sql)
    if match is None:
        return None
    kind = match.lastgroup or ""
    return kind, match.group(kind)


# --- character set statements answered without a connection -----------------------------------

_CHARSET_SET = re.compile(
    rb"set\s+(?:names|character\s+set|charset)\s+(['\"`]?)[a-z0-9_]+\1"
    rb"(?:\s+collate\s+(['\"`]?)[a-z0-9_]+\2)?\s*;?\s*",
    re.IGNORECASE,
)
SET_HEADS = frozenset(b"Ss")
SET_THIRDS = frozenset(b"Tt")
"""First and third bytes of a statement `charset_set_key` may accept: int tests on the hot
path, no slice, and a SELECT goes no further."""
_NO_BACKSLASH_ESCAPES = int(Status.NO_BACKSLASH_ESCAPES)
_STATE_CHANGED_FLAG = int(Status.SESSION_STATE_CHANGED)
_AUTOCOMMIT = int(Status.AUTOCOMMIT)


def charset_set_key(sql: bytes) -> bytes | None:
    """The normalised text of `SET NAMES x [COLLATE y]` / `SET CHARACTER SET x`, else None.

    Drivers send one on every connect (PyMySQL, aiomysql always do): its whole effect is
    session state, the same every time, so once the server has shown what it does, sluice
    answers it for a session holding no connection instead of making a login wait for the
    pool."""
    if len(sql) > 200 or _CHARSET_SET.fullmatch(sql) is None:
        return None
    return b" ".join(sql.lower().rstrip(b"; \t\r\n").split())


class CharsetSets:
    """What each charset statement did the last time a server ran it: the variables it
    reported (session tracking), by normalised statement."""

    __slots__ = ("_effects",)

    LIMIT = 256  # a handful of distinct statements in practice

    def __init__(self) -> None:
        self._effects: dict[bytes, CharsetEffect] = {}

    def get(self, key: bytes) -> CharsetEffect | None:
        return self._effects.get(key)

    def learn(self, key: bytes, ok_payloads: list[bytes], capabilities: int) -> None:
        """Keep the effect of one successful run: one OK that reported system variables and
        nothing else (no schema change, no state the tracker cannot describe)."""
        if len(ok_payloads) != 1 or (key not in self._effects and len(self._effects) >= self.LIMIT):
            return
        try:
            ok = parse_ok(ok_payloads[0], capabilities | _SESSION_TRACK)
        except ProtocolError:
            return
        state = ok.session_state
        if (
            state is None
            or ok.warnings
            or not state.system_variables
            or state.schema is not None
            or state.transaction_state is not None
        ):
            return
        self._effects[key] = CharsetEffect(tuple(state.system_variables.items()), ok.state_block)


@dataclass(frozen=True, slots=True)
class CharsetEffect:
    """What a charset statement did: the variables it set, and the server's own report."""

    variables: tuple[tuple[str, str], ...]
    block: bytes  # the session-state-change bytes of its OK, sent again as they were


def idle_status(session: SessionState) -> int:
    """The status flags of an OK for a session outside a transaction, from its state."""
    status = 0 if session.variables.get("autocommit") == "OFF" else _AUTOCOMMIT
    if "NO_BACKSLASH_ESCAPES" in session.variables.get("sql_mode", ""):
        status |= _NO_BACKSLASH_ESCAPES
    return status


def charset_set_ok(effect: CharsetEffect, session: SessionState, tracking: bool) -> bytes:
    """The OK the server sends for a charset statement, for this session's state (which the
    effect has already been applied to)."""
    status = idle_status(session)
    if not tracking:
        return ok_payload(status)
    return ok_payload(status | _STATE_CHANGED_FLAG) + lenenc_bytes(b"") + lenenc_bytes(effect.block)
