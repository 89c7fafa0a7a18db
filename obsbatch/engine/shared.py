"""Shared memory between the parent and its worker processes: the counters each worker writes (Gauges) and
everything a worker is handed at its start (Shared). Made in the parent before the workers start, pickled to
each worker once, by the pool's initializer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from obsbatch.engine.ratelimit import Bandwidth, RateLimit


class Gauges:
    """Per-worker counters in shared memory: each worker writes its own slot, the parent reads the sums.

    requests: HTTP requests sent or answered: the systemd watchdog's sign of life inside a long upload
        (systemd.Activity). No lock: one writer per slot, and the watchdog only looks for change.
    done, resent, busy: requests (files, or parts of one) completed, requests re-sent after a failure, and
        requests in flight now: what the concurrency controller reads (concurrency.AutoConcurrency). Each
        worker updates them under its own lock (worker.InFlight).
    """

    def __init__(self, ctx, slots: int):
        self.requests = ctx.RawArray("Q", slots)
        self.done = ctx.RawArray("Q", slots)
        self.resent = ctx.RawArray("Q", slots)
        self.busy = ctx.RawArray("q", slots)
        self._ctx = ctx
        self._next_slot = None

    def prepare_slots(self) -> None:
        """Make the counter workers take their slots from, in the parent before the workers start.

        Not in __init__: a locked value is a named semaphore, which starts multiprocessing's resource
        tracker, a process of its own (~20 ms of CPU) that a run with nothing to upload does not need.
        """
        if self._next_slot is None:
            self._next_slot = self._ctx.Value("i", 0)

    def take_slot(self) -> int:
        """A worker's own slot, once, at its start (workers are never replaced: a death breaks the pool)."""
        with self._next_slot.get_lock():
            slot = self._next_slot.value
            self._next_slot.value += 1
        return slot % len(self.done)

    def __getstate__(self):
        return {name: value for name, value in self.__dict__.items() if name != "_ctx"}

    def totals(self) -> Tuple[int, int, int]:
        """(done, resent, busy), summed over the workers."""
        return sum(self.done), sum(self.resent), sum(self.busy)


@dataclass(frozen=True)
class Shared:
    """Shared memory the parent makes and each worker receives at its start (never pickled later).

    stopping: Shutdown.workers_flag; once set, the files of a batch not yet begun come back not started, so
        a stop waits for one file per upload thread, not for whole batches.
    level: the uploads in flight the workers may have together, set by the parent's controller; each
        worker keeps its share (concurrency.per_worker) between requests.
    gauges: the workers' counters (Gauges).
    rate: the --max-rps schedule every HTTP request waits for, or None.
    bandwidth: the --bwlimit schedule every request body sent and every response body read waits for, or None.
    """

    stopping: Any
    level: Any
    gauges: Gauges
    rate: Optional[RateLimit] = None
    bandwidth: Optional[Bandwidth] = None
