"""Archive controls (issue #13) against real servers: SeaweedFS for what it stores and enforces, moto's
standalone server for the quirk the lock read-back exists for (lock headers ignored on
CreateMultipartUpload), and a fault proxy in front of moto for a server that cannot lock at all."""

import base64
import datetime
import hashlib
import json
import os
import time
import uuid

import pytest

from tests.conftest import make_tree, run_command, run_obsbatch, server_args
from obsbatch.testing.faultproxy import Fault, FaultProxy

MiB = 1024 * 1024
SMALL_MULTIPART = ["--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB"]


def _tree(tmp_path):
    """A small file with a fractional mtime and mode 0640, and a two-part multipart file."""
    src = tmp_path / "src"
    make_tree(src, {"small.txt": b"small file\n", "big.bin": os.urandom(6 * MiB)})
    os.chmod(src / "small.txt", 0o640)
    os.utime(src / "small.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return src


def _locked_bucket(client) -> str:
    bucket = f"locked-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


def _args(server, bucket, prefix, endpoint=None):
    return ["--bucket", bucket, "--prefix", prefix, "--endpoint", endpoint or server.endpoint, "--region",
            "us-east-1", "--addressing-style", "path"]


def test_objects_carry_posix_attributes_storage_class_tags_and_metadata(tmp_path, s3server, s3, prefix):
    src = _tree(tmp_path)
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", *SMALL_MULTIPART,
                          "--storage-class", "STANDARD_IA", "--tag", "project=alpha", "--tag", "owner=ops team",
                          "--metadata", "Department=finance", env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    for name in ("small.txt", "big.bin"):
        head = s3.head_object(Bucket=s3server.bucket, Key=prefix + name)
        st = os.stat(src / name)
        meta = head["Metadata"]
        assert meta["mode"] == format(st.st_mode & 0o7777, "o")
        assert (meta["uid"], meta["gid"]) == (str(st.st_uid), str(st.st_gid))
        assert meta["department"] == "finance" and meta["sha256"]
        assert head["StorageClass"] == "STANDARD_IA", (name, head.get("StorageClass"))
        tags = s3.get_object_tagging(Bucket=s3server.bucket, Key=prefix + name)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"project": "alpha", "owner": "ops team"}
    small = s3.head_object(Bucket=s3server.bucket, Key=prefix + "small.txt")["Metadata"]
    assert (small["mtime"], small["mode"]) == ("1600000000.123456789", "640")


def test_no_preserve_attrs_leaves_the_posix_attributes_out(tmp_path, s3server, s3, prefix):
    src = _tree(tmp_path)
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", *SMALL_MULTIPART,
                          "--no-preserve-attrs", env=s3server.env())
    assert result.returncode == 0, result
    for name in ("small.txt", "big.bin"):
        meta = s3.head_object(Bucket=s3server.bucket, Key=prefix + name)["Metadata"]
        assert set(meta) == {"sha256"}, meta


def _assert_locked(client, bucket, key, mode, until_at_least, legal_hold=True):
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == mode, head
    assert head["ObjectLockRetainUntilDate"] >= until_at_least
    if legal_hold:
        assert head["ObjectLockLegalHoldStatus"] == "ON"
    with pytest.raises(Exception) as refused:
        client.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    assert "AccessDenied" in str(refused.value)
    return head


