"""The operator's side of history: `ls`, `diff`, `find`, `dump` over five snapshots of one tree on SeaweedFS
with versioning on (edits, a chmod, a deletion, an addition, a rename, a directory replaced by a file), each
answer compared with what the tree was; and a tar stream of a snapshot compared entry by entry with a restore of
the same snapshot."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid

import pytest

from tests.conftest import run_command, run_obsbatch, server_args
from tests.integration.test_snapshots import differences, tree_state

GOOD, BROKEN = b"server { listen 80; }\n", b"server { listen 80 }}\n"
BIG = os.urandom(3 << 20)  # more than dump's 1 MiB chunk


class History:
    """Five snapshots of one tree; `ids[n]` is run n+1's."""

    def __init__(self, server, bucket: str, root):
        self.server, self.bucket = server, bucket
        self.prefix = f"h-{uuid.uuid4().hex[:12]}/"
        self.source, self.state = root / "src", root / "state.db"
        self.ids: list = []

    def args(self) -> list:
        return server_args(self.server, self.prefix, bucket=self.bucket)

    def backup(self) -> None:
        result = run_obsbatch("--source", self.source, *self.args(), "--min-age", "0", "--state", self.state,
                              env=self.server.env())
        assert result.returncode == 0, result
        listed = self.run("snapshots", "--json")
        self.ids = [one["id"] for one in json.loads(listed.stdout.splitlines()[0])]

    def run(self, command: str, *args, env: dict | None = None):
        return run_command(command, *args, *self.args(), env=dict(self.server.env(), **(env or {})))


def lines(result) -> list:
    """stdout less the --summary json line the harness asks for."""
    return result.stdout.splitlines()[:-1]


def records(result) -> list:
    return [json.loads(line) for line in lines(result)]


@pytest.fixture(scope="module")
def history(s3server, tmp_path_factory):
    client = s3server.client()
    bucket = f"history-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    made = History(s3server, bucket, tmp_path_factory.mktemp("history"))
    src = made.source
    for rel, data in {"etc/nginx/nginx.conf": GOOD, "etc/hosts": b"127.0.0.1 localhost\n", "docs/a.txt": b"a",
                      "docs/sub/b.txt": b"bee", "data/big.bin": BIG, "var/log/app.log": b"log\n",
                      "hard1": b"same inode"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "docs" / "empty").mkdir()
    os.link(src / "hard1", src / "hard2")
    os.symlink("docs/a.txt", src / "link")
    os.mkfifo(src / "fifo")
    (src / os.fsdecode(b"ctl\x1bname")).write_bytes(b"escape")
    os.utime(src / "docs", ns=(1, 1_700_000_000_123_456_789))
    made.backup()                                                        # 1
    made.s1_state = tree_state(src)
    (src / "etc/nginx/nginx.conf").write_bytes(BROKEN)
    os.chmod(src / "docs/a.txt", 0o600)
    (src / "var/log/app.log").unlink()
    (src / "docs/new.txt").write_bytes(b"new!")
    made.backup()                                                        # 2: M, U, -, +
    (src / "docs/sub").rename(src / "docs/moved")
    made.backup()                                                        # 3: a rename
    (src / "var/log").rmdir()
    (src / "var/log").write_bytes(b"now a file")
    made.backup()                                                        # 4: a directory became a file
    (src / "etc/hosts").write_bytes(b"10.0.0.1 db\n")
    made.backup()                                                        # 5
    assert len(made.ids) == 5
    return made


def test_ls_lists_a_directory_a_file_and_recursively(history):
    first = history.ids[0]
    root = history.run("ls", "--snapshot", first)
    assert root.returncode == 0, root
    names = [line.rsplit("  ", 1)[-1] for line in lines(root)]
    # Sorted by name bytes; a control character printed as \x1b, a symlink with its target.
    assert names == ["ctl\\x1bname", "data", "docs", "etc", "fifo", "hard1", "hard2", "link -> docs/a.txt", "var"]
    assert all("\x1b" not in line for line in root.stdout.splitlines())
    assert lines(root)[2].startswith("drwx")
    docs = history.run("ls", "--snapshot", first, "docs", "--json")
    got = {one["path"]: one for one in records(docs)}
    assert sorted(got) == ["docs/a.txt", "docs/empty", "docs/sub"]
    assert got["docs/a.txt"]["type"] == "file" and got["docs/a.txt"]["size"] == 1
    assert got["docs/a.txt"]["mode"] == f"{history.s1_state[b'docs/a.txt'][1]:04o}" != "0600"
    assert "sha256" not in got["docs/a.txt"]
    deep = history.run("ls", "--snapshot", first, "/docs/", "--recursive", "--json")
    assert [one["path"] for one in records(deep)] == ["docs/a.txt", "docs/empty", "docs/sub", "docs/sub/b.txt"]
    one = history.run("ls", "--snapshot", first, "etc/nginx/nginx.conf", "--long", "--json")
    [conf] = records(one)
    assert conf["sha256"] == hashlib.sha256(GOOD).hexdigest() and conf["version_id"]
    latest = history.run("ls", "etc/nginx/nginx.conf", "--long", "--json")  # default: the latest snapshot
    assert records(latest)[0]["sha256"] == hashlib.sha256(BROKEN).hexdigest()
    # The exact mtime of a directory, to the nanosecond.
    [docs_dir] = [one for one in records(history.run("ls", "--snapshot", first, "--json")) if one["path"] == "docs"]
    assert docs_dir["mtime"] == "2023-11-14T22:13:20.123456789Z"


