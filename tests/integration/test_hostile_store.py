"""A restore runs as root and the store is less trusted than the host: nothing read back may reach outside the
target. Symlinks already in the target are never followed; a forged snapshot's hostile entries (names that
leave the target, devices, hardlinks to outside files) are refused, named, and nothing outside changes.

Every test restores into `sandbox/target` and fingerprints the rest of `sandbox` (and the `outside` directory
a symlink points at) before and after: nothing there may change."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from obsbatch.testing.forge import Forger
from tests.conftest import REPO, obsbatch_cmd, run_command, run_obsbatch, server_args

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a restore as root is what is under test")


def fingerprint(root) -> dict:
    """Every entry under root (root itself too), by path: type and mode, owner, size, mtime, and the
    contents' hash or the link target."""
    root = os.fsencode(str(root))
    found = {}

    def one(path):
        st = os.lstat(path)
        content = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        found[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, content)

    one(root)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            one(os.path.join(directory, name))
    return found


@pytest.fixture
def sandbox(tmp_path):
    """tmp_path/sandbox with a target to restore into, an `outside` directory (0755, with a secret file),
    and a few files beside them; `check()` asserts that nothing but the target changed."""
    box = tmp_path / "sandbox"
    (box / "target").mkdir(parents=True)
    (box / "outside").mkdir()
    (box / "outside").chmod(0o755)
    (box / "outside" / "secret").write_bytes(b"outside the target")
    (box / "outside" / "secret").chmod(0o600)
    (box / "beside.txt").write_bytes(b"beside the target")

    class Box:
        path = box
        target = box / "target"
        outside = box / "outside"

        def __init__(self):
            self.before = self.others()

        def others(self):
            return {path: value for path, value in fingerprint(box).items()
                    if not path.startswith(os.fsencode(str(box / "target")))}

        def check(self):
            after = self.others()
            changed = {path: (self.before.get(path), after.get(path)) for path in set(self.before) | set(after)
                       if self.before.get(path) != after.get(path)}
            assert changed == {}, changed

    return Box()


def versioned_store(request, name: str):
    """(server, a bucket with versioning on) on SeaweedFS or on moto (`name`): the same attacks on both."""
    if name == "seaweedfs":
        return request.getfixturevalue("s3server"), request.getfixturevalue("versioned")
    server = request.getfixturevalue("moto")
    client = server.client()
    bucket = "hostile-versioned"
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return server, bucket


def restore(server, bucket, prefix, target, *extra):
    return run_command("restore", "--target", target, *server_args(server, prefix, bucket=bucket), *extra,
                       env=server.env())


def backup(server, bucket, prefix, source):
    done = run_obsbatch("--source", source, *server_args(server, prefix, bucket=bucket), env=server.env())
    assert done.returncode == 0, done
    return done.summary["snapshot"]


@pytest.mark.parametrize("store", ["seaweedfs", "moto"])
@pytest.mark.parametrize("mode", ["snapshot", "listing", "dry-run"])
def test_a_symlink_in_the_target_is_a_conflict_never_followed(request, tmp_path, prefix, sandbox, store, mode):
    s3server, versioned = versioned_store(request, store)
    source = tmp_path / "src"
    (source / "etc").mkdir(parents=True)
    (source / "etc").chmod(0o777)
    (source / "etc" / "passwd-test").write_bytes(b"from the snapshot")
    (source / "etc" / "secret").write_bytes(b"would replace the outside secret")
    backup(s3server, versioned, prefix, source)
    os.symlink(sandbox.outside, sandbox.target / "etc")
    extra = {"snapshot": [], "listing": ["--listing"], "dry-run": ["--dry-run"]}[mode]
    for overwrite in ([], ["--overwrite"]) if mode != "dry-run" else ([],):
        done = restore(s3server, versioned, prefix, sandbox.target, *extra, *overwrite)
        sandbox.check()
        if overwrite:
            assert done.returncode == 0, done
            assert not os.path.islink(sandbox.target / "etc")
            assert (sandbox.target / "etc" / "passwd-test").read_bytes() == b"from the snapshot"
        else:
            assert done.returncode == 1, done
            assert done.summary["conflicts"] >= 1 and done.summary["restored"] == 0, done
            assert os.path.islink(sandbox.target / "etc")
            assert any("never followed" in (e.get("detail") or "") for e in done.find("restore.conflict")), done
    assert "Traceback" not in done.stderr