def test_object_lock_holds_on_seaweedfs_single_multipart_and_manifest(tmp_path, s3server, s3, prefix):
    bucket = _locked_bucket(s3)
    src = _tree(tmp_path)
    manifest = tmp_path / "run.jsonl"
    before = datetime.datetime.now(datetime.timezone.utc)
    result = run_obsbatch("--source", src, *_args(s3server, bucket, prefix), "--no-state", *SMALL_MULTIPART,
                          "--object-lock-mode", "GOVERNANCE", "--object-lock-retain", "2h", "--legal-hold",
                          "--manifest", manifest, "--upload-manifest", env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    at_least = before + datetime.timedelta(hours=2) - datetime.timedelta(seconds=1)
    heads = {name: _assert_locked(s3, bucket, prefix + name, "GOVERNANCE", at_least) for name in ("small.txt", "big.bin")}
    records = {r["path"].rsplit("/", 1)[-1]: r for r in map(json.loads, manifest.read_text().splitlines())
               if r.get("type") == "file"}
    for name, head in heads.items():
        assert records[name]["version_id"] == head["VersionId"]
        stored = head["ObjectLockRetainUntilDate"].astimezone(datetime.timezone.utc)
        assert records[name]["retain_until"] == stored.strftime("%Y-%m-%dT%H:%M:%SZ")
    [written] = result.find("manifest.written")
    _assert_locked(s3, bucket, written["key"], "GOVERNANCE", at_least)
    # issue #14: verify holds each object to the manifest's version and retain-until
    checked = run_command("verify", *_args(s3server, bucket, prefix), "--manifest", manifest, env=s3server.env())
    assert checked.returncode == 0 and checked.summary["checked"] == 2, checked


def test_a_lock_ignored_on_multipart_is_applied_after_upload(tmp_path, moto, prefix):
    """moto's server ignores lock headers on CreateMultipartUpload: without the read-back the multipart
    object would be stored unlocked and counted uploaded."""
    client = moto.client()
    bucket = _locked_bucket(client)
    src = _tree(tmp_path)
    result = run_obsbatch("--source", src, *_args(moto, bucket, prefix), "--no-state", *SMALL_MULTIPART,
                          "--object-lock-mode", "COMPLIANCE", "--object-lock-retain", "1h", "--legal-hold",
                          env=moto.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    applied = {e["key"] for e in result.find("upload.lock_applied")}
    assert applied == {prefix + "big.bin"}, result.find("upload.lock_applied")
    at_least = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=59)
    for name in ("small.txt", "big.bin"):
        _assert_locked(client, bucket, prefix + name, "COMPLIANCE", at_least)


def test_a_lock_that_cannot_be_made_to_hold_fails_the_file(tmp_path, moto, prefix):
    """moto ignores the multipart lock headers and, behind this proxy, refuses PutObjectRetention: the
    multipart file is FAILED (NotLocked), never counted uploaded; the single-part file holds."""
    client = moto.client()
    bucket = _locked_bucket(client)
    src = _tree(tmp_path)
    with FaultProxy(moto.endpoint) as proxy:
        proxy.add(Fault(method="PUT", path=r"[?&]retention", status=501, code="NotImplemented", times=None))
        result = run_obsbatch("--source", src, *_args(moto, bucket, prefix, proxy.endpoint), "--no-state",
                              *SMALL_MULTIPART, "--object-lock-mode", "GOVERNANCE", "--object-lock-retain", "1h",
                              "--retries", "0", env=moto.env())
    assert result.returncode == 1, result
    assert result.summary["uploaded"] == 1 and result.summary["failed_by_type"] == {"NotLocked": 1}, result
    [failed] = result.find("upload.failed")
    assert failed["path"].endswith("big.bin") and "applying it failed" in failed["error"], failed


def test_a_lock_flag_against_a_bucket_without_object_lock_is_exit_2(tmp_path, s3server, s3, prefix):
    src = _tree(tmp_path)
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state",
                          "--object-lock-mode", "GOVERNANCE", "--object-lock-retain", "1d", env=s3server.env())
    assert result.returncode == 2, result
    [fatal] = result.find("run.fatal")
    assert "does not have Object Lock enabled" in fatal["error"]
    assert "Contents" not in s3.list_objects_v2(Bucket=s3server.bucket, Prefix=prefix)


@pytest.fixture
def customer_key(tmp_path):
    key = os.urandom(32)
    path = tmp_path / "sse-c.key"
    path.write_bytes(base64.b64encode(key) + b"\n")
    return key, path


def test_sse_c_on_every_request_and_never_in_an_output(tmp_path, s3server, s3, prefix, customer_key):
    key, key_file = customer_key
    src = _tree(tmp_path)
    manifest = tmp_path / "run.jsonl"
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--state", tmp_path / "state.db",
                          *SMALL_MULTIPART, "--sse-c-key-file", key_file, "--verify-after-upload",
                          "--manifest", manifest, "--debug", "trace", env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    for name in ("small.txt", "big.bin"):
        with pytest.raises(Exception):  # SeaweedFS refuses a GET of an SSE-C object without its key
            s3.get_object(Bucket=s3server.bucket, Key=prefix + name)
        body = s3.get_object(Bucket=s3server.bucket, Key=prefix + name, SSECustomerAlgorithm="AES256",
                             SSECustomerKey=key)["Body"].read()
        assert body == (src / name).read_bytes()
    # --verify-remote's comparison under SSE-C rests on the sha256 metadata (one HEAD with the key).
    again = run_obsbatch("--source", src, *server_args(s3server, prefix), "--state", tmp_path / "state2.db",
                         *SMALL_MULTIPART, "--sse-c-key-file", key_file, "--verify-remote", env=s3server.env())
    assert again.returncode == 0 and again.summary["uploaded"] == 0, again
    assert again.summary["skipped"] == {"already_stored": 2}, again
    outputs = result.stdout.encode() + result.stderr.encode() + manifest.read_bytes() + again.stderr.encode()
    for form in (base64.b64encode(key), key.hex().encode(), base64.b64encode(hashlib.md5(key).digest())):
        assert form not in outputs


