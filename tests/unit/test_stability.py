"""The open-for-write decision on this process's own file descriptors, and the gate's /proc budget.

The gate against other processes holding files open is in tests/functional/test_stability.py."""

import os
import time

import pytest
import structlog

from obsbatch.models import Candidate
from obsbatch.stages.stability import Gate, is_write_mode
from tests.conftest import backdated

MODES = [
    ("O_RDONLY", os.O_RDONLY, False),
    ("O_WRONLY", os.O_WRONLY, True),
    ("O_RDWR", os.O_RDWR, True),
    ("O_APPEND", os.O_WRONLY | os.O_APPEND, True),
    ("O_PATH", getattr(os, "O_PATH", 0o10000000), False),
]


@pytest.mark.parametrize("name,flags,writes", MODES, ids=[m[0] for m in MODES])
def test_write_mode_from_link_mode_and_fdinfo_flags(tmp_path, name, flags, writes):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, flags)
    try:
        assert is_write_mode(os.lstat(f"/proc/self/fd/{fd}").st_mode) is writes
        with open(f"/proc/self/fdinfo/{fd}") as info:
            fdinfo_flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
        # The same decision from the open(2) access mode that fdinfo shows: the link's mode bits must agree.
        assert ((fdinfo_flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)) is writes
    finally:
        os.close(fd)


def _candidate(path):
    st = os.stat(path)
    return Candidate(path=os.fsencode(path), rel=os.fsencode(path.name), key=path.name, stat=st)


def test_gate_scans_proc_once_per_interval_not_per_file(tmp_path):
    files = []
    for i in range(50):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x")
        os.utime(p, (time.time() - 100,) * 2)
        files.append(p)
    gate = Gate(min_age=0, strict=False)
    for p in files:
        assert gate.judge(_candidate(p)) is None
    assert gate.rebuilds == 1


def _judged(tmp_path, mtime_ago: float, ctime_ago: float, min_age: float = 2.0):
    """The gate's verdict on a file whose mtime and ctime are that many seconds ago (negative: ahead)."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    st = backdated(os.stat(path), ctime_ago)
    mtime_ns = time.time_ns() - int(mtime_ago * 1e9)
    whole = list(st[:10])
    whole[8] = mtime_ns // 10 ** 9
    st = os.stat_result(whole + [st.st_atime, mtime_ns / 1e9, st.st_ctime, st.st_atime_ns, mtime_ns, st.st_ctime_ns,
                                 st.st_blksize, st.st_blocks, st.st_rdev])
    return Gate(min_age=min_age, strict=False).judge(Candidate(os.fsencode(path), b"f", "f", st))


def test_a_file_copied_a_moment_ago_with_an_old_mtime_is_held_back_by_its_ctime(tmp_path):
    """`cp -p`, `tar x`, rsync: the mtime says last year, the kernel's ctime says a moment ago (issue #19)."""
    verdict = _judged(tmp_path, mtime_ago=365 * 86400, ctime_ago=0.5)
    assert verdict is not None and verdict.reason.value == "too_new" and "changed" in verdict.message


def test_a_future_mtime_alone_never_defers_a_file_and_is_named_in_a_warning(tmp_path):
    """2040 or 2100 (clock skew, an archive from a machine ahead): deferred at every run for ever, before."""
    with structlog.testing.capture_logs() as logs:
        assert _judged(tmp_path, mtime_ago=-(2100 - 2026) * 365 * 86400, ctime_ago=3600) is None
    [warning] = [e for e in logs if e["event"] == "file.future_mtime"]
    assert warning["path"].endswith("/f") and warning["seconds_ahead"] > 0


def test_a_recent_past_mtime_still_defers(tmp_path):
    verdict = _judged(tmp_path, mtime_ago=0.5, ctime_ago=3600)
    assert verdict is not None and "modified" in verdict.message
    assert _judged(tmp_path, mtime_ago=3600, ctime_ago=3600) is None
