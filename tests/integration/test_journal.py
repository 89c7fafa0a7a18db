"""The state journal and the run lock, counting requests through the fault proxy."""

import os
import signal
import socket
import sqlite3
import time
import urllib.parse

import pytest

from obsbatch.testing.holders import Holder
from tests.conftest import AGE_RULE, finish, make_tree, objects, run_obsbatch, server_args, settled, start_obsbatch
from obsbatch.testing.faultproxy import Fault


#: Requests for data keys, not for obsbatch's own records beside them (snapshots, manifests).
DATA = r"^(?!.*\.obsbatch/)"


def test_no_change_rerun_sends_no_upload_and_edits_are_uploaded(tmp_path, s3, s3server, prefix, proxy):
    src, state = tmp_path / "src", tmp_path / "state.db"
    files = make_tree(src, {f"d{i}/f{j}.txt": os.urandom(100) for i in range(3) for j in range(5)})
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state]
    first = run_obsbatch(*args, env=s3server.env())
    assert first.returncode == 0 and first.summary["uploaded"] == 15, first
    puts = proxy.count("PUT", DATA)

    requests = len(proxy.seen)
    again = run_obsbatch(*args, env=s3server.env())
    assert again.returncode == 0, again
    # Two requests: the snapshot's record (issue #20), then this host's fleet marker (issue #22); no upload,
    # no pre-flight (issue #5), no new tree.
    assert [(method, path.split("/")[-2:]) for method, path, *_ in proxy.seen[requests:]] == [
        ("PUT", ["snapshots", f"{again.summary['snapshot']}.json"]),
        ("PUT", [socket.gethostname(), urllib.parse.quote(urllib.parse.quote(prefix, safe=""), safe="") + ".json"]),
    ], proxy.seen[requests:]
    assert again.summary["skipped"] == {"unchanged": 15} and again.summary["uploaded"] == 0

    # Three edits: an append, a new file, and a same-size rewrite with the mtime put back (only ctime moves).
    with open(src / "d0/f0.txt", "ab") as f:
        f.write(b"+")
    (src / "d1/new.txt").write_bytes(b"new")
    target = src / "d2/f4.txt"
    before = os.stat(target)
    target.write_bytes(os.urandom(100))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    for p in (src / "d0/f0.txt", src / "d1/new.txt"):
        old = time.time() - 3600
        os.utime(p, (old, old))
    third = run_obsbatch(*args, env=s3server.env())
    assert third.returncode == 0, third
    assert proxy.count("PUT", DATA) == puts + 3
    assert third.summary["uploaded"] == 3 and third.summary["skipped"] == {"unchanged": 13}
    stored = objects(s3, s3server.bucket, prefix)
    assert stored["d2/f4.txt"] == target.read_bytes() and stored["d0/f0.txt"] == files["d0/f0.txt"] + b"+"


def _journal_rows(state):
    db = sqlite3.connect(str(state))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return dict(db.execute("SELECT key, size FROM uploads").fetchall())
    finally:
        db.close()


@pytest.mark.serial
@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_loses_nothing(tmp_path, s3, s3server, prefix, proxy):
    src, state = tmp_path / "src", tmp_path / "state.db"
    files = make_tree(src, {f"f{i:02}.txt": os.urandom(50 + i) for i in range(30)})
    proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=0.25, times=None))
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state, "--max-concurrent", 2]
    proc = start_obsbatch(*args, env=s3server.env(), new_session=True)
    deadline = time.monotonic() + 60
    while proxy.count("PUT", DATA) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.5)  # past a journal commit (every 2 s)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent, its workers and its fork server, mid-upload
    finish(proc)
    rows = _journal_rows(state)
    stored = objects(s3, s3server.bucket, prefix)
    assert 0 < len(rows) < 30, rows  # some were committed before the kill, not all
    for key, size in rows.items():  # every journaled file really is stored, with its size
        assert len(stored[key[len(prefix):]]) == size

    proxy.faults.clear()
    again = run_obsbatch(*args, env=s3server.env())
    assert again.returncode == 0, again
    assert objects(s3, s3server.bucket, prefix) == files
    assert len(_journal_rows(state)) == 30
    assert again.summary["skipped"].get("unchanged", 0) == len(rows)


