"""Stage 5, in the upload worker processes: upload the files of a batch, return one Outcome each.

A worker process is set up once by `init_worker`, the pool's initializer (reached through obsbatch.engine.tasks): it leaves signals to the parent,
configures logging, and builds its `WorkerContext` from `WorkerSettings` (the few settings a worker needs,
not the whole config) and the `Shared` memory the parent made. The context owns everything the process
holds: its own S3 client (clients neither pickle nor survive a fork), the lean PUT, upload threads and
request counters. `WorkerContext.upload_one` never raises: every path through it returns an Outcome of plain
data, and `run_batch` turns anything that escapes it anyway into a FAILED Outcome.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import math
import os
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
from obsbatch.config import MAX_PARTS, MiB
from obsbatch.models import Kind, Outcome, Reason, RestoreItem, VerifyItem, WorkItem, crashed, not_started
from obsbatch.engine.shared import Shared
from obsbatch.engine.settings import WorkerSettings

log = structlog.get_logger()

READ_BLOCK = 1 * MiB
#: Bytes of multipart parts a worker holds in memory at once: parts in flight are at most this over the part
#: size (at least one), whatever the level of uploads in flight (README "Memory").
PART_BYTES_IN_FLIGHT = 128 * MiB
#: Seconds of one wait for an upload thread's task: how late a SIGTERM may be acted on at worst (UploadThreads.map).
_WAIT_SLICE = 0.2
#: S3's largest CopyObject (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html): a renamed file
#: above it is uploaded again (a multipart copy by UploadPartCopy is not built).
COPY_OBJECT_BYTES = 5 * 1024 * MiB
#: What a store answers a CopyObject it will not make: the source version is gone (pruned, deleted), replaced
#: since it was journaled (the If-Match precondition), unreadable to this key (a write-only policy, another
#: SSE-C key), or copies are not implemented. The file is then uploaded; any other error is the file's.
_COPY_REFUSED = frozenset({"NoSuchKey", "NoSuchVersion", "404", "PreconditionFailed", "412", "AccessDenied",
                           "403", "InvalidRequest", "InvalidArgument", "400", "NotImplemented", "501",
                           "MethodNotAllowed", "InvalidObjectState"})
#: `obsbatch restore`: objects up to this size are read whole through the lean GET (WorkerContext._lean_get).
LEAN_GET_BYTES = 1 * MiB


class FileChanged(Exception):
    """The file no longer matches the stat the parent judged (internal to this module)."""


class NotVerified(Exception):
    """What the server reports storing is not what was sent (internal to this module)."""


class _Cancelled(Exception):
    """A part not begun because another part of the same upload failed (internal to this module)."""


class RequestCounts(threading.local):
    """HTTP requests sent and API calls made by this thread; per file, their differences give
    Outcome.attempts and Outcome.retries. Per thread, because a worker uploads several files at once
    (WorkerSettings.threads), and botocore's event hooks run in the thread that makes the call."""

    sent = 0
    calls = 0
    recalls = 0  # calls that WorkerContext.call itself repeated (BadDigest): retries, not new operations

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


def _md5_b64(data) -> tuple[str, str]:
    digest = hashlib.md5(data)
    return base64.b64encode(digest.digest()).decode("ascii"), digest.hexdigest()


_STAT_FIELDS = (("size", "st_size", "size"), ("mtime", "st_mtime_ns", "mtime_ns"),
                ("ctime", "st_ctime_ns", "ctime_ns"), ("inode", "st_ino", "ino"), ("device", "st_dev", "dev"))


def _check_same(item: WorkItem, st: os.stat_result, what: str) -> None:
    for label, st_attr, item_attr in _STAT_FIELDS:
        then, now = getattr(item, item_attr), getattr(st, st_attr)
        if now != then:
            raise FileChanged(f"{label} changed {what} ({then} -> {now}); deferred to the next run")


_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def _check_etag(item: WorkItem, etag: str, expected: str) -> None:
    """The stored object's ETag must be the one S3 computes for the bytes we sent.

    Single part: the body's MD5. Multipart: the MD5 of the parts' binary MD5s, then '-' and the part count.
    An ETag that is not of that form at all (SSE-KMS, SSE-C, some gateways) proves nothing either way; the
    server has already checked Content-MD5 on every request, so it is accepted.
    """
    if _MD5_ETAG.match(etag) and etag != expected:
        raise NotVerified(f"the server reports ETag {etag} for {item.key}, but the bytes sent have {expected}")


