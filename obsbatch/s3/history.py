"""A snapshot as an operator reads it (`ls`, `diff`, `find`, `dump`): the entry a path names, the entries beneath
it, what changed between two snapshots, and the paths a glob matches. Over trees already loaded
(snapshots.trees_of); every entry is checked (snapshots.entries) before it is used or printed, and every walk
is bounded by the records' counts (snapshots.Budget), as a restore's is.

Only the trees on the way are decompressed and read: `ls docs/a` reads three trees whatever the snapshot
holds, and `diff` never reads a directory whose tree hash is the same in both snapshots (the Merkle
structure: an equal hash is an equal subtree).
"""

from __future__ import annotations

import re
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from obsbatch import snapshot
from obsbatch.models import undisplay
from obsbatch.s3 import snapshots

Damaged = Optional[Callable[[bytes, str], None]]


def root_entry(record: dict) -> list:
    """A directory entry for a snapshot's root (the record holds only its tree hash)."""
    return [b"", snapshot.DIRECTORY, 0, 0, 0, 0, 0, record["root"], "", "", 0]


def split(path: str) -> List[bytes]:
    """A path given as ls prints it (config.snapshot_path: no '..', no empty part) as its names' bytes."""
    return [undisplay(part) for part in path.split("/") if part]


def entry_at(loaded: snapshot.Trees, record: dict, path: str, damaged: Damaged = None) -> Optional[list]:
    """The checked entry `path` names in the snapshot ("" is its root), or None where it holds no such path
    (a name on the way is missing, or is not a directory)."""
    entry = root_entry(record)
    rel = b""
    for name in split(path):
        if entry[snapshot.TYPE] != snapshot.DIRECTORY:
            return None
        entry = next((one for one in snapshots.entries(loaded, entry[snapshot.CONTENT], rel, damaged)
                      if one[snapshot.NAME] == name), None)
        if entry is None:
            return None
        rel = rel + b"/" + name if rel else name
    return entry


def beneath(loaded: snapshot.Trees, top: list, top_rel: bytes, recursive: bool, budget: snapshots.Budget,
            damaged: Damaged = None) -> Iterator[Tuple[bytes, list]]:
    """(relative path, entry) of each entry in the directory entry `top` (at `top_rel`), sorted by name; with
    `recursive`, each directory's contents right after it (as `find` lists them)."""
    pending = [iter(_named(loaded, top, top_rel, budget, damaged))]
    while pending:
        for rel, entry in pending[-1]:
            yield rel, entry
            if recursive and entry[snapshot.TYPE] == snapshot.DIRECTORY:
                pending.append(iter(_named(loaded, entry, rel, budget, damaged)))
                break
        else:
            pending.pop()


def _named(loaded: snapshot.Trees, directory: list, rel: bytes, budget: snapshots.Budget,
           damaged: Damaged) -> List[Tuple[bytes, list]]:
    found = sorted(snapshots.entries(loaded, directory[snapshot.CONTENT], rel, damaged),
                   key=lambda entry: entry[snapshot.NAME])
    budget.spend(len(found))
    return [(rel + b"/" + entry[snapshot.NAME] if rel else entry[snapshot.NAME], entry) for entry in found]


# --- diff -------------------------------------------------------------------------------------------------

ADDED, REMOVED, MODIFIED, METADATA, TYPE_CHANGED = "added", "removed", "modified", "metadata", "type"
#: Each change's mark in the table (restic's).
MARKS = {ADDED: "+", REMOVED: "-", MODIFIED: "M", METADATA: "U", TYPE_CHANGED: "T"}
#: What a metadata-only change is made of: permission bits, owners, mtime.
_METADATA = (snapshot.MODE, snapshot.UID, snapshot.GID, snapshot.MTIME)


class Change(NamedTuple):
    """One difference: `kind` (ADDED ...), the path, the entry before (None if added) and after (None if removed)."""

    kind: str
    rel: bytes
    old: Optional[list]
    new: Optional[list]


