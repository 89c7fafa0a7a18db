"""The gate and the /proc index against real processes that hold files open (obsbatch/testing/holders.py)."""

import os
import pwd
import subprocess
import sys
import time

import pytest

from obsbatch.models import Candidate, Kind, Reason
from obsbatch.stages.stability import Gate, build_index
from obsbatch.testing.holders import Holder
from tests.conftest import backdated


def test_index_has_writer_of_other_process_keyed_by_inode(tmp_path):
    written, read, other_name = tmp_path / "w", tmp_path / "r", tmp_path / "hardlink-of-w"
    written.write_bytes(b"x")
    read.write_bytes(b"y")
    os.link(written, other_name)
    with Holder((written, os.O_WRONLY | os.O_APPEND)) as writer, Holder((read, os.O_RDONLY)):
        index = build_index()
    st_w, st_r, st_link = os.stat(written), os.stat(read), os.stat(other_name)
    assert writer.pid in index.writers[(st_w.st_dev, st_w.st_ino)]
    assert writer.pid in index.writers[(st_link.st_dev, st_link.st_ino)]
    assert (st_r.st_dev, st_r.st_ino) not in index.writers
    assert index.processes > 2


def _candidate(path, changed_ago: float = 0.0):
    st = os.stat(path)
    return Candidate(path=os.fsencode(path), rel=os.fsencode(path.name), key=path.name,
                     stat=backdated(st, changed_ago) if changed_ago else st)


def test_gate_defers_young_files_and_open_writers_with_holder(tmp_path):
    young, busy, calm = tmp_path / "young", tmp_path / "busy", tmp_path / "calm"
    for p in (young, busy, calm):
        p.write_bytes(b"data")
    with Holder((busy, os.O_RDWR)) as writer:
        gate = Gate(min_age=2, strict=False)
        verdict = gate.judge(_candidate(young))
        assert verdict.kind is Kind.DEFERRED and verdict.reason is Reason.TOO_NEW
        verdict = gate.judge(_candidate(busy, changed_ago=100))
        assert verdict.kind is Kind.DEFERRED and verdict.reason is Reason.OPEN_FOR_WRITE
        pid, name, user = verdict.holders[0]
        assert pid == writer.pid and name.startswith("python")
        assert user == pwd.getpwuid(os.getuid()).pw_name
        assert gate.judge(_candidate(calm, changed_ago=100)) is None


def test_gate_refreshes_index_older_than_min_age(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    gate = Gate(min_age=1, strict=False)
    assert gate.judge(_candidate(p, changed_ago=100)) is None
    with Holder((p, os.O_WRONLY)):
        time.sleep(1.1)  # the index is now older than --min-age: the next judgement must rebuild it
        verdict = gate.judge(_candidate(p))
    assert verdict is not None and verdict.reason is Reason.OPEN_FOR_WRITE
    assert gate.rebuilds == 2


# Run in a child: the judgement of one held file, with an audit hook recording every open, directory read,
# process start and ctypes call the Python side makes (audit hooks cannot be removed, hence the child).
SCANNER = """
import json, os, sys
from obsbatch.models import Candidate
from obsbatch.stages.stability import Gate
seen = []
def hook(event, args):
    if event in ("open", "os.scandir", "os.listdir") or event.startswith(
            ("subprocess", "os.exec", "os.posix_spawn", "os.system", "os.fork", "ctypes", "os.kill", "os.pidfd")):
        seen.append([event, str(args[0]) if args else ""])
path = sys.argv[1]
candidate = Candidate(path=os.fsencode(path), rel=b"held", key="held", stat=os.stat(path))
sys.addaudithook(hook)
verdict = Gate(min_age=0, strict=False).judge(candidate)
print(json.dumps({"reason": verdict.reason.value, "holders": verdict.holders, "seen": seen}))
"""


def test_the_fd_scanner_only_reads_proc_never_ptraces_or_opens_another_process_file(tmp_path):
    import json
    import re
    import shutil

    held = tmp_path / "held.bin"
    held.write_bytes(b"x")
    os.utime(held, (time.time() - 100,) * 2)
    trace = tmp_path / "strace.txt"
    # strace (Debian's strace package) sees the system calls themselves, C extensions (psutil) included.
    strace = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=openat,open,ptrace,process_vm_readv,"
              "process_vm_writev,pidfd_getfd"] if shutil.which("strace") else []
    with Holder((held, os.O_WRONLY)) as writer:
        proc = subprocess.run([*strace, sys.executable, "-c", SCANNER, str(held)], capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reason"] == "open_for_write" and out["holders"][0][0] == writer.pid  # it did find the writer
    fd_link = re.compile(r"^/proc/(\d+|self|thread-self)/(task/\d+/)?fd/\d+$")
    opened = [path for event, path in out["seen"] if event == "open"]
    assert opened and all(p.startswith("/proc/") and not fd_link.match(p) for p in opened), opened
    assert str(held) not in json.dumps(out["seen"])
    assert not [e for e in out["seen"] if e[0] not in ("open", "os.scandir", "os.listdir")], out["seen"]
    if not strace:
        pytest.skip("strace is not installed: checked the Python side only (audit hooks)")
    calls = trace.read_text().splitlines()
    assert not [c for c in calls if re.search(r"\b(ptrace|process_vm_readv|process_vm_writev|pidfd_getfd)\(", c)]
    # From the first read of /proc on: only /proc, and the user database behind psutil's username().
    start = next(i for i, c in enumerate(calls) if re.search(r'open(at)?\(AT_FDCWD, "/proc", ', c))
    paths = [m.group(1) for c in calls[start:] for m in [re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)"', c)] if m]
    outside = [p for p in paths if not p.startswith("/proc/") and p != "/proc"
               and not re.match(r"^/etc/(passwd|group|nsswitch\.conf)$|.*/libnss_[a-z]+\.so", p)]
    assert not outside, outside
    assert not [p for p in paths if fd_link.match(p) or p == str(held)], paths
