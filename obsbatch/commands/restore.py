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
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import structlog

from obsbatch import beneath, keys, scratch
from obsbatch.commands import runner
from obsbatch.engine import download, pool
from obsbatch.s3 import listing, remote, snapshots
from obsbatch.config import RestoreConfig
from obsbatch.errors import ConfigError, ExitCode, ObsbatchError
from obsbatch.stages.filters import excluder
from obsbatch.models import Kind, Outcome, Reason, RestoreItem, display
from obsbatch.reporting.summary import EngineSummary, human_size

log = structlog.get_logger()

DESCRIPTION = ("Bring a backup back into a directory: every object checked against its sha256 (and the manifest), "
               "written under a temporary name and renamed, original names, mtime and mode restored. Exit 0 all "
               "restored or identical, 1 conflicts, archived or failed objects, 2 usage or access errors.")


def main(argv: Sequence[str], started: float) -> int:
    """`obsbatch restore FLAGS`: from its flags to its exit code."""
    return runner.main("restore", argv, started, DESCRIPTION, RestoreSummary, run)


@dataclass
class RestoreSummary(EngineSummary):
    listed: int = 0
    #: --dry-run: objects that would be written (absent locally, or replaced with --overwrite).
    planned: int = 0
    bytes_planned: int = 0
    restored: int = 0
    bytes_restored: int = 0
    identical: int = 0
    conflicts: int = 0
    archived: int = 0
    unsafe: int = 0
    excluded: int = 0
    #: With --include: the entries it selected (files, and a snapshot's directories too); None without.
    #: None selected is exit 1: a mistyped --include must not pass for a restore.
    selected: Optional[int] = None
    unverified: int = 0
    failed: int = 0
    failed_by_type: collections.Counter = field(default_factory=collections.Counter)
    #: A snapshot's entries that are not a file's bytes, once made: directories (their attributes set),
    #: symlinks, hardlinks, special files, and special files left out (not root).
    entries: collections.Counter = field(default_factory=collections.Counter)
    #: The snapshot restored (its id), or None for a restore of the listing.
    snapshot: Optional[str] = None

    def add(self, outcome: Outcome) -> None:
        if outcome.kind is Kind.RESTORED:
            self.restored += 1
            self.bytes_restored += outcome.size
            if outcome.message:
                self.unverified += 1
                log.warning("restore.unverified", path=outcome.path, key=outcome.key, detail=outcome.message)
            else:
                log.debug("restore.ok", path=outcome.path, key=outcome.key, bytes=outcome.size)
        elif outcome.kind is Kind.PLANNED:
            self.planned += 1
            self.bytes_planned += outcome.size
            log.info("restore.planned", path=outcome.path, key=outcome.key, bytes=outcome.size,
                     detail=outcome.message)
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
        elif outcome.kind is Kind.DEFERRED:  # not begun, or cut short, by a stop: nothing was written
            self.interrupted += 1
            log.info("restore.interrupted", path=outcome.path, key=outcome.key, detail=outcome.message)
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
        # Nothing listed is exit 1: most often a mistyped --prefix, which must not pass for a restore. (A
        # snapshot was found, so the prefix is right; one of a tree without files is restored as it was.)
        if (self.failed or self.conflicts or self.archived or self.unsafe or self.aborted
                or not (self.listed or self.snapshot) or self.selected == 0):
            return ExitCode.PARTIAL
        return ExitCode.OK

    def as_dict(self) -> dict:
        return {"listed": self.listed, "planned": self.planned, "bytes_planned": self.bytes_planned,
                "restored": self.restored, "bytes_restored": self.bytes_restored,
                "identical": self.identical, "conflicts": self.conflicts, "archived": self.archived,
                "unsafe_keys": self.unsafe, "excluded": self.excluded, "selected": self.selected, "unverified": self.unverified,
                "failed": self.failed, "failed_by_type": dict(self.failed_by_type),
                "interrupted": self.interrupted, "aborted": self.aborted or None,
                "snapshot": self.snapshot, "entries": dict(self.entries),
                "seconds": round(time.time() - self.started, 3), "exit_code": int(self.exit_code)}

    def human(self) -> str:
        """A few lines for a person at a terminal, as a backup ends (summary.Summary.human)."""
        seconds = max(time.time() - self.started, 1e-3)
        if self.planned or not self.restored:
            head = f"{self.planned} objects to restore ({human_size(self.bytes_planned)}), dry run" if self.planned \
                else f"0 objects restored in {seconds:.1f} s"
        else:
            head = (f"{self.restored} objects restored ({human_size(self.bytes_restored)}) in {seconds:.1f} s, "
                    f"{human_size(int(self.bytes_restored / seconds))}/s")
        details = (("identical:", self.identical and f"{self.identical} (left as they were)"),
                   ("CONFLICTS:", self.conflicts and f"{self.conflicts} local files differ; left untouched "
                                                     "(restore.conflict above; --overwrite replaces them)"),
                   ("archived:", self.archived and f"{self.archived} (thaw them with RestoreObject first)"),
                   ("unsafe:  ", self.unsafe and f"{self.unsafe} keys that would leave --target; not written"),
                   ("unverified:", self.unverified and f"{self.unverified} without sha256 to check against"),
                   ("FAILED:  ", self.failed and f"{self.failed} ({', '.join(f'{n} {t}' for t, n in self.failed_by_type.most_common())}); "
                                                 "each is in the log above"),
                   ("stopped: ", self.interrupted and f"{self.interrupted} not restored (the next restore takes them)"),
                   ("empty:   ", not (self.listed or self.snapshot) and "no object under this prefix (check --prefix)"))
        lines = [f"obsbatch restore: {head}; {self.listed} listed"
                 + (f" in snapshot {self.snapshot}" if self.snapshot else "")]
        if self.entries:
            lines.append("  also:     " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in sorted(self.entries.items())))
        lines += [f"  {label} {text}" for label, text in details if text]
        lines.append(f"  exit {int(self.exit_code)}")
        return "\n".join(lines)

    def progress_line(self) -> str:
        return (f"{self.restored} restored, {self.identical} identical, {self.conflicts} conflicts, "
                f"{self.failed} failed")


