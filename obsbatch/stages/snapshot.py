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

import hashlib
import marshal
import os
import sqlite3
import stat as statmod
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional, Set

import structlog

from obsbatch import keys, snapshot
from obsbatch.models import display
from obsbatch.stages.journal import Journal

log = structlog.get_logger()

_TYPES = ((statmod.S_ISREG, snapshot.FILE), (statmod.S_ISDIR, snapshot.DIRECTORY), (statmod.S_ISLNK, snapshot.SYMLINK),
          (statmod.S_ISFIFO, snapshot.FIFO), (statmod.S_ISSOCK, snapshot.SOCKET),
          (statmod.S_ISCHR, snapshot.CHAR_DEVICE), (statmod.S_ISBLK, snapshot.BLOCK_DEVICE))
#: Directories per insert batch while walking.
_BATCH = 256


def scratch_db() -> sqlite3.Connection:
    """An sqlite file for one run's scratch data, unlinked as soon as it is open: a run killed at any moment
    leaves no copy of the tree's names behind (as restore.ManifestIndex)."""
    directory = tempfile.mkdtemp(prefix="obsbatch-snapshot-")
    try:
        db = sqlite3.connect(os.path.join(directory, "scratch.db"))
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")  # scratch: nothing in it outlives the run
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    return db


class Recorder:
    """walk's `listed`: every directory's entries, kept for `build`. excluded(rel): --include/--exclude, which
    leave files (not directories) out of the snapshot as out of the backup."""

    def __init__(self, excluded: Optional[Callable[[bytes], bool]] = None):
        self.excluded = excluded
        self.db = scratch_db()
        self.db.execute("CREATE TABLE dirs (rel BLOB PRIMARY KEY, depth INTEGER NOT NULL, entries BLOB NOT NULL)")
        self.db.execute("CREATE INDEX dirs_by_depth ON dirs (depth)")
        self.db.execute("CREATE TABLE hashes (rel BLOB PRIMARY KEY, hash TEXT NOT NULL) WITHOUT ROWID")
        self._batch = []

    def __call__(self, rel: bytes, entries: list) -> None:
        excluded = self.excluded
        kept = []
        for name, st, target in entries:
            if excluded is not None and not statmod.S_ISDIR(st.st_mode) and excluded(rel + b"/" + name if rel else name):
                continue
            kept.append((name, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, st.st_ctime_ns,
                         st.st_dev, st.st_ino, st.st_nlink, st.st_rdev, target))
        self._batch.append((rel, rel.count(b"/") + 1 if rel else 0, marshal.dumps(kept)))
        if len(self._batch) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO dirs VALUES (?,?,?)", self._batch)
        self._batch.clear()

    def deepest_first(self):
        """(rel, entries) of every recorded directory, the deepest first."""
        self._flush()
        for rel, blob in self.db.execute("SELECT rel, entries FROM dirs ORDER BY depth DESC"):
            yield rel, marshal.loads(blob)

    def close(self) -> None:
        self.db.close()


@dataclass
class Built:
    """What `build` made: the root tree's hash, the packs the snapshot's trees are in, and its counts."""

    root: str = ""
    packs: Set[str] = field(default_factory=set)
    new_trees: Set[str] = field(default_factory=set)
    files: int = 0
    bytes: int = 0
    directories: int = 0
    symlinks: int = 0
    special: int = 0
    #: Files recorded as their last stored version because this run did not store their current content.
    stale: int = 0
    #: Files left out: never stored yet (first seen this run, and not uploaded).
    unstored: int = 0


