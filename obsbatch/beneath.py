"""Paths beneath a restore's target, resolved one component at a time and never through a symlink.

A restore runs as root and writes names that came from the store. A path joined as a string and handed to
os.makedirs, open, chmod or rename follows every symlink on its way: a `target/etc -> /etc` already in the
target (or planted by a local user between two calls, or made by an earlier restore of another snapshot)
turns `etc/passwd` into /etc/passwd. So every path is entered from an open directory fd of the target, one
component at a time, with openat(2) O_DIRECTORY|O_NOFOLLOW (ELOOP on a symlink, ENOTDIR on anything else that
is not a directory), and every create, rename, link, chmod, chown and utime is done relative to the last
directory fd (`dir_fd=`, `follow_symlinks=False`), as restic's restorer and GNU tar do. What is held is the
directory that was beneath the target when it was opened; moving it elsewhere afterwards moves it with its
contents, it does not redirect a write.

Names are checked before they get here (`valid_name`, the one check of a name read from the store).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterator, Optional

#: uid_t and gid_t are 32 bits on Linux, and (uid_t)-1 means "leave unchanged" to chown(2): not an owner.
MAX_ID = 2 ** 32 - 2

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def valid_name(name: bytes) -> bool:
    """Whether `name` is one path component a restore may create: not empty, no '/', no NUL, not '.' or '..'.
    Every name read from the store (a snapshot entry's, a key's segment) passes here before any use."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def valid_path(rel: bytes) -> bool:
    """Whether `rel` is a relative path of valid names (valid_name), so that it stays beneath the target."""
    return bool(rel) and all(valid_name(part) for part in rel.split(b"/"))


class InTheWay(OSError):
    """A component of a path beneath the target is there but is not a directory (a symlink, a file, a
    device...): it is never followed. `rel` is that component's path, `what` what it is."""

    def __init__(self, rel: bytes, what: str):
        super().__init__(errno.ENOTDIR, f"{os.fsdecode(rel)} is {what}, not a directory; it is never followed")
        self.rel = rel
        self.what = what


def kind(st: os.stat_result) -> str:
    """What an lstat result is, in words, for a sentence."""
    mode = st.st_mode
    for test, words in ((stat.S_ISLNK, "a symlink"), (stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"),
                        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a device"


def open_root(target: bytes) -> int:
    """The target itself, opened as a directory (the operator named it, so a symlink to it is followed)."""
    return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_directory(root_fd: int, rel: bytes, make: Optional[int] = None, replace: bool = False) -> int:
    """A new fd of the directory `rel` beneath `root_fd` ("" is the root itself), entered component by
    component with O_NOFOLLOW. A missing component is made with mode `make` (FileNotFoundError when `make` is
    None); one that is not a directory raises InTheWay, or with `replace` is removed and a directory made in
    its place (never followed: unlinkat(2) removes a symlink itself). The caller closes the fd."""
    fd = os.dup(root_fd)
    done = b""
    try:
        for name in rel.split(b"/") if rel else ():
            done = done + b"/" + name if done else name
            child = _enter(fd, name, done, make, replace)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _enter(parent: int, name: bytes, rel: bytes, make: Optional[int], replace: bool) -> int:
    for _ in range(2):  # a second time after making (or replacing with) the directory
        try:
            return os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if make is None:
                raise
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise  # a directory that would not open as one: not ours to judge
            if not replace:
                raise InTheWay(rel, kind(st)) from None
            os.unlink(name, dir_fd=parent)
        try:
            os.mkdir(name, make if make is not None else 0o700, dir_fd=parent)
        except FileExistsError:
            pass  # made by someone else meanwhile: the next open judges what it is
    raise InTheWay(rel, "replaced again as it was made")


@contextlib.contextmanager
def directory(target: bytes, rel: bytes, make: Optional[int] = None, replace: bool = False) -> Iterator[int]:
    """open_directory from the target's path, for one use: the fd, closed on leaving."""
    root = open_root(target)
    try:
        fd = open_directory(root, rel, make, replace)
    finally:
        os.close(root)
    try:
        yield fd
    finally:
        os.close(fd)


def lstat(dir_fd: int, name: bytes) -> Optional[os.stat_result]:
    """lstat of `name` in the directory `dir_fd`; None if nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_file(dir_fd: int, name: bytes) -> int:
    """A regular file in `dir_fd`, for reading, never through a symlink (ELOOP)."""
    return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


class Directories:
    """The parent's open directories beneath one target during a restore's passes: the last one entered is
    kept (a snapshot's entries come a directory at a time), so each directory is walked to once per pass."""

    def __init__(self, target: bytes):
        self.target = target
        self.root = open_root(target)
        self._rel: Optional[bytes] = None
        self._fd = -1

    def get(self, rel: bytes, make: Optional[int] = None, replace: bool = False) -> int:
        """The fd of `rel` (open_directory); owned by this object, valid until the next get or close."""
        if rel != self._rel:
            fd = open_directory(self.root, rel, make, replace)
            self._drop()
            self._rel, self._fd = rel, fd
        return self._fd

    def _drop(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._rel, self._fd = None, -1

    def close(self) -> None:
        self._drop()
        os.close(self.root)


def set_xattrs(where, pairs, name: Optional[bytes] = None) -> list:
    """Set extended attributes ((name, value) pairs, in order) on the open fd `where`, or with `name` on that
    entry of the directory fd `where` without following it (a symlink, a FIFO, a device: setxattr(2) has no
    dir_fd form, so the entry is reached as /proc/self/fd/N/NAME, whose last component is not followed and
    whose directory is the one held open). The ones the kernel refuses: [(name, strerror)] (EPERM: trusted.*
    and security.* need root, user.* cannot be on a symlink; ENOTSUP: a filesystem without them)."""
    target = where if name is None else os.fsencode(f"/proc/self/fd/{where}/") + name
    refused = []
    for attribute, value in pairs:
        try:
            if name is None:
                os.setxattr(target, attribute, value)
            else:
                os.setxattr(target, attribute, value, follow_symlinks=False)
        except OSError as exc:
            refused.append((attribute, exc.strerror or str(exc)))
    return refused
