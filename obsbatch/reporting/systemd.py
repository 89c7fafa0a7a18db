"""systemd notifications (sd_notify), sent by the parent only.

Under `Type=notify` with the default `NotifyAccess=main`, systemd accepts messages from the main process
alone, so workers never talk to it. Without `NOTIFY_SOCKET` every call here is a no-op.

What obsbatch sends, in order (README "Running under systemd"):
- `EXTEND_TIMEOUT_USEC=` before the first /proc scan and the pre-flight, which may outlast
  TimeoutStartSec= on a host with millions of open fds or a slow endpoint;
- `READY=1` once the configuration is validated and the destination checked, before the first upload;
- `STATUS=` with live counts every `STATUS_EVERY` seconds;
- `WATCHDOG=1` every third of `WATCHDOG_USEC` **while the run makes progress** (`Activity`): a walk
  entry judged, an Outcome counted, or an HTTP request started or answered by a worker within the last
  whole watchdog interval. A run with none of these for a whole interval has stalled and stops pinging, so
  systemd's watchdog fires;
- `EXTEND_TIMEOUT_USEC=` while a stop signal's drain of the uploads in flight makes progress, so that
  TimeoutStopSec= does not cut it short (the heartbeat is the one sender of these);
- `STOPPING=1` last, with the final STATUS.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import sdnotify

if TYPE_CHECKING:  # a type only: reporting sits below the engine (setup.cfg's import contract)
    from obsbatch.engine.shutdown import Shutdown

#: How often STATUS= is refreshed.
STATUS_EVERY = 2.0


class Notifier:
    """sd_notify for the parent process; does nothing when systemd did not ask for notifications."""

    def __init__(self, enabled: bool, watchdog_seconds: Optional[float]):
        # sdnotify reads NOTIFY_SOCKET itself; `enabled` keeps the no-socket case free of any socket at all.
        self._sd = sdnotify.SystemdNotifier() if enabled else None
        self.watchdog_seconds = watchdog_seconds if enabled else None
        self._lock = threading.Lock()  # the heartbeat thread and the main thread both send

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> "Notifier":
        """Read systemd's variables once (sd_watchdog_enabled(3): WATCHDOG_PID, if set, must be ours)."""
        enabled = bool(environ.get("NOTIFY_SOCKET"))
        watchdog = None
        usec = environ.get("WATCHDOG_USEC", "")
        wd_pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(pid)):
            watchdog = int(usec) / 1e6
        return cls(enabled, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sd is not None

    def send(self, *fields: str) -> None:
        if self._sd is not None:
            with self._lock:
                self._sd.notify("\n".join(fields))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def extend_timeout(self, seconds: float, status: str) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


class Activity:
    """A number that grows whenever the run does something: the systemd watchdog's notion of progress.

    parent: walk entries judged and Outcomes counted (`saw`, a Summary observer), bumped by the parent's
        main thread.
    workers: HTTP requests started or answered, in shared memory, one slot per worker (shared.Gauges.requests),
        each bumped by its worker alone. No lock: a shared counter's lock cost 0.1 ms per request in
        contention between workers (issue #5), and a slot with one writer needs none.
    """

    def __init__(self, workers):
        self.parent = 0
        self.workers = workers

    def __call__(self) -> int:
        return self.parent + sum(self.workers)

    def saw(self, outcome) -> None:
        self.parent += 1


class Heartbeat:
    """A parent thread that refreshes STATUS= and pings the watchdog while `activity()` keeps moving.

    activity: returns a number that grows whenever the run does something (Activity).
    status: returns the current STATUS= text.
    shutdown: once it is stopping, STATUS= goes out as EXTEND_TIMEOUT_USEC= while the drain moves.
    """

    #: While draining after a stop signal, the stop timeout is pushed this far ahead as long as the drain
    #: makes progress, so systemd's TimeoutStopSec= does not cut a moving drain short.
    DRAIN_EXTEND = 60.0

    def __init__(self, notifier: Notifier, activity: Callable[[], int], status: Callable[[], str],
                 shutdown: Shutdown):
        self.notifier = notifier
        self.activity = activity
        self.status = status
        self.shutdown = shutdown
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="obsbatch-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        if self.notifier.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        interval = self.notifier.watchdog_seconds
        # A third of the interval, so that scheduling delays still keep pings under half of it apart.
        tick = STATUS_EVERY if interval is None else min(STATUS_EVERY, interval / 3)
        last_seen, last_moved, last_status = self.activity(), time.monotonic(), 0.0
        while not self._stop.wait(tick):
            now = time.monotonic()
            seen = self.activity()
            if seen != last_seen:
                last_seen, last_moved = seen, now
            if interval is not None and now - last_moved < interval:
                self.notifier.watchdog()
            if now - last_status >= STATUS_EVERY:
                if self.shutdown.stopping and now - last_moved < self.DRAIN_EXTEND / 2:
                    self.notifier.extend_timeout(self.DRAIN_EXTEND, "stopping: " + self.status())
                else:
                    self.notifier.status(self.status())
                last_status = now
