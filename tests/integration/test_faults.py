"""The fault matrix of issue #6, run against a real SeaweedFS through the fault proxy (or a real restart).

Single faults (one 500, 503, reset or mid-body reset per file) are in test_run.py; these are the faults
that last: bursts, a hang past --http-timeout, a server down for the whole run, a restart mid-run, and a
server that throttles any burst of requests.
"""

import os
import socket
import sqlite3
import time

import pytest

from tests.conftest import finish, make_tree, objects, run_obsbatch, server_args, start_obsbatch
from obsbatch.testing import seaweed
from obsbatch.testing.faultproxy import Fault, Throttle


@pytest.mark.slow
def test_a_burst_of_500s_and_503s_is_retried_and_every_file_lands(tmp_path, s3, s3server, prefix, proxy):
    files = make_tree(tmp_path, {f"d{i % 3}/f{i}.txt": os.urandom(3000) for i in range(30)})
    # Two errors in a row for each of 20 files, all at the start of the run. (Per file: a shared count of
    # faults would end up, once the other files are done, all spent on the last file still retrying.)
    burst = [proxy.add(Fault(method="PUT", path=rf"/f{i}\.txt", action="status", times=2,
                             **(dict(status=503, code="SlowDown") if i % 2 else dict(status=500, code="InternalError"))))
             for i in range(20)]
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == files
    assert [f.hits for f in burst] == [2] * 20
    summary = result.summary
    assert summary["retries"] == 40 and summary["attempts"] == 30 + 40  # each fault cost exactly one re-send
    assert summary["uploaded"] == 30 and summary["failed"] == 0


def test_a_server_that_hangs_past_http_timeout_is_retried_and_the_run_ends(tmp_path, s3, s3server, prefix, proxy):
    files = make_tree(tmp_path, {"slow.txt": b"slow", "quick.txt": b"quick"})
    hang = proxy.add(Fault(method="PUT", path=r"slow\.txt", action="hold", delay=8.0, times=1))
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), "--http-timeout", 1,
                          env=s3server.env(), timeout=60)
    assert result.returncode == 0, result
    assert hang.hits == 1
    assert objects(s3, s3server.bucket, prefix) == files
    assert result.summary["retries"] == 1  # the read timed out after 1 s and botocore sent it again
    assert result.summary["seconds"] < 8  # the run did not wait for the held request


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connections are refused


def _journal_rows(path) -> list:
    with sqlite3.connect(path) as db:
        return [db.execute(f"SELECT * FROM {table} ORDER BY key").fetchall() for table in ("uploads", "deferred")]


@pytest.mark.parametrize("how", ["refused", "500-on-everything"])
@pytest.mark.parametrize("when", ["first-run", "later-run"])
def test_a_server_down_for_the_whole_run_fails_every_file_once_and_keeps_the_journal(
        tmp_path, s3, s3server, prefix, proxy, how, when):
    src, state = tmp_path / "src", tmp_path / "state.db"
    # The journal is kept per endpoint, so every run goes to the proxy's address; "refused" closes it.
    args = ["--source", src, "--state", state, "--retries", 1, *server_args(s3server, prefix, proxy.endpoint)]
    if when == "later-run":  # the journal holds uploads: the pre-flight waits for the first file to upload
        make_tree(src, {"old.txt": b"old"})
        assert run_obsbatch(*args, env=s3server.env()).returncode == 0
    files = make_tree(src, {f"new/f{i}.txt": b"x%d" % i for i in range(25)})
    before = _journal_rows(state) if state.exists() else None
    if how == "refused":
        proxy.server.server_close()  # nothing listens there now: connections are refused
    else:
        proxy.add(Fault(action="status", status=500, code="InternalError", times=None))

    down = run_obsbatch(*args, env=s3server.env(), timeout=90)
    assert down.returncode == 1, down
    assert "Traceback" not in down.stderr
    assert down.summary["failed"] == 25 and down.summary["failed_by_type"] == {"EndpointUnavailable": 25}
    errors = [e for e in down.events if e.get("level") == "error"]
    assert [e["event"] for e in errors] == ["run.endpoint_unavailable"], errors  # one message, not one per file
    assert ("cannot reach the S3 endpoint" if how == "refused" else "is failing") in errors[0]["error"]
    assert down.summary["attempts"] == 0 and proxy.count("PUT", r"/new/") == 0  # no upload was tried
    if before is not None:
        assert _journal_rows(state) == before

    if how == "refused":
        return  # the address is gone; the 500 case shows the next run catching up
    proxy.faults.clear()
    back = run_obsbatch(*args, env=s3server.env())
    assert back.returncode == 0 and back.summary["uploaded"] == 25, back
    assert {k: v for k, v in objects(s3, s3server.bucket, prefix).items() if k.startswith("new/")} == files


@pytest.fixture
def own_server(tmp_path_factory):
    """A SeaweedFS of this test's own, which it may stop and restart."""
    server = seaweed.start("restartable", str(tmp_path_factory.mktemp("weed-restart")))
    yield server
    server.stop()


