"""The open-for-write decision and the /proc index, on real file descriptors and real processes."""

import os
import pwd
import subprocess
import sys
import time

import pytest

from obsbatch.models import Candidate, Kind, Reason
from obsbatch.stability import Gate, build_index, is_write_flags, is_write_mode

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
        assert is_write_flags(fdinfo_flags) is writes
    finally:
        os.close(fd)


HOLDER = "import os,sys,time; fd=os.open(sys.argv[1], int(sys.argv[2])); print('ready', flush=True); time.sleep(60)"


def hold(path, flags):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(flags)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_index_has_writer_of_other_process_keyed_by_inode(tmp_path):
    written, read, other_name = tmp_path / "w", tmp_path / "r", tmp_path / "hardlink-of-w"
    written.write_bytes(b"x")
    read.write_bytes(b"y")
    os.link(written, other_name)
    writer, reader = hold(written, os.O_WRONLY | os.O_APPEND), hold(read, os.O_RDONLY)
    try:
        index = build_index()
        st_w, st_r, st_link = os.stat(written), os.stat(read), os.stat(other_name)
        assert writer.pid in index.writers[(st_w.st_dev, st_w.st_ino)]
        assert writer.pid in index.writers[(st_link.st_dev, st_link.st_ino)]
        assert (st_r.st_dev, st_r.st_ino) not in index.writers
        assert index.processes > 2
    finally:
        writer.kill(), reader.kill(), writer.wait(), reader.wait()


def _candidate(path):
    st = os.stat(path)
    return Candidate(path=os.fsencode(path), rel=os.fsencode(path.name), stat=st)


def test_gate_defers_young_files_and_open_writers_with_holder(tmp_path):
    young, busy, calm = tmp_path / "young", tmp_path / "busy", tmp_path / "calm"
    for p in (young, busy, calm):
        p.write_bytes(b"data")
    old = time.time() - 100
    os.utime(busy, (old, old))
    os.utime(calm, (old, old))
    writer = hold(busy, os.O_RDWR)
    try:
        gate = Gate(min_age=2, strict=False)
        verdict = gate.judge(_candidate(young))
        assert verdict.kind is Kind.DEFERRED and verdict.reason is Reason.TOO_NEW
        verdict = gate.judge(_candidate(busy))
        assert verdict.kind is Kind.DEFERRED and verdict.reason is Reason.OPEN_FOR_WRITE
        pid, name, user = verdict.holders[0]
        assert pid == writer.pid and name.startswith("python")
        assert user == pwd.getpwuid(os.getuid()).pw_name
        assert gate.judge(_candidate(calm)) is None
    finally:
        writer.kill(), writer.wait()


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


def test_gate_refreshes_index_older_than_min_age(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    os.utime(p, (time.time() - 100,) * 2)
    gate = Gate(min_age=1, strict=False)
    assert gate.judge(_candidate(p)) is None
    writer = hold(p, os.O_WRONLY)
    try:
        time.sleep(1.1)  # the index is now older than --min-age: the next judgement must rebuild it
        verdict = gate.judge(_candidate(p))
        assert verdict is not None and verdict.reason is Reason.OPEN_FOR_WRITE
        assert gate.rebuilds == 2
    finally:
        writer.kill(), writer.wait()
