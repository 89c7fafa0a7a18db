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

Every path is entered beneath the target by directory fd, never through a symlink (obsbatch.beneath): a
symlink, file or device where the snapshot has a directory is a conflict, named once and left untouched
(what would go beneath it is a conflict too), or with --overwrite is replaced by the directory. Every entry
is checked before use (s3.snapshots.entry_problem: one path component, a known type, sane numbers); one that
fails is a failure named `DamagedEntry`, left out with what is beneath it, and the rest of the snapshot is
restored (exit 1): after a disaster the genuine files are wanted back, and nothing a damaged entry names is
ever written. A forged record that names only valid entries is what signatures are for (--public-key).
"""

from __future__ import annotations

import os
import stat as statmod
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

import structlog

from obsbatch import beneath, keys, snapshot
from obsbatch.models import Kind, Outcome, Reason, RestoreItem, display, undisplay
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
        #: The name restored for each hardlink group, by group (link targets of its other names), relative.
        self._first_names: Dict[str, bytes] = {}
        #: Components found in the way of a directory (a symlink, a file), each named once.
        self._in_the_way: Set[bytes] = set()
        #: The files (display paths) that were neither restored nor found identical: a conflict left a local
        #: file of other bytes there, or the object failed. Few, whatever the tree. A hardlink group whose first
        #: name is one of them gets no other name: linking to it would give them bytes nobody checked.
        self._not_restored: Set[str] = set()
        #: Entries whose trusted.* or security.* attributes were left out (they need root), named once at the end.
        self._privileged_left_out = 0
        summary.observers.append(self._observe)

    def _xattrs(self, entry: list) -> tuple:
        """The entry's extended attributes to set, ((name, value bytes), ...): all of them as root; otherwise
        user.* and the ACLs only (trusted.* and security.* need CAP_SYS_ADMIN / CAP_SETFCAP), the rest counted
        and named once at the end (restore.xattrs_left_out)."""
        import base64

        found = snapshot.xattrs(entry)
        pairs = tuple((name, base64.b64decode(value)) for name, value in sorted(found.items())
                      if self.chown or not name.startswith(("trusted.", "security.")))
        if len(pairs) < len(found):
            self._privileged_left_out += 1
        return pairs

    def _observe(self, outcome: Outcome) -> None:
        if outcome.kind is not Kind.RESTORED and outcome.reason is not Reason.IDENTICAL:
            self._not_restored.add(outcome.path)

    def _listings(self, damaged: Optional[Callable[[bytes, str], None]]) -> Iterator[Tuple[bytes, list]]:
        """(relative directory, [(relative path, entry) of each entry --include/--exclude keep]) of every
        directory, parents before children, each entry checked (snapshots.walk)."""
        excluded = self.excluded
        walked = snapshots.walk(self.trees, self.record["root"], damaged or (lambda where, problem: None),
                                snapshots.entry_budget(self.record))
        for rel_dir, entries in walked:
            kept = []
            for entry in entries:
                name = entry[snapshot.NAME]
                rel = rel_dir + b"/" + name if rel_dir else name
                if excluded is None or entry[snapshot.TYPE] == snapshot.DIRECTORY or not excluded(rel):
                    kept.append((rel, entry))
            yield rel_dir, kept

    def _damaged(self, where: bytes, problem: str) -> None:
        self.summary.add(Outcome(Kind.FAILED, display(os.path.join(self.target, where)), error_type="DamagedEntry",
                                 message=f"the snapshot's entry {problem}; it is not restored, nor anything "
                                         "beneath it (altered or forged in the store?)"))

    def _directory(self, directories: beneath.Directories, rel_dir: bytes) -> Union[int, Callable[[bytes], Outcome]]:
        """The fd of `rel_dir` beneath the target, made (0700) where missing. Where it cannot be had, what
        happened is named once, and what comes back instead makes the Outcome of each file beneath it: a
        conflict where something that is not a directory is in the way (--overwrite replaces it), a failure
        where the directory cannot be made or entered (a read-only target, no inodes left)."""
        try:
            return directories.get(rel_dir, make=_WHILE_RESTORING, replace=self.config.overwrite)
        except beneath.InTheWay as exc:
            if exc.rel not in self._in_the_way:
                self._in_the_way.add(exc.rel)
                self.summary.add(Outcome(Kind.SKIPPED, display(os.path.join(self.target, exc.rel)),
                                         reason=Reason.CONFLICT, message=f"{exc.strerror}; it is left untouched, "
                                         "and nothing beneath it is restored (--overwrite replaces it)"))
            return lambda rel: Outcome(Kind.SKIPPED, display(os.path.join(self.target, rel)), reason=Reason.CONFLICT,
                                       message="a directory on its way is not one here (named above); left untouched")
        except OSError as exc:
            self._failed(os.path.join(self.target, rel_dir), exc)
            error_type, why = type(exc).__name__, f"its directory could not be made or entered: {exc.strerror or exc}"
            return lambda rel: Outcome(Kind.FAILED, display(os.path.join(self.target, rel)), error_type=error_type,
                                       message=why)

    def items(self) -> Iterator[Union[RestoreItem, Outcome]]:
        """Pass 1: make the directories, and a RestoreItem for each file's first name."""
        if self.config.restore_dry_run:
            yield from self._items(None)
            return
        directories = beneath.Directories(self.target)
        try:
            yield from self._items(directories)
        finally:
            directories.close()

    def _items(self, directories: Optional[beneath.Directories]) -> Iterator[Union[RestoreItem, Outcome]]:
        prefix = self.record["prefix"]
        encode = keys.encoder(self.record)
        for rel_dir, entries in self._listings(self._damaged):
            # Every directory is made as its own listing comes, the empty ones too; with --include/--exclude
            # those they select (`--include docs`: docs and every directory beneath it, empty or not) and those
            # on the way to a kept file. None: not judged yet (or a dry run, which makes nothing).
            entered = None
            selected = self.excluded is None or (rel_dir and not self.excluded(rel_dir))
            if directories is not None and selected:
                entered = self._directory(directories, rel_dir)
            for rel, entry in entries:
                if self.summary.selected is not None and not (entry[snapshot.TYPE] == snapshot.DIRECTORY
                                                              and self.excluded(rel)):
                    self.summary.selected += 1  # a file _listings kept, or a directory --include names
                if entry[snapshot.TYPE] != snapshot.FILE:
                    continue
                if directories is not None and entered is None:
                    entered = self._directory(directories, rel_dir)
                if callable(entered):  # not to be had: a conflict or a failure for each file beneath
                    yield entered(rel)
                    continue
                group = entry[snapshot.LINK]
                if group:
                    if group in self._first_names:
                        continue  # linked to the first name in pass 2
                    self._first_names[group] = rel
                self.summary.listed += 1  # the objects to read, as a listing's restore counts them
                yield RestoreItem(key=prefix + encode(rel), display=display(os.path.join(self.target, rel)),
                                  target=self.target, rel=rel, size=entry[snapshot.SIZE],
                                  sha256=entry[snapshot.CONTENT], version_id=entry[snapshot.VERSION],
                                  overwrite=self.config.overwrite, chown=self.chown,
                                  listed_mtime_ns=entry[snapshot.MTIME], xattrs=self._xattrs(entry))

    def finish(self) -> None:
        """Pass 2: links, special files, then every directory's attributes, deepest first. The umask is 0 while
        it runs: mknod(2) and mkdir(2) then give exactly the mode asked for, with no chmod by name after."""
        old_umask = os.umask(0)
        directories = beneath.Directories(self.target)
        try:
            self._finish(directories)
        finally:
            directories.close()
            os.umask(old_umask)
        if self._privileged_left_out:
            log.warning("restore.xattrs_left_out", entries=self._privileged_left_out,
                        detail="their trusted.* and security.* extended attributes (file capabilities among them) "
                               "are set only by a restore run as root; the rest of each entry is restored")

    def _finish(self, directories: beneath.Directories) -> None:
        made: List[Tuple[bytes, list]] = []
        for rel_dir, entries in self._listings(None):
            for rel, entry in entries:
                kind = entry[snapshot.TYPE]
                if kind == snapshot.DIRECTORY:
                    made.append((rel, entry))
                    continue
                if kind == snapshot.FILE and not entry[snapshot.LINK]:
                    continue
                dir_fd = self._directory(directories, rel_dir)  # the same fd for a listing (Directories)
                if callable(dir_fd):
                    continue  # in the way, or not made: named in pass 1
                name = entry[snapshot.NAME]
                if kind == snapshot.SYMLINK:
                    self._made(rel, "symlinks", _symlink, dir_fd, name, entry, self._xattrs(entry))
                elif kind == snapshot.FILE:
                    first = self._first_names.get(entry[snapshot.LINK])
                    if first is None or first == rel:
                        continue
                    if display(os.path.join(self.target, first)) in self._not_restored:
                        self._made(rel, "hardlinks", lambda overwrite: "no first name")
                    else:
                        self._made(rel, "hardlinks", _hardlink, dir_fd, name, directories.root, first)
                else:
                    self._made(rel, "special", _special, dir_fd, name, entry, self.chown, self._xattrs(entry))
        # Pre-order reversed: every directory after all of its descendants. With --include/--exclude, only
        # those made for a kept entry.
        for rel, entry in reversed(made):
            try:
                fd = beneath.open_directory(directories.root, rel)
            except (FileNotFoundError, beneath.InTheWay):
                continue  # not made (filtered), or in the way (named in pass 1)
            except OSError as exc:
                self._failed(os.path.join(self.target, rel), exc)
                continue
            try:
                if self.chown:
                    os.fchown(fd, entry[snapshot.UID], entry[snapshot.GID])
                os.fchmod(fd, entry[snapshot.MODE])
                self._xattrs_refused(rel, beneath.set_xattrs(fd, self._xattrs(entry)))
                os.utime(fd, ns=(entry[snapshot.MTIME], entry[snapshot.MTIME]))
                self.summary.entries["directories"] += 1
            except OSError as exc:
                self._failed(os.path.join(self.target, rel), exc)
            finally:
                os.close(fd)

    def _xattrs_refused(self, rel: bytes, refused: list) -> None:
        for attribute, why in refused:
            log.warning("restore.xattr_left_out", path=display(os.path.join(self.target, rel)), xattr=attribute,
                        error=why, detail="the entry and its other attributes are restored")

    def _made(self, rel: bytes, counter: str, make: Callable, *args) -> None:
        """Make one entry that is not a file's bytes: counted, or named in the summary when it cannot be."""
        dest = os.path.join(self.target, rel)
        try:
            verdict = make(self.config.overwrite, *args)
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
                        detail="the name it shares its inode with was not restored (see the conflict or failure "
                               "above)")
        else:
            self.summary.entries[counter] += 1

    def _failed(self, dest: bytes, exc: OSError) -> None:
        self.summary.add(Outcome(Kind.FAILED, display(dest), error_type=type(exc).__name__,
                                 message=f"cannot make {display(dest)}: {exc.strerror or exc}"))


