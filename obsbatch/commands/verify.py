"""`obsbatch verify`: read the store back and say, object by object, whether it holds what was backed up.

By default the latest snapshot is the reference (--snapshot/--as-of another): every file it names must be
there at its recorded version, size, ETag and sha256. With --listing (implied where the prefix has no
snapshot) the listing is the inventory: every object under the prefix must carry the `sha256` metadata
obsbatch writes, with the listed size and ETag. That proves the objects are obsbatch's and unchanged since
they were listed; it cannot catch an object replaced whole with self-consistent metadata. With --manifest, the manifest is the truth (its chain is checked first): every object it says was uploaded
must be present, in the recorded version, with the recorded size, ETag, sha256 and retain-until; an object
replaced by other bytes is caught, since nobody can make its new bytes match the old SHA-256.

--read-data PERCENT reads that share of the objects back in full and recomputes their SHA-256 (restic's
`check --read-data-subset`, rclone's `check --download`). The share is a deterministic sample: an object is
read when the SHA-256 of its key falls under the percentage, so successive runs with the same share read the
same objects, and the objects a 10 % run reads are among those a 20 % run reads.

Against a snapshot or a manifest, one listing of every version (s3.listing.Inventory) proves most objects
without a request of their own (issue #21: a HEAD per object made a verify take twice the backup's time);
only what it cannot prove goes to a worker's HEAD (_proven).

The checks run on the backup's engine (issue #18): the parent lists (or reads the manifest) and hands
VerifyItems to the same worker processes, dispatch and Shutdown a backup and a restore use, so --max-concurrent
(auto included), --bwlimit, --max-rps and --stop-timeout govern it too, and SIGTERM/SIGINT/SIGHUP stop it
after the checks in flight (each worker's side is obsbatch.engine.check). A verify writes nothing anywhere.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import structlog

from obsbatch.commands import runner
from obsbatch.config import VerifyConfig
from obsbatch.errors import ConfigError, ExitCode, ObsbatchError
from obsbatch.models import Kind, Outcome, VerifyItem
from obsbatch.reporting.summary import EngineSummary, human_size
from obsbatch.s3 import listing, remote

log = structlog.get_logger()

DESCRIPTION = ("Check what is stored: every object present, with its size, ETag, version, sha256 metadata and "
               "retain-until, and a share of them read back in full. Exit 0 all good, 1 any missing, different "
               "or failed, 2 usage or access errors.")


def main(argv: Sequence[str], started: float) -> int:
    """`obsbatch verify FLAGS`: from its flags to its exit code."""
    return runner.main("verify", argv, started, DESCRIPTION, VerifySummary, run,
                       by_bytes=lambda config: config.read_data > 0)


@dataclass
class VerifySummary(EngineSummary):
    """Every object's check counted once; the exit code; the log's and the terminal's last words."""

    checked: int = 0
    ok: int = 0
    missing: int = 0
    different: int = 0
    read: int = 0
    bytes_read: int = 0
    #: Objects whose check the store refused or that failed on the way (not Missing nor Different).
    failed: int = 0
    #: The snapshot checked (--snapshot, --as-of), or None.
    snapshot: Optional[str] = None

    def add(self, outcome: Outcome) -> None:
        if outcome.kind is Kind.DEFERRED:  # not begun, or cut short, by a stop
            self.interrupted += 1
        else:
            self.checked += 1
            self.read += bool(outcome.sha256)
            self.bytes_read += outcome.size if outcome.kind is Kind.VERIFIED else 0
            if outcome.kind is Kind.VERIFIED:
                self.ok += 1
            elif outcome.error_type == "Missing":
                self.missing += 1
                log.error("verify.missing", key=outcome.key, detail=outcome.message)
            elif outcome.error_type == "Different":
                self.different += 1
                log.error("verify.different", key=outcome.key, problems=outcome.message.split("; "))
            else:
                self.failed += 1
                log.error("verify.failed", key=outcome.key, error_type=outcome.error_type, error=outcome.message,
                          attempts=outcome.attempts)
        for observer in self.observers:
            observer(outcome)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted_by is not None:
            return self.interrupted_by
        # Nothing checked is exit 1: a mistyped --prefix must not pass for a verified backup (issue #18).
        if self.missing or self.different or self.failed or self.aborted or not self.checked:
            return ExitCode.PARTIAL
        return ExitCode.OK

    def as_dict(self) -> dict:
        return {"checked": self.checked, "ok": self.ok, "missing": self.missing, "different": self.different,
                "failed": self.failed, "read_back": self.read, "bytes_read": self.bytes_read,
                "interrupted": self.interrupted, "aborted": self.aborted or None, "snapshot": self.snapshot,
                "concurrency": self.concurrency, "concurrency_mode": self.concurrency_mode,
                "seconds": round(time.time() - self.started, 3), "exit_code": int(self.exit_code)}

    def human(self) -> str:
        """A few lines for a person at a terminal, as a backup ends (summary.Summary.human)."""
        lines = [f"obsbatch verify: {self.ok} of {self.checked} objects as stored, {self.read} read back in full "
                 f"({human_size(self.bytes_read)}) in {time.time() - self.started:.1f} s"]
        details = (("MISSING:  ", self.missing and f"{self.missing} (verify.missing above)"),
                   ("DIFFERENT:", self.different and f"{self.different} (verify.different above)"),
                   ("FAILED:   ", self.failed and f"{self.failed} could not be checked (verify.failed above)"),
                   ("stopped:  ", self.interrupted and f"{self.interrupted} not checked (the next verify checks them)"),
                   ("aborted:  ", self.aborted),
                   ("empty:    ", not self.checked and not self.interrupted
                    and "nothing to check under this prefix (check --prefix)"))
        lines += [f"  {label} {text}" for label, text in details if text]
        lines.append(f"  exit {int(self.exit_code)}")
        return "\n".join(lines)

    def progress_line(self) -> str:
        return f"{self.ok} ok, {self.missing} missing, {self.different} different, {self.failed} failed"