def test_sse_s3_on_seaweedfs_and_sse_kms_on_moto(tmp_path, s3server, s3, moto, prefix):
    src = _tree(tmp_path)
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", *SMALL_MULTIPART,
                          "--sse", "AES256", "--verify-after-upload", env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    for name in ("small.txt", "big.bin"):
        assert s3.head_object(Bucket=s3server.bucket, Key=prefix + name)["ServerSideEncryption"] == "AES256"
    client = moto.client()
    bucket = f"kms-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    result = run_obsbatch("--source", src, *_args(moto, bucket, prefix), "--no-state", *SMALL_MULTIPART,
                          "--sse", "aws:kms", "--sse-kms-key-id", "backup-key-1", "--verify-after-upload",
                          env=moto.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    for name in ("small.txt", "big.bin"):
        head = client.head_object(Bucket=bucket, Key=prefix + name)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "backup-key-1"), head


@pytest.mark.slow
def test_bwlimit_holds_a_run_to_its_rate(tmp_path, s3server, prefix):
    """1 MiB/s over 3 MiB of bodies: at least ~3 s, whatever the concurrency (a floor, never a ceiling)."""
    src = tmp_path / "src"
    make_tree(src, {f"f{i}.bin": os.urandom(256 * 1024) for i in range(12)})
    started = time.monotonic()
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", "--bwlimit", "1M",
                          "--max-concurrent", "16", env=s3server.env())
    took = time.monotonic() - started
    assert result.returncode == 0 and result.summary["uploaded"] == 12, result
    assert took >= 3.0 * 0.95, took



@pytest.mark.parametrize("store", ["seaweedfs", "moto"])
def test_a_renamed_file_is_copied_with_its_lock_tags_and_storage_class(tmp_path, s3server, moto, prefix, store):
    """A server-side copy stores the object as an upload would: the run's Object Lock, tags (TaggingDirective
    REPLACE) and storage class, with the file's metadata. moto refuses a copy into a locked bucket (it wants a
    Content-MD5 there, which a CopyObject has no body for): each copy is refused (upload.copy_refused) and the
    file uploaded, locked all the same."""
    server = s3server if store == "seaweedfs" else moto
    client = server.client()
    bucket = _locked_bucket(client)
    src = _tree(tmp_path)
    flags = ("--source", src, *_args(server, bucket, prefix), *SMALL_MULTIPART, "--object-lock-mode", "GOVERNANCE",
             "--object-lock-retain", "1h", "--tag", "project=alpha", "--storage-class", "STANDARD_IA")
    assert run_obsbatch(*flags, env=server.env()).returncode == 0
    os.rename(src / "small.txt", src / "renamed.txt")
    os.rename(src / "big.bin", src / "renamed.bin")
    result = run_obsbatch(*flags, env=server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    copied = 2 if store == "seaweedfs" else 0
    assert (result.summary["copied"], len(result.find("upload.copy_refused"))) == (copied, 2 - copied), result
    at_least = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=59)
    for name in ("renamed.txt", "renamed.bin"):
        _assert_locked(client, bucket, prefix + name, "GOVERNANCE", at_least, legal_hold=False)
        head = client.head_object(Bucket=bucket, Key=prefix + name)
        assert head.get("StorageClass") == "STANDARD_IA" and head["Metadata"]["sha256"], head
        tags = client.get_object_tagging(Bucket=bucket, Key=prefix + name)["TagSet"]
        assert tags == [{"Key": "project", "Value": "alpha"}]
    assert client.head_object(Bucket=bucket, Key=prefix + "renamed.txt")["Metadata"]["mode"] == "640"
