"""Renames, moves and attribute changes cost no upload: a file whose bytes a verified upload already stored is
made by a server-side CopyObject of that version with the file's own metadata (engine.upload.Uploader._copied),
counted at the fault proxy (every PUT with or without x-amz-copy-source), and the snapshots restore exactly."""

from __future__ import annotations

import os
import shutil

from obsbatch.testing import otlp
from tests.conftest import run_command, run_obsbatch, server_args
from tests.integration.test_snapshots import differences, tree_state

FILES = 300


def _tree(root, files: int = FILES) -> None:
    photos = root / "photos"
    photos.mkdir(parents=True)
    for n in range(files):
        (photos / f"p{n:04d}.jpg").write_bytes(os.urandom(1500 + n))
    (photos / "album.bin").write_bytes(os.urandom(9 << 20))  # above --multipart-threshold 8 MiB
    (root / "notes.txt").write_bytes(b"unrelated\n")


def _backup(server, endpoint, bucket, prefix, source):
    result = run_obsbatch("--source", source, *server_args(server, prefix, endpoint=endpoint, bucket=bucket),
                          "--multipart-threshold", "8MiB", env=server.env())
    assert result.returncode == 0, result
    return result.summary


def _restore(server, bucket, prefix, target, *extra):
    result = run_command("restore", "--target", target, *server_args(server, prefix, bucket=bucket), *extra,
                         env=server.env())
    assert result.returncode == 0, result
    return result


def _bodies(proxy, part: str) -> list:
    """The PUTs that carried a file's bytes to a key with `part` in its path."""
    return [(path, length) for path, length in proxy.puts if part in path]


def test_a_renamed_directory_and_a_chmod_are_server_side_copies_and_restore_exactly(tmp_path, s3server, versioned,
                                                                                    prefix, proxy):
    source = tmp_path / "src"
    _tree(source)
    first = _backup(s3server, proxy.endpoint, versioned, prefix, source)
    assert first["uploaded"] == FILES + 2 and first["copied"] == 0
    before_rename = tree_state(source)

    os.rename(source / "photos", source / "pictures")
    proxy.puts.clear()
    proxy.copies.clear()
    renamed = _backup(s3server, proxy.endpoint, versioned, prefix, source)
    assert _bodies(proxy, "/pictures/") == []
    assert len([path for path in proxy.copies if "/pictures/" in path]) == FILES + 1
    assert (renamed["uploaded"], renamed["copied"], renamed["bytes_uploaded"]) == (FILES + 1, FILES + 1, 0)

    # A chmod of 100 files and a chown of one: copies onto themselves with the new metadata. One file gets
    # other bytes of the same size under the same mtime (as `touch -r` leaves it): that one is uploaded.
    pictures = sorted((source / "pictures").glob("p*.jpg"))
    for path in pictures[:100]:
        os.chmod(path, 0o600)
    os.chown(pictures[100], 1234, 5678)
    edited = pictures[101]
    st = edited.stat()
    edited.write_bytes(os.urandom(st.st_size))
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    proxy.puts.clear()
    proxy.copies.clear()
    changed = _backup(s3server, proxy.endpoint, versioned, prefix, source)
    assert [path.rsplit("/", 1)[1] for path, _ in _bodies(proxy, "/pictures/")] == [edited.name]
    assert len([path for path in proxy.copies if "/pictures/" in path]) == 101
    assert (changed["uploaded"], changed["copied"]) == (102, 101)
    head = s3server.client().head_object(Bucket=versioned, Key=f"{prefix}pictures/{pictures[0].name}")
    assert head["Metadata"]["mode"] == "600" and head["ContentLength"] == pictures[0].stat().st_size
    owner = s3server.client().head_object(Bucket=versioned, Key=f"{prefix}pictures/{pictures[100].name}")
    assert (owner["Metadata"]["uid"], owner["Metadata"]["gid"]) == ("1234", "5678")

    latest = tmp_path / "latest"
    _restore(s3server, versioned, prefix, latest)
    assert differences(tree_state(source), tree_state(latest)) == []
    # The snapshot from before the rename still restores the old tree (its versions were not touched).
    snapshots = run_command("snapshots", *server_args(s3server, prefix, bucket=versioned), env=s3server.env())
    oldest = snapshots.stdout.split("\n")[1].split()[0]
    old = tmp_path / "old"
    _restore(s3server, versioned, prefix, old, "--snapshot", oldest)
    assert differences(before_rename, tree_state(old)) == []


