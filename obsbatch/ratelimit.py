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
