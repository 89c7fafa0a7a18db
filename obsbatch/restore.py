"""`obsbatch restore`: bring a backup back into a directory, exactly (issue #14).

The parent lists the objects under the prefix (one page at a time), maps each key back to the exact
original name (keys.decode: the injective mapping, non-UTF-8 bytes included), refuses a key that would land
outside --target, applies --include/--exclude, and hands RestoreItems to the same worker processes a
backup uploads with (pool.UploadPool with restore=True; each worker's download.restore checks and writes
one object). Every object gets one Outcome: restored, identical (left as it is), conflict, archived,
unsafe key, or failed.

With --manifest, the manifest is the truth: its chain must verify, each object's bytes must have the SHA-256
it records (not merely the object's own metadata, which whoever replaced the object could have set), and
every object it says was uploaded must be in the store. Its records are kept in a temporary sqlite file, not
in memory: a manifest of millions of files stays out of RAM.
"""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple, Union

import structlog

from obsbatch import keys, pool
from obsbatch.config import Config
from obsbatch.errors import ConfigError, ExitCode, ObsbatchError, PreflightError
from obsbatch.filters import excluder
from obsbatch.models import Kind, Outcome, Reason, RestoreItem

log = structlog.get_logger()


@dataclass(frozen=True)
class RestoreJob:
    """config: the store, the connection, the concurrency and the SSE-C key, as a backup has them (its
    `source` is the target). target: where the tree goes. overwrite: replace local files that differ.
    manifest: a run manifest to check every object against, or None."""

    config: Config
    target: bytes
    overwrite: bool = False
    manifest: Optional[str] = None


@dataclass
class RestoreSummary:
    listed: int = 0
    restored: int = 0
    bytes_restored: int = 0
    identical: int = 0
    conflicts: int = 0
    archived: int = 0
    unsafe: int = 0
    excluded: int = 0
    unverified: int = 0
    failed: int = 0
    failed_by_type: collections.Counter = field(default_factory=collections.Counter)
    interrupted_by: Optional[ExitCode] = None
    started: float = field(default_factory=time.time)
    observers: list = field(default_factory=list, repr=False)

    def add(self, outcome: Outcome) -> None:
        if outcome.kind is Kind.RESTORED:
            self.restored += 1
            self.bytes_restored += outcome.size
            if outcome.message:
                self.unverified += 1
                log.warning("restore.unverified", path=outcome.path, key=outcome.key, detail=outcome.message)
            else:
                log.debug("restore.ok", path=outcome.path, key=outcome.key, bytes=outcome.size)
        elif outcome.reason is Reason.IDENTICAL:
            self.identical += 1
            log.debug("restore.identical", path=outcome.path, key=outcome.key)
        elif outcome.reason is Reason.CONFLICT:
            self.conflicts += 1
            log.warning("restore.conflict", path=outcome.path, key=outcome.key, detail=outcome.message)
        elif outcome.reason is Reason.ARCHIVED:
            self.archived += 1
            log.warning("restore.archived", path=outcome.path, key=outcome.key, detail=outcome.message)
        elif outcome.reason is Reason.UNSAFE_KEY:
            self.unsafe += 1
            log.error("restore.unsafe_key", key=outcome.key, detail=outcome.message)
        elif outcome.reason is Reason.EXCLUDED:
            self.excluded += 1
        else:
            self.failed += 1
            self.failed_by_type[outcome.error_type or "failed"] += 1
            log.error("restore.failed", path=outcome.path, key=outcome.key, error_type=outcome.error_type,
                      error=outcome.message, attempts=outcome.attempts)
        for observer in self.observers:
            observer(outcome)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted_by is not None:
            return self.interrupted_by
        if self.failed or self.conflicts or self.archived or self.unsafe:
            return ExitCode.PARTIAL
        return ExitCode.OK

    def as_dict(self) -> dict:
        return {"listed": self.listed, "restored": self.restored, "bytes_restored": self.bytes_restored,
                "identical": self.identical, "conflicts": self.conflicts, "archived": self.archived,
                "unsafe_keys": self.unsafe, "excluded": self.excluded, "unverified": self.unverified,
                "failed": self.failed, "failed_by_type": dict(self.failed_by_type),
                "seconds": round(time.time() - self.started, 3), "exit_code": int(self.exit_code)}

    def progress_line(self) -> str:
        return (f"{self.restored} restored, {self.identical} identical, {self.conflicts} conflicts, "
                f"{self.failed} failed")


