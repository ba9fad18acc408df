"""Numbers of the MySQL/MariaDB client/server protocol that sluice relies on.

Names follow the MySQL/MariaDB sources (without their CLIENT_/SERVER_STATUS_/COM_ prefixes) so a
reader can look each one up in the protocol documentation.
"""

from enum import IntEnum, IntFlag

MAX_PAYLOAD = 0xFFFFFF
"""A packet payload of exactly this length is continued by the next packet."""

SCRAMBLE_LENGTH = 20
NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2_PASSWORD = "caching_sha2_password"


class Capability(IntFlag):
    LONG_PASSWORD = 1  # MariaDB: CLIENT_MYSQL; cleared by MariaDB servers to announce extended caps
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    # MariaDB extended capabilities (exchanged in otherwise reserved handshake bytes).
    MARIADB_PROGRESS = 1 << 32
    MARIADB_COM_MULTI = 1 << 33
    MARIADB_STMT_BULK_OPERATIONS = 1 << 34
    MARIADB_EXTENDED_TYPE_INFO = 1 << 35
    MARIADB_CACHE_METADATA = 1 << 36
    MARIADB_BULK_UNIT_RESULTS = 1 << 37


class Status(IntFlag):
    IN_TRANS = 0x1
    AUTOCOMMIT = 0x2
    MORE_RESULTS_EXISTS = 0x8
    NO_GOOD_INDEX_USED = 0x10
    NO_INDEX_USED = 0x20
    CURSOR_EXISTS = 0x40
    LAST_ROW_SENT = 0x80
    DB_DROPPED = 0x100
    NO_BACKSLASH_ESCAPES = 0x200
    METADATA_CHANGED = 0x400
    QUERY_WAS_SLOW = 0x800
    PS_OUT_PARAMS = 0x1000
    IN_TRANS_READONLY = 0x2000
    SESSION_STATE_CHANGED = 0x4000
    ANSI_QUOTES = 0x8000


class Command(IntEnum):
    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F
    STMT_BULK_EXECUTE = 0xFA


class TrackerType(IntEnum):
    """Entry types in the session-state-change part of an OK packet."""

    SYSTEM_VARIABLES = 0
    SCHEMA = 1
    STATE_CHANGE = 2
    GTIDS = 3
    TRANSACTION_CHARACTERISTICS = 4
    TRANSACTION_STATE = 5


class ErrorCode(IntEnum):
    """Server error codes sluice itself sends; each maps to its SQLSTATE in SQLSTATES."""

    CON_COUNT_ERROR = 1040
    HANDSHAKE_ERROR = 1043
    ACCESS_DENIED = 1045
    UNKNOWN_COM_ERROR = 1047
    NET_PACKET_TOO_LARGE = 1153
    NET_READ_ERROR = 1158
    UNKNOWN_ERROR = 1105
    CONNECT_TO_FOREIGN_DATA_SOURCE = 1429
    NOT_SUPPORTED_AUTH_MODE = 1251
    QUERY_INTERRUPTED = 1317
    LOCK_WAIT_TIMEOUT = 1205
    OPTION_PREVENTS_STATEMENT = 1290
    CONNECTION_KILLED = 1927
    SERVER_SHUTDOWN = 1053
    UNKNOWN_STMT_HANDLER = 1243
    NO_SUCH_THREAD = 1094
    KILL_DENIED = 1095
    NOT_SUPPORTED_YET = 1235
    SECURE_TRANSPORT_REQUIRED = 3159


SQLSTATES: dict[int, bytes] = {
    ErrorCode.CON_COUNT_ERROR: b"08004",
    ErrorCode.HANDSHAKE_ERROR: b"08S01",
    ErrorCode.ACCESS_DENIED: b"28000",
    ErrorCode.UNKNOWN_COM_ERROR: b"08S01",
    ErrorCode.NET_PACKET_TOO_LARGE: b"08S01",
    ErrorCode.NET_READ_ERROR: b"08S01",
    ErrorCode.UNKNOWN_ERROR: b"HY000",
    ErrorCode.CONNECT_TO_FOREIGN_DATA_SOURCE: b"HY000",
    ErrorCode.NOT_SUPPORTED_AUTH_MODE: b"08004",
    ErrorCode.QUERY_INTERRUPTED: b"70100",
    ErrorCode.LOCK_WAIT_TIMEOUT: b"HY000",
    ErrorCode.OPTION_PREVENTS_STATEMENT: b"HY000",
    ErrorCode.CONNECTION_KILLED: b"70100",
    ErrorCode.SERVER_SHUTDOWN: b"08S01",
    ErrorCode.UNKNOWN_STMT_HANDLER: b"HY000",
    ErrorCode.NO_SUCH_THREAD: b"HY000",
    ErrorCode.KILL_DENIED: b"HY000",
    ErrorCode.NOT_SUPPORTED_YET: b"42000",
    ErrorCode.SECURE_TRANSPORT_REQUIRED: b"HY000",
}