@pytest.mark.serial
def test_overlapping_run_exits_75_and_sigterm_flushes_the_journal(tmp_path, s3, s3server, prefix, proxy):
    src, state = tmp_path / "src", tmp_path / "state.db"
    make_tree(src, {f"f{i}.txt": b"x" for i in range(40)})
    hold = proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=0.3, times=None))
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state, "--max-concurrent", 2]
    first = start_obsbatch(*args, env=s3server.env())
    assert hold.arrived.wait(60)
    second = run_obsbatch(*args, env=s3server.env(), timeout=30)
    assert second.returncode == 75, second
    [fatal] = second.find("run.fatal")
    assert "another obsbatch run is already backing up" in fatal["error"]

    time.sleep(1)
    first.send_signal(signal.SIGTERM)
    result = finish(first)
    assert result.returncode == 143, result
    uploaded = result.summary["uploaded"]
    assert 0 < uploaded < 40
    assert len(_journal_rows(state)) == uploaded  # flushed on the way out, not lost with the batch



@pytest.mark.slow
def test_file_rewritten_in_place_during_slow_multipart_is_never_committed_torn(tmp_path, s3, s3server, prefix,
                                                                              proxy):
    import threading

    src = tmp_path / "src"
    size = 11 * 1024 * 1024  # three 5 MiB parts
    path = src / "big.bin"
    make_tree(src, {"big.bin": bytes([0]) * size})
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--no-state", "--min-age", 0,
            "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB"]

    def rewrite_while(running: threading.Event, started: threading.Event, counter: list):
        """Open-write-close the whole file in place again and again, putting the mtime back each time."""
        st = os.stat(path)
        started.wait(60)
        while running.is_set():
            counter[0] += 1
            with open(path, "r+b") as f:
                f.write(bytes([counter[0] % 251]) * size)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            time.sleep(0.05)

    for _ in range(3):
        # Part 1 is held; the rewriting starts the moment it arrives, so parts 2 and 3 are read from newer
        # versions than part 1: exactly the torn object that must never be committed.
        hold = proxy.add(Fault(method="PUT", path=r"big\.bin\?.*partNumber=1\b", action="hold", delay=0.6))
        running, counter = threading.Event(), [0]
        running.set()
        writer = threading.Thread(target=rewrite_while, args=(running, hold.arrived, counter))
        writer.start()
        try:
            result = run_obsbatch(*args, env=s3server.env())
        finally:
            running.clear()
            hold.arrived.set()
            writer.join()
        # The tree's only file could not be stored: no empty snapshot becomes the latest, and the run is not green.
        assert result.returncode == 1 and result.summary["snapshot_withheld"], result
        assert counter[0] >= 3, "the file was not rewritten during the upload"
        assert result.summary["uploaded"] == 0 and result.summary["deferred"] == {"changed": 1}, result.summary
        assert objects(s3, s3server.bucket, prefix) == {}  # nothing torn was committed
        assert s3.list_multipart_uploads(Bucket=s3server.bucket, Prefix=prefix).get("Uploads", []) == []

    # Once the writer has stopped, one consistent version lands.
    final = run_obsbatch(*args, env=s3server.env())
    assert final.returncode == 0 and final.summary["uploaded"] == 1, final
    body = objects(s3, s3server.bucket, prefix)["big.bin"]
    assert body == path.read_bytes() and len(set(body)) == 1  # one byte pattern: one version