def local_name(key_text: str, ours: Callable[[], bool]) -> bytes:
    """The relative path a key (without the prefix) names: obsbatch's keys decoded (keys.decode), another tool's
    taken literally (issue #19: decoding every `%XX` turned s5cmd's `%41.txt` into `A.txt`, merging two objects).

    A key keys.encode never makes is another tool's; a key without `%` reads the same either way; for one with
    escapes that obsbatch could have made, `ours()` decides (the manifest lists it, or the object carries the
    sha256 metadata obsbatch writes).
    """
    if "%" not in key_text or not keys.canonical(key_text) or not ours():
        return key_text.encode("utf-8")
    return keys.decode(key_text)


class ManifestIndex:
    """The uploaded records of a manifest, by key, in a temporary sqlite file; which were seen in the store."""

    def __init__(self, path: str, prefix: str):
        from obsbatch.reporting import manifest

        try:
            manifest.verify(path)
        except manifest.Broken as exc:
            raise ObsbatchError(f"the manifest {path} does not verify, so it cannot be trusted: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the manifest {path}: {getattr(exc, 'strerror', None) or exc}") from None
        self.db = scratch.database("manifest")
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


def _items(config: RestoreConfig, target: bytes, listed, index: Optional[ManifestIndex], summary: RestoreSummary,
           has_our_metadata: Callable[[str], bool]) -> Iterator[Union[RestoreItem, Outcome]]:
    excluded = excluder(config.include, config.exclude)
    chown = os.geteuid() == 0
    # Names two keys could share (keys.plain: only names that are not plain), and the key that took each.
    # Kept in memory: such names are few (they hold a '%', a backslash, a control character or bytes that
    # are not UTF-8), whatever the size of the tree.
    taken = {}
    for obj in listed:
        key = obj["Key"]
        summary.listed += 1
        record = index.lookup(key) if index is not None else None
        rel = local_name(key[len(config.store.prefix):], lambda: record is not None or has_our_metadata(key))
        # --include/--exclude first: a key they leave out is never judged (issue #19: unsafe keys could not
        # be filtered out of a restore).
        if excluded is not None and excluded(rel):
            yield Outcome(Kind.SKIPPED, display(os.path.join(target, rel)), key=key, reason=Reason.EXCLUDED)
            continue
        if summary.selected is not None:
            summary.selected += 1
        # An empty, absolute, '.', '..' or empty segment (a directory marker 'a/' among them), or a NUL byte:
        # keys.encode never makes such a key from a walked path; someone else's object can be one.
        if not beneath.valid_path(rel):
            yield Outcome(Kind.SKIPPED, key, key=key, reason=Reason.UNSAFE_KEY,
                          message="this key would land outside --target, or names no file; not written")
            continue
        dest = display(os.path.join(target, rel))
        if not keys.plain(rel):
            first = taken.setdefault(rel, key)
            if first != key:
                yield Outcome(Kind.FAILED, dest, key=key, error_type="NameCollision",
                              message=f"the keys {first!r} and {key!r} both name this path; only the first was "
                                      "restored (restore the other alone, with --include, into another --target)")
                continue
        sha256, version_id = (record[0] or "", record[2] or "") if record else ("", "")
        # The manifest's size goes with the manifest's version; the listing's with the current one.
        size = record[1] if record and version_id else obj.get("Size", 0)
        modified = obj.get("LastModified")
        yield RestoreItem(key=key, display=dest, target=target, rel=rel, size=size, sha256=sha256,
                          version_id=version_id, overwrite=config.overwrite, chown=chown,
                          listed_mtime_ns=int(modified.timestamp() * 1e9) if modified is not None else 0)
    if index is not None:
        for key, path in index.unseen():
            yield Outcome(Kind.FAILED, path or key, key=key, error_type="Missing",
                          message="the manifest says it was uploaded, but the store has no such object")


