"""The upload worker processes and the batches out to them: one owner for both.

`UploadPool` starts N worker processes (each builds its own S3 client in `worker.init_worker`), takes
batches of WorkItems, hands back (WorkItem, Outcome) pairs, notices a worker that was killed, and tears the
workers down. It also holds the batching policy (`Pace`, `BATCH_*`): how many files the next batch should
hold, from the pace at which its workers return them.

Why `concurrent.futures.ProcessPoolExecutor` and not `multiprocessing.Pool` (issue #11): a Pool quietly
replaces a worker that was killed (the OOM killer, kill -9); the killed worker's task never returns, and if
it held the task queue's read lock no other worker can take work either, so detecting the death took a
hand-made counter of worker starts in shared memory. The executor watches every worker's sentinel itself
and fails all outstanding futures with BrokenProcessPool when one dies; a future per batch also says
exactly which files are still out. The design's contract is unchanged: N processes from a `forkserver`
context (the parent runs threads: forking a threaded process can deadlock on a lock some thread held),
each with its own client and retry loop, plain frozen dataclasses in and out.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import queue
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Dict, List, Optional, Tuple

import structlog

from obsbatch.engine.concurrency import AutoConcurrency, FixedConcurrency, per_worker
from obsbatch.config import TransferConfig
from obsbatch.models import Outcome, WorkItem, crashed
from obsbatch.engine.ratelimit import Bandwidth, RateLimit
from obsbatch.engine.shared import Gauges, Shared

#: A task for the pool is a batch of files. One task per file cost the parent ~0.4 ms of pickling,
#: queueing and wake-ups per file, a third of all client CPU on a tree of small files (issue #5). A batch
#: holds about BATCH_SECONDS of uploading (see Pace), at most BATCH_FILES files per upload thread and, past
#: its first file, at most BATCH_BYTES; a file for multipart goes alone. So a batch's Outcomes (journal,
#: progress) come back within a fraction of a second, and the last batches of a run leave no worker idle
#: for long. A batch never waits for files while a worker is idle (`UploadPool.idle`).
BATCH_FILES = 32
BATCH_BYTES = 8 * 1024 * 1024
BATCH_SECONDS = 0.5
#: Batches out per worker process: one being uploaded, one waiting, so a worker never waits for the parent.
BATCHES_PER_WORKER = 2


class WorkerDied(Exception):
    """An upload worker process was killed from outside; the pool is broken and must be torn down."""


class Pace:
    """How many files make a batch: BATCH_SECONDS over the recent seconds per file (moving average).

    One file per upload thread until an upload has come back (so the first batches fill the level at once,
    without loading one worker with a long batch at a pace nobody knows yet); then a slow or distant
    server (50 ms a PUT) gets batches of ten files per thread, a fast local one the full BATCH_FILES.
    """

    def __init__(self):
        self.seconds_per_file: Optional[float] = None

    def add(self, outcome: Outcome) -> None:
        if outcome.ended and outcome.started:
            took = max(outcome.ended - outcome.started, 1e-4)
            self.seconds_per_file = took if self.seconds_per_file is None else 0.9 * self.seconds_per_file + 0.1 * took

    def batch_files(self, threads: int = 1) -> int:
        """Files per batch for a worker that uploads `threads` of them at a time."""
        if self.seconds_per_file is None:
            return threads
        return max(1, min(BATCH_FILES * threads, int(threads * BATCH_SECONDS / self.seconds_per_file)))


def context():
    """The multiprocessing context every process-shared object of a run is made in (see module docstring).

    The fork server preloads obsbatch.engine.preload, which imports the worker module and parses botocore's S3
    model once, in the fork server, instead of once per worker.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["obsbatch.engine.worker", "obsbatch.engine.preload"])
    return ctx


def _start_fork_server() -> None:
    from multiprocessing import forkserver

    with contextlib.suppress(Exception):  # if it fails here, the executor's own start fails and reports
        forkserver.ensure_running()


def start_fork_server() -> threading.Thread:
    """Start the upload workers' fork server from a helper thread, now; the thread is returned to join.

    Its start (a new interpreter importing botocore and parsing the S3 model, ~0.35 s) is the longest step
    before a first upload, so a run that will upload starts it as early as it can (cli.main, UploadPool.
    prewarm), on another core. forkserver.ensure_running() holds the fork server's own lock: whoever asks
    next waits for this start instead of making a second one.
    """
    context()  # the preload must be set before the server starts
    thread = threading.Thread(target=_start_fork_server, name="obsbatch-forkserver", daemon=True)
    thread.start()
    return thread


