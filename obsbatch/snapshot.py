"""The snapshot format (issue #20): plain values and files, no I/O to the store.

A snapshot is the state of the whole tree under --source as of one backup run. It is stored beside the data,
under `<prefix less '/'>.obsbatch/snapshots/`, where no data key can be (every data key starts with the
prefix itself), so a restore by listing never takes it for a file:

- `<id>.json`: the snapshot record: when, which host and source, counts, the root tree's hash, the packs
  that hold its trees, and the previous snapshot's head. Its `head` is the SHA-256 of the record without
  the head, and the next record cites it: the records form one chain, as the manifests do.
- `packs/<id>`: the directory records ("trees") the run found new, one object per run. A tree is one
  directory's entries, sorted by name bytes, as canonical JSON; its hash (SHA-256 of those bytes) names it,
  and a directory's entry for a subdirectory holds that subdirectory's tree hash: a Merkle tree, as git and
  restic keep. An unchanged directory has the same hash run after run and is stored once; a run's pack holds
  only the directories that changed and their ancestors, so its cost follows what changed.

  A pack is a sequence of frames: the tree's hash (32 bytes), the length of what follows (4 bytes, big
  endian), and the tree's JSON compressed with zlib. A reader checks every tree against its hash, so a pack
  altered in the store is caught (verify --snapshot), never restored from.

One pack per run, rather than one object per tree: a first snapshot of a million files in 50,000
directories is one PUT, not 50,000, and a restore reads a few packs rather than one GET per directory.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import struct
import tempfile
import time
import urllib.parse
import uuid
import zlib
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

FORMAT = "obsbatch-snapshot/1"

# An entry is a JSON array; its fields by position (compact: a million entries are a million arrays).
NAME, TYPE, MODE, UID, GID, MTIME, SIZE, CONTENT, VERSION, LINK, STALE, ETAG, XATTRS = range(13)
#: TYPE: a regular file, a directory, a symlink, a FIFO, a socket, a character and a block device.
FILE, DIRECTORY, SYMLINK, FIFO, SOCKET, CHAR_DEVICE, BLOCK_DEVICE = "f", "d", "l", "p", "s", "c", "b"
#: A file type Linux has no other name for (a Solaris door, on a filesystem that reports one): recorded, never made.
SPECIAL_UNKNOWN = "?"
# CONTENT holds the file's sha256, the directory's tree hash, the link's target (display-spelled, see
# models.display) or the device's rdev; VERSION the object's version id (files; "" where the bucket keeps
# none); LINK the hardlink group ("" for a file with one name); STALE 1 for a file that was busy or failed in
# this run and is recorded as its last stored version; ETAG the object's ETag as the upload got it (files;
# issue #21: a listing carries every object's ETag, so a verify proves a file by its listing, without a HEAD).
# ETAG came later than the rest: a tree written before it has 11 fields, and readers take it as "" (etag()).

_FRAME = struct.Struct(">32sI")
_ID = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}$")


# XATTRS: the entry's extended attributes, {name: base64 of the value}, only where it has any (an entry
# without them has 12 fields): user.*, trusted.*, security.* (file capabilities among them: security.capability)
# and the POSIX ACLs, which Linux keeps as system.posix_acl_access and system.posix_acl_default. Not
# security.selinux: a label is the restoring system's policy to give (tar needs --selinux for it too).
#: The extended attributes a snapshot records, by name prefix (XATTRS).
XATTR_NAMESPACES = ("user.", "trusted.", "security.", "system.posix_acl_access", "system.posix_acl_default")
#: ... except these.
XATTR_LEFT_OUT = ("security.selinux",)
#: The most one value can be (Linux's XATTR_SIZE_MAX), and a name (XATTR_NAME_MAX).
XATTR_VALUE_MAX, XATTR_NAME_MAX = 65536, 255


def xattrs(entry: list) -> dict:
    """An entry's extended attributes as {name: base64 value}; {} where it has none."""
    return entry[XATTRS] if len(entry) > XATTRS else {}


