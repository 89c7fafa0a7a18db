"""Names and times from a real tree (issue #19): no two names share an object on any store, a future mtime is
not "being written", another tool's keys are restored literally and never merged, metadata is read strictly.
On SeaweedFS, and on moto where the store behaves otherwise."""

import os
import time
import uuid

import pytest

from tests.conftest import make_tree, objects, run_command, run_obsbatch, server_args, write_tree
from tests.integration.test_restore import SMALL_MULTIPART, hostile_tree, store_args, tree_state

#: Names a store rewrites or refuses (SeaweedFS: '\' becomes '/'; moto: a newline is refused), beside the names
#: that spell their escapes and a directory that a backslash name would fold into.
AWKWARD = {
    b"x\\y": b"a backslash in a name",
    b"x/y": b"a file y in a directory x",
    b"back\\slash": b"a lone backslash",
    b"line\nbreak": b"a newline", b"tab\there": b"a tab", b"del\x7f": b"DEL",
    b"%5C": b"spells the backslash's escape", b"%41.txt": b"spells an escaped A",
    b"caf\\xe9.txt": b"a backslash, x, e, 9", b"caf\xe9.txt": b"the one byte",
    b"L" * 255: b"the longest name",
}


class MotoBucket:
    """A bucket of its own on the session's moto server, shaped like the SeaweedFS fixture (bucket, endpoint,
    env(), client())."""

    def __init__(self, server):
        self.server, self.endpoint = server, server.endpoint
        self.bucket = f"names-{uuid.uuid4().hex[:8]}"
        server.client().create_bucket(Bucket=self.bucket)

    def env(self) -> dict:
        return self.server.env()

    def client(self):
        return self.server.client()


@pytest.fixture
def moto_bucket(moto):
    return MotoBucket(moto)


@pytest.mark.parametrize("server", ["s3server", "moto_bucket"])
def test_a_tree_of_awkward_names_round_trips_entry_by_entry(tmp_path, request, prefix, server):
    store = request.getfixturevalue(server)
    src, back = tmp_path / "src", tmp_path / "back"
    files = hostile_tree(src)
    write_tree(src, AWKWARD)
    files.update(AWKWARD)
    backup = run_obsbatch("--source", src, *server_args(store, prefix), "--no-state", *SMALL_MULTIPART,
                          env=store.env())
    assert backup.returncode == 0 and backup.summary["uploaded"] == len(files), backup
    stored = objects(store.client(), store.bucket, prefix)
    assert len(stored) == len(files)  # one object per file: no two names folded into one key
    assert not [k for k in stored if "\\" in k or any(ord(c) < 0x20 for c in k)], stored.keys()
    restored = run_command("restore", "--target", back, *store_args(store, prefix), env=store.env())
    assert restored.returncode == 0 and restored.summary["restored"] == len(files), restored
    assert tree_state(back) == tree_state(src)
    verified = run_command("verify", *store_args(store, prefix), "--read-data", "100", env=store.env())
    assert verified.returncode == 0 and verified.summary["ok"] == len(files), verified


