"""The run's stop state, in one place: SIGINT, SIGTERM and SIGHUP recorded, and what they mean now.

The signal handler only records (which signal, how many, when): raising from it (borg's way) would land at
an arbitrary bytecode, between taking an Outcome off a queue and counting it, or inside the pool's own
locking, and lose an Outcome or hang the drain. Everyone else asks `Shutdown`:
- `phase`: RUNNING; DRAINING after a first signal (nothing new starts, the uploads in flight finish);
  ABORTING after a second signal or once --stop-timeout has passed since the first (the uploads in flight
  are cut short);
- `exit_code`: 128 + the first signal, once there was one;
- `workers_flag`: shared memory the upload workers read between files (worker.Shared.stopping).
"""

from __future__ import annotations

import contextlib
import enum
import signal
import time
from typing import Optional

import structlog

from obsbatch.errors import ExitCode

log = structlog.get_logger()

_SIGNAL_EXIT = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED,
                signal.SIGHUP: ExitCode.HANGUP}


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    ABORTING = "aborting"


class Shutdown:
    """Stop signals, recorded by the handler and acted on where the run asks (module docstring)."""

    def __init__(self, ctx, stop_timeout: float = float("inf")):
        self.stop_timeout = stop_timeout
        #: Set by begin_drain; workers read it before each file (worker.Shared.stopping).
        self.workers_flag = ctx.RawValue("b", 0)
        self._signum = 0
        self._signals = 0
        self._drain_until = float("inf")  # the first signal starts the drain's clock (--stop-timeout)
        self._announced = False

    def _record(self, signum, frame) -> None:
        if not self._signals:
            self._signum = signum
            self._drain_until = time.monotonic() + self.stop_timeout
        self._signals += 1

    @property
    def stopping(self) -> bool:
        """A stop signal has arrived: take no further file."""
        return self._signals > 0

    @property
    def phase(self) -> Phase:
        if not self._signals:
            return Phase.RUNNING
        if self._signals > 1 or time.monotonic() > self._drain_until:
            return Phase.ABORTING
        return Phase.DRAINING

    @property
    def exit_code(self) -> Optional[ExitCode]:
        return _SIGNAL_EXIT[self._signum] if self._signals else None

    def begin_drain(self, in_flight: int) -> None:
        """Once, wherever the first signal is noticed: tell the workers and the log."""
        if self._announced or not self._signals:
            return
        self._announced = True
        self.workers_flag.value = 1  # workers finish the file they are on, and start no other
        log.warning("run.stopping", signal=signal.Signals(self._signum).name, in_flight=in_flight,
                    stop_timeout=self.stop_timeout,
                    detail="not starting new files; finishing the uploads in flight (signal again to abort them)")

    @contextlib.contextmanager
    def installed(self):
        previous = {sig: signal.signal(sig, self._record) for sig in _SIGNAL_EXIT}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
