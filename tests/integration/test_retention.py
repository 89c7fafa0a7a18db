"""`obsbatch forget [--prune]` on SeaweedFS with versioning on (and moto): five snapshots with edits and a
deletion; --dry-run changes nothing; --keep-last 2 --prune leaves the two kept snapshots restoring exactly,
removes every version only the forgotten ones named (counted against the version listing), keeps the chain
whole across the gap, and a backup of another host running during the prune loses nothing; under Object
Lock the locked versions are named and counted, not an error."""

from __future__ import annotations

import json
import os
import uuid

from obsbatch.testing.faultproxy import Fault
from tests.conftest import finish, run_command, run_obsbatch, server_args, start_obsbatch
from tests.integration.test_snapshots import differences, tree_state


def versions(client, bucket: str, prefix: str) -> set:
    """(key, version id) of every version and delete marker under the prefix and its snapshot area."""
    found = set()
    for area in (prefix, prefix.rstrip("/") + ".obsbatch/"):
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=area):
            for one in page.get("Versions", []) + page.get("DeleteMarkers", []):
                found.add((one["Key"], one["VersionId"]))
    return found


class Store:
    def __init__(self, server, bucket: str, root, lock: bool = False):
        self.server, self.bucket, self.root = server, bucket, root
        self.prefix = f"r-{uuid.uuid4().hex[:10]}/"
        client = server.client()
        if lock:
            client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        else:
            client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        self.client = client

    def args(self, host: str = "h1", endpoint: str | None = None) -> list:
        return [*server_args(self.server, self.prefix, bucket=self.bucket, endpoint=endpoint), "--host-id", host]

    def backup(self, source, host: str = "h1", *extra) -> None:
        result = run_obsbatch("--source", source, *self.args(host), "--state", self.root / f"{host}.db", *extra,
                              env=self.server.env())
        assert result.returncode == 0, result

    def run(self, command: str, *args, host: str = "h1"):
        return run_command(command, *args, *self.args(host), env=self.server.env())

    def ids(self) -> list:
        listed = self.run("snapshots", "--json")
        assert listed.returncode == 0, listed
        return [one["id"] for one in json.loads(listed.stdout.splitlines()[0])]


def five_runs(store: Store) -> list:
    """Five snapshots of h1: a.txt edited each run, b.txt deleted in the third, e.txt added in the fifth;
    the tree's state after each run."""
    source = store.root / "src"
    (source / "c").mkdir(parents=True)
    (source / "b.txt").write_bytes(b"bee")
    (source / "c" / "d.txt").write_bytes(b"dee")
    states = []
    for run in range(1, 6):
        (source / "a.txt").write_bytes(b"a" * run)
        if run == 3:
            (source / "b.txt").unlink()
        if run == 5:
            (source / "e.txt").write_bytes(b"e")
        store.backup(source)
        states.append(tree_state(source))
    return states