def test_an_upload_the_server_misreports_is_not_journaled(tmp_path, s3server, prefix, proxy):
    src, state = tmp_path / "src", tmp_path / "state.db"
    make_tree(src, {"a.txt": b"a", "b.txt": b"b"})
    proxy.add(Fault(method="PUT", path=r"a\.txt$", action="etag", code="0" * 32))
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state]
    first = run_obsbatch(*args, env=s3server.env())
    assert first.returncode == 1 and first.summary["failed_by_type"] == {"NotVerified": 1}, first
    assert set(_journal_rows(state)) == {prefix + "b.txt"}
    again = run_obsbatch(*args, env=s3server.env())
    assert again.returncode == 0 and again.summary["uploaded"] == 1, again  # a.txt again, b.txt unchanged
    assert proxy.count("PUT", r"a\.txt$") == 2


def test_a_file_deferred_longer_than_max_defer_is_reported_stuck_until_it_is_backed_up(tmp_path, s3server,
                                                                                        prefix):
    src, state = tmp_path / "src", tmp_path / "state.db"
    make_tree(src, {"ok.txt": b"ok", "busy.log": b"always being written"})
    args = ["--source", src, *server_args(s3server, prefix), "--state", state, "--max-defer", "1s"]
    with Holder((src / "busy.log", os.O_WRONLY | os.O_APPEND)):  # a writer that never lets go
        first = run_obsbatch(*args, env=s3server.env())
        assert first.returncode == 0 and first.summary["deferred"] == {"open_for_write": 1}, first
        assert not first.find("file.stuck")  # deferred for the first time: not stuck yet
        time.sleep(1.2)
        second = run_obsbatch(*args, env=s3server.env())
    assert second.returncode == 3, second
    [stuck] = second.find("file.stuck")
    assert stuck["path"].endswith("busy.log") and stuck["times"] == 2 and stuck["reason"] == "open_for_write"
    assert second.summary["stuck"] == 1
    # Once it is backed up, the deferral ends: no more stuck reports.
    third = run_obsbatch(*args, env=s3server.env())
    assert third.returncode == 0 and third.summary["uploaded"] == 1, third
    db = sqlite3.connect(str(state))
    assert db.execute("SELECT count(*) FROM deferred").fetchone() == (0,)
    db.close()


def test_move_mode_removes_exactly_the_verified_files(tmp_path, s3, s3server, prefix, proxy, holder):
    src = tmp_path / "src"
    files = make_tree(src, {"a.txt": b"a", "sub/b.txt": b"b", "held.log": b"log", "denied.txt": b"no"})
    settled(AGE_RULE)
    (src / "young.txt").write_bytes(b"new")
    proxy.add(Fault(method="PUT", path=r"denied\.txt", action="status", status=403, code="AccessDenied", times=None))
    holder((src / "held.log", os.O_WRONLY))
    result = run_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--delete-source",
                          "--min-age", AGE_RULE, env=s3server.env())
    assert result.returncode == 1, result  # denied.txt failed
    remaining = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    # Uploaded and verified: gone. Held open, too new, failed: kept. Directories: kept.
    assert remaining == ["denied.txt", "held.log", "sub", "young.txt"]
    assert objects(s3, s3server.bucket, prefix) == {"a.txt": files["a.txt"], "sub/b.txt": files["sub/b.txt"]}
    assert result.summary["deleted"] == 2
    assert sorted(e["path"].rsplit("/", 1)[-1] for e in result.find("file.deleted")) == ["a.txt", "b.txt"]


def test_move_mode_keeps_a_file_that_changed_after_its_upload(tmp_path, s3server, prefix, proxy):
    import threading

    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"first"})
    # The worker has read and sent the body when the proxy holds the request; the file changes during the
    # hold, after the worker's last re-stat, so the upload itself succeeds with the first version.
    hold = proxy.add(Fault(method="PUT", path=r"a\.txt", action="hold", delay=1.0))

    def change():
        hold.arrived.wait(30)
        with open(src / "a.txt", "ab") as f:
            f.write(b" and more")

    changer = threading.Thread(target=change)
    changer.start()
    result = run_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--delete-source",
                          env=s3server.env())
    changer.join()
    assert result.returncode == 0, result
    assert result.summary["uploaded"] == 1 and result.summary["deleted"] == 0
    assert (src / "a.txt").read_bytes() == b"first and more"  # kept: it is not what was uploaded
    assert result.find("file.kept")


