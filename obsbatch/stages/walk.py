"""Stage 1: an iterative `os.scandir` walk. It finds regular files and reports everything else; it judges
nothing about stability. Each file gets its object key here, once (obsbatch.keys): the walk builds the
relative path name by name, so it encodes each name once rather than each full path.

Memory stays bounded by the shape of the tree, not its size: one directory is read at a time, files are
yielded as they are read, and only the names of directories still to visit are kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
from typing import Callable, Iterator, Optional, Tuple, Union

import structlog

from obsbatch import keys
from obsbatch.errors import ConfigError
from obsbatch.models import Candidate, Kind, Outcome, Reason, display

log = structlog.get_logger()

# A directory's identity and its parent's chain: a linked list, so each pending directory costs O(1)
# memory however deep it lies, and a loop check walks only the ancestors.
Chain = Optional[Tuple[Tuple[int, int], "Chain"]]

_TYPE_NAMES = ((statmod.S_ISFIFO, "fifo"), (statmod.S_ISSOCK, "socket"), (statmod.S_ISCHR, "character device"),
               (statmod.S_ISBLK, "block device"))


def _is_ancestor(identity: Tuple[int, int], chain: Chain) -> bool:
    while chain is not None:
        if chain[0] == identity:
            return True
        chain = chain[1]
    return False


def _type_name(mode: int) -> str:
    return next((name for test, name in _TYPE_NAMES if test(mode)), "special file")


def _error(path: bytes, reason: Reason, exc: OSError) -> Outcome:
    return Outcome(Kind.ERROR, display(path), reason=reason, error_type=type(exc).__name__,
                   message=f"cannot read {display(path)}: {exc.strerror or exc}")


def check_source(source: str) -> bytes:
    """The source as absolute bytes, or ConfigError with one sentence."""
    path = os.fsencode(os.path.abspath(source))
    source = display(os.fsencode(source))  # argv holds surrogate escapes for non-UTF-8 bytes; logs cannot
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"source directory {source} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"source directory {source} cannot be read: {exc.strerror}") from None
    if not statmod.S_ISDIR(st.st_mode):
        raise ConfigError(f"source {source} is not a directory")
    try:
        os.scandir(path).close()
    except OSError as exc:
        raise ConfigError(f"source directory {source} cannot be read: {exc.strerror}") from None
    return path


def walk(root: bytes, prefix: str = "", follow_symlinks: bool = False, allow_outside: bool = False,
         listed: Optional[Callable[[bytes, list], None]] = None) -> Iterator[Union[Candidate, Outcome]]:
    """Yield a Candidate per regular file under `root`, keyed under `prefix`, and an Outcome for every other entry.

    Symlinks are skipped unless `follow_symlinks`; then a link back to a directory on the current path is
    reported as a loop instead of followed, keyed by (st_dev, st_ino) so bind mounts loop-check too, and a
    link that resolves outside `root` is skipped (`outside_source`) unless `allow_outside`: a backup of
    /sftp/export must not carry /etc because a user could plant a link to it.
    Special files (FIFO, socket, device) are never opened: opening a FIFO would block the run.

    listed(rel, entries): if given, called once a directory has been read in full (the snapshot's record of
    it, issue #20), with its relative path and a list of (name, stat, link target or None) for every entry
    the walk could stat: files, directories, symlinks (lstat) and special files alike. Not called for a
    directory whose reading failed part-way: its record would be incomplete.
    """
    root_st = os.stat(root)
    inside = None if allow_outside else os.path.realpath(root)
    # (directory, its relative path, the key of its files up to their name, its chain of ancestors)
    stack = [(root, b"", prefix, ((root_st.st_dev, root_st.st_ino), None))]
    while stack:
        dirpath, rel_dir, key_dir, chain = stack.pop()
        try:
            entries = os.scandir(dirpath)
        except OSError as exc:
            yield _error(dirpath, Reason.UNREADABLE_DIR, exc)
            continue
        subdirs = []
        noted = [] if listed is not None else None
        complete = True
        with entries:
            while True:
                try:
                    entry = next(entries)
                except StopIteration:
                    break
                except OSError as exc:  # readdir failed part-way (EIO, the directory vanished)
                    yield _error(dirpath, Reason.UNREADABLE_DIR, exc)
                    complete = False
                    break
                rel = rel_dir + b"/" + entry.name if rel_dir else entry.name
                key = key_dir + keys.encode(entry.name)
                item = _judge_entry(entry, rel, key, follow_symlinks, chain, subdirs, inside, noted)
                if item is not None:
                    yield item
        if noted is not None and complete:
            listed(rel_dir, noted)
        # Reversed so that popping visits directories in the order readdir gave them.
        stack.extend(reversed(subdirs))


def _outside(path: bytes, inside: bytes) -> bool:
    """Does the link at `path` resolve outside the directory `inside` (already resolved)?"""
    target = os.path.realpath(path)
    return target != inside and not target.startswith(inside.rstrip(b"/") + b"/")


def _judge_entry(entry: os.DirEntry, rel: bytes, key: str, follow: bool, chain: Chain, subdirs: list,
                 inside: Optional[bytes] = None, noted: Optional[list] = None):
    """The entry's Candidate or Outcome (None for a directory, added to `subdirs`); with `noted`, what the
    walk could stat of it is appended there (walk's `listed`)."""
    path = entry.path
    is_link = False
    try:
        is_link = entry.is_symlink()
        if is_link and not follow:
            if noted is not None:
                noted.append((entry.name, entry.stat(follow_symlinks=False), os.readlink(path)))
                return Outcome(Kind.SKIPPED, display(path), reason=Reason.RECORDED, message="symlink")
            return Outcome(Kind.SKIPPED, display(path), reason=Reason.SYMLINK)
        if is_link and inside is not None and _outside(path, inside):
            # Checked where the link is; what lies under a followed directory link is inside by construction,
            # and each link below it is checked in turn. A link re-pointed after this check leads to another
            # inode, which the worker's stat comparison refuses.
            return Outcome(Kind.SKIPPED, display(path), reason=Reason.OUTSIDE_SOURCE,
                           message="leads outside --source (see --allow-outside-source)")
        st = entry.stat(follow_symlinks=follow)
    except FileNotFoundError:
        # Gone since readdir, or (following links) a link whose target does not exist: nothing to back up,
        # not a failure, but not the same thing (issue #19): the link is still there, pointing nowhere.
        with contextlib.suppress(OSError):
            if is_link:
                return Outcome(Kind.SKIPPED, display(path), reason=Reason.DANGLING_SYMLINK,
                               message=f"points to {display(os.readlink(path))}, which does not exist")
        return Outcome(Kind.SKIPPED, display(path), reason=Reason.VANISHED)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Outcome(Kind.SKIPPED, display(path), reason=Reason.SYMLINK_LOOP, message=str(exc.strerror))
        return _error(path, Reason.UNREADABLE_ENTRY, exc)
    mode = st.st_mode
    if statmod.S_ISDIR(mode):
        identity = (st.st_dev, st.st_ino)
        if _is_ancestor(identity, chain):
            return Outcome(Kind.SKIPPED, display(path), reason=Reason.SYMLINK_LOOP,
                           message="leads back to a directory above it")
        subdirs.append((path, rel, key + "/", (identity, chain)))
        if noted is not None:
            noted.append((entry.name, st, None))
        return None
    if noted is not None:
        noted.append((entry.name, st, None))
    if statmod.S_ISREG(mode):
        return Candidate(path=path, rel=rel, key=key, stat=st)
    # Recorded in the snapshot (noted) it is not left out: a restore makes it again.
    return Outcome(Kind.SKIPPED, display(path), reason=Reason.NOT_REGULAR if noted is None else Reason.RECORDED,
                   message=_type_name(mode))
