"""`obsbatch restore` of a snapshot (issue #20): the tree exactly as the snapshot recorded it.

Two passes over the snapshot's trees (read from the packs, never held whole in memory):
1. `items`: directories are made as they are met, closed to everyone but the owner (0700) for the time of
   the restore, and each regular file becomes a RestoreItem for the workers: the object's recorded version
   (GET with versionId), checked against the recorded sha256. Of a hardlink group only the first name is
   downloaded. On a bucket without versioning the recorded version is "" and the current object is read: if
   it changed since the snapshot, its bytes do not have the recorded sha256, and the worker refuses them
   (the file is named, left out, exit 1), never serving newer bytes as the old file.
2. `finish`, after the workers (not after a stop): symlinks, the other names of each hardlink group
   (link(2) to the first), FIFOs (and, as root, sockets and devices: mknod(2) needs CAP_MKNOD), and last,
   deepest first, each directory's mode, mtime and (as root) owner: set after its contents, since creating
   an entry moves a directory's mtime, and so that no directory is more open during the restore than at its
   end.
"""

from __future__ import annotations

import os
import stat as statmod
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import structlog

from obsbatch import keys, snapshot
from obsbatch.models import Kind, Outcome, Reason, RestoreItem, display
from obsbatch.s3 import snapshots

log = structlog.get_logger()

#: Mode of a directory while its contents are restored: the owner's alone.
_WHILE_RESTORING = 0o700


class TreeRestore:
    """One snapshot restored into `target` (bytes). config: RestoreConfig; summary: restore.RestoreSummary."""

    def __init__(self, config, record: dict, trees: snapshot.Trees, target: bytes, summary,
                 excluded: Optional[Callable[[bytes], bool]]):
        self.config = config
        self.record = record
        self.trees = trees
        self.target = target
        self.summary = summary
        self.excluded = excluded
        self.chown = os.geteuid() == 0
        #: The name restored for each hardlink group, by group (link targets of its other names).
        self._first_names: Dict[str, bytes] = {}
        #: The last directory `_parent_made` made sure of (entries come a directory at a time).
        self._made_parent = b""

    def _parent_made(self, dest: bytes) -> None:
        """With --include/--exclude only the directories on the way to a kept entry are made (not the whole
        skeleton), each 0700 as in pass 1 (os.makedirs would give intermediate ones the umask's mode)."""
        parent = os.path.dirname(dest)
        if parent == self._made_parent:
            return
        missing = []
        probe = parent
        while not os.path.isdir(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, _WHILE_RESTORING)
            except FileExistsError:
                pass
        self._made_parent = parent

    def _entries(self) -> Iterator[Tuple[bytes, list]]:
        """(relative path, entry) of every entry --include/--exclude keep, parents before children."""
        excluded = self.excluded
        for rel_dir, entries in snapshots.walk(self.trees, self.record["root"]):
            for entry in entries:
                name = entry[snapshot.NAME]
                rel = rel_dir + b"/" + name if rel_dir else name
                if excluded is not None and entry[snapshot.TYPE] != snapshot.DIRECTORY and excluded(rel):
                    continue
                yield rel, entry

    def items(self) -> Iterator[Union[RestoreItem, Outcome]]:
        """Pass 1: make the directories, and a RestoreItem for each file's first name."""
        prefix = self.record["prefix"]
        dry_run = self.config.restore_dry_run
        for rel, entry in self._entries():
            kind = entry[snapshot.TYPE]
            dest = os.path.join(self.target, rel)
            if kind == snapshot.DIRECTORY:
                if not dry_run and self.excluded is None:  # every directory, the empty ones too
                    try:
                        os.mkdir(dest, _WHILE_RESTORING)
                    except FileExistsError:
                        pass
                continue
            if kind != snapshot.FILE:
                continue
            if not dry_run and self.excluded is not None:
                self._parent_made(dest)
            group = entry[snapshot.LINK]
            if group:
                if group in self._first_names:
                    continue  # linked to the first name in pass 2
                self._first_names[group] = dest
            self.summary.listed += 1  # the objects to read, as a listing's restore counts them
            yield RestoreItem(key=prefix + keys.encode(rel), display=display(dest), dest=dest,
                              size=entry[snapshot.SIZE], sha256=entry[snapshot.CONTENT],
                              version_id=entry[snapshot.VERSION], overwrite=self.config.overwrite, chown=self.chown,
                              listed_mtime_ns=entry[snapshot.MTIME])

    def finish(self) -> None:
        """Pass 2: links, special files, then every directory's attributes, deepest first."""
        directories: List[Tuple[bytes, list]] = []
        for rel, entry in self._entries():
            kind = entry[snapshot.TYPE]
            dest = os.path.join(self.target, rel)
            if kind == snapshot.DIRECTORY:
                directories.append((dest, entry))
                continue
            if self.excluded is not None:
                self._parent_made(dest)
            if kind == snapshot.SYMLINK:
                self._made(dest, "symlinks", _symlink, entry)
            elif kind == snapshot.FILE and entry[snapshot.LINK]:
                first = self._first_names.get(entry[snapshot.LINK])
                if first is not None and first != dest:
                    self._made(dest, "hardlinks", _hardlink, first)
            elif kind != snapshot.FILE:
                self._made(dest, "special", _special, entry, self.chown)
        # Pre-order reversed: every directory after all of its descendants. With --include/--exclude, only
        # those made for a kept entry.
        for dest, entry in reversed(directories):
            if self.excluded is not None and not os.path.isdir(dest):
                continue
            try:
                if self.chown:
                    os.lchown(dest, entry[snapshot.UID], entry[snapshot.GID])
                os.chmod(dest, entry[snapshot.MODE])
                os.utime(dest, ns=(entry[snapshot.MTIME], entry[snapshot.MTIME]), follow_symlinks=False)
                self.summary.entries["directories"] += 1
            except OSError as exc:
                self._failed(dest, exc)

    def _made(self, dest: bytes, counter: str, make: Callable, *args) -> None:
        """Make one entry that is not a file's bytes: counted, or named in the summary when it cannot be."""
        try:
            verdict = make(dest, self.config.overwrite, *args)
        except OSError as exc:
            self._failed(dest, exc)
            return
        if verdict == "conflict":
            self.summary.add(Outcome(Kind.SKIPPED, display(dest), reason=Reason.CONFLICT,
                                     message="something else is at this name; left untouched (--overwrite replaces it)"))
        elif verdict == "not root":
            self.summary.entries["special_left_out"] += 1
            log.warning("restore.special_left_out", path=display(dest),
                        detail="sockets and devices are made only by a restore run as root")
        elif verdict == "unknown type":
            self.summary.entries["special_left_out"] += 1
            log.warning("restore.special_left_out", path=display(dest), detail="a file type Linux cannot make")
        elif verdict == "no first name":
            self.summary.entries["hardlinks_left_out"] += 1
            log.warning("restore.hardlink_left_out", path=display(dest),
                        detail="the name it shares its inode with was not restored (see the failure above)")
        else:
            self.summary.entries[counter] += 1

    def _failed(self, dest: bytes, exc: OSError) -> None:
        self.summary.add(Outcome(Kind.FAILED, display(dest), error_type=type(exc).__name__,
                                 message=f"cannot make {display(dest)}: {exc.strerror or exc}"))