def test_forget_keep_last_2_prune_keeps_exactly_what_the_kept_snapshots_need(s3server, proxy, tmp_path):
    store = Store(s3server, f"forget-{uuid.uuid4().hex[:8]}", tmp_path)
    states = five_runs(store)
    ids = store.ids()
    assert len(ids) == 5
    before = versions(store.client, store.bucket, store.prefix)

    dry = store.run("forget", "--keep-last", "2", "--prune", "--prune-grace", "0s", "--dry-run", "--json")
    assert dry.returncode == 0, dry
    assert versions(store.client, store.bucket, store.prefix) == before  # nothing changed
    said = [json.loads(line) for line in dry.stdout.splitlines()[:-1]]
    assert [(one["action"], one["id"]) for one in said if "action" in one] == [
        ("keep", ids[4]), ("keep", ids[3]), ("forget", ids[2]), ("forget", ids[1]), ("forget", ids[0])]
    would = {(one["would_delete"], one["version_id"]) for one in said if "would_delete" in one}

    # A second host's backup runs during the prune: its objects and pack are stored, its record is held at the
    # proxy; they are newer than h1's latest snapshot, and no snapshot names them yet.
    other = tmp_path / "other"
    other.mkdir()
    for n in range(20):
        (other / f"small{n:02d}").write_bytes(os.urandom(4096))
    held = proxy.add(Fault(path=r"\.obsbatch/snapshots/[^/]*\.json", method="PUT", action="hold", delay=8))
    running = start_obsbatch("--source", other, *store.args("h2", proxy.endpoint), "--state", tmp_path / "h2.db",
                             env=store.server.env())
    assert held.arrived.wait(60)
    result = store.run("forget", "--keep-last", "2", "--prune", "--prune-grace", "0s")
    assert result.returncode == 0, result
    assert running.poll() is None  # h2's record is still held: the prune ran while its backup did
    h2 = finish(running, timeout=120)
    assert h2.returncode == 0, h2
    summary = result.summary
    assert (summary["kept"], summary["forgotten"], summary["failed"]) == (2, 3, 0)
    assert summary["versions_after_latest"] == 21  # h2's 20 files and its pack, newer than h1's latest: kept

    after = versions(store.client, store.bucket, store.prefix)
    gone = before - after
    # Every version deleted was one the dry run named, and the dry run named exactly the data and packs gone.
    data_gone = {one for one in gone if one[0].startswith(store.prefix) or "/packs/" in one[0]}
    assert data_gone == would
    assert summary["versions_deleted"] == len(would)
    # What is gone of the data: a.txt's first three versions and b.txt, which only forgotten snapshots held.
    assert sorted(key[len(store.prefix):] for key, _ in data_gone if key.startswith(store.prefix)) == [
        "a.txt", "a.txt", "a.txt", "b.txt"]
    # The forgotten records are gone, with their tombstones in their place; the chain is still whole.
    assert store.ids()[:2] == ids[3:] and len(store.ids()) == 3  # h1's two and h2's first
    listed = store.run("snapshots")
    assert listed.returncode == 0 and "CHAIN BROKEN" not in listed.stdout, listed
    # The kept snapshots restore exactly, and so does h2's, whose run overlapped the prune.
    for snapshot_id, state in ((ids[3], states[3]), (ids[4], states[4])):
        target = tmp_path / snapshot_id
        restored = store.run("restore", "--target", target, "--snapshot", snapshot_id)
        assert restored.returncode == 0, restored
        assert differences(state, tree_state(target)) == []
    target = tmp_path / "h2-restored"
    assert store.run("restore", "--target", target, host="h2").returncode == 0
    assert differences(tree_state(other), tree_state(target)) == []
    # A second prune finds nothing more to delete.
    again = store.run("forget", "--prune", "--prune-grace", "0s")
    assert again.returncode == 0 and again.summary["versions_deleted"] == 0, again


