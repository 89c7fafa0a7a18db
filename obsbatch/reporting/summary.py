"""Stage 6: fold Outcomes into one Summary (aws-cli's ResultRecorder), log each decision, pick the exit code.

The Summary is the single source for the final `run.summary` log event, `--summary json`, the OpenTelemetry
root-span attributes and systemd's STATUS=; its observers (telemetry, journal deferrals, manifest, progress)
see every Outcome it counts.
"""

from __future__ import annotations

import collections
import datetime
import time
from dataclasses import dataclass, field
from typing import Optional

import structlog

from obsbatch.errors import ExitCode
from obsbatch.models import UNAVAILABLE, Kind, Outcome, Reason

log = structlog.get_logger()

# Skips that are the configuration (or the state journal) working as intended are logged at debug, so a
# tree of a million excluded or unchanged files does not flood the log; they are still counted.
_QUIET_SKIPS = frozenset({Reason.EXCLUDED, Reason.UNCHANGED, Reason.RECORDED})


@dataclass
class EngineSummary:
    """What the summary of a restore or a verify holds beside its own counts: how the engine's run ended
    (engine.dispatch.Dispatch sets the level and calls abort; the command sets interrupted_by from Shutdown),
    when the command started, and the observers of every Outcome (the progress bar)."""

    #: Objects not done because the command was stopping (not begun, or cut short): the next run takes them.
    interrupted: int = 0
    interrupted_by: Optional[ExitCode] = None
    #: Why the run stopped before the listing ended, other than a signal (a worker process killed).
    aborted: str = ""
    #: The level of requests in flight, and whether fixed or auto.
    concurrency: Optional[int] = None
    concurrency_mode: Optional[str] = None
    started: float = field(default_factory=time.time)
    observers: list = field(default_factory=list, repr=False)

    def abort(self, reason: str, exit_code: Optional[ExitCode] = None) -> None:
        self.aborted = reason


