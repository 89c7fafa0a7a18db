"""In a worker process: one judged file stored as an object, verified (Uploader, over the worker's client).

The file is opened without following a name replaced since the walk, checked against the judged stat before,
while and after it is read (FileChanged: deferred, never uploaded torn), and stored by one PutObject (the lean
one where the worker has it), by a multipart upload whose parts go up on the worker's threads, or, where an
object already holds its bytes, by a server-side copy. What the server reports storing is checked
(NotVerified), and read back where --verify-after-upload or an Object Lock asks. WorkerContext.upload_one
turns what this raises into the file's Outcome.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import math
import os
import re
import threading
import time
from typing import TYPE_CHECKING, NamedTuple, Optional

import botocore.exceptions
import structlog

from obsbatch.config import MAX_PARTS, MiB
from obsbatch.models import Kind, Reason, WorkItem
from obsbatch.s3 import client as s3
from obsbatch.s3 import lock

if TYPE_CHECKING:
    from obsbatch.engine.worker import WorkerContext

log = structlog.get_logger()

#: The read size when a file is hashed before its multipart upload or compared with a stored object.
READ_BLOCK = 1 * MiB
#: Bytes of multipart parts a worker holds in memory at once: parts in flight are at most this over the part
#: size (at least one), whatever the level of uploads in flight (README "Memory").
PART_BYTES_IN_FLIGHT = 128 * MiB
#: S3's largest CopyObject (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html): a file above it
#: is copied in parts (UploadPartCopy).
COPY_OBJECT_BYTES = 5 * 1024 * MiB
#: A copy the store will not make, besides any 4xx answer (copy_refused): CopyObject not implemented.
_COPY_NOT_IMPLEMENTED = frozenset({"NotImplemented", "501"})


class FileChanged(Exception):
    """The file no longer matches the stat the parent judged."""


class NotVerified(Exception):
    """What the server reports storing is not what was sent."""


class Cancelled(Exception):
    """A part not begun because another part of the same upload failed."""


def _md5_b64(data) -> tuple[str, str]:
    digest = hashlib.md5(data)
    return base64.b64encode(digest.digest()).decode("ascii"), digest.hexdigest()


_STAT_FIELDS = (("size", "st_size", "size"), ("mtime", "st_mtime_ns", "mtime_ns"),
                ("ctime", "st_ctime_ns", "ctime_ns"), ("inode", "st_ino", "ino"), ("device", "st_dev", "dev"))


def _check_same(item: WorkItem, st: os.stat_result, what: str) -> None:
    for label, st_attr, item_attr in _STAT_FIELDS:
        then, now = getattr(item, item_attr), getattr(st, st_attr)
        if now != then:
            raise FileChanged(f"{label} changed {what} ({then} -> {now}); deferred to the next run")


_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def _check_etag(item: WorkItem, etag: str, expected: str) -> None:
    """The stored object's ETag must be the one S3 computes for the bytes we sent.

    Single part: the body's MD5. Multipart: the MD5 of the parts' binary MD5s, then '-' and the part count.
    An ETag that is not of that form at all (SSE-KMS, SSE-C, some gateways) proves nothing either way; the
    server has already checked Content-MD5 on every request, so it is accepted.
    """
    if _MD5_ETAG.match(etag) and etag != expected:
        raise NotVerified(f"the server reports ETag {etag} for {item.key}, but the bytes sent have {expected}")


def part_size(size: int, chunksize: int) -> int:
    """The configured part size, raised (in whole MiB) until the file fits in S3's 10,000 parts."""
    if size <= chunksize * MAX_PARTS:
        return chunksize
    return math.ceil(size / MAX_PARTS / MiB) * MiB


class FileDigests(NamedTuple):
    """A file's SHA-256 (hex), and the MD5s a server-side copy of it is checked against: the whole file's
    (hex, or ""), or each part's (binary, or ())."""

    sha256: str
    md5: str
    parts: tuple


