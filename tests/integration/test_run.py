"""obsbatch as a real process: real pool, real SeaweedFS, real holders of open files, exit codes."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import (AGE_RULE, UNPRIVILEGED, age, finish, make_tree, objects, run_obsbatch, server_args,
                            settled, start_obsbatch)
from obsbatch.testing.faultproxy import Fault


def test_nested_tree_lands_byte_identical_under_prefix(tmp_path, s3, s3server, prefix):
    files = make_tree(tmp_path, {
        "top.txt": b"top",
        "a/b/c/deep.bin": os.urandom(70_000),
        "a/sibling.txt": b"sibling",
        "empty.dat": b"",
        "данные/файл.txt": "привет".encode(),
        "sp ace/+plus.txt": b"plus",
    })
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), "--max-concurrent", 2,
                          env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == files
    summary = result.summary
    assert summary["uploaded"] == len(files) and summary["failed"] == 0
    assert summary["bytes_uploaded"] == sum(map(len, files.values()))
    assert result.find("run.summary")


def test_non_utf8_name_backed_up_under_escaped_key(tmp_path, s3, s3server, prefix):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt")  # Latin-1 name, not UTF-8
    with open(raw, "wb") as f:
        f.write(b"latin")
    age(raw)
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == {"caf%E9.txt": b"latin"}


def test_files_open_for_writing_are_deferred_with_holder_and_readers_do_not_block(
        tmp_path, s3, s3server, prefix, holder):
    make_tree(tmp_path, {"wronly.log": b"1", "rdwr.db": b"2", "append.log": b"3", "linked.dat": b"4",
                         "reader.txt": b"5", "idle.txt": b"6"})
    os.link(tmp_path / "linked.dat", tmp_path / "other-name-outside-the-tree")
    os.rename(tmp_path / "other-name-outside-the-tree", tmp_path.parent / f"{tmp_path.name}-hardlink")
    writer = holder((tmp_path / "wronly.log", os.O_WRONLY), (tmp_path / "rdwr.db", os.O_RDWR),
                    (tmp_path / "append.log", os.O_WRONLY | os.O_APPEND),
                    # the writer holds the file only through a second hard-link name, outside the tree
                    (tmp_path.parent / f"{tmp_path.name}-hardlink", os.O_WRONLY))
    reader = holder((tmp_path / "reader.txt", os.O_RDONLY))
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 0, result  # deferred files are not failures
    assert objects(s3, s3server.bucket, prefix) == {"reader.txt": b"5", "idle.txt": b"6"}
    deferred = {os.path.basename(e["path"]): e for e in result.find("file.deferred", reason="open_for_write")}
    assert set(deferred) == {"wronly.log", "rdwr.db", "append.log", "linked.dat"}
    for event in deferred.values():
        assert event["holders"][0]["pid"] == writer.pid
        assert event["holders"][0]["name"].startswith("python") and event["holders"][0]["user"]
    assert reader.pid not in [h["pid"] for e in deferred.values() for h in e["holders"]]
    assert result.summary["deferred"] == {"open_for_write": 4}


def test_recently_modified_file_is_deferred(tmp_path, s3, s3server, prefix):
    make_tree(tmp_path, {"old.txt": b"old"})
    settled(AGE_RULE)
    (tmp_path / "fresh.txt").write_bytes(b"fresh")
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), "--min-age", AGE_RULE, env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == {"old.txt": b"old"}
    [event] = result.find("file.deferred", reason="too_new")
    assert event["path"].endswith("fresh.txt")


def test_fifo_and_symlinks(tmp_path, s3, s3server, prefix):
    make_tree(tmp_path, {"real/file.txt": b"real"})
    os.mkfifo(tmp_path / "pipe")  # a FIFO must never hang the run
    os.symlink("real/file.txt", tmp_path / "filelink")
    os.symlink("real", tmp_path / "dirlink")
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env(), timeout=60)
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == {"real/file.txt": b"real"}
    # Recorded in the run's snapshot (a restore makes them again): counted, logged at debug only.
    assert result.summary["skipped"] == {"recorded": 3}
    assert not result.find("file.skipped")

    prefix2 = prefix + "follow/"
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix2), "--follow-symlinks",
                          env=s3server.env(), timeout=60)
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix2) == {"real/file.txt": b"real", "filelink": b"real",
                                                     "dirlink/file.txt": b"real"}


def test_followed_links_stay_inside_the_source_unless_allowed(tmp_path, s3, s3server, prefix):
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    make_tree(src, {"in/file.txt": b"in"})
    make_tree(outside, {"secret.txt": b"outside", "sub/deep.txt": b"deep"})
    os.symlink(outside / "secret.txt", src / "filelink")
    os.symlink(outside, src / "dirlink")
    os.symlink("../src/in/file.txt", src / "back-inside")  # leaves by its path, but resolves inside: followed
    args = ("--source", src, "--follow-symlinks")
    result = run_obsbatch(*args, *server_args(s3server, prefix), env=s3server.env(), timeout=60)
    assert result.returncode == 0, result
    stored = objects(s3, s3server.bucket, prefix)
    assert stored == {"in/file.txt": b"in", "back-inside": b"in"}, stored
    assert result.summary["skipped"].get("outside_source") == 2
    assert sorted(e["path"].rsplit("/", 1)[1] for e in result.find("file.skipped", reason="outside_source")) == \
        ["dirlink", "filelink"]

    allowed = run_obsbatch(*args, "--allow-outside-source", *server_args(s3server, prefix + "all/"),
                           env=s3server.env(), timeout=60)
    assert allowed.returncode == 0, allowed
    assert {"filelink": b"outside", "dirlink/secret.txt": b"outside", "dirlink/sub/deep.txt": b"deep"}.items() <= \
        objects(s3, s3server.bucket, prefix + "all/").items()


def test_multipart_upload_and_file_changed_while_uploading(tmp_path, s3, s3server, prefix, proxy):
    stable = os.urandom(11 * 1024 * 1024)
    make_tree(tmp_path, {"stable.bin": stable, "growing.bin": os.urandom(11 * 1024 * 1024)})
    hold = proxy.add(Fault(method="PUT", path=r"growing\.bin\?.*partNumber=1\b", action="hold", delay=2.0))
    proc = start_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint),
                          "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB", env=s3server.env())
    assert hold.arrived.wait(60), "the upload of growing.bin never started"
    with open(tmp_path / "growing.bin", "ab") as f:  # a writer appends while part 1 is in flight
        f.write(b"more")
    result = finish(proc)
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == {"stable.bin": stable}
    assert [os.path.basename(e["path"]) for e in result.find("file.deferred", reason="changed")] == ["growing.bin"]
    assert s3.list_multipart_uploads(Bucket=s3server.bucket, Prefix=prefix).get("Uploads", []) == []
    assert proxy.count("DELETE", r"growing\.bin\?uploadId=") == 1


@pytest.mark.parametrize("fault", [
    Fault(method="PUT", path=r"\.txt", action="status", status=500, code="InternalError", times=3),
    Fault(method="PUT", path=r"\.txt", action="status", status=503, code="SlowDown", times=3),
    Fault(method="PUT", path=r"\.txt", action="reset", times=3),
    Fault(method="PUT", path=r"\.txt", action="reset_mid_body", times=3),
], ids=["500", "503-SlowDown", "reset", "reset-mid-body"])
def test_transient_faults_are_retried_to_success(tmp_path, s3, s3server, prefix, proxy, fault):
    files = make_tree(tmp_path, {f"f{i}.txt": os.urandom(2000) for i in range(3)})
    proxy.add(fault)
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint),
                          "--max-concurrent", 2, env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == files
    assert fault.hits == 3
    assert result.summary["retries"] == 3 and result.summary["attempts"] == 6


def test_permanent_error_fails_without_retry_and_exits_1(tmp_path, s3, s3server, prefix, proxy):
    make_tree(tmp_path, {"ok.txt": b"ok", "denied.txt": b"no"})
    proxy.add(Fault(method="PUT", path=r"denied\.txt", action="status", status=403, code="AccessDenied", times=None))
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), env=s3server.env())
    assert result.returncode == 1, result
    assert objects(s3, s3server.bucket, prefix) == {"ok.txt": b"ok"}
    [failed] = result.find("upload.failed")
    assert failed["error_type"] == "AccessDenied" and failed["attempts"] == 1
    assert proxy.count("PUT", r"denied\.txt") == 1
    assert result.summary["failed_by_type"] == {"AccessDenied": 1}


def test_retries_exhausted_exit_1(tmp_path, s3server, prefix, proxy):
    make_tree(tmp_path, {"a.txt": b"a"})
    proxy.add(Fault(method="PUT", path=r"a\.txt", action="status", status=503, code="SlowDown", times=None))
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), "--retries", 2,
                          env=s3server.env())
    assert result.returncode == 1, result
    assert result.summary["failed_by_type"] == {"SlowDown": 1}
    assert proxy.count("PUT", r"a\.txt") == 3  # 1 + --retries 2


def test_a_run_with_nothing_to_upload_and_no_good_key_is_one_sentence_exit_2(tmp_path, s3server, prefix):
    """Such a run has no pre-flight (issue #5): its first request is the snapshot record's PUT. A missing or
    rejected key is the pre-flight's sentence and exit 2 there too, never a crash (found: run.crashed with
    NoCredentialsError, from learning the store's URL after the record had failed)."""
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    args = ["--source", tmp_path / "src", *server_args(s3server, prefix), "--state", tmp_path / "state.db"]
    assert run_obsbatch(*args, env=s3server.env()).returncode == 0
    bare = run_obsbatch(*args, env={"AWS_DEFAULT_REGION": "us-east-1"})
    assert bare.returncode == 2 and not bare.find("run.crashed") and "Traceback" not in bare.stderr, bare
    assert "no AWS credentials found" in bare.find("run.fatal")[0]["error"], bare
    wrong = run_obsbatch(*args, env=dict(s3server.env(), AWS_SECRET_ACCESS_KEY="wrong-secret-value-123"))
    assert wrong.returncode == 2 and "credentials were rejected" in wrong.find("run.fatal")[0]["error"], wrong


@pytest.mark.parametrize("case", ["missing-source", "source-is-file", "no-bucket", "bad-secret", "no-credentials"])
def test_fatal_errors_exit_2_with_one_sentence(tmp_path, s3server, prefix, case):
    make_tree(tmp_path, {"a.txt": b"a"})
    env, source, args = dict(s3server.env()), tmp_path, server_args(s3server, prefix)
    expected = {"missing-source": "does not exist", "source-is-file": "is not a directory",
                "no-bucket": "bucket 'no-such-bucket' does not exist", "bad-secret": "credentials were rejected",
                "no-credentials": "no AWS credentials found"}[case]
    if case == "missing-source":
        source = tmp_path / "nope"
    elif case == "source-is-file":
        source = tmp_path / "a.txt"
    elif case == "no-bucket":
        args[1] = "no-such-bucket"
    elif case == "bad-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value-123"
    elif case == "no-credentials":
        env = {"AWS_DEFAULT_REGION": "us-east-1"}
    result = run_obsbatch("--source", source, *args, "--retries", 1, env=env, timeout=60)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    [fatal] = result.find("run.fatal")
    assert expected in fatal["error"]
    assert not result.find("run.start")  # refused before walking
    assert "wrong-secret-value-123" not in result.stderr and s3server.secret_key not in result.stderr


def test_dry_run_uploads_nothing_and_needs_no_server(tmp_path, prefix):
    make_tree(tmp_path, {"a.txt": b"a", "b/c.txt": b"cc"})
    result = run_obsbatch("--source", tmp_path, "--bucket", "any", "--prefix", prefix, "--endpoint",
                          "http://127.0.0.1:9", "--dry-run")
    assert result.returncode == 0, result
    assert result.summary["planned"] == 2 and result.summary["bytes_planned"] == 3
    assert sorted(e["key"] for e in result.find("file.planned")) == [prefix + "a.txt", prefix + "b/c.txt"]


def test_a_reader_that_leaves_stdout_early_gets_no_traceback(tmp_path, prefix):
    """`obsbatch ... --summary json | head -c 1`: the summary cannot be written; the run still ends cleanly."""
    make_tree(tmp_path, {"a.txt": b"a"})
    proc = start_obsbatch("--source", tmp_path, "--bucket", "any", "--prefix", prefix, "--endpoint",
                          "http://127.0.0.1:9", "--dry-run")
    proc.stdout.close()  # the reader is gone before the summary is printed
    stderr = proc.stderr.read()
    assert proc.wait(60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def _can_drop_privileges():
    try:
        return subprocess.run([*UNPRIVILEGED, "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not _can_drop_privileges(),
                                reason="needs root and setpriv to run obsbatch without DAC/ptrace capabilities")


@needs_root
def test_unreadable_directory_and_file_are_reported_and_the_rest_uploaded(tmp_path, s3, s3server, prefix):
    make_tree(tmp_path, {"readable/a.txt": b"a", "locked/secret.txt": b"s", "z.txt": b"z", "mode000.txt": b"m"})
    os.chmod(tmp_path / "locked", 0o000)
    os.chmod(tmp_path / "mode000.txt", 0o000)
    try:
        result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env(),
                              unprivileged=True)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert objects(s3, s3server.bucket, prefix) == {"readable/a.txt": b"a", "z.txt": b"z"}
    [error] = result.find("walk.error", reason="unreadable_dir")
    assert error["path"].endswith("locked") and "Permission denied" in error["error"]
    [failed] = result.find("upload.failed")  # the file is seen by the walk, refused when opened
    assert failed["path"].endswith("mode000.txt") and failed["error_type"] == "PermissionError"
    assert result.summary["errors"] == 1 and result.summary["failed"] == 1 and result.summary["uploaded"] == 2


@needs_root
def test_unreadable_source_is_one_sentence_and_exit_2(tmp_path, s3server, prefix):
    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"a"})
    os.chmod(src, 0o000)
    try:
        result = run_obsbatch("--source", src, *server_args(s3server, prefix), env=s3server.env(),
                              unprivileged=True)
    finally:
        os.chmod(src, 0o755)
    assert result.returncode == 2, result
    [fatal] = result.find("run.fatal")
    assert fatal["error"] == f"source directory {src} cannot be read: Permission denied"
    assert "Traceback" not in result.stderr