def safe_relative(key_text: str) -> Optional[bytes]:
    """The relative path a key (without the prefix) restores to, or None if it could leave the target or
    is no file at all: empty, absolute, a '.', '..' or empty segment (a directory marker 'a/' among them),
    or a NUL byte. keys.encode never makes such a key from a walked path; someone else's object can be one."""
    rel = keys.decode(key_text)
    parts = rel.split(b"/")
    if not rel or b"\0" in rel or any(part in (b"", b".", b"..") for part in parts):
        return None
    return rel


class ManifestIndex:
    """The uploaded records of a manifest, by key, in a temporary sqlite file; which were seen in the store."""

    def __init__(self, path: str, prefix: str):
        from obsbatch import manifest

        try:
            manifest.verify(path)
        except manifest.Broken as exc:
            raise ObsbatchError(f"the manifest {path} does not verify, so it cannot be trusted: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the manifest {path}: {getattr(exc, 'strerror', None) or exc}") from None
        self._file = tempfile.NamedTemporaryFile(prefix="obsbatch-manifest-", suffix=".db")
        self.db = sqlite3.connect(self._file.name)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("CREATE TABLE records (key TEXT PRIMARY KEY, sha256 TEXT, size INTEGER, version_id TEXT,"
                        " path TEXT, seen INTEGER DEFAULT 0) WITHOUT ROWID")
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO records (key, sha256, size, version_id, path) VALUES (?,?,?,?,?)",
                ((r["key"], r.get("sha256") or "", r.get("size") or 0, r.get("version_id") or "", r.get("path") or "")
                 for r in manifest.stored_records(path, prefix)))

    def lookup(self, key: str) -> Optional[Tuple[str, int, str]]:
        """(sha256, size, version id) of the key, marked seen; None if the manifest has no such record."""
        row = self.db.execute("SELECT sha256, size, version_id FROM records WHERE key=?", (key,)).fetchone()
        if row is not None:
            self.db.execute("UPDATE records SET seen=1 WHERE key=?", (key,))
        return row

    def unseen(self) -> Iterator[Tuple[str, str]]:
        """(key, path) of records whose object the listing never showed."""
        yield from self.db.execute("SELECT key, path FROM records WHERE seen=0 ORDER BY key")

    def close(self) -> None:
        self.db.close()
        self._file.close()


def _items(job: RestoreJob, listing, index: Optional[ManifestIndex], summary: RestoreSummary
           ) -> Iterator[Union[RestoreItem, Outcome]]:
    config = job.config
    excluded = excluder(config.include, config.exclude)
    chown = os.geteuid() == 0
    for page in listing:
        for obj in page.get("Contents", ()):
            key = obj["Key"]
            summary.listed += 1
            rel = safe_relative(key[len(config.prefix):])
            if rel is None:
                yield Outcome(Kind.SKIPPED, key, key=key, reason=Reason.UNSAFE_KEY,
                              message="this key would land outside --target, or names no file; not written")
                continue
            dest = os.path.join(job.target, rel)
            if excluded is not None and excluded(rel):
                yield Outcome(Kind.SKIPPED, os.fsdecode(dest), key=key, reason=Reason.EXCLUDED)
                continue
            record = index.lookup(key) if index is not None else None
            sha256, version_id = (record[0] or "", record[2] or "") if record else ("", "")
            yield RestoreItem(key=key, display=os.fsdecode(dest), dest=dest, size=obj.get("Size", 0),
                              sha256=sha256, version_id=version_id, overwrite=job.overwrite, chown=chown)
    if index is not None:
        for key, path in index.unseen():
            yield Outcome(Kind.FAILED, path or key, key=key, error_type="Missing",
                          message="the manifest says it was uploaded, but the store has no such object")


