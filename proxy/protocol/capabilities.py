"""Which capabilities sluice offers clients and asks of upstreams.

sluice offers only what it can relay correctly: flags that change message formats in ways the
response scanner does not follow (compression, TLS for now, optional metadata, query
attributes, MariaDB progress reports, cached metadata, COM_MULTI) are never negotiated.
A connection's format flags come from its client, so both ends of a relayed message agree.
"""

from __future__ import annotations

from .constants import Capability as C

SUPPORTED = int(
    C.LONG_PASSWORD
    | C.FOUND_ROWS
    | C.LONG_FLAG
    | C.CONNECT_WITH_DB
    | C.NO_SCHEMA
    | C.ODBC
    | C.LOCAL_FILES
    | C.IGNORE_SPACE
    | C.PROTOCOL_41
    | C.INTERACTIVE
    | C.IGNORE_SIGPIPE
    | C.TRANSACTIONS
    | C.RESERVED
    | C.SECURE_CONNECTION
    | C.MULTI_STATEMENTS
    | C.MULTI_RESULTS
    | C.PS_MULTI_RESULTS
    | C.PLUGIN_AUTH
    | C.CONNECT_ATTRS
    | C.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | C.CAN_HANDLE_EXPIRED_PASSWORDS
    | C.SESSION_TRACK
    | C.DEPRECATE_EOF
    | C.MARIADB_STMT_BULK_OPERATIONS
    | C.MARIADB_EXTENDED_TYPE_INFO
)

REQUIRED_UPSTREAM = int(
    C.PROTOCOL_41
    | C.SECURE_CONNECTION
    | C.PLUGIN_AUTH
    | C.TRANSACTIONS
    | C.SESSION_TRACK
    | C.CONNECT_ATTRS
)
"""What sluice itself needs from an upstream connection, whatever the client asked for:
session tracking above all, so a pooled connection reports every change of session state
(clients that did not ask for it get OK packets without the state block)."""

EXTENDED = ~0xFFFFFFFF

AS_CLIENT = int(
    C.LONG_PASSWORD
    | C.PROTOCOL_41
    | C.SECURE_CONNECTION
    | C.PLUGIN_AUTH
    | C.TRANSACTIONS
    | C.MULTI_RESULTS
    | C.DEPRECATE_EOF
    | C.CONNECT_WITH_DB
)
"""What sluice asks for when it is a plain client of a tier (the heartbeat, the demo's app)."""


def offer(server_capabilities: int) -> int:
    """Capabilities to advertise to clients: the upstream's, limited to what sluice relays.

    Plain ints throughout: IntFlag arithmetic allocates enum members, and negotiated
    capabilities are tested on the hot path."""
    return int(server_capabilities) & SUPPORTED


def for_upstream(client_capabilities: int, server_capabilities: int) -> int:
    """Capabilities for an upstream connection that relays this client's commands."""
    server = int(server_capabilities)
    caps = (int(client_capabilities) & SUPPORTED | REQUIRED_UPSTREAM) & server
    caps |= C.PLUGIN_AUTH_LENENC_CLIENT_DATA.value & server
    if caps & EXTENDED:
        caps &= ~C.LONG_PASSWORD.value  # MariaDB: a cleared CLIENT_MYSQL bit announces ext caps
    return caps
