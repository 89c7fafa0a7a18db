"""The backup's run, wired in one place: its lifecycle, and the chain of stages (obsbatch.commands.backup
parses its flags and calls `run`).

walk (scandir, keys) -> filters (--include/--exclude) -> journal (unchanged since the last verified upload?)
-> stability (too new? open for writing?) -> plan (WorkItems) -> dispatch (the upload pool; after_upload:
journal, move mode) -> report (Summary, its observers: manifest, telemetry, stuck files, progress bar).

The parent walks, judges and aggregates; workers only upload. The parent owns signals (shutdown.Shutdown),
systemd (systemd.Notifier, Heartbeat) and telemetry.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from typing import Iterable, Optional

import structlog

from obsbatch import __version__, snapshot
from obsbatch.stages import journal
from obsbatch.engine import pool
from obsbatch.stages.after_upload import AfterUpload
from obsbatch.config import BackupConfig
from obsbatch.engine.dispatch import Dispatch, plan_only
from obsbatch.errors import EndpointUnavailable, JournalError, ObsbatchError
from obsbatch.stages import guard, snapshot as snapshots
from obsbatch.stages.filters import excluder, select
from obsbatch.logs import LEVELS
from obsbatch.reporting.manifest import Manifest
from obsbatch.models import display
from obsbatch.stages.plan import plan
from obsbatch.reporting.progress import ProgressBar
from obsbatch.engine.settings import WorkerSettings
from obsbatch.s3.remote import Remote, manifest_key
from obsbatch.reporting.summary import StuckFiles, Summary
from obsbatch.engine.shutdown import Shutdown
from obsbatch.stages.stability import Gate
from obsbatch.reporting.systemd import Activity, Heartbeat, Notifier
from obsbatch.reporting.telemetry import Telemetry
from obsbatch.stages.walk import check_source, walk

log = structlog.get_logger()

def run(config: BackupConfig, notifier: Optional[Notifier] = None, telemetry: Optional[Telemetry] = None,
        started: Optional[float] = None) -> Summary:
    """One backup pass. Raises ObsbatchError (exit 2) for what makes the run impossible; else a Summary.

    started: when the command began (time.time()), so the summary's seconds are the whole wall time, the
    /proc scan and the pre-flight included (issue #18: "in 0.1 s" was said of a 4.9 s run); default now.

    The caller owns `telemetry`: it ends the root span itself when this raises, and shuts telemetry down.
    """
    notifier = notifier or Notifier(enabled=False, watchdog_seconds=None)
    telemetry = telemetry or Telemetry.disabled()
    telemetry.start_run(display(os.fsencode(os.path.abspath(config.source))), config)
    source = check_source(config.source)
    with journal.lock_run(config.state, source):
        journal_ = journal.open_journal(config.state, config.store.endpoint or "aws", config.store.bucket)
        recorder = None if config.dry_run else snapshots.Recorder(excluder(config.include, config.exclude),
                                                                            source)
        try:
            return _run_locked(config, source, notifier, telemetry, journal_, recorder, started or time.time())
        finally:
            journal_.close()  # commits what is pending, on every way out (signals included)
            if recorder is not None:
                recorder.close()


def _run_locked(config: BackupConfig, source: bytes, notifier: Notifier, telemetry: Telemetry,
                journal_: journal.Journal, recorder: Optional[snapshots.Recorder], started: float) -> Summary:
    # The first /proc scan and the pre-flight may outlast TimeoutStartSec= on a big host or a slow endpoint.
    notifier.extend_timeout(_start_budget(config), "scanning open files and checking the destination")
    ctx = pool.context()
    shutdown = Shutdown(ctx, config.transfer.stop_timeout)
    gauges = pool.Gauges(ctx, config.transfer.processes)
    activity = Activity(gauges.requests)
    # A journal that knows no upload under the prefix (missing, another's, a rebuilt host's) is seeded from
    # this host's latest snapshot there: the pre-flight reads its fleet marker (_seed).
    seeding = not (config.dry_run or config.no_state or config.verify_remote) and not journal_.knows(
        config.store.prefix)
    marker = snapshot.fleet_key(config.output.host_id, config.store.prefix) if seeding else ""
    uploads = pool.UploadPool(ctx, config.transfer, WorkerSettings.for_backup(config, marker), shutdown.workers_flag,
                              gauges)
    # Every way out closes the pool: an error before the dispatch (a pre-flight that refuses, a --verify-remote
    # listing that fails) would otherwise leave its workers to the interpreter's exit, where Python 3.11's
    # concurrent.futures can race its own manager thread and print a traceback ("Bad file descriptor"; seen
    # in CI after a rejected secret). Dispatch has closed or terminated it already on the normal way.
    try:
        first_run = not config.dry_run and (journal_.empty() or seeding)
        if first_run:
            # A first run (or --no-state) will upload: the fork server starts now, on another core, while this
            # thread scans /proc and runs the pre-flight.
            uploads.prewarm()
        gate = Gate(config.min_age, strict=config.fd_check == "strict")
        gate.current_index()  # the first /proc scan, now: --fd-check strict fails here, before any upload
        # The pre-flight runs in an upload worker (pool.UploadPool.check_destination). It runs before walking on
        # a first run (empty journal), where a mistyped bucket or key is likeliest, and for --verify-remote;
        # once the journal holds uploads, it runs before the first upload instead, so a run with nothing to
        # upload contacts no server at all (issue #5). --dry-run never does.
        remote = Remote(config, uploads.check_destination)
        if first_run or (config.verify_remote and not config.dry_run):
            with contextlib.suppress(EndpointUnavailable):  # logged once; every file to upload then fails unsent
                remote.checked()
        log.info("run.start", source=display(source), bucket=config.store.bucket, prefix=config.store.prefix,
                 endpoint=config.store.endpoint or "aws", workers=config.transfer.processes, max_concurrent=config.transfer.max_concurrent or "auto",
                 min_age=config.min_age, dry_run=config.dry_run)
        summary = Summary(observers=[activity.saw] + ([telemetry.record] if telemetry.enabled else []), started=started)
        stages = _stages(config, source, journal_, recorder, gate, remote, summary, activity, telemetry)
        previous = journal_.last_snapshot(config.store.prefix)
        # Not in move mode: there every file of the previous snapshot is gone by design (this tool removed it).
        if (not config.dry_run and not config.delete_source and previous is not None and previous[2] >= guard.MIN_FILES
                and config.max_changed < 100):
            stages = guard.guarded(stages, journal_, previous[2], config.max_changed, lambda: shutdown.stopping)
        manifest_ = None
        if config.manifest:
            # The previous run's head (from the journal) makes successive manifests one chain (issue #14).
            previous_head = journal_.last_manifest_head(config.store.prefix)
            manifest_ = Manifest(config.manifest, {"source": display(source), "bucket": config.store.bucket,
                                                   "prefix": config.store.prefix, "endpoint": config.store.endpoint or "aws",
                                                   "started": summary.started, "obsbatch": __version__,
                                                   "previous_head": previous_head, "host": config.output.host_id})
            summary.observers.append(manifest_.record)
        notifier.ready(f"backing up {display(source)} to s3://{config.store.bucket}/{config.store.prefix}")
        with shutdown.installed(), Heartbeat(notifier, activity, summary.status_line, shutdown), \
                ProgressBar.for_terminal(summary, config.output) as bar:
            stages = _counted(stages, activity, bar)
            try:
                if config.dry_run:
                    plan_only(stages, shutdown, summary)
                else:
                    Dispatch(uploads, shutdown, summary, AfterUpload(journal_, gate if config.delete_source else None),
                             remote.checked, grace=config.transfer.grace).run(stages)
                    journal_.commit()  # before the summary: a journal that cannot be written is in it
            except ObsbatchError as exc:
                # The run cannot go on (the journal cannot be written, --fd-check strict went blind, the bucket
                # is gone): every file handed out is accounted for, and the summary says why it stopped.
                log.error("run.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
                summary.abort(str(exc), exc.exit_code)
            summary.finish(shutdown.exit_code)
        if not config.dry_run and summary.walk_complete:
            journal_.end_deferrals_not_seen(config.store.prefix)
            # A snapshot only of a walk that reached every directory: one that stopped part-way would drop the
            # files it never reached, and a restore of it would delete them in effect (README "Snapshots").
            _write_snapshot(config, source, recorder, journal_, remote, summary)
        if manifest_ is not None:
            _finish_manifest(manifest_, summary, config, remote, journal_)
        summary.log_final()
        telemetry.end_run(summary)
        notifier.stopping(summary.status_line())
        return summary
    finally:
        uploads.close()


def _stages(config: BackupConfig, source: bytes, journal_: journal.Journal, recorder: Optional[snapshots.Recorder],
            gate: Gate, remote: Remote, summary: Summary, activity: Activity, telemetry: Telemetry) -> Iterable:
    """The chain from the walk to WorkItems (and the Outcomes of everything that will not be uploaded)."""
    stages = select(walk(source, config.store.prefix, config.follow_symlinks, config.allow_outside_source, recorder),
                    config.include, config.exclude)
    # The journal's comparison comes before the stability gate: a file that is unchanged since its verified
    # upload is backed up already, even if a process holds it open right now, and must not be reported as
    # deferred run after run.
    if config.verify_remote and not config.dry_run and not remote.unavailable:
        listed = journal_.load_remote(remote.listing())
        log.info("journal.remote_listed", objects=listed, prefix=config.store.prefix)
    elif remote.seed_snapshot and not remote.unavailable:
        _seed(config, journal_, remote)
    # Unchanged files are only counted when no one reads their records one by one.
    quiet = not (config.manifest or telemetry.enabled or LEVELS[config.output.level] <= logging.DEBUG)
    stages = journal_.filter(stages, functools.partial(_unchanged, summary, activity) if quiet else None)
    if not config.dry_run:  # a dry run reads the journal, never writes it
        summary.observers.append(StuckFiles(journal_, config.max_defer, summary, telemetry))
    return plan(gate.filter(stages))


def _seed(config: BackupConfig, journal_: journal.Journal, remote: Remote) -> None:
    """A journal that knows no upload under the prefix (missing, another user's or --state's, a rebuilt host's)
    is seeded from this host's latest snapshot there: each of its files still stored is compared with the
    local file (read and hashed by a worker, no upload) rather than uploaded again. Anything that keeps the
    seed from being read is a warning, and the run uploads as a first run does."""
    try:
        seeded = journal_.seed(remote.seed_rows())
    except ObsbatchError as exc:
        log.warning("journal.seed_failed", error=str(exc), detail="uploading as a first run does")
        return
    if seeded:
        log.info("journal.seeded", files=seeded, prefix=config.store.prefix,
                 detail="no upload under this prefix is journaled here: each file this host's latest snapshot "
                        "holds is compared with the stored version instead of uploaded")


def _write_snapshot(config: BackupConfig, source: bytes, recorder: snapshots.Recorder, journal_: journal.Journal,
                    remote: Remote, summary: Summary) -> None:
    # No pre-flight for it: a run with nothing to upload (issue #5) sends one request, the record's PUT, from
    # the parent's own client; a bucket that is gone or an endpoint that is down fails that PUT, said once.
    if remote.unavailable:  # run.endpoint_unavailable said it once, and the run exits 1 already
        log.info("snapshot.skipped", detail="the endpoint did not answer this run: no snapshot; the previous one "
                                            "stays the latest")
        return
    from obsbatch.s3.endpoint import Endpoint
    from obsbatch.s3.lean import LeanPut

    # The record's PUT without botocore, where an earlier run learned botocore's URL for this bucket, or this
    # run's pre-flight did (its worker resolved it: remote.Remote.learned_base).
    known = journal_.store_url(config.store.addressing_style)
    remote.lean = LeanPut.usable(known or remote.learned_base(), config.store.region,
                                 Endpoint.from_config(config).verify, config.transfer.http_timeout,
                                 config.transfer.retries, os.environ)
    try:
        record = snapshots.write(config, display(source), recorder, journal_, remote, summary)
        # Recorded when the journal had none, or had one that failed (the lean PUT fell back to botocore), and
        # only once the record is stored: a URL its PUT reached, with credentials that signed it.
        learned = remote.learned_base() if record is not None and (known is None or remote.lean is None) else None
        if learned is not None:
            journal_.record_store_url(config.store.addressing_style, learned)
    except JournalError as exc:
        log.error("snapshot.failed", error=str(exc), detail="no snapshot of this run")
        summary.failed += 1
        summary.failed_by_type["Snapshot"] += 1
        return
    finally:
        if remote.lean is not None:
            remote.lean.close()
    if record is not None:
        summary.snapshot_id, summary.snapshot_head = record["id"], record["head"]


def _finish_manifest(manifest_: Manifest, summary: Summary, config: BackupConfig, remote: Remote,
                     journal_: journal.Journal) -> None:
    head = manifest_.close(summary.as_dict())
    # The anchor: the head goes into run.summary, STATUS= and the trace, out of reach of whoever can rewrite
    # the file (`verify-manifest FILE --expect-head HEAD`), and to the journal for the next run's header.
    summary.manifest_head = head
    if not config.dry_run:
        try:
            journal_.record_manifest_head(config.store.prefix, head, manifest_.run_id)
        except JournalError as exc:
            log.error("journal.commit_failed", error=str(exc),
                      detail="the next run's manifest will not cite this one's head")
    signature = None
    if config.signing_key:
        from obsbatch import signing

        try:
            signing.sign(manifest_.path, head, config.signing_key)
            signature = manifest_.path + signing.SUFFIX
        except (OSError, ObsbatchError) as exc:
            log.error("manifest.sign_failed", path=manifest_.path, error=str(exc))
            summary.failed += 1
            summary.failed_by_type["ManifestSignature"] += 1
    key = None
    if config.upload_manifest and not config.dry_run:
        key = manifest_key(config.store.prefix, manifest_.run_id)
        stored = _store_beside(remote, manifest_.path, key, summary)
        if stored and signature is not None:
            _store_beside(remote, signature, key + ".sig", summary)
        key = key if stored else None
    log.info("manifest.written", path=manifest_.path, chain_head=head, run_id=manifest_.run_id, key=key,
             signature=signature)


def _store_beside(remote: Remote, path: str, key: str, summary: Summary) -> bool:
    """--upload-manifest: store one file (the manifest, its signature) under `key`; a failure is counted."""
    with open(path, "rb") as handle:
        body = handle.read()
    if remote.put_beside(key, body, "application/jsonl", "manifest.upload_failed") is None:
        return True
    summary.failed += 1
    summary.failed_by_type["ManifestUpload"] += 1
    return False


def _unchanged(summary: Summary, activity: Activity) -> None:
    activity.parent += 1
    summary.add_unchanged()


def _counted(items, activity: Activity, bar: ProgressBar):
    """Pass the stages' items through, counting each as activity; their bytes are the bar's total at the end."""
    for item in bar.counted(items):
        activity.parent += 1
        yield item


def _start_budget(config: BackupConfig) -> float:
    """Seconds the start may take: a /proc scan plus two pre-flight requests with all their retries."""
    return 60 + 2 * config.transfer.http_timeout * (config.transfer.retries + 1)
