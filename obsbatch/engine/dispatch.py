"""Stage 5, in the parent: hand the stable files to the UploadPool in batches, and account for every one.

Every item taken from the stages gets exactly one Outcome in the Summary, however the run ends:
- a WorkItem is uploaded and its Outcome comes back (through `after_upload`: journal, move mode);
- an Outcome from an earlier stage (skipped, deferred, unreadable) is counted as it is;
- on a stop signal nothing new starts: what was taken but not handed out is reported deferred
  (`interrupted`, not started), and the batches out are drained; a second signal or --stop-timeout tears
  the workers down, and their files are reported interrupted too;
- when a worker is killed, the files it and the others held are failed (`WorkerDied`), unless the run was
  stopping anyway (then interrupted: the stop decides the exit code, issue #11 defect 6);
- when the pre-flight finds the endpoint down, each file is failed unsent (`EndpointUnavailable`);
- when reporting itself fails (the journal cannot be written), the rest of what came back is still
  counted, the workers are torn down, and the error goes on to the pipeline.

Signals are recorded by Shutdown and only ever looked at here, between items: an item taken from the walk
while a signal arrived is still reported (issue #11, defect 3).
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Callable, Deque, Iterable, List, Optional, Tuple, Union

import structlog

from obsbatch.errors import EndpointUnavailable
from obsbatch.models import Kind, Outcome, Reason, WorkItem, not_started, unavailable
from obsbatch.engine.pool import UploadPool, WorkerDied
from obsbatch.reporting.summary import Summary
from obsbatch.engine.shutdown import Phase, Shutdown

log = structlog.get_logger()

#: How long the parent waits for results before it looks at signals, workers and the level again.
POLL_SECONDS = 0.05
#: How often the concurrency controller is fed the workers' counters (pool.UploadPool.tick).
TICK_SECONDS = 0.05


def interrupted(item: WorkItem) -> Outcome:
    # A batch cut short reports all its files so, even those its worker had stored: their Outcomes never came
    # back, so they are not journaled and the next run uploads them again (safe, if not free).
    return Outcome(Kind.DEFERRED, item.display, key=item.key, size=item.size, reason=Reason.INTERRUPTED,
                   message="its upload was cut short (a second stop signal, --stop-timeout, or an error that "
                           "ended the run); the next run takes it")


def worker_died(item: WorkItem) -> Outcome:
    return Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type="WorkerDied",
                   message="its upload worker process died before reporting; not known to be stored")


class Dispatch:
    """One run's feeding of the pool.

    after_upload(item, outcome) -> outcome: what the parent does with each Outcome a worker returns.
    preflight(): checks the destination before the first upload; EndpointUnavailable means the server is
        down, and every file is then failed unsent.
    grace: seconds the workers get to exit after SIGTERM before they are killed.
    abandon(item): clears up after an item whose worker was torn down before it reported (a restore removes
        the temporary file it may have left); None: nothing to clear.
    summary: the command's own (report.Summary for a backup, restore.RestoreSummary): add, abort, and the
        concurrency figures.
    """

    def __init__(self, pool: UploadPool, shutdown: Shutdown, summary: Summary,
                 after_upload: Callable[[WorkItem, Outcome], Outcome], preflight: Callable[[], object],
                 grace: float, abandon: Optional[Callable[[WorkItem], None]] = None):
        self.pool = pool
        self.shutdown = shutdown
        self.summary = summary
        self.after_upload = after_upload
        self.preflight = preflight
        self.grace = grace
        self.abandon = abandon
        #: Files taken from the walk and not yet handed to the pool (the batch being formed).
        self.batch: List[WorkItem] = []
        self.batch_bytes = 0
        #: Results back from the workers and not yet reported.
        self.returned: Deque[Tuple[WorkItem, Outcome]] = collections.deque()
        #: The pre-flight passed (and the pool started); or why the endpoint is unavailable, once it did not.
        self.checked = False
        self.down = ""
        #: after_upload raised: a teardown counts the rest as they came back, without trying it again.
        self.settling_failed = False
        self._next_tick = 0.0
        summary.concurrency_mode = pool.mode
        summary.concurrency = pool.level

    def run(self, items: Iterable[Union[WorkItem, Outcome]]) -> None:
        try:
            self._feed(iter(items))
            if self._drain():
                self.pool.close()
        except WorkerDied:
            self._worker_died()
        except BaseException:
            self._teardown(interrupted)
            raise

    # --- feeding -------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Let the concurrency controller look at the workers' counters, every TICK_SECONDS at most."""
        now = time.monotonic()
        if now >= self._next_tick and self.pool.started:
            self._next_tick = now + TICK_SECONDS
            self.pool.tick(now)
            if self.pool.level != self.summary.concurrency:
                log.debug("concurrency.level", in_flight=self.pool.level, was=self.summary.concurrency,
                          mode=self.pool.mode)
                self.summary.concurrency = self.pool.level

    def _feed(self, items) -> None:
        while not self.shutdown.stopping:
            if self.pool.batches_out:
                self._report(self.pool.collect(0))  # keeps `batches_out` honest for batching
                self._tick()
            try:
                item = next(items)
            except StopIteration:
                self._send()
                break
            if isinstance(item, Outcome):
                self.summary.add(item)
            else:
                self._take(item)
        if self.shutdown.stopping:
            self._not_started()

    def _take(self, item: WorkItem) -> None:
        # A multipart upload goes alone (its parts use the worker's threads): the batch before it is sent
        # first, and it is sent at once. (BATCH_BYTES alone would not do: a --multipart-threshold under it
        # would let small files join the big one and wait for it.)
        multipart = self.pool.is_multipart(item)
        if multipart and self.batch:
            self._send()
        self.batch.append(item)
        self.batch_bytes += item.size
        if multipart or self.pool.batch_full(len(self.batch), self.batch_bytes):
            self._send()

    def _send(self) -> None:
        """Hand the batch to the pool, once it has room; the pool starts on the first batch."""
        if not self.batch or self.shutdown.stopping:
            return  # a stop: the batch stays, and _not_started reports it
        if not self.checked and not self.down:
            self._start()
            if self.shutdown.stopping:
                return  # a signal during the pre-flight: nothing is sent
        if self.down:
            for item in self.batch:
                self.summary.add(unavailable(item, self.down))
        else:
            while self.pool.full:
                self._report(self.pool.collect(POLL_SECONDS))
                self._tick()
                if self.shutdown.stopping:
                    return
            self.pool.submit(self.batch)
        self.batch, self.batch_bytes = [], 0

    def _start(self) -> None:
        """The pre-flight (run by a worker: pool.UploadPool.check_destination), and the pool.

        If the endpoint is down, no pool starts: the walk goes on, and every file it would have handed out is
        counted failed, unsent (a 5xx storm or a dead server must not cost a million files a round of
        retries each).
        """
        self.pool.prewarm()
        try:
            self.preflight()
        except EndpointUnavailable as exc:
            self.down = str(exc)
            return
        if not self.pool.started:
            self.pool.start()
        self.checked = True

    def _not_started(self) -> None:
        """A stop: the files taken but never handed to a worker are left for the next run."""
        self.shutdown.begin_drain(self.pool.files_out)
        for item in self.batch:
            self.summary.add(not_started(item))
        self.batch, self.batch_bytes = [], 0

    # --- draining ------------------------------------------------------------------------------------------

    def _drain(self) -> bool:
        """Walk done or stopped: let what was handed out finish (True). Only a second signal or --stop-timeout
        cuts this short: the workers are then torn down (False)."""
        while self.pool.batches_out:
            if self.shutdown.stopping:
                self.shutdown.begin_drain(self.pool.files_out)
                if self.shutdown.phase is Phase.ABORTING:
                    self._teardown(interrupted)
                    return False
            self._report(self.pool.collect(POLL_SECONDS))
            self._tick()
        return True

    # --- accounting ----------------------------------------------------------------------------------------

    def _report(self, results: List[Tuple[WorkItem, Outcome]]) -> None:
        """Count each returned Outcome after the after-upload step; each leaves `returned` as it is counted."""
        self.returned.extend(results)
        while self.returned:
            item, outcome = self.returned.popleft()
            try:
                settled = self.after_upload(item, outcome)
            except BaseException:
                self.settling_failed = True
                self._count(outcome)  # uploaded or not, as the worker said; just not settled
                raise
            self.summary.add(settled)

    def _worker_died(self) -> None:
        # Killed from outside (the OOM killer, kill -9): its files never come back. Stop here, say so, and
        # fail what was out; the next run carries on. A run that was stopping anyway stays a stopped run.
        stopping = self.shutdown.stopping
        log.error("worker.died", in_flight=self.pool.files_out,
                  detail="an upload worker process was killed (out of memory?); stopping the run")
        self._teardown(interrupted if stopping else worker_died)
        if not stopping:
            self.summary.abort("an upload worker process died")

    def _teardown(self, leftover: Callable[[WorkItem], Outcome]) -> None:
        """Stop the workers now and account for every file still out: what came back is counted as it
        came back, the rest as `leftover(item)`. Never raises what it met on the way: the first error is
        what the caller is handling."""
        self.pool.terminate(self.grace)
        returned, lost = self.pool.leftovers()
        self.returned.extend(returned)
        while self.returned:
            item, outcome = self.returned.popleft()
            if not self.settling_failed:
                try:
                    outcome = self.after_upload(item, outcome)
                except Exception:
                    self.settling_failed = True  # count the rest as they came back
            self._count(outcome)
        for item in lost:
            if self.abandon is not None:
                with contextlib.suppress(Exception):
                    self.abandon(item)
            self._count(leftover(item))
        for item in self.batch:
            self._count(not_started(item))
        self.batch = []

    def _count(self, outcome: Outcome) -> None:
        # Summary.add counts before it calls its observers; an observer that fails now (a manifest on a full
        # disk) has failed before, and that first error is the one being handled.
        with contextlib.suppress(Exception):
            self.summary.add(outcome)


