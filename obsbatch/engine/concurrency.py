"""How many uploads may be in flight: fixed by --max-concurrent N, or tuned as the run goes (`auto`, issue #12).

`AutoConcurrency` is a small pure control loop, in the manner of Netflix's concurrency-limits: no I/O, no
clock of its own. The parent feeds it samples of the workers' shared counters (requests completed,
requests re-sent, requests in flight: shared.Gauges) with the time, and asks it for `level`; the workers
follow that level between requests, without restarting. Tests drive it with synthetic samples.

The loop, in rounds (a round lasts until enough requests have completed to measure a rate at the current
level, and at least MIN_ROUND_SECONDS):
- **The start** (issue #21). Before the first upload the pre-flight measures one round trip to the store on an
  open connection; the level starts where that many seconds of latency are hidden for every worker:
  workers x round trip / CPU_PER_REQUEST (a bandwidth-delay product with requests for bytes), at least
  INITIAL and at most SEED_CAP (that request times the server too). Doubling from 8 took five rounds to reach 256 at RTT 80 ms, most of a 2,000-file run (measured:
  2.15x s5cmd, which starts at 256); a loopback store (RTT ~0.3 ms) still starts at INITIAL, so a
  throttling local server is not hit harder than before.
- **Slow start.** From there, the level doubles in each round whose completed requests per second rose by
  more than GAIN over the best rate so far. It doubles *as requests complete*, as TCP's congestion window
  grows by one segment per ACK (RFC 5681, 3.1): one more in flight per request completed while the level was
  in use, up to twice the round's start, so the next requests go out at once rather than when the round is
  judged (issue #21: doubling at the round's end took ~0.45 s a step at RTT 80 ms, 1.3 s from 32 to 256 of a
  4 s run). The first round that gains less ends slow start: the level goes back to the one reached in the
  round that gave the best rate. A distant store (RTT 20-80 ms) needs many requests in flight to hide its
  latency; a loopback one is CPU-bound at a few.
- **Steady.** Every PROBE_EVERY rounds the level is raised by a quarter; the step is kept only if the rate
  rises by PROBE_GAIN, and undone otherwise (the link or server may have got faster).
- **Back-off.** A round in which more than NOISE_SHARE of the requests completed, and more than NOISE_COUNT,
  had to be re-sent (503 SlowDown, 429, another 5xx, a timeout, a reset: the server or the link is
  struggling) multiplies the level by BACKOFF, and ends slow start: after that the level only grows by the
  steady probes (additive increase, multiplicative decrease). Fewer re-sends are noise, the round is judged
  as any other: a link that drops a request now and then, whatever the load, would otherwise hold the level
  at its floor (measured: a 5 % fault rate, as scripts/soak injects, kept `auto` at 1 in flight and made it
  twice as slow as a fixed 8), the way loss-based TCP starves on a lossy radio link. A server that
  throttles refuses a growing share as the load grows past its limit, far past NOISE_SHARE.
- A round in which the requests in flight never came near the level (the walk, not the uploads, was the
  limit) says nothing about the level, and changes nothing. The peak, not the average: a worker's batch
  ends with its slowest file, so the average dips between batches even when the level is the limit.
- The level never leaves [minimum, maximum].
"""

from __future__ import annotations

import math
from typing import Optional


class FixedConcurrency:
    """--max-concurrent N: the level is N, whatever happens."""

    mode = "fixed"

    def __init__(self, level: int):
        self.level = level

    def sample(self, now: float, done: int, resent: int, busy: int) -> int:
        return self.level

    def seed(self, round_trip: float, workers: int) -> None:
        """The pre-flight's round trip changes nothing: N is N."""


