"""A worker's WorkerContext in this process, against the real SeaweedFS: verification, change detection,
multipart, retries, and what a batch returns."""

import base64
import dataclasses
import hashlib
import os

import botocore.exceptions
import pytest

from obsbatch.commands.backup import parse
from obsbatch.models import Candidate, CopySource, Kind, Reason
from obsbatch.stages.plan import work_item
from obsbatch.engine.settings import WorkerSettings
from obsbatch.engine.worker import WorkerContext
from obsbatch.testing.faultproxy import Fault


@pytest.fixture
def setup_worker(s3server, monkeypatch):
    """A WorkerContext as a pool worker builds it, here, for the real SeaweedFS (or a proxy in front of it)."""
    def setup(prefix, endpoint=None, *extra):
        for k, v in s3server.env().items():
            monkeypatch.setenv(k, v)
        config = parse(["--source", "/unused", "--bucket", s3server.bucket, "--prefix", prefix,
                        "--endpoint", endpoint or s3server.endpoint, "--addressing-style", "path",
                        "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB", "--retries", "3",
                        "--log-format", "json", *extra], {})
        return WorkerContext(WorkerSettings.for_backup(config))
    return setup


def item_for(path, prefix):
    st = os.stat(path)
    return work_item(Candidate(path=os.fsencode(path), rel=os.fsencode(path.name), key=prefix + path.name, stat=st))