def part_size(size: int, chunksize: int) -> int:
    """The configured part size, raised (in whole MiB) until the file fits in S3's 10,000 parts."""
    if size <= chunksize * MAX_PARTS:
        return chunksize
    return math.ceil(size / MAX_PARTS / MiB) * MiB


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
                               self._run_on_threads)

    def _run_on_threads(self, function: Callable, args: list) -> list:
        """function(arg) for each arg on this worker's threads, each inside `in_flight`, their requests
        counted for this thread's object (Outcome.attempts); the first failure raised once all have ended."""
        spent: list = []
        try:
            results = self.threads.map(functools.partial(_counted, self.counts, spent, function), args)
        finally:
            for counted in spent:
                self.counts.add(counted)
        failures = [value for ok, value in results if not ok]
        if failures:  # the failure itself, not a task that only stood down after it (_Cancelled)
            raise next((exc for exc in failures if not isinstance(exc, _Cancelled)), failures[0])
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

    def upload_one(self, item: WorkItem) -> Outcome:
        """Upload one file, verified; DEFERRED/changed if it moved under us; FAILED with a reason otherwise."""
        started = time.time()
        before = self.counts.snapshot()
        try:
            if self.init_error:
                raise RuntimeError(f"the worker could not create its S3 client: {self.init_error}")
            fields = self._upload(item)
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

    def _upload(self, item: WorkItem) -> dict:
        with self._open(item) as f:
            st = self._check_unchanged(item, f, "before reading")
            if item.remote_etag:
                found = self._already_stored(item, f)
                if found is not None:
                    return found
            if item.size >= self.settings.multipart_threshold:
                return self._put_multipart(item, f, st)
            return self._put_single(item, f, st)

    # --- the judged file, read safely ----------------------------------------------------------------------

    def _open(self, item: WorkItem):
        """Open the judged file for reading, safely even if its name now points at something else.

        O_NONBLOCK: if the name was replaced by a FIFO since the walk, open() returns instead of waiting for
        a writer forever (the inode check then reports the change); it does nothing to reads of regular
        files. O_NOFOLLOW (unless --follow-symlinks): a name replaced by a symlink is not followed.
        O_NOATIME: a backup should not touch access times (tar --atime-preserve, borg); the kernel allows it
        only to the file's owner or CAP_FOWNER (EPERM otherwise), so it is dropped when refused.
        """
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if self.settings.follow_symlinks else os.O_NOFOLLOW)
        try:
            try:
                fd = os.open(item.path, flags | os.O_NOATIME)
            except PermissionError:
                fd = os.open(item.path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileChanged("replaced by a symbolic link since the walk; deferred to the next run") from None
            raise
        return os.fdopen(fd, "rb")

    def _check_unchanged(self, item: WorkItem, f, what: str) -> os.stat_result:
        """The open file and the name both still match the judged stat (borg's stat-before-and-after);
        returns the open file's stat, whose mode and owner go into the object's metadata.

        fstat catches writes to the file we hold; stat of the path catches the name now pointing at another
        file (replaced by rename), whose new content we would otherwise label with the old name's stat. A
        chmod or chown changes ctime, so the mode and owner read here are the ones the gate judged.
        """
        st = os.fstat(f.fileno())
        _check_same(item, st, what)
        _check_same(item, os.stat(item.path, follow_symlinks=self.settings.follow_symlinks), what)
        return st

    def _already_stored(self, item: WorkItem, f) -> Optional[dict]:
        """--verify-remote: is the same-size object under the key this file's content? Then nothing to upload.

        A single-part object's ETag is its MD5. A multipart ETag cannot be recomputed without the original
        part size, and under SSE-KMS or SSE-C an ETag is no MD5, so the object's sha256 metadata (one HEAD)
        is compared instead; without it, the file is uploaded.
        """
        md5, sha = hashlib.md5(), hashlib.sha256()
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            md5.update(block)
            sha.update(block)
        self._check_unchanged(item, f, "while comparing")
        f.seek(0)
        if "-" in item.remote_etag or not self.settings.archive.etag_is_md5:
            head = self._head(item.key, item.remote_version)
            same = head.get("Metadata", {}).get("sha256") == sha.hexdigest() and head.get("ContentLength") == item.size
        else:
            same = item.remote_etag == md5.hexdigest()
        if not same:
            return None
        return dict(kind=Kind.SKIPPED, reason=Reason.ALREADY_STORED, etag=item.remote_etag, sha256=sha.hexdigest(),
                    version_id=item.remote_version,
                    message="the object under this key already holds this content")

    # --- requests ------------------------------------------------------------------------------------------

    def call(self, operation, **params):
        """One botocore call, made again when the server says the body arrived corrupted (botocore does not
        retry that), within the same budget as any fault: at most --retries + 1 requests in all."""
        counts = self.counts
        first = counts.sent
        attempt = 0
        while True:
            try:
                return operation(**params)
            except botocore.exceptions.ClientError as exc:
                attempt += 1
                code = s3.error_code(exc)
                if code not in s3.BODY_CORRUPTED_CODES or counts.sent - first >= self.settings.endpoint.max_attempts:
                    raise
                log.warning("upload.retry", key=params.get("Key"), error_type=code, attempt=attempt)
                counts.recalls += 1
                time.sleep(s3.backoff(attempt, throttled=False))

    def _head(self, key: str, version_id: str = "") -> dict:
        """HeadObject of `key` (of one version, if given), with the SSE-C key where objects need it."""
        return self.client.head_object(Bucket=self.settings.bucket, Key=key,
                                       **self.settings.archive.read_params(version_id))

    def _stored(self, item: WorkItem, etag: str, sha256: str, version_id: str, retain_until,
                multipart: bool = False) -> dict:
        """The Outcome fields of an upload the server accepted, once the read-back (if any) agrees: one HEAD
        of the stored version for --verify-after-upload and for an Object Lock, whichever asks."""
        controls = self.settings.archive
        if self.settings.verify_after_upload or controls.locking:
            head = self._head(item.key, version_id)
            if self.settings.verify_after_upload:
                stored = (head.get("ContentLength"), head.get("ETag", "").strip('"'),
                          head.get("Metadata", {}).get("sha256"))
                if stored != (item.size, etag, sha256):
                    raise NotVerified(f"read back {item.key}: length, ETag, sha256 = {stored}, expected "
                                      f"{(item.size, etag, sha256)}")
            if controls.locking:
                lock.hold(controls, self.client, self.settings.bucket, item.key, version_id, retain_until, head)
        return dict(kind=Kind.UPLOADED, etag=etag, sha256=sha256, version_id=version_id, multipart=multipart,
                    retain_until=f"{retain_until:%Y-%m-%dT%H:%M:%SZ}" if retain_until else "")


    def _put_single(self, item: WorkItem, f, st: os.stat_result) -> dict:
        data = f.read(item.size + 1)  # one byte more than judged: a file that grew is caught here
        if len(data) != item.size:
            raise FileChanged(f"read {len(data)} bytes, expected {item.size}; deferred to the next run")
        self._check_unchanged(item, f, "while reading")
        md5_b64, md5_hex = _md5_b64(data)
        sha256 = hashlib.sha256(data).hexdigest()
        copied = self._copied(item, st, sha256, md5_hex)
        if copied is not None:
            return copied
        archive = self.settings.archive
        metadata = archive.object_metadata(sha256, item.mtime_ns, st)
        retain_until = archive.retain_until(time.time())
        # Content-MD5 makes the server verify the body and reject it (BadDigest) rather than store a torn copy.
        if self.direct is not None:
            self.counts.calls += 1  # one PutObject; DirectPut counts its requests through _before_send
            resp = self.direct.put(item.key, data, md5_b64, sha256, archive.headers(metadata, retain_until))
        else:
            resp = self.call(self.client.put_object, Bucket=self.settings.bucket, Key=item.key, Body=data,
                             ContentMD5=md5_b64, **archive.params(metadata, retain_until))
        etag = resp.get("ETag", "").strip('"')
        if archive.etag_is_md5:
            _check_etag(item, etag, md5_hex)
        return self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until)

    # --- multipart -----------------------------------------------------------------------------------------

    def _hash_file(self, item: WorkItem, f) -> Tuple[str, str]:
        """SHA-256 of the whole file, needed up front: metadata is fixed at CreateMultipartUpload; and its MD5
        where a copy may store it instead (the ETag a copy answers with on AWS), else ""."""
        sha = hashlib.sha256()
        md5 = hashlib.md5() if item.copy_source is not None and item.size <= COPY_OBJECT_BYTES else None
        total = 0
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            sha.update(block)
            if md5 is not None:
                md5.update(block)
            total += len(block)
        if total != item.size:
            raise FileChanged(f"read {total} bytes, expected {item.size}; deferred to the next run")
        return sha.hexdigest(), (md5.hexdigest() if md5 is not None else "")

    def _copied(self, item: WorkItem, st: os.stat_result, sha256: str, md5_hex: str) -> Optional[dict]:
        """Store the file by a server-side CopyObject if an object already holds its bytes (item.copy_source:
        a rename, a moved directory, a copy, or only its mode, owner or mtime changed): the file's own metadata
        replaces the source's, and none of its bytes cross the network. None: upload it as usual.

        The bytes are proven the file's before and after: its sha256, read here, is the one the source's
        verified upload recorded; the server copies that version only while it still has the journaled ETag
        (x-amz-copy-source-if-match), and the copy's ETag must be the source's or the file's MD5 (a store that
        ignores the precondition, such as moto's, is caught there and the file uploaded over the copy).
        """
        source = item.copy_source
        if source is None or source.sha256 != sha256 or item.size > COPY_OBJECT_BYTES:
            return None
        archive = self.settings.archive
        retain_until = archive.retain_until(time.time())
        params = archive.copy_params(self.settings.bucket, source.key, source.version_id, source.etag,
                                     archive.object_metadata(sha256, item.mtime_ns, st), retain_until)
        # A small file's task holds its place in flight already (upload_batch); a multipart-sized one does not.
        place = self.in_flight if item.size >= self.settings.multipart_threshold else contextlib.nullcontext()
        try:
            with place:
                resp = self.client.copy_object(Bucket=self.settings.bucket, Key=item.key, **params)
        except botocore.exceptions.ClientError as exc:
            if s3.error_code(exc) not in _COPY_REFUSED:
                raise
            log.info("upload.copy_refused", path=item.display, source=source.key, error_type=s3.error_code(exc),
                     error=s3.error_message(exc))
            return None
        etag = resp.get("CopyObjectResult", {}).get("ETag", "").strip('"')
        if archive.etag_is_md5 and etag not in (source.etag, md5_hex):
            log.warning("upload.copy_mismatch", path=item.display, source=source.key, etag=etag,
                        detail="the copy is not the file's bytes; uploading them over it")
            return None
        fields = self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until, multipart="-" in etag)
        fields["copied_from"] = source.key
        return fields

    def _put_multipart(self, item: WorkItem, f, st: os.stat_result) -> dict:
        bucket = self.settings.bucket
        archive = self.settings.archive
        sha256, md5_hex = self._hash_file(item, f)
        self._check_unchanged(item, f, "while hashing")
        copied = self._copied(item, st, sha256, md5_hex)
        if copied is not None:
            return copied
        chunk = part_size(item.size, self.settings.multipart_chunksize)
        numbers = range(1, max(1, math.ceil(item.size / chunk)) + 1)
        # The retention counts from the start of the upload: the date goes with CreateMultipartUpload.
        retain_until = archive.retain_until(time.time())
        upload_id = self.client.create_multipart_upload(
            Bucket=bucket, Key=item.key,
            **archive.params(archive.object_metadata(sha256, item.mtime_ns, st), retain_until))["UploadId"]
        # Parts go up `threads` at a time, as s5cmd and aws-cli send them: a lone big file would otherwise
        # use one connection of the worker's many (issue #5). Each part is read with pread at its own
        # offset. A failed part stops the parts not yet begun; the map returns once the others have ended,
        # so no part lands after the abort below. SIGTERM interrupts the wait itself, and the abort goes
        # out at once.
        failed = threading.Event()
        # Memory stays bounded whatever the level: at most PART_BYTES_IN_FLIGHT of parts read at once.
        memory = threading.BoundedSemaphore(max(1, PART_BYTES_IN_FLIGHT // chunk))
        send = functools.partial(self._upload_part, item, f.fileno(), chunk, upload_id, failed, memory)
        try:
            if self.threads is None:
                results = []
                for number in numbers:
                    with self.in_flight:
                        results.append(send(number))
            else:
                results = self._run_on_threads(send, list(numbers))
            # The last chance to refuse: nothing is visible under the key until Complete succeeds.
            self._check_unchanged(item, f, "while uploading")
            resp = self.client.complete_multipart_upload(Bucket=bucket, Key=item.key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": [part for part, _ in results]},
                                                         **archive.customer_key_params())
        except BaseException:
            self._abort(item, upload_id)
            raise
        etag = resp.get("ETag", "").strip('"')
        # After Complete the object exists; a mismatch is reported FAILED (never journaled) and the next run
        # uploads the file again over it.
        digests = b"".join(digest for _, digest in results)
        if archive.etag_is_md5:
            _check_etag(item, etag, f"{hashlib.md5(digests).hexdigest()}-{len(results)}")
        self._abort_leftovers(item, upload_id)
        return self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until, multipart=True)

    def _upload_part(self, item: WorkItem, fd: int, chunk: int, upload_id: str, failed: threading.Event,
                     memory: threading.BoundedSemaphore, number: int):
        """Read and send part `number`; returns ({"ETag", "PartNumber"}, binary MD5). Once a part has failed
        (`failed`), the parts not yet begun stand down (_Cancelled)."""
        if failed.is_set():
            raise _Cancelled()
        try:
            with memory:
                offset = (number - 1) * chunk
                length = min(chunk, item.size - offset)
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    raise FileChanged(f"read {offset + len(data)} bytes, expected {item.size}; deferred to the next run")
                md5_b64, md5_hex = _md5_b64(data)
                resp = self.call(self.client.upload_part, Bucket=self.settings.bucket, Key=item.key,
                                 UploadId=upload_id, PartNumber=number, Body=data, ContentMD5=md5_b64,
                                 **self.settings.archive.customer_key_params())
            return {"ETag": resp["ETag"], "PartNumber": number}, bytes.fromhex(md5_hex)
        except BaseException:
            failed.set()
            raise

    def _abort_leftovers(self, item: WorkItem, completed: str) -> None:
        """Abort the other unfinished multipart uploads of this very key, once this one has completed: left by
        an earlier run whose abort could not reach a restarting server, or whose CreateMultipartUpload answer
        never came (so it never knew the id), their parts are billed until a lifecycle rule removes them. One
        ListMultipartUploads per completed multipart file. One run uploads a key at a time (the journal's lock),
        so another upload of it is a leftover, or a second writer of the same prefix, whose Complete then fails
        and whose next run uploads again. Best effort: a failure here is logged, never the file's."""
        bucket = self.settings.bucket
        try:
            listed = self.client.list_multipart_uploads(Bucket=bucket, Prefix=item.key).get("Uploads", [])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.debug("upload.leftovers_unlisted", key=item.key, error_type=s3.error_code(exc),
                      error=s3.error_message(exc))
            return
        for upload in listed:
            if upload.get("Key") == item.key and upload.get("UploadId") not in (None, completed):
                log.info("upload.leftover_aborted", key=item.key, upload_id=upload["UploadId"],
                         initiated=str(upload.get("Initiated", "")))
                self._abort(item, upload["UploadId"])

    def _abort(self, item: WorkItem, upload_id: str) -> None:
        """AbortMultipartUpload, so no incomplete upload (and its billed parts) is left behind."""
        try:
            self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=item.key, UploadId=upload_id)
        except Exception as exc:
            # Still reported: the file's Outcome is FAILED/DEFERRED anyway; a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) is the backstop the README recommends.
            log.warning("upload.abort_failed", key=item.key, upload_id=upload_id, error_type=s3.error_code(exc),
                        error=s3.error_message(exc))


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