def test_another_tools_keys_are_restored_literally_and_never_merged(tmp_path, s3, s3server, prefix):
    """s5cmd/aws-cli wrote A.txt and %41.txt (other bytes), a%2Fb.txt, and z%41; obsbatch wrote z%2541 (its key
    for a file z%41). Before: %41.txt became A.txt (one file for two objects, exit 0), a%2Fb.txt a directory."""
    foreign = {"A.txt": b"plain A", "%41.txt": b"percent 41, not an A", "a%2Fb.txt": b"not a directory",
               "z%41": b"another tool's z%41"}
    for key, body in foreign.items():
        s3.put_object(Bucket=s3server.bucket, Key=prefix + key, Body=body)
    src = tmp_path / "src"
    make_tree(src, {"z%41": b"obsbatch's z%41"})
    assert run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state",
                        env=s3server.env()).returncode == 0
    assert (prefix + "z%2541") in {o["Key"] for o in s3.list_objects_v2(Bucket=s3server.bucket,
                                                                        Prefix=prefix)["Contents"]}
    back = tmp_path / "back"
    # The listing (not obsbatch's snapshot, which knows only its own file): another tool's prefix (issue #20).
    result = run_command("restore", "--target", back, "--listing", *store_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 1, result  # two keys for one path: named, and not a clean restore
    assert result.summary["failed_by_type"] == {"NameCollision": 1}, result.summary
    [collision] = result.find("restore.failed")
    assert f"'{prefix}z%41'" in collision["error"] and f"'{prefix}z%2541'" in collision["error"]
    for name in ("A.txt", "%41.txt", "a%2Fb.txt"):
        assert (back / name).read_bytes() == foreign[name], name
    assert (back / "z%41").read_bytes() in (foreign["z%41"], b"obsbatch's z%41")  # the first of the two listed
    assert sorted(os.listdir(back)) == sorted(["A.txt", "%41.txt", "a%2Fb.txt", "z%41"])


def test_include_and_exclude_apply_before_the_unsafe_key_check(tmp_path, moto_bucket, prefix):
    # On moto: SeaweedFS refuses a key with a '..' segment itself.
    s3 = moto_bucket.client()
    s3.put_object(Bucket=moto_bucket.bucket, Key=prefix + "ok.txt", Body=b"ok")
    s3.put_object(Bucket=moto_bucket.bucket, Key=prefix + "../escape.txt", Body=b"would leave the target")
    store = store_args(moto_bucket, prefix)
    unfiltered = run_command("restore", "--target", tmp_path / "one", *store, env=moto_bucket.env())
    assert unfiltered.returncode == 1 and unfiltered.summary["unsafe_keys"] == 1, unfiltered
    filtered = run_command("restore", "--target", tmp_path / "two", *store, "--exclude", "../*",
                           env=moto_bucket.env())
    assert filtered.returncode == 0 and filtered.summary["excluded"] == 1, filtered
    assert not (tmp_path / "escape.txt").exists()


def test_metadata_that_is_not_a_number_is_named_and_not_applied(tmp_path, s3, s3server, prefix):
    s3.put_object(Bucket=s3server.bucket, Key=prefix + "odd.txt", Body=b"odd",
                  Metadata={"mode": "abc", "mtime": "notanumber", "uid": "-1", "gid": "99999999999"})
    result = run_command("restore", "--target", tmp_path / "back", *store_args(s3server, prefix),
                         env=s3server.env())
    assert result.returncode == 0 and result.summary["restored"] == 1, result
    problems = sorted(e["problem"].split()[0] for e in result.find("restore.bad_metadata"))
    assert problems == ["gid", "mode", "mtime", "uid"], result.stderr
    assert (tmp_path / "back" / "odd.txt").read_bytes() == b"odd"
    # The mode 'abc' was not applied: the file has the temporary's 0600 (no chmod), not something parsed.
    assert os.stat(tmp_path / "back" / "odd.txt").st_mode & 0o7777 == 0o600


def test_another_tools_object_gets_its_last_modified_as_mtime(tmp_path, s3, s3server, prefix):
    s3.put_object(Bucket=s3server.bucket, Key=prefix + "plain.txt", Body=b"from aws-cli")
    listed = s3.head_object(Bucket=s3server.bucket, Key=prefix + "plain.txt")["LastModified"]
    time.sleep(2.1)  # so that "now", the mtime of a file written without one, is clearly not LastModified
    result = run_command("restore", "--target", tmp_path / "back", *store_args(s3server, prefix),
                         env=s3server.env())
    assert result.returncode == 0, result
    assert abs(os.stat(tmp_path / "back" / "plain.txt").st_mtime - listed.timestamp()) < 1


def test_a_future_mtime_is_backed_up_with_a_warning_not_deferred_for_ever(tmp_path, s3, s3server, prefix):
    src = tmp_path / "src"
    make_tree(src, {"2040.txt": b"from a clock ahead", "2100.txt": b"extracted with its timestamps"})
    for name, year in (("2040.txt", 2040), ("2100.txt", 2100)):
        future = time.mktime((year, 1, 1, 0, 0, 0, 0, 0, 0))
        os.utime(src / name, (future, future))
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", "--max-defer", "1s",
                          env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    assert sorted(e["path"].rsplit("/", 1)[-1] for e in result.find("file.future_mtime")) == ["2040.txt", "2100.txt"]
    assert objects(s3, s3server.bucket, prefix) == {"2040.txt": b"from a clock ahead",
                                                     "2100.txt": b"extracted with its timestamps"}
