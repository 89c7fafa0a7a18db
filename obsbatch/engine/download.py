"""`obsbatch restore`, in an upload worker process: bring one object back, exactly, or not at all.

Each object is checked while it streams: its SHA-256 against the manifest's record (`--manifest`) or, without
one, against the `sha256` metadata obsbatch stored it with. It is written to a temporary name beside its
destination (`.NAME.obsbatch-restore-RANDOM`, created O_EXCL|O_NOFOLLOW, mode 0600) and renamed over the
destination only when complete, checked and given its attributes: an interrupted restore leaves no half file
under a real name (rename(2) is atomic within a filesystem). The POSIX attributes obsbatch stored
(`x-amz-meta-mtime/mode`, issue #13) are put back, and uid/gid when running as root.

An object of at least the multipart threshold (64 MiB) is read in ranges (16 MiB, the part size), several
at once on the worker's threads (`Ranges`), each written at its offset: one stream per object left a 96 MiB
restore at RTT 20 ms at ~80 MB/s where the download tools, reading ranges in parallel, reach several times
that (issue #21). Every range after the first names the version (or, without versions, the ETag: If-Match)
the first one returned, so the ranges are of one object; the SHA-256 is then read from the written file
before the rename, so the check is the same as for a streamed object.

A local file that is already there is compared first: the same bytes (by SHA-256) are left as they are, so a
second restore over the same tree changes nothing; other bytes are a conflict, left untouched, unless
--overwrite.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import structlog

from obsbatch import archive, beneath
from obsbatch.models import Kind, Reason, RestoreItem

log = structlog.get_logger()

READ_BLOCK = 1024 * 1024
TEMP_MARK = b".obsbatch-restore-"


class Mismatch(Exception):
    """The bytes read are not the ones the manifest or the object's metadata say were stored."""


