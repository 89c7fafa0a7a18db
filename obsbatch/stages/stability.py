"""Stage 3, in the parent: is a file stable enough to upload?

A file is eligible when (a) it has not changed in the last `min_age` seconds and (b) no process holds it
open for writing. (a) reads the kernel's ctime, which moves on every write and which no user can set
(utime(2) can set the mtime to anything, and sets the ctime to now), and the mtime when it is in the past:
a file copied with its old mtime (`cp -p`, `tar x`, rsync) a moment ago is still held back, and a future
mtime (clock skew, an archive from a machine ahead in time, `touch -d 2100-01-01`) never defers a file on its
own: it would be deferred at every run, for ever (issue #19). It is uploaded when stable, with a warning. (b) comes from ONE index per pass over `/proc/<pid>/fd`, keyed by (st_dev, st_ino) so that a
second hard-link name or a bind-mount path of an open file is caught too. The index is rebuilt when it is
older than `min_age` (at least every second), never per file.

Why (a) and (b) together suffice, and where they stop: a writer that opened the file before the index was
built is in the index; one that opened it later and wrote has moved the mtime (caught by (a)); one that
opens it while a worker reads is caught by the worker's re-stat after reading (DEFERRED/changed). A writer
that opened before and has not written yet, and closes without writing, is harmless.
"""

from __future__ import annotations

import os
import stat as statmod
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Tuple, Union

import psutil
import structlog

from obsbatch.errors import FdCheckError
from obsbatch.models import Candidate, Kind, Outcome, Reason, display

log = structlog.get_logger()

FileId = Tuple[int, int]

#: The index is never rebuilt more often than this, even with --min-age 0, so /proc is never scanned per file.
MIN_REFRESH_SECONDS = 1.0


def is_write_mode(link_mode: int) -> bool:
    """Whether a `/proc/<pid>/fd/N` link, by its own lstat mode, is open for writing.

    The kernel sets the link's permission bits from the open file's mode: S_IWUSR for FMODE_WRITE, i.e.
    O_WRONLY or O_RDWR (O_APPEND implies one of them), S_IRUSR for FMODE_READ (fs/proc/fd.c,
    tid_fd_update_inode). Readers therefore never block an upload.
    """
    return bool(link_mode & statmod.S_IWUSR)


@dataclass(frozen=True)
class FdIndex:
    """Open-for-write regular files on this host at one moment.

    writers: (st_dev, st_ino) -> PIDs holding it open for writing.
    unreadable: processes whose fd table could not be read (another user's, without CAP_SYS_PTRACE).
    processes: processes looked at.
    built_at: time.monotonic() when the scan started (the index is at least this fresh).
    """

    writers: Dict[FileId, Tuple[int, ...]]
    unreadable: int
    processes: int
    built_at: float


def build_index(proc: str = "/proc") -> FdIndex:
    """Scan every process's fd table once. Cost: one lstat per fd, plus one stat per writable fd."""
    built_at = time.monotonic()
    writers: Dict[FileId, list] = {}
    unreadable = processes = 0
    with os.scandir(proc) as pids:
        for pid_entry in pids:
            if not pid_entry.name.isdigit():
                continue
            processes += 1
            pid = int(pid_entry.name)
            try:
                fds = os.scandir(f"{proc}/{pid}/fd")
            except PermissionError:
                unreadable += 1
                continue
            except OSError:  # exited since the listing (ENOENT, ESRCH)
                continue
            with fds:
                try:
                    for fd in fds:
                        _note_fd(fd, pid, writers)
                except OSError:  # the process exited while we read its table
                    continue
    return FdIndex({k: tuple(v) for k, v in writers.items()}, unreadable, processes, built_at)