class UploadPool:
    """TransferConfig.processes worker processes, the batches out to them, the pace they keep, and the level
    of requests in flight they follow (--max-concurrent: fixed, or tuned by AutoConcurrency).

    The workers get `settings` (settings.WorkerSettings: what they need of the command's config) and a Shared
    (made in `ctx`): the stop flag, the level, `gauges`, the --max-rps and --bwlimit schedules. `task` names
    what they do with each item (obsbatch.engine.tasks): "upload" (WorkItems, worker.WorkerContext.upload_batch) or
    "restore" (RestoreItems, worker.WorkerContext.restore_batch).
    """

    def __init__(self, ctx, transfer: TransferConfig, settings, stopping, gauges: Gauges, task: str = "upload"):
        self.ctx = ctx
        self.settings = settings
        self.processes = transfer.processes
        self.multipart_threshold = settings.multipart_threshold
        self.pace = Pace()
        self.controller = (AutoConcurrency(maximum=transfer.max_concurrent_limit) if transfer.max_concurrent is None
                           else FixedConcurrency(transfer.max_concurrent))
        self.gauges = gauges
        self.task_name = task
        self.shared = Shared(stopping, ctx.RawValue("i", self.controller.level), gauges,
                             rate=RateLimit(ctx, transfer.max_rps) if transfer.max_rps else None,
                             bandwidth=Bandwidth(ctx, transfer.bwlimit) if transfer.bwlimit else None)
        self._executor: Optional[concurrent.futures.ProcessPoolExecutor] = None
        self._task = None  # worker.upload_batch, once started (the worker module imports botocore)
        self._out: Dict[concurrent.futures.Future, List[WorkItem]] = {}
        # Futures of batches out, as they complete (their done-callback, from the executor's thread): a
        # look for results between two walked files is then one queue check, not a wait on every future.
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._prewarm: Optional[threading.Thread] = None

    # --- start ---------------------------------------------------------------------------------------------

    def prewarm(self) -> None:
        """Start the fork server now (once; start_fork_server), while the parent scans /proc or runs the
        pre-flight on its own core."""
        if self._prewarm is None:
            self._prewarm = start_fork_server()

    @property
    def started(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        from obsbatch.engine import tasks

        self.prewarm()
        self._prewarm.join()
        self.gauges.prepare_slots()
        # The same workers bring a backup back (`obsbatch restore`): the same clients, threads and level.
        self._task = tasks.BATCH_TASKS[self.task_name]
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.processes, mp_context=self.ctx, initializer=tasks.init_worker,
            initargs=(self.settings, self.shared))

    # --- batches out ---------------------------------------------------------------------------------------

    @property
    def batches_out(self) -> int:
        return len(self._out)

    @property
    def files_out(self) -> int:
        return sum(len(batch) for batch in self._out.values())

    @property
    def full(self) -> bool:
        """As many batches out as the workers should hold: the next one waits (memory stays flat)."""
        return len(self._out) >= BATCHES_PER_WORKER * self.processes

    @property
    def idle(self) -> bool:
        """Some worker may have nothing to do: send what there is rather than wait for a fuller batch."""
        return len(self._out) < self.processes

    def is_multipart(self, item: WorkItem) -> bool:
        return item.size >= self.multipart_threshold

    def batch_full(self, files: int, size: int) -> bool:
        """Should a batch of `files` files, `size` bytes in all, go now (before the walk finds more)?"""
        share = per_worker(self.level, self.processes)
        return files >= self.pace.batch_files(share) or size >= BATCH_BYTES or self.idle

    # --- the level -----------------------------------------------------------------------------------------

    @property
    def level(self) -> int:
        """Uploads in flight the workers may have together, now."""
        return self.controller.level

    @property
    def mode(self) -> str:
        return self.controller.mode

    def tick(self, now: float) -> None:
        """Feed the controller the workers' counters; publish the level it answers."""
        self.shared.level.value = self.controller.sample(now, *self.gauges.totals())

    def check_destination(self) -> Tuple[Optional[tuple], str]:
        """The pre-flight, run by a worker (its client is ready there; the parent then builds none): starts the
        pool if need be; raises PreflightError or EndpointUnavailable (remote.preflight), or WorkerDied; returns
        the (base URL, region) the worker's botocore resolved for the bucket (remote.base_url), or None, and the
        snapshot id the seed marker names ("" without one: WorkerSettings.seed_marker)."""
        from obsbatch.engine import tasks
        from obsbatch.errors import EndpointUnavailable, PreflightError

        if not self.started:
            self.start()
        try:
            verdict, sentence, round_trip, base, seed = self._executor.submit(tasks.check_destination).result()
        except BrokenProcessPool:
            raise WorkerDied() from None
        if verdict == "unavailable":
            raise EndpointUnavailable(sentence)
        if verdict != "ok":
            raise PreflightError(sentence)
        self.seed(round_trip)
        return base, seed

    def seed_from_store(self, client, bucket: str) -> None:
        """A restore's or a verify's pre-flight (Dispatch's `preflight`, run before the first item goes out, so
        not at all when none does): their listing or snapshot read has proved the store readable already, so
        it only measures the round trip the level starts from (s3.remote.round_trip)."""
        from obsbatch.s3 import remote

        self.seed(remote.round_trip(client, bucket))

    def seed(self, round_trip: float) -> None:
        """Start the level from a round trip to the store, measured on an open connection (AutoConcurrency.seed:
        the pre-flight's for a backup, a HeadBucket's for a restore or a verify; 0 changes nothing)."""
        self.controller.seed(round_trip, self.processes)
        self.shared.level.value = self.controller.level
        structlog.get_logger().debug("concurrency.start", round_trip_ms=round(round_trip * 1000, 1),
                                     in_flight=self.controller.level, mode=self.controller.mode)

    def submit(self, batch: List[WorkItem]) -> None:
        """Hand a batch to the workers. Raises WorkerDied if the pool is already broken."""
        try:
            future = self._executor.submit(self._task, batch)
        except BrokenProcessPool:
            raise WorkerDied() from None
        self._out[future] = batch
        future.add_done_callback(self._done.put)

    # --- results in ----------------------------------------------------------------------------------------

    def collect(self, timeout: float) -> List[Tuple[WorkItem, Outcome]]:
        """The results of the batches back so far, waiting up to `timeout` seconds for a first one.

        Raises WorkerDied, taking nothing out, when a worker was killed: `leftovers` then says what came
        back and what never will.
        """
        try:
            done = [self._done.get(timeout=timeout) if timeout else self._done.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                break
        if any(not f.cancelled() and isinstance(f.exception(), BrokenProcessPool) for f in done):
            raise WorkerDied()
        results = []
        for future in done:
            batch = self._out.pop(future, None)
            if batch is not None:
                results.extend(self._results_of(future, batch))
        return results

    def _results_of(self, future, batch: List[WorkItem]) -> List[Tuple[WorkItem, Outcome]]:
        if future.cancelled():
            return []
        exc = future.exception()
        if exc is not None:  # the task could not run or was cut short (not a death: see collect)
            outcomes = [crashed(item, exc) for item in batch]
        else:
            outcomes = future.result()
            for outcome in outcomes:
                self.pace.add(outcome)
        return list(zip(batch, outcomes))

    def leftovers(self) -> Tuple[List[Tuple[WorkItem, Outcome]], List[WorkItem]]:
        """After a teardown: (results that did come back, files whose Outcome never will); nothing stays out.

        A batch cut short counts wholly among the latter, even files its worker had stored: their Outcomes
        never came back, so they are not journaled and the next run uploads them again (safe, if not free).
        """
        returned, lost = [], []
        for future, batch in self._out.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                returned.extend(zip(batch, future.result()))
            else:
                lost.extend(batch)
        self._out.clear()
        return returned, lost

    # --- stop ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """No more batches: let the workers finish and exit (on the executor's own sentinels, no signal)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def terminate(self, grace: float) -> None:
        """Stop the workers now: SIGTERM, which each turns into SystemExit in its main thread (aborting a
        multipart upload on the way out); no new batch; SIGKILL for any worker still alive after `grace` s.

        The executor catches a task's SystemExit and sends it back as the batch's result, and the worker
        would then wait for the next task: shutting the executor down sends each its sentinel to exit. A
        SIGTERM that lands just as an idle worker enters sem_wait() on the call queue's lock is noted by the
        C handler but never acted on (a lost wakeup: seen once in ~40 stops in tests/integration), so
        waiting for the workers alone could take forever.
        """
        if self._executor is None:
            return
        # The executor's worker processes: the only multiprocessing children of the parent (the fork server
        # is not one). Process.terminate/join work by pid and sentinel though the fork server forked them.
        workers = multiprocessing.active_children()
        for process in workers:
            with contextlib.suppress(OSError):
                process.terminate()
        # The futures of batches cut short now hold SystemExit or BrokenProcessPool; those not begun are
        # cancelled.
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in workers:
            if process.is_alive():
                with contextlib.suppress(OSError):
                    process.kill()
                process.join(5)