def _file_sha256(dir_fd: int, name: bytes) -> str:
    fd = beneath.open_file(dir_fd, name)
    try:
        return _file_digest(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def read_body(body, write=None, received=None, digest: bool = True) -> tuple:
    """Read a GetObject body to its end in READ_BLOCK pieces, each to `write` if given; (SHA-256 hex, bytes).
    received(n): told of each piece's size as it arrives (the worker's --bwlimit pacing), if given.
    digest: False leaves the SHA-256 out ("" for it): a range's bytes, which the file's digest covers.
    The body is closed, so its connection goes back to the pool (or is dropped, if cut short)."""
    sha, size = hashlib.sha256() if digest else None, 0
    try:
        for block in iter(lambda: body.read(READ_BLOCK), b""):
            if received is not None:
                received(len(block))
            if sha is not None:
                sha.update(block)
            size += len(block)
            if write is not None:
                write(block)
    finally:
        body.close()
    return (sha.hexdigest() if sha is not None else ""), size


def _write_sparse(fd: int, offset: int, block: bytes) -> None:
    """Write a block at `offset`, or, when it is all zeros, leave a hole (write nothing): a sparse file comes
    back sparse (issue #20: a 100 MiB sparse file came back fully allocated), as `cp --sparse=auto` and
    restic restore them. The file is truncated to its size (before or after), which makes any hole part of it."""
    if block.count(0) == len(block):
        return
    view = memoryview(block)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _file_digest(fd: int, size: int) -> str:
    """The SHA-256 of the first `size` bytes of an open file, read with pread (its offset left alone)."""
    sha, offset = hashlib.sha256(), 0
    while offset < size:
        block = os.pread(fd, min(READ_BLOCK, size - offset), offset)
        if not block:
            break
        sha.update(block)
        offset += len(block)
    return sha.hexdigest()


@dataclass(frozen=True)
class Ranges:
    """How a worker reads a large object: in `size`-byte ranges when it has at least `threshold` bytes, the
    ranges run by `run_all(function, args)` -> [function(arg) for each arg] (the worker's threads, each
    range inside its share of requests in flight, their requests counted for this object; it raises the
    first failure once every range has ended)."""

    threshold: int
    size: int
    run_all: Callable[[Callable, list], list]

    def wanted(self, object_size: int) -> bool:
        """Whether an object this big is read in ranges (two at least: one range is one stream)."""
        return object_size >= max(self.threshold, 2 * self.size)


def mtime_ns(text: str) -> Optional[int]:
    """x-amz-meta-mtime ('1600000000.123456789', rclone's form) as nanoseconds; None if absent or unreadable."""
    match = re.fullmatch(r"(-?[0-9]{1,12})(?:\.([0-9]{1,9}))?", text or "")
    if match is None:
        return None
    seconds, fraction = int(match.group(1)), int((match.group(2) or "").ljust(9, "0"))
    # A negative time with a fraction: -1.5 is 1.5 s before the epoch (rclone writes it so).
    return seconds * 1_000_000_000 + (-fraction if match.group(1).startswith("-") else fraction)


#: Random bytes in a temporary's name (hex: twice as many characters).
_TEMP_RANDOM = 6


def temp_stem(name: bytes) -> bytes:
    """The name of the temporaries of `name` (in its directory) less their random tail: `.NAME.obsbatch-restore-`."""
    return b"." + name[:200] + TEMP_MARK


def remove_temporaries(item: RestoreItem) -> None:
    """Remove what a worker torn down mid-object may have left of the item (its temporaries, never the item's
    own name), in its directory entered beneath the target (beneath.directory)."""
    prefix = os.fsdecode(temp_stem(item.name))  # os.listdir of an fd gives str names
    try:
        with beneath.directory(item.target, item.parent) as dir_fd:
            for name in os.listdir(dir_fd):
                if name.startswith(prefix) and len(name) == len(prefix) + 2 * _TEMP_RANDOM:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return


def in_the_way(exc: beneath.InTheWay) -> Dict:
    """The Outcome fields of an object whose directory is not one here (a symlink, a file): never followed."""
    return dict(kind=Kind.SKIPPED, reason=Reason.CONFLICT,
                message=f"{exc.strerror}; left untouched (--overwrite replaces it with the directory)")


def planned(client, bucket: str, controls: archive.ArchiveControls, item: RestoreItem) -> Dict:
    """--dry-run: the Outcome fields of what a restore would do with the item, judged as the worker judges it
    (local_verdict) through the same directories beneath the target, and nothing written."""
    try:
        with beneath.directory(item.target, item.parent) as dir_fd:
            verdict = local_verdict(client, bucket, controls, item, dir_fd)
            replacing = beneath.lstat(dir_fd, item.name) is not None
    except FileNotFoundError:  # its directory is not made yet: nothing is in the way
        verdict, replacing = None, False
    except beneath.InTheWay as exc:
        if not item.overwrite:
            return in_the_way(exc)
        verdict, replacing = None, True
    if verdict is not None:
        return verdict
    return dict(kind=Kind.PLANNED, message="would replace the local file (--overwrite)" if replacing
                else "would be written")


def local_verdict(client, bucket: str, controls: archive.ArchiveControls, item: RestoreItem,
                  dir_fd: int) -> Optional[Dict]:
    """What is already at the item's name in `dir_fd` (its directory) decides: the Outcome fields of an
    identical file (left as it is) or of a conflict (left untouched); None when the object is to be written
    (nothing there, or --overwrite of a file). Reads the local file (never through a symlink), and HEADs the
    object for its sha256 when no manifest gave one."""
    local = beneath.lstat(dir_fd, item.name)
    if local is None:
        return None
    if stat.S_ISREG(local.st_mode) and local.st_size == item.size:
        expected = item.sha256 or client.head_object(Bucket=bucket, Key=item.key, **controls.read_params(
            item.version_id)).get("Metadata", {}).get("sha256")
        if expected and _file_sha256(dir_fd, item.name) == expected:
            return dict(kind=Kind.SKIPPED, reason=Reason.IDENTICAL, sha256=expected,
                        message="the local file already holds these bytes")
    if not item.overwrite or not stat.S_ISREG(local.st_mode):
        what = "a local file with other content" if stat.S_ISREG(local.st_mode) else "something that is not a file"
        return dict(kind=Kind.SKIPPED, reason=Reason.CONFLICT,
                    message=f"{what} is in the way; left untouched (--overwrite replaces a file)")
    return None


def restore(client, bucket: str, controls: archive.ArchiveControls, item: RestoreItem, fetch=None,
            received=None, ranges: Optional[Ranges] = None) -> Dict:
    """Restore one object; returns the Outcome's fields (kind, reason, sha256, message...).

    fetch(item): the GetObject response for the item's current version, through a cheaper path than
    `client` (the worker's lean GET for small objects); None, or a None answer, means client.get_object.
    received(n): as read_body's. ranges: how to read a large object in parallel ranges (module docstring);
    None reads every object as one stream.

    Its directory is entered beneath the target (beneath.directory: never through a symlink; a missing one
    made, as `mkdir -p` would, with the umask's mode); one that is not a directory here is a conflict, or
    with --overwrite is replaced by the directory.
    """
    with contextlib.ExitStack() as stack:
        try:
            dir_fd = stack.enter_context(beneath.directory(item.target, item.parent, make=0o777,
                                                           replace=item.overwrite))
        except beneath.InTheWay as exc:
            return in_the_way(exc)
        return _restore_into(dir_fd, client, bucket, controls, item, fetch, received, ranges)


def _restore_into(dir_fd: int, client, bucket: str, controls: archive.ArchiveControls, item: RestoreItem, fetch,
                  received, ranges: Optional[Ranges]) -> Dict:
    """restore(), in the item's directory `dir_fd`: every name below is relative to it."""
    version = archive.version_param(item.version_id)
    read = controls.read_params(item.version_id)
    verdict = local_verdict(client, bucket, controls, item, dir_fd)
    if verdict is not None:
        return verdict
    ranged = ranges is not None and ranges.wanted(item.size)
    response = fetch(item) if fetch is not None and not version and not ranged else None
    if response is None and ranged:
        response = client.get_object(Bucket=bucket, Key=item.key, Range=f"bytes=0-{ranges.size - 1}", **read)
        fill = functools.partial(_fill_ranges, client, bucket, controls, item, response, ranges, received)
    else:
        if response is None:
            response = client.get_object(Bucket=bucket, Key=item.key, **read)
        fill = functools.partial(_fill_stream, item, response, received)
    metadata = response.get("Metadata", {})
    expected = item.sha256 or metadata.get("sha256", "")
    temp = temp_stem(item.name) + os.urandom(_TEMP_RANDOM).hex().encode()
    try:
        # Read and write: a ranged read hashes the file it wrote (_file_digest).
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except BaseException:
        response["Body"].close()  # its connection goes back to the pool (or is dropped), not left half-read
        raise
    try:
        digest, size = fill(fd, temp)
        if size != item.size:
            # The listing (or the manifest) said how big this object is: other bytes are another object, or
            # one replaced since it was listed. Either way not what this name should get (issue #18).
            raise Mismatch(f"read {size} bytes of {item.key}, but it was listed with {item.size}")
        if expected and digest != expected:
            source = "the manifest" if item.sha256 else "its sha256 metadata"
            raise Mismatch(f"{item.key} holds bytes with SHA-256 {digest}, but {source} says {expected}")
        found, bad = attributes(metadata, item.listed_mtime_ns)
        for problem in bad:
            log.warning("restore.bad_metadata", key=item.key, path=item.display, problem=problem,
                        detail="that attribute is not applied; the bytes are restored")
        _apply_attributes(fd, found, item.chown, item)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        # renameat(2) replaces the name itself, whatever it is (a symlink is not followed).
        os.replace(temp, item.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        raise
    return dict(kind=Kind.RESTORED, sha256=digest, etag=response.get("ETag", "").strip('"'),
                version_id=response.get("VersionId", "") or "", size=size,
                message="" if expected else "no sha256 to check against (not stored by obsbatch?)")


def _fill_stream(item: RestoreItem, response: dict, received, fd: int, temp: bytes) -> Tuple[str, int]:
    """The whole body into the temporary file; (SHA-256 hex, bytes)."""
    digest, size = read_body(response["Body"], _AtOffset(fd, 0), received)
    os.ftruncate(fd, size)
    if size != response.get("ContentLength", size):
        raise Mismatch(f"read {size} bytes of {item.key}, the server announced {response.get('ContentLength')}")
    return digest, size


def _range_total(response: dict) -> int:
    """The object's size from a ranged GET's Content-Range (`bytes 0-16777215/100663296`)."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.get("ContentRange") or "")
    if match is None:  # a store that ignored the Range header sends the whole object, 200 and no range
        raise Mismatch(f"asked for a range, the server answered Content-Range {response.get('ContentRange')!r}")
    return int(match.group(1))


class _AtOffset:
    """read_body's `write` for a body (or one range of it) that starts at `offset`: each block to its place in
    the file (sparse), `offset` advancing."""

    def __init__(self, fd: int, offset: int):
        self.fd = fd
        self.offset = offset

    def __call__(self, block: bytes) -> None:
        _write_sparse(self.fd, self.offset, block)
        self.offset += len(block)


@dataclass(frozen=True)
class _RangedRead:
    """One large object read in ranges into its temporary file `temp` (the first range's response already
    open). Each range is written through a descriptor of its own, opened by the temporary's name in its
    directory entered afresh beneath the target: should the restoring thread leave early (a stop), a range
    still running writes into its own descriptor, never into a number that thread closed and the process
    reused."""

    client: object
    bucket: str
    item: RestoreItem
    first: dict
    total: int
    range_size: int
    #: The GetObject parameters that pin every later range to the first one's object (see `fill`).
    pinned: dict
    temp: bytes
    received: Optional[Callable[[int], None]]

    def read(self, start: int) -> None:
        end = min(start + self.range_size, self.total) - 1
        try:
            with beneath.directory(self.item.target, self.item.parent) as dir_fd:
                writer = os.open(self.temp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except BaseException:
            if start == 0:
                self.first["Body"].close()
            raise
        place = _AtOffset(writer, start)
        try:
            response = self.first if start == 0 else self.client.get_object(
                Bucket=self.bucket, Key=self.item.key, Range=f"bytes={start}-{end}", **self.pinned)
            # Not hashed here: the whole file is, once every range is in it (_fill_ranges).
            read_body(response["Body"], place, self.received, digest=False)
        finally:
            os.close(writer)
        if place.offset != end + 1:
            raise Mismatch(f"read {place.offset - start} bytes of the range {start}-{end} of {self.item.key}")


def _fill_ranges(client, bucket: str, controls: archive.ArchiveControls, item: RestoreItem, first: dict,
                 ranges: Ranges, received, fd: int, temp: bytes) -> Tuple[str, int]:
    """The object into the temporary file in ranges, several at once (Ranges.run_all); (SHA-256 hex, bytes)."""
    try:
        total = _range_total(first)
    except BaseException:
        first["Body"].close()
        raise
    os.ftruncate(fd, total)
    # The ranges after the first read the object the first one did: its version where the bucket keeps
    # them, else the same ETag (If-Match: 412 PreconditionFailed if the object was replaced in between).
    # The SHA-256 check below would refuse a mix of two objects anyway; this names it.
    version = item.version_id or (first.get("VersionId") if first.get("VersionId") not in (None, "", "null") else "")
    pinned = dict(controls.read_params(version), **({} if version else {"IfMatch": first.get("ETag", "")}))
    reader = _RangedRead(client, bucket, item, first, total, ranges.size, pinned, temp, received)
    ranges.run_all(reader.read, list(range(0, total, ranges.size)))
    return _file_digest(fd, total), total




def attributes(metadata: Dict[str, str], listed_mtime_ns: int = 0) -> Tuple[Dict[str, int], List[str]]:
    """What an object's metadata says to put back, read strictly (issue #19): ({mode, uid, gid, mtime_ns}, each
    value that is not a valid one, named). An attribute with an invalid value is not applied; an object
    without obsbatch's mtime (another tool's) gets the listing's LastModified."""
    found, bad = {}, []
    mode = metadata.get("mode")
    if mode is not None:
        if mode and len(mode) <= 6 and all(c in "01234567" for c in mode) and int(mode, 8) <= 0o7777:
            found["mode"] = int(mode, 8)
        else:
            bad.append(f"mode {mode!r} is not an octal permission mode (0..7777)")
    for name in ("uid", "gid"):
        value = metadata.get(name)
        if value is not None:
            if value.isascii() and value.isdigit() and int(value) <= beneath.MAX_ID:
                found[name] = int(value)
            else:
                bad.append(f"{name} {value!r} is not a user or group id (0..{beneath.MAX_ID})")
    if "mtime" in metadata:
        ns = mtime_ns(metadata["mtime"])
        if ns is None:
            bad.append(f"mtime {metadata['mtime']!r} is not seconds since the epoch")
        else:
            found["mtime_ns"] = ns
    elif listed_mtime_ns:
        found["mtime_ns"] = listed_mtime_ns
    return found, bad


def _apply_attributes(fd: int, found: Dict[str, int], chown: bool, item: RestoreItem) -> None:
    """owner (as root), mode, extended attributes and mtime (attributes(); the snapshot's xattrs), on the open
    temporary file. The owner first: chown(2) clears the set-user-ID and set-group-ID bits and the file
    capability (security.capability), which the mode and the attributes then put back; a POSIX ACL after the
    mode, whose group bits it sets as they were. mtime last: nothing after it writes to the file. atime is set
    to the mtime (what was stored has no atime)."""
    if chown and "uid" in found and "gid" in found:
        os.fchown(fd, found["uid"], found["gid"])
    if "mode" in found:
        os.fchmod(fd, found["mode"])
    for attribute, why in beneath.set_xattrs(fd, item.xattrs):
        log.warning("restore.xattr_left_out", path=item.display, xattr=attribute, error=why,
                    detail="the bytes and the other attributes are restored")
    if "mtime_ns" in found:
        os.utime(fd, ns=(found["mtime_ns"], found["mtime_ns"]))
