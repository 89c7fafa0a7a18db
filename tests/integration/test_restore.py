"""`obsbatch restore` and `obsbatch verify` against SeaweedFS (moto for an archived object): the restore
drill of issue #14, conflicts, a replaced object caught by the manifest, unsafe keys, and verify's checks."""

import hashlib
import os
import stat
import uuid

import pytest

from tests.conftest import make_tree, run_command, run_obsbatch, server_args, write_tree

MiB = 1024 * 1024
SMALL_MULTIPART = ["--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB"]


def store_args(server, prefix):
    return ["--bucket", server.bucket, "--prefix", prefix, "--endpoint", server.endpoint, "--region", "us-east-1",
            "--addressing-style", "path"]


def hostile_tree(root):
    """Names that are not UTF-8 beside valid names that spell their escapes, modes, fractional mtimes, an empty
    file, a multipart file, a deep path, spaces and Unicode."""
    files = {
        b"caf\xe9.txt": b"latin-1 name",
        b"caf%E9.txt": b"a valid name that spells the other's escape",
        b"caf%25E9.txt": b"and one that spells the escape of the escape",
        "r\u00e9pertoire/\u00f1ame with spaces.txt".encode(): b"spaces and accents",
        "\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb.txt".encode(): b"unicode",
        b"empty": b"",
        b"big.bin": os.urandom(6 * MiB + 123),
        b"/".join(b"d%d" % i for i in range(20)) + b"/deep.txt": b"deep",
        b"mode0600": b"secret", b"mode0640": b"group", b"mode0444": b"read-only", b"mode0755": b"#!/bin/sh\n",
        b"mode2755": b"setgid: chown(2) clears it, so a restore as root must set the mode after the owner",
    }
    write_tree(root, files)
    root_b = os.fsencode(root)
    for rel in (b"mode0600", b"mode0640", b"mode0444", b"mode0755", b"mode2755"):
        os.chmod(os.path.join(root_b, rel), int(rel[-4:], 8))
    if os.geteuid() == 0:  # a restore as root gives files back their owner: one that isn't root proves it
        os.chown(os.path.join(root_b, b"mode2755"), 1234, 5678)
        os.chmod(os.path.join(root_b, b"mode2755"), 0o2755)  # chown cleared the set-group-ID bit
    for number, rel in enumerate(files):
        ns = 1_500_000_000_000_000_000 + number * 1_000_000_007 + 123_456_789
        os.utime(os.path.join(root_b, rel), ns=(ns, ns))
    return files


def tree_state(root) -> dict:
    """{relative path (bytes): (content SHA-256, mode bits, mtime_ns, uid, gid)} of every regular file."""
    out = {}
    root_b = os.fsencode(root)
    for directory, _, names in os.walk(root_b):
        for name in names:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root_b)] = (digest, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid,
                                                  st.st_gid)
    return out


@pytest.fixture
def backed_up(tmp_path, s3server, prefix):
    src = tmp_path / "src"
    files = hostile_tree(src)
    manifest = tmp_path / "run.jsonl"
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", "--min-age", "0",
                          "--manifest", manifest, *SMALL_MULTIPART, env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == len(files), result
    return src, files, manifest


def test_the_restore_drill_brings_back_names_bytes_modes_and_mtimes(tmp_path, s3server, prefix, backed_up):
    src, files, manifest = backed_up
    target = tmp_path / "restored"
    result = run_command("restore", "--target", target, *store_args(s3server, prefix), "--manifest", manifest,
                         env=s3server.env())
    assert result.returncode == 0, result
    assert result.summary["restored"] == len(files) and result.summary["unverified"] == 0, result.summary
    assert tree_state(target) == tree_state(src)
    assert not [n for _, _, names in os.walk(target) for n in names if ".obsbatch-restore-" in n]

    again = run_command("restore", "--target", target, *store_args(s3server, prefix), env=s3server.env())
    assert again.returncode == 0 and again.summary["identical"] == len(files), again
    assert again.summary["restored"] == 0 and tree_state(target) == tree_state(src)