def plan_only(items: Iterable[Union[WorkItem, Outcome]], shutdown: Shutdown, summary: Summary) -> None:
    """--dry-run: count each WorkItem as PLANNED and pass everything else through, until a stop."""
    items = iter(items)
    while not shutdown.stopping:
        try:
            item = next(items)
        except StopIteration:
            return
        summary.add(Outcome(Kind.PLANNED, item.display, key=item.key, size=item.size)
                    if isinstance(item, WorkItem) else item)


def run_reads(config, client, items: Iterable, summary, task: str,
              abandon: Optional[Callable[[WorkItem], None]] = None) -> None:
    """A restore's or a verify's objects (`task`: pool.UploadPool's) to the workers, through the backup's
    engine: their level started from the round trip to the store (issue #21: from 8, a restore at RTT 20 ms
    spent its first rounds climbing), what they return taken as it is (no after-step: no journal, no move
    mode), and the stop signal, if any, into the summary (`interrupted_by`)."""
    import functools

    from obsbatch.engine import pool
    from obsbatch.engine.settings import WorkerSettings

    ctx = pool.context()
    shutdown = Shutdown(ctx, config.transfer.stop_timeout)
    workers = pool.UploadPool(ctx, config.transfer, WorkerSettings.for_reading(config), shutdown.workers_flag,
                              pool.Gauges(ctx, config.transfer.processes), task=task)
    dispatch = Dispatch(workers, shutdown, summary, _as_returned, grace=config.transfer.grace,
                        preflight=functools.partial(workers.seed_from_store, client, config.store.bucket),
                        abandon=abandon)
    try:
        with shutdown.installed():
            dispatch.run(items)
    finally:
        summary.interrupted_by = shutdown.exit_code


def _as_returned(item, outcome: Outcome) -> Outcome:
    return outcome
