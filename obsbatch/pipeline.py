"""The run, wired in one place: walk -> filters -> stability -> plan -> worker pool -> report.

The parent walks, judges and aggregates; workers only upload. The parent owns signals: SIGINT/SIGTERM stop
the walk, the uploads already handed out are finished (a second signal cuts that short), and the run exits
130/143 with a summary of what it did.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import multiprocessing
import os
import queue
import signal
import stat as statmod
import threading
import time
from typing import Dict, Iterable, Optional, Union

import botocore.exceptions
import structlog

from obsbatch import __version__, journal, s3, worker
from obsbatch.config import Config
from obsbatch.errors import ConfigError, ExitCode, PreflightError, StopRequested
from obsbatch.filters import select
from obsbatch.models import Kind, Outcome, Reason, WorkItem, display, fingerprint
from obsbatch.manifest import Manifest
from obsbatch.plan import object_key, plan
from obsbatch.progress import Display
from obsbatch.report import Summary
from obsbatch.stability import Gate
from obsbatch.systemd import Heartbeat, Notifier
from obsbatch.telemetry import Telemetry
from obsbatch.walk import walk

log = structlog.get_logger()

_SIGNAL_EXIT = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED,
                signal.SIGHUP: ExitCode.HANGUP}

# Error codes that prove the credentials themselves are wrong, whatever the key may do.
_BAD_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                                   "TokenRefreshRequired", "InvalidClientTokenId"})


class Progress:
    """A number that grows whenever the run does something: the systemd watchdog's notion of progress.

    parent: walk entries judged and Outcomes counted, bumped by the main thread.
    workers: HTTP requests started or answered, bumped by every worker in shared memory.
    """

    def __init__(self, ctx):
        self.parent = 0
        self.workers = ctx.Value("Q", 0)

    def __call__(self) -> int:
        # Read without the lock: a worker killed while holding it must not stall the heartbeat too.
        return self.parent + self.workers.get_obj().value


def run(config: Config, notifier: Optional[Notifier] = None, telemetry: Optional[Telemetry] = None) -> Summary:
    """One backup pass. Raises ObsbatchError (exit 2) for what makes the run impossible; else a Summary.

    The caller owns `telemetry`: it ends the root span itself when this raises, and shuts telemetry down.
    """
    notifier = notifier or Notifier(enabled=False, watchdog_seconds=None)
    telemetry = telemetry or Telemetry.disabled()
    telemetry.start_run(display(os.fsencode(os.path.abspath(config.source))), config)
    source = check_source(config.source)
    with journal.lock_run(config.state, source):
        journal_ = journal.open_journal(config.state, config.endpoint or "aws", config.bucket) if config.state else None
        try:
            return _run_locked(config, source, notifier, telemetry, journal_)
        finally:
            if journal_ is not None:
                journal_.close()  # commits what is pending, on every way out (signals included)


def _run_locked(config: Config, source: bytes, notifier: Notifier, telemetry: Telemetry,
                journal_: Optional[journal.Journal]) -> Summary:
    # The first /proc scan and the pre-flight may outlast TimeoutStartSec= on a big host or a slow endpoint.
    notifier.extend_timeout(_start_budget(config), "scanning open files and checking the destination")
    gate = Gate(config.min_age, strict=config.fd_check == "strict")
    gate.current_index()  # the first /proc scan, now: --fd-check strict fails here, before any upload
    # The parent's own client (pre-flight, remote listing, manifest upload): one per run, since building one
    # costs ~0.1 s. Workers build theirs. --dry-run contacts no server.
    client = None if config.dry_run else s3.make_client(config, pool_connections=1)
    if client is not None:
        preflight(config, client)
    log.info("run.start", source=display(source), bucket=config.bucket, prefix=config.prefix,
             endpoint=config.endpoint or "aws", workers=config.max_concurrent, min_age=config.min_age,
             dry_run=config.dry_run)
    summary = Summary(observers=[telemetry.record])
    ctx = _context()
    progress = Progress(ctx)
    # The journal's comparison comes before the stability gate (STYLE.md lists it in `plan`): a file that is
    # unchanged since its verified upload is backed up already, even if a process holds it open right now,
    # and must not be reported as deferred run after run.
    stages = select(walk(source, config.follow_symlinks), config.include, config.exclude)
    key_of = functools.partial(object_key, config.prefix)
    if journal_ is not None:
        if config.verify_remote and client is not None:
            listed = journal_.load_remote(_listing(config, client))
            log.info("journal.remote_listed", objects=listed, prefix=config.prefix)
        stages = journal_.filter(stages, key_of)
        summary.observers.append(functools.partial(_track_deferral, journal_, config, summary, telemetry))
    stages = plan(gate.filter(stages, key_of), config.prefix)
    manifest_ = None
    if config.manifest:
        manifest_ = Manifest(config.manifest, {"source": display(source), "bucket": config.bucket,
                                               "prefix": config.prefix, "endpoint": config.endpoint or "aws",
                                               "started": summary.started, "obsbatch": __version__})
        summary.observers.append(manifest_.record)
    stop = StopFlag(config.stop_timeout)
    notifier.ready(f"backing up {display(source)} to s3://{config.bucket}/{config.prefix}")
    with stop.installed(), Heartbeat(notifier, progress, summary.status_line) as heartbeat, \
            Display.for_terminal(summary) as screen:
        stages = _counted(stages, progress, screen.walk_done)
        try:
            if config.dry_run:
                for item in stages:
                    stop.check()
                    summary.add(_planned(item) if isinstance(item, WorkItem) else item)
            else:
                upload_all(stages, config, summary, stop, ctx, progress, heartbeat,
                           functools.partial(_after_upload, journal_, gate if config.delete_source else None))
        except StopRequested as stopped:
            summary.finish(stopped.exit_code)
        else:
            summary.finish()
    if manifest_ is not None:
        _finish_manifest(manifest_, summary, config, client)
    summary.log_final()
    telemetry.end_run(summary)
    notifier.stopping(summary.status_line())
    return summary


def _listing(config: Config, client):
    """ListObjectsV2 pages under the prefix, one at a time (the paginator fetches lazily)."""
    try:
        yield from client.get_paginator("list_objects_v2").paginate(Bucket=config.bucket, Prefix=config.prefix)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise PreflightError(f"--verify-remote cannot list s3://{config.bucket}/{config.prefix}: "
                             f"{s3.error_message(exc)}") from None


def manifest_key(prefix: str, run_id: str) -> str:
    """Beside the data, never among it: every data key starts with `prefix`, this one with `prefix` less '/'."""
    return f"{prefix.rstrip('/')}.obsbatch/manifests/{run_id}.jsonl"


def _finish_manifest(manifest_: Manifest, summary: Summary, config: Config, client) -> None:
    head = manifest_.close(summary.as_dict())
    key = None
    if config.upload_manifest and client is not None:
        key = manifest_key(config.prefix, manifest_.run_id)
        with open(manifest_.path, "rb") as handle:
            body = handle.read()
        try:
            client.put_object(
                Bucket=config.bucket, Key=key, Body=body, ContentType="application/jsonl",
                ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            summary.failed += 1
            summary.failed_by_type["ManifestUpload"] += 1
            log.error("manifest.upload_failed", key=key, error_type=s3.error_code(exc), error=s3.error_message(exc))
            key = None
    log.info("manifest.written", path=manifest_.path, chain_head=head, run_id=manifest_.run_id, key=key)


def _track_deferral(journal_: journal.Journal, config: Config, summary: Summary, telemetry: Telemetry,
                    outcome: Outcome) -> None:
    """Summary observer: carry deferrals over runs, and report a file deferred for longer than --max-defer.

    A stuck writer must not keep a file out of the backup silently, however many runs pass.
    """
    if not outcome.key:
        return
    if outcome.kind is not Kind.DEFERRED:
        journal_.ended(outcome.key)
        return
    now = time.time()
    first_seen, count = journal_.deferral(outcome, now)
    if now - first_seen > config.max_defer:
        summary.stuck += 1
        log.warning("file.stuck", path=outcome.path, key=outcome.key, reason=outcome.reason.value,
                    deferred_since=datetime.datetime.fromtimestamp(first_seen, datetime.timezone.utc).isoformat(),
                    times=count, max_defer_s=config.max_defer,
                    detail="deferred for longer than --max-defer: this file is missing from the backup")
        telemetry.stuck(outcome)


def _after_upload(journal_: Optional[journal.Journal], move_gate: Optional[Gate], item: WorkItem,
                  outcome: Outcome) -> Outcome:
    """For every Outcome a worker returns: journal a verified upload; in move mode, remove the local file."""
    if journal_ is not None:
        journal_.record(item, outcome)
    if move_gate is not None and outcome.kind is Kind.UPLOADED:
        return _remove_uploaded(item, outcome, move_gate)
    return outcome


def _remove_uploaded(item: WorkItem, outcome: Outcome, gate: Gate) -> Outcome:
    """--delete-source: unlink the file only if it is still exactly the bytes that were verified upstream.

    The name must still lead to the same inode with the same size, mtime and ctime (lstat, so a name now
    pointing elsewhere is left alone), and no process may hold it open for writing per the current fd
    index. What remains is the window between this check and unlink(2): a writer that opens the file in it
    and writes would write into an unlinked inode. obsbatch cannot close that window; --min-age narrows it
    to files nobody has touched for a while.
    """
    try:
        st = os.lstat(item.path)
    except FileNotFoundError:
        return outcome
    if fingerprint(st) != item.fingerprint:
        log.warning("file.kept", path=item.display, detail="changed after its upload; the next run uploads it")
        return outcome
    if gate.current_index().writers.get((st.st_dev, st.st_ino)):
        log.warning("file.kept", path=item.display, detail="open for writing after its upload; not removed")
        return outcome
    try:
        os.unlink(item.path)
    except OSError as exc:
        log.warning("file.kept", path=item.display, detail=f"cannot remove: {exc.strerror}")
        return outcome
    log.info("file.deleted", path=item.display, key=item.key)
    return dataclasses.replace(outcome, deleted=True)


def _counted(items, progress: Progress, walk_done):
    """Pass the stages' items through, counting each as progress, and report the total when the walk ends."""
    total = 0
    for item in items:
        total += 1
        progress.parent += 1
        yield item
    walk_done(total)