def recorded_xattr(name: str) -> bool:
    """Whether a snapshot records an extended attribute of this name."""
    return name.startswith(XATTR_NAMESPACES) and name not in XATTR_LEFT_OUT


def etag(entry: list) -> str:
    """A file entry's ETag, "" where its tree predates the field (or the upload reported none)."""
    return entry[ETAG] if len(entry) > ETAG else ""


def area(prefix: str) -> str:
    """Where snapshots live: beside the data, never among it (as the manifests: s3.remote.manifest_key)."""
    return f"{prefix.rstrip('/')}.obsbatch/snapshots/"


def record_key(prefix: str, snapshot_id: str) -> str:
    return f"{area(prefix)}{snapshot_id}.json"


def pack_key(prefix: str, pack_id: str) -> str:
    return f"{area(prefix)}packs/{pack_id}"


#: The fleet markers (issue #22): one object per (host, prefix) that has a snapshot, overwritten by each run.
FLEET_AREA = ".obsbatch/fleet/"
#: What a marker says of its latest snapshot: a copy of these fields of the record.
FLEET_FIELDS = ("host", "prefix", "id", "time", "files", "bytes", "unstored", "exit_code", "head")


def fleet_key(host: str, prefix: str) -> str:
    """Where the marker of `host`'s snapshots of `prefix` is: at the bucket's root, so that one listing finds
    the whole fleet (`obsbatch snapshots --all`) without listing any data. The prefix is quoted whole (its '/'
    too): one key per (host, prefix), whatever the prefix holds. Under `.obsbatch/`, the snapshot area of the
    prefix "" (area), which no other prefix's data or snapshots can reach."""
    return f"{FLEET_AREA}{host}/{urllib.parse.quote(prefix, safe='')}.json"


def fleet_marker(record: dict) -> bytes:
    """The marker's body for a stored record: FLEET_FIELDS of it, as canonical JSON."""
    return json.dumps({name: record.get(name) for name in FLEET_FIELDS}, sort_keys=True).encode() + b"\n"


#: How many leading characters of an id are its time ("YYYYmmddTHHMMSS.mmmZ").
ID_TIME_LENGTH = 20