def test_small_file_uploaded_with_sha256_metadata_and_md5_etag(tmp_path, s3, s3server, prefix, setup_worker):
    worker = setup_worker(prefix)
    data = os.urandom(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.UPLOADED, outcome
    assert outcome.etag == hashlib.md5(data).hexdigest() and outcome.attempts == 1 and not outcome.multipart
    head = s3.head_object(Bucket=s3server.bucket, Key=prefix + "f.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket=s3server.bucket, Key=prefix + "f.bin")["Body"].read() == data


@pytest.mark.parametrize("change", ["append", "same_size_rewrite", "replace_by_rename", "delete", "replace_by_fifo",
                                    "replace_by_symlink"])
def test_file_changed_after_judgement_is_not_uploaded(tmp_path, s3, s3server, prefix, setup_worker, change):
    worker = setup_worker(prefix)
    path = tmp_path / "f.txt"
    path.write_bytes(b"version one")
    os.utime(path, ns=(10**18, 10**18))
    item = item_for(path, prefix)
    if change == "append":
        with open(path, "ab") as f:
            f.write(b"!")
    elif change == "same_size_rewrite":
        path.write_bytes(b"version two")  # same length; mtime and ctime move
    elif change == "replace_by_rename":
        (tmp_path / "new").write_bytes(b"version one")
        os.utime(tmp_path / "new", ns=(10**18, 10**18))  # same size and mtime: only the inode tells
        os.rename(tmp_path / "new", path)
    elif change == "replace_by_fifo":
        path.unlink()
        os.mkfifo(path)  # a blocking open() would wait for a writer forever
    elif change == "replace_by_symlink":
        (tmp_path / "elsewhere").write_bytes(b"version one")
        path.unlink()
        os.symlink(tmp_path / "elsewhere", path)
    else:
        path.unlink()
    outcome = worker.upload_one(item)
    if change == "delete":
        assert (outcome.kind, outcome.reason) == (Kind.SKIPPED, Reason.VANISHED)
    else:
        assert (outcome.kind, outcome.reason) == (Kind.DEFERRED, Reason.CHANGED), outcome
    assert outcome.attempts == 0
    assert "Contents" not in s3.list_objects_v2(Bucket=s3server.bucket, Prefix=prefix)


def test_multipart_object_equals_file(tmp_path, s3, s3server, prefix, setup_worker):
    worker = setup_worker(prefix)
    data = os.urandom(12 * 1024 * 1024 + 123)  # 3 parts of 5 MiB, the last short
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.UPLOADED and outcome.multipart, outcome
    assert outcome.attempts == 6  # create + 3 parts + complete + the listing of leftover uploads of the key
    assert outcome.etag.endswith("-3")
    body = s3.get_object(Bucket=s3server.bucket, Key=prefix + "big.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    head = s3.head_object(Bucket=s3server.bucket, Key=prefix + "big.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_failed_multipart_is_aborted_and_leaves_nothing(tmp_path, s3, s3server, prefix, setup_worker, proxy):
    worker = setup_worker(prefix, proxy.endpoint)
    proxy.add(Fault(method="PUT", path=r"partNumber=2", action="status", status=403, code="AccessDenied", times=None))
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(11 * 1024 * 1024))
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.FAILED and outcome.error_type == "AccessDenied", outcome
    assert proxy.count("PUT", r"partNumber=2") == 1  # permanent: not retried
    assert proxy.count("DELETE", r"uploadId=") == 1  # AbortMultipartUpload sent
    uploads = s3.list_multipart_uploads(Bucket=s3server.bucket, Prefix=prefix).get("Uploads", [])
    assert uploads == []
    assert "Contents" not in s3.list_objects_v2(Bucket=s3server.bucket, Prefix=prefix)


def test_multipart_parts_go_up_in_parallel_and_counts_add_up(tmp_path, s3, s3server, prefix, setup_worker, proxy):
    """A lone big file uses the worker's upload threads for its parts (issue #5), with one 503 retried."""
    worker = setup_worker(prefix, proxy.endpoint, "--max-concurrent", "8")
    assert worker.settings.threads >= 2
    hold = proxy.add(Fault(method="PUT", path=r"partNumber=1\b", action="hold", delay=2.0))
    proxy.add(Fault(method="PUT", path=r"partNumber=3\b", action="status", status=503, code="SlowDown", times=1))
    data = os.urandom(16 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.UPLOADED, outcome
    # Part 2 went up while part 1 was held: not one part after another.
    assert proxy.first_time("PUT", r"partNumber=2\b") < proxy.first_time("PUT", r"partNumber=1\b") + 1.5
    assert hold.hits == 1
    # create + 4 parts + one re-sent part + complete + the listing of leftover uploads of the key
    assert (outcome.attempts, outcome.retries) == (8, 1)
    assert s3.get_object(Bucket=s3server.bucket, Key=prefix + "big.bin")["Body"].read() == data


def test_multipart_without_upload_threads_counts_each_request_once(tmp_path, s3, s3server, prefix, setup_worker,
                                                                  proxy):
    """--max-concurrent 1: one thread per worker, so the parts go up in the calling thread."""
    worker = setup_worker(prefix, proxy.endpoint, "--max-concurrent", "1")
    assert worker.settings.threads == 1
    proxy.add(Fault(method="PUT", path=r"partNumber=2\b", action="status", status=503, code="SlowDown", times=1))
    data = os.urandom(11 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.UPLOADED, outcome
    # create + 3 parts + one re-sent part + complete + the listing of leftover uploads of the key
    assert (outcome.attempts, outcome.retries) == (7, 1)
    assert proxy.count("PUT", r"partNumber=") == 4
    assert s3.get_object(Bucket=s3server.bucket, Key=prefix + "big.bin")["Body"].read() == data


def test_corrupted_body_is_resent(tmp_path, s3, s3server, prefix, setup_worker, proxy):
    """BadDigest (Content-MD5 mismatch) is not retried by botocore; upload_one re-sends it."""
    worker = setup_worker(prefix, proxy.endpoint)
    proxy.add(Fault(method="PUT", path=r"f\.bin", action="status", status=400, code="BadDigest", times=2))
    path = tmp_path / "f.bin"
    path.write_bytes(b"payload")
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.UPLOADED, outcome
    assert (outcome.attempts, outcome.retries) == (3, 2)


def test_server_verifies_content_md5(s3, s3server, prefix):
    """The guarantee the worker relies on: a body that does not match Content-MD5 is refused, not stored."""
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(Exception) as info:
        s3.put_object(Bucket=s3server.bucket, Key=prefix + "x", Body=b"payload", ContentMD5=wrong)
    assert "BadDigest" in str(info.value)
    assert "Contents" not in s3.list_objects_v2(Bucket=s3server.bucket, Prefix=prefix)


def test_worker_whose_client_cannot_be_built_reports_instead_of_crashing(tmp_path, setup_worker):
    """A raising Pool initializer would be respawned forever; the worker must report per file instead."""
    from obsbatch.config import BackupConfig, OutputConfig, StoreConfig, TransferConfig

    # Built directly, skipping the parser's region check, to get a region botocore refuses.
    config = BackupConfig(StoreConfig(bucket="b", region="not a region!"), TransferConfig(), OutputConfig(),
                          source="/unused")
    worker = WorkerContext(WorkerSettings.for_backup(config))
    path = tmp_path / "f"
    path.write_bytes(b"x")
    outcome = worker.upload_one(item_for(path, "p/"))
    assert outcome.kind is Kind.FAILED and outcome.error_type == "RuntimeError"
    assert "could not create its S3 client" in outcome.message and "InvalidRegion" in outcome.message


def test_server_that_hangs_past_http_timeout_is_an_s3_failure_not_a_read_error(tmp_path, s3server, prefix,
                                                                             setup_worker, proxy):
    worker = setup_worker(prefix, proxy.endpoint, "--http-timeout", "1", "--retries", "1")
    proxy.add(Fault(method="PUT", path=r"slow\.bin", action="hold", delay=3.0, times=None))
    path = tmp_path / "slow.bin"
    path.write_bytes(b"payload")
    outcome = worker.upload_one(item_for(path, prefix))
    assert outcome.kind is Kind.FAILED, outcome
    assert outcome.error_type == "ReadTimeoutError" and "cannot read" not in outcome.message
    assert (outcome.attempts, outcome.retries) == (2, 1)  # --retries 1: botocore sent it twice


@pytest.mark.parametrize("case", ["single-md5-mismatch", "multipart-etag-mismatch", "etag-not-an-md5",
                                  "head-readback-mismatch", "head-readback-ok"])
def test_what_the_server_reports_storing_is_checked(tmp_path, s3server, prefix, setup_worker, proxy, case):
    big = case.startswith("multipart")
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(11 * 1024 * 1024 if big else 1000))
    extra = ("--verify-after-upload",) if case.startswith("head") else ()
    worker = setup_worker(prefix, proxy.endpoint, *extra)
    fault = {
        "single-md5-mismatch": Fault(method="PUT", path=r"f\.bin$", action="etag", code="0" * 32),
        "multipart-etag-mismatch": Fault(method="POST", path=r"f\.bin\?uploadId=", action="etag", code="1" * 32 + "-3"),
        "etag-not-an-md5": Fault(method="PUT", path=r"f\.bin$", action="etag", code="sse-kms-opaque-etag"),
        "head-readback-mismatch": Fault(method="HEAD", path=r"f\.bin$", action="etag", code="2" * 32),
        "head-readback-ok": None,
    }[case]
    if fault:
        proxy.add(fault)
    outcome = worker.upload_one(item_for(path, prefix))
    if case in ("etag-not-an-md5", "head-readback-ok"):
        assert outcome.kind is Kind.UPLOADED, outcome  # an opaque ETag proves nothing; Content-MD5 was checked
    else:
        assert outcome.kind is Kind.FAILED and outcome.error_type == "NotVerified", outcome
    if case.startswith("head"):
        assert proxy.count("HEAD", r"f\.bin$") == 1


def test_multipart_etag_is_md5_of_part_md5s(tmp_path, s3, s3server, prefix, setup_worker):
    worker = setup_worker(prefix)
    data = os.urandom(11 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    outcome = worker.upload_one(item_for(path, prefix))
    parts = [data[i:i + 5 * 1024 * 1024] for i in range(0, len(data), 5 * 1024 * 1024)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert outcome.kind is Kind.UPLOADED and outcome.etag == expected


@pytest.mark.parametrize("path", ["direct", "put_object"])
@pytest.mark.parametrize("fault,expected", [
    (None, ("uploaded", "", 1, 0)),
    (Fault(method="PUT", path=r"f\.bin", action="status", status=503, code="SlowDown", times=2), ("uploaded", "", 3, 2)),
    (Fault(method="PUT", path=r"f\.bin", action="status", status=500, code="InternalError", times=1),
     ("uploaded", "", 2, 1)),
    (Fault(method="PUT", path=r"f\.bin", action="reset", times=1), ("uploaded", "", 2, 1)),
    (Fault(method="PUT", path=r"f\.bin", action="status", status=403, code="AccessDenied", times=1),
     ("failed", "AccessDenied", 1, 0)),
    (Fault(method="PUT", path=r"f\.bin", action="status", status=404, code="NoSuchBucket", times=1),
     ("failed", "NoSuchBucket", 1, 0)),
    (Fault(method="PUT", path=r"f\.bin", action="status", status=400, code="BadDigest", times=2),
     ("uploaded", "", 3, 2)),
    # A body corrupted every time: re-sent within the same budget as any fault, --retries 3 (4 requests).
    (Fault(method="PUT", path=r"f\.bin", action="status", status=400, code="BadDigest", times=None),
     ("failed", "BadDigest", 4, 3)),
], ids=["ok", "503x2", "500", "reset", "403", "404", "baddigest-x2", "baddigest-always"])
def test_lean_put_and_boto3_put_object_behave_alike(tmp_path, s3, s3server, prefix, setup_worker, proxy, path,
                                                     fault, expected):
    """obsbatch.s3.put must keep put_object's retries, error names and attempt counts (issue #5); a corrupted
    body is retried by DirectPut itself, and around put_object by upload.Uploader.call (issue #11)."""
    worker = setup_worker(prefix, proxy.endpoint)
    assert worker.direct is not None  # the default for single-part uploads
    if path == "put_object":
        worker.direct = None
    if fault:
        proxy.add(Fault(**{k: v for k, v in vars(fault).items() if k not in ("hits", "arrived")}))
    data = os.urandom(3000)
    file = tmp_path / "f.bin"
    file.write_bytes(data)
    outcome = worker.upload_one(item_for(file, prefix))
    assert (outcome.kind.value, outcome.error_type, outcome.attempts, outcome.retries) == expected, outcome
    if outcome.kind is Kind.UPLOADED:
        assert s3.get_object(Bucket=s3server.bucket, Key=prefix + "f.bin")["Body"].read() == data
        assert outcome.etag == hashlib.md5(data).hexdigest()


def test_lean_put_request_signs_the_payload_sha256_and_skips_expect(tmp_path, prefix, setup_worker):
    """What goes on the wire: Content-MD5 and the body's SHA-256, both signed, and no 100-continue round trip.

    AWS refuses a body whose SHA-256 differs from the signed x-amz-content-sha256 (XAmzContentSHA256Mismatch);
    SeaweedFS does not check it, so the request itself is inspected here, by a server that records it.
    """
    import http.server
    import threading

    seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("ETag", '"%s"' % hashlib.md5(body).hexdigest())
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        worker = setup_worker(prefix, f"http://127.0.0.1:{server.server_address[1]}")
        data = os.urandom(2000)
        file = tmp_path / "f.bin"
        file.write_bytes(data)
        outcome = worker.upload_one(item_for(file, prefix))
    finally:
        server.shutdown()
    assert outcome.kind is Kind.UPLOADED, outcome
    [(path, headers, body)] = seen
    headers = {k.lower(): v for k, v in headers.items()}
    assert path.endswith(f"/{prefix}f.bin") and body == data
    assert headers["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()
    assert headers["content-md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert headers["x-amz-meta-sha256"] == hashlib.sha256(data).hexdigest()
    signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-md5", "x-amz-content-sha256", "x-amz-meta-sha256", "host"} <= set(signed)
    assert "expect" not in headers


def test_lean_put_quotes_keys_as_botocore_does(tmp_path, s3, s3server, prefix, setup_worker):
    worker = setup_worker(prefix)
    names = ["a b+c.txt", "ü/é%41~x", "semi;colon&amp=1?q", "star*(paren)'quote'", "%FF-escaped"]
    for name in names:
        body = name.encode()
        worker.direct.put(prefix + name, body, base64.b64encode(hashlib.md5(body).digest()).decode(),
                           hashlib.sha256(body).hexdigest(), {})
    stored = {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=s3server.bucket, Prefix=prefix)["Contents"]}
    assert stored == set(names)


def test_the_lean_get_returns_what_get_object_returns(tmp_path, s3, s3server, prefix, setup_worker, proxy):
    """Issue #14: the restore's GetObject of small objects through put.DirectPut.get, against botocore's."""
    key_file = tmp_path / "k"
    key = os.urandom(32)
    key_file.write_bytes(key)
    worker = setup_worker(prefix, proxy.endpoint, "--sse-c-key-file", str(key_file))
    body = os.urandom(5000)
    sse = dict(SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    s3.put_object(Bucket=s3server.bucket, Key=prefix + "a b%41.bin", Body=body,
                  Metadata={"sha256": hashlib.sha256(body).hexdigest(), "mtime": "1.5", "Mode": "640"}, **sse)
    proxy.add(Fault(method="GET", path=r"a%20b%2541\.bin", status=503, code="SlowDown", times=1))
    lean = worker.direct.get(prefix + "a b%41.bin", worker.settings.archive.customer_key_headers())
    full = s3.get_object(Bucket=s3server.bucket, Key=prefix + "a b%41.bin", **sse)
    assert lean["Body"].read() == full["Body"].read() == body
    assert lean["Metadata"] == full["Metadata"] and lean["ETag"] == full["ETag"]
    assert proxy.count("GET", r"a%20b%2541\.bin") == 2  # the 503 was retried, as botocore would
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        worker.direct.get(prefix + "nothing-here", {})
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_proxy_in_the_environment_leaves_every_put_to_botocore(tmp_path, s3, s3server, prefix, setup_worker,
                                                                   proxy, monkeypatch):
    """The lean PUT speaks no proxy: with HTTP_PROXY set for the endpoint (botocore's own reading of the
    environment, NO_PROXY included), the worker has no DirectPut and botocore's put_object goes through the
    proxy; with NO_PROXY naming the endpoint, the lean PUT is back."""
    monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
    worker = setup_worker(prefix)
    assert worker.direct is None
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(2000))
    assert worker.upload_one(item_for(path, prefix)).kind is Kind.UPLOADED
    assert proxy.count("PUT", r"f\.bin") == 1  # the proxy forwarded it (an absolute URI, as a proxy gets)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert setup_worker(prefix).direct is not None


@pytest.mark.parametrize("source_etag", ["journaled", "replaced since"])
def test_a_file_above_the_copy_limit_is_copied_in_parts_or_uploaded_when_refused(tmp_path, s3, s3server, prefix,
                                                                                  setup_worker, proxy, source_etag):
    """Above CopyObject's 5 GiB (lowered here to 6 MiB) a stored file is copied by UploadPartCopy, part by part
    (5 MiB), with its own metadata, and no byte of it is sent; a source whose ETag is no longer the journaled
    one is refused (412) and the file is uploaded instead, the copy aborted (nothing left in progress)."""
    worker = setup_worker(prefix, proxy.endpoint)
    worker.uploads.copy_object_bytes = 6 * 1024 * 1024
    data = os.urandom(12 * 1024 * 1024)
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(data)
    stored = worker.upload_one(item_for(first, prefix))
    assert stored.kind is Kind.UPLOADED and stored.multipart, stored
    os.rename(first, second)
    etag = stored.etag if source_etag == "journaled" else "0" * 32
    item = dataclasses.replace(item_for(second, prefix),
                               copy_source=CopySource(prefix + "first.bin", stored.version_id, etag, stored.sha256))
    proxy.puts.clear()
    outcome = worker.upload_one(item)
    assert outcome.kind is Kind.UPLOADED, outcome
    bodies = [length for path, length in proxy.puts if "second.bin" in path and length]
    if source_etag == "journaled":
        assert outcome.copied_from == prefix + "first.bin" and bodies == []
        assert len([path for path in proxy.copies if "second.bin" in path]) == 3
    else:
        assert outcome.copied_from == "" and sum(bodies) == len(data)
    got = s3.get_object(Bucket=s3server.bucket, Key=prefix + "second.bin")
    assert got["Body"].read() == data and got["Metadata"]["sha256"] == stored.sha256
    assert not s3.list_multipart_uploads(Bucket=s3server.bucket, Prefix=prefix).get("Uploads")
