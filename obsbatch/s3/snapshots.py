"""Snapshots as the store holds them (issue #20; the format is obsbatch.snapshot): which there are, one
record, and the trees a record needs. Used by `obsbatch snapshots`, `restore` and `verify`.

Errors are botocore's, except SnapshotError for a snapshot that is missing or cannot be trusted; each
command turns botocore's into its sentence with obsbatch.s3.remote.store_error.
"""

from __future__ import annotations

import json
import re
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from obsbatch import beneath, snapshot
from obsbatch.errors import ExitCode, ObsbatchError
from obsbatch.models import undisplay


class SnapshotError(ObsbatchError):
    """No such snapshot (exit 2, as a mistyped flag)."""


class SnapshotDamaged(SnapshotError):
    """A snapshot whose record or trees are missing or not what their hashes say: nothing is restored from
    it, and verify reports it (exit 1, as any object found missing or different)."""

    exit_code = ExitCode.PARTIAL


class SnapshotUntrusted(SnapshotDamaged):
    """A record without a valid signature by the operator's --public-key: whoever can write the bucket could
    have written it. Never restored from, never chosen as the latest (exit 1 when asked for by id)."""


def ids(client, bucket: str, prefix: str) -> Iterator[str]:
    """The ids of the snapshots stored for `prefix`, oldest first (ids sort by time); one listing request
    per 1,000 snapshots, and the packs below them are never listed (Delimiter)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=snapshot.area(prefix), Delimiter="/"):
        for obj in page.get("Contents", ()):
            found = snapshot.id_of(obj["Key"])
            if found is not None:
                yield found


def fleet(client, bucket: str, threads: int, prefix: str = "") -> List[dict]:
    """The latest snapshot of every (host, prefix) in the bucket whose prefix starts with `prefix`, from the
    fleet markers (snapshot.fleet_key): one listing request per 1,000 of them and one GET for each marker the
    filter keeps (the prefix is in the key), `threads` at once; no data and no record is read. Sorted by host,
    then prefix. A marker that is not what a run writes comes back as {"host", "prefix", "damaged": True},
    named from its key."""
    paginator = client.get_paginator("list_objects_v2")
    keys = [obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=snapshot.FLEET_AREA)
            for obj in page.get("Contents", ()) if obj["Key"].endswith(".json")]
    keys = [key for key in keys if _named(key)["prefix"].startswith(prefix)]
    found = [one for one in read_all(lambda key: _marker(client, bucket, key), keys, threads) if one is not None]
    return sorted(found, key=lambda one: (str(one.get("host")), str(one.get("prefix"))))


def fleet_prefixes(client, bucket: str) -> set:
    """Every prefix some host's fleet marker names, from the markers' keys alone (one listing request per
    1,000 markers, none read)."""
    paginator = client.get_paginator("list_objects_v2")
    return {_named(obj["Key"])["prefix"] for page in paginator.paginate(Bucket=bucket, Prefix=snapshot.FLEET_AREA)
            for obj in page.get("Contents", ()) if obj["Key"].endswith(".json")}


def read_all(read: Callable, items: list, threads: int) -> list:
    """[read(item) for item in items], `threads` at once, in the items' order. A Ctrl-C while waiting cancels
    the reads not yet started (map's iterator cancels its futures when it is left), so the pool's exit waits
    only for those in flight."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(read, items))


def _named(key: str) -> dict:
    """The host and prefix a marker's key names (snapshot.fleet_key, read back)."""
    import urllib.parse

    host, _, name = key[len(snapshot.FLEET_AREA):].partition("/")
    return {"host": host, "prefix": urllib.parse.unquote(name[:-len(".json")])}


#: The most of obsbatch's own small objects read into memory: a record (it names every pack its trees are in,
#: ~20 bytes a run that changed something: years of a 15-minute timer fit), a fleet marker, a signature.
#: Whoever can write the bucket could store gigabytes under such a key; more than this is damaged.
RECORD_LIMIT = 64 * 1024 * 1024
SMALL_LIMIT = 64 * 1024


class TooLarge(ValueError):
    """An object of obsbatch's own that is larger than it can be (RECORD_LIMIT, SMALL_LIMIT)."""


def bounded(response: dict, limit: int) -> bytes:
    """A GetObject body read to at most `limit` bytes; TooLarge (the rest never read) past that."""
    body = response["Body"]
    try:
        data = body.read(limit + 1)
    finally:
        body.close()
    if len(data) > limit:
        raise TooLarge(f"larger than {limit} bytes")
    return data


def _marker(client, bucket: str, key: str) -> Optional[dict]:
    named = _named(key)
    try:
        found = json.loads(bounded(client.get_object(Bucket=bucket, Key=key), SMALL_LIMIT))
    except client.exceptions.NoSuchKey:  # removed since the listing (a retired host cleaned up)
        return None
    except ValueError:
        return dict(named, damaged=True)
    if not isinstance(found, dict) or {name: found.get(name) for name in ("host", "prefix")} != named:
        return dict(named, damaged=True)
    return {name: found.get(name) for name in snapshot.FLEET_FIELDS}


def record(client, bucket: str, prefix: str, snapshot_id: str, read_params: Optional[dict] = None,
           public_key=None) -> dict:
    """One snapshot record, checked against its head; SnapshotError if it is not there or was altered. With
    `public_key` (signing.load_public_key), its signature (`<record key>.sig`) must verify against that key, or
    SnapshotUntrusted."""
    key = snapshot.record_key(prefix, snapshot_id)
    try:
        body = bounded(client.get_object(Bucket=bucket, Key=key, **(read_params or {})), RECORD_LIMIT)
    except client.exceptions.NoSuchKey:
        raise SnapshotError(f"there is no snapshot {snapshot_id} under s3://{bucket}/{prefix}") from None
    except TooLarge as exc:
        raise SnapshotDamaged(f"the snapshot record {key} is {exc}; it cannot be trusted") from None
    try:
        found = json.loads(body)
    except ValueError:
        raise SnapshotDamaged(f"the snapshot record {key} is not JSON; it cannot be trusted") from None
    if not snapshot.sealed(found) or found.get("id") != snapshot_id:
        raise SnapshotDamaged(f"the snapshot record {key} does not match its head (altered in the store); it cannot "
                            "be trusted")
    if public_key is not None:
        why = signature_problem(client, bucket, prefix, found, public_key, read_params)
        if why is not None:
            raise SnapshotUntrusted(f"the snapshot {snapshot_id} is UNTRUSTED: {why}; it is not signed by the "
                                    "--public-key, so whoever can write the bucket could have written it")
    return found


def signature_problem(client, bucket: str, prefix: str, found: dict, public_key,
                      read_params: Optional[dict] = None) -> Optional[str]:
    """Why the sealed record `found` has no valid signature by `public_key` beside it, or None."""
    from obsbatch import signing

    key = snapshot.record_key(prefix, found["id"])
    head = found["head"]
    try:
        body = bounded(client.get_object(Bucket=bucket, Key=key + signing.SUFFIX, **(read_params or {})),
                        SMALL_LIMIT)
    except client.exceptions.NoSuchKey:
        return "it has no signature"
    except TooLarge as exc:
        return f"its signature is {exc}"
    return signing.checked(body, head, public_key)


def choose(client, bucket: str, prefix: str, snapshot_id: str = "", as_of: Optional[float] = None,
           read_params: Optional[dict] = None, public_key=None,
           passed_over: Optional[Callable[[str, str], None]] = None) -> Optional[dict]:
    """The record asked for: `snapshot_id`, else the latest at or before `as_of` (a Unix time), else the
    latest; None when the prefix has no snapshot at all (with an id or a time: SnapshotError).

    With `public_key`, only a record signed by it is chosen: a newer one that is damaged or UNTRUSTED is passed
    over, each told to `passed_over(id, why)` (never silently), and the latest trusted one is chosen (one
    asked for by id must be trusted itself: SnapshotUntrusted). Without a key the latest is the latest, and a
    damaged one is an error, as before: nothing says which records to believe."""
    if snapshot_id:
        return record(client, bucket, prefix, snapshot_id, read_params, public_key)
    cutoff = None if as_of is None else snapshot.new_id(as_of)[:snapshot.ID_TIME_LENGTH]
    candidates = [found for found in ids(client, bucket, prefix)
                  if cutoff is None or found[:snapshot.ID_TIME_LENGTH] <= cutoff]
    if not candidates:
        if as_of is not None:
            raise SnapshotError(f"no snapshot under s3://{bucket}/{prefix} is as old as {snapshot.rfc3339(as_of)}")
        if public_key is not None:  # not the listing instead: nothing there is signed
            raise SnapshotUntrusted(f"there is no snapshot under s3://{bucket}/{prefix} to check against the "
                                    "--public-key; nothing is restored or checked without one")
        return None
    if public_key is None:
        return record(client, bucket, prefix, candidates[-1], read_params)
    for found in reversed(candidates):
        try:
            return record(client, bucket, prefix, found, read_params, public_key)
        except SnapshotDamaged as exc:  # SnapshotUntrusted among them
            if passed_over is not None:
                passed_over(found, str(exc))
    raise SnapshotUntrusted(f"no snapshot under s3://{bucket}/{prefix} is signed by the --public-key "
                            f"({len(candidates)} listed, none trusted); nothing is restored from an untrusted record")


def chain_breaks(records: List[dict]) -> Iterator[Tuple[dict, str]]:
    """(record, why) for each record whose `previous` is not the head of the one before it from the same host
    (records: oldest first, damaged ones left out). A run cites the head of its host's last snapshot of the
    prefix (stages.snapshot.write), so a record inserted, removed or rewritten in between breaks the chain
    there. A record that cites nothing (a first run, or a host whose journal was lost) restarts it."""
    last_head: Dict[str, str] = {}
    for one in records:
        host = str(one.get("host"))
        cited = one.get("previous")
        if cited is not None and host in last_head and cited != last_head[host]:
            yield one, (f"it cites the head {str(cited)[:16]}..., but the snapshot before it from {host} has "
                        f"{last_head[host][:16]}...")
        last_head[host] = str(one.get("head"))


def trees(client, bucket: str, prefix: str, found: dict, read_params: Optional[dict] = None) -> snapshot.Trees:
    """The packs a record names, each streamed into an unlinked temporary file and indexed; SnapshotError
    when one is missing or damaged."""
    return trees_of(client, bucket, prefix, [found], read_params)


def trees_of(client, bucket: str, prefix: str, records: List[dict],
             read_params: Optional[dict] = None) -> snapshot.Trees:
    """trees() of several records at once: each pack any of them names is read once (a run's pack is named
    by every later record whose trees it holds, so two snapshots share most of theirs)."""
    loaded = snapshot.Trees()
    needed = {}
    for found in records:
        for pack_id in found.get("packs", []):
            needed.setdefault(pack_id, found["id"])
    try:
        for pack_id, snapshot_id in needed.items():
            key = snapshot.pack_key(prefix, pack_id)
            handle = tempfile.TemporaryFile(prefix="obsbatch-pack-")
            try:
                body = client.get_object(Bucket=bucket, Key=key, **(read_params or {}))["Body"]
            except client.exceptions.NoSuchKey:
                handle.close()
                raise SnapshotDamaged(f"the snapshot {snapshot_id} needs {key}, which the store does not have") from None
            for chunk in iter(lambda: body.read(1 << 20), b""):
                handle.write(chunk)
            handle.seek(0)
            try:
                loaded.add_pack(handle)
            except snapshot.Damaged as exc:
                raise SnapshotDamaged(f"the pack {key} is damaged: {exc}") from None
        for found in records:
            if found.get("root") not in loaded:
                raise SnapshotDamaged(f"no pack of snapshot {found['id']} holds its root tree")
    except BaseException:
        loaded.close()
        raise
    return loaded


_TYPES = frozenset((snapshot.FILE, snapshot.DIRECTORY, snapshot.SYMLINK, snapshot.FIFO, snapshot.SOCKET,
                    snapshot.CHAR_DEVICE, snapshot.BLOCK_DEVICE, snapshot.SPECIAL_UNKNOWN))
_HASH = re.compile(r"[0-9a-f]{64}")
_I64 = 2 ** 63


def _int_in(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def entry_problem(entry) -> Optional[str]:
    """Why a tree entry read from the store cannot be used, or None; its NAME is already bytes (walk).

    The one check of what a snapshot entry holds (a forger who can write the bucket writes these): a name that
    is one path component (beneath.valid_name), a known type, a permission mode, 32-bit owners, whole
    numbers for time and size, a tree hash for a directory, a link target without NUL, a device number."""
    if not isinstance(entry, list) or len(entry) not in (snapshot.ETAG, snapshot.ETAG + 1, snapshot.XATTRS + 1):
        return "is not a snapshot entry"
    name = entry[snapshot.NAME]
    if not beneath.valid_name(name):
        return "has a name that is not one path component ('', '.', '..', a '/' or a NUL)"
    kind = entry[snapshot.TYPE]
    if kind not in _TYPES:
        return f"has the unknown type {kind!r}"
    if not _int_in(entry[snapshot.MODE], 0, 0o7777):
        return f"has the mode {entry[snapshot.MODE]!r}, not a permission mode (0..7777 octal)"
    if not (_int_in(entry[snapshot.UID], 0, beneath.MAX_ID) and _int_in(entry[snapshot.GID], 0, beneath.MAX_ID)):
        return f"has the owner {entry[snapshot.UID]!r}:{entry[snapshot.GID]!r}, not user and group ids"
    if not _int_in(entry[snapshot.MTIME], -_I64, _I64 - 1) or not _int_in(entry[snapshot.SIZE], 0, _I64 - 1):
        return "has an mtime or size that is not a whole number in range"
    content = entry[snapshot.CONTENT]
    if not all(isinstance(value, str) for value in (content, entry[snapshot.VERSION], entry[snapshot.LINK],
                                                    snapshot.etag(entry))):
        return "has a content, version or hardlink group that is not text"
    if kind == snapshot.DIRECTORY and not _HASH.fullmatch(content):
        return "is a directory without a tree hash"
    if kind == snapshot.SYMLINK and (not content or b"\0" in undisplay(content)):
        return "is a symlink with an empty target or a NUL in it"
    if kind in (snapshot.CHAR_DEVICE, snapshot.BLOCK_DEVICE) and not (content.isascii() and content.isdigit()
                                                                      and int(content) < 2 ** 64):
        return f"is a device with the number {content!r}"
    if len(entry) > snapshot.XATTRS:
        return xattrs_problem(entry[snapshot.XATTRS])
    return None


#: The most extended attributes one entry may carry (Linux keeps all of a file's names in 64 KiB).
_MOST_XATTRS = 4096


def xattrs_problem(found) -> Optional[str]:
    """Why an entry's extended attributes cannot be used, or None: a map of names a snapshot records
    (snapshot.recorded_xattr, at most 255 bytes) to base64 values of at most 64 KiB."""
    import base64
    import binascii

    if not isinstance(found, dict) or not found or len(found) > _MOST_XATTRS:
        return "has extended attributes that are not a map of names to values"
    for name, value in found.items():
        if not (isinstance(name, str) and snapshot.recorded_xattr(name) and "\0" not in name
                and len(name.encode("utf-8", "surrogatepass")) <= snapshot.XATTR_NAME_MAX):
            return f"has the extended attribute name {name!r}, which a snapshot never records"
        if not isinstance(value, str) or len(value) > 4 * (snapshot.XATTR_VALUE_MAX // 3 + 1):
            return f"has a value of the extended attribute {name} that is not base64 of at most 64 KiB"
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"has a value of the extended attribute {name} that is not base64"
    return None


def entry_budget(found: dict) -> int:
    """How many entries a record's trees may hold: what its counts say (a tree shared by two directories is
    walked twice, and counted twice when it was built, so a genuine snapshot meets its count exactly). A
    forged record can state a large count, but not an unbounded walk: without this, a few trees each naming
    the next twice describe 2**60 directories. A record without counts (obsbatch has always written them) may
    hold none."""
    counts = [found.get(name) for name in ("files", "directories", "symlinks", "special")]
    if not all(type(count) is int and count >= 0 for count in counts):
        return 0
    return sum(counts)


def entries(loaded: snapshot.Trees, digest: str, rel: bytes,
            damaged: Optional[Callable[[bytes, str], None]] = None) -> List[list]:
    """The checked entries of one tree (the directory `rel`), names as bytes: each that fails entry_problem is
    left out and told to `damaged(path, problem)` (the path as far as it can be spelled), or with no `damaged`
    raises SnapshotDamaged. SnapshotDamaged for a tree that is missing or altered."""
    try:
        found = loaded.get(digest)
    except KeyError:
        raise SnapshotDamaged(f"tree {digest} (directory {rel.decode('utf-8', 'replace') or '.'}) is in no pack "
                              "of this snapshot") from None
    except snapshot.Damaged as exc:
        raise SnapshotDamaged(f"the snapshot is damaged (altered in the store?): {exc}") from None
    if not isinstance(found, list):
        found = [None]
    kept = []
    for entry in found:
        if isinstance(entry, list) and entry and isinstance(entry[snapshot.NAME], str):
            entry[snapshot.NAME] = undisplay(entry[snapshot.NAME])
        problem = entry_problem(entry)
        if problem is None:
            kept.append(entry)
            continue
        name = entry[snapshot.NAME] if isinstance(entry, list) and entry and isinstance(entry[0], bytes) else b"?"
        where = (rel + b"/" if rel else b"") + name.replace(b"/", b"\\x2f")
        if damaged is None:
            raise SnapshotDamaged(f"the entry {where.decode('utf-8', 'replace')} {problem}")
        damaged(where, problem)
    return kept


def walk(loaded: snapshot.Trees, root: str, damaged: Optional[Callable[[bytes, str], None]] = None,
         limit: Optional[int] = None) -> Iterator[tuple]:
    """(relative directory path as bytes, its entries) for every directory of a snapshot, parents before
    children; the entries' names are bytes. SnapshotError for a tree that is missing or altered.

    Every entry is checked (entries: entry_problem) before it is yielded: one that fails is left out, with
    everything beneath it, and told to `damaged(path, problem)`; with no `damaged`, the first one raises
    SnapshotDamaged. `limit` (entry_budget): more entries than that is SnapshotDamaged, so a forged tree
    cannot make a walk run forever."""
    stack: List[tuple] = [(b"", root)]
    budget = Budget(limit)
    while stack:
        rel, digest = stack.pop()
        kept = entries(loaded, digest, rel, damaged)
        budget.spend(len(kept))
        yield rel, kept
        for entry in reversed(kept):
            if entry[snapshot.TYPE] == snapshot.DIRECTORY:
                name = entry[snapshot.NAME]
                stack.append((rel + b"/" + name if rel else name, entry[snapshot.CONTENT]))


class Budget:
    """How many more entries a walk may read (entry_budget; None: no bound): SnapshotDamaged past it."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.spent = 0

    def spend(self, count: int) -> None:
        self.spent += count
        if self.limit is not None and self.spent > self.limit:
            raise SnapshotDamaged(f"the snapshot's trees hold more than the {self.limit} entries its record counts "
                                  "(forged to run a restore forever?)")
