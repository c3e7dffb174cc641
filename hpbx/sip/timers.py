"""One timer wheel for every SIP timer (RFC 3261 timers A-K, keepalives, nonce rotation).

A hundred thousand live transactions each hold a few timers; one asyncio handle per timer
(or a task per timer) would cost a heap entry and an object each in the event loop. Here timers
fall into buckets of ``resolution`` seconds; the loop carries one ``call_at`` handle for the
earliest non-empty bucket. Cancelling is O(1): the entry is disarmed and skipped when its bucket
fires.
"""
from __future__ import annotations

import heapq
import logging
import math

log = logging.getLogger("hpbx.sip.timers")


class Timer:
    __slots__ = ("callback", "args")

    def __init__(self, callback, args):
        self.callback = callback
        self.args = args

    def cancel(self) -> None:
        self.callback = None
        self.args = None

    @property
    def active(self) -> bool:
        return self.callback is not None


class TimerWheel:
    def __init__(self, loop, resolution: float = 0.01):
        self._loop = loop
        self._res = resolution
        self._buckets: dict[int, list[Timer]] = {}
        self._ticks: list[int] = []  # heap of bucket ticks
        self._handle = None
        self._armed_tick: int | None = None
        self.fired = 0

    def __len__(self) -> int:
        """Entries still in buckets (cancelled ones included until their bucket fires)."""
        return sum(len(b) for b in self._buckets.values())

    def now(self) -> float:
        return self._loop.time()

    def call_later(self, delay: float, callback, *args) -> Timer:
        # ceil: a timer never fires before its delay has passed
        tick = math.ceil((self._loop.time() + delay) / self._res)
        entry = Timer(callback, args)
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = [entry]
            heapq.heappush(self._ticks, tick)
            if self._armed_tick is None or tick < self._armed_tick:
                self._arm(tick)
        else:
            bucket.append(entry)
        return entry

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_tick = tick
        self._handle = self._loop.call_at(tick * self._res, self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_tick = None
        # the loop may wake a hair early (clock resolution): round to the nearest tick
        now_tick = int(self._loop.time() / self._res + 0.5)
        ticks = self._ticks
        buckets = self._buckets
        while ticks and ticks[0] <= now_tick:
            bucket = buckets.pop(heapq.heappop(ticks))
            for entry in bucket:
                callback = entry.callback
                if callback is None:
                    continue
                args = entry.args
                entry.callback = entry.args = None
                self.fired += 1
                try:
                    callback(*args)
                except Exception:
                    log.exception("timer callback %r failed", callback)
        if ticks and self._armed_tick is None:
            self._arm(ticks[0])
        elif ticks and self._armed_tick != ticks[0]:
            self._arm(ticks[0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._buckets.clear()
        self._ticks.clear()
        self._armed_tick = None
