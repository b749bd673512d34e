"""Throttling of failed authentications, per client address and per routing key.

An address that keeps failing is refused outright for a while (no database read, no scrypt: the
cheapest possible answer), the pause doubling with each further failure up to a minute; attempts
from one address that are still being checked count against it too, so opening many calls at
once gets no more checks than failing one by one. A routing key whose secret is being guessed
from many addresses is checked one attempt at a time, each after a short pause that grows with
its failures (up to 2 s), so guesses at one edge's secret are slow wherever they come from, while
the edge itself, from its own address, still gets in after at most that pause. A success clears
the key's record; an address's failures are forgotten only after it has been quiet for a while
(an edge with its own credentials cannot wipe its guesses at another edge's secret by logging in
between them). See docs/operations.md.
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
#: checks of one address in progress at once; more are refused until one ends
MAX_CHECKS_PER_ADDRESS = 8
#: attempts that may wait for one routing key's turn at once; more are refused at once
MAX_KEY_WAITERS = 8


@dataclass
class _Record:
    failures: int = 0
    until: float = 0.0  # refused (address) or paused (key) until then
    touched: float = 0.0
    checking: int = 0  # attempts in progress (address) or waiting for their turn (key)


class AuthThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._addresses: dict[str, _Record] = {}
        self._keys: dict[str, _Record] = {}

    def refused_for(self, address: str) -> float:
        """Seconds this address is still refused for (0: it may try)."""
        rec = self._addresses.get(address)
        return max(0.0, rec.until - self.clock()) if rec else 0.0

    def begin(self, address: str) -> bool:
        """An attempt from ``address`` starts its check; False (refuse it) when the address is
        refused or already has as many checks in progress as it may, counting its failures."""
        now = self.clock()
        self._forget(now)
        rec = self._addresses.setdefault(address, _Record(touched=now))
        if rec.until > now or rec.checking >= MAX_CHECKS_PER_ADDRESS:
            return False
        if rec.failures and rec.checking + rec.failures >= FREE_FAILURES and rec.checking:
            return False  # calls opened at once get no more checks than failures one by one
        rec.checking += 1
        return True

    def why_refused(self, address: str) -> str:
        """The refusal's reason for an attempt :meth:`begin` refused: failures, or only too many
        checks of this address at once (many edges behind one address connecting together)."""
        rec = self._addresses.get(address)
        if rec is not None and rec.failures:
            wait = max(self.refused_for(address), 1.0)
            return f"too many failed attempts from this address: retry in {wait:.0f}s"
        return (
            f"{MAX_CHECKS_PER_ADDRESS} connections from this address are being authenticated"
            " already: retry in 1s"
        )

    def end(self, address: str) -> None:
        rec = self._addresses.get(address)
        if rec is not None and rec.checking:
            rec.checking -= 1

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
        self._keys.pop(routing_key[:64], None)

    def _forget(self, now: float) -> None:
        for table in (self._addresses, self._keys):
            if len(table) > MAX_RECORDS // 2:
                stale = [k for k, r in table.items() if now - r.touched > FORGET_AFTER_S]
                for k in stale:
                    del table[k]
                if len(table) > MAX_RECORDS // 2:  # still full: drop the oldest half
                    for k in sorted(table, key=lambda k: table[k].touched)[: len(table) // 2]:
                        del table[k]
