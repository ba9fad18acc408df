"""Character sets of the protocol: which Python codec reads the names a client sends.

A client announces a collation id in its handshake (and in COM_CHANGE_USER), and the server
reads the user name, the schema name and the connect attributes in that character set,
converting them to its own (utf8) with '?' for what does not convert. sluice reads them the
same way, so a latin1 client named "josé" is the same user as a utf8mb4 one, and a name in
bytes no character set accepts gets the database's own answer rather than a crash. Going the
other way, names sluice sends upstream are written in the character set it logs in with.

Collation ids and their character sets as MariaDB 10.11 lists them in
information_schema.COLLATIONS (ids below 2048), plus MySQL 8's gb18030 and utf8mb4_0900 ids.
"""

from __future__ import annotations

import codecs

_COLLATIONS = {
    "armscii8": "32 64 1056 1088",
    "ascii": "11 65 1035 1089",
    "big5": "1 84 1025 1108",
    "binary": "63",
    "cp1250": "26 34 44 66 99 1050 1090",
    "cp1251": "14 23 50-52 1074-1075",
    "cp1256": "57 67 1081 1091",
    "cp1257": "29 58-59 1082-1083",
    "cp850": "4 80 1028 1104",
    "cp852": "40 81 1064 1105",
    "cp866": "36 68 1060 1092",
    "cp932": "95-96 1119-1120",
    "dec8": "3 69 1027 1093",
    "eucjpms": "97-98 1121-1122",
    "euckr": "19 85 1043 1109",
    "gb18030": "248-250",
    "gb2312": "24 86 1048 1110",
    "gbk": "28 87 1052 1111",
    "geostd8": "92-93 1116-1117",
    "greek": "25 70 1049 1094",
    "hebrew": "16 71 1040 1095",
    "hp8": "6 72 1030 1096",
    "keybcs2": "37 73 1061 1097",
    "koi8r": "7 74 1031 1098",
    "koi8u": "22 75 1046 1099",
    "latin1": "5 8 15 31 47-49 94 1032 1071",
    "latin2": "2 9 21 27 77 1033 1101",
    "latin5": "30 78 1054 1102",
    "latin7": "20 41-42 79 1065 1103",
    "macce": "38 43 1062 1067",
    "macroman": "39 53 1063 1077",
    "sjis": "13 88 1037 1112",
    "swe7": "10 82 1034 1106",
    "tis620": "18 89 1042 1113",
    "ucs2": "35 90 128-151 159 640-642 1059 1114 1152 1174",
    "ujis": "12 91 1036 1115",
    "utf16": "54-55 101-124 672-674 1078-1079 1125 1147",
    "utf16le": "56 62 1080 1086",
    "utf32": "60-61 160-183 736-738 1084-1085 1184 1206",
    "utf8mb3": "33 83 192-215 223 576-578 1057 1107 1216 1238",
    "utf8mb4": "45-46 224-247 255-323 608-610 1069-1070 1248 1270",
}

_CODECS = {
    "ascii": "ascii",
    "big5": "big5",
    "binary": "utf-8",  # no conversion: the bytes are taken as the server's own utf8
    "cp1250": "cp1250",
    "cp1251": "cp1251",
    "cp1256": "cp1256",
    "cp1257": "cp1257",
    "cp850": "cp850",
    "cp852": "cp852",
    "cp866": "cp866",
    "cp932": "cp932",
    "eucjpms": "euc_jp",
    "euckr": "euc_kr",
    "gb18030": "gb18030",
    "gb2312": "gb2312",
    "gbk": "gbk",
    "greek": "iso8859_7",
    "hebrew": "iso8859_8",
    "koi8r": "koi8_r",
    "koi8u": "koi8_u",
    "latin1": "cp1252",  # MySQL's latin1 is Windows-1252
    "latin2": "iso8859_2",
    "latin5": "iso8859_9",
    "latin7": "iso8859_13",
    "macce": "mac_latin2",
    "macroman": "mac_roman",
    "sjis": "shift_jis",
    "tis620": "tis_620",
    "ujis": "euc_jp",
    "utf8": "utf-8",
    "utf8mb3": "utf-8",
    "utf8mb4": "utf-8",
    # A client cannot use these for its statements; the server reads its names in its own
    # default character set instead.
    "ucs2": "utf-8",
    "utf16": "utf-8",
    "utf16le": "utf-8",
    "utf32": "utf-8",
}
BYTE_PRESERVING = "latin-1"
"""For the few character sets Python has no codec for (armscii8, dec8, geostd8, hp8, keybcs2,
swe7): names go back upstream byte for byte, so the database still sees what the client sent."""

DEFAULT = "utf-8"


def _ids(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split():
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


CHARSET_OF: dict[int, str] = {i: name for name, ids in _COLLATIONS.items() for i in _ids(ids)}
"""Collation id -> character set name."""


def _question_mark(error: UnicodeError) -> tuple[str, int]:
    """What the server does with bytes that do not convert: one '?' each."""
    assert isinstance(error, UnicodeDecodeError | UnicodeEncodeError)
    return "?", error.end


codecs.register_error("sluice-question-mark", _question_mark)


def codec_of(collation: int | None) -> str:
    """The Python codec for a collation id (unknown ids: the server's utf8)."""
    name = CHARSET_OF.get(collation) if collation is not None else None
    return codec_of_charset(name) if name is not None else DEFAULT


def codec_of_charset(name: str) -> str:
    """The Python codec for a character set name, as character_set_client reports it."""
    return _CODECS.get(name.lower(), BYTE_PRESERVING)


def decode(data: bytes, codec: str) -> str:
    """Text the client sent in `codec`, as the server reads it (never raises)."""
    return data.decode(codec, "sluice-question-mark")


def encode(text: str, codec: str) -> bytes:
    """Text to send in `codec` (what cannot be written in it becomes '?', never raises)."""
    return text.encode(codec, "sluice-question-mark")