def _start_budget(config: Config) -> float:
    """Seconds the start may take: a /proc scan plus two pre-flight requests with all their retries."""
    return 60 + 2 * config.http_timeout * (config.retries + 1)


def _context():
    # forkserver, not fork: the parent runs threads (the pool's own, the heartbeat, the OTEL exporters), and forking
    # a threaded process can deadlock on a lock some thread held. Preloading the worker module pays for
    # boto3's import once, in the fork server, instead of once per worker.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["obsbatch.worker"])
    return ctx


def check_source(source: str) -> bytes:
    """The source as absolute bytes, or ConfigError with one sentence."""
    path = os.fsencode(os.path.abspath(source))
    source = display(os.fsencode(source))  # argv holds surrogate escapes for non-UTF-8 bytes; logs cannot
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"source directory {source} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"source directory {source} cannot be read: {exc.strerror}") from None
    if not statmod.S_ISDIR(st.st_mode):
        raise ConfigError(f"source {source} is not a directory")
    try:
        os.scandir(path).close()
    except OSError as exc:
        raise ConfigError(f"source directory {source} cannot be read: {exc.strerror}") from None
    return path


def preflight(config: Config, client) -> None:
    """Fail before walking if the bucket is missing, the credentials are wrong or the endpoint is unreachable.

    HeadBucket needs s3:ListBucket, which write-only backup keys rightly lack. HEAD responses have no body,
    so a 403 cannot say whether the key is bad or merely not allowed to list; a ranged GET of a key that is
    not expected to exist then tells: bad credentials are fatal, AccessDenied/NoSuchKey mean "may write".
    """
    where = config.endpoint or "AWS"
    try:
        client.head_bucket(Bucket=config.bucket)
        return
    except botocore.exceptions.NoCredentialsError:
        raise PreflightError("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                             "or AWS_PROFILE") from None
    except botocore.exceptions.ClientError as exc:
        status = s3.http_status(exc)
        if status == 404:
            raise PreflightError(f"bucket '{config.bucket}' does not exist at {where}") from None
        if status == 301:
            raise PreflightError(f"bucket '{config.bucket}' is in another region than '{client.meta.region_name}'; "
                                 "set --region") from None
        if status != 403:
            raise PreflightError(f"bucket '{config.bucket}' at {where} cannot be used: "
                                 f"{s3.error_message(exc)}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise PreflightError(f"cannot reach the S3 endpoint {where}: {s3.error_message(exc)}") from None
    try:
        client.get_object(Bucket=config.bucket, Key=config.prefix + ".obsbatch-preflight-probe", Range="bytes=0-0")
    except botocore.exceptions.ClientError as exc:
        code = s3.error_code(exc)
        if code in _BAD_CREDENTIAL_CODES:
            raise PreflightError(f"the S3 credentials were rejected by {where} ({code}): check AWS_ACCESS_KEY_ID "
                                 "and AWS_SECRET_ACCESS_KEY") from None
        if code == "NoSuchBucket":
            raise PreflightError(f"bucket '{config.bucket}' does not exist at {where}") from None
        log.warning("preflight.unverified", bucket=config.bucket, error_type=code,
                    detail="cannot list the bucket (write-only credentials?); uploads will tell")
    except botocore.exceptions.BotoCoreError as exc:
        raise PreflightError(f"cannot reach the S3 endpoint {where}: {s3.error_message(exc)}") from None


def _planned(item: WorkItem) -> Outcome:
    return Outcome(Kind.PLANNED, item.display, key=item.key, size=item.size)


def _crashed(seq: int, item: WorkItem, put, exc: BaseException) -> None:
    """Pool error_callback: upload_one never raises, so this is a pickling or pool failure. Still one Outcome."""
    put((seq, Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type=type(exc).__name__,
                      message=s3.error_message(exc))))


def _tagged(seq: int, put, outcome: Outcome) -> None:
    put((seq, outcome))


def upload_all(items: Iterable[Union[WorkItem, Outcome]], config: Config, summary: Summary,
               stop: "StopFlag", ctx, progress: Progress, heartbeat: Heartbeat, done) -> None:
    """Feed WorkItems to a pool of `max_concurrent` workers with at most 2x that many in flight.

    `Pool.imap*` would drain the whole walk into its task queue at once; submitting one apply_async at a
    time against a bound keeps memory flat however big the tree. Outcomes come back through the pool's
    result thread into a queue that only this (main) thread reads, so Summary needs no lock. Each task is
    tagged with a sequence number, so the parent always knows which files are still out: none is lost
    even when the pool is torn down. `done(item, outcome) -> outcome` is called for every Outcome a worker
    returns (the journal records verified uploads; move mode removes their files).
    """
    limit = 2 * config.max_concurrent
    results: queue.SimpleQueue = queue.SimpleQueue()
    outstanding: Dict[int, WorkItem] = {}
    starts = ctx.Value("i", 0)
    pool = ctx.Pool(config.max_concurrent, initializer=worker.init_worker,
                    initargs=(config, starts, progress.workers))

    def check_workers():
        # Pool starts a worker beyond the first N only to replace one that died (no maxtasksperchild).
        # Read without the lock: a worker killed while holding it must not block the parent too.
        if starts.get_obj().value > config.max_concurrent:
            raise WorkerDied()

    def idle_check():
        check_workers()
        stop.check()

    announced = []

    def announce_stop():
        """Once, wherever the first signal is noticed: say so, and keep systemd's stop timeout moving."""
        if stop.count and not announced:
            announced.append(True)
            heartbeat.draining = True
            heartbeat.notifier.extend_timeout(heartbeat.DRAIN_EXTEND, f"stopping: finishing {len(outstanding)} uploads")
            log.warning("run.stopping", signal=signal.Signals(stop.signum).name, in_flight=len(outstanding),
                        stop_timeout=config.stop_timeout,
                        detail="not starting new files; finishing the uploads in flight (signal again to abort them)")

    def idle_check_draining():
        announce_stop()
        check_workers()
        stop.check_again()

    try:
        try:
            for seq, item in enumerate(items):
                stop.check()
                if isinstance(item, Outcome):
                    summary.add(item)
                    continue
                while len(outstanding) >= limit:
                    _collect(results, outstanding, summary, idle_check, progress, done)
                outstanding[seq] = item
                pool.apply_async(worker.upload_one, (item,), callback=functools.partial(_tagged, seq, results.put),
                                 error_callback=functools.partial(_crashed, seq, item, results.put))
        except StopRequested:
            announce_stop()
        # Walk done or stopped: let what was handed out finish. Only a second signal cuts this short.
        while outstanding:
            _collect(results, outstanding, summary, idle_check_draining, progress, done)
        # close+join, not terminate: workers leave on the pool's own sentinels, no signal involved.
        pool.close()
        pool.join()
    except WorkerDied:
        # Killed from outside (the OOM killer, kill -9): its file never comes back, and if it held the task
        # queue's lock no other worker can take work either. Stop here, say so, and fail what was out; the
        # next run carries on.
        log.error("worker.died", in_flight=len(outstanding),
                  detail="an upload worker process was killed (out of memory?); stopping the run")
        _terminate(pool, grace=config.http_timeout + 5)
        _account_for_the_rest(results, outstanding, summary, _worker_died, done)
        summary.aborted = "an upload worker process died"
        return
    except BaseException:
        # A second signal while draining, or a bug.
        _terminate(pool, grace=config.http_timeout + 5)
        _account_for_the_rest(results, outstanding, summary, _interrupted, done)
        raise
    stop.check()  # a stop signal ends the run with 130/143, even if nothing was left in flight


class WorkerDied(Exception):
    """A pool worker was replaced, i.e. one died (internal to this module)."""


def _interrupted(item: WorkItem) -> Outcome:
    return Outcome(Kind.DEFERRED, item.display, key=item.key, size=item.size, reason=Reason.INTERRUPTED,
                   message="upload aborted by a second stop signal; the next run takes it")


def _worker_died(item: WorkItem) -> Outcome:
    return Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type="WorkerDied",
                   message="its upload worker process died before reporting; not known to be stored")


