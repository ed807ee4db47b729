"""The retry loop that go2rtc registration and push share: try, wait, try again, until stopped.

Each attempt says how long to wait before the next one; consecutive failures step through
`BACKOFF_S`, like go2rtc's own reconnects, and then settle on the caller's slow interval. `stop()`
ends the loop at its next wait (at once when it is waiting); `wake()` cuts the current wait short,
e.g. when a camera was added and should be registered now rather than at the next check.
"""

from __future__ import annotations

import asyncio
import contextlib

BACKOFF_S: tuple[float, ...] = (1, 1, 1, 1, 1, 5, 10)
"""Waits after consecutive failures to reach go2rtc; after the last one, the caller's interval."""


class RetryLoop:
    """Subclasses implement `attempt()`; `run()` calls it until `stop()` or a newer `run()`."""

    def __init__(self) -> None:
        self.failures = 0  # consecutive failed attempts
        self._generation = 0
        self._wake = asyncio.Event()

    async def attempt(self) -> float:
        """One try; returns the seconds to wait before the next. Must not raise for expected trouble."""
        raise NotImplementedError

    async def run(self) -> None:
        self._generation += 1
        generation, self.failures = self._generation, 0
        while generation == self._generation:
            delay = await self.attempt()
            if generation != self._generation:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # the normal case: the wait is over
                await asyncio.wait_for(self._wake.wait(), delay)

    def failed(self, settle_s: float) -> float:
        """Count a failure; the wait before the next attempt (the backoff step, then `settle_s`)."""
        self.failures += 1
        return BACKOFF_S[self.failures - 1] if self.failures <= len(BACKOFF_S) else settle_s

    @property
    def worth_logging(self) -> bool:
        """At the first failure and when the backoff settles: not at every step in between."""
        return self.failures in (1, len(BACKOFF_S))

    def succeeded(self) -> None:
        self.failures = 0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._generation += 1
        self._wake.set()
