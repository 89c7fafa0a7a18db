"""Snapshots as the store holds them (issue #20; the format is obsbatch.snapshot): which there are, one
record, and the trees a record needs. Used by `obsbatch snapshots`, `restore` and `verify`.

Errors are botocore's, except SnapshotError for a snapshot that is missing or cannot be trusted; each
command turns botocore's into its sentence with obsbatch.s3.remote.store_error.
"""

from __future__ import annotations

import json
import tempfile
from typing import Callable, Iterator, List, Optional

from obsbatch import snapshot
from obsbatch.errors import ExitCode, ObsbatchError


class SnapshotError(ObsbatchError):
    """No such snapshot (exit 2, as a mistyped flag)."""


class SnapshotDamaged(SnapshotError):
    """A snapshot whose record or trees are missing or not what their hashes say: nothing is restored from
    it, and verify reports it (exit 1, as any object found missing or different)."""

    exit_code = ExitCode.PARTIAL


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


def _marker(client, bucket: str, key: str) -> Optional[dict]:
    named = _named(key)
    try:
        found = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:  # removed since the listing (a retired host cleaned up)
        return None
    except ValueError:
        return dict(named, damaged=True)
    if not isinstance(found, dict) or {name: found.get(name) for name in ("host", "prefix")} != named:
        return dict(named, damaged=True)
    return {name: found.get(name) for name in snapshot.FLEET_FIELDS}


def record(client, bucket: str, prefix: str, snapshot_id: str, read_params: Optional[dict] = None) -> dict:
    """One snapshot record, checked against its head; SnapshotError if it is not there or was altered."""
    key = snapshot.record_key(prefix, snapshot_id)
    try:
        body = client.get_object(Bucket=bucket, Key=key, **(read_params or {}))["Body"].read()
    except client.exceptions.NoSuchKey:
        raise SnapshotError(f"there is no snapshot {snapshot_id} under s3://{bucket}/{prefix}") from None
    try:
        found = json.loads(body)
    except ValueError:
        raise SnapshotDamaged(f"the snapshot record {key} is not JSON; it cannot be trusted") from None
    if not snapshot.sealed(found) or found.get("id") != snapshot_id:
        raise SnapshotDamaged(f"the snapshot record {key} does not match its head (altered in the store); it cannot "
                            "be trusted")
    return found


def choose(client, bucket: str, prefix: str, snapshot_id: str = "", as_of: Optional[float] = None,
           read_params: Optional[dict] = None) -> Optional[dict]:
    """The record asked for: `snapshot_id`, else the latest at or before `as_of` (a Unix time), else the
    latest; None when the prefix has no snapshot at all (with an id or a time: SnapshotError)."""
    if snapshot_id:
        return record(client, bucket, prefix, snapshot_id, read_params)
    chosen = None
    cutoff = None if as_of is None else snapshot.new_id(as_of)[:snapshot.ID_TIME_LENGTH]
    for found in ids(client, bucket, prefix):
        if cutoff is None or found[:snapshot.ID_TIME_LENGTH] <= cutoff:
            chosen = found
    if chosen is None:
        if as_of is not None:
            raise SnapshotError(f"no snapshot under s3://{bucket}/{prefix} is as old as {snapshot.rfc3339(as_of)}")
        return None
    return record(client, bucket, prefix, chosen, read_params)


def trees(client, bucket: str, prefix: str, found: dict, read_params: Optional[dict] = None) -> snapshot.Trees:
    """The packs a record names, each streamed into an unlinked temporary file and indexed; SnapshotError
    when one is missing or damaged."""
    loaded = snapshot.Trees()
    try:
        for pack_id in found.get("packs", []):
            key = snapshot.pack_key(prefix, pack_id)
            handle = tempfile.TemporaryFile(prefix="obsbatch-pack-")
            try:
                body = client.get_object(Bucket=bucket, Key=key, **(read_params or {}))["Body"]
            except client.exceptions.NoSuchKey:
                handle.close()
                raise SnapshotDamaged(f"the snapshot {found['id']} needs {key}, which the store does not have") from None
            for chunk in iter(lambda: body.read(1 << 20), b""):
                handle.write(chunk)
            handle.seek(0)
            try:
                loaded.add_pack(handle)
            except snapshot.Damaged as exc:
                raise SnapshotDamaged(f"the pack {key} is damaged: {exc}") from None
        if found.get("root") not in loaded:
            raise SnapshotDamaged(f"no pack of snapshot {found['id']} holds its root tree")
    except BaseException:
        loaded.close()
        raise
    return loaded


def walk(loaded: snapshot.Trees, root: str) -> Iterator[tuple]:
    """(relative directory path as bytes, its entries) for every directory of a snapshot, parents before
    children; the entries' names are bytes. SnapshotError for a tree that is missing or altered."""
    from obsbatch.models import undisplay

    stack: List[tuple] = [(b"", root)]
    while stack:
        rel, digest = stack.pop()
        try:
            entries = loaded.get(digest)
        except KeyError:
            raise SnapshotDamaged(f"tree {digest} (directory {rel.decode('utf-8', 'replace') or '.'}) is in no pack "
                                "of this snapshot") from None
        except snapshot.Damaged as exc:
            raise SnapshotDamaged(f"the snapshot is damaged (altered in the store?): {exc}") from None
        for entry in entries:
            entry[snapshot.NAME] = undisplay(entry[snapshot.NAME])
        yield rel, entries
        for entry in reversed(entries):
            if entry[snapshot.TYPE] == snapshot.DIRECTORY:
                name = entry[snapshot.NAME]
                stack.append((rel + b"/" + name if rel else name, entry[snapshot.CONTENT]))
