"""The run, wired in one place: walk -> filters -> stability -> plan -> worker pool -> report.

The parent walks, judges and aggregates; workers only upload. The parent owns signals: SIGINT/SIGTERM stop
the walk, the uploads already handed out are finished (a second signal cuts that short), and the run exits
130/143 with a summary of what it did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import stat as statmod
import threading
import time
from typing import Dict, Iterable, Optional, Union

import structlog

from obsbatch import __version__, journal
from obsbatch.config import Config
from obsbatch.errors import ConfigError, EndpointUnavailable, ExitCode, StopRequested
from obsbatch.filters import select
from obsbatch.logs import LEVELS
from obsbatch.models import Kind, Outcome, Reason, WorkItem, display, fingerprint, not_started, unavailable
from obsbatch.manifest import Manifest
from obsbatch.plan import plan
from obsbatch.progress import Display
from obsbatch.ratelimit import RateLimit
from obsbatch.remote import Remote, manifest_key
from obsbatch.report import Summary
from obsbatch.stability import Gate
from obsbatch.systemd import Heartbeat, Notifier
from obsbatch.telemetry import Telemetry
from obsbatch.walk import walk

log = structlog.get_logger()

_SIGNAL_EXIT = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED,
                signal.SIGHUP: ExitCode.HANGUP}

class Progress:
    """A number that grows whenever the run does something: the systemd watchdog's notion of progress.

    parent: walk entries judged and Outcomes counted, bumped by the main thread.
    workers: HTTP requests started or answered, one shared-memory slot per worker start, each bumped by
        its worker alone. No lock: a shared counter's lock cost 0.1 ms per request in contention between
        workers (issue #5), and one writer per slot needs none.
    """

    def __init__(self, ctx, slots: int):
        self.parent = 0
        self.workers = ctx.RawArray("Q", slots)

    def __call__(self) -> int:
        return self.parent + sum(self.workers)


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
    ctx = _context()
    first_run = not config.dry_run and (journal_ is None or journal_.empty())
    # A first run (or --no-state) will upload: the pool's fork server starts now, on another core, while
    # this thread scans /proc and runs the pre-flight.
    early = start_fork_server() if first_run else None
    try:
        gate = Gate(config.min_age, strict=config.fd_check == "strict")
        gate.current_index()  # the first /proc scan, now: --fd-check strict fails here, before any upload
        # The parent's own client (pre-flight, remote listing, manifest upload) is built when first needed.
        # The pre-flight runs before walking on a first run (empty journal), where a mistyped bucket or key
        # is likeliest, and for --verify-remote; once the journal holds uploads, it runs before the first
        # upload instead, so a run with nothing to upload contacts no server at all (issue #5). --dry-run
        # never does.
        remote = Remote(config)
        if first_run or (config.verify_remote and not config.dry_run):
            with contextlib.suppress(EndpointUnavailable):  # logged once; upload_all fails each file unsent
                remote.checked()
    finally:
        if early is not None:
            early.join()
    log.info("run.start", source=display(source), bucket=config.bucket, prefix=config.prefix,
             endpoint=config.endpoint or "aws", workers=config.processes, threads=config.threads, min_age=config.min_age,
             dry_run=config.dry_run)
    summary = Summary(observers=[telemetry.record] if telemetry.enabled else [])
    progress = Progress(ctx, 2 * config.processes)
    # The journal's comparison comes before the stability gate (STYLE.md lists it in `plan`): a file that is
    # unchanged since its verified upload is backed up already, even if a process holds it open right now,
    # and must not be reported as deferred run after run.
    stages = select(walk(source, config.prefix, config.follow_symlinks, config.allow_outside_source),
                    config.include, config.exclude)
    if journal_ is not None:
        if config.verify_remote and not config.dry_run and not remote.unavailable:
            listed = journal_.load_remote(remote.listing())
            log.info("journal.remote_listed", objects=listed, prefix=config.prefix)
        # Unchanged files are only counted when no one reads their records one by one.
        quiet = not (config.manifest or telemetry.enabled or LEVELS[config.debug] <= logging.DEBUG)
        stages = journal_.filter(stages, functools.partial(_unchanged, summary, progress) if quiet else None)
        if not config.dry_run:  # a dry run reads the journal, never writes it
            summary.observers.append(functools.partial(_track_deferral, journal_, config, summary, telemetry))
    stages = plan(gate.filter(stages))
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
                           functools.partial(_after_upload, journal_, gate if config.delete_source else None),
                           remote.checked)
        except StopRequested as stopped:
            summary.finish(stopped.exit_code)
        else:
            summary.finish()
    if journal_ is not None and not config.dry_run and summary.walk_complete:
        journal_.end_deferrals_not_seen(config.prefix)
    if manifest_ is not None:
        _finish_manifest(manifest_, summary, config, remote)
    summary.log_final()
    telemetry.end_run(summary)
    notifier.stopping(summary.status_line())
    return summary


def _finish_manifest(manifest_: Manifest, summary: Summary, config: Config, remote: Remote) -> None:
    head = manifest_.close(summary.as_dict())
    key = None
    if config.upload_manifest and not config.dry_run:
        key = manifest_key(config.prefix, manifest_.run_id)
        with open(manifest_.path, "rb") as handle:
            body = handle.read()
        if remote.put_manifest(key, body) is not None:
            summary.failed += 1
            summary.failed_by_type["ManifestUpload"] += 1
            key = None
    log.info("manifest.written", path=manifest_.path, chain_head=head, run_id=manifest_.run_id, key=key)


def _track_deferral(journal_: journal.Journal, config: Config, summary: Summary, telemetry: Telemetry,
                    outcome: Outcome) -> None:
    """Summary observer: carry deferrals over runs, and report a file deferred for longer than --max-defer.

    A stuck writer must not keep a file out of the backup silently, however many runs pass.
    """
    if outcome.kind is not Kind.DEFERRED or not outcome.key:
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


def _unchanged(summary: Summary, progress: Progress) -> None:
    progress.parent += 1
    summary.add_unchanged()


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


def _planned(item: WorkItem) -> Outcome:
    return Outcome(Kind.PLANNED, item.display, key=item.key, size=item.size)


def _crashed(seq: int, batch: list, put, exc: BaseException) -> None:
    """Pool error_callback: upload_batch never raises, so this is a pickling or pool failure. Still one Outcome each."""
    from obsbatch import s3

    put((seq, [Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type=type(exc).__name__,
                       message=s3.error_message(exc)) for item in batch]))


def _tagged(seq: int, put, outcomes: list) -> None:
    put((seq, outcomes))


#: A task for the pool is a batch of files. One task per file cost the parent ~0.4 ms of pickling, queueing
#: and pool-thread wake-ups per file, a third of all client CPU on a tree of small files (issue #5). A batch
#: holds about BATCH_SECONDS of uploading (see Pace), at most BATCH_FILES files per upload thread and, past
#: its first file, at most BATCH_BYTES; a file for multipart goes alone: so a batch's Outcomes (journal, progress) come back within a fraction of a second, and
#: the last batches of a run leave no worker idle for long. A batch never waits for files while a worker is
#: idle (see upload_all).
BATCH_FILES = 32
BATCH_BYTES = 8 * 1024 * 1024
BATCH_SECONDS = 0.25


class Pace:
    """How many files make a batch: BATCH_SECONDS over the recent seconds per file (moving average).

    One file per batch until an upload has come back; a slow or distant server (50 ms a PUT) then gets
    batches of five, a fast local one the full BATCH_FILES.
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
            return 1
        return max(1, min(BATCH_FILES * threads, int(threads * BATCH_SECONDS / self.seconds_per_file)))


def upload_all(items: Iterable[Union[WorkItem, Outcome]], config: Config, summary: Summary,
               stop: "StopFlag", ctx, progress: Progress, heartbeat: Heartbeat, done, before_first=None) -> None:
    """Feed WorkItems, in batches, to a pool of `config.processes` workers with at most 2x that many batches out.

    `Pool.imap*` would drain the whole walk into its task queue at once; submitting one apply_async at a
    time against a bound keeps memory flat however big the tree (at most 2N batches of BATCH_FILES). Outcomes
    come back through the pool's result thread into a queue that only this (main) thread reads, so Summary
    needs no lock. Each batch is tagged with a sequence number, so the parent always knows which files are
    still out: none is lost even when the pool is torn down. `done(item, outcome) -> outcome` is called for
    every Outcome a worker returns (the journal records verified uploads; move mode removes their files).
    The pool is started, after `before_first()` (the pre-flight), only when there is a first file to upload.
    If the pre-flight finds the endpoint down (EndpointUnavailable), no pool starts: the walk goes on, and
    every file it would have handed out is counted failed, unsent (a 5xx storm or a dead server must not
    cost a million files a round of retries each).
    """
    limit = 2 * config.processes
    results: queue.SimpleQueue = queue.SimpleQueue()
    outstanding: Dict[int, list] = {}
    batch: list = []
    batch_bytes = 0
    pace = Pace()
    starts = stopping = pool = task = None
    down = ""  # why the endpoint is unavailable, once the pre-flight found it so

    def start_pool():
        nonlocal starts, stopping, pool, task
        from obsbatch import worker  # imports botocore: not for a run that uploads nothing

        task = worker.upload_batch
        early = start_fork_server()
        try:
            if before_first is not None:
                before_first()
        finally:
            early.join()
        starts = ctx.Value("i", 0)
        stopping = ctx.RawValue("b", 0)
        rate = RateLimit(ctx, config.max_rps) if config.max_rps else None
        pool = ctx.Pool(config.processes, initializer=worker.init_worker,
                        initargs=(config, starts, progress.workers, stopping, rate))

    def check_workers():
        # Pool starts a worker beyond the first N only to replace one that died (no maxtasksperchild).
        # Read without the lock: a worker killed while holding it must not block the parent too.
        if starts is not None and starts.get_obj().value > config.processes:
            raise WorkerDied()

    def idle_check():
        check_workers()
        stop.check()

    announced = []

    def in_flight() -> int:
        return sum(len(b) for b in outstanding.values())

    def announce_stop():
        """Once, wherever the first signal is noticed: say so, and keep systemd's stop timeout moving."""
        if stop.count and not announced:
            announced.append(True)
            if stopping is not None:
                stopping.value = 1  # workers finish the file they are on, and start no other
            heartbeat.draining = True
            heartbeat.notifier.extend_timeout(heartbeat.DRAIN_EXTEND, f"stopping: finishing {in_flight()} uploads")
            log.warning("run.stopping", signal=signal.Signals(stop.signum).name, in_flight=in_flight(),
                        stop_timeout=config.stop_timeout,
                        detail="not starting new files; finishing the uploads in flight (signal again to abort them)")

    def idle_check_draining():
        announce_stop()
        check_workers()
        stop.check_again()

    def submit():
        nonlocal batch, batch_bytes, down
        if pool is None and not down:
            try:
                start_pool()
            except EndpointUnavailable as exc:
                down = str(exc)
        if down:
            for item in batch:
                summary.add(unavailable(item, down))
            batch, batch_bytes = [], 0
            return
        while len(outstanding) >= limit:
            _collect(results, outstanding, summary, idle_check, progress, done, pace)
        seq = next(seqs)
        sent, batch, batch_bytes = batch, [], 0
        outstanding[seq] = sent
        pool.apply_async(task, (sent,), callback=functools.partial(_tagged, seq, results.put),
                         error_callback=functools.partial(_crashed, seq, sent, results.put))

    seqs = itertools.count()
    try:
        try:
            for item in items:
                stop.check()
                _collect_ready(results, outstanding, summary, progress, done, pace)
                if isinstance(item, Outcome):
                    summary.add(item)
                    continue
                # A multipart upload goes alone (its parts use the worker's threads): the batch before it is
                # sent first, and it is sent at once. (BATCH_BYTES alone would not do: a --multipart-threshold
                # under it would let small files join the big one and wait for it.)
                multipart = item.size >= config.multipart_threshold
                if multipart and batch:
                    submit()
                batch.append(item)
                batch_bytes += item.size
                if (multipart or len(batch) >= pace.batch_files(config.threads) or batch_bytes >= BATCH_BYTES
                        or len(outstanding) < config.processes):
                    submit()
            if batch:
                submit()
        except StopRequested:
            announce_stop()
            for item in batch:  # judged, but never handed to a worker
                summary.add(not_started(item))
            batch = []
        # Walk done or stopped: let what was handed out finish. Only a second signal cuts this short.
        while outstanding:
            _collect(results, outstanding, summary, idle_check_draining, progress, done, pace)
        # close+join, not terminate: workers leave on the pool's own sentinels, no signal involved.
        if pool is not None:
            pool.close()
            pool.join()
    except WorkerDied:
        # Killed from outside (the OOM killer, kill -9): its files never come back, and if it held the task
        # queue's lock no other worker can take work either. Stop here, say so, and fail what was out; the
        # next run carries on.
        log.error("worker.died", in_flight=in_flight(),
                  detail="an upload worker process was killed (out of memory?); stopping the run")
        _terminate(pool, grace=config.http_timeout + 5)
        _account_for_the_rest(results, outstanding, summary, _worker_died, done)
        for item in batch:
            summary.add(not_started(item))
        summary.aborted = "an upload worker process died"
        return
    except BaseException:
        # A second signal while draining, or a bug.
        _terminate(pool, grace=config.http_timeout + 5)
        _account_for_the_rest(results, outstanding, summary, _interrupted, done)
        raise
    stop.check()  # a stop signal ends the run with 130/143, even if nothing was left in flight


def start_fork_server() -> threading.Thread:
    """Start the pool's fork server from a helper thread; join the thread before creating the Pool.

    The fork server's start (a new interpreter importing botocore and parsing the S3 model, ~0.3 s) is the
    longest step before a first upload; this way it runs on another core while the main thread does the
    pre-flight. forkserver.ensure_running() holds the fork server's own lock, so Pool() then finds it up
    (and if it failed here, Pool()'s own call fails and reports).
    """
    from multiprocessing import forkserver

    def start():
        with contextlib.suppress(Exception):
            forkserver.ensure_running()

    thread = threading.Thread(target=start, name="obsbatch-forkserver", daemon=True)
    thread.start()
    return thread


class WorkerDied(Exception):
    """A pool worker was replaced, i.e. one died (internal to this module)."""


def _interrupted(item: WorkItem) -> Outcome:
    # A batch cut short reports all its files so, even those its worker had stored: their Outcomes never
    # came back, so they are not journaled and the next run uploads them again (safe, if not free).
    return Outcome(Kind.DEFERRED, item.display, key=item.key, size=item.size, reason=Reason.INTERRUPTED,
                   message="upload aborted by a second stop signal; the next run takes it")


def _worker_died(item: WorkItem) -> Outcome:
    return Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type="WorkerDied",
                   message="its upload worker process died before reporting; not known to be stored")