def differences(loaded: snapshot.Trees, old: list, new: list, rel: bytes, budget: snapshots.Budget,
                damaged: Damaged = None) -> Iterator[Change]:
    """The changes from the entry `old` to the entry `new` (both at `rel`), parents before children. Two
    directories with the same tree hash are equal and never read; an added or removed directory comes with
    everything beneath it. A file is MODIFIED when its bytes (sha256, size), a symlink's target or a device's
    number differ; METADATA when only mode, owners, mtime or extended attributes (ACLs, capabilities) do. A directory's own mtime is not a change (it
    moves with every name added or removed in it, which is named already)."""
    if old[snapshot.TYPE] != new[snapshot.TYPE]:
        yield Change(TYPE_CHANGED, rel, old, new)
        if old[snapshot.TYPE] == snapshot.DIRECTORY:
            yield from _whole(loaded, old, rel, REMOVED, budget, damaged)
        if new[snapshot.TYPE] == snapshot.DIRECTORY:
            yield from _whole(loaded, new, rel, ADDED, budget, damaged)
        return
    if old[snapshot.TYPE] != snapshot.DIRECTORY:
        if (old[snapshot.CONTENT], old[snapshot.SIZE]) != (new[snapshot.CONTENT], new[snapshot.SIZE]):
            yield Change(MODIFIED, rel, old, new)
        elif any(old[field] != new[field] for field in _METADATA) or snapshot.xattrs(old) != snapshot.xattrs(new):
            yield Change(METADATA, rel, old, new)
        return
    if rel and (any(old[field] != new[field] for field in _METADATA if field != snapshot.MTIME)
                or snapshot.xattrs(old) != snapshot.xattrs(new)):
        yield Change(METADATA, rel, old, new)
    if old[snapshot.CONTENT] == new[snapshot.CONTENT]:
        return  # the same tree hash: the same subtree, unread
    before = dict((entry[snapshot.NAME], (path, entry)) for path, entry in _named(loaded, old, rel, budget, damaged))
    after = _named(loaded, new, rel, budget, damaged)
    names = sorted(set(before) | {entry[snapshot.NAME] for _, entry in after})
    now = {entry[snapshot.NAME]: (path, entry) for path, entry in after}
    for name in names:
        if name not in now:
            path, entry = before[name]
            yield Change(REMOVED, path, entry, None)
            if entry[snapshot.TYPE] == snapshot.DIRECTORY:
                yield from _whole(loaded, entry, path, REMOVED, budget, damaged)
        elif name not in before:
            path, entry = now[name]
            yield Change(ADDED, path, None, entry)
            if entry[snapshot.TYPE] == snapshot.DIRECTORY:
                yield from _whole(loaded, entry, path, ADDED, budget, damaged)
        else:
            yield from differences(loaded, before[name][1], now[name][1], now[name][0], budget, damaged)


def _whole(loaded: snapshot.Trees, directory: list, rel: bytes, kind: str, budget: snapshots.Budget,
           damaged: Damaged) -> Iterator[Change]:
    for path, entry in beneath(loaded, directory, rel, True, budget, damaged):
        yield Change(kind, path, entry if kind == REMOVED else None, entry if kind == ADDED else None)


# --- find -------------------------------------------------------------------------------------------------

class Pattern:
    """`find`'s globs: `*` and `?` within one name, `[...]` a class, `**` any number of whole directories.
    A glob without a '/' matches a name at any depth (`nginx.conf`, `*.conf`); one with a '/' matches the
    path from the snapshot's root (`etc/nginx/*.conf`, `var/**/*.log`; a leading '/' is the root too).
    Matched against the names' bytes (the display spelling undone), so `\\xff` in a glob is that byte."""

    def __init__(self, globs: Sequence[str]):
        self.by_name = [_compiled(glob) for glob in globs if "/" not in glob.strip("/")]
        self.by_path = [_compiled(glob.strip("/")) for glob in globs if "/" in glob.strip("/")]

    @property
    def names_only(self) -> bool:
        """Whether every glob matches names alone: then whether a subtree holds a match does not depend on
        where it is, and a tree searched once need not be searched again (find's memo)."""
        return not self.by_path

    def matches(self, rel: bytes, name: bytes) -> bool:
        return (any(one.fullmatch(name) for one in self.by_name)
                or any(one.fullmatch(rel) for one in self.by_path))