class AutoConcurrency:
    """Uploads in flight, tuned from the completion rate and the retries (module docstring)."""

    mode = "auto"

    INITIAL = 8
    GAIN = 1.2
    PROBE_GAIN = 1.05
    BACKOFF = 0.7
    PROBE_EVERY = 4
    MIN_ROUND_SECONDS = 0.15
    MAX_ROUND_SECONDS = 2.0
    MIN_ROUND_REQUESTS = 16
    #: A round counts as limited by the level when requests in flight reached this share of it.
    SATURATED = 0.9
    #: Re-sends a round takes as noise rather than as a struggling server: at most this share of the
    #: requests it completed, or at most this many (module docstring, Back-off).
    NOISE_SHARE = 0.1
    NOISE_COUNT = 2
    #: A worker's CPU seconds per small request (sign, send, read the answer, hash a 4 KiB body): measured
    #: 1.5 ms per file for the whole run at RTT 20 ms (scripts/bench wan20-2k), about 1 ms of it the worker's.
    CPU_PER_REQUEST = 0.001
    #: The most the round trip may start it at. The pre-flight's request times the server as well as the link:
    #: a busy or throttling server looks far away (measured: 47 ms through the test suite's throttling proxy on
    #: loopback, which started it at 95 and cost more re-sends than a fixed 256). Slow start goes on from here.
    SEED_CAP = 32

    def __init__(self, maximum: int = 256, minimum: int = 1, initial: int = INITIAL):
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.level = min(self.maximum, max(minimum, initial))
        self.slow_start = True
        self.best_rate = 0.0
        self.best_level = self.level
        #: The rate at the steady level (a moving average), once measured.
        self.baseline: Optional[float] = None
        #: The level before an upward probe, while the probe is being judged.
        self.probe_from: Optional[int] = None
        self.steady_rounds = 0
        self._round: Optional[tuple] = None  # (start time, done, resent, level) at the round's start
        self._busy_peak = 0

    def seed(self, round_trip: float, workers: int) -> None:
        """Start from the pre-flight's round trip (module docstring, The start); before the first sample only."""
        if self._round is None and self.slow_start:
            wanted = math.ceil(workers * round_trip / self.CPU_PER_REQUEST)
            self._set(max(self.level, min(wanted, self.SEED_CAP)))
            self.best_level = self.level

    def sample(self, now: float, done: int, resent: int, busy: int) -> int:
        """Take one sample of the cumulative counters; return the level the workers should keep."""
        if self._round is None:
            self._start_round(now, done, resent)
            return self.level
        self._busy_peak = max(self._busy_peak, busy)
        started, done0, resent0, round_level = self._round
        elapsed = now - started
        completed = done - done0
        if self.slow_start and busy >= self.SATURATED * self.level:
            # Per completion (module docstring, Slow start); only while the level is the limit, as TCP does not
            # grow a window the sender does not fill (RFC 7661).
            self._set(max(self.level, min(2 * round_level, round_level + completed)))
        if elapsed < self.MIN_ROUND_SECONDS:
            return self.level
        if completed < max(self.MIN_ROUND_REQUESTS, round_level) and elapsed < self.MAX_ROUND_SECONDS:
            return self.level
        if resent - resent0 > max(self.NOISE_COUNT, self.NOISE_SHARE * completed):
            self._back_off(round_level)
        elif completed and self._busy_peak >= self.SATURATED * round_level:
            self._judge(completed / elapsed, round_level)
        elif self.slow_start:  # not judged: the round says nothing, so neither does its growth
            self._set(round_level)
        self._start_round(now, done, resent)
        return self.level

    def _start_round(self, now: float, done: int, resent: int) -> None:
        self._round = (now, done, resent, self.level)
        self._busy_peak = 0

    def _set(self, level: int) -> None:
        self.level = min(self.maximum, max(self.minimum, level))

    def _back_off(self, round_level: int) -> None:
        """From the level the round started at: what slow start added in it was too much."""
        self.slow_start = False
        self.probe_from = None
        self.baseline = None
        self.steady_rounds = 0
        self._set(math.floor(round_level * self.BACKOFF))

    def _judge(self, rate: float, round_level: int) -> None:
        if self.slow_start:
            if rate > self.best_rate * self.GAIN and round_level < self.maximum:
                # The round ran from round_level up to twice it; the doubling is completed if the completions
                # did not get it all the way (a round ended by MAX_ROUND_SECONDS).
                self._set(2 * round_level)
                self.best_rate, self.best_level = rate, self.level
                return
            self.slow_start = False
            if rate > self.best_rate:
                self.best_rate, self.best_level = rate, round_level
            self._set(self.best_level)
            self.baseline = self.best_rate
            return
        if self.probe_from is not None:  # judging the last upward probe
            if self.baseline is not None and rate < self.baseline * self.PROBE_GAIN:
                self._set(self.probe_from)
            else:
                self.baseline = rate
            self.probe_from = None
            return
        self.baseline = rate if self.baseline is None else 0.7 * self.baseline + 0.3 * rate
        self.steady_rounds += 1
        if self.steady_rounds >= self.PROBE_EVERY and self.level < self.maximum:
            self.steady_rounds = 0
            self.probe_from = self.level
            self._set(self.level + max(1, self.level // 4))


def per_worker(level: int, workers: int) -> int:
    """Each worker's share of the level, rounded up (so the workers together allow at least `level`)."""
    return max(1, -(-level // max(1, workers)))