def run(config: RestoreConfig, summary: RestoreSummary, counted: Callable[[Iterator], Iterator] = iter
        ) -> RestoreSummary:
    """Restore everything under the prefix into --target; every object is counted in `summary`.

    The same engine as a backup (issue #18): dispatch.Dispatch hands RestoreItems to the UploadPool's workers
    and accounts for each one; shutdown.Shutdown records SIGTERM/SIGINT/SIGHUP, so a first signal lets the
    objects in flight finish (within --stop-timeout) and starts no other, a second one or the timeout tears
    the workers down; what they were writing is removed (download.remove_temporaries). Whatever the stop, a name
    under --target holds either its checked bytes or what was there before.
    """

    from obsbatch.s3 import client as s3
    from obsbatch.s3.endpoint import Endpoint

    target = os.fsencode(os.path.abspath(config.target))
    if config.include:
        summary.selected = 0
    if not config.restore_dry_run:
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the target {config.target}: {exc.strerror}") from None
        # A restore hands every object to the workers: their fork server (a new interpreter importing botocore,
        # ~0.4 s) starts now, on the other core, while this thread builds its client and reads the snapshot,
        # rather than at the first object (issue #21; as a first backup does).
        pool.start_fork_server()
    client = s3.make_client(Endpoint.from_config(config), pool_connections=1)
    if not (config.listing or config.restore_manifest):
        record = remote.chosen_snapshot(client, config.store, config.snapshot or "", config.as_of,
                                        config.public_key, "restore")
        if record is not None:
            if not config.public_key and os.geteuid() == 0:  # README: the threat model
                log.warning("restore.unauthenticated", id=record["id"], detail="the snapshot records are not "
                            "authenticated (no --public-key): whoever can write the bucket decides what this restore "
                            "writes as root; sign at backup with --signing-key and give its public key here")
            return _restore_snapshot(config, client, record, target, summary, counted)
        log.info("restore.no_snapshot", bucket=config.store.bucket, prefix=config.store.prefix,
                 detail="no snapshot under this prefix: restoring every object the listing shows (--listing)")
    index = ManifestIndex(config.restore_manifest, config.store.prefix) if config.restore_manifest else None
    reading = config.store.reading

    def has_our_metadata(key: str) -> bool:
        """A HEAD, for the few keys that could be obsbatch's or another tool's (local_name)."""
        head = client.head_object(Bucket=config.store.bucket, Key=key, **reading.read_params(""))
        return "sha256" in head.get("Metadata", {})

    items = counted(_items(config, target, listing.objects(client, config.store.bucket, config.store.prefix), index,
                           summary, has_our_metadata))
    try:
        # A failure here is the listing's: the bucket is gone, the key may not list, the endpoint is down.
        with remote.store_errors(config.store, f"list s3://{config.store.bucket}/{config.store.prefix}"):
            if config.restore_dry_run:
                _plan_only(client, config.store, items, summary)
            else:
                _dispatch(config, client, items, summary)
    finally:
        if index is not None:
            index.close()
    _say_if_nothing_selected(config, summary)
    if summary.listed == 0 and summary.interrupted_by is None and summary.snapshot is None:
        # Most often a mistyped --prefix or bucket: say so, rather than a silent "0 restored".
        log.warning("restore.empty", bucket=config.store.bucket, prefix=config.store.prefix,
                    detail="no object under this prefix; nothing was restored (check --prefix); exit 1")
    return summary