def _account_for_the_rest(results: queue.SimpleQueue, outstanding: Dict[int, list], summary: Summary,
                          leftover, done) -> None:
    """After a teardown: count what did come back, and report every other file handed out as `leftover(item)`."""
    while outstanding:
        try:
            seq, outcomes = results.get_nowait()
        except queue.Empty:
            break
        batch = outstanding.pop(seq, None)
        if batch is not None:
            for item, outcome in zip(batch, outcomes):
                summary.add(done(item, outcome))
    for batch in outstanding.values():
        for item in batch:
            summary.add(leftover(item))
    outstanding.clear()


def _terminate(pool, grace: float) -> None:
    """Pool.terminate, plus SIGKILL for any worker still alive after `grace` seconds.

    terminate() SIGTERMs the workers (which turn it into SystemExit and abort their multipart uploads on
    the way out) and then joins them. A SIGTERM that lands just as an idle worker enters sem_wait() on the
    task queue's lock is noted by the C handler but never acted on (a lost wakeup: seen once in ~40
    stops in tests/integration), and the join would then wait forever.
    """
    if pool is None:
        return
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


def _count(seq: int, outcomes: list, outstanding: Dict[int, list], summary: Summary, progress: Progress,
           done, pace: Pace) -> None:
    for item, outcome in zip(outstanding.pop(seq), outcomes):
        progress.parent += 1
        pace.add(outcome)
        summary.add(done(item, outcome))


def _collect(results: queue.SimpleQueue, outstanding: Dict[int, list], summary: Summary, check,
             progress: Progress, done, pace: Pace) -> None:
    """Wait a little for one batch of Outcomes and count them; if none comes, let `check()` have its say."""
    try:
        seq, outcomes = results.get(timeout=0.2)
    except queue.Empty:
        check()
        return
    _count(seq, outcomes, outstanding, summary, progress, done, pace)


def _collect_ready(results: queue.SimpleQueue, outstanding: Dict[int, list], summary: Summary,
                   progress: Progress, done, pace: Pace) -> None:
    """Count the batches already back, without waiting: it keeps `outstanding` honest for batching."""
    while True:
        try:
            seq, outcomes = results.get_nowait()
        except queue.Empty:
            return
        _count(seq, outcomes, outstanding, summary, progress, done, pace)


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