@pytest.fixture
def foreign_process():
    """A process of another user (uid 65534), whose fds an unprivileged obsbatch cannot read."""
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "120"])
    time.sleep(0.3)
    yield proc
    proc.kill()
    proc.wait()


@needs_root
def test_fd_check_strict_refuses_to_run_blind(tmp_path, s3, s3server, prefix, foreign_process):
    make_tree(tmp_path, {"a.txt": b"a"})
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), "--fd-check", "strict",
                          env=s3server.env(), unprivileged=True)
    assert result.returncode == 2, result
    [fatal] = result.find("run.fatal")
    assert "cannot be inspected" in fatal["error"]
    assert objects(s3, s3server.bucket, prefix) == {}


@needs_root
def test_fd_check_best_effort_warns_once_and_uploads(tmp_path, s3, s3server, prefix, foreign_process):
    make_tree(tmp_path, {f"f{i}.txt": b"x" for i in range(5)})
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), "--min-age", 0,
                          env=s3server.env(), unprivileged=True)
    assert result.returncode == 0, result
    [warning] = result.find("fd_index.incomplete")
    assert warning["unreadable_processes"] >= 1
    assert len(objects(s3, s3server.bucket, prefix)) == 5


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.serial
def test_signal_finishes_uploads_in_flight_and_exits_128_plus_signal(tmp_path, s3, s3server, prefix, proxy,
                                                                    signum, code):
    make_tree(tmp_path, {f"d{i}/f{j}.txt": b"x" * 100 for i in range(5) for j in range(20)})
    hold = proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=1.0, times=None))
    proc = start_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), "--max-concurrent", 2,
                          env=s3server.env())
    assert hold.arrived.wait(60)
    signalled = time.monotonic()
    proc.send_signal(signum)
    result = finish(proc)
    # Files go to workers in batches (pipeline.BATCH_FILES); a stop waits for the file each worker is on,
    # not for its whole batch, which would take ~30 s here (up to 4 batches of 32 files at 1 s each).
    assert time.monotonic() - signalled < 15
    assert result.returncode == code, result
    assert result.find("run.stopping")
    summary = result.summary
    assert summary["stopped_by_signal"] is True and summary["exit_code"] == code
    assert 0 < summary["uploaded"] < 100 and summary["failed"] == 0  # in-flight ones finished, not torn
    assert summary["deferred"].get("interrupted", 0) > 0  # the rest of the handed-out batches: not started
    assert len(objects(s3, s3server.bucket, prefix)) == summary["uploaded"]