def _account_for_the_rest(results: queue.SimpleQueue, outstanding: Dict[int, WorkItem], summary: Summary,
                          leftover, done) -> None:
    """After a teardown: count what did come back, and report every other file handed out as `leftover(item)`."""
    while outstanding:
        try:
            seq, outcome = results.get_nowait()
        except queue.Empty:
            break
        item = outstanding.pop(seq, None)
        if item is not None:
            outcome = done(item, outcome)
        summary.add(outcome)
    for item in outstanding.values():
        summary.add(leftover(item))
    outstanding.clear()


def _terminate(pool, grace: float) -> None:
    """Pool.terminate, plus SIGKILL for any worker still alive after `grace` seconds.

    terminate() SIGTERMs the workers (which turn it into SystemExit and abort their multipart uploads on
    the way out) and then joins them. A SIGTERM that lands just as an idle worker enters sem_wait() on the
    task queue's lock is noted by the C handler but never acted on (a lost wakeup: seen once in ~40
    stops in tests/integration), and the join would then wait forever.
    """
    pids = [p.pid for p in multiprocessing.active_children()]  # the pool's workers, before terminate()

    def kill_stragglers():
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(grace, kill_stragglers)
    timer.daemon = True
    timer.start()
    try:
        pool.terminate()
        pool.join()
    finally:
        timer.cancel()


