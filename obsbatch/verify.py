"""`obsbatch verify`: read the store back and say, object by object, whether it holds what was backed up.

Without a manifest the listing is the inventory: every object under the prefix must carry the `sha256`
metadata obsbatch writes, with the listed size and ETag. That proves the objects are obsbatch's and
unchanged since they were listed; it cannot catch an object replaced whole with self-consistent metadata.
With --manifest, the manifest is the truth (its chain is checked first): every object it says was uploaded
must be present, in the recorded version, with the recorded size, ETag, sha256 and retain-until; an object
replaced by other bytes is caught, since nobody can make its new bytes match the old SHA-256.

--read-data PERCENT reads that share of the objects back in full and recomputes their SHA-256 (restic's
`check --read-data-subset`, rclone's `check --download`). The share is a deterministic sample: an object is
read when the SHA-256 of its key falls under the percentage, so successive runs with the same share read the
same objects, and the objects a 10 % run reads are among those a 20 % run reads.

HEADs and GETs are latency-bound, so they go from a thread pool in this process (at most --max-concurrent
at once; 32 with `auto`), not through the upload workers; nothing here talks to systemd or OpenTelemetry.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Tuple

import structlog

from obsbatch import download, remote
from obsbatch.archive import ArchiveControls
from obsbatch.config import StoreConfig, VerifyConfig
from obsbatch.errors import ConfigError, ExitCode, ObsbatchError

log = structlog.get_logger()

#: Requests in flight with --max-concurrent auto: HEADs are small, so more than a backup's start.
AUTO_THREADS = 32


@dataclass(frozen=True)
class Expected:
    """What one object must be: from the manifest (all fields) or from the listing (size and ETag)."""

    key: str
    size: int
    etag: str = ""
    sha256: str = ""
    version_id: str = ""
    retain_until: str = ""


@dataclass
class VerifySummary:
    checked: int = 0
    ok: int = 0
    missing: int = 0
    different: int = 0
    read: int = 0
    bytes_read: int = 0
    errors: int = 0
    started: float = field(default_factory=time.time)

    @property
    def exit_code(self) -> ExitCode:
        if self.errors:
            return ExitCode.FATAL
        # Nothing checked is exit 1: a mistyped --prefix must not pass for a verified backup (issue #18).
        return ExitCode.PARTIAL if self.missing or self.different or not self.checked else ExitCode.OK

    def as_dict(self) -> dict:
        return {"checked": self.checked, "ok": self.ok, "missing": self.missing, "different": self.different,
                "read_back": self.read, "bytes_read": self.bytes_read, "access_errors": self.errors,
                "seconds": round(time.time() - self.started, 3), "exit_code": int(self.exit_code)}


    def human(self) -> str:
        """A few lines for a person at a terminal, as a backup ends (report.Summary.human)."""
        from obsbatch.report import human_size

        lines = [f"obsbatch verify: {self.ok} of {self.checked} objects as stored, {self.read} read back in full "
                 f"({human_size(self.bytes_read)}) in {time.time() - self.started:.1f} s"]
        if self.missing:
            lines.append(f"  MISSING:   {self.missing} (verify.missing above)")
        if self.different:
            lines.append(f"  DIFFERENT: {self.different} (verify.different above)")
        if not self.checked:
            lines.append("  empty:     nothing to check under this prefix (check --prefix)")
        lines.append(f"  exit {int(self.exit_code)}")
        return "\n".join(lines)


def sampled(key: str, percent: float) -> bool:
    """Whether `key` is in the deterministic `percent` share of objects (module docstring)."""
    if percent <= 0:
        return False
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") < percent / 100 * 2 ** 64


class Checker:
    """One object against what it must be: its HEAD, and a full read of its bytes."""

    def __init__(self, client, store: StoreConfig):
        self.client = client
        self.bucket = store.bucket
        self.controls = ArchiveControls(customer_key=store.customer_key)

    def problems(self, expected: Expected) -> Tuple[List[str], str]:
        """(what is wrong with the object, [] if nothing; its sha256 metadata). Raises ClientError for
        access errors."""
        import botocore.exceptions

        from obsbatch import s3

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=expected.key,
                                           **self.controls.read_params(expected.version_id))
        except botocore.exceptions.ClientError as exc:
            if s3.http_status(exc) == 404:
                return ["missing"], ""
            raise
        found = []
        if head.get("ContentLength") != expected.size:
            found.append(f"size {head.get('ContentLength')}, expected {expected.size}")
        etag = head.get("ETag", "").strip('"')
        if expected.etag and etag != expected.etag:
            found.append(f"ETag {etag}, expected {expected.etag}")
        stored_sha = head.get("Metadata", {}).get("sha256", "")
        if not stored_sha:
            found.append("no sha256 metadata (not stored by obsbatch?)")
        elif expected.sha256 and stored_sha != expected.sha256:
            found.append(f"sha256 metadata {stored_sha}, the manifest says {expected.sha256}")
        if expected.version_id and expected.version_id != "null" and head.get("VersionId") != expected.version_id:
            found.append(f"version {head.get('VersionId')}, expected {expected.version_id}")
        if expected.retain_until:
            until = head.get("ObjectLockRetainUntilDate")
            # botocore gives the date in the local zone (tzlocal); the manifest's is UTC.
            until = until.astimezone(datetime.timezone.utc) if until is not None else None
            if until is None or until.strftime("%Y-%m-%dT%H:%M:%SZ") < expected.retain_until:
                found.append(f"retained until {until:%Y-%m-%dT%H:%M:%SZ}" if until else "no retention")
                found[-1] += f", the manifest says until {expected.retain_until}"
        return found, stored_sha

    def read_back(self, expected: Expected) -> tuple:
        """(SHA-256 of the object's bytes as read now, bytes read)."""
        response = self.client.get_object(Bucket=self.bucket, Key=expected.key,
                                          **self.controls.read_params(expected.version_id))
        return download.read_body(response["Body"])


def _from_listing(client, store: StoreConfig) -> Iterator[Expected]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix):
        for obj in page.get("Contents", ()):
            yield Expected(obj["Key"], obj.get("Size", 0), obj.get("ETag", "").strip('"'))


