"""The wall clock that lifetimes are measured on, watched for steps.

Lifetimes are times of day (``expires_at``, shown to clients and kept in labels and records), but a
sandbox asked for ten minutes should have ten minutes whatever the system clock does meanwhile: an
NTP correction, an operator's ``date -s``, a VM whose clock was restored. ``now()`` is
``time.time()``; each call also compares how far the wall clock moved since the last one with how
far the boot-time clock did (which no step moves, and which counts a suspended machine's sleep as
time passed). When they differ by STEP_SECONDS or more, every deadline the server holds is moved by
that step before ``now()`` returns, so nothing ever compares a lifetime with a clock that jumped
(the reaper asks once a second, and every lifetime check asks through here).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

logger = logging.getLogger("mcp_sandbox.clock")

STEP_SECONDS = 2.0  # NTP slews at most 0.5 ms a second; the reaper looks every second


class LifetimeClock:
    def __init__(self, wall: Callable[[], float] = time.time,
                 elapsed: Callable[[], float] = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)) -> None:
        self._wall, self._elapsed = wall, elapsed
        self._last_wall, self._last_elapsed = wall(), elapsed()
        self._listeners: list[weakref.WeakMethod] = []

    def on_step(self, listener: Callable[[float], None]) -> None:
        """``listener(step)``, a bound method, is called with the seconds the clock jumped (negative:
        back) for as long as its object lives (a server's manager; tests make several)."""
        self._listeners.append(weakref.WeakMethod(listener))  # type: ignore[arg-type]

    def now(self) -> float:
        wall, elapsed = self._wall(), self._elapsed()
        step = (wall - self._last_wall) - (elapsed - self._last_elapsed)
        self._last_wall, self._last_elapsed = wall, elapsed
        if abs(step) >= STEP_SECONDS:
            logger.warning("the system clock jumped %+.1f s; sandboxes' lifetimes are moved with it, so each "
                           "keeps the seconds it had left", step)
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            for ref in self._listeners:
                listener = ref()
                if listener is not None:
                    listener(step)
        return wall


clock = LifetimeClock()  # the server's one; tests make their own
