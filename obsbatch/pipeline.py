"""The run, wired in one place: walk -> filters -> stability -> plan -> worker pool -> report.

The parent walks, judges and aggregates; workers only upload. The parent owns signals: SIGINT/SIGTERM stop
the walk, the uploads already handed out are finished (a second signal cuts that short), and the run exits
130/143 with a summary of what it did.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import signal
import stat as statmod
from typing import Iterable, Union

import botocore.exceptions
import structlog

from obsbatch import s3, worker
from obsbatch.config import Config
from obsbatch.errors import ConfigError, ExitCode, PreflightError, StopRequested
from obsbatch.filters import select
from obsbatch.models import Kind, Outcome, WorkItem
from obsbatch.plan import plan
from obsbatch.report import Summary
from obsbatch.stability import Gate
from obsbatch.walk import walk

log = structlog.get_logger()

_SIGNAL_EXIT = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}

# Error codes that prove the credentials themselves are wrong, whatever the key may do.
_BAD_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                                   "TokenRefreshRequired", "InvalidClientTokenId"})


def run(config: Config) -> Summary:
    """One backup pass. Raises ObsbatchError (exit 2) for what makes the run impossible; else a Summary."""
    source = check_source(config.source)
    gate = Gate(config.min_age, strict=config.fd_check == "strict")
    gate.current_index()  # the first /proc scan, now: --fd-check strict fails here, before any upload
    if not config.dry_run:
        preflight(config)
    log.info("run.start", source=os.fsdecode(source), bucket=config.bucket, prefix=config.prefix,
             endpoint=config.endpoint or "aws", workers=config.max_concurrent, min_age=config.min_age,
             dry_run=config.dry_run)
    summary = Summary()
    stages = plan(gate.filter(select(walk(source, config.follow_symlinks), config.include, config.exclude)),
                  config.prefix)
    stopped_by = None
    with _signals_raise():
        try:
            if config.dry_run:
                for item in stages:
                    summary.add(_planned(item) if isinstance(item, WorkItem) else item)
            else:
                upload_all(stages, config, summary)
        except StopRequested as stop:
            stopped_by = stop.exit_code
    summary.finish(stopped_by)
    summary.log_final()
    return summary


def check_source(source: str) -> bytes:
    """The source as absolute bytes, or ConfigError with one sentence."""
    path = os.fsencode(os.path.abspath(source))
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


def preflight(config: Config) -> None:
    """Fail before walking if the bucket is missing, the credentials are wrong or the endpoint is unreachable.

    HeadBucket needs s3:ListBucket, which write-only backup keys rightly lack. HEAD responses have no body,
    so a 403 cannot say whether the key is bad or merely not allowed to list; a ranged GET of a key that is
    not expected to exist then tells: bad credentials are fatal, AccessDenied/NoSuchKey mean "may write".
    """
    client = s3.make_client(config, pool_connections=1)
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


def _crashed(item: WorkItem, put, exc: BaseException) -> None:
    """Pool error_callback: upload_one never raises, so this is a pickling or pool failure. Still one Outcome."""
    put(Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type=type(exc).__name__,
                message=s3.error_message(exc)))


def upload_all(items: Iterable[Union[WorkItem, Outcome]], config: Config, summary: Summary) -> None:
    """Feed WorkItems to a pool of `max_concurrent` workers with at most 2x that many in flight.

    `Pool.imap*` would drain the whole walk into its task queue at once; submitting one apply_async at a
    time against a bound keeps memory flat however big the tree. Outcomes come back through the pool's
    result thread into a queue that only this (main) thread reads, so Summary needs no lock.
    """
    # forkserver, not fork: the parent runs threads (the pool's own, later OTEL and watchdog), and forking a
    # threaded process can deadlock on a lock some thread held. Preloading the worker module pays for
    # boto3's import once, in the fork server, instead of once per worker.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["obsbatch.worker"])
    limit = 2 * config.max_concurrent
    results: queue.SimpleQueue = queue.SimpleQueue()
    in_flight = 0
    pool = ctx.Pool(config.max_concurrent, initializer=worker.init_worker, initargs=(config,))
    try:
        try:
            for item in items:
                if isinstance(item, Outcome):
                    summary.add(item)
                    continue
                while in_flight >= limit:
                    summary.add(results.get())
                    in_flight -= 1
                pool.apply_async(worker.upload_one, (item,), callback=results.put,
                                 error_callback=functools.partial(_crashed, item, results.put))
                in_flight += 1
        except StopRequested as stop:
            log.warning("run.stopping", signal=signal.Signals(stop.signum).name, in_flight=in_flight,
                        detail="not starting new files; finishing the uploads in flight (signal again to abort them)")
            _drain(results, in_flight, summary)
            raise
        _drain(results, in_flight, summary)
        pool.close()
        pool.join()
    except BaseException:
        # A second signal while draining, or a bug: workers turn SIGTERM into SystemExit and abort any
        # multipart upload on their way out.
        pool.terminate()
        pool.join()
        raise


def _drain(results: queue.SimpleQueue, in_flight: int, summary: Summary) -> None:
    while in_flight:
        summary.add(results.get())
        in_flight -= 1


@contextlib.contextmanager
def _signals_raise():
    """SIGINT/SIGTERM raise StopRequested in the main thread for the duration of the run."""

    def handler(signum, frame):
        raise StopRequested(signum, _SIGNAL_EXIT[signum])

    previous = {sig: signal.signal(sig, handler) for sig in _SIGNAL_EXIT}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
