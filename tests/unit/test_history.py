"""obsbatch.s3.history over trees built here: diff reads only the directories that changed (the Merkle
structure), ls only those on the path, find's memo searches a shared tree once, and the globs mean what
README says."""

from __future__ import annotations

import hashlib

import pytest

from obsbatch import snapshot
from obsbatch.s3 import history, snapshots


class CountingTrees(snapshot.Trees):
    """Trees that count which tree hashes were read."""

    def __init__(self):
        super().__init__()
        self.read = []

    def get(self, digest):
        self.read.append(digest)
        return super().get(digest)


def build(pack: snapshot.PackWriter, tree: dict) -> str:
    """Write `tree` ({name: bytes content | dict}) into the pack, children first; its root hash."""
    entries = []
    for name in sorted(tree, key=str.encode):
        value = tree[name]
        if isinstance(value, dict):
            entries.append([name, snapshot.DIRECTORY, 0o755, 0, 0, 0, 0, build(pack, value), "", "", 0, ""])
        else:
            entries.append([name, snapshot.FILE, 0o644, 0, 0, 1, len(value), hashlib.sha256(value).hexdigest(),
                            "v1", "", 0, "etag"])
    data = snapshot.tree_bytes(entries)
    digest = hashlib.sha256(data).hexdigest()
    pack.add(digest, data)
    return digest


def loaded_with(*trees: dict):
    pack = snapshot.PackWriter()
    roots = [build(pack, tree) for tree in trees]
    handle, _, _ = pack.finished()
    loaded = CountingTrees()
    loaded.add_pack(handle)
    records = [{"id": f"s{n}", "root": root} for n, root in enumerate(roots)]
    return loaded, records


def wide(directories: int, files: int, changed: int = -1) -> dict:
    return {f"d{d:04d}": {f"f{f}": (b"changed" if d == changed and f == 0 else f"{d}/{f}".encode())
                          for f in range(files)} for d in range(directories)}


def test_diff_reads_only_the_directories_that_changed():
    loaded, (old, new) = loaded_with(wide(200, 5), wide(200, 5, changed=7))
    budget = snapshots.Budget(None)
    changes = list(history.differences(loaded, history.root_entry(old), history.root_entry(new), b"", budget))
    assert [(change.kind, change.rel) for change in changes] == [(history.MODIFIED, b"d0007/f0")]
    # The two roots and the two versions of d0007: none of the 199 equal subtrees.
    assert len(loaded.read) == 4


def test_ls_of_a_path_reads_only_the_trees_on_it():
    loaded, (record,) = loaded_with(wide(200, 5))
    entry = history.entry_at(loaded, record, "d0150/f3")
    assert entry[snapshot.NAME] == b"f3" and entry[snapshot.SIZE] == len(b"150/3")
    assert len(loaded.read) == 2
    assert history.entry_at(loaded, record, "d0150/f3/deeper") is None
    assert history.entry_at(loaded, record, "nothere") is None


def test_find_searches_a_tree_the_snapshots_share_once():
    loaded, records = loaded_with(wide(50, 3), wide(50, 3, changed=3))
    pattern = history.Pattern(["f2"])
    barren: set = set()
    found = [rel for record in records
             for rel, _ in history.matching(loaded, record, pattern, snapshots.Budget(None), barren)]
    assert len(found) == 100
    none = history.Pattern(["nothing"])
    loaded.read.clear()
    barren.clear()
    for record in records:
        assert list(history.matching(loaded, record, none, snapshots.Budget(None), barren)) == []
    # The first snapshot: its root and 50 directories; the second: its root and the one directory it changed.
    assert len(loaded.read) == 1 + 50 + 1 + 1


@pytest.mark.parametrize("glob, path, matches", [
    ("*.conf", b"etc/nginx/nginx.conf", True),
    ("etc/*.conf", b"etc/nginx/nginx.conf", False),
    ("etc/**/*.conf", b"etc/nginx/nginx.conf", True),
    ("etc/**/nginx.conf", b"etc/nginx.conf", True),
    ("/etc/nginx/nginx.conf", b"etc/nginx/nginx.conf", True),
    ("etc/ngin?/*", b"etc/nginx/a", True),
    ("etc/**", b"etc/a/b/c", True),
    ("[ab]*", b"x/beta", True),
    ("[!ab]*", b"x/beta", False),
    ("caf\\xe9", b"caf\xe9", True),
])
def test_globs(glob, path, matches):
    assert history.Pattern([glob]).matches(path, path.rpartition(b"/")[2]) is matches


def test_a_walk_is_bounded_by_the_records_counts():
    loaded, (record,) = loaded_with(wide(10, 10))
    with pytest.raises(snapshots.SnapshotDamaged):
        list(history.beneath(loaded, history.root_entry(record), b"", True, snapshots.Budget(50)))
