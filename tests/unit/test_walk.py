import os

from obsbatch import keys
from obsbatch.stages.filters import select
from obsbatch.models import Candidate, Kind, Reason
from obsbatch.stages.walk import walk


def _by_rel(items):
    return {(i.rel if isinstance(i, Candidate) else os.fsencode(i.path)): i for i in items}


def test_nested_tree_yields_every_regular_file(tmp_path):
    for rel in ["a.txt", "d1/b.txt", "d1/d2/c.txt", "d1/d2/d3/d4/e.txt", "empty/.keep"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    items = list(walk(os.fsencode(tmp_path)))
    assert sorted(i.rel for i in items if isinstance(i, Candidate)) == sorted(
        [b"a.txt", b"d1/b.txt", b"d1/d2/c.txt", b"d1/d2/d3/d4/e.txt", b"empty/.keep"])


def test_fifo_socket_and_symlink_are_skipped_not_opened(tmp_path):
    import socket

    (tmp_path / "real").write_text("x")
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    os.symlink("real", tmp_path / "link")
    os.symlink(str(tmp_path), tmp_path / "dirlink")
    try:
        items = list(walk(os.fsencode(tmp_path)))
    finally:
        sock.close()
    outcomes = {os.path.basename(o.path): o for o in items if not isinstance(o, Candidate)}
    assert outcomes["fifo"].reason is Reason.NOT_REGULAR and outcomes["fifo"].message == "fifo"
    assert outcomes["sock"].reason is Reason.NOT_REGULAR and outcomes["sock"].message == "socket"
    assert outcomes["link"].reason is Reason.SYMLINK and outcomes["dirlink"].reason is Reason.SYMLINK
    assert [i.rel for i in items if isinstance(i, Candidate)] == [b"real"]


def test_follow_symlinks_is_loop_safe(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.symlink("..", tmp_path / "d" / "up")          # back to the root: a loop
    os.symlink("d/f", tmp_path / "filelink")         # followed: a regular file
    os.symlink("nowhere", tmp_path / "dangling")
    items = list(walk(os.fsencode(tmp_path), follow_symlinks=True))
    rels = sorted(i.rel for i in items if isinstance(i, Candidate))
    assert rels == [b"d/f", b"filelink"]
    loops = [o for o in items if not isinstance(o, Candidate) and o.reason is Reason.SYMLINK_LOOP]
    assert [os.path.basename(o.path) for o in loops] == ["up"]
    # A dangling link is said to be one (issue #19: it was reported "vanished", as if deleted mid-walk).
    dangling = [o for o in items if not isinstance(o, Candidate) and o.reason is Reason.DANGLING_SYMLINK]
    assert [os.path.basename(o.path) for o in dangling] == ["dangling"] and "nowhere" in dangling[0].message
    assert not [o for o in items if not isinstance(o, Candidate) and o.reason is Reason.VANISHED]


def test_non_utf8_names_are_walked_and_keyed_once_under_the_prefix(tmp_path):
    os.makedirs(os.path.join(os.fsencode(tmp_path), b"dir\xff", b"50%41"))
    with open(os.path.join(os.fsencode(tmp_path), b"dir\xff", b"50%41", b"f\xfe"), "wb") as f:
        f.write(b"x")
    [cand] = [i for i in walk(os.fsencode(tmp_path), "daily/") if isinstance(i, Candidate)]
    assert cand.rel == b"dir\xff/50%41/f\xfe"
    assert cand.key == "daily/dir%FF/50%2541/f%FE" == "daily/" + keys.encode(cand.rel)


def test_include_exclude(tmp_path):
    for rel in ["a.db", "b.log", "sub/c.db", "sub/d.tmp", "sub/e.db.tmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    items = list(select(walk(os.fsencode(tmp_path)), include=["*.db", "*.tmp"], exclude=["*.tmp"]))
    kept = sorted(i.rel for i in items if isinstance(i, Candidate))
    excluded = sorted(os.path.basename(i.path) for i in items
                      if not isinstance(i, Candidate) and i.reason is Reason.EXCLUDED)
    assert kept == [b"a.db", b"sub/c.db"]
    assert excluded == ["b.log", "d.tmp", "e.db.tmp"]
    assert all(i.kind is Kind.SKIPPED for i in items if not isinstance(i, Candidate))