def sampled(key: str, percent: float) -> bool:
    """Whether `key` is in the deterministic `percent` share of objects (module docstring)."""
    if percent <= 0:
        return False
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") < percent / 100 * 2 ** 64


def _from_listing(listed, percent: float) -> Iterator[VerifyItem]:
    for obj in listed:
        yield VerifyItem(obj["Key"], obj.get("Size", 0), obj.get("ETag", "").strip('"'),
                         read=sampled(obj["Key"], percent))


def _from_manifest(path: str, prefix: str, percent: float) -> Iterator[VerifyItem]:
    from obsbatch.reporting import manifest

    for record in manifest.stored_records(path, prefix):
        yield VerifyItem(record["key"], record.get("size") or 0, record.get("etag") or "", record.get("sha256") or "",
                         record.get("version_id") or "", record.get("retain_until") or "",
                         read=sampled(record["key"], percent))


def _from_snapshot(config: VerifyConfig, client, record: dict, summary: VerifySummary) -> Iterator[VerifyItem]:
    """Every file of the snapshot `record`, at its recorded version, size, ETag and sha256. The record and
    every tree are checked against their hashes first (snapshots.SnapshotDamaged, exit 1, for one that was
    altered)."""
    from obsbatch.s3 import snapshots

    store = config.store
    with remote.store_errors(store, f"read the snapshot {record['id']}"):
        trees = snapshots.trees(client, store.bucket, store.prefix, record, store.reading.read_params(""))
    summary.snapshot = record["id"]
    try:
        # The whole tree is read (and every tree's hash checked) before the first check is sent: a damaged
        # snapshot is one sentence, not a verify that stops part-way.
        # Every entry is checked too (snapshots.entry_problem): a name that could leave a restore's target, or
        # any other value a restore could not use, makes the snapshot damaged.
        for _ in snapshots.walk(trees, record["root"], limit=snapshots.entry_budget(record)):
            pass
    except BaseException:
        trees.close()
        raise
    return _snapshot_items(record, trees, config.read_data)