def run(job: RestoreJob, summary: RestoreSummary) -> RestoreSummary:
    """Restore everything under the prefix into job.target; every object is counted in `summary`."""
    import botocore.exceptions

    from obsbatch import s3
    from obsbatch.settings import Endpoint

    config = job.config
    try:
        os.makedirs(job.target, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the target {os.fsdecode(job.target)}: {exc.strerror}") from None
    client = s3.make_client(Endpoint.from_config(config), pool_connections=1)
    index = ManifestIndex(job.manifest, config.prefix) if job.manifest else None
    listing = client.get_paginator("list_objects_v2").paginate(Bucket=config.bucket, Prefix=config.prefix)
    ctx = pool.context()
    workers = pool.UploadPool(ctx, config, ctx.RawValue("b", 0), pool.Gauges(ctx, config.processes), restore=True)
    previous = signal.signal(signal.SIGTERM, _terminated)
    log.info("restore.start", bucket=config.bucket, prefix=config.prefix, target=os.fsdecode(job.target),
             manifest=job.manifest, overwrite=job.overwrite)
    try:
        _dispatch(workers, _items(job, listing, index, summary), summary)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        # The listing failed: the bucket is gone, the key may not list, the endpoint is down.
        raise PreflightError(f"cannot list s3://{config.bucket}/{config.prefix}: {s3.error_message(exc)}") from None
    except pool.WorkerDied:
        returned, lost = workers.leftovers()
        _report(returned, summary)
        log.error("worker.died", files=len(lost), detail="a worker process was killed from outside; the restore "
                                                         "stops, and these files were not restored")
        for item in lost:
            summary.add(Outcome(Kind.FAILED, item.display, key=item.key, error_type="WorkerDied",
                                message="its worker process died before reporting"))
    except KeyboardInterrupt:
        summary.interrupted_by = ExitCode.INTERRUPTED
    except _Terminated:
        summary.interrupted_by = ExitCode.TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
        if summary.interrupted_by is not None or workers.batches_out:
            # Workers cut short remove their temporary file on the way out (download.restore), except on
            # upload threads, which die with the process: a `.NAME.obsbatch-restore-*` file may remain; it
            # is never under a real name.
            workers.terminate(grace=5)
        else:
            workers.close()
        if index is not None:
            index.close()
    if summary.listed == 0 and summary.interrupted_by is None:
        # Most often a mistyped --prefix or bucket: say so, rather than a silent "0 restored".
        log.warning("restore.empty", bucket=config.bucket, prefix=config.prefix,
                    detail="no object under this prefix; nothing was restored (check --prefix)")
    return summary


class _Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise _Terminated()


def _dispatch(workers: pool.UploadPool, items, summary: RestoreSummary) -> None:
    """Batches out to the workers (at most two per worker), results in, every item counted once."""
    batch: List[RestoreItem] = []
    size = 0
    last_tick = 0.0
    for item in items:
        if isinstance(item, Outcome):
            summary.add(item)
            continue
        if not workers.started:
            workers.start()
        batch.append(item)
        size += item.size
        if workers.batch_full(len(batch), size):
            _send(workers, batch, summary)
            batch, size = [], 0
        now = time.monotonic()
        if now - last_tick > 0.05:
            workers.tick(now)
            last_tick = now
        _report(workers.collect(0), summary)
    if batch:
        _send(workers, batch, summary)
    while workers.batches_out:
        workers.tick(time.monotonic())
        _report(workers.collect(0.05), summary)


def _send(workers: pool.UploadPool, batch: List[RestoreItem], summary: RestoreSummary) -> None:
    while workers.full:
        workers.tick(time.monotonic())
        _report(workers.collect(0.05), summary)
    workers.submit(batch)


def _report(results, summary: RestoreSummary) -> None:
    for _, outcome in results:
        summary.add(outcome)