def _collect(results: queue.SimpleQueue, outstanding: Dict[int, WorkItem], summary: Summary, check,
             progress: Progress, done) -> None:
    """Wait a little for one Outcome and count it; if none comes, let `check()` have its say."""
    try:
        seq, outcome = results.get(timeout=0.2)
    except queue.Empty:
        check()
        return
    outcome = done(outstanding.pop(seq), outcome)
    progress.parent += 1
    summary.add(outcome)


class StopFlag:
    """SIGINT/SIGTERM, recorded by the handler and acted on only where the main loop checks.

    Raising straight from the handler (borg's way) would land at an arbitrary bytecode: between taking
    an Outcome off the queue and counting it, or inside the pool's own locking. Either loses an Outcome
    or hangs the drain, so the handler only notes the signal.
    """

    def __init__(self, stop_timeout: float = float("inf")):
        self.signum = 0
        self.count = 0
        self.stop_timeout = stop_timeout
        self.drain_until = float("inf")  # the first signal starts the drain's clock (--stop-timeout)

    def _handler(self, signum, frame):
        if not self.count:
            self.signum = signum
            self.drain_until = time.monotonic() + self.stop_timeout
        self.count += 1

    def check(self) -> None:
        """Raise StopRequested once any stop signal has arrived."""
        if self.count:
            raise StopRequested(self.signum, _SIGNAL_EXIT[self.signum])

    def check_again(self) -> None:
        """While draining after a first signal: raise on a second one, or once --stop-timeout has passed."""
        if self.count > 1 or (self.count and time.monotonic() > self.drain_until):
            raise StopRequested(self.signum, _SIGNAL_EXIT[self.signum])

    @contextlib.contextmanager
    def installed(self):
        previous = {sig: signal.signal(sig, self._handler) for sig in _SIGNAL_EXIT}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