@pytest.mark.slow
def test_a_server_restarting_mid_run_loses_nothing(tmp_path, own_server, prefix):
    from obsbatch.testing.faultproxy import FaultProxy

    files = make_tree(tmp_path, {f"d{i % 4}/f{i}.bin": os.urandom(5000) for i in range(80)})
    files.update(make_tree(tmp_path, {"big.bin": os.urandom(11 * 1024 * 1024)}))  # multipart, 3 parts
    s3 = own_server.client()
    with FaultProxy(own_server.endpoint) as proxy:
        args = ["--source", tmp_path, *server_args(own_server, prefix, proxy.endpoint), "--no-state",
                "--max-rps", 20, "--retries", 2, "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB"]
        proc = start_obsbatch(*args, env=own_server.env())
        while proxy.count("PUT", r"\.bin", "forwarded") < 15:  # well into the run, about 0.75 s of 4
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the restart: {finish(proc)}")
            time.sleep(0.02)
        own_server.restart(down_for=1.0)
        during = finish(proc, timeout=120)
        assert "Traceback" not in during.stderr, during
        assert during.returncode in (0, 1), during  # files refused while it was down failed, and said so
        # A run that ends while the server is still down fails its snapshot's upload too, counted in `failed`
        # (SnapshotUpload): every *file* is uploaded or failed.
        snapshot_failed = during.summary["failed_by_type"].get("SnapshotUpload", 0)
        assert during.summary["uploaded"] + during.summary["failed"] - snapshot_failed == len(files), during
        assert proxy.count("PUT", ".", "upstream down") > 0  # the restart really happened under the run

        after = run_obsbatch(*args, env=own_server.env())
    assert after.returncode == 0, after
    assert objects(s3, own_server.bucket, prefix) == files
    assert s3.list_multipart_uploads(Bucket=own_server.bucket, Prefix=prefix).get("Uploads", []) == []


@pytest.mark.slow
def test_a_throttling_server_fails_a_burst_that_max_rps_keeps_under_its_limit(tmp_path, s3, s3server, prefix,
                                                                             proxy):
    files = make_tree(tmp_path, {f"f{i}.txt": os.urandom(500) for i in range(40)})
    proxy.throttle = Throttle(rate=20, burst=5)  # S3's "reduce your request rate": 503 SlowDown beyond it
    args = ["--source", tmp_path, "--no-state", "--retries", 0]

    burst = run_obsbatch(*args, *server_args(s3server, prefix + "burst/", proxy.endpoint), env=s3server.env())
    assert burst.returncode == 1 and burst.summary["failed_by_type"].get("SlowDown"), burst
    refused = proxy.throttle.refused

    for mode in ("when_required", "when_supported"):  # the lean PUT and botocore's put_object both wait
        paced = run_obsbatch(*args, *server_args(s3server, f"{prefix}{mode}/", proxy.endpoint), "--max-rps", 12,
                             "--checksum-mode", mode, env=s3server.env())
        assert paced.returncode == 0, paced
        assert proxy.throttle.refused == refused, f"{mode}: throttled although paced"
        assert objects(s3, s3server.bucket, f"{prefix}{mode}/") == files
        puts = sorted(t for m, p, w, t in proxy.seen if m == "PUT" and f"/{mode}/" in p)
        assert len(puts) == 40 and puts[-1] - puts[0] >= 39 / 12 * 0.95  # 12 per second, all workers together


def test_a_multipart_upload_left_by_an_earlier_run_is_aborted_once_the_key_is_stored(tmp_path, s3, s3server, prefix):
    """An upload whose CreateMultipartUpload answer never came (or whose abort met a restarting server) is
    unknown to the run that began it; the run that stores the key aborts it (issue #21, seen by CI as a
    leftover after test_a_server_restarting_mid_run_loses_nothing). Another key's upload is left alone."""
    key, other = f"{prefix}big.bin", f"{prefix}big.bin.other"
    stray = s3.create_multipart_upload(Bucket=s3server.bucket, Key=key)["UploadId"]
    kept = s3.create_multipart_upload(Bucket=s3server.bucket, Key=other)["UploadId"]
    try:
        files = make_tree(tmp_path / "src", {"big.bin": os.urandom(11 * 1024 * 1024)})
        result = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix), "--no-state",
                              "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB", env=s3server.env())
        assert result.returncode == 0, result
        assert [e["upload_id"] for e in result.find("upload.leftover_aborted")] == [stray], result
        left = s3.list_multipart_uploads(Bucket=s3server.bucket, Prefix=prefix).get("Uploads", [])
        assert [(u["Key"], u["UploadId"]) for u in left] == [(other, kept)]
        assert objects(s3, s3server.bucket, prefix) == files
    finally:
        s3.abort_multipart_upload(Bucket=s3server.bucket, Key=other, UploadId=kept)