class PartDigests:
    """The binary MD5 of each `chunk`-sized part of a stream fed in blocks of any size."""

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.digests: list = []
        self._current = hashlib.md5()
        self._left = chunk

    def update(self, block: bytes) -> None:
        view = memoryview(block)
        while view:
            taken = view[:self._left]
            self._current.update(taken)
            self._left -= len(taken)
            view = view[len(taken):]
            if self._left == 0:
                self.digests.append(self._current.digest())
                self._current, self._left = hashlib.md5(), self.chunk

    def done(self) -> tuple:
        if self._left != self.chunk:
            self.digests.append(self._current.digest())
        return tuple(self.digests)


def copy_refused(item: WorkItem, exc: botocore.exceptions.ClientError) -> bool:
    """Whether the store refused a server-side copy for a reason an upload does not share, so the file is
    uploaded instead (logged): any 4xx answer (the source version pruned or deleted, replaced since it was
    journaled: 412 on If-Match, unreadable to this key, another SSE-C key, an archive class, a store's own
    demand such as moto's for Content-MD5 on a copy into a locked bucket) or a CopyObject not implemented.
    A 5xx that outlasted the retries is the store's trouble, and the file's failure, as for an upload."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if not (400 <= status < 500 or s3.error_code(exc) in _COPY_NOT_IMPLEMENTED):
        return False
    log.info("upload.copy_refused", path=item.display, source=item.copy_source.key, error_type=s3.error_code(exc),
             error=s3.error_message(exc))
    return True


class Uploader:
    """The upload task of one worker process: its settings, client and request counts are the worker's
    (WorkerContext), and so are its threads, which carry a multipart upload's parts."""

    def __init__(self, worker: "WorkerContext"):
        self.worker = worker
        self.settings = worker.settings
        self.client = worker.client
        self.counts = worker.counts
        self.in_flight = worker.in_flight
        #: Files above this are copied in parts (UploadPartCopy): S3's CopyObject limit; a test lowers it.
        self.copy_object_bytes = COPY_OBJECT_BYTES

    def upload(self, item: WorkItem) -> dict:
        """Store one file (FileChanged, NotVerified, lock.NotLocked, botocore and OS errors raised): its Outcome
        fields."""
        with self._open(item) as f:
            st = self._check_unchanged(item, f, "before reading")
            if item.remote_etag:
                found = self._already_stored(item, f)
                if found is not None:
                    return found
            if item.size >= self.settings.multipart_threshold:
                return self._put_multipart(item, f, st)
            return self._put_single(item, f, st)

    # --- the judged file, read safely ----------------------------------------------------------------------

    def _open(self, item: WorkItem):
        """Open the judged file for reading, safely even if its name now points at something else.

        O_NONBLOCK: if the name was replaced by a FIFO since the walk, open() returns instead of waiting for
        a writer forever (the inode check then reports the change); it does nothing to reads of regular
        files. O_NOFOLLOW (unless --follow-symlinks): a name replaced by a symlink is not followed.
        O_NOATIME: a backup should not touch access times (tar --atime-preserve, borg); the kernel allows it
        only to the file's owner or CAP_FOWNER (EPERM otherwise), so it is dropped when refused.
        """
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if self.settings.follow_symlinks else os.O_NOFOLLOW)
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

    def _check_unchanged(self, item: WorkItem, f, what: str) -> os.stat_result:
        """The open file and the name both still match the judged stat (borg's stat-before-and-after);
        returns the open file's stat, whose mode and owner go into the object's metadata.

        fstat catches writes to the file we hold; stat of the path catches the name now pointing at another
        file (replaced by rename), whose new content we would otherwise label with the old name's stat. A
        chmod or chown changes ctime, so the mode and owner read here are the ones the gate judged.
        """
        st = os.fstat(f.fileno())
        _check_same(item, st, what)
        _check_same(item, os.stat(item.path, follow_symlinks=self.settings.follow_symlinks), what)
        return st

    def _already_stored(self, item: WorkItem, f) -> Optional[dict]:
        """--verify-remote: is the same-size object under the key this file's content? Then nothing to upload.

        A single-part object's ETag is its MD5. A multipart ETag cannot be recomputed without the original
        part size, and under SSE-KMS or SSE-C an ETag is no MD5, so the object's sha256 metadata (one HEAD)
        is compared instead; without it, the file is uploaded.
        """
        md5, sha = hashlib.md5(), hashlib.sha256()
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            md5.update(block)
            sha.update(block)
        self._check_unchanged(item, f, "while comparing")
        f.seek(0)
        if "-" in item.remote_etag or not self.settings.archive.etag_is_md5:
            head = self._head(item.key, item.remote_version)
            same = head.get("Metadata", {}).get("sha256") == sha.hexdigest() and head.get("ContentLength") == item.size
        else:
            same = item.remote_etag == md5.hexdigest()
        if not same:
            return None
        return dict(kind=Kind.SKIPPED, reason=Reason.ALREADY_STORED, etag=item.remote_etag, sha256=sha.hexdigest(),
                    version_id=item.remote_version,
                    message="the object under this key already holds this content")

    # --- requests ------------------------------------------------------------------------------------------

    def call(self, operation, **params):
        """One botocore call, made again when the server says the body arrived corrupted (botocore does not
        retry that), within the same budget as any fault: at most --retries + 1 requests in all."""
        counts = self.counts
        first = counts.sent
        attempt = 0
        while True:
            try:
                return operation(**params)
            except botocore.exceptions.ClientError as exc:
                attempt += 1
                code = s3.error_code(exc)
                if code not in s3.BODY_CORRUPTED_CODES or counts.sent - first >= self.settings.endpoint.max_attempts:
                    raise
                log.warning("upload.retry", key=params.get("Key"), error_type=code, attempt=attempt)
                counts.recalls += 1
                time.sleep(s3.backoff(attempt, throttled=False))

    def _head(self, key: str, version_id: str = "") -> dict:
        """HeadObject of `key` (of one version, if given), with the SSE-C key where objects need it."""
        return self.client.head_object(Bucket=self.settings.bucket, Key=key,
                                       **self.settings.archive.read_params(version_id))

    def _stored(self, item: WorkItem, etag: str, sha256: str, version_id: str, retain_until,
                multipart: bool = False) -> dict:
        """The Outcome fields of an upload the server accepted, once the read-back (if any) agrees: one HEAD
        of the stored version for --verify-after-upload and for an Object Lock, whichever asks."""
        controls = self.settings.archive
        if self.settings.verify_after_upload or controls.locking:
            head = self._head(item.key, version_id)
            if self.settings.verify_after_upload:
                stored = (head.get("ContentLength"), head.get("ETag", "").strip('"'),
                          head.get("Metadata", {}).get("sha256"))
                if stored != (item.size, etag, sha256):
                    raise NotVerified(f"read back {item.key}: length, ETag, sha256 = {stored}, expected "
                                      f"{(item.size, etag, sha256)}")
            if controls.locking:
                lock.hold(controls, self.client, self.settings.bucket, item.key, version_id, retain_until, head)
        return dict(kind=Kind.UPLOADED, etag=etag, sha256=sha256, version_id=version_id, multipart=multipart,
                    retain_until=f"{retain_until:%Y-%m-%dT%H:%M:%SZ}" if retain_until else "")


    def _put_single(self, item: WorkItem, f, st: os.stat_result) -> dict:
        data = f.read(item.size + 1)  # one byte more than judged: a file that grew is caught here
        if len(data) != item.size:
            raise FileChanged(f"read {len(data)} bytes, expected {item.size}; deferred to the next run")
        self._check_unchanged(item, f, "while reading")
        md5_b64, md5_hex = _md5_b64(data)
        sha256 = hashlib.sha256(data).hexdigest()
        copied = self._copied(item, st, sha256, md5_hex)
        if copied is not None:
            return copied
        archive = self.settings.archive
        metadata = archive.object_metadata(sha256, item.mtime_ns, st)
        retain_until = archive.retain_until(time.time())
        # Content-MD5 makes the server verify the body and reject it (BadDigest) rather than store a torn copy.
        if self.worker.direct is not None:
            self.counts.calls += 1  # one PutObject; DirectPut counts its requests through _before_send
            resp = self.worker.direct.put(item.key, data, md5_b64, sha256, archive.headers(metadata, retain_until))
        else:
            resp = self.call(self.client.put_object, Bucket=self.settings.bucket, Key=item.key, Body=data,
                             ContentMD5=md5_b64, **archive.params(metadata, retain_until))
        etag = resp.get("ETag", "").strip('"')
        if archive.etag_is_md5:
            _check_etag(item, etag, md5_hex)
        return self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until)

    # --- multipart -----------------------------------------------------------------------------------------

    def _hash_file(self, item: WorkItem, f, chunk: int) -> "FileDigests":
        """The SHA-256 of the whole file, needed up front: metadata is fixed at CreateMultipartUpload; and,
        where a copy may store the file instead (item.copy_source), the MD5s its ETag is checked against: the
        whole file's for a CopyObject, each `chunk`-sized part's for a multipart copy."""
        sha = hashlib.sha256()
        copying = item.copy_source is not None
        whole = hashlib.md5() if copying and item.size <= self.copy_object_bytes else None
        parts = PartDigests(chunk) if copying and item.size > self.copy_object_bytes else None
        total = 0
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            sha.update(block)
            if whole is not None:
                whole.update(block)
            if parts is not None:
                parts.update(block)
            total += len(block)
        if total != item.size:
            raise FileChanged(f"read {total} bytes, expected {item.size}; deferred to the next run")
        return FileDigests(sha.hexdigest(), whole.hexdigest() if whole is not None else "",
                           parts.done() if parts is not None else ())

    def _copied(self, item: WorkItem, st: os.stat_result, sha256: str, md5_hex: str,
                part_md5s: tuple = (), chunk: int = 0) -> Optional[dict]:
        """Store the file by a server-side copy if an object already holds its bytes (item.copy_source: a
        rename, a moved directory, a copy, or only its mode, owner or mtime changed): the file's own metadata
        replaces the source's, and none of its bytes cross the network. None: upload it as usual.

        The bytes are proven the file's before and after: its sha256, read here, is the one the source's
        verified upload recorded; the server copies that version only while it still has the journaled ETag
        (x-amz-copy-source-if-match), and the copy's ETag must be the source's or the file's MD5 (a store that
        ignores the precondition, such as moto's, is caught there and the file uploaded over the copy).
        Above S3's CopyObject limit (5 GiB) the copy is multipart (UploadPartCopy: _copied_in_parts).
        """
        source = item.copy_source
        if source is None or source.sha256 != sha256:
            return None
        if item.size > self.copy_object_bytes:
            return self._copied_in_parts(item, st, sha256, part_md5s, chunk) if part_md5s else None
        archive = self.settings.archive
        retain_until = archive.retain_until(time.time())
        params = archive.copy_params(self.settings.bucket, source.key, source.version_id, source.etag,
                                     archive.object_metadata(sha256, item.mtime_ns, st), retain_until)
        # A small file's task holds its place in flight already (upload_batch); a multipart-sized one does not.
        place = self.in_flight if item.size >= self.settings.multipart_threshold else contextlib.nullcontext()
        try:
            with place:
                resp = self.client.copy_object(Bucket=self.settings.bucket, Key=item.key, **params)
        except botocore.exceptions.ClientError as exc:
            if not copy_refused(item, exc):
                raise
            return None
        etag = resp.get("CopyObjectResult", {}).get("ETag", "").strip('"')
        if archive.etag_is_md5 and etag not in (source.etag, md5_hex):
            log.warning("upload.copy_mismatch", path=item.display, source=source.key, etag=etag,
                        detail="the copy is not the file's bytes; uploading them over it")
            return None
        fields = self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until, multipart="-" in etag)
        fields["copied_from"] = source.key
        return fields

    def _copied_in_parts(self, item: WorkItem, st: os.stat_result, sha256: str, part_md5s: tuple,
                         chunk: int) -> Optional[dict]:
        """The copy of a file above 5 GiB: CreateMultipartUpload with the file's metadata, then one
        UploadPartCopy per part (a byte range of the source version, If-Match its ETag) on the worker's
        threads, then Complete. A part ETag that is an MD5 (AWS, moto) must be the file's part's: a store that
        ignores the precondition is caught there, the copy aborted and the file uploaded; SeaweedFS answers
        other part ETags, and honours the precondition. Nothing is visible under the key before Complete."""
        source = item.copy_source
        bucket, archive = self.settings.bucket, self.settings.archive
        retain_until = archive.retain_until(time.time())
        upload_id = self.client.create_multipart_upload(
            Bucket=bucket, Key=item.key,
            **archive.params(archive.object_metadata(sha256, item.mtime_ns, st), retain_until))["UploadId"]
        source_params = archive.copy_source_params(bucket, source.key, source.version_id, source.etag)

        def copy_part(number: int) -> dict:
            first = (number - 1) * chunk
            last = min(first + chunk, item.size) - 1
            resp = self.client.upload_part_copy(Bucket=bucket, Key=item.key, UploadId=upload_id, PartNumber=number,
                                                CopySourceRange=f"bytes={first}-{last}", **source_params,
                                                **archive.customer_key_params())
            return {"ETag": resp["CopyPartResult"]["ETag"], "PartNumber": number}

        numbers = list(range(1, len(part_md5s) + 1))
        try:
            parts = self._each_part(copy_part, numbers)
            tags = [part["ETag"].strip('"') for part in parts]
            if archive.etag_is_md5 and any(re.fullmatch(r"[0-9a-f]{32}", tag) and tag != digest.hex()
                                           for tag, digest in zip(tags, part_md5s)):
                log.warning("upload.copy_mismatch", path=item.display, source=source.key,
                            detail="a copied part is not the file's bytes; uploading them instead")
                self._abort(item, upload_id)
                return None
            resp = self.client.complete_multipart_upload(Bucket=bucket, Key=item.key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts},
                                                         **archive.customer_key_params())
        except botocore.exceptions.ClientError as exc:
            self._abort(item, upload_id)
            if not copy_refused(item, exc):
                raise
            return None
        except BaseException:
            self._abort(item, upload_id)
            raise
        etag = resp.get("ETag", "").strip('"')
        if archive.etag_is_md5 and all(tag == digest.hex() for tag, digest in zip(tags, part_md5s)):
            _check_etag(item, etag, f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}")
        fields = self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until, multipart=True)
        fields["copied_from"] = source.key
        return fields

    def _put_multipart(self, item: WorkItem, f, st: os.stat_result) -> dict:
        bucket = self.settings.bucket
        archive = self.settings.archive
        chunk = part_size(item.size, self.settings.multipart_chunksize)
        digests = self._hash_file(item, f, chunk)
        sha256 = digests.sha256
        self._check_unchanged(item, f, "while hashing")
        copied = self._copied(item, st, sha256, digests.md5, digests.parts, chunk)
        if copied is not None:
            return copied
        numbers = range(1, max(1, math.ceil(item.size / chunk)) + 1)
        # The retention counts from the start of the upload: the date goes with CreateMultipartUpload.
        retain_until = archive.retain_until(time.time())
        upload_id = self.client.create_multipart_upload(
            Bucket=bucket, Key=item.key,
            **archive.params(archive.object_metadata(sha256, item.mtime_ns, st), retain_until))["UploadId"]
        # Parts go up `threads` at a time, as s5cmd and aws-cli send them: a lone big file would otherwise
        # use one connection of the worker's many (issue #5). Each part is read with pread at its own
        # offset. A failed part stops the parts not yet begun; the map returns once the others have ended,
        # so no part lands after the abort below. SIGTERM interrupts the wait itself, and the abort goes
        # out at once.
        failed = threading.Event()
        # Memory stays bounded whatever the level: at most PART_BYTES_IN_FLIGHT of parts read at once.
        memory = threading.BoundedSemaphore(max(1, PART_BYTES_IN_FLIGHT // chunk))
        send = functools.partial(self._upload_part, item, f.fileno(), chunk, upload_id, failed, memory)
        try:
            results = self._each_part(send, list(numbers))
            # The last chance to refuse: nothing is visible under the key until Complete succeeds.
            self._check_unchanged(item, f, "while uploading")
            resp = self.client.complete_multipart_upload(Bucket=bucket, Key=item.key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": [part for part, _ in results]},
                                                         **archive.customer_key_params())
        except BaseException:
            self._abort(item, upload_id)
            raise
        etag = resp.get("ETag", "").strip('"')
        # After Complete the object exists; a mismatch is reported FAILED (never journaled) and the next run
        # uploads the file again over it.
        digests = b"".join(digest for _, digest in results)
        if archive.etag_is_md5:
            _check_etag(item, etag, f"{hashlib.md5(digests).hexdigest()}-{len(results)}")
        self._abort_leftovers(item, upload_id)
        return self._stored(item, etag, sha256, resp.get("VersionId", ""), retain_until, multipart=True)

    def _each_part(self, function, numbers: list) -> list:
        """function(number) for each part: on the worker's threads, or one after another where it has none;
        either way each inside `in_flight`."""
        if self.worker.threads is not None:
            return self.worker.run_on_threads(function, numbers)
        results = []
        for number in numbers:
            with self.in_flight:
                results.append(function(number))
        return results

    def _upload_part(self, item: WorkItem, fd: int, chunk: int, upload_id: str, failed: threading.Event,
                     memory: threading.BoundedSemaphore, number: int):
        """Read and send part `number`; returns ({"ETag", "PartNumber"}, binary MD5). Once a part has failed
        (`failed`), the parts not yet begun stand down (Cancelled)."""
        if failed.is_set():
            raise Cancelled()
        try:
            with memory:
                offset = (number - 1) * chunk
                length = min(chunk, item.size - offset)
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    raise FileChanged(f"read {offset + len(data)} bytes, expected {item.size}; deferred to the next run")
                md5_b64, md5_hex = _md5_b64(data)
                resp = self.call(self.client.upload_part, Bucket=self.settings.bucket, Key=item.key,
                                 UploadId=upload_id, PartNumber=number, Body=data, ContentMD5=md5_b64,
                                 **self.settings.archive.customer_key_params())
            return {"ETag": resp["ETag"], "PartNumber": number}, bytes.fromhex(md5_hex)
        except BaseException:
            failed.set()
            raise

    def _abort_leftovers(self, item: WorkItem, completed: str) -> None:
        """Abort the other unfinished multipart uploads of this very key, once this one has completed: left by
        an earlier run whose abort could not reach a restarting server, or whose CreateMultipartUpload answer
        never came (so it never knew the id), their parts are billed until a lifecycle rule removes them. One
        ListMultipartUploads per completed multipart file. One run uploads a key at a time (the journal's lock),
        so another upload of it is a leftover, or a second writer of the same prefix, whose Complete then fails
        and whose next run uploads again. Best effort: a failure here is logged, never the file's."""
        bucket = self.settings.bucket
        try:
            listed = self.client.list_multipart_uploads(Bucket=bucket, Prefix=item.key).get("Uploads", [])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.debug("upload.leftovers_unlisted", key=item.key, error_type=s3.error_code(exc),
                      error=s3.error_message(exc))
            return
        for upload in listed:
            if upload.get("Key") == item.key and upload.get("UploadId") not in (None, completed):
                log.info("upload.leftover_aborted", key=item.key, upload_id=upload["UploadId"],
                         initiated=str(upload.get("Initiated", "")))
                self._abort(item, upload["UploadId"])

    def _abort(self, item: WorkItem, upload_id: str) -> None:
        """AbortMultipartUpload, so no incomplete upload (and its billed parts) is left behind."""
        try:
            self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=item.key, UploadId=upload_id)
        except Exception as exc:
            # Still reported: the file's Outcome is FAILED/DEFERRED anyway; a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) is the backstop the README recommends.
            log.warning("upload.abort_failed", key=item.key, upload_id=upload_id, error_type=s3.error_code(exc),
                        error=s3.error_message(exc))