@dataclass
class Summary:
    """Counts for one run. `scanned` is every path the walk reported (directories aside)."""

    scanned: int = 0
    #: Files stored this run, and the bytes sent for them; `copied` of them were stored by a server-side
    #: copy (a rename, a move, a changed mode or owner: Outcome.copied_from), their bytes not sent.
    uploaded: int = 0
    bytes_uploaded: int = 0
    copied: int = 0
    bytes_copied: int = 0
    planned: int = 0
    bytes_planned: int = 0
    failed: int = 0
    errors: int = 0
    #: Files deferred for longer than --max-defer (across runs; needs the journal).
    stuck: int = 0
    #: Local files removed after a verified upload (--delete-source).
    deleted: int = 0
    attempts: int = 0
    retries: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    deferred: collections.Counter = field(default_factory=collections.Counter)
    failed_by_type: collections.Counter = field(default_factory=collections.Counter)
    stopped_by: Optional[ExitCode] = None
    #: Why the run stopped before the walk ended, other than a signal (then the files not reached are
    #: simply left for the next run).
    aborted: str = ""
    #: The exit code of what aborted the run, when it has one of its own (a mid-run ObsbatchError); else 1.
    abort_code: Optional[ExitCode] = None
    #: Uploads in flight the workers were allowed (the level --max-concurrent auto settled on, or the fixed
    #: N), and which of the two; None when nothing was uploaded.
    concurrency: Optional[int] = None
    concurrency_mode: Optional[str] = None
    #: The chain head of this run's manifest (--manifest), once it is closed: the anchor `verify-manifest
    #: --expect-head` checks against (issue #14). Not in the manifest's own summary line, which it seals.
    manifest_head: Optional[str] = None
    #: This run's snapshot (issue #20), once stored: its id, and its head (the anchor of the snapshot chain).
    snapshot_id: Optional[str] = None
    snapshot_head: Optional[str] = None
    #: Files of the tree in no snapshot yet (deferred on every run so far, or failed): what the latest
    #: snapshot leaves out. A snapshot not written because it would hold no file at all while the tree has
    #: some (a freshly copied tree, every file too new) is exit 1: an empty backup is never a green one.
    snapshot_unstored: int = 0
    snapshot_withheld: bool = False
    started: float = field(default_factory=time.time)
    ended: float = 0.0
    #: Called with every Outcome after it is counted (telemetry); not part of the summary itself.
    observers: list = field(default_factory=list, repr=False, compare=False)

    def add(self, outcome: Outcome) -> None:
        """Count one Outcome and log it under its stable event name."""
        self.scanned += 1
        self.attempts += outcome.attempts
        self.retries += outcome.retries
        kind = outcome.kind
        if kind is Kind.UPLOADED:
            self.uploaded += 1
            self.deleted += outcome.deleted
            if outcome.copied_from:
                self.copied += 1
                self.bytes_copied += outcome.size
            else:
                self.bytes_uploaded += outcome.size
            log.debug("upload.ok", path=outcome.path, key=outcome.key, bytes=outcome.size, attempts=outcome.attempts,
                      multipart=outcome.multipart, seconds=round(outcome.ended - outcome.started, 3),
                      **({"copied_from": outcome.copied_from} if outcome.copied_from else {}))
        elif kind is Kind.PLANNED:
            self.planned += 1
            self.bytes_planned += outcome.size
            log.info("file.planned", path=outcome.path, key=outcome.key, bytes=outcome.size)
        elif kind is Kind.SKIPPED:
            self.skipped[outcome.reason.value] += 1
            level = log.debug if outcome.reason in _QUIET_SKIPS else log.info
            level("file.skipped", path=outcome.path, reason=outcome.reason.value, **_detail(outcome))
        elif kind is Kind.DEFERRED:
            self.deferred[outcome.reason.value] += 1
            holders = [{"pid": pid, "name": name, "user": user} for pid, name, user in outcome.holders]
            log.info("file.deferred", path=outcome.path, reason=outcome.reason.value,
                     **({"holders": holders} if holders else {}), **_detail(outcome))
        elif kind is Kind.FAILED:
            self.failed += 1
            self.failed_by_type[outcome.error_type] += 1
            # An unreachable endpoint fails every file alike; run.endpoint_unavailable said why, once.
            level = log.debug if outcome.error_type == UNAVAILABLE else log.error
            level("upload.failed", path=outcome.path, key=outcome.key, error_type=outcome.error_type,
                      error=outcome.message, attempts=outcome.attempts)
        elif kind is Kind.ERROR:
            self.errors += 1
            log.error("walk.error", path=outcome.path, reason=outcome.reason.value, error_type=outcome.error_type,
                      error=outcome.message)
        for observe in self.observers:
            observe(outcome)

    def add_unchanged(self) -> None:
        """Count one file skipped as unchanged without an Outcome (journal.filter's quiet path)."""
        self.scanned += 1
        self.skipped[Reason.UNCHANGED.value] += 1

    def abort(self, reason: str, exit_code: Optional[ExitCode] = None) -> None:
        """The run could not go on: the files not reached are left for the next run."""
        self.aborted = reason
        self.abort_code = exit_code

    @property
    def walk_complete(self) -> bool:
        """Did the walk reach every entry: not stopped, not aborted, no directory or entry unreadable?"""
        return self.stopped_by is None and not self.aborted and not self.errors

    def finish(self, stopped_by: Optional[ExitCode] = None) -> None:
        self.stopped_by = stopped_by
        self.ended = time.time()

    @property
    def exit_code(self) -> ExitCode:
        """Severity merged: a stop beats an abort beats a failure beats success (skips and deferrals are not
        failures)."""
        if self.stopped_by is not None:
            return self.stopped_by
        if self.abort_code is not None:
            return self.abort_code
        if self.failed or self.errors or self.aborted or self.snapshot_withheld:
            return ExitCode.PARTIAL
        if self.stuck:
            return ExitCode.STUCK
        return ExitCode.OK

    def as_dict(self) -> dict:
        return {
            "scanned": self.scanned,
            "uploaded": self.uploaded,
            "bytes_uploaded": self.bytes_uploaded,
            "copied": self.copied,
            "bytes_copied": self.bytes_copied,
            "planned": self.planned,
            "bytes_planned": self.bytes_planned,
            "skipped": dict(self.skipped),
            "deferred": dict(self.deferred),
            "failed": self.failed,
            "failed_by_type": dict(self.failed_by_type),
            "errors": self.errors,
            "stuck": self.stuck,
            "deleted": self.deleted,
            "attempts": self.attempts,
            "retries": self.retries,
            "seconds": round((self.ended or time.time()) - self.started, 3),
            "exit_code": int(self.exit_code),
            "stopped_by_signal": self.stopped_by is not None,
            "aborted": self.aborted or None,
            "concurrency": self.concurrency,
            "concurrency_mode": self.concurrency_mode,
            "manifest_head": self.manifest_head,
            "snapshot": self.snapshot_id,
            "snapshot_head": self.snapshot_head,
            "snapshot_unstored": self.snapshot_unstored,
            "snapshot_withheld": self.snapshot_withheld,
        }

    def progress_line(self) -> str:
        """The counts beside the progress bar (progress.ProgressBar)."""
        return (f"{self.uploaded} up {human_size(self.bytes_uploaded)}, {sum(self.deferred.values())} deferred, "
                f"{sum(self.skipped.values())} skipped, {self.failed} failed")

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status` shows it)."""
        skipped, deferred = sum(self.skipped.values()), sum(self.deferred.values())
        done = f"{self.planned} planned" if self.planned else f"{self.uploaded} uploaded ({human_size(self.bytes_uploaded)})"
        return (f"{self.scanned} scanned, {done}, {skipped} skipped, {deferred} deferred, {self.failed} failed"
                + (f", {self.errors} unreadable" if self.errors else "")
                + (f", {self.concurrency} in flight ({self.concurrency_mode})" if self.concurrency and self.attempts
                   else "")
                + (f", manifest head {self.manifest_head}" if self.manifest_head else "")
                + (f", snapshot {self.snapshot_id} head {self.snapshot_head}" if self.snapshot_head else ""))

    def human(self, manifest: str = "") -> str:
        """A few lines for a person at a terminal, as rclone and restic end a run; pipes and journald get
        run.summary (JSON) instead. `manifest`: where the manifest went, if anywhere."""
        seconds = max((self.ended or time.time()) - self.started, 1e-3)
        if self.planned:
            head = f"{self.planned} files to upload ({human_size(self.bytes_planned)}), dry run"
        else:
            head = (f"{self.uploaded} files uploaded ({human_size(self.bytes_uploaded)}) in {seconds:.1f} s, "
                    f"{human_size(int(self.bytes_uploaded / seconds))}/s")
        if self.concurrency and self.attempts:  # "in flight" only when something was sent (issue #18)
            head += f", {self.concurrency} in flight ({self.concurrency_mode})"
        lines = [f"obsbatch: {head}; {self.scanned} scanned"]

        def by_reason(counts) -> str:
            return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))

        # What the snapshot records rather than uploads (symlinks, FIFOs) is no file left out: a line of its own.
        left_out = {reason: n for reason, n in self.skipped.items() if reason != Reason.RECORDED.value}
        recorded = self.skipped.get(Reason.RECORDED.value, 0)
        details = (("copied:  ", self.copied and f"{self.copied} of them ({human_size(self.bytes_copied)}) by a "
                                                 "server-side copy (renamed, moved or new attributes): no byte sent"),
                   ("skipped: ", left_out and by_reason(left_out)),
                   ("recorded:", recorded and f"{recorded} symlinks and special files, in the snapshot"),
                   ("deferred:", self.deferred and f"{by_reason(self.deferred)} (the next run takes them)"),
                   ("FAILED:  ", self.failed and f"{self.failed} ({by_reason(self.failed_by_type)})"
                    + ("; each is in the log above" if set(self.failed_by_type) - {UNAVAILABLE} else
                       "; the endpoint did not answer (run.endpoint_unavailable above), nothing was sent")),
                   ("unreadable:", self.errors and f"{self.errors} (see the log above)"),
                   ("stuck:   ", self.stuck and f"{self.stuck} deferred longer than --max-defer"),
                   ("aborted: ", self.aborted))
        lines += [f"  {label} {text}" for label, text in details if text]
        if self.snapshot_id:
            lines.append(f"  snapshot: {self.snapshot_id} (head {self.snapshot_head})")
        if manifest:
            lines.append(f"  manifest: {manifest}" + (f" (head {self.manifest_head})" if self.manifest_head else ""))
        lines.append(f"  exit {int(self.exit_code)}")
        return "\n".join(lines)

    def log_final(self) -> None:
        event = log.warning if self.exit_code is not ExitCode.OK else log.info
        event("run.summary", **self.as_dict())


class StuckFiles:
    """Summary observer: carry each deferral over runs in the journal, and report a file deferred for longer
    than --max-defer. A stuck writer must not keep a file out of the backup silently, however many runs pass.

    journal: the state journal (journal.Journal); telemetry: the run's Telemetry (its stuck-file metric).
    """

    def __init__(self, journal, max_defer: float, summary: Summary, telemetry):
        self.journal = journal
        self.max_defer = max_defer
        self.summary = summary
        self.telemetry = telemetry

    def __call__(self, outcome: Outcome) -> None:
        if outcome.kind is not Kind.DEFERRED or not outcome.key:
            return
        now = time.time()
        first_seen, count = self.journal.deferral(outcome, now)
        if now - first_seen > self.max_defer:
            self.summary.stuck += 1
            log.warning("file.stuck", path=outcome.path, key=outcome.key, reason=outcome.reason.value,
                        deferred_since=datetime.datetime.fromtimestamp(first_seen, datetime.timezone.utc).isoformat(),
                        times=count, max_defer_s=self.max_defer,
                        detail="deferred for longer than --max-defer: this file is missing from the backup")
            self.telemetry.stuck(outcome)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _detail(outcome: Outcome) -> dict:
    return {"detail": outcome.message} if outcome.message else {}