def test_ls_of_a_path_the_snapshot_does_not_hold_is_exit_1(history):
    result = history.run("ls", "docs/nothere.txt")
    assert result.returncode == 1, result
    assert "holds no 'docs/nothere.txt'" in result.stderr
    assert history.run("ls", "--snapshot", "20200101T000000.000Z-00000000").returncode == 2


def test_diff_names_each_kind_of_change_and_skips_equal_subtrees(history):
    s1, s2, s3, s4, s5 = history.ids
    first = history.run("diff", s1, s2)
    assert first.returncode == 0, first
    # In the trees' order (names sorted by bytes, parents before children); directories' own mtimes moved
    # (docs/, var/log/) but are no change of their own.
    assert lines(first)[:-1] == ["U  docs/a.txt", "+  docs/new.txt", "M  etc/nginx/nginx.conf", "-  var/log/app.log"]
    totals = first.summary
    assert (totals["added"], totals["removed"], totals["modified"], totals["metadata"], totals["type"]) == (1, 1, 1, 1, 0)
    renamed = history.run("diff", s2, s3, "--json")
    changes = [(one["change"], one["path"]) for one in records(renamed) if "change" in one]
    assert changes == [("added", "docs/moved"), ("added", "docs/moved/b.txt"), ("removed", "docs/sub"),
                       ("removed", "docs/sub/b.txt")]
    replaced = history.run("diff", s3, s4, "--json")
    changes = [(one["change"], one["path"], one["before"]["type"], one["after"]["type"])
               for one in records(replaced) if "change" in one]
    assert changes == [("type", "var/log", "dir", "file")]
    only_etc = history.run("diff", s4, s5, "etc")
    assert lines(only_etc)[:-1] == ["M  etc/hosts"]
    assert history.run("diff", s4, s5, "docs").summary["modified"] == 0
    assert lines(history.run("diff", s5, s5))[:-1] == []


def test_find_names_every_snapshot_that_holds_a_match(history):
    found = history.run("find", "nginx.conf", "--json")
    assert found.returncode == 0, found
    got = [(one["snapshot"], one["path"], one["sha256"]) for one in records(found)]
    good, broken = hashlib.sha256(GOOD).hexdigest(), hashlib.sha256(BROKEN).hexdigest()
    assert got == [(history.ids[0], "etc/nginx/nginx.conf", good)] + [
        (snapshot_id, "etc/nginx/nginx.conf", broken) for snapshot_id in history.ids[1:]]
    across = history.run("find", "docs/**/b.txt", "--json")
    assert [(one["snapshot"], one["path"]) for one in records(across)] == [
        (history.ids[0], "docs/sub/b.txt"), (history.ids[1], "docs/sub/b.txt"), (history.ids[2], "docs/moved/b.txt"),
        (history.ids[3], "docs/moved/b.txt"), (history.ids[4], "docs/moved/b.txt")]
    newest = history.run("find", "*.log", "--newest", "3", "--json")
    assert newest.returncode == 1, newest  # app.log was deleted in run 2; var/log is a file named "log"
    oldest = history.run("find", "*.log", "--oldest", "1", "--json")
    assert [one["path"] for one in records(oldest)] == ["var/log/app.log"]
    assert history.run("find", "no-such-name").returncode == 1


def test_dump_prints_a_file_checked(history):
    result = subprocess.run([*_dump_cmd(history), "--snapshot", history.ids[0], "etc/nginx/nginx.conf"],
                            capture_output=True, env=_env(history))
    assert result.returncode == 0 and result.stdout == GOOD, result.stderr[-2000:]
    result = subprocess.run([*_dump_cmd(history), "--snapshot", history.ids[0], "data/big.bin"], capture_output=True,
                            env=_env(history))
    assert result.stdout == BIG


