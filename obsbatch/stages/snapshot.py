"""The backup's snapshot (issue #20): the walk's record of every directory, turned after the uploads into
content-addressed trees (obsbatch.snapshot has the format).

Two steps, because a file's entry needs what only the end of the run knows (the version id of the upload a
worker made):
1. while walking, `Recorder` (walk's `listed`) keeps each directory's entries as the walk stat'ed them, one
   row per directory in an unlinked temporary sqlite file: memory holds a batch of directories, never the tree;
2. after the uploads (the journal holds every verified upload of the run), `build` reads the directories
   deepest first, so each subdirectory's tree hash is known before its parent's tree is made, and gives each
   regular file the journal's record of its last verified upload: its sha256 and version id when the file
   is still that upload (size, mtime, ctime, device and inode unchanged), or, when it changed and was not
   uploaded this run (busy, too new, failed), that last upload, flagged stale: a snapshot never drops a file
   because it was being written. A file never stored yet is left out (and counted).
Trees the journal knows to be stored (an unchanged directory has the same hash) are not written again; the
rest go into this run's pack.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import marshal
import os
import stat as statmod
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Set

import structlog

from obsbatch import keys, scratch, snapshot
from obsbatch.models import display
from obsbatch.stages.journal import Journal

log = structlog.get_logger()

_TYPE_OF_FORMAT = {statmod.S_IFREG: snapshot.FILE, statmod.S_IFDIR: snapshot.DIRECTORY, statmod.S_IFLNK: snapshot.SYMLINK,
                   statmod.S_IFIFO: snapshot.FIFO, statmod.S_IFSOCK: snapshot.SOCKET,
                   statmod.S_IFCHR: snapshot.CHAR_DEVICE, statmod.S_IFBLK: snapshot.BLOCK_DEVICE}
#: Salts every directory's cache key: a tree cached by an obsbatch whose entries lacked a field (ETAG, issue
#: #21), or whose files were stored under the keys before keys.KEY_FORMAT (a name `.obsbatch`), is rebuilt
#: once, so the first run after an upgrade writes every tree anew (as a first snapshot does).
#: "xattrs": trees before it recorded no extended attributes.
_TREE_FORMAT = b"entries/12,keys/2,xattrs\0"
#: Directories per insert batch while walking.
_BATCH = 256


class Recorder:
    """walk's `listed`: every directory's entries, kept for `build`. excluded(rel): --include/--exclude, which
    leave files (not directories) out of the snapshot as out of the backup."""

    def __init__(self, excluded: Optional[Callable[[bytes], bool]] = None, root: Optional[bytes] = None):
        self.excluded = excluded
        #: The source, where each entry's extended attributes are read (None: not read; tests of the walk).
        self.root = root
        #: Filesystems (st_dev) that answered ENOTSUP: no attributes to read there, no call per entry.
        self._no_xattrs: set = set()
        self.db = scratch.database("snapshot")
        self.db.execute("CREATE TABLE dirs (rel BLOB PRIMARY KEY, depth INTEGER NOT NULL, entries BLOB NOT NULL, "
                        "subdirs BLOB NOT NULL)")
        self.db.execute("CREATE INDEX dirs_by_depth ON dirs (depth)")
        self.db.execute("CREATE TABLE hashes (rel BLOB PRIMARY KEY, hash TEXT NOT NULL) WITHOUT ROWID")
        #: The trees rebuilt this run, for the journal's cache once the snapshot is stored (Journal.cached_tree).
        self.db.execute("CREATE TABLE rebuilt (rel BLOB PRIMARY KEY, cache_key TEXT, hash TEXT, pack TEXT, files INT,"
                        " bytes INT, directories INT, symlinks INT, special INT) WITHOUT ROWID")
        self._batch = []

    def __call__(self, rel: bytes, entries: list) -> None:
        excluded = self.excluded
        kept, subdirs = [], []
        for name, st, target in entries:
            mode = st.st_mode
            if statmod.S_ISDIR(mode):
                subdirs.append(name)
            elif excluded is not None and excluded(rel + b"/" + name if rel else name):
                continue
            kept.append((name, mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, st.st_ctime_ns,
                         st.st_dev, st.st_ino, st.st_nlink, st.st_rdev, target))
        # The subdirectories apart, in name order: `build` needs only them (and the blob's bytes) to tell an
        # unchanged directory, without decoding its entries.
        subdirs.sort()
        self._batch.append((rel, rel.count(b"/") + 1 if rel else 0, marshal.dumps(kept), marshal.dumps(subdirs)))
        if len(self._batch) >= _BATCH:
            self._flush()

    def xattrs(self, rel: bytes, dev: int) -> tuple:
        """((name, value), ...) of the extended attributes a snapshot records (snapshot.recorded_xattr), sorted;
        () where there are none, or none can be read. One listxattr(2) per entry (a getxattr(2) per attribute
        found), never following a symlink, and only for the directories `build` rebuilds: setxattr(2) moves
        the entry's ctime, which is in the recorded blob, so a changed attribute rebuilds its directory's tree,
        and an unchanged directory (a no-op run's every one) costs no call at all. One the kernel refuses to
        read (trusted.* without CAP_SYS_ADMIN is not even listed) is left out; a filesystem without them
        (ENOTSUP) is asked once."""
        if self.root is None or dev in self._no_xattrs:
            return ()
        path = os.path.join(self.root, rel)
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self._no_xattrs.add(dev)
            return ()
        found = []
        for name in sorted(names):
            if not snapshot.recorded_xattr(name):
                continue
            try:
                found.append((name, os.getxattr(path, name, follow_symlinks=False)))
            except OSError as exc:  # removed since the listing, or not readable by this user
                log.debug("snapshot.xattr_unreadable", path=display(path), xattr=name, error=exc.strerror)
        return tuple(found)

    def _flush(self) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO dirs VALUES (?,?,?,?)", self._batch)
        self._batch.clear()

    def deepest_first(self):
        """(rel, its entries as marshalled, its subdirectories' names as marshalled) of every recorded
        directory, the deepest first."""
        self._flush()
        yield from self.db.execute("SELECT rel, entries, subdirs FROM dirs ORDER BY depth DESC")

    def hashed(self, rel: bytes, digest: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO hashes VALUES (?,?)", (rel, digest))

    def tree_of(self, rel: bytes) -> str:
        """The tree hash of a subdirectory `build` has done (deepest first, so before its parent)."""
        row = self.db.execute("SELECT hash FROM hashes WHERE rel=?", (rel,)).fetchone()
        if row is None:  # not read in full (a stop, an error): such a walk writes no snapshot
            raise RuntimeError(f"directory {display(rel)} was not recorded")
        return row[0]

    def remember(self, rel: bytes, cache_key: str, digest: str, pack: str, counts: tuple) -> None:
        self.db.execute("INSERT OR REPLACE INTO rebuilt VALUES (?,?,?,?,?,?,?,?,?)",
                        (rel, cache_key, digest, pack, *counts))

    def rebuilt(self):
        """(rel, cache key, tree hash, pack, files, bytes, directories, symlinks, special) of every tree
        `build` made whole (no stale or unstored file): the journal's cache of unchanged directories."""
        yield from self.db.execute("SELECT * FROM rebuilt")

    def close(self) -> None:
        self.db.close()


@dataclass
class Built:
    """What `build` made: the root tree's hash, the packs the snapshot's trees are in, and its counts."""

    root: str = ""
    packs: Set[str] = field(default_factory=set)
    new_trees: Set[str] = field(default_factory=set)
    totals: "Counts" = None

    def add(self, counts: "Counts") -> None:
        self.totals = counts if self.totals is None else Counts(*map(sum, zip(self.totals, counts)))


def build(recorder: Recorder, journal: Journal, prefix: str, pack: snapshot.PackWriter, pack_id: str) -> Built:
    """The snapshot's trees from the recorded directories and the journal; new trees written to `pack`.

    An unchanged directory is not even rebuilt (issue #20: rebuilding every tree cost a no-op run ~15 µs per
    file): the journal keeps, per directory, the key of what its tree was built from (the walk's record of
    its entries and its subdirectories' tree hashes) and the tree's hash. When the key is the same, no upload
    of this run touched the directory, and its last tree had no stale or unstored file, the tree is the same.
    """
    built = Built(totals=Counts())
    for rel, blob, subdirs in recorder.deepest_first():
        children = [recorder.tree_of(rel + b"/" + name if rel else name) for name in marshal.loads(subdirs)]
        cache_key = hashlib.sha1(_TREE_FORMAT + blob + "".join(children).encode()).hexdigest()
        key_dir = prefix + keys.encode(rel) + "/" if rel else prefix
        cached = None if key_dir in journal.touched else journal.cached_tree(prefix, rel)
        if cached is not None and cached[0] == cache_key:
            digest, pack_of, counts = cached[1], cached[2], Counts(*cached[3:])
        else:
            tree, counts = _tree(sorted(marshal.loads(blob)), iter(children), journal.stored(key_dir), key_dir,
                                 functools.partial(_joined_xattrs, recorder, rel))
            data = snapshot.tree_bytes(tree)
            digest = hashlib.sha256(data).hexdigest()
            pack_of = journal.tree_pack(prefix, digest)
            if pack_of is None:
                pack_of = pack_id
                if digest not in built.new_trees:
                    pack.add(digest, data)
                    built.new_trees.add(digest)
            if not (counts.stale or counts.unstored):  # a busy file may be stored by the next run
                recorder.remember(rel, cache_key, digest, pack_of, counts[:5])
        built.add(counts)
        built.packs.add(pack_of)
        recorder.hashed(rel, digest)
        if not rel:
            built.root = digest
    return built


class Counts(NamedTuple):
    """What one directory's tree holds (its subdirectories' contents aside), or a whole snapshot."""

    files: int = 0
    bytes: int = 0
    directories: int = 0
    symlinks: int = 0
    special: int = 0
    #: Files recorded as their last stored version because this run did not store their current content.
    stale: int = 0
    #: Files left out: never stored yet (first seen this run, and not uploaded).
    unstored: int = 0


def _joined_xattrs(recorder: Recorder, rel_dir: bytes, name: bytes, dev: int) -> tuple:
    return recorder.xattrs(rel_dir + b"/" + name if rel_dir else name, dev)


def _no_xattrs(name: bytes, dev: int) -> tuple:
    return ()


def _tree(entries: list, children, stored, key_dir: str, xattrs_of=_no_xattrs):
    """One directory's tree (its entries, sorted by name bytes) and its Counts. children: the subdirectories'
    tree hashes, in order; stored: the journal's rows of its files (Journal.stored); xattrs_of(name, dev): an
    entry's extended attributes (Recorder.xattrs)."""
    tree = []
    files = size_sum = directories = symlinks = special = stale = unstored = 0
    for name, mode, uid, gid, mtime_ns, size, ctime_ns, dev, ino, nlink, rdev, target in entries:
        kind = _type(mode)
        entry = [display(name), kind, statmod.S_IMODE(mode), uid, gid, mtime_ns, size, "", "", "", 0, ""]
        if kind == snapshot.FILE:
            row = stored.get(key_dir + keys.encode(name))
            if row is None:
                unstored += 1
                continue
            if row[:5] != (size, mtime_ns, ctime_ns, dev, ino):
                # Not this run's upload nor unchanged since one: its last stored version stands in.
                entry[snapshot.SIZE], entry[snapshot.MTIME], entry[snapshot.STALE] = row[0], row[1], 1
                stale += 1
            entry[snapshot.CONTENT], entry[snapshot.VERSION], entry[snapshot.ETAG] = row[5], row[6], row[7]
            entry[snapshot.LINK] = f"{dev}:{ino}" if nlink > 1 else ""
            files += 1
            size_sum += entry[snapshot.SIZE]
        elif kind == snapshot.DIRECTORY:
            entry[snapshot.SIZE], entry[snapshot.CONTENT] = 0, next(children)
            directories += 1
        elif kind == snapshot.SYMLINK:
            entry[snapshot.CONTENT] = display(target)
            symlinks += 1
        else:
            entry[snapshot.SIZE] = 0
            entry[snapshot.CONTENT] = str(rdev) if kind in (snapshot.CHAR_DEVICE, snapshot.BLOCK_DEVICE) else ""
            special += 1
        attributes = xattrs_of(name, dev)
        if attributes:
            entry.append({name: base64.b64encode(value).decode() for name, value in attributes})
        tree.append(entry)
    return tree, Counts(files, size_sum, directories, symlinks, special, stale, unstored)


def _type(mode: int) -> str:
    return _TYPE_OF_FORMAT.get(statmod.S_IFMT(mode), snapshot.SPECIAL_UNKNOWN)


def write(config, source: str, recorder: Recorder, journal: Journal, remote, summary) -> Optional[dict]:
    """Build this run's snapshot and store it: the pack of new trees first, then the record that names them
    (a record is never stored before the trees it needs), then, if a signing key is given, the record's
    signature; the journal learns the new trees only once the record is stored.

    Returns the stored record, or None when it could not be stored (logged, and counted as a failure: the
    run exits 1 and the previous snapshot stays the latest). config: the BackupConfig; remote: s3.remote.Remote.
    """
    import json

    from obsbatch import __version__

    prefix = config.store.prefix
    snapshot_id = snapshot.new_id(summary.started)
    pack = snapshot.PackWriter()
    try:
        built = build(recorder, journal, prefix, pack, snapshot_id)
        if not _truthful(built.totals, summary):
            return None
        if built.new_trees:
            handle, md5_hex, sha256_hex = pack.finished()
            if not _stored(remote, summary, snapshot.pack_key(prefix, snapshot_id), handle,
                           "application/octet-stream", (md5_hex, sha256_hex)):
                return None
    finally:
        pack.close()
    previous = journal.last_snapshot(prefix)
    record = snapshot.seal({
        "format": snapshot.FORMAT, "id": snapshot_id, "time": snapshot.rfc3339(summary.started),
        "host": config.output.host_id, "source": source, "bucket": config.store.bucket, "prefix": prefix,
        "root": built.root, "packs": sorted(built.packs), **built.totals._asdict(), "exit_code": int(summary.exit_code),
        "previous": previous[1] if previous else None, "obsbatch": __version__, "key_format": keys.KEY_FORMAT})
    body = json.dumps(record, sort_keys=True).encode() + b"\n"
    key = snapshot.record_key(prefix, snapshot_id)
    if not _stored(remote, summary, key, body, "application/json"):
        return None
    if config.signing_key:
        from obsbatch import signing

        signature = json.dumps(signing.signature(record["head"], config.signing_key), sort_keys=True).encode()
        _stored(remote, summary, key + signing.SUFFIX, signature, "application/json")
    # The fleet marker (issue #22) after the record it points to. A marker that cannot be written (a key
    # allowed to write only under its prefix) is logged and costs the run nothing: the snapshot is stored, and
    # the fleet view shows this host as of its last marker, stale in time, which is what a monitor notices.
    marker = snapshot.fleet_marker(record)
    remote.put_beside(snapshot.fleet_key(record["host"], prefix), marker, "application/json",
                      "snapshot.fleet_marker_failed", config.archive.for_marker())
    totals = built.totals
    journal.record_snapshot(prefix, snapshot_id, record["head"], totals.files, snapshot_id, built.new_trees,
                            recorder.rebuilt())
    log.info("snapshot.written", id=snapshot_id, head=record["head"], key=key, files=totals.files,
             directories=totals.directories, symlinks=totals.symlinks, stale=totals.stale, unstored=totals.unstored,
             new_trees=len(built.new_trees), pack_bytes=pack.size,
             sent_by="obsbatch" if remote.lean is not None else "botocore")  # s3.lean, or its fallback
    return record


#: The share of the tree's files a snapshot may leave out (in no snapshot yet) before the run warns.
INCOMPLETE_SHARE = 0.10


def _truthful(totals: "Counts", summary) -> bool:
    """Whether this run's snapshot should be written: not when it would hold no file while the tree has some
    that no snapshot holds (all deferred or failed: a tree copied a moment ago). Written, it would become the
    latest, and a restore of "the latest" would bring back nothing, exit 0. Instead the previous snapshot stays
    the latest and the run is exit 1 (the next run takes the files). A snapshot that leaves out more than
    INCOMPLETE_SHARE of the tree's files is written, and the run says so."""
    summary.snapshot_unstored = totals.unstored
    whole = totals.files + totals.unstored
    if totals.files == 0 and totals.unstored:
        summary.snapshot_withheld = True
        log.warning("snapshot.withheld", unstored=totals.unstored,
                    detail="no file of the tree is stored yet (each deferred or failed); no snapshot written, the "
                           "previous one stays the latest; exit 1 (the next run takes them)")
        return False
    if whole and totals.unstored > INCOMPLETE_SHARE * whole:
        log.warning("snapshot.incomplete", unstored=totals.unstored, files=totals.files,
                    detail=f"more than {INCOMPLETE_SHARE:.0%} of the tree's files are in no snapshot yet (deferred "
                           "or failed on every run so far); the snapshot leaves them out")
    return True


def _stored(remote, summary, key: str, body, content_type: str, digests: Optional[tuple] = None) -> bool:
    if remote.put_beside(key, body, content_type, "snapshot.upload_failed", digests=digests) is None:
        return True
    summary.failed += 1
    summary.failed_by_type["SnapshotUpload"] += 1
    return False