def test_two_snapshots_into_one_target_never_write_through_the_first_ones_symlink(tmp_path, s3server, versioned,
                                                                                   prefix, sandbox):
    source = tmp_path / "src"
    source.mkdir()
    os.symlink(sandbox.outside, source / "d")
    first = backup(s3server, versioned, prefix, source)
    os.unlink(source / "d")
    (source / "d").mkdir()
    (source / "d" / "secret").write_bytes(b"from the second snapshot")
    (source / "d").chmod(0o777)
    second = backup(s3server, versioned, prefix, source)
    assert restore(s3server, versioned, prefix, sandbox.target, "--snapshot", first).returncode == 0
    assert os.readlink(sandbox.target / "d") == str(sandbox.outside)
    refused = restore(s3server, versioned, prefix, sandbox.target, "--snapshot", second)
    assert refused.returncode == 1 and refused.summary["conflicts"] >= 1, refused
    sandbox.check()
    replaced = restore(s3server, versioned, prefix, sandbox.target, "--snapshot", second, "--overwrite")
    assert replaced.returncode == 0, replaced
    sandbox.check()
    assert stat.S_IMODE(os.lstat(sandbox.target / "d").st_mode) == 0o777
    assert (sandbox.target / "d" / "secret").read_bytes() == b"from the second snapshot"


def _hostile(sandbox) -> dict:
    """Each hostile entry a forger could write, as a tree spec (obsbatch.testing.forge)."""
    outside = str(sandbox.outside)
    return {
        "dot-dot": {"..": {"x": b"into the parent"}},
        "dot-dot-file": {"../escape-file": b"next to the target"},
        "dot-dot-dir": {"../escape-dir": {"f": b"in a new directory beside the target"}},
        "absolute": {outside + "/planted": b"at an absolute path"},
        "dot": {".": {"f": b"the target itself"}},
        "empty-name": {"": b"no name"},
        "nul": {"a\0b": b"a NUL in the name"},
        "device-outside": {"../dev-node": ("b", os.makedev(7, 0))},
        "symlink-then-fifo": {"sub": ("l", outside), "sub/fifo": ("p",)},
        "hardlink-outside": {outside + "/secret": ("h", "g", b"x"), "inside": ("h", "g", b"x")},
        "setuid-absolute": {outside + "/suid": ["", "f", 0o4755, 0, 0, 0, 1, "0" * 64, "", "", 0, ""]},
        "bad-mode": {"f": ["f", "f", 0o177777, 0, 0, 0, 0, "0" * 64, "", "", 0, ""]},
        "bad-owner": {"f": ["f", "f", 0o644, -1, 2 ** 40, 0, 0, "0" * 64, "", "", 0, ""]},
        "bad-type": {"f": ["f", "x", 0o644, 0, 0, 0, 0, "", "", "", 0, ""]},
        "not-an-entry": {"f": ["f"]},
    }


_CASES = sorted(_hostile(type("B", (), {"outside": "/o"})).keys())
#: The cases verify is run on too: a name that leaves, a bad number, a bad type, no entry at all.
_VERIFIED = ("dot-dot", "absolute", "bad-owner", "bad-type", "not-an-entry")


# Every case on SeaweedFS; on moto those whose keys or objects differ most (names that leave the target, a
# device, a hardlink), to keep the suite's time: the restore's checks do not depend on the store.
@pytest.mark.parametrize("store,case", [("seaweedfs", case) for case in _CASES] + [
    ("moto", case) for case in ("absolute", "device-outside", "dot-dot-dir", "hardlink-outside", "symlink-then-fifo")])