def new_id(now: float) -> str:
    """A snapshot id that sorts by time (UTC, to the millisecond) and is unique (a random tail). Why not to the
    second: two runs on one prefix within a second (a quick rerun, a no-op after a retry) would sort by their
    random tails, and "the latest" could be the older one."""
    millis = int(now * 1000)
    return (time.strftime("%Y%m%dT%H%M%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z-"
            + uuid.uuid4().hex[:8])


def valid_id(text: str) -> bool:
    """Whether `text` is a snapshot id as new_id makes them (and so safe inside a key)."""
    return bool(_ID.fullmatch(text))


def id_of(key: str) -> Optional[str]:
    """The snapshot id a listed key names, or None for anything else under the area (packs, signatures)."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".json"):
        return None
    name = name[:-len(".json")]
    return name if _ID.match(name) else None


def rfc3339(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: The last millisecond of 9999, UTC: the latest time a snapshot id can hold.
_LAST_TIME = 253402300799.999


def parse_time(text: str) -> float:
    """--as-of: an RFC 3339 time (`2026-12-01T23:00:00Z`, `...+03:00`) or a date (`2026-12-01`: the end of that
    day, UTC), as a Unix time; ValueError with the reason otherwise. A time given to the second means the end of
    that second, as a date means the end of that day: `snapshots` shows times to the second, and the time it
    shows must find that snapshot."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
            # Seconds added to the timestamp, not a day to the date: the end of 9999-12-31 is past datetime's range.
            moment, end = day, 86400 - 1e-6
        else:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            end = 0 if re.search(r":\d{2}[.,]\d", text) else 1 - 1e-6
    except ValueError:
        raise ValueError(f"'{text}' is not an RFC 3339 time (2026-12-01T23:00:00Z) or a date (2026-12-01)") from None
    if moment.tzinfo is None:
        raise ValueError(f"'{text}' has no time zone; add Z for UTC or an offset such as +03:00")
    if moment.year < 1970:
        raise ValueError(f"'{text}' is before 1970, older than any snapshot")
    # An id's time has four digits of year (new_id): the end of 9999 is the latest time one can say.
    return min(moment.timestamp() + end, _LAST_TIME)


def tree_bytes(entries: List[list]) -> bytes:
    """A directory's entries (already sorted by name bytes) as the canonical bytes its hash is taken of."""
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(record: dict) -> dict:
    """The record with its `head`: the SHA-256 of its canonical JSON without the head."""
    body = {k: v for k, v in record.items() if k != "head"}
    return dict(body, head=hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest())


def sealed(record: dict) -> bool:
    """Whether the record's head is the hash of the rest of it (nothing in it was altered)."""
    return isinstance(record, dict) and seal(record).get("head") == record.get("head")


class PackWriter:
    """A run's new trees, framed into a temporary file (memory holds one tree at a time); the file is unlinked
    at once, so a run killed at any moment leaves nothing behind."""

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="obsbatch-pack-")
        self.trees = 0
        self.size = 0
        self._md5 = hashlib.md5()
        self._sha256 = hashlib.sha256()

    def add(self, digest: str, data: bytes) -> None:
        compressed = zlib.compress(data, 6)
        frame = _FRAME.pack(bytes.fromhex(digest), len(compressed)) + compressed
        self.file.write(frame)
        self._md5.update(frame)
        self._sha256.update(frame)
        self.trees += 1
        self.size += len(frame)

    def finished(self) -> Tuple[BinaryIO, str, str]:
        """(the file, rewound; its MD5 as bytes for Content-MD5, hex; its SHA-256, hex)."""
        self.file.flush()
        self.file.seek(0)
        return self.file, self._md5.hexdigest(), self._sha256.hexdigest()

    def close(self) -> None:
        self.file.close()


class Damaged(Exception):
    """A pack or tree is not what its hash says (altered or truncated in the store)."""


def frames(handle: BinaryIO) -> Iterator[Tuple[str, int, int]]:
    """(tree hash, offset of its data, length) of each frame in a pack file; Damaged if it is cut short."""
    end = handle.seek(0, os.SEEK_END)  # seeking past the end is allowed, so lengths are checked against it
    handle.seek(0)
    offset = 0
    while True:
        head = handle.read(_FRAME.size)
        if not head:
            return
        if len(head) < _FRAME.size:
            raise Damaged("the pack ends inside a frame header")
        digest, length = _FRAME.unpack(head)
        offset += _FRAME.size
        if offset + length > end:
            raise Damaged("the pack ends inside a tree")
        handle.seek(length, os.SEEK_CUR)
        yield digest.hex(), offset, length
        offset += length


class Trees:
    """The trees of one or more downloaded packs, by hash: an index of (file, offset, length) in memory (about
    100 bytes per directory), the trees themselves read from the files when asked for."""

    def __init__(self):
        self._where: Dict[str, Tuple[BinaryIO, int, int]] = {}
        self._files: List[BinaryIO] = []

    def add_pack(self, handle: BinaryIO) -> int:
        """Index a pack file (rewound); returns how many trees it holds."""
        self._files.append(handle)
        count = 0
        for digest, offset, length in frames(handle):
            self._where.setdefault(digest, (handle, offset, length))
            count += 1
        return count

    def __contains__(self, digest: str) -> bool:
        return digest in self._where

    def get(self, digest: str) -> List[list]:
        """The entries of one tree, checked against its hash; KeyError if no pack holds it, Damaged if altered."""
        handle, offset, length = self._where[digest]
        handle.seek(offset)
        try:
            data = zlib.decompress(handle.read(length))
        except zlib.error as exc:
            raise Damaged(f"tree {digest} cannot be decompressed: {exc}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise Damaged(f"tree {digest} does not match its hash")
        return json.loads(data)

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()
        self._where.clear()
