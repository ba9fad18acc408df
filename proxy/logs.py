"""Log lines for events that can come in storms (pool exhaustion, pins): one line per event
kind per interval, saying how many were folded into it, so the log stays readable and cheap
when a thousand clients hit the same wall at once."""

from __future__ import annotations

import logging
import time


class Throttled:
    """At most one line per key every `every` seconds; the rest are counted into the next."""

    __slots__ = ("_every", "_last", "_logger", "_skipped")

    def __init__(self, logger: logging.Logger, every: float = 1.0) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._every) < self._every:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        if skipped:
            message += f" (and {skipped} more like it since the last line)"
        self._logger.log(level, message, *args)
