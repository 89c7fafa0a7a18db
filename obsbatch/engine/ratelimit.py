"""--max-rps: one request-rate limit shared by every upload worker process and thread.

Why a shared limit rather than botocore's `adaptive` retry mode: adaptive mode's token bucket lives in one
client, so N worker processes would each allow the whole rate (and it only starts limiting after the
server has already thrown throttling errors, each costing a retry). Servers that throttle, such as AWS S3
("reduce your request rate", 503 SlowDown, ~3,500 PUT/s per prefix) or an OBS bucket with a request quota,
are best kept below their limit from the first request: a 503 storm then never begins, and no file runs
out of retries in one.

The limit is a schedule, not a bucket: one shared "next free slot" time, advanced by 1/rate by every request
that takes it (GCRA without burst). CLOCK_MONOTONIC is system-wide on Linux, so the processes agree on it.
"""

from __future__ import annotations

import time
from typing import Optional, Tuple


class RateLimit:
    """At most `rate` request starts per second, summed over every process that shares this object."""

    def __init__(self, ctx, rate: float):
        self.interval = 1.0 / rate
        self._next = ctx.RawValue("d", 0.0)
        # Held for a few microseconds per request; a worker killed while holding it is noticed by the
        # parent (worker starts), which then terminates the pool.
        self._lock = ctx.Lock()

    def wait(self) -> None:
        """Block until this request's slot comes. Called just before each HTTP request, retries included."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.value)
            self._next.value = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


# --- --bwlimit ------------------------------------------------------------------------------------------

# The --bwlimit value (a rate, or a timetable) is parsed by obsbatch.config.bandwidth.


def rate_at(table: Tuple[Tuple[int, Optional[float]], ...], minute_of_day: int) -> Optional[float]:
    """The rate in force at `minute_of_day`: the last entry started by then, else (before the first
    entry of the day) the day's last entry, still in force from yesterday, as rclone reads a timetable."""
    current = table[-1][1]
    for start, rate in table:
        if start <= minute_of_day:
            current = rate
    return current


class Bandwidth:
    """--bwlimit: request-body bytes per second, summed over every process and thread that shares this object.

    The same schedule as RateLimit, weighted by bytes: a body of n bytes takes the next n/rate seconds of
    the link and is sent when they have passed. So B bytes take at least B/rate seconds, whatever the
    concurrency (a cap, never a promise of speed). The rate is read from the timetable, in local time, at
    each body; 'off' lets bodies go at once.
    """

    def __init__(self, ctx, table):
        self.table = table
        self._next = ctx.RawValue("d", 0.0)
        self._lock = ctx.Lock()

    def wait(self, size: int) -> None:
        """Block until a body of `size` bytes may be sent. Called before each request that carries one."""
        if size <= 0:
            return
        local = time.localtime()
        rate = rate_at(self.table, local.tm_hour * 60 + local.tm_min)
        with self._lock:
            now = time.monotonic()
            if rate is None:
                self._next.value = now
                return
            sent_at = max(now, self._next.value) + size / rate
            self._next.value = sent_at
        if sent_at > now:
            time.sleep(sent_at - now)