def _from_manifest(path: str, prefix: str) -> Iterator[Expected]:
    from obsbatch import manifest

    for record in manifest.stored_records(path, prefix):
        yield Expected(record["key"], record.get("size") or 0, record.get("etag") or "", record.get("sha256") or "",
                       record.get("version_id") or "", record.get("retain_until") or "")


def run(config: VerifyConfig) -> VerifySummary:
    import botocore.exceptions

    from obsbatch import manifest, s3
    from obsbatch.settings import Endpoint

    threads = config.transfer.max_concurrent or AUTO_THREADS
    client = s3.make_client(Endpoint.from_config(config), pool_connections=threads)
    if config.verify_manifest:
        try:
            manifest.verify(config.verify_manifest)
        except manifest.Broken as exc:
            raise ObsbatchError(f"the manifest {config.verify_manifest} does not verify, so it proves nothing: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the manifest {config.verify_manifest}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        expected = _from_manifest(config.verify_manifest, config.store.prefix)
    else:
        expected = _from_listing(client, config.store)
    tally = Tally(Checker(client, config.store), config.read_data)
    log.info("verify.start", bucket=config.store.bucket, prefix=config.store.prefix, manifest=config.verify_manifest,
             read_data=config.read_data)
    try:
        _bounded_map(tally.check, expected, threads)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        tally.summary.errors += 1
        raise remote.store_error(exc, config.store.bucket, config.store.server,
                                 f"read s3://{config.store.bucket}/{config.store.prefix}") from None
    if tally.summary.checked == 0:
        log.warning("verify.empty", bucket=config.store.bucket, prefix=config.store.prefix, manifest=config.verify_manifest,
                    detail="nothing to check: no object under this prefix (or no upload in the manifest); exit 1")
    return tally.summary


class Tally:
    """Checks objects from the thread pool and counts them into one VerifySummary (under one lock)."""

    def __init__(self, checker: Checker, read_data: float):
        self.checker = checker
        self.read_data = read_data
        self.summary = VerifySummary()
        self._lock = threading.Lock()

    def check(self, item: Expected) -> None:
        found, stored_sha = self.checker.problems(item)
        read, was_read = 0, False
        if not found and sampled(item.key, self.read_data):
            digest, read = self.checker.read_back(item)
            was_read = True
            reference = item.sha256 or stored_sha
            if digest != reference:
                found.append(f"its bytes have SHA-256 {digest}, expected {reference}")
        with self._lock:
            summary = self.summary
            summary.checked += 1
            summary.read += was_read
            summary.bytes_read += read
            if not found:
                summary.ok += 1
            elif found == ["missing"]:
                summary.missing += 1
                log.error("verify.missing", key=item.key)
            else:
                summary.different += 1
                log.error("verify.different", key=item.key, problems=found)


def _bounded_map(function, items, threads: int) -> None:
    """function(item) for each item on `threads` threads, at most 2 x threads submitted at once (memory stays
    flat over millions of objects); the first exception stops the feeding and is raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="obsbatch-verify") as ex:
        pending = set()
        for item in items:
            pending.add(ex.submit(function, item))
            if len(pending) >= 2 * threads:
                done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    future.result()
        for future in concurrent.futures.as_completed(pending):
            future.result()