def test_write_only_credentials_are_enough(tmp_path, s3, s3server, prefix):
    """Least-privilege backup keys cannot HeadBucket (needs s3:ListBucket); the run must still go ahead."""
    from obsbatch.testing import seaweed

    files = make_tree(tmp_path, {"a.txt": b"a", "b/c.txt": b"c"})
    env = {"AWS_ACCESS_KEY_ID": seaweed.WRITE_ONLY_KEY, "AWS_SECRET_ACCESS_KEY": seaweed.WRITE_ONLY_SECRET}
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=env)
    assert result.returncode == 0, result
    [warning] = result.find("preflight.unverified")
    assert warning["error_type"] == "AccessDenied"
    assert objects(s3, s3server.bucket, prefix) == files


@pytest.mark.serial
@pytest.mark.parametrize("how", ["second-signal", "stop-timeout"])
def test_second_signal_or_stop_timeout_aborts_in_flight_multipart_and_leaves_nothing(tmp_path, s3, s3server, prefix,
                                                                                    proxy, how):
    make_tree(tmp_path, {"big.bin": os.urandom(11 * 1024 * 1024)})
    hold = proxy.add(Fault(method="PUT", path=r"big\.bin\?.*partNumber=1\b", action="hold", delay=8.0))
    proc = start_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint),
                          "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB",
                          *(["--stop-timeout", "1"] if how == "stop-timeout" else []), env=s3server.env())
    assert hold.arrived.wait(60)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    if how == "second-signal":
        proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    result = finish(proc)
    assert result.returncode == 143, result
    assert time.monotonic() - started < 7, "the second signal did not cut the held upload short"
    # reported, not lost:
    assert result.summary["deferred"] == {"interrupted": 1} and result.summary["uploaded"] == 0
    assert proxy.count("DELETE", r"big\.bin\?uploadId=") == 1  # the worker aborted on its way out
    assert s3.list_multipart_uploads(Bucket=s3server.bucket, Prefix=prefix).get("Uploads", []) == []
    assert objects(s3, s3server.bucket, prefix) == {}


