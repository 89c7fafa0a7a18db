"""The open-for-write decision on this process's own file descriptors, and the gate's /proc budget.

The gate against other processes holding files open is in tests/functional/test_stability.py."""

import os
import time

import pytest

from obsbatch.models import Candidate
from obsbatch.stages.stability import Gate, is_write_mode

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