def test_a_forged_snapshots_hostile_entry_is_refused_and_nothing_outside_changes(request, prefix, sandbox, store,
                                                                                  case):
    s3server, versioned = versioned_store(request, store)
    client = s3server.client()
    forger = Forger(client, versioned, prefix)
    spec = dict(_hostile(sandbox)[case], **{"good.txt": b"a genuine file beside it"})
    snapshot_id, _ = forger.store(spec)
    done = restore(s3server, versioned, prefix, sandbox.target, "--snapshot", snapshot_id)
    sandbox.check()
    assert done.returncode == 1, done
    assert done.summary.get("failed_by_type", {}).get("DamagedEntry", 0) >= 1, done
    # The rest of the snapshot is restored: the genuine files are what a disaster recovery wants back.
    assert (sandbox.target / "good.txt").read_bytes() == b"a genuine file beside it"
    assert "Traceback" not in done.stderr
    if case in _VERIFIED:  # verify walks the same checked entries (snapshots.walk): one case of each kind
        checked = run_command("verify", *server_args(s3server, prefix, bucket=versioned), "--snapshot", snapshot_id,
                              env=s3server.env())
        assert checked.returncode == 1 and "entry" in checked.summary["error"], checked


def test_a_forged_snapshot_that_describes_an_endless_tree_is_damaged(s3server, versioned, prefix, sandbox):
    """Trees naming the next one twice, 40 deep, describe 2**40 directories; the record's counts bound the
    walk. (A forger can also lie in the counts: they are then the bound.)"""
    from obsbatch import snapshot

    forger = Forger(s3server.client(), versioned, prefix)
    digest = forger.tree({})
    for _ in range(40):
        entries = [[name, "d", 0o755, 0, 0, 0, 0, digest, "", "", 0, ""] for name in ("a", "b")]
        data = snapshot.tree_bytes(entries)
        digest = hashlib.sha256(data).hexdigest()
        forger.pack.add(digest, data)
    snapshot_id, _ = forger.store({"top": ["top", "d", 0o755, 0, 0, 0, 0, digest, "", "", 0, ""]},
                                  counts=dict(directories=1000))
    done = restore(s3server, versioned, prefix, sandbox.target, "--snapshot", snapshot_id)
    assert done.returncode == 1 and "more than the 1000 entries" in done.summary["error"], done
    sandbox.check()


