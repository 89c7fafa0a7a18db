"""Stage 5, in the pool's worker processes: upload one WorkItem, return one Outcome.

Each worker builds its own client in `init_worker` (clients do not pickle and must not be shared across
fork). `upload_one` never raises: every path through it returns an Outcome of plain data.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import math
import os
import re
import queue
import signal
import threading
import time

import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.retries import standard
import structlog

from obsbatch import logs, put, s3
from obsbatch.config import MAX_PARTS, MiB, Config
from obsbatch.models import Kind, Outcome, Reason, WorkItem, not_started

log = structlog.get_logger()

_client = None
_direct: put.DirectPut | None = None  # the lean PutObject for single-part uploads (obsbatch.put)
_config: Config | None = None
_init_error = ""
_ticks = None  # the shared array of per-worker request counters, and this worker's slot in it
_slot = 0
_stopping = None  # shared flag set by the parent on its first stop signal: start no further file
_threads: "Threads | None" = None  # this worker's upload threads (Config.threads), started on first use
_rate = None  # the shared --max-rps schedule (obsbatch.ratelimit), or None


class _Counts(threading.local):
    """HTTP requests sent and API calls made by this thread; per file, their differences give
    Outcome.attempts and Outcome.retries (botocore re-sends inside one call, upload_one re-calls).
    Per thread, because a worker uploads several files at once (Config.threads); botocore's event hooks
    run in the thread that makes the call."""

    sent = 0
    calls = 0
    recalls = 0  # calls that upload_one itself repeated (BadDigest): retries, not new operations


_counts = _Counts()

READ_BLOCK = 1 * MiB


def _warm_loader():
    """botocore's data loader with the S3 model files already parsed.

    This module is preloaded by the fork server (pipeline._context), so the parsing happens once there and
    every worker inherits the result: building a client then takes ~5 ms instead of ~65 ms (issue #5).
    These are the files a client creation loads; if a botocore version loads others, they are simply read
    per client, as before.
    """
    loader = botocore.loaders.create_loader()
    try:
        for name in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(name)
        for kind in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model("s3", kind)
    except Exception:  # noqa: BLE001 - an optimisation only; the client loads what it needs itself
        pass
    return loader


_LOADER = _warm_loader()


class FileChanged(Exception):
    """The file no longer matches the stat the parent judged (internal to this module)."""


def init_worker(config: Config, starts=None, ticks=None, stopping=None, rate=None) -> None:
    """Pool initializer: signals, logging, this process's own S3 client.

    starts: a shared counter of worker starts; the parent reads a start beyond the first N as a death.
    ticks: a shared array of counters, one per worker start (modulo its length), bumped on every HTTP
        request sent and answered: progress for the parent's systemd watchdog, which cannot otherwise see
        inside a long upload.
    stopping: a shared flag; once the parent sets it, the files of a batch not yet begun are returned as
        not started, so a stop waits for one file per worker, not for whole batches.
    rate: a shared ratelimit.RateLimit (--max-rps) every HTTP request waits for, or None.
    """
    global _client, _direct, _config, _init_error, _ticks, _slot, _stopping, _threads, _rate
    _ticks = ticks
    _rate = rate
    _stopping = stopping
    _init_error = ""
    if starts is not None:
        with starts.get_lock():
            _slot = starts.value
            starts.value += 1
    # The parent owns shutdown: Ctrl-C reaches the whole foreground process group, and only the parent
    # should decide what happens next. SIGTERM (the parent's Pool.terminate) becomes SystemExit, so a
    # multipart upload in progress is aborted on the way out rather than left behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    logs.configure(config.debug, config.log_format)
    _config = config
    _direct = None
    _threads = None
    try:
        session = botocore.session.Session()
        session.register_component("data_loader", _LOADER)
        # One pooled connection per upload thread, plus one: no request waits for a connection.
        _client = s3.make_client(config, pool_connections=config.threads + 1, session=session)
    except Exception as exc:
        # An initializer that raises makes Pool respawn the worker forever and the run hang; instead every
        # upload of this worker reports the reason (the parent's pre-flight makes this unlikely).
        _init_error = f"{type(exc).__name__}: {s3.error_message(exc)}"
        return
    _client.meta.events.register("before-send.s3", _count_send)
    _client.meta.events.register("before-call.s3", _count_call)
    _client.meta.events.register("response-received.s3", _tick)
    if config.checksum_mode == "when_required":
        # CRC checksums (--checksum-mode when_supported) stay with boto3, which knows how to send them.
        _direct, why = put.make(_client, session, config.bucket, config.retries + 1, _count_send, _tick)
        if _direct is None:
            log.debug("upload.direct_put_unavailable", reason=why)


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def _tick(**kwargs):
    if _ticks is not None:
        # This worker's own slot: no other process writes it. Its threads may race on the increment and
        # lose one now and then; the parent only watches for change, which a lost increment still is.
        _ticks[_slot % len(_ticks)] += 1


def _count_send(**kwargs):
    """Just before each HTTP request (botocore's before-send, and DirectPut's): pace it, count it."""
    if _rate is not None:
        _rate.wait()
    _counts.sent += 1  # returns None: botocore goes on to send the request itself
    _tick()


def _count_call(**kwargs):
    _counts.calls += 1


class Threads:
    """A worker's upload threads: daemon threads fed from a queue. They send single PUTs of a batch, or the
    parts of one multipart upload (then the batch holds that file alone, and the main thread waits).

    Daemon threads, not a ThreadPoolExecutor, whose threads the interpreter joins at exit: a worker told
    to stop (SIGTERM, turned into SystemExit in the main thread) must abort its multipart upload and go,
    not wait for the requests in flight. A single PUT or a part cut short stores nothing.
    """

    def __init__(self, count: int):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        for n in range(count):
            threading.Thread(target=self._run, name=f"obsbatch-upload-{n}", daemon=True).start()

    def _run(self) -> None:
        while True:
            function, index, results, done = self.tasks.get()
            try:
                results[index] = (True, function())
            except BaseException as exc:  # handed to the waiting thread, which decides
                results[index] = (False, exc)
            done.release()

    def map(self, functions: list) -> list:
        """Call each function on a thread; return [(True, value) or (False, exception)] in order."""
        results: list = [None] * len(functions)
        done = threading.Semaphore(0)
        for index, function in enumerate(functions):
            self.tasks.put((function, index, results, done))
        for _ in functions:
            done.acquire()
        return results


def _threads_of_this_worker() -> "Threads | None":
    global _threads
    if _config is None or _config.threads == 1:
        return None
    if _threads is None:
        _threads = Threads(_config.threads)
    return _threads


def _one_unless_stopping(item: WorkItem) -> Outcome:
    return not_started(item) if _stopping is not None and _stopping.value else upload_one(item)


def upload_batch(items: list) -> list:
    """The pool's task: several files per round trip through the pool (see pipeline.upload_all).

    Small files go to this worker's threads, Config.threads at a time. A file for multipart (always alone
    in its batch: pipeline.upload_all) and single-file batches run here, in the main thread.
    """
    threads = _threads_of_this_worker()
    if threads is None or len(items) == 1 or any(item.size >= _config.multipart_threshold for item in items):
        return [_one_unless_stopping(item) for item in items]
    return [value for _, value in threads.map([functools.partial(_one_unless_stopping, item) for item in items])]


def upload_one(item: WorkItem) -> Outcome:
    """Upload one file, verified; DEFERRED/changed if it moved under us; FAILED with a reason otherwise."""
    started = time.time()
    counts = _counts
    sent_before, calls_before, recalls_before = counts.sent, counts.calls, counts.recalls
    try:
        if _init_error:
            raise RuntimeError(f"the worker could not create its S3 client: {_init_error}")
        fields = _upload(item)
    except FileChanged as exc:
        fields = dict(kind=Kind.DEFERRED, reason=Reason.CHANGED, message=str(exc))
    except NotVerified as exc:
        fields = dict(kind=Kind.FAILED, error_type="NotVerified", message=str(exc))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        # Before OSError: botocore's ReadTimeoutError and ConnectTimeoutError are OSErrors too (through
        # requests' exception classes) and are not failures to read the file.
        fields = dict(kind=Kind.FAILED, error_type=s3.error_code(exc), message=s3.error_message(exc))
    except FileNotFoundError:
        fields = dict(kind=Kind.SKIPPED, reason=Reason.VANISHED, message="deleted before it could be read")
    except OSError as exc:
        fields = dict(kind=Kind.FAILED, error_type=type(exc).__name__,
                      message=f"cannot read {item.display}: {exc.strerror or exc}")
    except Exception as exc:  # anything unforeseen: report, never raise
        fields = dict(kind=Kind.FAILED, error_type=s3.error_code(exc), message=s3.error_message(exc))
    fields.setdefault("size", item.size)
    fields.setdefault("mtime_ns", item.mtime_ns)
    attempts = counts.sent - sent_before
    retries = attempts - (counts.calls - calls_before) + (counts.recalls - recalls_before)
    return Outcome(path=item.display, key=item.key, attempts=attempts, retries=max(retries, 0),
                   started=started, ended=time.time(), **fields)


_STAT_FIELDS = (("size", "st_size", "size"), ("mtime", "st_mtime_ns", "mtime_ns"),
                ("ctime", "st_ctime_ns", "ctime_ns"), ("inode", "st_ino", "ino"), ("device", "st_dev", "dev"))


def _check_same(item: WorkItem, st: os.stat_result, what: str) -> None:
    for label, st_attr, item_attr in _STAT_FIELDS:
        then, now = getattr(item, item_attr), getattr(st, st_attr)
        if now != then:
            raise FileChanged(f"{label} changed {what} ({then} -> {now}); deferred to the next run")


def _check_unchanged(item: WorkItem, f, what: str) -> None:
    """The open file and the name both still match the judged stat (borg's stat-before-and-after).

    fstat catches writes to the file we hold; stat of the path catches the name now pointing at another
    file (replaced by rename), whose new content we would otherwise label with the old name's stat.
    """
    _check_same(item, os.fstat(f.fileno()), what)
    _check_same(item, os.stat(item.path, follow_symlinks=_config.follow_symlinks), what)


def _md5_b64(data) -> tuple[str, str]:
    digest = hashlib.md5(data)
    return base64.b64encode(digest.digest()).decode("ascii"), digest.hexdigest()


class NotVerified(Exception):
    """What the server reports storing is not what was sent (internal to this module)."""


_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def _check_etag(item: WorkItem, etag: str, expected: str) -> None:
    """The stored object's ETag must be the one S3 computes for the bytes we sent.

    Single part: the body's MD5. Multipart: the MD5 of the parts' binary MD5s, then '-' and the part count.
    An ETag that is not of that form at all (SSE-KMS, SSE-C, some gateways) proves nothing either way; the
    server has already checked Content-MD5 on every request, so it is accepted.
    """
    if _MD5_ETAG.match(etag) and etag != expected:
        raise NotVerified(f"the server reports ETag {etag} for {item.key}, but the bytes sent have {expected}")


def _verify_after_upload(item: WorkItem, etag: str, sha256: str) -> None:
    """--verify-after-upload: read back what is stored under the key (HEAD) and compare."""
    head = _client.head_object(Bucket=_config.bucket, Key=item.key)
    stored = (head.get("ContentLength"), head.get("ETag", "").strip('"'), head.get("Metadata", {}).get("sha256"))
    if stored != (item.size, etag, sha256):
        raise NotVerified(f"read back {item.key}: length, ETag, sha256 = {stored}, expected "
                          f"{(item.size, etag, sha256)}")


# botocore's own standard-mode backoff (full jitter, 20 s cap), so a BadDigest re-send waits as any retry does.
_BACKOFF = standard.ExponentialBackoff()


def _send(operation, **params):
    """One S3 call, re-sent when the server says the body arrived corrupted (botocore does not retry that)."""
    for attempt in range(_config.retries + 1):
        if attempt:
            _counts.recalls += 1
        try:
            return operation(**params)
        except botocore.exceptions.ClientError as exc:
            if s3.error_code(exc) not in s3.BODY_CORRUPTED_CODES or attempt == _config.retries:
                raise
            log.warning("upload.retry", key=params.get("Key"), error_type=s3.error_code(exc), attempt=attempt + 1)
            time.sleep(_BACKOFF.delay_amount(standard.RetryContext(attempt_number=attempt + 1)))
    raise AssertionError("unreachable")


def _direct_put(Key: str, Body: bytes, ContentMD5: str, Sha256: str) -> dict:
    """PutObject through obsbatch.put: the same request, errors and retries as put_object, at a third of the CPU."""
    _counts.calls += 1
    return _direct.put(Key, Body, ContentMD5, Sha256, {"sha256": Sha256})


def _open(item: WorkItem):
    """Open the judged file for reading, safely even if its name now points at something else.

    O_NONBLOCK: if the name was replaced by a FIFO since the walk, open() returns instead of waiting for a
    writer forever (the inode check then reports the change); it does nothing to reads of regular files.
    O_NOFOLLOW (unless --follow-symlinks): a name replaced by a symlink is not followed.
    O_NOATIME: a backup should not touch access times (tar --atime-preserve, borg); the kernel allows it
    only to the file's owner or CAP_FOWNER (EPERM otherwise), so it is dropped when refused.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if _config.follow_symlinks else os.O_NOFOLLOW)
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


def _already_stored(item: WorkItem, f) -> dict | None:
    """--verify-remote: is the same-size object under the key this file's content? Then nothing to upload.

    A single-part object's ETag is its MD5. A multipart ETag cannot be recomputed without the original part
    size, so the object's sha256 metadata (one HEAD) is compared instead; without it, the file is uploaded.
    """
    md5, sha = hashlib.md5(), hashlib.sha256()
    for block in iter(lambda: f.read(READ_BLOCK), b""):
        md5.update(block)
        sha.update(block)
    _check_unchanged(item, f, "while comparing")
    f.seek(0)
    if "-" in item.remote_etag:
        head = _client.head_object(Bucket=_config.bucket, Key=item.key)
        same = head.get("Metadata", {}).get("sha256") == sha.hexdigest() and head.get("ContentLength") == item.size
    else:
        same = item.remote_etag == md5.hexdigest()
    if not same:
        return None
    return dict(kind=Kind.SKIPPED, reason=Reason.ALREADY_STORED, etag=item.remote_etag, sha256=sha.hexdigest(),
                message="the object under this key already holds this content")


def _upload(item: WorkItem) -> dict:
    with _open(item) as f:
        _check_unchanged(item, f, "before reading")
        if item.remote_etag:
            found = _already_stored(item, f)
            if found is not None:
                return found
        if item.size >= _config.multipart_threshold:
            return _put_multipart(item, f)
        return _put_single(item, f)


def _put_single(item: WorkItem, f) -> dict:
    data = f.read(item.size + 1)  # one byte more than judged: a file that grew is caught here
    if len(data) != item.size:
        raise FileChanged(f"read {len(data)} bytes, expected {item.size}; deferred to the next run")
    _check_unchanged(item, f, "while reading")
    md5_b64, md5_hex = _md5_b64(data)
    sha256 = hashlib.sha256(data).hexdigest()
    # Content-MD5 makes the server verify the body and reject it (BadDigest) rather than store a torn copy.
    if _direct is not None:
        resp = _send(_direct_put, Key=item.key, Body=data, ContentMD5=md5_b64, Sha256=sha256)
    else:
        resp = _send(_client.put_object, Bucket=_config.bucket, Key=item.key, Body=data, ContentMD5=md5_b64,
                     Metadata={"sha256": sha256})
    etag = resp.get("ETag", "").strip('"')
    _check_etag(item, etag, md5_hex)
    if _config.verify_after_upload:
        _verify_after_upload(item, etag, sha256)
    return dict(kind=Kind.UPLOADED, etag=etag, sha256=sha256, version_id=resp.get("VersionId", ""))


def part_size(size: int, chunksize: int) -> int:
    """The configured part size, raised (in whole MiB) until the file fits in S3's 10,000 parts."""
    if size <= chunksize * MAX_PARTS:
        return chunksize
    return math.ceil(size / MAX_PARTS / MiB) * MiB


def _hash_file(item: WorkItem, f) -> str:
    """SHA-256 of the whole file, needed up front: metadata is fixed at CreateMultipartUpload."""
    sha = hashlib.sha256()
    total = 0
    for block in iter(lambda: f.read(READ_BLOCK), b""):
        sha.update(block)
        total += len(block)
    if total != item.size:
        raise FileChanged(f"read {total} bytes, expected {item.size}; deferred to the next run")
    return sha.hexdigest()


def _put_multipart(item: WorkItem, f) -> dict:
    sha256 = _hash_file(item, f)
    _check_unchanged(item, f, "while hashing")
    chunk = part_size(item.size, _config.multipart_chunksize)
    numbers = range(1, max(1, math.ceil(item.size / chunk)) + 1)
    upload_id = _client.create_multipart_upload(Bucket=_config.bucket, Key=item.key,
                                                Metadata={"sha256": sha256})["UploadId"]
    # Parts go up `threads` at a time, as s5cmd and aws-cli send them: a lone big file would otherwise
    # use one connection of the worker's many (issue #5). Each part is read with pread at its own offset.
    # A failed part stops the parts not yet begun; the map returns once the others have ended, so no part
    # lands after the abort below. SIGTERM interrupts the wait itself, and the abort goes out at once.
    threads = _threads_of_this_worker()
    # (sent, calls, recalls) of each part sent on another thread, added to this thread's counts below.
    # Parts sent on this thread (no upload threads) are counted here already.
    spent: list | None = [] if threads is not None else None
    failed = threading.Event()
    send = functools.partial(_upload_part, item, f.fileno(), chunk, upload_id, spent, failed)
    try:
        if threads is None:
            results = [send(number) for number in numbers]
        else:
            outcomes = threads.map([functools.partial(send, number) for number in numbers])
            errors = [value for ok, value in outcomes if not ok]
            if errors:
                raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
            results = [value for _, value in outcomes]
        # The last chance to refuse: nothing is visible under the key until Complete succeeds.
        _check_unchanged(item, f, "while uploading")
        resp = _client.complete_multipart_upload(Bucket=_config.bucket, Key=item.key, UploadId=upload_id,
                                                 MultipartUpload={"Parts": [part for part, _ in results]})
    except BaseException:
        _abort(item, upload_id)
        raise
    finally:
        for sent, calls, recalls in spent or ():
            _counts.sent += sent
            _counts.calls += calls
            _counts.recalls += recalls
    etag = resp.get("ETag", "").strip('"')
    # After Complete the object exists; a mismatch is reported FAILED (never journaled) and the next run
    # uploads the file again over it.
    digests = b"".join(digest for _, digest in results)
    _check_etag(item, etag, f"{hashlib.md5(digests).hexdigest()}-{len(results)}")
    if _config.verify_after_upload:
        _verify_after_upload(item, etag, sha256)
    return dict(kind=Kind.UPLOADED, etag=etag, sha256=sha256, multipart=True, version_id=resp.get("VersionId", ""))


class _Cancelled(Exception):
    """A part not begun because another part of the same upload failed (internal to this module)."""


def _upload_part(item: WorkItem, fd: int, chunk: int, upload_id: str, spent: list | None,
                 failed: threading.Event, number: int):
    """Read and send part `number`; returns ({"ETag", "PartNumber"}, binary MD5).

    spent: where an upload thread leaves the requests it counted for this part, for the file's thread to
    add up; None when the part is sent on the file's own thread, whose counts already hold them.
    """
    if failed.is_set():
        raise _Cancelled()
    counts = _counts
    before = (counts.sent, counts.calls, counts.recalls)
    try:
        offset = (number - 1) * chunk
        length = min(chunk, item.size - offset)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise FileChanged(f"read {offset + len(data)} bytes, expected {item.size}; deferred to the next run")
        md5_b64, md5_hex = _md5_b64(data)
        resp = _send(_client.upload_part, Bucket=_config.bucket, Key=item.key, UploadId=upload_id,
                     PartNumber=number, Body=data, ContentMD5=md5_b64)
        return {"ETag": resp["ETag"], "PartNumber": number}, bytes.fromhex(md5_hex)
    except BaseException:
        failed.set()
        raise
    finally:
        if spent is not None:
            spent.append((counts.sent - before[0], counts.calls - before[1], counts.recalls - before[2]))


def _abort(item: WorkItem, upload_id: str) -> None:
    """AbortMultipartUpload, so no incomplete upload (and its billed parts) is left behind."""
    try:
        _client.abort_multipart_upload(Bucket=_config.bucket, Key=item.key, UploadId=upload_id)
    except Exception as exc:
        # Still reported: the file's Outcome is FAILED/DEFERRED anyway; a bucket lifecycle rule
        # (AbortIncompleteMultipartUpload) is the backstop the README recommends.
        log.warning("upload.abort_failed", key=item.key, upload_id=upload_id, error_type=s3.error_code(exc),
                    error=s3.error_message(exc))