def test_a_differing_local_file_is_a_conflict_unless_overwrite(tmp_path, s3server, prefix, backed_up):
    src, files, _ = backed_up
    target = tmp_path / "restored"
    assert run_command("restore", "--target", target, *store_args(s3server, prefix), env=s3server.env()).returncode == 0
    (target / "mode0640").write_bytes(b"changed locally")
    result = run_command("restore", "--target", target, *store_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 1 and result.summary["conflicts"] == 1, result
    assert [e["path"] for e in result.find("restore.conflict")] == [str(target / "mode0640")]
    assert (target / "mode0640").read_bytes() == b"changed locally"  # left untouched
    forced = run_command("restore", "--target", target, *store_args(s3server, prefix), "--overwrite",
                         env=s3server.env())
    assert forced.returncode == 0 and forced.summary["restored"] == 1, forced
    assert tree_state(target) == tree_state(src)


def test_the_manifest_catches_an_object_replaced_with_self_consistent_metadata(tmp_path, s3, s3server, prefix,
                                                                                backed_up):
    _, _, manifest = backed_up
    forged = b"other bytes, with a sha256 that matches them"
    s3.put_object(Bucket=s3server.bucket, Key=prefix + "mode0600", Body=forged,
                  Metadata={"sha256": hashlib.sha256(forged).hexdigest(), "mode": "600"})
    trusting = run_command("restore", "--target", tmp_path / "a", *store_args(s3server, prefix), "--listing",
                           env=s3server.env())
    assert trusting.returncode == 0  # by the listing alone the forgery is self-consistent...
    snapshot = run_command("restore", "--target", tmp_path / "s", *store_args(s3server, prefix), env=s3server.env())
    assert snapshot.returncode == 1 and snapshot.summary["failed_by_type"] == {"NotVerified": 1}, snapshot
    assert not (tmp_path / "s" / "mode0600").exists()  # the snapshot's sha256 refuses it too (issue #20)
    checked = run_command("restore", "--target", tmp_path / "b", *store_args(s3server, prefix), "--manifest",
                          manifest, env=s3server.env())
    assert checked.returncode == 1 and checked.summary["failed_by_type"] == {"NotVerified": 1}, checked
    assert not (tmp_path / "b" / "mode0600").exists()  # ...with it, nothing is written under that name
    assert not [n for n in os.listdir(tmp_path / "b") if ".obsbatch-restore-" in n]

    assert run_command("verify", *store_args(s3server, prefix), "--listing", env=s3server.env()).returncode == 0
    # The snapshot recorded the upload's ETag (issue #21): the forgery's differs.
    by_snapshot = run_command("verify", *store_args(s3server, prefix), env=s3server.env())
    assert by_snapshot.returncode == 1 and [e["key"] for e in by_snapshot.find("verify.different")] == [
        prefix + "mode0600"], by_snapshot
    verified = run_command("verify", *store_args(s3server, prefix), "--manifest", manifest, env=s3server.env())
    assert verified.returncode == 1 and verified.summary["different"] == 1, verified
    [bad] = verified.find("verify.different")
    assert bad["key"] == prefix + "mode0600" and any("manifest says" in p for p in bad["problems"])


def test_verify_reads_back_a_sample_and_names_what_is_missing_or_corrupt(tmp_path, s3, s3server, prefix, backed_up):
    _, files, manifest = backed_up
    full = run_command("verify", *store_args(s3server, prefix), "--read-data", "100", env=s3server.env())
    assert full.returncode == 0 and full.summary["read_back"] == len(files), full
    some = run_command("verify", *store_args(s3server, prefix), "--read-data", "50", env=s3server.env())
    assert 0 < some.summary["read_back"] < len(files)
    assert run_command("verify", *store_args(s3server, prefix), "--read-data", "50",
                       env=s3server.env()).summary["read_back"] == some.summary["read_back"]  # deterministic
    # Bytes replaced under the old metadata: by the listing alone only reading the data shows it; the snapshot
    # recorded the upload's ETag, which the new bytes do not have (issue #21).
    head = s3.head_object(Bucket=s3server.bucket, Key=prefix + "mode0444")
    s3.put_object(Bucket=s3server.bucket, Key=prefix + "mode0444", Body=b"rot-9000!", Metadata=head["Metadata"])
    assert run_command("verify", *store_args(s3server, prefix), "--listing", env=s3server.env()).returncode == 0
    by_snapshot = run_command("verify", *store_args(s3server, prefix), env=s3server.env())
    assert by_snapshot.returncode == 1 and [e["key"] for e in by_snapshot.find("verify.different")] == [
        prefix + "mode0444"], by_snapshot
    rotted = run_command("verify", *store_args(s3server, prefix), "--listing", "--read-data", "100",
                         env=s3server.env())
    assert rotted.returncode == 1 and [e["key"] for e in rotted.find("verify.different")] == [prefix + "mode0444"]
    s3.delete_object(Bucket=s3server.bucket, Key=prefix + "empty")
    gone = run_command("verify", *store_args(s3server, prefix), "--manifest", manifest, env=s3server.env())
    assert gone.returncode == 1 and gone.summary["missing"] == 1, gone
    assert [e["key"] for e in gone.find("verify.missing")] == [prefix + "empty"]
    restored = run_command("restore", "--target", tmp_path / "r", *store_args(s3server, prefix), "--manifest",
                           manifest, env=s3server.env())
    assert restored.returncode == 1 and restored.summary["failed_by_type"].get("Missing") == 1, restored


def test_a_key_that_would_leave_the_target_is_never_written(tmp_path, moto, prefix):
    """SeaweedFS refuses such keys; moto's server stores them, as some stores do."""
    client = moto.client()
    bucket = f"odd-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for key in ("../escape.txt", "a/../../escape2.txt", "dir-marker/", "ok.txt"):
        client.put_object(Bucket=bucket, Key=prefix + key, Body=b"x")
    target = tmp_path / "t"
    args = ["--bucket", bucket, "--prefix", prefix, "--endpoint", moto.endpoint, "--region", "us-east-1",
            "--addressing-style", "path"]
    result = run_command("restore", "--target", target, *args, env=moto.env())
    assert result.returncode == 1 and result.summary["unsafe_keys"] == 3 and result.summary["restored"] == 1, result
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "escape2.txt").exists()
    assert os.listdir(target) == ["ok.txt"]


