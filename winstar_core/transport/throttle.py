"""Throttling of failed authentications, per client address and per routing key.

An address that keeps failing is refused outright for a while (no database read, no scrypt: the
cheapest possible answer), the pause doubling with each further failure up to a minute. A routing
key whose secret is being guessed from many addresses answers its next check only after a short
pause that grows with its failures (up to 2 s), so guesses at one edge's secret are slow wherever
they come from, while the edge itself, from its own address, still gets in after at most that
pause. A success clears both records. See docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: failures an address may make before it is refused outright
FREE_FAILURES = 5
#: the first refusal lasts this long; each further failure doubles it, up to the cap
ADDRESS_PAUSE_S = 1.0
ADDRESS_PAUSE_CAP_S = 60.0
#: a routing key with failures waits this long before its next check (doubling, up to the cap)
KEY_PAUSE_S = 0.1
KEY_PAUSE_CAP_S = 2.0
#: a record untouched for this long is forgotten
FORGET_AFTER_S = 600.0
#: records kept at most (an attacker with many addresses cannot grow the table without bound)
MAX_RECORDS = 100_000


@dataclass
class _Record:
    failures: int = 0
    until: float = 0.0  # refused (address) or paused (key) until then
    touched: float = 0.0


class AuthThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._addresses: dict[str, _Record] = {}
        self._keys: dict[str, _Record] = {}

    def refused_for(self, address: str) -> float:
        """Seconds this address is still refused for (0: it may try)."""
        rec = self._addresses.get(address)
        return max(0.0, rec.until - self.clock()) if rec else 0.0

    def pause_for(self, routing_key: str) -> float:
        """Seconds to wait before checking a secret for this routing key."""
        rec = self._keys.get(routing_key)
        return max(0.0, rec.until - self.clock()) if rec else 0.0

    def failed(self, address: str, routing_key: str) -> None:
        now = self.clock()
        self._forget(now)
        rec = self._addresses.setdefault(address, _Record())
        rec.failures += 1
        rec.touched = now
        if rec.failures > FREE_FAILURES:
            pause = ADDRESS_PAUSE_S * 2 ** min(rec.failures - FREE_FAILURES - 1, 16)
            rec.until = now + min(pause, ADDRESS_PAUSE_CAP_S)
        if routing_key:
            key = self._keys.setdefault(routing_key[:64], _Record())
            key.failures += 1
            key.touched = now
            key.until = now + min(KEY_PAUSE_S * 2 ** min(key.failures - 1, 16), KEY_PAUSE_CAP_S)

    def succeeded(self, address: str, routing_key: str) -> None:
        self._addresses.pop(address, None)
        self._keys.pop(routing_key, None)

    def _forget(self, now: float) -> None:
        for table in (self._addresses, self._keys):
            if len(table) > MAX_RECORDS // 2:
                stale = [k for k, r in table.items() if now - r.touched > FORGET_AFTER_S]
                for k in stale:
                    del table[k]
                if len(table) > MAX_RECORDS // 2:  # still full: drop the oldest half
                    for k in sorted(table, key=lambda k: table[k].touched)[: len(table) // 2]:
                        del table[k]
