"""Warnings a peer can cause by the thousand are summarized, not written one by one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LogSummary:
    """Logs the first warning of a kind, then at most one line per ``every`` seconds for that
    kind, saying how many were left out in between. A flood of bad events or wrong secrets then
    costs the log a few lines a minute instead of a line per attempt."""

    def __init__(
        self, logger: logging.Logger, every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str) -> bool:
        """Log ``message`` unless a warning of ``kind`` was logged less than ``every`` s ago.
        Returns whether it was written."""
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.every:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return False
            skipped = self._skipped.pop(kind, 0)
            self._last[kind] = now
            if len(self._last) > 10_000:  # kinds are per stream or address: keep the maps bounded
                for k in sorted(self._last, key=self._last.__getitem__)[:5_000]:
                    del self._last[k]
                    self._skipped.pop(k, None)
        more = (
            f" (and {skipped:,} more like it in the last {now - last:,.0f}s)"
            if skipped and last is not None
            else ""
        )
        self.logger.warning("%s%s", message, more)
        return True