def test_public_key_refuses_a_forged_newer_record_and_restores_the_genuine_latest(tmp_path, s3server, versioned,
                                                                                   prefix, sandbox):
    from obsbatch import signing
    from obsbatch.testing.ed25519keys import keypair

    private, public = keypair(tmp_path, "fleet")
    other_private, _ = keypair(tmp_path, "thief")
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.txt").write_bytes(b"genuine, first run")
    store = server_args(s3server, prefix, bucket=versioned)
    # Signed without --manifest (the old flag name still works).
    first = run_obsbatch("--source", source, *store, "--manifest-signing-key", private, env=s3server.env())
    (source / "data.txt").write_bytes(b"genuine, second run")
    second = run_obsbatch("--source", source, *store, "--signing-key", private, env=s3server.env())
    assert first.returncode == 0 and second.returncode == 0, second
    genuine = second.summary["snapshot"]
    client = s3server.client()
    # A forged newer record (sealed, unsigned) and one signed by another key, both claiming this host's runs.
    records = run_command("snapshots", *store, "--json", env=s3server.env())
    latest = json.loads(records.stdout.strip().splitlines()[0])[-1]
    forged, _ = Forger(client, versioned, prefix).store({"data.txt": b"forged"}, previous=latest["head"],
                                                         host=latest["host"])
    thief, thief_record = Forger(client, versioned, prefix).store({"data.txt": b"signed by a thief"},
                                                                  previous="0" * 64, host=latest["host"])
    sig = signing.signature(thief_record["head"], other_private)
    client.put_object(Bucket=versioned, Key=snapshot_key(prefix, thief) + ".sig", Body=json.dumps(sig).encode())

    trusted = restore(s3server, versioned, prefix, sandbox.target, "--public-key", public)
    assert trusted.returncode == 0 and trusted.summary["snapshot"] == genuine, trusted
    assert (sandbox.target / "data.txt").read_bytes() == b"genuine, second run"
    assert {e["id"] for e in trusted.find("restore.untrusted_snapshot")} == {forged, thief}, trusted
    refused = restore(s3server, versioned, prefix, tmp_path / "t2", "--public-key", public, "--snapshot", forged)
    assert refused.returncode == 1 and "UNTRUSTED" in refused.summary["error"], refused
    assert not (tmp_path / "t2" / "data.txt").exists()
    checked = run_command("verify", *store, "--public-key", public, env=s3server.env())
    assert checked.returncode == 0 and checked.summary["snapshot"] == genuine, checked
    # Without the key, the forged latest is what a restore would take: said once, as root.
    unkeyed = restore(s3server, versioned, prefix, tmp_path / "t3")
    assert unkeyed.find("restore.unauthenticated"), unkeyed
    listed = run_command("snapshots", *store, "--public-key", public, env=s3server.env())
    assert listed.returncode == 1, listed
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if line.split()}
    assert "UNTRUSTED" in lines[forged] and "UNTRUSTED" in lines[thief] and "UNTRUSTED" not in lines[genuine]
    # The thief's record cites a head no record has: the chain breaks there, with or without the key.
    plain = run_command("snapshots", *store, env=s3server.env())
    assert plain.returncode == 1 and "CHAIN BROKEN" in {line.split()[0]: line for line in
                                                        plain.stdout.splitlines() if line.split()}[thief], plain
    assert [e["id"] for e in plain.find("snapshots.chain_broken")] == [thief], plain
    sandbox.check()


def snapshot_key(prefix: str, snapshot_id: str) -> str:
    from obsbatch import snapshot

    return snapshot.record_key(prefix, snapshot_id)


@pytest.mark.parametrize("server_name", ["s3server", "moto"])
def test_the_empty_prefix_keeps_a_sources_own_obsbatch_files_apart_from_obsbatchs_records(
        request, tmp_path, server_name):
    import uuid

    server = request.getfixturevalue(server_name)
    bucket = f"empty-prefix-{uuid.uuid4().hex[:8]}"
    server.client().create_bucket(Bucket=bucket)
    server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    source = tmp_path / "src"
    files = {
        ".obsbatch/snapshots/20261201T000000.000Z-0a1b2c3d.json": b'{"not": "a record"}',
        ".obsbatch/fleet/h1/.json": b"the user's own file, where the fleet marker of h1 goes",
        ".obsbatch/manifests/run.jsonl": b"a user file",
        "p1.obsbatch/snapshots/x.json": b"where the prefix p1/ keeps its records",
        "sub/.obsbatch": b"a file named .obsbatch deeper down",
        "plain.txt": b"plain",
    }
    for rel, data in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    store = ["--bucket", bucket, "--prefix", "", "--endpoint", server.endpoint, "--region", "us-east-1",
             "--addressing-style", "path"]
    for _ in range(2):  # the second run reads the first one's record, not the source's look-alike
        done = run_obsbatch("--source", source, *store, "--host-id", "h1", env=server.env())
        assert done.returncode == 0 and done.summary["failed"] == 0, done
    for extra in ([], ["--listing"]):
        target = tmp_path / f"restored{len(extra)}"
        back = run_command("restore", "--target", target, *store, *extra, env=server.env())
        assert back.returncode == 0, back
        got = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
        assert got == files, (extra, got)
    checked = run_command("verify", *store, env=server.env())
    assert checked.returncode == 0 and checked.summary["ok"] == len(files), checked
    listed = run_command("snapshots", *store, env=server.env())
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 4, listed  # header, 2 runs, summary
    assert run_command("snapshots", *store, "--all", env=server.env()).returncode == 0