def test_verify_remote_recovers_a_lost_journal_without_uploading_identical_files(tmp_path, s3, s3server, prefix,
                                                                                 proxy):
    src, state = tmp_path / "src", tmp_path / "state.db"
    files = make_tree(src, {"a.txt": b"alpha", "sub/b.txt": b"beta", "big.bin": os.urandom(11 * 1024 * 1024),
                            "edited.txt": b"old"})
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state,
            "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB"]
    assert run_obsbatch(*args, env=s3server.env()).returncode == 0
    os.remove(state)  # the journal is lost
    (src / "edited.txt").write_bytes(b"new")  # same size, different content: must be uploaded
    old = time.time() - 3600
    os.utime(src / "edited.txt", (old, old))
    puts = proxy.count("PUT", DATA) + proxy.count("POST", DATA)
    result = run_obsbatch(*args, "--verify-remote", env=s3server.env())
    assert result.returncode == 0, result
    assert result.summary["skipped"] == {"already_stored": 3}  # the multipart object too
    assert result.summary["uploaded"] == 1
    assert proxy.count("PUT", DATA) + proxy.count("POST", DATA) == puts + 1  # only edited.txt went up
    assert objects(s3, s3server.bucket, prefix)["edited.txt"] == b"new"
    assert len(_journal_rows(state)) == 4  # recorded: the next plain run sends nothing

    # A journaled object that disappeared from the bucket is uploaded again.
    s3.delete_object(Bucket=s3server.bucket, Key=prefix + "a.txt")
    again = run_obsbatch(*args, "--verify-remote", env=s3server.env())
    assert again.returncode == 0 and again.summary["uploaded"] == 1, again
    assert objects(s3, s3server.bucket, prefix)["a.txt"] == files["a.txt"]


def test_preflight_before_the_first_upload_once_the_journal_has_uploads(tmp_path, s3, s3server, prefix, proxy):
    """A first run checks the bucket before walking; later runs check it before their first upload."""
    src, state = tmp_path / "src", tmp_path / "state.db"
    make_tree(src, {"a.txt": b"a", "b.txt": b"b"})
    args = ["--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state]
    assert run_obsbatch(*args, env=s3server.env()).returncode == 0
    # The bucket now looks gone, and one file changed: the check runs, and nothing is uploaded.
    proxy.add(Fault(method="HEAD", path=".", action="status", status=404, code="NoSuchBucket", times=None))
    make_tree(src, {"c.txt": b"c"})
    puts = proxy.count("PUT", DATA)
    gone = run_obsbatch(*args, "--debug", "debug", env=s3server.env())
    assert gone.returncode == 2, gone
    assert "does not exist" in gone.stderr and proxy.count("PUT", DATA) == puts
    assert gone.find("file.skipped", reason="unchanged")  # it walked first: the check waited for an upload
    # A first run (a new journal) fails before walking: no file event at all.
    first = run_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state",
                         tmp_path / "new.db", "--debug", "debug", env=s3server.env())
    assert first.returncode == 2 and not [e for e in first.events if e["event"].startswith("file.")], first


def test_state_lock_and_manifest_are_private_to_their_user(tmp_path, s3, s3server, prefix):
    """Created 0600 in 0700 directories, whatever the caller's umask (issue #6): they list every path."""
    import stat

    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"a"})
    state, manifest = tmp_path / "new" / "dir" / "state.db", tmp_path / "m" / "run.jsonl"
    manifest.parent.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--state", state,
                              "--manifest", manifest, env=s3server.env())
    finally:
        os.umask(old)
    assert result.returncode == 0, result
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "new") == mode(tmp_path / "new" / "dir") == 0o700
    files = [state, manifest, *state.parent.glob("obsbatch-*.lock"), *state.parent.glob("state.db-*")]
    assert len(files) >= 3 and {str(f): mode(f) for f in files} == {str(f): 0o600 for f in files}
    assert mode(manifest.parent) == 0o755  # an existing directory keeps its mode