def _restore_snapshot(config: RestoreConfig, client, record: dict, target: bytes, summary: RestoreSummary,
                      counted: Callable[[Iterator], Iterator]) -> RestoreSummary:
    """Restore one snapshot (commands.restore_tree): its files through the workers, then the rest."""

    from obsbatch.commands.restore_tree import TreeRestore

    store = config.store
    summary.snapshot = record["id"]
    log.info("restore.snapshot", id=record["id"], time=record.get("time"), snapshot_host=record.get("host"),
             files=record.get("files"), head=record.get("head"))
    with remote.store_errors(store, f"read the snapshot {record['id']}"):
        trees = snapshots.trees(client, store.bucket, store.prefix, record, store.reading.read_params(""))
    try:
        tree = TreeRestore(config, record, trees, target, summary, excluder(config.include, config.exclude))
        if config.restore_dry_run:
            _plan_only(client, store, counted(tree.items()), summary)
        else:
            _dispatch(config, client, counted(tree.items()), summary)
            if summary.interrupted_by is None:
                tree.finish()
    finally:
        trees.close()
    _say_if_nothing_selected(config, summary)
    return summary


def _say_if_nothing_selected(config: RestoreConfig, summary: RestoreSummary) -> None:
    if summary.selected == 0 and summary.interrupted_by is None:
        log.warning("restore.nothing_selected", include=list(config.include), snapshot=summary.snapshot,
                    detail="no path matches --include (a directory is given by its path, e.g. --include docs); "
                           "nothing was restored; exit 1")


def _dispatch(config: RestoreConfig, client, items, summary: RestoreSummary) -> None:
    """The objects to the workers (dispatch.run_reads); a worker torn down mid-object leaves no temporary."""
    from obsbatch.engine.dispatch import run_reads

    log.info("restore.start", bucket=config.store.bucket, prefix=config.store.prefix, target=config.target,
             manifest=config.restore_manifest, overwrite=config.overwrite)
    run_reads(config, client, items, summary, task="restore", abandon=_abandoned)


def _plan_only(client, store, items, summary: RestoreSummary) -> None:
    """--dry-run: each object judged against what is at its destination, as the workers would judge it
    (download.planned), and nothing written. A signal simply stops it: nothing is in flight."""
    reading = store.reading
    for item in items:
        if isinstance(item, Outcome):
            summary.add(item)
            continue
        verdict = download.planned(client, store.bucket, reading, item)
        summary.add(Outcome(path=item.display, key=item.key, size=item.size, **verdict))


def _abandoned(item: RestoreItem) -> None:
    """Dispatch's `abandon`: a torn-down worker may have left a temporary of this object."""
    download.remove_temporaries(item)
