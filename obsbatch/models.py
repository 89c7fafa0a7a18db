"""The records that flow through the pipeline.

`WorkItem` (parent -> worker) and `Outcome` (worker -> parent) cross the process boundary, so they are
plain frozen dataclasses of builtins: they pickle cheaply and never carry an exception object, a client or
an open file. `Candidate` stays in the parent.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from obsbatch.errors import EndpointUnavailable


def display(path: bytes) -> str:
    """A path for logs and records: UTF-8 where it is, `\\xff` for a byte that is not, and `\\\\` for a
    backslash, so that the spelling is unambiguous and exactly invertible (`undisplay`): before issue #19 the
    one-byte name `caf\\xe9.txt` and a name spelled with a backslash, `x`, `e`, `9` read the same.

    Not `os.fsdecode`: its surrogate escapes are not UTF-8; stderr's backslashreplace would write them as
    `\\udcff`, which a JSON reader decodes as the character U+DCFF instead of the byte the name holds.
    """
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        text = path.decode("utf-8", "surrogateescape")
    else:
        if "\\" not in text:
            return text  # the common case
    return _DISPLAYED.sub(_display_char, text)


_DISPLAYED = re.compile("[\\\\\udc80-\udcff]")
_UNDISPLAYED = re.compile(r"\\(\\|x[0-9a-f]{2})")


def _display_char(match: re.Match) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\x{ord(char) - 0xDC00:02x}"


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(path: bytes) -> str:
    """`display`, with each control character also spelled `\\xNN` (those of C1 as their UTF-8 bytes): what a
    table on a terminal prints, so that no name (a forged one included) can move the cursor, start an escape
    sequence or break a line. Still exactly invertible by `undisplay`: a backslash of the name is doubled."""
    return _CONTROLS.sub(lambda match: "".join(f"\\x{byte:02x}" for byte in match.group().encode()), display(path))


def undisplay(text: str) -> bytes:
    """The path bytes `display` spelled as `text`."""
    out, start = bytearray(), 0
    for match in _UNDISPLAYED.finditer(text):
        out += text[start:match.start()].encode("utf-8")
        out += b"\\" if match.group(1) == "\\" else bytes([int(match.group(1)[1:], 16)])
        start = match.end()
    out += text[start:].encode("utf-8")
    return bytes(out)


def fingerprint(st: os.stat_result) -> tuple:
    """(size, mtime_ns, ctime_ns, dev, ino): what must not change for a file to be the one uploaded.

    ctime is in it because it moves on every content change, even when size and mtime are put back.
    """
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)


class Kind(str, enum.Enum):
    """What finally happened to one path. Exactly one Outcome per path the walk met."""

    #: Stored and verified by the server (Content-MD5 / per-part MD5).
    UPLOADED = "uploaded"
    #: Left out for good in this configuration (excluded, not a regular file, symlink, vanished), or
    #: unchanged since its last verified upload (the journal says so).
    SKIPPED = "skipped"
    #: Not stable yet (too new, open for writing, changed while read), or cut short by a second stop
    #: signal: the next run takes it.
    DEFERRED = "deferred"
    #: Would have been uploaded (`--dry-run`).
    PLANNED = "planned"
    #: Eligible but not stored: the run exits 1.
    FAILED = "failed"
    #: The walk could not read this directory or entry: the run exits 1 (files may be missing).
    ERROR = "error"
    #: `obsbatch restore`: brought back, its bytes checked against the sha256 it was stored with.
    RESTORED = "restored"
    #: `obsbatch verify`: the stored object is what it must be (and, if read back, its bytes too).
    VERIFIED = "verified"


class Reason(str, enum.Enum):
    """Why a path was skipped, deferred or errored. Stable strings: they appear in logs and summaries."""

    EXCLUDED = "excluded"
    UNCHANGED = "unchanged"
    ALREADY_STORED = "already_stored"
    NOT_REGULAR = "not_regular"
    SYMLINK = "symlink"
    #: a symlink, FIFO, socket or device the run's snapshot records (it has no object of its own): not a file
    #: left out, so logged at debug only.
    RECORDED = "recorded"
    SYMLINK_LOOP = "symlink_loop"
    OUTSIDE_SOURCE = "outside_source"
    VANISHED = "vanished"
    #: --follow-symlinks met a link whose target does not exist.
    DANGLING_SYMLINK = "dangling_symlink"
    TOO_NEW = "too_new"
    OPEN_FOR_WRITE = "open_for_write"
    CHANGED = "changed"
    INTERRUPTED = "interrupted"
    UNREADABLE_DIR = "unreadable_dir"
    UNREADABLE_ENTRY = "unreadable_entry"
    # `obsbatch restore` (issue #14):
    #: the local file already holds exactly the object's bytes: left as it is.
    IDENTICAL = "identical"
    #: a local file differs from the object, and --overwrite was not given: left untouched (exit 1).
    CONFLICT = "conflict"
    #: the object is in an archive storage class and must be thawed (RestoreObject) before it can be read.
    ARCHIVED = "archived"
    #: a key that would land outside --target (an absolute path, a '..' or empty segment): never written.
    UNSAFE_KEY = "unsafe_key"


class CopySource(NamedTuple):
    """A verified upload (the journal's) whose bytes a file may hold under another key or with other metadata:
    a renamed or moved file, a copy made with its mtime (cp -a, rsync -a), or a chmod/chown of an unchanged
    file. The worker hashes the file; if its sha256 is this one, the object is made by a server-side
    CopyObject of exactly this version (x-amz-copy-source-if-match: this ETag) with the file's own metadata,
    and no byte of it is sent.
    """

    key: str
    version_id: str
    etag: str
    sha256: str


class Candidate(NamedTuple):
    """A regular file found by the walk (parent only, so not a dataclass: a NamedTuple is made in a third
    of the time, and a no-op run over 200,000 files makes 200,000 of them; issue #12).

    path: absolute path as bytes, exactly as the kernel returned it (names need not be UTF-8).
    rel: path relative to the source root, bytes, `/`-separated.
    key: the destination object key (prefix + keys.encode(rel)), computed once, by the walk.
    stat: the `DirEntry.stat()` result (followed if `--follow-symlinks`).
    remote_etag: with --verify-remote, the ETag of a same-size object already under the key, which the
        worker compares with the file before uploading ("" when there is none to compare); on a run seeded
        from the latest snapshot (a missing or foreign journal), the ETag of the version that snapshot records.
    remote_version: that version ("": the current object), which an ALREADY_STORED file is recorded as.
    copy_source: a stored object that may hold this file's bytes (CopySource), or None.
    """

    path: bytes
    rel: bytes
    key: str
    stat: os.stat_result
    remote_etag: str = ""
    remote_version: str = ""
    copy_source: "CopySource | None" = None


@dataclass(frozen=True)
class WorkItem:
    """One file to upload, as judged stable by the parent.

    path: absolute path, bytes (the worker opens exactly this name).
    display: the path for humans and logs (undecodable bytes as `\xff` escapes: see models.display).
    key: destination object key (Candidate.key).
    size, mtime_ns, ctime_ns, dev, ino: the stat the gate judged; the worker refuses to upload
        if the file it reads no longer matches (Outcome DEFERRED/changed).
    remote_etag: see Candidate.remote_etag; when the stored object proves identical, nothing is uploaded
        (Outcome SKIPPED/already_stored).
    copy_source: see Candidate.copy_source.
    """

    path: bytes
    display: str
    key: str
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    remote_etag: str = ""
    remote_version: str = ""
    copy_source: "CopySource | None" = None

    @property
    def fingerprint(self) -> tuple:
        """The judged stat as `models.fingerprint` orders it."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.dev, self.ino)


@dataclass(frozen=True)
class Outcome:
    """The result for one path.

    kind, reason: see Kind and Reason (reason is None for UPLOADED/PLANNED/FAILED).
    path: display path; key: destination key when one was computed, else "".
    size: bytes in the file (uploaded bytes for UPLOADED).
    attempts: HTTP requests sent for this file, retries included (0 when none were sent).
    retries: how many of those requests were re-sends of a failed one.
    error_type: S3 error code ("AccessDenied", "SlowDown") or exception class name, FAILED/ERROR only.
    message: one human sentence for FAILED/ERROR/DEFERRED-changed; never holds credentials.
    holders: (pid, process name, user) of writers, for DEFERRED/open_for_write.
    etag, sha256: what was stored, UPLOADED only; version_id too where the bucket is versioned, and
        retain_until (ISO 8601, UTC) where an Object Lock retention holds it.
    mtime_ns: the file's mtime as judged, where the file was statted (0 otherwise).
    deleted: move mode removed the local file after this verified upload.
    multipart: whether the multipart API was used.
    copied_from: UPLOADED by a server-side copy of this key (no byte sent; Candidate.copy_source), else "".
    started, ended: wall-clock epoch seconds of the worker's work (0.0 when no worker ran).
    """

    kind: Kind
    path: str
    key: str = ""
    reason: Reason | None = None
    size: int = 0
    attempts: int = 0
    retries: int = 0
    error_type: str = ""
    message: str = ""
    holders: tuple[tuple[int, str, str], ...] = field(default=())
    etag: str = ""
    sha256: str = ""
    version_id: str = ""
    retain_until: str = ""
    mtime_ns: int = 0
    deleted: bool = False
    multipart: bool = False
    copied_from: str = ""
    started: float = 0.0
    ended: float = 0.0


@dataclass(frozen=True)
class RestoreItem:
    """One object to bring back (`obsbatch restore`), pickled to a worker like a WorkItem.

    key: the object key. display: the local path for humans. target: --target (bytes, absolute). rel: where
    it goes beneath the target (bytes; the parent has checked each of its names with beneath.valid_path, and
    the worker enters it from the target without following a symlink). size: the listed size.
    sha256: what the manifest says the bytes are (--manifest), or "" (then the object's own sha256
    metadata is the reference). version_id: the manifest's version to read, or "" (the current one).
    overwrite: --overwrite. chown: restore uid/gid too (the restore runs as root).
    listed_mtime_ns: the listing's LastModified, the mtime given to an object without obsbatch's mtime
    metadata (another tool's), 0 if unknown. xattrs: the extended attributes the snapshot records.
    """

    key: str
    display: str
    target: bytes
    rel: bytes
    size: int
    sha256: str = ""
    version_id: str = ""
    overwrite: bool = False
    chown: bool = False
    listed_mtime_ns: int = 0
    #: A snapshot's extended attributes of the file ((name, value bytes), ...), set before its mtime.
    xattrs: tuple = ()

    @property
    def parent(self) -> bytes:
        """The directory it goes in, relative to the target ("" for the target itself)."""
        return self.rel.rpartition(b"/")[0]

    @property
    def name(self) -> bytes:
        """Its own name in that directory."""
        return self.rel.rpartition(b"/")[2]


@dataclass(frozen=True)
class VerifyItem:
    """One object to check (`obsbatch verify`), pickled to a worker like a WorkItem.

    key: the object key (also its display). object_size: the size it must have. etag, sha256, version_id,
    retain_until: what it must have, where known ("": not checked; from the manifest, or the listing's ETag).
    read: read its bytes back in full and recompute their SHA-256 (the --read-data sample).
    size: the bytes the check moves (object_size when read, else 0), which is what the pool's batching and
    --bwlimit weigh.
    """

    key: str
    object_size: int
    etag: str = ""
    sha256: str = ""
    version_id: str = ""
    retain_until: str = ""
    read: bool = False

    @property
    def display(self) -> str:
        return self.key

    @property
    def size(self) -> int:
        return self.object_size if self.read else 0


def not_started(item: WorkItem) -> Outcome:
    """A file judged and planned, but not begun because the run was stopping: the next run takes it."""
    return Outcome(Kind.DEFERRED, item.display, key=item.key, size=item.size, reason=Reason.INTERRUPTED,
                   message="not started: the run was stopping; the next run takes it")


def crashed(item: WorkItem, exc: BaseException) -> Outcome:
    """The Outcome of a file whose upload raised instead of returning one (a bug): FAILED, never lost."""
    text = " ".join(str(exc).split())[:500] or type(exc).__name__
    return Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type=type(exc).__name__,
                   message=f"the upload stopped on an unexpected error: {text}")


#: error_type of files not sent because the endpoint did not answer the pre-flight (that exception's name).
UNAVAILABLE = EndpointUnavailable.__name__


def unavailable(item: WorkItem, why: str) -> Outcome:
    """A file that would have been uploaded, failed without a request: the endpoint is down (logged once)."""
    return Outcome(Kind.FAILED, item.display, key=item.key, size=item.size, error_type=UNAVAILABLE,
                   message=f"not sent: {why}")