def test_forget_never_forgets_the_latest_and_needs_a_policy(s3server, tmp_path):
    store = Store(s3server, f"forget-{uuid.uuid4().hex[:8]}", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(b"x")
    store.backup(source)
    assert store.run("forget").returncode == 2
    result = store.run("forget", "--keep-within", "0s")
    assert result.returncode == 0 and result.summary["kept"] == 1 and result.summary["forgotten"] == 0, result
    # Another host's snapshots are not this host's to forget.
    other = store.run("forget", "--keep-last", "1", host="h9")
    assert other.summary["snapshots"] == 0
    assert len(store.ids()) == 1


def test_locked_versions_are_named_and_counted_not_an_error(s3server, tmp_path):
    """Under Object Lock the records of forgotten snapshots stay (so what they name stays too), and an
    orphan no snapshot names (an object of a run that crashed before its record) is refused by the store."""
    import datetime

    store = Store(s3server, f"locked-{uuid.uuid4().hex[:8]}", tmp_path, lock=True)
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    store.client.put_object(Bucket=store.bucket, Key=store.prefix + "orphan.bin", Body=b"orphan",
                            ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)
    source = tmp_path / "src"
    source.mkdir()
    for run in range(1, 3):
        (source / "a.txt").write_bytes(b"a" * run)
        store.backup(source, "h1", "--object-lock-mode", "GOVERNANCE", "--object-lock-retain", "1d")
    before = versions(store.client, store.bucket, store.prefix)
    result = store.run("forget", "--keep-last", "1", "--prune", "--prune-grace", "0s")
    assert result.returncode == 0, result
    summary = result.summary
    assert (summary["records_locked"], summary["versions_locked"], summary["versions_deleted"]) == (1, 1, 0), summary
    [locked] = result.find("prune.locked")
    assert locked["key"] == store.prefix + "orphan.bin"
    assert result.find("forget.not_deleted")
    # The record stayed, so the snapshot is still listed; nothing of the data or packs went.
    assert len(store.ids()) == 2
    after = versions(store.client, store.bucket, store.prefix)
    assert {one for one in before - after if "/forgotten/" not in one[0]} == set()


def test_forget_and_prune_on_moto(moto, tmp_path):
    """The same on moto's S3 (other listing and DeleteObjects code): the kept snapshot restores exactly and
    only what the forgotten ones named is gone."""
    store = Store(moto, f"forget-{uuid.uuid4().hex[:8]}", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "gone.txt").write_bytes(b"deleted after the first run")
    for run in range(1, 4):
        (source / "a.txt").write_bytes(b"a" * run)
        if run == 2:
            (source / "gone.txt").unlink()
        store.backup(source)
    state, ids = tree_state(source), store.ids()
    before = versions(store.client, store.bucket, store.prefix)
    result = store.run("forget", "--keep-last", "1", "--prune", "--prune-grace", "0s")
    assert result.returncode == 0, result
    gone = before - versions(store.client, store.bucket, store.prefix)
    assert sorted(key[len(store.prefix):] for key, _ in gone if key.startswith(store.prefix)) == [
        "a.txt", "a.txt", "gone.txt"]
    assert store.ids() == ids[2:]
    target = tmp_path / "t"
    assert store.run("restore", "--target", target).returncode == 0
    assert differences(state, tree_state(target)) == []


def test_snapshots_check_reports_a_snapshot_made_partial_by_a_deleted_version(s3server, tmp_path):
    store = Store(s3server, f"check-{uuid.uuid4().hex[:8]}", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "same.txt").write_bytes(b"never changes")
    for run in range(1, 3):
        (source / "a.txt").write_bytes(b"a" * run)
        store.backup(source)
    whole = store.run("snapshots", "--check", "--json")
    assert whole.returncode == 0, whole
    assert [one["whole"] for one in json.loads(whole.stdout.splitlines()[0])] == [True, True]
    # The first version of a.txt deleted by hand (as a lifecycle rule would expire it).
    listed = store.client.list_object_versions(Bucket=store.bucket, Prefix=store.prefix + "a.txt")["Versions"]
    oldest = min(listed, key=lambda one: one["LastModified"])
    store.client.delete_object(Bucket=store.bucket, Key=store.prefix + "a.txt", VersionId=oldest["VersionId"])
    partial = store.run("snapshots", "--check")
    assert partial.returncode == 1, partial
    first, second = partial.stdout.splitlines()[1:3]
    assert first.endswith("PARTIAL: 1 files' versions gone") and "PARTIAL" not in second
    [said] = partial.find("snapshots.partial")
    assert said["files"] == ["a.txt"] and said["missing"] == 1


def test_stats_counts_the_snapshot_and_the_versions_the_store_holds(s3server, tmp_path):
    store = Store(s3server, f"stats-{uuid.uuid4().hex[:8]}", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    for run in range(1, 3):
        (source / "a.txt").write_bytes(b"a" * run * 10)
        store.backup(source)
    (source / "a.txt").unlink()
    result = store.run("stats", "--json")
    assert result.returncode == 0, result
    [found] = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    assert (found["files"], found["bytes"]) == (1, 20)
    assert (found["data_current"], found["data_current_bytes"]) == (1, 20)
    assert (found["data_noncurrent"], found["data_noncurrent_bytes"]) == (1, 10)
    assert found["snapshot_area_current"] >= 4  # two records and two packs


def test_a_tagged_snapshot_is_kept_by_keep_tag(s3server, tmp_path):
    store = Store(s3server, f"tag-{uuid.uuid4().hex[:8]}", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    for run in range(1, 4):
        (source / "a.txt").write_bytes(b"a" * run)
        store.backup(source)
    ids = store.ids()
    tagged = store.run("tag", "--snapshot", ids[0], "--add", "audit-2026", "--add", "legal:hold", "--json")
    assert tagged.returncode == 0, tagged
    assert json.loads(tagged.stdout.splitlines()[0])["tags"] == ["audit-2026", "legal:hold"]
    assert store.run("tag", "--snapshot", ids[0], "--add", "no/slash").returncode == 2
    result = store.run("forget", "--keep-last", "1", "--keep-tag", "audit-2026")
    assert result.returncode == 0, result
    assert store.ids() == [ids[0], ids[2]]
    assert "tag audit-2026" in result.stdout
    untagged = store.run("tag", "--snapshot", ids[0], "--remove", "audit-2026", "--remove", "legal:hold")
    assert untagged.returncode == 0 and untagged.summary["tags"] == [], untagged
    assert store.run("forget", "--keep-last", "1", "--keep-tag", "audit-2026").returncode == 0
    assert store.ids() == [ids[2]]


def test_the_fleet_view_checks_each_hosts_latest_snapshot(s3server, tmp_path):
    store = Store(s3server, f"fleetcheck-{uuid.uuid4().hex[:8]}", tmp_path)
    for host in ("h1", "h2"):
        source = tmp_path / host
        source.mkdir()
        (source / "f.txt").write_bytes(host.encode())
        store.backup(source, host)
    # h2's only file's version deleted by hand: its latest snapshot no longer restores whole.
    [version] = [one for one in store.client.list_object_versions(Bucket=store.bucket, Prefix=store.prefix)["Versions"]
                 if one["Key"] == store.prefix + "f.txt" and one["IsLatest"]]
    store.client.delete_object(Bucket=store.bucket, Key=store.prefix + "f.txt", VersionId=version["VersionId"])
    fleet = run_command("snapshots", "--all", "--check", "--json", "--bucket", store.bucket, "--endpoint",
                        s3server.endpoint, "--region", "us-east-1", "--addressing-style", "path",
                        env=s3server.env())
    assert fleet.returncode == 1, fleet
    got = {one["host"]: (one["whole"], one.get("missing")) for one in json.loads(fleet.stdout.splitlines()[0])}
    # Both stored f.txt under the one key: h1's snapshot names the older version, still there.
    assert got == {"h1": (True, None), "h2": (False, 1)}


def test_a_signed_tombstone_keeps_the_chain_trusted_and_an_unsigned_one_does_not(s3server, tmp_path):
    from obsbatch.testing.ed25519keys import keypair

    private, public = keypair(tmp_path, "host")
    store = Store(s3server, f"signed-{uuid.uuid4().hex[:8]}", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    for run in range(1, 4):
        (source / "a.txt").write_bytes(b"a" * run)
        store.backup(source, "h1", "--signing-key", private)
    assert store.run("forget", "--keep-last", "1", "--keep-within", "0s", "--signing-key", private).returncode == 0
    trusted = store.run("snapshots", "--public-key", public)
    assert trusted.returncode == 0 and "CHAIN BROKEN" not in trusted.stdout, trusted
    # A forger who removes a record and leaves an unsigned tombstone in its place breaks the chain.
    (source / "a.txt").write_bytes(b"four")
    store.backup(source, "h1", "--signing-key", private)
    (source / "a.txt").write_bytes(b"five")
    store.backup(source, "h1", "--signing-key", private)
    assert store.run("forget", "--keep-last", "1").returncode == 0  # no --signing-key: an unsigned tombstone
    broken = store.run("snapshots", "--public-key", public)
    assert broken.returncode == 1 and "CHAIN BROKEN" in broken.stdout, broken
    assert broken.find("snapshots.untrusted_tombstone")


def test_prune_refuses_a_prefix_without_any_snapshot(s3server, tmp_path):
    """Objects another tool (or an obsbatch before snapshots) wrote under the prefix: no snapshot names them,
    and a prune must not take that for 'nothing is needed'."""
    store = Store(s3server, f"nosnap-{uuid.uuid4().hex[:8]}", tmp_path)
    store.client.put_object(Bucket=store.bucket, Key=store.prefix + "precious.bin", Body=b"not obsbatch's")
    result = store.run("forget", "--prune", "--prune-grace", "0s")
    assert result.returncode == 1 and "refused" in result.summary["error"], result
    assert store.client.get_object(Bucket=store.bucket, Key=store.prefix + "precious.bin")["Body"].read()