def build(recorder: Recorder, journal: Journal, prefix: str, pack: snapshot.PackWriter, pack_id: str) -> Built:
    """The snapshot's trees from the recorded directories and the journal; new trees written to `pack`."""
    built = Built()
    hashes = recorder.db
    for rel, entries in recorder.deepest_first():
        key_dir = prefix + keys.encode(rel) + "/" if rel else prefix
        stored = journal.stored(key_dir)
        tree = []
        for name, mode, uid, gid, mtime_ns, size, ctime_ns, dev, ino, nlink, rdev, target in sorted(entries):
            kind = next(letter for test, letter in _TYPES if test(mode))
            entry = [display(name), kind, statmod.S_IMODE(mode), uid, gid, mtime_ns, size, "", "", "", 0]
            if kind == snapshot.FILE:
                row = stored.get(key_dir + keys.encode(name))
                if row is None:
                    built.unstored += 1
                    continue
                if row[:5] != (size, mtime_ns, ctime_ns, dev, ino):
                    # Not this run's upload nor unchanged since one: its last stored version stands in.
                    entry[snapshot.SIZE], entry[snapshot.MTIME], entry[snapshot.STALE] = row[0], row[1], 1
                    built.stale += 1
                entry[snapshot.CONTENT], entry[snapshot.VERSION] = row[5], row[6]
                entry[snapshot.LINK] = f"{dev}:{ino}" if nlink > 1 else ""
                built.files += 1
                built.bytes += entry[snapshot.SIZE]
            elif kind == snapshot.DIRECTORY:
                child = hashes.execute("SELECT hash FROM hashes WHERE rel=?",
                                       (rel + b"/" + name if rel else name,)).fetchone()
                if child is None:  # not read in full (a stop, an error): such a walk writes no snapshot
                    raise RuntimeError(f"directory {display(rel + b'/' + name)} was not recorded")
                entry[snapshot.SIZE], entry[snapshot.CONTENT] = 0, child[0]
                built.directories += 1
            elif kind == snapshot.SYMLINK:
                entry[snapshot.CONTENT] = display(target)
                built.symlinks += 1
            else:
                entry[snapshot.SIZE] = 0
                entry[snapshot.CONTENT] = str(rdev) if kind in (snapshot.CHAR_DEVICE, snapshot.BLOCK_DEVICE) else ""
                built.special += 1
            tree.append(entry)
        data = snapshot.tree_bytes(tree)
        digest = hashlib.sha256(data).hexdigest()
        hashes.execute("INSERT OR REPLACE INTO hashes VALUES (?,?)", (rel, digest))
        known = journal.tree_pack(prefix, digest)
        if known is None and digest not in built.new_trees:
            pack.add(digest, data)
            built.new_trees.add(digest)
        built.packs.add(known or pack_id)
        if not rel:
            built.root = digest
    return built


def write(config, source: str, recorder: Recorder, journal: Journal, remote, summary) -> Optional[dict]:
    """Build this run's snapshot and store it: the pack of new trees first, then the record that names them
    (a record is never stored before the trees it needs), then, if a signing key is given, the record's
    signature; the journal learns the new trees only once the record is stored.

    Returns the stored record, or None when it could not be stored (logged, and counted as a failure: the
    run exits 1 and the previous snapshot stays the latest). config: the BackupConfig; remote: s3.remote.Remote.
    """
    import json
    import socket

    from obsbatch import __version__

    prefix = config.store.prefix
    snapshot_id = snapshot.new_id(summary.started)
    pack = snapshot.PackWriter()
    try:
        built = build(recorder, journal, prefix, pack, snapshot_id)
        if built.new_trees:
            handle, md5_hex, sha256_hex = pack.finished()
            if not _stored(remote, summary, snapshot.pack_key(prefix, snapshot_id), handle, md5_hex, sha256_hex,
                           "application/octet-stream"):
                return None
    finally:
        pack.close()
    previous = journal.last_snapshot(prefix)
    record = snapshot.seal({
        "format": snapshot.FORMAT, "id": snapshot_id, "time": snapshot.rfc3339(summary.started),
        "host": socket.gethostname(), "source": source, "bucket": config.store.bucket, "prefix": prefix,
        "root": built.root, "packs": sorted(built.packs), "files": built.files, "bytes": built.bytes,
        "directories": built.directories, "symlinks": built.symlinks, "special": built.special,
        "stale": built.stale, "unstored": built.unstored, "exit_code": int(summary.exit_code),
        "previous": previous[1] if previous else None, "obsbatch": __version__})
    body = json.dumps(record, sort_keys=True).encode() + b"\n"
    key = snapshot.record_key(prefix, snapshot_id)
    if not _stored(remote, summary, key, body, hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest(),
                   "application/json"):
        return None
    if config.manifest_signing_key:
        from obsbatch import signing

        signature = json.dumps(signing.signature(record["head"], config.manifest_signing_key), sort_keys=True).encode()
        _stored(remote, summary, key + signing.SUFFIX, signature, hashlib.md5(signature).hexdigest(),
                hashlib.sha256(signature).hexdigest(), "application/json")
    journal.record_snapshot(prefix, snapshot_id, record["head"], built.files, snapshot_id, built.new_trees)
    log.info("snapshot.written", id=snapshot_id, head=record["head"], key=key, files=built.files,
             directories=built.directories, symlinks=built.symlinks, stale=built.stale, unstored=built.unstored,
             new_trees=len(built.new_trees), pack_bytes=pack.size)
    return record


def _stored(remote, summary, key: str, body, md5_hex: str, sha256_hex: str, content_type: str) -> bool:
    if remote.put_beside(key, body, md5_hex, sha256_hex, content_type, "snapshot.upload_failed") is None:
        return True
    summary.failed += 1
    summary.failed_by_type["SnapshotUpload"] += 1
    return False
