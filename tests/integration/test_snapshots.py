"""Snapshots (issue #20): every backup run records the whole tree; `restore --snapshot/--as-of` brings back
exactly that tree, entry by entry, on SeaweedFS with versioning on, on moto, and on a bucket without
versioning (where a changed object is refused, never served as the old file)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from tests.conftest import REPO, obsbatch_cmd, run_command, run_obsbatch, server_args


def store_args(server, bucket: str, prefix: str) -> list:
    return server_args(server, prefix, bucket=bucket)


def tree_state(root) -> dict:
    """Every entry under root, by its name as bytes: type, mode, owner, mtime (not of symlinks), content
    (bytes, or the link target), and for files the set of names sharing its inode (hardlinks)."""
    root = os.fsencode(str(root))
    state, inodes = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            kind = stat.S_IFMT(st.st_mode)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    content = handle.read()
                inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            state[rel] = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                          None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns, content, st.st_ino, st.st_rdev]
    for rel, entry in state.items():  # inode numbers differ after a restore; who shares one must not
        entry[6] = frozenset(inodes.get(entry[6], ())) if entry[0] == stat.S_IFREG else None
    return state


def differences(want: dict, got: dict) -> list:
    return [(rel, want.get(rel), got.get(rel)) for rel in sorted(set(want) | set(got)) if want.get(rel) != got.get(rel)]


def backup(server, bucket, prefix, source, *extra, state=None):
    result = run_obsbatch("--source", source, *store_args(server, bucket, prefix),
                          *(["--state", state] if state else []), *extra, env=server.env())
    return result


def restore(server, bucket, prefix, target, *extra):
    return run_command("restore", "--target", target, *store_args(server, bucket, prefix), *extra, env=server.env())


def test_a_copy_of_a_real_system_tree_round_trips_with_zero_differences(tmp_path, s3server, versioned, prefix):
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run(["cp", "-a", "/etc", str(source / "etc")], check=True)
    docs = sorted(os.listdir("/usr/share/doc"))[:40]
    (source / "doc").mkdir()
    for name in docs:
        subprocess.run(["cp", "-a", f"/usr/share/doc/{name}", str(source / "doc" / name)], check=True)
    (source / "empty" / "deeper").mkdir(parents=True)
    os.chmod(source / "empty", 0o700)
    os.mkfifo(source / "fifo")
    os.mknod(source / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    os.link(source / "etc" / "hostname", source / "hostname-again")
    os.symlink("does/not/exist", source / "dangling")
    with open(source / "sparse.img", "wb") as handle:  # 24 MiB, 4 KiB of it data
        handle.seek(10 << 20)
        handle.write(os.urandom(4096))
        handle.truncate(24 << 20)
    os.utime(source / "doc", ns=(1, 1_000_000_000_123_456_789))
    want = tree_state(source)
    kinds = {entry[0] for entry in want.values()}
    assert {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR} <= kinds

    done = backup(s3server, versioned, prefix, source)
    assert done.returncode == 0, done
    assert not done.find("preflight.unversioned")
    assert done.summary["snapshot"] and done.find("snapshot.written")[0]["symlinks"] > 100

    target = tmp_path / "restored"
    back = restore(s3server, versioned, prefix, target)
    assert back.returncode == 0, back
    assert back.summary["snapshot"] == done.summary["snapshot"]
    assert differences(want, tree_state(target)) == []
    assert os.stat(target / "sparse.img").st_blocks * 512 < 2 << 20  # its holes kept


def test_three_runs_each_snapshot_restores_the_tree_as_it_was(tmp_path, s3server, versioned, prefix):
    source, state = tmp_path / "src", tmp_path / "state.db"
    (source / "docs" / "old").mkdir(parents=True)
    (source / "docs" / "a.txt").write_bytes(b"first a")
    (source / "docs" / "old" / "b.txt").write_bytes(b"first b")
    (source / "keep.txt").write_bytes(b"kept all along")
    (source / "empty").mkdir()
    os.symlink("docs/a.txt", source / "to-a")
    os.link(source / "keep.txt", source / "keep-hardlink.txt")
    states, ids = [], []

    def run_and_remember():
        done = backup(s3server, versioned, prefix, source, state=state)
        assert done.returncode == 0, done
        states.append(tree_state(source))
        ids.append(done.summary["snapshot"])
        time.sleep(1.1)  # snapshot ids (and --as-of) resolve to the second
        return done

    run_and_remember()
    # Run 2: an edit, a deletion, a rename, a new symlink, a new empty directory, a mode change.
    (source / "docs" / "a.txt").write_bytes(b"second a, longer")
    (source / "docs" / "old" / "b.txt").unlink()
    os.rename(source / "docs" / "old", source / "docs" / "renamed")
    os.symlink("../keep.txt", source / "docs" / "to-keep")
    (source / "new-empty").mkdir()
    os.chmod(source / "docs", 0o750)
    second = run_and_remember()
    assert second.summary["uploaded"] == 1  # only a.txt: the rest are entries, not objects
    # Run 3: the hardlink pair broken into two files, the symlink re-pointed, a file deleted.
    os.unlink(source / "keep-hardlink.txt")
    (source / "keep-hardlink.txt").write_bytes(b"now a file of its own")
    os.unlink(source / "to-a")
    os.symlink("keep.txt", source / "to-a")
    (source / "docs" / "a.txt").unlink()
    run_and_remember()

    listed = run_command("snapshots", *store_args(s3server, versioned, prefix), "--json", env=s3server.env())
    assert listed.returncode == 0, listed
    records = json.loads(listed.stdout.strip().splitlines()[0])
    assert [r["id"] for r in records] == ids
    assert set(records[0]) == {"id", "time", "host", "source", "files", "bytes", "unstored", "exit_code", "head", "previous"}
    # Each record cites the head of the one before (the chain `snapshots` follows); the first cites none.
    assert [r["previous"] for r in records] == [None] + [r["head"] for r in records[:-1]]
    assert [r["files"] for r in records] == [4, 3, 2]  # a hardlink pair is two names

    for number, (snapshot_id, want) in enumerate(zip(ids, states)):
        target = tmp_path / f"restored-{number}"
        back = restore(s3server, versioned, prefix, target, "--snapshot", snapshot_id)
        assert back.returncode == 0, back
        assert differences(want, tree_state(target)) == [], number
    # With neither flag: the latest; a file deleted before it does not come back.
    latest = tmp_path / "latest"
    assert restore(s3server, versioned, prefix, latest).returncode == 0
    assert differences(states[2], tree_state(latest)) == []
    assert not (latest / "docs" / "a.txt").exists()
    # --as-of the second snapshot's time: that snapshot.
    as_of = tmp_path / "as-of"
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.strptime(ids[1][:15], "%Y%m%dT%H%M%S")) + ids[1][15:20]
    back = restore(s3server, versioned, prefix, as_of, "--as-of", moment)
    assert back.returncode == 0 and back.summary["snapshot"] == ids[1], back
    assert differences(states[1], tree_state(as_of)) == []
    # --listing: today's objects, the deleted ones among them (a listing knows nothing of deletions).
    listing = tmp_path / "listing"
    back = restore(s3server, versioned, prefix, listing, "--listing")
    assert back.returncode == 0 and back.summary["snapshot"] is None, back
    assert (listing / "docs" / "a.txt").read_bytes() == b"second a, longer"


def test_a_file_busy_in_a_run_keeps_its_last_stored_version_flagged(tmp_path, s3server, versioned, prefix, holder):
    source, state = tmp_path / "src", tmp_path / "state.db"
    source.mkdir()
    (source / "log.txt").write_bytes(b"version one")
    (source / "other.txt").write_bytes(b"other")
    assert backup(s3server, versioned, prefix, source, state=state).returncode == 0
    (source / "log.txt").write_bytes(b"version two, being written")
    writer = holder((source / "log.txt", os.O_WRONLY))
    busy = backup(s3server, versioned, prefix, source, state=state)
    writer.stop()
    assert busy.returncode == 0 and busy.summary["deferred"] == {"open_for_write": 1}, busy
    assert busy.find("snapshot.written")[0]["stale"] == 1
    target = tmp_path / "restored"
    back = restore(s3server, versioned, prefix, target)
    assert back.returncode == 0, back
    assert (target / "log.txt").read_bytes() == b"version one"
    # The writer is gone: the next run stores it, and its snapshot names the new version (the directory's tree
    # is rebuilt, not taken from the journal's cache of unchanged directories).
    settled = backup(s3server, versioned, prefix, source, state=state)
    assert settled.returncode == 0 and settled.summary["uploaded"] == 1, settled
    assert settled.find("snapshot.written")[0]["stale"] == 0
    later = tmp_path / "later"
    assert restore(s3server, versioned, prefix, later).returncode == 0
    assert (later / "log.txt").read_bytes() == b"version two, being written"
    assert (target / "other.txt").read_bytes() == (later / "other.txt").read_bytes() == b"other"


def test_without_versioning_a_changed_object_is_named_and_left_out(tmp_path, s3server, prefix):
    source, state = tmp_path / "src", tmp_path / "state.db"
    source.mkdir()
    (source / "changes.txt").write_bytes(b"as it was")
    (source / "stays.txt").write_bytes(b"unchanged")
    first = backup(s3server, s3server.bucket, prefix, source, state=state)
    assert first.returncode == 0, first
    [told] = first.find("preflight.unversioned")  # versioning told, not assumed
    assert "only the latest object" in told["detail"]
    time.sleep(1.1)
    (source / "changes.txt").write_bytes(b"as it is now")
    assert backup(s3server, s3server.bucket, prefix, source, state=state).returncode == 0

    target = tmp_path / "restored"
    back = restore(s3server, s3server.bucket, prefix, target, "--snapshot", first.summary["snapshot"])
    assert back.returncode == 1, back
    assert back.summary["restored"] == 1 and back.summary["failed"] == 1
    assert (target / "stays.txt").read_bytes() == b"unchanged"
    assert not (target / "changes.txt").exists()  # never the newer bytes under the old name
    failed = back.find("restore.failed")
    assert len(failed) == 1 and failed[0]["key"] == prefix + "changes.txt", back


def test_moto_round_trip(tmp_path, moto, prefix):
    client = moto.client()
    client.create_bucket(Bucket="moto-snapshots")
    client.put_bucket_versioning(Bucket="moto-snapshots", VersioningConfiguration={"Status": "Enabled"})
    source = tmp_path / "src"
    (source / "d" / "empty").mkdir(parents=True)
    (source / "d" / "f.bin").write_bytes(os.urandom(3000))
    os.symlink("d/f.bin", source / "link")
    os.link(source / "d" / "f.bin", source / "twin.bin")
    want = tree_state(source)
    assert backup(moto, "moto-snapshots", prefix, source).returncode == 0
    (source / "d" / "f.bin").write_bytes(b"overwritten after the snapshot")
    assert backup(moto, "moto-snapshots", prefix, source).returncode == 0
    first = run_command("snapshots", *store_args(moto, "moto-snapshots", prefix), "--json", env=moto.env())
    first_id = json.loads(first.stdout.strip().splitlines()[0])[0]["id"]
    target = tmp_path / "restored"
    back = restore(moto, "moto-snapshots", prefix, target, "--snapshot", first_id)
    assert back.returncode == 0, back
    assert differences(want, tree_state(target)) == []


def test_a_restore_of_no_such_snapshot_is_one_sentence_exit_2(tmp_path, s3server, prefix):
    back = restore(s3server, s3server.bucket, prefix, tmp_path / "t", "--snapshot", "20200101T000000.000Z-00000000")
    assert back.returncode == 2 and back.summary["error"].startswith("there is no snapshot"), back
    assert "Traceback" not in back.stderr
    shutil.rmtree(tmp_path / "t", ignore_errors=True)


def test_verify_checks_a_snapshot_and_catches_one_tampered_in_the_store(tmp_path, s3server, versioned, prefix):
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    for n in range(4):
        (source / "d" / f"{n}.txt").write_bytes(os.urandom(200 + n))
    done = backup(s3server, versioned, prefix, source)
    assert done.returncode == 0, done
    snapshot_id = done.summary["snapshot"]
    args = [*store_args(s3server, versioned, prefix), "--snapshot", snapshot_id]
    good = run_command("verify", *args, "--read-data", "100", env=s3server.env())
    assert good.returncode == 0 and good.summary["ok"] == 4 and good.summary["read_back"] == 4, good

    client = s3server.client()
    area = prefix.rstrip("/") + ".obsbatch/snapshots/"
    # A pack altered in the store: its tree no longer matches its hash.
    pack_key = f"{area}packs/{snapshot_id}"
    pack = bytearray(client.get_object(Bucket=versioned, Key=pack_key)["Body"].read())
    pack[-1] ^= 0xFF
    client.put_object(Bucket=versioned, Key=pack_key, Body=bytes(pack))
    damaged = run_command("verify", *args, env=s3server.env())
    assert damaged.returncode == 1 and "the snapshot is damaged" in damaged.summary["error"], damaged
    assert "Traceback" not in damaged.stderr
    # A record altered: it claims fewer files than it was sealed with.
    record_key = f"{area}{snapshot_id}.json"
    record = json.loads(client.get_object(Bucket=versioned, Key=record_key)["Body"].read())
    record["files"] = 1
    client.put_object(Bucket=versioned, Key=record_key, Body=json.dumps(record).encode())
    altered = run_command("verify", *args, env=s3server.env())
    assert altered.returncode == 1 and "does not match its head" in altered.summary["error"], altered
    assert restore(s3server, versioned, prefix, tmp_path / "t", "--snapshot", snapshot_id).returncode == 1
    listed = run_command("snapshots", *store_args(s3server, versioned, prefix), env=s3server.env())
    assert listed.returncode == 1 and "DAMAGED" in listed.stdout, listed


@pytest.mark.parametrize("kept", ["versions", "no versions"])
def test_verify_proves_a_snapshot_by_its_listing_and_heads_only_what_it_cannot(tmp_path, s3server, versioned, prefix,
                                                                               proxy, kept):
    """Issue #21: a verify of a snapshot is one listing request per 1,000 objects, not one HEAD per object: a
    recorded version id (or, without versions, the recorded ETag) with the recorded size proves a file. What
    the listing does not show as recorded gets a HEAD, which names what is wrong."""
    bucket = versioned if kept == "versions" else s3server.bucket
    source = tmp_path / "src"
    for d in range(3):
        (source / f"d{d}").mkdir(parents=True)
        for n in range(10):
            (source / f"d{d}" / f"f{n}").write_bytes(os.urandom(100 + n))
    assert backup(s3server, bucket, prefix, source).returncode == 0
    args = server_args(s3server, prefix, proxy.endpoint, bucket=bucket)
    clean = run_command("verify", *args, env=s3server.env())
    assert clean.returncode == 0 and clean.summary["ok"] == 30 and clean.summary["snapshot"], clean
    # A bucket that never had versions is listed with ListObjectsV2 (cheaper), one that has with its versions.
    assert proxy.count("HEAD", prefix) == 0 and proxy.count("GET", r"[?&]versions" if kept == "versions"
                                                         else r"[?&]list-type=2") >= 1

    client, key = s3server.client(), prefix + "d1/f3"
    stored = client.head_object(Bucket=bucket, Key=key)
    if kept == "versions":
        # A later version under the key: the snapshot's own is still there, and its listed id proves it.
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * 103, Metadata=stored["Metadata"])
        later = run_command("verify", *args, env=s3server.env())
        assert later.returncode == 0 and later.summary["ok"] == 30 and proxy.count("HEAD", prefix) == 0, later
        # The snapshot's version deleted: the later one does not stand in for it.
        client.delete_object(Bucket=bucket, Key=key, VersionId=stored["VersionId"])
    else:  # other bytes of the same size, under the old metadata
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * 103, Metadata=stored["Metadata"])
    heads = proxy.count("HEAD", prefix)
    tampered = run_command("verify", *args, env=s3server.env())
    assert tampered.returncode == 1 and tampered.summary["ok"] == 29, tampered
    found = tampered.find("verify.missing" if kept == "versions" else "verify.different")
    assert [e["key"] for e in found] == [key], tampered
    assert proxy.count("HEAD", prefix) - heads == 1  # only the one the listing could not prove
    # --listing holds each object against its own HEAD: the replaced one is self-consistent there.
    listed = run_command("verify", *args, "--listing", env=s3server.env())
    assert listed.summary["checked"] == 30 and proxy.count("HEAD", prefix) - heads == 31, listed


def test_the_mass_change_guard_uploads_nothing_and_exits_4(tmp_path, s3server, versioned, prefix):
    source, state = tmp_path / "src", tmp_path / "state.db"
    source.mkdir()
    for n in range(120):
        (source / f"{n:03}.txt").write_bytes(b"original %d" % n)
    first = backup(s3server, versioned, prefix, source, state=state)
    assert first.returncode == 0, first

    def snapshot_count():
        listed = run_command("snapshots", *store_args(s3server, versioned, prefix), "--json", env=s3server.env())
        return len(json.loads(listed.stdout.strip().splitlines()[0]))

    # A wrong mount: the source is an empty directory now.
    os.rename(source, tmp_path / "aside")
    source.mkdir()
    empty = backup(s3server, versioned, prefix, source, state=state)
    assert empty.returncode == 4, empty
    assert empty.find("run.mass_change")[0]["vanished"] == 120 and empty.summary["snapshot"] is None
    source.rmdir()
    os.rename(tmp_path / "aside", source)
    # Ransomware: 70 of 120 files rewritten (58 %).
    for n in range(70):
        (source / f"{n:03}.txt").write_bytes(b"encrypted!! %d" % n)
    attacked = backup(s3server, versioned, prefix, source, state=state)
    assert attacked.returncode == 4 and attacked.summary["uploaded"] == 0, attacked
    figures = attacked.find("run.mass_change")[0]
    assert (figures["changed"], figures["vanished"], figures["share_percent"]) == (70, 0, 58.3)
    assert "Traceback" not in attacked.stderr
    client = s3server.client()
    assert client.get_object(Bucket=versioned, Key=prefix + "000.txt")["Body"].read() == b"original 0"
    assert snapshot_count() == 1
    # Meant after all: a higher bound lets it through.
    meant = backup(s3server, versioned, prefix, source, "--max-changed", "100", state=state)
    assert meant.returncode == 0 and meant.summary["uploaded"] == 70, meant
    assert snapshot_count() == 2


def test_include_restores_only_what_it_names_and_the_directories_on_its_way(tmp_path, s3server, versioned, prefix):
    source = tmp_path / "src"
    (source / "db" / "dumps").mkdir(parents=True)
    (source / "www" / "empty").mkdir(parents=True)
    (source / "db" / "dumps" / "x.sql").write_bytes(b"dump")
    (source / "www" / "index.html").write_bytes(b"<html>")
    os.chmod(source / "db", 0o710)
    assert backup(s3server, versioned, prefix, source).returncode == 0
    target = tmp_path / "restored"
    back = restore(s3server, versioned, prefix, target, "--include", "db/*")
    assert back.returncode == 0 and back.summary["restored"] == 1, back
    assert sorted(tree_state(target)) == [b"db", b"db/dumps", b"db/dumps/x.sql"]
    assert stat.S_IMODE(os.stat(target / "db").st_mode) == 0o710  # the attributes of those it made


def test_move_mode_is_not_taken_for_a_mass_deletion(tmp_path, s3server, versioned, prefix):
    source, state = tmp_path / "src", tmp_path / "state.db"
    source.mkdir()
    for n in range(110):
        (source / f"{n:03}.csv").write_bytes(b"row %d" % n)
    moved = backup(s3server, versioned, prefix, source, "--delete-source", state=state)
    assert moved.returncode == 0 and moved.summary["deleted"] == 110 and not os.listdir(source), moved
    (source / "next.csv").write_bytes(b"the next export")
    again = backup(s3server, versioned, prefix, source, "--delete-source", state=state)
    assert again.returncode == 0 and again.summary["uploaded"] == 1, again  # 110 gone, by obsbatch itself
    assert not again.find("run.mass_change")


def test_a_run_with_nothing_to_upload_sends_its_record_without_botocore(tmp_path, s3server, versioned, prefix, proxy):
    """The first run's pre-flight learns botocore's URL for the bucket (in its worker), and every run PUTs its
    record through s3.lean, the first one included (issue #21: no botocore import in the parent); a learned
    URL that no longer works falls back to botocore, and the record is stored."""
    source, state = tmp_path / "src", tmp_path / "state.db"
    source.mkdir()
    (source / "a.txt").write_bytes(b"a")
    args = ["--source", source, *server_args(s3server, prefix, proxy.endpoint, bucket=versioned), "--state", state]
    first = run_obsbatch(*args, env=s3server.env())
    assert first.find("snapshot.written")[0]["sent_by"] == "obsbatch", first
    quiet = run_obsbatch(*args, env=s3server.env())
    assert quiet.returncode == 0 and quiet.find("snapshot.written")[0]["sent_by"] == "obsbatch", quiet
    # A run with a change sends its pack (a file body) the same way, whole.
    (source / "a.txt").write_bytes(b"a, changed")
    proxy.clients.clear()
    changed = run_obsbatch(*args, "--debug", "debug", env=s3server.env(), timeout=60)
    assert changed.returncode == 0 and changed.find("snapshot.written")[0]["sent_by"] == "obsbatch", changed
    assert not changed.find("lean.fallback") and changed.find("snapshot.written")[0]["new_trees"] == 1
    # The pack and the record went on one connection (a far store's handshake paid once, issue #21).
    snapshot_puts = [port for method, path, port in proxy.clients if method == "PUT" and ".obsbatch/snapshots/" in path]
    assert len(snapshot_puts) == 2 and len(set(snapshot_puts)) == 1, proxy.clients
    back = run_command("restore", "--target", tmp_path / "back", *server_args(s3server, prefix, bucket=versioned),
                       env=s3server.env())
    assert back.returncode == 0 and (tmp_path / "back" / "a.txt").read_bytes() == b"a, changed", back
    # Through a proxy variable, or with a learned URL gone stale, botocore sends it.
    proxied = run_obsbatch(*args, env=dict(s3server.env(), HTTPS_PROXY="http://127.0.0.1:9"))
    assert proxied.returncode == 0 and proxied.find("snapshot.written")[0]["sent_by"] == "botocore", proxied
    import sqlite3

    with sqlite3.connect(state) as db:
        db.execute("UPDATE store_urls SET base = replace(base, ?, 'no-such-bucket')", (versioned,))
    stale = run_obsbatch(*args, "--debug", "debug", env=s3server.env())
    assert stale.returncode == 0 and stale.find("lean.fallback"), stale
    assert stale.find("snapshot.written")[0]["sent_by"] == "botocore"
    healed = run_obsbatch(*args, "--debug", "debug", env=s3server.env())  # the stale URL was replaced
    assert healed.find("snapshot.written")[0]["sent_by"] == "obsbatch" and not healed.find("lean.fallback"), healed
    listed = run_command("snapshots", *server_args(s3server, prefix, bucket=versioned), "--json", env=s3server.env())
    assert len(json.loads(listed.stdout.strip().splitlines()[0])) == 6


@pytest.mark.serial
def test_ctrl_c_while_reading_many_records_stops_at_once(s3, s3server, prefix, proxy):
    """`obsbatch snapshots` reads a prefix's records 32 at once (issue #22). A Ctrl-C among them ends it in
    moments, with one line and exit 130 (it printed a traceback), and the reads not yet started are not sent."""
    import signal

    from obsbatch import snapshot
    from obsbatch.testing.faultproxy import Fault
    from tests.conftest import finish, start_obsbatch

    now = time.time()
    for n in range(320):  # ten rounds of 32 reads; their bodies need not be records (damaged is listed too)
        s3.put_object(Bucket=s3server.bucket, Key=snapshot.record_key(prefix, snapshot.new_id(now - n)), Body=b"{}")
    held = Fault(method="GET", path=r"snapshots/[^/]+\.json", action="hold", delay=1.0, times=None)
    proxy.add(held)  # each read takes a second: ten seconds to read them all
    proc = start_obsbatch("snapshots", *server_args(s3server, prefix, proxy.endpoint), "--json", env=s3server.env())
    assert held.arrived.wait(30), "no record was read"
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    result = finish(proc, timeout=30)
    stopped_after = time.monotonic() - interrupted
    assert result.returncode == 130 and "Traceback" not in result.stderr, result
    assert len(result.find("snapshots.interrupted")) == 1, result
    assert stopped_after < 4, f"took {stopped_after:.1f} s after the interrupt: the queued reads were not cancelled"
    assert len(proxy.seen) < 100, len(proxy.seen)  # a listing and the reads in flight, not all 320


def test_a_fully_deferred_first_run_writes_no_empty_latest_snapshot(tmp_path, s3server, versioned, prefix):
    """A tree copied a moment ago (every file too new): no files=0 snapshot becomes the latest; exit 1, said.
    Files in no snapshot yet are counted in the record and shown by `snapshots`, under a header."""
    source = tmp_path / "src"
    source.mkdir()
    for n in range(3):
        (source / f"f{n}").write_bytes(b"new")
    state = str(tmp_path / "state.db")
    first = backup(s3server, versioned, prefix, source, "--min-age", "600", state=state)
    assert first.returncode == 1, first
    assert first.find("snapshot.withheld") and first.summary["snapshot"] is None
    assert first.summary["snapshot_withheld"] is True and first.summary["snapshot_unstored"] == 3
    none = run_command("snapshots", *store_args(s3server, versioned, prefix), env=s3server.env())
    assert none.returncode == 1 and none.find("snapshots.none"), none
    assert backup(s3server, versioned, prefix, source, state=state).returncode == 0
    (source / "late").write_bytes(b"too new")
    third = backup(s3server, versioned, prefix, source, "--min-age", "600", state=state)
    assert third.returncode == 0 and third.summary["snapshot_unstored"] == 1, third
    listed = run_command("snapshots", *store_args(s3server, versioned, prefix), env=s3server.env())
    header, *rows = listed.stdout.splitlines()[:-1]
    assert header.split() == ["ID", "TIME", "HOST", "SOURCE", "FILES", "BYTES", "UNSTORED", "EXIT_CODE", "HEAD"]
    assert [row.split("  ")[6] for row in rows] == ["0", "1"]


def test_a_run_with_a_fresh_journal_uploads_nothing_the_latest_snapshot_holds(tmp_path, s3server, versioned, prefix):
    """Another --state (another user, a rebuilt host): the journal knows nothing under the prefix, so the run
    seeds it from this host's latest snapshot; the unchanged files are compared (read, hashed), not uploaded,
    and the next snapshot still names the versions they are stored as."""
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    for n in range(5):
        (source / "d" / f"f{n}").write_bytes(os.urandom(1000 + n))
    (source / "big").write_bytes(os.urandom(6 << 20))  # multipart: compared by its sha256 metadata
    first = backup(s3server, versioned, prefix, source, "--multipart-threshold", "5MiB",
                   state=str(tmp_path / "one.db"))
    assert first.returncode == 0 and first.summary["uploaded"] == 6, first
    (source / "d" / "f0").write_bytes(b"changed since")
    (source / "new").write_bytes(b"new file")
    again = backup(s3server, versioned, prefix, source, "--multipart-threshold", "5MiB",
                   state=str(tmp_path / "other.db"))
    assert again.returncode == 0, again
    assert again.find("journal.seeded")[0]["files"] == 6
    assert again.summary["uploaded"] == 2 and again.summary["skipped"].get("already_stored") == 5, again.summary
    target = tmp_path / "t"
    restored = restore(s3server, versioned, prefix, target)
    assert restored.returncode == 0, restored
    assert differences(tree_state(source), tree_state(target)) == []


def _xattrs_of(path) -> dict:
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in os.listxattr(path, follow_symlinks=False)}


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* and security.capability are read and set as root")
@pytest.mark.parametrize("server_name", ["s3server", "moto"])
def test_extended_attributes_acls_and_capabilities_round_trip(tmp_path, request, server_name, prefix):
    """user.* and trusted.* attributes, a POSIX ACL (access on a file, default on a directory) and a file
    capability (cap_net_raw, as /usr/bin/ping has) are recorded and restored exactly; ls --long names them,
    and diff calls a changed one a metadata change."""
    import struct

    server = request.getfixturevalue(server_name)
    bucket = f"xattr-{server_name.lower()}"
    client = server.client()
    if bucket not in [one["Name"] for one in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
        (1, 6, 0xFFFFFFFF), (2, 4, 1234), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)))
    capability = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep
    source = tmp_path / "src"
    (source / "shared").mkdir(parents=True)
    ping = source / "ping"
    ping.write_bytes(b"\x7fELF not really")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", capability)
    os.setxattr(ping, "user.origin", b"debian")
    os.setxattr(ping, "trusted.note", b"\x00\xffbinary")
    os.setxattr(source / "shared", "system.posix_acl_default", acl)
    (source / "shared" / "doc.txt").write_bytes(b"doc")
    os.setxattr(source / "shared" / "doc.txt", "system.posix_acl_access", acl)
    os.symlink("ping", source / "link")
    os.setxattr(source / "link", "trusted.onlink", b"yes", follow_symlinks=False)
    want = {rel: _xattrs_of(source / rel) for rel in ("ping", "shared", "shared/doc.txt", "link")}
    assert want["ping"]["security.capability"] == capability
    state = str(tmp_path / "state.db")
    args = store_args(server, bucket, prefix)
    first = run_obsbatch("--source", source, *args, "--state", state, env=server.env())
    assert first.returncode == 0, first
    target = tmp_path / "t"
    restored = run_command("restore", "--target", target, *args, env=server.env())
    assert restored.returncode == 0, restored
    assert {rel: _xattrs_of(target / rel) for rel in want} == want
    assert differences(tree_state(source), tree_state(target)) == []
    listed = run_command("ls", *args, "--long", "--json", env=server.env())
    names = {json.loads(line)["path"]: json.loads(line).get("xattrs") for line in listed.stdout.splitlines()[:-1]}
    assert names["ping"] == ["security.capability", "trusted.note", "user.origin"] and names["shared"] == [
        "system.posix_acl_default"]
    os.setxattr(ping, "user.origin", b"changed")
    second = run_obsbatch("--source", source, *args, "--state", state, env=server.env())
    assert second.returncode == 0, second
    ids = [one["id"] for one in json.loads(run_command("snapshots", *args, "--json",
                                                       env=server.env()).stdout.splitlines()[0])]
    changed = run_command("diff", *args, *ids, env=server.env())
    assert changed.stdout.splitlines()[:-2] == ["U  ping"], changed
    # A tar stream of the snapshot carries them too (GNU tar's SCHILY.xattr records).
    extracted = tmp_path / "x"
    extracted.mkdir()
    dump = subprocess.Popen(obsbatch_cmd("dump", *args, "--snapshot", ids[0], "/"), stdout=subprocess.PIPE,
                            env=dict(os.environ, **server.env(), PYTHONPATH=str(REPO)))
    untar = subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(extracted)],
                           stdin=dump.stdout, capture_output=True)
    dump.stdout.close()
    assert dump.wait() == 0 and untar.returncode == 0, untar.stderr
    for rel in ("ping", "shared", "shared/doc.txt"):  # GNU tar sets none on a symlink
        assert _xattrs_of(extracted / rel) == want[rel], rel