def _replaceable(dir_fd: int, name: bytes, overwrite: bool, same: Callable[[os.stat_result], bool]) -> Optional[str]:
    """None when `name` in `dir_fd` is free (or was removed, with --overwrite); "identical" or "conflict"
    otherwise. A directory is never removed."""
    st = beneath.lstat(dir_fd, name)
    if st is None:
        return None
    if same(st):
        return "identical"
    if not overwrite or statmod.S_ISDIR(st.st_mode):
        return "conflict"
    os.unlink(name, dir_fd=dir_fd)
    return None


def _symlink(overwrite: bool, dir_fd: int, name: bytes, entry: list, xattrs: tuple = ()) -> Optional[str]:
    """A symlink of the snapshot: made as it was recorded (its target is never followed by the restore), with
    its extended attributes (Linux allows only trusted.* and security.* on a symlink)."""
    target = undisplay(entry[snapshot.CONTENT])
    verdict = _replaceable(dir_fd, name, overwrite,
                           lambda st: statmod.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == target)
    if verdict is None:
        os.symlink(target, name, dir_fd=dir_fd)
        if os.geteuid() == 0:
            os.chown(name, entry[snapshot.UID], entry[snapshot.GID], dir_fd=dir_fd, follow_symlinks=False)
        _set_xattrs(dir_fd, name, xattrs)
        os.utime(name, ns=(entry[snapshot.MTIME], entry[snapshot.MTIME]), dir_fd=dir_fd, follow_symlinks=False)
    return verdict