def _compiled(glob: str) -> "re.Pattern[bytes]":
    raw = undisplay(glob)
    out, index = b"", 0
    while index < len(raw):
        char = raw[index:index + 1]
        if raw.startswith(b"**/", index):
            out, index = out + b"(?:[^/]*/)*", index + 3
            continue
        if raw.startswith(b"**", index):
            out, index = out + b".*", index + 2
            continue
        if char == b"*":
            out += b"[^/]*"
        elif char == b"?":
            out += b"[^/]"
        elif char == b"[" and b"]" in raw[index + 2:]:
            end = raw.index(b"]", index + 2)
            body = raw[index + 1:end]
            negate = body[:1] == b"!"
            body = re.escape(body[1:] if negate else body).replace(b"\\-", b"-")
            out += b"(?!/)[" + (b"^" if negate else b"") + body + b"]"
            index = end
        else:
            out += re.escape(char)
        index += 1
    return re.compile(out, re.DOTALL)


def matching(loaded: snapshot.Trees, record: dict, pattern: Pattern, budget: snapshots.Budget,
             barren: set, damaged: Damaged = None) -> Iterator[Tuple[bytes, list]]:
    """(path, entry) of each entry of a snapshot that `pattern` matches, sorted as `ls --recursive` lists them.
    `barren`: tree hashes known to hold no match (pattern.names_only), shared across the snapshots searched,
    so that the trees a hundred snapshots share are searched once; filled here."""
    stack: List[Tuple[bytes, list, List[Tuple[bytes, list]]]] = []

    def opened(rel: bytes, directory: list) -> Optional[List[Tuple[bytes, list]]]:
        if pattern.names_only and directory[snapshot.CONTENT] in barren:
            return None
        return _named(loaded, directory, rel, budget, damaged)

    top = opened(b"", root_entry(record))
    if top is None:
        return
    stack.append((b"", root_entry(record), list(reversed(top))))
    found_under = [False]
    while stack:
        rel, directory, pending = stack[-1]
        if not pending:
            stack.pop()
            under = found_under.pop()
            if not under and pattern.names_only:
                barren.add(directory[snapshot.CONTENT])
            if under and found_under:
                found_under[-1] = True
            continue
        path, entry = pending.pop()
        if pattern.matches(path, entry[snapshot.NAME]):
            found_under[-1] = True
            yield path, entry
        if entry[snapshot.TYPE] == snapshot.DIRECTORY:
            inner = opened(path, entry)
            if inner is not None:
                stack.append((path, entry, list(reversed(inner))))
                found_under.append(False)


# --- what still restores ----------------------------------------------------------------------------------

def missing(loaded: snapshot.Trees, record: dict, prefix: str, stored: Callable[[str, list], bool],
            memo: dict, budget: snapshots.Budget) -> List[bytes]:
    """The files of a snapshot whose recorded version the store no longer holds (`stored(key, entry)`: one
    version listing answers it), as paths. `memo`, shared across the snapshots checked, holds what each
    (directory, tree, key format) pair is missing, so a subtree a hundred snapshots share is checked once."""
    from obsbatch import keys

    encode = keys.encoder(record)
    key_format = 1 if encode is keys.encode_v1 else 2
    # Post-order without recursion (a forged tree may be deeper than Python's stack): a directory is summed
    # once all of its subdirectories are; its entries are read once, kept on the stack until then.
    stack: List[tuple] = [(b"", record["root"], None)]
    while stack:
        rel_dir, digest, found = stack.pop()
        ident = (rel_dir, digest, key_format)
        if ident in memo:
            continue
        if found is None:
            found = snapshots.entries(loaded, digest, rel_dir)
            budget.spend(len(found))
            stack.append((rel_dir, digest, found))
            stack.extend((_joined(rel_dir, entry), entry[snapshot.CONTENT], None) for entry in found
                         if entry[snapshot.TYPE] == snapshot.DIRECTORY)
            continue
        gone: List[bytes] = []
        for entry in found:
            rel = _joined(rel_dir, entry)
            if entry[snapshot.TYPE] == snapshot.FILE and not stored(prefix + encode(rel), entry):
                gone.append(rel)
            elif entry[snapshot.TYPE] == snapshot.DIRECTORY:
                gone.extend(memo[(rel, entry[snapshot.CONTENT], key_format)])
        memo[ident] = tuple(gone)
    return list(memo[(b"", record["root"], key_format)])


def _joined(rel_dir: bytes, entry: list) -> bytes:
    return rel_dir + b"/" + entry[snapshot.NAME] if rel_dir else entry[snapshot.NAME]