@pytest.mark.parametrize("gone", ["deleted", "renamed", "excluded"])
def test_a_deferral_ends_when_a_complete_walk_no_longer_finds_the_file(tmp_path, s3server, prefix, gone):
    """Issue #11, defect 2: a file deferred, then deleted, renamed away or excluded kept its deferral row, and
    a new file at the same path, deferred later, inherited it and was reported stuck on its first deferral."""
    src, state = tmp_path / "src", tmp_path / "state.db"
    make_tree(src, {"ok.txt": b"ok", "busy.log": b"being written"})
    args = ["--source", src, *server_args(s3server, prefix), "--state", state, "--max-defer", "1s"]
    with Holder((src / "busy.log", os.O_WRONLY | os.O_APPEND)):
        first = run_obsbatch(*args, env=s3server.env())
    assert first.returncode == 0 and first.summary["deferred"] == {"open_for_write": 1}, first
    if gone == "deleted":
        (src / "busy.log").unlink()
    elif gone == "renamed":
        (src / "busy.log").rename(tmp_path / "elsewhere.log")
    time.sleep(1.2)  # past --max-defer
    extra = ["--exclude", "*.log"] if gone == "excluded" else []
    second = run_obsbatch(*args, *extra, env=s3server.env())
    assert second.returncode == 0 and not second.find("file.stuck"), second
    assert _deferred_rows(state) == []  # the walk was complete and did not find it: its deferral ended
    (src / "busy.log").write_bytes(b"a new file at the same path")
    with Holder((src / "busy.log", os.O_WRONLY | os.O_APPEND)):
        third = run_obsbatch(*args, env=s3server.env())
    assert third.returncode == 0, third  # deferred for the first time: not stuck
    assert not third.find("file.stuck") and third.summary["deferred"] == {"open_for_write": 1}
    assert [(key[len(prefix):], count) for key, count in _deferred_rows(state)] == [("busy.log", 1)]


def _deferred_rows(state):
    db = sqlite3.connect(str(state))
    try:
        return db.execute("SELECT key, count FROM deferred").fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_a_journal_that_cannot_be_written_mid_run_ends_it_with_every_file_accounted_for(tmp_path, s3server, prefix,
                                                                                       proxy):
    """Issue #11, defect 4: an error while a batch's Outcomes were being recorded (here the journal's commit,
    the database locked by another program) lost the rest of that batch and the summary with it."""
    import json

    src, state, manifest = tmp_path / "src", tmp_path / "state.db", tmp_path / "run.jsonl"
    make_tree(src, {f"f{i:02}.txt": b"x" * i for i in range(40)})
    hold = proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=0.3, times=None))
    proc = start_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--state", state,
                          "--manifest", manifest, "--max-concurrent", 2, env=s3server.env())
    assert hold.arrived.wait(60)
    locker = sqlite3.connect(str(state), isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # as an operator's `sqlite3 state.db` in a write transaction would
    try:
        result = finish(proc, timeout=90)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert result.returncode == 2, result
    [fatal] = result.find("run.fatal")
    assert "cannot write the state journal" in fatal["error"] and "locked" in fatal["error"]
    summary = result.summary
    assert summary["aborted"] == fatal["error"] and summary["exit_code"] == 2
    # Every file whose PUT reached the server was handed out, so it has its record: uploaded, or interrupted
    # when its batch was cut short; nothing handed out is missing.
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    files = {r["key"]: r for r in records if r["type"] == "file"}
    put = {path.split("?")[0].split(f"/{prefix}", 1)[1] for method, path, _, _ in proxy.seen
           if method == "PUT" and f"/{prefix}" in path}
    assert put and {prefix + name for name in put} <= set(files)
    keys = [r["key"] for r in records if r["type"] == "file"]
    assert summary["scanned"] == len(files) == len(keys) and summary["uploaded"] >= 1  # each once
    assert {(r["outcome"], r["reason"]) for r in files.values()} <= {("uploaded", None), ("deferred", "interrupted")}
    assert "Traceback" not in result.stderr