def _note_fd(fd: os.DirEntry, pid: int, writers: Dict[FileId, list]) -> None:
    try:
        if not is_write_mode(fd.stat(follow_symlinks=False).st_mode):
            return
        target = fd.stat()  # follows the magic link to the open file itself, even if unlinked or renamed
    except OSError:  # fd closed meanwhile, or a target we may not stat
        return
    if statmod.S_ISREG(target.st_mode):
        writers.setdefault((target.st_dev, target.st_ino), []).append(pid)


def describe_holders(pids: Iterable[int]) -> Tuple[Tuple[int, str, str], ...]:
    """(pid, process name, user) for the audit log; '?' where the process is gone or hidden."""
    out = []
    for pid in pids:
        name = user = "?"
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            user = proc.username()
        except (psutil.Error, KeyError):  # KeyError: a uid with no passwd entry
            pass
        out.append((pid, name, user))
    return tuple(out)


class Gate:
    """Judges Candidates; holds the current FdIndex and rebuilds it when it gets too old."""

    def __init__(self, min_age: float, strict: bool, proc: str = "/proc"):
        self.min_age = min_age
        self.strict = strict
        self.proc = proc
        self.refresh = max(min_age, MIN_REFRESH_SECONDS)
        self.index: FdIndex | None = None
        self.rebuilds = 0
        self._warned = False

    def current_index(self) -> FdIndex:
        """The index, rebuilt first if it is older than the refresh interval. Raises FdCheckError (strict)."""
        if self.index is None or time.monotonic() - self.index.built_at > self.refresh:
            self.index = build_index(self.proc)
            self.rebuilds += 1
            if self.index.unreadable:
                self._incomplete(self.index)
        return self.index

    def _incomplete(self, index: FdIndex) -> None:
        if self.strict:
            raise FdCheckError(
                f"--fd-check strict: the open files of {index.unreadable} of {index.processes} processes cannot be "
                "inspected; run as root (or with CAP_SYS_PTRACE) or use --fd-check best-effort")
        if not self._warned:
            self._warned = True
            log.warning("fd_index.incomplete", unreadable_processes=index.unreadable, processes=index.processes,
                        hint="files those processes write are caught only by --min-age; run as root or with CAP_SYS_PTRACE")

    def judge(self, cand: Candidate) -> Outcome | None:
        """None if the file may be uploaded now, else a DEFERRED Outcome saying why (module docstring)."""
        st = cand.stat
        now = time.time()
        changed = now - st.st_ctime_ns / 1e9
        if changed < self.min_age:  # a ctime ahead of the clock (the clock stepped back) counts as recent too
            return _deferred(cand, Reason.TOO_NEW, f"changed {changed:.1f}s ago, under --min-age {self.min_age:g}s")
        modified = now - st.st_mtime_ns / 1e9
        if 0 <= modified < self.min_age:
            return _deferred(cand, Reason.TOO_NEW, f"modified {modified:.1f}s ago, under --min-age {self.min_age:g}s")
        if modified < 0:
            log.warning("file.future_mtime", path=display(cand.path), seconds_ahead=round(-modified, 1),
                        detail="its mtime is in the future; judged by its ctime, which is older than --min-age")
        pids = self.current_index().writers.get((st.st_dev, st.st_ino))
        if pids:
            return _deferred(cand, Reason.OPEN_FOR_WRITE, "open for writing", describe_holders(pids))
        return None

    def filter(self, items: Iterable[Union[Candidate, Outcome]]) -> Iterator[Union[Candidate, Outcome]]:
        """Pass Outcomes and stable Candidates; turn unstable Candidates into DEFERRED Outcomes."""
        for item in items:
            if isinstance(item, Candidate):
                verdict = self.judge(item)
                if verdict is not None:
                    yield verdict
                    continue
            yield item


def _deferred(cand: Candidate, reason: Reason, message: str, holders: tuple = ()) -> Outcome:
    return Outcome(Kind.DEFERRED, display(cand.path), key=cand.key, reason=reason, size=cand.stat.st_size,
                   mtime_ns=cand.stat.st_mtime_ns, holders=holders, message=message)
