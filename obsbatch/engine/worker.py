"""Stage 5, in the upload worker processes: upload the files of a batch, return one Outcome each.

A worker process is set up once by `init_worker`, the pool's initializer (reached through obsbatch.engine.tasks): it leaves signals to the parent,
configures logging, and builds its `WorkerContext` from `WorkerSettings` (the few settings a worker needs,
not the whole config) and the `Shared` memory the parent made. The context owns everything the process
holds: its own S3 client (clients neither pickle nor survive a fork), the lean PUT, upload threads and
request counters. Each task works over them in a module of its own: a file's upload (engine.upload), an
object's restore (engine.download), its verification (engine.check); here each becomes an Outcome.
`WorkerContext.upload_one` never raises: every path through it returns an Outcome of plain
data, and `run_batch` turns anything that escapes it anyway into a FAILED Outcome.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import signal
import threading
import time
from typing import Callable, Optional, Tuple

import botocore.exceptions
import botocore.session
import structlog

from obsbatch import logs
from obsbatch.s3 import lock, put
from obsbatch.s3 import client as s3
from obsbatch.engine.concurrency import per_worker
from obsbatch.config import MiB
from obsbatch.models import Kind, Outcome, Reason, RestoreItem, VerifyItem, WorkItem, crashed, not_started
from obsbatch.engine.shared import Shared
from obsbatch.engine.upload import Cancelled, FileChanged, NotVerified, Uploader
from obsbatch.engine.settings import WorkerSettings

log = structlog.get_logger()

#: Seconds of one wait for an upload thread's task: how late a SIGTERM may be acted on at worst (UploadThreads.map).
_WAIT_SLICE = 0.2
#: `obsbatch restore`: objects up to this size are read whole through the lean GET (WorkerContext._lean_get).
LEAN_GET_BYTES = 1 * MiB


class RequestCounts(threading.local):
    """HTTP requests sent and API calls made by this thread; per file, their differences give
    Outcome.attempts and Outcome.retries. Per thread, because a worker uploads several files at once
    (WorkerSettings.threads), and botocore's event hooks run in the thread that makes the call."""

    sent = 0
    calls = 0
    recalls = 0  # calls that upload.Uploader.call itself repeated (BadDigest): retries, not new operations

    def snapshot(self) -> tuple[int, int, int]:
        return self.sent, self.calls, self.recalls

    def add(self, spent: tuple[int, int, int]) -> None:
        self.sent += spent[0]
        self.calls += spent[1]
        self.recalls += spent[2]

    def since(self, before: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.sent - before[0], self.calls - before[1], self.recalls - before[2]


class InFlight:
    """This worker's uploads in flight: its share of the run's level (shared.Shared.level), and its gauges.

    Every task that carries requests (a file's upload, or one part of a multipart upload) is run inside
    `with in_flight:`, which waits while the worker already has its share in flight. The share follows the
    level the parent's controller sets, from one task to the next: nothing restarts. Without shared memory
    (a WorkerContext built by a test) the share is `fixed`.
    """

    def __init__(self, shared: Optional[Shared], workers: int, fixed: int):
        self.shared = shared
        self.workers = workers
        self.fixed = fixed
        self.slot = shared.gauges.take_slot() if shared is not None else 0
        self.active = 0
        self._changed = threading.Condition()

    def share(self) -> int:
        if self.shared is None:
            return self.fixed
        return per_worker(self.shared.level.value, self.workers)

    def __enter__(self) -> "InFlight":
        with self._changed:
            # The level may rise while a task waits: look again every 50 ms, not only when one leaves.
            while self.active >= self.share():
                self._changed.wait(0.05)
            self.active += 1
            self._publish(done=0)
        return self

    def __exit__(self, *exc) -> None:
        with self._changed:
            self.active -= 1
            self._publish(done=1)
            self._changed.notify()

    def _publish(self, done: int) -> None:
        if self.shared is not None:
            gauges = self.shared.gauges
            gauges.busy[self.slot] = self.active
            gauges.done[self.slot] += done

    def resent(self) -> None:
        """A request is being sent again after a failure: a sign of a struggling server or link."""
        if self.shared is not None:
            with self._changed:
                self.shared.gauges.resent[self.slot] += 1

    def request(self) -> None:
        """An HTTP request sent or answered: the watchdog's sign of life (no lock: it only looks for change)."""
        if self.shared is not None:
            self.shared.gauges.requests[self.slot] += 1


class UploadThreads:
    """A worker's upload threads: daemon threads fed from a queue, started as the worker's share of the level
    needs them (up to `most`). They send the single PUTs of a batch, or the parts of one multipart upload
    (then the batch holds that file alone, and the main thread waits). Each task runs inside `in_flight`.

    Daemon threads, not a ThreadPoolExecutor, whose threads the interpreter joins at exit: a worker told
    to stop (SIGTERM, turned into SystemExit in the main thread) must abort its multipart upload and go,
    not wait for the requests in flight. A single PUT or a part cut short stores nothing.
    """

    def __init__(self, most: int, in_flight: InFlight):
        self.most = most
        self.in_flight = in_flight
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.started = 0

    def _grow(self, wanted: int) -> None:
        while self.started < min(self.most, wanted):
            threading.Thread(target=self._run, name=f"obsbatch-upload-{self.started}", daemon=True).start()
            self.started += 1

    def _run(self) -> None:
        while True:
            function, arg, index, results, done = self.tasks.get()
            try:
                with self.in_flight:
                    results[index] = (True, function(arg))
            except BaseException as exc:  # handed to the waiting thread, which decides
                results[index] = (False, exc)
            done.release()

    def map(self, function: Callable, args: list) -> list:
        """function(arg) for each arg on the threads; [(True, value) or (False, exception)], in order."""
        self._grow(min(len(args), self.in_flight.share()))
        results: list = [None] * len(args)
        done = threading.Semaphore(0)
        for index, arg in enumerate(args):
            self.tasks.put((function, arg, index, results, done))
        for _ in args:
            # In slices: a SIGTERM that lands between the interpreter's check for signals and the wait in
            # sem_wait() is otherwise acted on only when a task next releases the semaphore (a lost wakeup, as
            # pool.UploadPool.terminate describes for idle workers): CI saw a stop wait out an 8 s held part.
            # Between two slices the interpreter runs the handler, so a stop costs at most one slice here.
            while not done.acquire(timeout=_WAIT_SLICE):
                pass
        return results


def _counted(counts: RequestCounts, spent: list, function: Callable, arg):
    """function(arg) on an upload thread, what it sent added to `spent` (for the thread that waits on it)."""
    before = counts.snapshot()
    try:
        return function(arg)
    finally:
        spent.append(counts.since(before))


def run_batch(items: list, upload: Callable[[WorkItem], Outcome], threads: Optional[UploadThreads],
              in_flight: Optional[InFlight] = None) -> list:
    """upload(item) for each item, on `threads` if given (else here, one after another, each inside
    `in_flight`): one Outcome each.

    `upload` is not expected to raise; if it does, that file gets a FAILED Outcome (`crashed`) rather than
    an exception object where an Outcome belongs (issue #11, defect 5).
    """
    if threads is None:
        results = []
        for item in items:
            try:
                with in_flight or contextlib.nullcontext():
                    results.append((True, upload(item)))
            except Exception as exc:
                results.append((False, exc))
    else:
        results = threads.map(upload, items)
    return [value if ok else crashed(item, value) for item, (ok, value) in zip(items, results)]


def _attempt_of(header) -> int:
    """N of an `amz-sdk-request: attempt=N; max=M` header (bytes or str), 1 without one."""
    if isinstance(header, bytes):
        header = header.decode("ascii", "replace")
    match = re.search(r"attempt=(\d+)", header or "")
    return int(match.group(1)) if match else 1


class WorkerContext:
    """What one worker process holds: its settings, S3 client, lean PUT, upload threads and request counts.

    Built once per process by `init_worker`; tests build one directly. `init_error` is set instead of raising
    when the client cannot be built: an initializer that raises breaks the whole pool, so every upload of
    this worker reports the reason instead (the parent's pre-flight makes this unlikely).
    """

    def __init__(self, settings: WorkerSettings, shared: Optional[Shared] = None, loader=None):
        self.settings = settings
        self.shared = shared
        self.counts = RequestCounts()
        self.client = None
        self.direct: Optional[put.DirectPut] = None  # the lean PutObject for single-part uploads
        self.init_error = ""
        self.in_flight = InFlight(shared, settings.workers, fixed=settings.threads)
        self._threads: Optional[UploadThreads] = None
        try:
            session = botocore.session.Session()
            if loader is not None:
                session.register_component("data_loader", loader)
            # One pooled connection per upload thread, plus one: no request waits for a connection.
            self.client = s3.make_client(settings.endpoint, pool_connections=settings.threads + 1, session=session)
        except Exception as exc:
            self.init_error = f"{type(exc).__name__}: {s3.error_message(exc)}"
            return
        events = self.client.meta.events
        events.register("before-send.s3", self._before_send)
        events.register("before-call.s3", self._before_call)
        events.register("response-received.s3", self._answered)
        if settings.endpoint.checksum_mode == "when_required":
            # CRC checksums (--checksum-mode when_supported) stay with botocore, which knows how to send them.
            self.direct, why = put.make(self.client, session, settings.bucket, settings.endpoint.max_attempts,
                                        settings.endpoint.verify, self._before_send, self._answered)
            if self.direct is None:
                log.debug("upload.direct_put_unavailable", reason=why)

    # --- request accounting (botocore's event hooks, and DirectPut's) ---------------------------------------

    def _answered(self, **kwargs) -> None:
        self.in_flight.request()

    def _before_send(self, request=None, attempt: Optional[int] = None, size: Optional[int] = None,
                     **kwargs) -> None:
        """Just before each HTTP request: pace it (--max-rps, --bwlimit), count it, note a re-send.

        botocore's before-send passes the request, whose Content-Length is its body's size and whose
        `amz-sdk-request: attempt=N; max=M` header (the SDKs' retry header, sent in standard mode by every
        botocore obsbatch allows) says which attempt it is; DirectPut passes both itself.
        """
        if self.shared is not None and self.shared.rate is not None:
            self.shared.rate.wait()
        if self.shared is not None and self.shared.bandwidth is not None:
            if size is None and request is not None:
                size = int(request.headers.get("Content-Length") or 0)
            self.shared.bandwidth.wait(size or 0)
        self.counts.sent += 1  # returns None: botocore goes on to send the request itself
        if attempt is None and request is not None:
            attempt = _attempt_of(request.headers.get("amz-sdk-request"))
        if attempt and attempt > 1:
            self.in_flight.resent()
        self.in_flight.request()

    def _received(self, size: int) -> None:
        """Response bytes as a download or a read-back takes them: --bwlimit weighs them as it weighs the
        bodies an upload sends (one schedule for the run, whichever way the bytes go)."""
        if self.shared is not None and self.shared.bandwidth is not None:
            self.shared.bandwidth.wait(size)

    def _before_call(self, **kwargs) -> None:
        self.counts.calls += 1

    @property
    def threads(self) -> Optional[UploadThreads]:
        """This worker's upload threads; None when it may never have more than one upload in flight."""
        if self._threads is None and self.settings.threads > 1:
            self._threads = UploadThreads(self.settings.threads, self.in_flight)
        return self._threads

    # --- the destination, a batch, a file -------------------------------------------------------------------

    def check_destination(self) -> Tuple[str, str, float, Optional[tuple], str]:
        """The pre-flight (remote.preflight) with this worker's client: ("ok", "", round trip seconds, (base URL,
        region) botocore resolved for the bucket, the snapshot id the seed marker names or ""), ("fatal",
        sentence, 0, None, "") or ("unavailable", sentence, 0, None, ""), plain data for the parent to raise as
        PreflightError / EndpointUnavailable, to start its concurrency from, to send its own records to
        (remote.Remote.learned_base) and to seed its journal from (remote.Remote.seed_rows): read here, the
        parent builds no client of its own when there is nothing to seed from (a first run's usual case)."""
        from obsbatch.s3 import remote
        from obsbatch.errors import EndpointUnavailable, PreflightError

        if self.init_error:
            return "fatal", f"cannot create an S3 client: {self.init_error}", 0.0, None, ""
        endpoint = self.settings.endpoint
        try:
            round_trip = remote.preflight(self.client, self.settings.bucket, self.settings.prefix,
                                          endpoint.url or "AWS", endpoint.retries, lock=self.settings.archive.locking)
        except EndpointUnavailable as exc:
            return "unavailable", str(exc), 0.0, None, ""
        except PreflightError as exc:
            return "fatal", str(exc), 0.0, None, ""
        seed = remote.marked_snapshot(self.client, self.settings.bucket, self.settings.seed_marker)
        return "ok", "", round_trip, remote.base_url(self.client, self.settings.bucket), seed

    def upload_batch(self, items: list) -> list:
        """Several files per round trip through the pool (pool.UploadPool): one Outcome each, in order.

        Small files go to this worker's threads, WorkerSettings.threads at a time. A file for multipart
        (always alone in its batch) and single-file batches run here, in the main thread, so that a SIGTERM
        can abort a multipart upload.
        """
        multipart = any(item.size >= self.settings.multipart_threshold for item in items)
        threads = None if len(items) == 1 or multipart else self.threads
        # A multipart upload's parts go through `in_flight` one by one (on the threads); the file itself not.
        return run_batch(items, functools.partial(self._unless_stopping, self.upload_one), threads,
                         None if multipart else self.in_flight)

    def restore_batch(self, items: list) -> list:
        """`obsbatch restore`: bring back a batch of objects (RestoreItems) on this worker's threads. An object
        read in ranges (alone in its batch, as a multipart upload) runs here, in the main thread, outside
        `in_flight`: its ranges take the worker's share on the threads, as a multipart upload's parts do."""
        ranges = self._ranges
        ranged = len(items) == 1 and ranges is not None and ranges.wanted(items[0].size)
        threads = None if len(items) == 1 else self.threads
        return run_batch(items, functools.partial(self._unless_stopping, self.restore_one), threads,
                         None if ranged else self.in_flight)

    @functools.cached_property
    def _ranges(self):
        """How this worker reads a large object (download.Ranges): in part-sized ranges on its threads; None
        when it has no threads (one request at a time)."""
        from obsbatch.engine import download

        if self.threads is None:
            return None
        return download.Ranges(self.settings.multipart_threshold, self.settings.multipart_chunksize,
                               self.run_on_threads)

    def run_on_threads(self, function: Callable, args: list) -> list:
        """function(arg) for each arg on this worker's threads, each inside `in_flight`, their requests
        counted for this thread's object (Outcome.attempts); the first failure raised once all have ended."""
        spent: list = []
        try:
            results = self.threads.map(functools.partial(_counted, self.counts, spent, function), args)
        finally:
            for counted in spent:
                self.counts.add(counted)
        failures = [value for ok, value in results if not ok]
        if failures:  # the failure itself, not a task that only stood down after it (Cancelled)
            raise next((exc for exc in failures if not isinstance(exc, Cancelled)), failures[0])
        return [value for _, value in results]

    def restore_one(self, item: RestoreItem) -> Outcome:
        """One object back (download.restore); never raises: FAILED with a reason, or SKIPPED/archived."""
        from obsbatch.engine import download

        started = time.time()
        before = self.counts.snapshot()
        try:
            if self.init_error:
                raise RuntimeError(f"the worker could not create its S3 client: {self.init_error}")
            fields = download.restore(self.client, self.settings.bucket, self.settings.archive, item,
                                      self._lean_get if self.direct is not None else None, self._received,
                                      self._ranges)
        except download.Mismatch as exc:
            fields = dict(kind=Kind.FAILED, error_type="NotVerified", message=str(exc))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if s3.error_code(exc) == "InvalidObjectState":  # S3: an archived object not thawed (GetObject)
                fields = dict(kind=Kind.SKIPPED, reason=Reason.ARCHIVED,
                              message="in an archive storage class: restore it (RestoreObject) first, then run again")
            else:
                fields = _store_failure(exc)
        except OSError as exc:
            fields = dict(kind=Kind.FAILED, error_type=type(exc).__name__,
                          message=f"cannot write {item.display}: {exc.strerror or exc}")
        return self._outcome(item, started, before, fields)

    def verify_batch(self, items: list) -> list:
        """`obsbatch verify`: check a batch of objects (VerifyItems) on this worker's threads."""
        threads = None if len(items) == 1 else self.threads
        return run_batch(items, functools.partial(self._unless_stopping, self.verify_one), threads, self.in_flight)

    def verify_one(self, item: VerifyItem) -> Outcome:
        """One object checked (check.check); never raises: VERIFIED, or FAILED (Missing, Different, an S3 error)."""
        from obsbatch.engine import check

        started = time.time()
        before = self.counts.snapshot()
        try:
            if self.init_error:
                raise RuntimeError(f"the worker could not create its S3 client: {self.init_error}")
            fields = check.check(self.client, self.settings.bucket, self.settings.archive, item, self._received)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            fields = _store_failure(exc)
        return self._outcome(item, started, before, fields)

    def _lean_get(self, item: RestoreItem) -> Optional[dict]:
        """GetObject of a small object through the lean path (put.DirectPut.get: the body read whole, so
        only up to LEAN_GET_BYTES, bounding memory at threads x that); None for a bigger one.

        Why: botocore's client.get_object costs ~2 ms of CPU per call, most of a small object's restore
        (issue #14), as put_object did for uploads (issue #12).
        """
        if item.size > LEAN_GET_BYTES:
            return None
        self.counts.calls += 1  # one GetObject; DirectPut counts its requests through _before_send
        return self.direct.get(item.key, self.settings.archive.customer_key_headers())

    def _outcome(self, item, started: float, before: tuple, fields: dict) -> Outcome:
        """The Outcome of one file or object: `fields`, and the requests this thread sent since `before`."""
        fields.setdefault("size", item.size)
        sent, calls, recalls = self.counts.since(before)
        return Outcome(path=item.display, key=item.key, attempts=sent, retries=max(sent - calls + recalls, 0),
                       started=started, ended=time.time(), **fields)

    def _unless_stopping(self, task: Callable, item) -> Outcome:
        """task(item), unless the parent is stopping (Shutdown.workers_flag): then the file or object comes back
        not started, so a stop waits for one per upload thread, never for whole batches."""
        if self.shared is not None and self.shared.stopping.value:
            return not_started(item)
        return task(item)

    @functools.cached_property
    def uploads(self) -> Uploader:
        """This worker's upload task (engine.upload), over its client, counts and threads."""
        return Uploader(self)

    def upload_one(self, item: WorkItem) -> Outcome:
        """Upload one file, verified; DEFERRED/changed if it moved under us; FAILED with a reason otherwise."""
        started = time.time()
        before = self.counts.snapshot()
        try:
            if self.init_error:
                raise RuntimeError(f"the worker could not create its S3 client: {self.init_error}")
            fields = self.uploads.upload(item)
        except FileChanged as exc:
            fields = dict(kind=Kind.DEFERRED, reason=Reason.CHANGED, message=str(exc))
        except NotVerified as exc:
            fields = dict(kind=Kind.FAILED, error_type="NotVerified", message=str(exc))
        except lock.NotLocked as exc:
            fields = dict(kind=Kind.FAILED, error_type="NotLocked", message=str(exc))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            # Before OSError: botocore's ReadTimeoutError and ConnectTimeoutError are OSErrors too (through
            # requests' exception classes) and are not failures to read the file.
            fields = _store_failure(exc)
        except FileNotFoundError:
            fields = dict(kind=Kind.SKIPPED, reason=Reason.VANISHED, message="deleted before it could be read")
        except OSError as exc:
            fields = dict(kind=Kind.FAILED, error_type=type(exc).__name__,
                          message=f"cannot read {item.display}: {exc.strerror or exc}")
        except Exception as exc:  # anything unforeseen: report, never raise
            fields = _store_failure(exc)
        fields.setdefault("mtime_ns", item.mtime_ns)
        return self._outcome(item, started, before, fields)

# --- the worker process ----------------------------------------------------------------------------------

#: This process's WorkerContext, set once by init_worker. The pool's task is a function found by name in
#: the worker, so what the initializer built must be reachable from it; this slot is the module's only state.
_context: Optional[WorkerContext] = None


def init_worker(settings: WorkerSettings, shared: Shared) -> None:
    """The pool's initializer, once per worker process: signals, logging, this process's WorkerContext."""
    global _context
    # The parent owns shutdown: Ctrl-C reaches the whole foreground process group, and only the parent
    # should decide what happens next. SIGTERM (the parent tearing the pool down) becomes SystemExit, so a
    # multipart upload in progress is aborted on the way out rather than left behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    logs.configure(settings.log_level, settings.log_format, host=settings.host_id)
    from obsbatch.engine import preload  # in the fork server already: botocore's S3 model, parsed once there

    _context = WorkerContext(settings, shared, preload.LOADER)


def _store_failure(exc: BaseException) -> dict:
    """The Outcome fields of a file or object whose request the store (or the way to it) refused, or of an
    unforeseen error: its code or class name, and one sentence (s3.error_message)."""
    return dict(kind=Kind.FAILED, error_type=s3.error_code(exc), message=s3.error_message(exc))


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def upload_batch(items: list) -> list:
    """The pool's task: this process's context uploads the batch (WorkerContext.upload_batch)."""
    return _context.upload_batch(items)


def restore_batch(items: list) -> list:
    """The restore's task: this process's context brings the batch back (WorkerContext.restore_batch)."""
    return _context.restore_batch(items)


def verify_batch(items: list) -> list:
    """The verify's task: this process's context checks the batch (WorkerContext.verify_batch)."""
    return _context.verify_batch(items)


def check_destination() -> Tuple[str, str, float, Optional[tuple], str]:
    """The pool's pre-flight task (WorkerContext.check_destination)."""
    return _context.check_destination()
