"""`obsbatch stats`: one snapshot's size (default the latest: files, bytes, directories, links, specials, the
files in no snapshot yet) and what the store holds for the prefix: current and noncurrent object versions
and their bytes, delete markers, and obsbatch's own records and packs; from the record and one version
listing (a page per 1,000 versions), no data read. What a retention policy would free is what
`forget --keep-... --prune --dry-run` counts.
"""

from __future__ import annotations

from typing import Sequence

from obsbatch import snapshot
from obsbatch.commands import history

DESCRIPTION = ("Show a snapshot's size (default: the latest) and what the store holds for the prefix: current and "
               "noncurrent versions and their bytes, delete markers, snapshot records and packs. Exit 0 shown, 1 no "
               "snapshot under the prefix, 2 usage, access or no such snapshot.")
#: The record's counts shown, in order.
_COUNTS = ("files", "bytes", "directories", "symlinks", "special", "stale", "unstored")


def main(argv: Sequence[str], started: float) -> int:
    return history.main("stats", argv, started, DESCRIPTION, _stats)


def _stats(config, reader: history.History) -> dict:
    record = reader.chosen(config.snapshot or "", config.as_of)
    found = {"snapshot": record["id"], "time": record.get("time"), "host": record.get("host"),
             **{name: record.get(name) for name in _COUNTS}}
    store = reader.store
    with reader.errors(f"list the versions under {store.location}"):
        found.update(_held(reader.client, store.bucket, store.prefix, "data"))
        found.update(_held(reader.client, store.bucket, snapshot.area(store.prefix), "snapshot_area"))
    if config.json:
        history.emit_json(found)
    else:
        width = max(len(name) for name in found)
        for name, value in found.items():
            history.emit(f"{name:<{width}}  {value}")
    return found


def _held(client, bucket: str, prefix: str, label: str) -> dict:
    """Current and noncurrent versions under `prefix` and their bytes, and delete markers (retention.versions:
    on a store without ListObjectVersions, every object as current)."""
    from obsbatch.s3 import retention

    counts = {f"{label}_{name}": 0 for name in ("current", "current_bytes", "noncurrent", "noncurrent_bytes",
                                               "delete_markers")}
    for one in retention.versions(client, bucket, prefix):
        if one.get("DeleteMarker"):
            counts[f"{label}_delete_markers"] += 1
            continue
        which = "current" if one.get("IsLatest") else "noncurrent"
        counts[f"{label}_{which}"] += 1
        counts[f"{label}_{which}_bytes"] += one.get("Size", 0)
    return counts