@pytest.mark.skipif(os.geteuid() != 0, reason="tar -x keeps owners and makes devices only as root")
def test_dump_of_a_directory_is_a_tar_stream_that_restores_the_snapshot_exactly(history, tmp_path):
    first = history.ids[0]
    restored = tmp_path / "restored"
    result = run_command("restore", "--target", restored, "--snapshot", first, *history.args(), env=history.server.env())
    assert result.returncode == 0, result
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    dump = subprocess.Popen([*_dump_cmd(history), "--snapshot", first, "/"], stdout=subprocess.PIPE,
                            env=_env(history))
    tar = subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(extracted)], stdin=dump.stdout,
                         capture_output=True)
    dump.stdout.close()
    assert dump.wait() == 0 and tar.returncode == 0, tar.stderr
    assert differences(tree_state(restored), tree_state(extracted)) == []
    assert differences(history.s1_state, tree_state(extracted)) == []
    # One directory: its members are named from the directory itself.
    listing = subprocess.run(f"{' '.join(map(shlex_quote, _dump_cmd(history)))} --snapshot {first} docs | tar -t",
                             shell=True, capture_output=True, text=True, env=_env(history))
    assert sorted(listing.stdout.split()) == ["docs/", "docs/a.txt", "docs/empty/", "docs/sub/", "docs/sub/b.txt"]


def test_dump_refuses_bytes_that_are_not_the_recorded_ones(s3server, tmp_path, prefix):
    """On a bucket without versioning the current object is what a dump reads: replaced since the snapshot,
    its bytes are refused (exit 1) and stdout is not the file; a tar stream of it is cut short."""
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "f.bin").write_bytes(BIG)
    args = server_args(s3server, prefix)
    assert run_obsbatch("--source", source, *args, "--state", tmp_path / "s.db", env=s3server.env()).returncode == 0
    replaced = bytearray(BIG)
    replaced[-1] ^= 1
    s3server.client().put_object(Bucket=s3server.bucket, Key=f"{prefix}d/f.bin", Body=bytes(replaced))
    env = dict(os.environ, **s3server.env(), PYTHONPATH=os.getcwd())
    cmd = [os.sys.executable, "-m", "obsbatch", "dump", *args, "--log-format", "json"]
    one = subprocess.run([*cmd, "d/f.bin"], capture_output=True, env=env)
    assert one.returncode == 1, one.stderr[-2000:]
    assert b"are not those the snapshot recorded" in one.stderr
    assert len(one.stdout) < len(BIG) and BIG.startswith(one.stdout)
    whole = subprocess.run([*cmd, "d"], capture_output=True, env=env)
    assert whole.returncode == 1
    listed = subprocess.run(["tar", "-t"], input=whole.stdout, capture_output=True)
    assert listed.returncode != 0  # no end-of-archive: tar says it was cut short


def shlex_quote(text) -> str:
    import shlex

    return shlex.quote(str(text))


def _dump_cmd(history) -> list:
    return [os.sys.executable, "-m", "obsbatch", "dump", *map(str, history.args()), "--log-format", "json"]


def _env(history) -> dict:
    from tests.conftest import REPO

    return dict(os.environ, **history.server.env(), PYTHONPATH=str(REPO))


def test_dump_needs_a_path_and_ls_refuses_a_dotdot(history):
    assert history.run("dump").returncode == 2
    result = history.run("ls", "docs/../etc")
    assert result.returncode == 2 and "'..'" in result.stderr
    assert shutil.which("tar")


@pytest.mark.parametrize("include", ["docs", "docs/"])
def test_restore_include_of_a_directory_takes_it_whole_with_its_empty_directories(history, tmp_path, include):
    target = tmp_path / "t"
    result = history.run("restore", "--target", target, "--snapshot", history.ids[0], "--include", include)
    assert result.returncode == 0, result
    got = sorted(os.path.relpath(os.path.join(d, n), target) for d, dirs, files in os.walk(target)
                 for n in dirs + files)
    assert got == ["docs", "docs/a.txt", "docs/empty", "docs/sub", "docs/sub/b.txt"]
    assert result.summary["selected"] == 5
    # The directories have their recorded mtimes, the empty one included.
    assert os.stat(target / "docs").st_mtime_ns == 1_700_000_000_123_456_789
    listing = history.run("restore", "--target", tmp_path / "l", "--listing", "--include", include)
    assert listing.returncode == 0, listing
    # The listing is every object under docs/ as it is now: the renamed directory's old keys are still there
    # (a backup never deletes an object).
    assert sorted(os.listdir(tmp_path / "l" / "docs")) == ["a.txt", "moved", "new.txt", "sub"]


def test_restore_include_that_matches_nothing_is_exit_1(history, tmp_path):
    result = history.run("restore", "--target", tmp_path / "t", "--include", "docs/nothere.txt")
    assert result.returncode == 1, result
    assert result.find("restore.nothing_selected") and result.summary["selected"] == 0
    assert not os.listdir(tmp_path / "t")