def _snapshot_items(record: dict, trees, percent: float) -> Iterator[VerifyItem]:
    from obsbatch import keys, snapshot
    from obsbatch.s3 import snapshots

    encode = keys.encoder(record)
    try:
        for rel_dir, entries in snapshots.walk(trees, record["root"], limit=snapshots.entry_budget(record)):
            for entry in entries:
                if entry[snapshot.TYPE] != snapshot.FILE:
                    continue
                rel = rel_dir + b"/" + entry[snapshot.NAME] if rel_dir else entry[snapshot.NAME]
                key = record["prefix"] + encode(rel)
                yield VerifyItem(key, entry[snapshot.SIZE], etag=snapshot.etag(entry), sha256=entry[snapshot.CONTENT],
                                 version_id=entry[snapshot.VERSION], read=sampled(key, percent))
    finally:
        trees.close()


def run(config: VerifyConfig, summary: VerifySummary, counted: Callable[[Iterator], Iterator] = iter
        ) -> VerifySummary:
    """Check every object under the prefix (or in the manifest); each is counted in `summary`."""

    from obsbatch.engine import dispatch
    from obsbatch.reporting import manifest
    from obsbatch.s3 import client as s3
    from obsbatch.s3.endpoint import Endpoint

    store = config.store
    client = s3.make_client(Endpoint.from_config(config), pool_connections=1)
    where = f"read {store.location}"
    if config.verify_manifest:
        try:
            manifest.verify(config.verify_manifest)
        except manifest.Broken as exc:
            raise ObsbatchError(f"the manifest {config.verify_manifest} does not verify, so it proves nothing: "
                                f"{exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the manifest {config.verify_manifest}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        with remote.store_errors(store, where):
            # The pre-flight: with a manifest nothing else is asked of the store before the workers' HEADs, and a
            # missing bucket or rejected credentials must be one sentence and exit 2 here, as in every command,
            # not a failure per object.
            client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix, MaxKeys=1)
        items = _from_manifest(config.verify_manifest, store.prefix, config.read_data)
    else:
        record = (remote.chosen_snapshot(client, store, config.snapshot or "", config.as_of, config.public_key,
                                         "verify") if config.by_snapshot else None)
        if record is not None:
            items = _from_snapshot(config, client, record, summary)
        else:
            if config.by_snapshot:
                log.info("verify.no_snapshot", bucket=store.bucket, prefix=store.prefix,
                         detail="no snapshot under this prefix: checking every object the listing shows (--listing)")
            items = _from_listing(listing.objects(client, store.bucket, store.prefix), config.read_data)
    log.info("verify.start", bucket=store.bucket, prefix=store.prefix, manifest=config.verify_manifest,
             snapshot=summary.snapshot, read_data=config.read_data)
    inventory = None
    try:
        with remote.store_errors(store, where):  # the listing failed
            if config.verify_manifest or summary.snapshot:
                # A recorded reference (version id, ETag) is what lets the listing prove an object: the listing's
                # own objects have none to hold them against, so --listing still HEADs each one.
                inventory = listing.Inventory(client, store.bucket, store.prefix)
                items = _proven(items, inventory)
            dispatch.run_reads(config, client, counted(items), summary, task="verify")
    finally:
        if inventory is not None:
            inventory.close()
    if summary.checked == 0 and summary.interrupted_by is None:
        log.warning("verify.empty", bucket=store.bucket, prefix=store.prefix, manifest=config.verify_manifest,
                    detail="nothing to check: no object under this prefix (or no upload in the manifest); exit 1")
    return summary


def _proven(items: Iterator[VerifyItem], inventory: "listing.Inventory") -> Iterator[Union[VerifyItem, Outcome]]:
    """Each item the listing proves as its Outcome, here in the parent (no request); the rest as they are, for
    a worker's HEAD: those the listing cannot prove (no version id nor ETag recorded, a retain-until to read,
    the --read-data sample) and those it does not show as recorded (missing or other: the HEAD names what)."""
    for item in items:
        if (not item.read and not item.retain_until
                and inventory.proves(item.key, item.object_size, item.etag, item.version_id)):
            yield Outcome(Kind.VERIFIED, item.key, key=item.key, version_id=item.version_id)
        else:
            yield item