def test_an_archived_object_is_reported_not_failed_silently(tmp_path, moto, prefix):
    client = moto.client()
    bucket = f"cold-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=prefix + "frozen.bin", Body=b"cold", StorageClass="GLACIER")
    client.put_object(Bucket=bucket, Key=prefix + "warm.bin", Body=b"warm")
    args = ["--bucket", bucket, "--prefix", prefix, "--endpoint", moto.endpoint, "--region", "us-east-1",
            "--addressing-style", "path"]
    result = run_command("restore", "--target", tmp_path / "t", *args, env=moto.env())
    assert result.returncode == 1 and result.summary["archived"] == 1 and result.summary["restored"] == 1, result
    assert result.summary["unverified"] == 1  # warm.bin was not stored by obsbatch: no sha256 to check
    [archived] = result.find("restore.archived")
    assert archived["key"] == prefix + "frozen.bin"


def test_restore_with_an_sse_c_key(tmp_path, s3server, prefix):
    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"encrypted at rest", "big.bin": os.urandom(6 * MiB)})
    key_file = tmp_path / "key"
    key_file.write_bytes(os.urandom(32))
    assert run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", "--sse-c-key-file", key_file,
                        *SMALL_MULTIPART, env=s3server.env()).returncode == 0
    without = run_command("restore", "--target", tmp_path / "t1", *store_args(s3server, prefix), env=s3server.env())
    assert without.returncode == 2 and "cannot read the snapshots" in without.summary["error"], without  # encrypted too
    listing = run_command("restore", "--target", tmp_path / "t1", *store_args(s3server, prefix), "--listing",
                          env=s3server.env())
    assert listing.returncode == 1 and listing.summary["failed"] == 2
    result = run_command("restore", "--target", tmp_path / "t2", *store_args(s3server, prefix), "--sse-c-key-file",
                         key_file, env=s3server.env())
    assert result.returncode == 0 and result.summary["restored"] == 2, result
    assert {k: v[0] for k, v in tree_state(tmp_path / "t2").items()} == {k: v[0] for k, v in tree_state(src).items()}


def test_bad_input_to_restore_and_verify_is_one_sentence(tmp_path, s3server, prefix):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    cases = [(["restore", "--target", blocker / "sub", *store_args(s3server, prefix)], "cannot create the target"),
             (["restore", *store_args(s3server, prefix)], "--target is required"),
             (["verify", *store_args(s3server, prefix), "--manifest", tmp_path / "absent.jsonl"], "cannot read the manifest"),
             (["verify", "--bucket", "no-such-bucket-here", "--endpoint", s3server.endpoint, "--region", "us-east-1",
               "--addressing-style", "path"], "bucket 'no-such-bucket-here' does not exist at")]
    for args, sentence in cases:
        result = run_command(*args, env=s3server.env())
        assert result.returncode == 2, (args, result)
        assert sentence in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-800:])


def test_an_empty_prefix_is_exit_1_with_a_sentence_not_a_silent_zero(tmp_path, s3server, prefix):
    # A mistyped --prefix must not turn a monitoring job green while it checks nothing (issue #18).
    restored = run_command("restore", "--target", tmp_path / "t", *store_args(s3server, prefix), env=s3server.env())
    assert restored.returncode == 1 and restored.summary["listed"] == 0 and restored.find("restore.empty"), restored
    verified = run_command("verify", *store_args(s3server, prefix), env=s3server.env())
    assert verified.returncode == 1 and verified.find("verify.empty"), verified


def test_restore_dry_run_names_what_it_would_write_leave_and_refuse_and_writes_nothing(tmp_path, s3server, prefix,
                                                                                        backed_up):
    src, files, _ = backed_up
    untouched = tmp_path / "never-created"
    planned = run_command("restore", "--target", untouched, *store_args(s3server, prefix), "--dry-run",
                          env=s3server.env())
    assert planned.returncode == 0 and planned.summary["planned"] == len(files), planned
    assert planned.summary["restored"] == 0 and not untouched.exists()

    target = tmp_path / "restored"
    assert run_command("restore", "--target", target, *store_args(s3server, prefix), env=s3server.env()).returncode == 0
    (target / "mode0640").write_bytes(b"changed locally")
    (target / "mode0600").unlink()
    before = tree_state(target)
    dry = run_command("restore", "--target", target, *store_args(s3server, prefix), "--dry-run", env=s3server.env())
    assert dry.returncode == 1, dry  # the conflict a real restore would meet
    assert (dry.summary["planned"], dry.summary["conflicts"], dry.summary["identical"]) == (1, 1, len(files) - 2)
    assert [e["path"] for e in dry.find("restore.planned")] == [str(target / "mode0600")]
    assert tree_state(target) == before