def _set_xattrs(dir_fd: int, name: bytes, xattrs: tuple) -> None:
    for attribute, why in beneath.set_xattrs(dir_fd, xattrs, name):
        log.warning("restore.xattr_left_out", name=display(name), xattr=attribute, error=why,
                    detail="the entry and its other attributes are restored")


def _hardlink(overwrite: bool, dir_fd: int, name: bytes, root_fd: int, first: bytes) -> Optional[str]:
    """Another name of a hardlink group: linkat(2) to the group's first name, both beneath the target and
    neither followed if a symlink (linkat without AT_SYMLINK_FOLLOW links the symlink itself)."""
    first_dir, _, first_name = first.rpartition(b"/")
    try:
        first_fd = beneath.open_directory(root_fd, first_dir)
    except (FileNotFoundError, beneath.InTheWay):
        return "no first name"
    try:
        first_st = beneath.lstat(first_fd, first_name)
        if first_st is None or not statmod.S_ISREG(first_st.st_mode):  # not restored (failed): said there
            return "no first name"
        verdict = _replaceable(dir_fd, name, overwrite,
                               lambda st: (st.st_dev, st.st_ino) == (first_st.st_dev, first_st.st_ino))
        if verdict is None:
            os.link(first_name, name, src_dir_fd=first_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        return verdict
    finally:
        os.close(first_fd)


_SPECIAL_TYPES = {snapshot.FIFO: statmod.S_IFIFO, snapshot.SOCKET: statmod.S_IFSOCK,
                  snapshot.CHAR_DEVICE: statmod.S_IFCHR, snapshot.BLOCK_DEVICE: statmod.S_IFBLK}


def _special(overwrite: bool, dir_fd: int, name: bytes, entry: list, as_root: bool, xattrs: tuple = ()) -> Optional[str]:
    """A FIFO, socket or device, made by mknodat(2) in its directory (the umask is 0: TreeRestore.finish)."""
    kind = _SPECIAL_TYPES.get(entry[snapshot.TYPE])
    if kind is None:
        return "unknown type"
    if kind != statmod.S_IFIFO and not as_root:
        return "not root"
    verdict = _replaceable(dir_fd, name, overwrite, lambda st: statmod.S_IFMT(st.st_mode) == kind)
    if verdict is None:
        rdev = int(entry[snapshot.CONTENT] or 0)
        os.mknod(name, kind | entry[snapshot.MODE], rdev, dir_fd=dir_fd)
        if as_root:
            os.chown(name, entry[snapshot.UID], entry[snapshot.GID], dir_fd=dir_fd, follow_symlinks=False)
        _set_xattrs(dir_fd, name, xattrs)
        os.utime(name, ns=(entry[snapshot.MTIME], entry[snapshot.MTIME]), dir_fd=dir_fd, follow_symlinks=False)
    return verdict