def _start_held_run(tmp_path, s3server, prefix, proxy, hold_for: float):
    """obsbatch uploading 10 files whose PUTs the proxy holds for `hold_for` s: (its process, its 2 workers)."""
    import psutil

    make_tree(tmp_path, {f"f{i}.txt": b"x" for i in range(10)})
    hold = proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=hold_for, times=None))
    proc = start_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), "--max-concurrent", 2,
                          env=s3server.env())
    assert hold.arrived.wait(60)
    forkserver = [p for p in psutil.Process(proc.pid).children() if "forkserver" in " ".join(p.cmdline())]
    workers = forkserver[0].children()
    assert len(workers) == 2
    return proc, workers


def test_killed_worker_fails_its_files_and_ends_the_run_instead_of_hanging(tmp_path, s3server, prefix, proxy):
    """A killed worker's files never come back: detect it, report them failed, stop, exit 1 (not hang)."""
    proc, workers = _start_held_run(tmp_path, s3server, prefix, proxy, hold_for=1.0)
    workers[0].kill()  # as the OOM killer would
    result = finish(proc, timeout=60)
    assert result.returncode == 1, result
    assert result.find("worker.died")
    summary = result.summary
    assert summary["aborted"] == "an upload worker process died"
    assert set(summary["failed_by_type"]) == {"WorkerDied"} and summary["failed"] >= 1