def _replaceable(dest: bytes, overwrite: bool, same: Callable[[os.stat_result], bool]) -> Optional[str]:
    """None when `dest` is free (or was removed, with --overwrite); "identical" or "conflict" otherwise."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    if same(st):
        return "identical"
    if not overwrite or statmod.S_ISDIR(st.st_mode):
        return "conflict"
    os.unlink(dest)
    return None


def _symlink(dest: bytes, overwrite: bool, entry: list) -> Optional[str]:
    from obsbatch.models import undisplay

    target = undisplay(entry[snapshot.CONTENT])
    verdict = _replaceable(dest, overwrite, lambda st: statmod.S_ISLNK(st.st_mode) and os.readlink(dest) == target)
    if verdict is None:
        os.symlink(target, dest)
        if os.geteuid() == 0:
            os.lchown(dest, entry[snapshot.UID], entry[snapshot.GID])
        os.utime(dest, ns=(entry[snapshot.MTIME], entry[snapshot.MTIME]), follow_symlinks=False)
    return verdict


def _hardlink(dest: bytes, overwrite: bool, first: bytes) -> Optional[str]:
    try:
        first_st = os.lstat(first)
    except FileNotFoundError:  # its first name was not restored (failed): said there
        return "no first name"
    verdict = _replaceable(dest, overwrite, lambda st: (st.st_dev, st.st_ino) == (first_st.st_dev, first_st.st_ino))
    if verdict is None:
        os.link(first, dest)
    return verdict


_SPECIAL_TYPES = {snapshot.FIFO: statmod.S_IFIFO, snapshot.SOCKET: statmod.S_IFSOCK,
                  snapshot.CHAR_DEVICE: statmod.S_IFCHR, snapshot.BLOCK_DEVICE: statmod.S_IFBLK}


def _special(dest: bytes, overwrite: bool, entry: list, as_root: bool) -> Optional[str]:
    kind = _SPECIAL_TYPES.get(entry[snapshot.TYPE])
    if kind is None:
        return "unknown type"
    if kind != statmod.S_IFIFO and not as_root:
        return "not root"
    verdict = _replaceable(dest, overwrite, lambda st: statmod.S_IFMT(st.st_mode) == kind)
    if verdict is None:
        rdev = int(entry[snapshot.CONTENT] or 0)
        os.mknod(dest, kind | entry[snapshot.MODE], rdev)
        os.chmod(dest, entry[snapshot.MODE])  # mknod's mode is masked by the umask
        if as_root:
            os.lchown(dest, entry[snapshot.UID], entry[snapshot.GID])
        os.utime(dest, ns=(entry[snapshot.MTIME], entry[snapshot.MTIME]), follow_symlinks=False)
    return verdict