def test_a_copy_the_store_refuses_is_uploaded_instead(tmp_path, s3server, prefix, proxy):
    """The source's object is gone (deleted by hand, pruned) or was replaced since it was journaled: the
    store refuses the copy (404; 412 on If-Match), and the file's bytes go up as for any new file."""
    bucket = s3server.bucket
    source = tmp_path / "src"
    _tree(source, files=4)
    _backup(s3server, proxy.endpoint, bucket, prefix, source)
    client = s3server.client()
    client.delete_object(Bucket=bucket, Key=f"{prefix}photos/p0000.jpg")
    client.put_object(Bucket=bucket, Key=f"{prefix}photos/p0001.jpg", Body=os.urandom(1501))
    shutil.move(str(source / "photos"), str(source / "moved"))
    proxy.puts.clear()
    proxy.copies.clear()
    summary = _backup(s3server, proxy.endpoint, bucket, prefix, source)
    assert sorted(path.rsplit("/", 1)[1] for path, _ in _bodies(proxy, "/moved/")) == ["p0000.jpg", "p0001.jpg"]
    assert (summary["uploaded"], summary["copied"]) == (5, 3)
    restored = tmp_path / "restored"
    _restore(s3server, bucket, prefix, restored)
    assert differences(tree_state(source), tree_state(restored)) == []


def test_on_moto_a_replaced_source_is_caught_by_the_etag_and_uploaded_over(tmp_path, moto, prefix):
    """moto copies without checking x-amz-copy-source-if-match: the copy's ETag (the MD5 of what it copied)
    is then neither the source's nor the file's, and the file's own bytes are uploaded over it."""
    bucket = "copies-" + prefix.strip("/").lower()
    moto.client().create_bucket(Bucket=bucket)
    source = tmp_path / "src"
    _tree(source, files=3)
    _backup(moto, moto.endpoint, bucket, prefix, source)
    moto.client().put_object(Bucket=bucket, Key=f"{prefix}photos/p0002.jpg", Body=os.urandom(1502))
    os.rename(source / "photos", source / "pictures")
    os.chmod(source / "notes.txt", 0o640)
    result = run_obsbatch("--source", source, *server_args(moto, prefix, bucket=bucket), "--multipart-threshold",
                          "8MiB", env=moto.env())
    assert result.returncode == 0, result
    assert (result.summary["uploaded"], result.summary["copied"]) == (5, 4)
    assert len(result.find("upload.copy_mismatch")) == 1
    restored = tmp_path / "restored"
    _restore(moto, bucket, prefix, restored)
    assert differences(tree_state(source), tree_state(restored)) == []


def test_an_sse_c_object_is_copied_with_its_key_and_read_back(tmp_path, s3server, prefix, proxy):
    """Under SSE-C the source is read with the same key (x-amz-copy-source-server-side-encryption-customer-*)
    and the copy is stored under it; the ETag is no MD5 there, so the read-back (--verify-after-upload) and the
    restore check the bytes."""
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(os.urandom(32))
    bucket = s3server.bucket
    source = tmp_path / "src"
    _tree(source, files=3)
    args = ("--sse-c-key-file", key_file, "--verify-after-upload")

    def run():
        return run_obsbatch("--source", source, *server_args(s3server, prefix, endpoint=proxy.endpoint, bucket=bucket),
                            *args, env=s3server.env())

    assert run().returncode == 0
    os.rename(source / "photos", source / "pictures")
    proxy.puts.clear()
    result = run()
    assert result.returncode == 0, result
    assert (result.summary["copied"], _bodies(proxy, "/pictures/")) == (4, [])
    restored = tmp_path / "restored"
    _restore(s3server, bucket, prefix, restored, "--sse-c-key-file", key_file)
    assert differences(tree_state(source), tree_state(restored)) == []


def test_copies_are_told_apart_in_the_trace_and_the_metrics(tmp_path, s3server, prefix, receiver):
    """A copy is an uploaded file whose bytes were not sent: the root span counts them (obsbatch.files.copied,
    obsbatch.bytes.copied), its span names the source, and the metrics carry obsbatch.copied."""
    source = tmp_path / "src"
    _tree(source, files=3)
    env = dict(s3server.env(), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    args = ("--source", source, *server_args(s3server, prefix), "--multipart-threshold", "8MiB")
    assert run_obsbatch(*args, env=env).returncode == 0
    os.rename(source / "photos", source / "pictures")
    receiver.traces.clear()
    receiver.metrics.clear()
    result = run_obsbatch(*args, env=env)
    assert result.returncode == 0 and result.summary["copied"] == 4, result
    spans = receiver.spans()
    [root] = [span for span, _ in spans if span.name == "obsbatch.run"]
    attributes = otlp.attributes(root.attributes)
    assert (attributes["obsbatch.files.copied"], attributes["obsbatch.bytes.uploaded"]) == (4, 0)
    assert attributes["obsbatch.bytes.copied"] == sum(p.stat().st_size for p in (source / "pictures").iterdir())
    copied_from = sorted(otlp.attributes(span.attributes).get("obsbatch.copied_from", "")
                         for span, _ in spans if span.name == "obsbatch.upload")
    assert copied_from == sorted(f"{prefix}photos/{p.name}" for p in (source / "pictures").iterdir())
    files = {(a["obsbatch.outcome"], a.get("obsbatch.copied", False)): v
             for a, v in receiver.metric_points()["obsbatch.files"] if a.get("obsbatch.reason") is None}
    assert files == {("uploaded", True): 4}