def test_source_path_that_is_not_utf8(tmp_path, s3, s3server, prefix):
    source = os.path.join(os.fsencode(tmp_path), b"export\xff")
    os.mkdir(source)
    make_tree(tmp_path / os.fsdecode(b"export\xff"), {"a.txt": b"a"})
    result = run_obsbatch("--source", os.fsdecode(source), *server_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 0, result
    [start] = result.find("run.start")
    assert start["source"].endswith("export\\xff")
    assert objects(s3, s3server.bucket, prefix) == {"a.txt": b"a"}

    missing = run_obsbatch("--source", os.fsdecode(source + b"-missing"), *server_args(s3server, prefix),
                           env=s3server.env())
    assert missing.returncode == 2, missing
    [fatal] = missing.find("run.fatal")
    assert fatal["error"].endswith("export\\xff-missing does not exist")


@pytest.mark.serial
def test_a_worker_killed_while_a_stop_drains_leaves_a_stopped_run(tmp_path, s3, s3server, prefix, proxy):
    """Issue #11, defect 6: the run was asked to stop, so the files its dead worker held are interrupted (not
    failed) and the exit code is the signal's, not 1."""
    proc, workers = _start_held_run(tmp_path, s3server, prefix, proxy, hold_for=6.0)
    proc.send_signal(signal.SIGTERM)  # the drain begins: the uploads in flight are held for 6 s
    time.sleep(1.0)
    workers[0].kill()  # ... and a worker dies during it
    result = finish(proc, timeout=60)
    assert result.returncode == 143, result
    summary = result.summary
    assert summary["stopped_by_signal"] is True and summary["aborted"] is None
    assert summary["failed"] == 0 and "WorkerDied" not in summary["failed_by_type"]
    assert summary["deferred"].get("interrupted", 0) >= 1 and summary["scanned"] >= 1
    assert len(objects(s3, s3server.bucket, prefix)) == summary["uploaded"]