def _descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.parametrize("command", ["backup", "restore"])
def test_a_stop_ends_every_process_obsbatch_started_even_one_blocked_in_a_read(tmp_path, s3server, versioned,
                                                                                prefix, proxy, command):
    """The workers block in recv(2) on requests the proxy holds; a SIGTERM (drain 1 s, then the tear-down)
    must end the parent, the fork server and every worker, and nothing may be left to SIGKILL."""
    import psutil

    from obsbatch.testing.faultproxy import Fault
    from tests.conftest import finish, start_obsbatch

    source = tmp_path / "src"
    source.mkdir()
    for n in range(8):
        (source / f"f{n}.txt").write_bytes(b"x" * 100)
    store = server_args(s3server, prefix, proxy.endpoint, bucket=versioned)
    if command == "restore":
        assert run_obsbatch("--source", source, *store, env=s3server.env()).returncode == 0
        hold = proxy.add(Fault(method="GET", path=r"f\d\.txt", action="hold", delay=120, times=None))
        args = ["restore", "--target", tmp_path / "t", *store]
    else:
        hold = proxy.add(Fault(method="PUT", path=r"f\d\.txt", action="hold", delay=120, times=None))
        args = ["--source", source, *store]
    proc = start_obsbatch(*args, "--max-concurrent", 4, "--stop-timeout", 1, "--http-timeout", 100,
                          env=s3server.env())
    try:
        assert hold.arrived.wait(60)
        time.sleep(0.5)
        started = _descendants(proc.pid)
        assert len(started) >= 2, started  # the fork server and a worker at least
        proc.send_signal(signal.SIGTERM)
        result = finish(proc, timeout=60)
        assert result.returncode == 143, result
        assert "Traceback" not in result.stderr
        gone, alive = psutil.wait_procs(started, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        for p in _descendants(proc.pid) if proc.poll() is None else ():
            p.kill()
        proc.kill()


@pytest.fixture
def small_mount(tmp_path):
    """mount(tmpfs, options) -> its path, unmounted after the test; skips where mounting is not allowed."""
    import subprocess

    mounted = []

    def mount(options: str):
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("fault", ["read-only", "no-inodes"])
def test_a_target_that_cannot_take_the_files_is_a_failure_per_file_never_a_crash(tmp_path, s3server, versioned,
                                                                                  prefix, small_mount, fault):
    source = tmp_path / "src"
    for d in range(3):
        (source / f"d{d}").mkdir(parents=True)
        for n in range(5):
            (source / f"d{d}" / f"f{n}.txt").write_bytes(b"y" * 10)
    store = server_args(s3server, prefix, bucket=versioned)
    assert run_obsbatch("--source", source, *store, env=s3server.env()).returncode == 0
    target = small_mount("ro,size=1m" if fault == "read-only" else "size=4m,nr_inodes=3")
    for extra in ([], ["--listing"]):
        done = run_command("restore", "--target", target, *store, *extra, env=s3server.env())
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr and not done.find("restore.crashed"), done
        assert done.summary["failed"] >= 1 and done.summary["restored"] < 15, done


# --- The property: whatever a forger stores and whatever the target already holds, nothing outside changes ---

def _tree_strategy(outside: str):
    from hypothesis import strategies as st

    names = st.sampled_from(["a", "b", "sub", "..", ".", "", "a/b", "../x", "../../y", outside + "/planted",
                             "x\0y", ".obsbatch", "link", "dev", "fifo", "caf\\xe9"])
    link_targets = st.sampled_from([outside, outside + "/secret", "..", "../..", "../outside", "/", "sub", "a"])
    leaves = st.one_of(
        st.binary(max_size=20),
        st.tuples(st.just("l"), link_targets),
        st.tuples(st.just("p")),
        st.tuples(st.sampled_from(["b", "c"]), st.just(os.makedev(1, 3))),  # /dev/null's numbers
        st.tuples(st.just("h"), st.sampled_from(["g1", "g2"]), st.binary(max_size=10)),
    )
    return st.recursive(leaves, lambda children: st.dictionaries(names, children, max_size=4), max_leaves=12).map(
        lambda tree: tree if isinstance(tree, dict) else {"only": tree})


def _prepared(draw_target, box, outside):
    """Plant what a local user (or an earlier restore) could have left in the target: symlinks out of it."""
    for name, kind in draw_target:
        path = box / "target" / name
        if os.path.lexists(path):
            continue
        if kind == "dir-link":
            os.symlink(outside, path)
        elif kind == "file-link":
            os.symlink(os.path.join(outside, "secret"), path)
        else:
            path.write_bytes(b"already here")


@pytest.mark.slow
def test_property_nothing_outside_the_target_ever_changes(tmp_path_factory, s3server, versioned):
    """hypothesis builds random snapshot trees (hostile names, symlinks to outside paths, hardlink groups,
    devices, FIFOs), stores each as a forger would, plants symlinks out of the target, and restores as root
    (with and without --overwrite, snapshot and dry run): the sandbox around the target is fingerprinted before
    and after, and nothing there may change; the restore never crashes."""
    import uuid

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    root = tmp_path_factory.mktemp("property")
    outside = str(root / "box" / "outside")
    planted = st.lists(st.tuples(st.sampled_from(["a", "sub", "link", "dev", "only"]),
                                 st.sampled_from(["dir-link", "file-link", "file"])), max_size=3)

    @settings(max_examples=int(os.environ.get("RESTORE_PROPERTY_EXAMPLES", "20")), deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    @given(tree=_tree_strategy(outside), already=planted, overwrite=st.booleans(), dry_run=st.booleans())
    def check(tree, already, overwrite, dry_run):
        import shutil

        box = root / "box"
        shutil.rmtree(box, ignore_errors=True)
        (box / "target").mkdir(parents=True)
        os.mkdir(outside, 0o755)
        (box / "outside" / "secret").write_bytes(b"outside the target")
        (box / "beside.txt").write_bytes(b"beside")
        _prepared(already, box, outside)
        before = {p: v for p, v in fingerprint(box).items() if not p.startswith(os.fsencode(str(box / "target")) + b"/")}
        prefix = f"p-{uuid.uuid4().hex[:10]}/"
        snapshot_id, _ = Forger(s3server.client(), versioned, prefix).store(tree)
        done = restore(s3server, versioned, prefix, box / "target", "--snapshot", snapshot_id,
                       *(["--overwrite"] if overwrite else []), *(["--dry-run"] if dry_run else []))
        after = {p: v for p, v in fingerprint(box).items() if not p.startswith(os.fsencode(str(box / "target")) + b"/")}
        target_key = os.fsencode(str(box / "target"))
        for found in (before, after):  # the target itself: its mode and owner, not its times, size or links
            found[target_key] = found[target_key][:3]
        assert after == before, (tree, already, done)
        assert done.returncode in (0, 1), done
        assert "Traceback" not in done.stderr and not done.find("restore.crashed"), done

    check()


def test_a_hardlink_is_never_made_to_a_local_file_its_first_name_left_in_conflict(tmp_path, s3server, versioned,
                                                                                  prefix, sandbox):
    """The first name of a hardlink group meets a local file of other bytes (a conflict, left untouched): its
    other names are left out, never linked to bytes the restore did not check."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"the snapshot's bytes")
    os.link(source / "a.txt", source / "b.txt")
    snapshot_id = backup(s3server, versioned, prefix, source)
    os.link(sandbox.outside / "secret", sandbox.target / "a.txt")  # a local user's link to an outside file
    sandbox.before = sandbox.others()  # its link count is 2 now; a third name would show there
    done = restore(s3server, versioned, prefix, sandbox.target, "--snapshot", snapshot_id)
    assert done.returncode == 1 and done.summary["conflicts"] == 1, done
    assert not os.path.lexists(sandbox.target / "b.txt"), done
    assert done.summary["entries"].get("hardlinks_left_out") == 1 and done.find("restore.hardlink_left_out"), done
    sandbox.check()


def test_obsbatchs_own_small_objects_are_read_only_to_their_bound(tmp_path, s3server, versioned, prefix):
    """A signature or fleet marker can be gigabytes if a forger wants: read no further than 64 KiB, and call it
    what it is (untrusted, damaged), never hold it in memory."""
    from obsbatch import snapshot
    from obsbatch.testing.ed25519keys import keypair

    _, public = keypair(tmp_path)
    client = s3server.client()
    snapshot_id, _ = Forger(client, versioned, prefix).store({"f": b"x"})
    client.put_object(Bucket=versioned, Key=snapshot.record_key(prefix, snapshot_id) + ".sig", Body=b"{" * 100_000)
    marker = snapshot.fleet_key("big-host", prefix)
    client.put_object(Bucket=versioned, Key=marker, Body=b" " * 100_000)
    try:
        store = server_args(s3server, prefix, bucket=versioned)
        listed = run_command("snapshots", *store, "--public-key", public, env=s3server.env())
        assert listed.returncode == 1 and "UNTRUSTED" in listed.stdout, listed
        assert any("larger than 65536 bytes" in e["error"] for e in listed.find("snapshots.untrusted")), listed
        fleet = run_command("snapshots", *store, "--all", "--json", env=s3server.env())
        rows = json.loads(fleet.stdout.strip().splitlines()[0])
        assert [row for row in rows if row["host"] == "big-host"] == [
            {"host": "big-host", "prefix": prefix, "damaged": True}], fleet
    finally:
        client.delete_object(Bucket=versioned, Key=marker)  # the fleet view is the bucket's: leave it as found


def test_the_operators_commands_read_a_forged_snapshot_as_input(s3server, versioned, prefix, tmp_path):
    """ls, find, diff, dump, forget --prune and snapshots --check of a forged snapshot: an entry that fails its
    check (a name with '/', a control character) is named and left out, exit 1; a name that only looks odd
    is printed with its control characters escaped; nothing beneath the forged entry is read; the tar stream
    holds no member outside itself; a prune refuses nothing it cannot read and deletes nothing a snapshot
    names."""
    forger = Forger(s3server.client(), versioned, prefix)
    snapshot_id, _ = forger.store({
        "good.txt": b"genuine", "esc\x1b[2Jape": b"a name with an escape sequence",
        "bad": ["../../outside", "f", 0o644, 0, 0, 0, 1, "0" * 64, "", "", 0, ""],
        "dir": {"inner.txt": b"inside"}})
    store = server_args(s3server, prefix, bucket=versioned)
    listed = run_command("ls", *store, "--recursive", env=s3server.env())
    assert listed.returncode == 1, listed
    names = [line.rsplit("  ", 1)[-1] for line in listed.stdout.splitlines()[:-1]]
    assert names == ["dir", "dir/inner.txt", "esc\\x1b[2Jape", "good.txt"]
    assert listed.find("ls.damaged_entry") and "\x1b" not in listed.stdout
    found = run_command("find", *store, "*", env=s3server.env())
    assert found.returncode == 1 and found.find("find.damaged_entry"), found  # matches, but an entry was bad
    dumped = subprocess.run(obsbatch_cmd("dump", *store, "/"), capture_output=True,
                            env=dict(os.environ, **s3server.env(), PYTHONPATH=str(REPO)))
    assert dumped.returncode == 1
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(dumped.stdout), mode="r|") as stream:
        members = sorted(member.name for member in stream)
    assert members == ["dir", "dir/inner.txt", "esc\x1b[2Jape", "good.txt"]
    pruned = run_command("forget", *store, "--prune", "--prune-grace", "0s", "--host-id", "forger",
                         env=s3server.env())
    # The prune must know every version a snapshot names: a bad entry stops it before anything is deleted.
    assert pruned.returncode == 1 and "entry" in pruned.summary["error"], pruned
    assert not pruned.find("prune.deleted")
