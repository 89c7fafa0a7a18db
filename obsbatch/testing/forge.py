"""Snapshots written as a forger would: whoever can write the bucket can store a pack and a record of their own,
sealed with its own head (a hash anyone can compute). The tests of a hostile store build them here and check
that a restore, verify or `snapshots` treats them as input, never as orders.

A tree is given as a dict {name: value}, name str or bytes (display-spelled in the tree, as obsbatch writes
names), value one of:
- bytes: a regular file with these contents, stored as an object with obsbatch's sha256 metadata;
- dict: a directory;
- ("l", target): a symlink; ("p",): a FIFO; ("b", rdev) / ("c", rdev): a device;
- ("h", group, bytes): a file of a hardlink group (the first name met is the one downloaded);
- a list: a raw entry, stored exactly as given (any shape, any name).
Every entry has mode 0644 (0755 for directories), owner 0:0 and an mtime of 2020-01-01, unless raw.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Optional, Tuple

from obsbatch import beneath, keys, snapshot
from obsbatch.models import display, undisplay

_MTIME = 1_577_836_800 * 10 ** 9


def _text(name) -> str:
    return name if isinstance(name, str) else display(name)


class Forger:
    """Builds one forged snapshot of `prefix` in `bucket` through `client` (a boto3 client)."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.pack = snapshot.PackWriter()
        self.counts = dict(files=0, bytes=0, directories=0, symlinks=0, special=0, stale=0, unstored=0)

    def _file(self, rel: bytes, data: bytes, link: str = "") -> list:
        sha = hashlib.sha256(data).hexdigest()
        # A name that leaves the target has a key S3 servers refuse ('..'): its bytes go under a name of their own.
        key = self.prefix + (keys.encode(rel) if beneath.valid_path(rel) else "forged/" + sha)
        put = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata={"sha256": sha})
        self.counts["files"] += 1
        self.counts["bytes"] += len(data)
        return ["", snapshot.FILE, 0o644, 0, 0, _MTIME, len(data), sha, put.get("VersionId", "") or "", link, 0,
                put.get("ETag", "").strip('"')]

    def tree(self, spec: dict, rel: bytes = b"") -> str:
        """Store the tree `spec` (and its subtrees) in the pack; its hash."""
        entries = []
        for name, value in spec.items():
            text = _text(name)
            child = (rel + b"/" if rel else b"") + undisplay(text)
            if isinstance(value, list):  # counted as its type says, as a genuine record would
                kind = value[1] if len(value) > 1 else snapshot.FILE
                self.counts[{snapshot.FILE: "files", snapshot.DIRECTORY: "directories",
                             snapshot.SYMLINK: "symlinks"}.get(kind, "special")] += 1
                entries.append(value)
                continue
            if isinstance(value, bytes):
                entry = self._file(child, value)
            elif isinstance(value, dict):
                entry = ["", snapshot.DIRECTORY, 0o755, 0, 0, _MTIME, 0, self.tree(value, child), "", "", 0, ""]
                self.counts["directories"] += 1
            elif value[0] == "h":
                entry = self._file(child, value[2], value[1])
            elif value[0] == "l":
                entry = ["", snapshot.SYMLINK, 0o777, 0, 0, _MTIME, 0, _text(value[1]), "", "", 0, ""]
                self.counts["symlinks"] += 1
            else:
                entry = ["", value[0], 0o644, 0, 0, _MTIME, 0, str(value[1]) if len(value) > 1 else "", "", "", 0, ""]
                self.counts["special"] += 1
            entry[snapshot.NAME] = text
            entries.append(entry)
        entries.sort(key=lambda e: undisplay(e[0]) if isinstance(e, list) and e and isinstance(e[0], str) else b"")
        data = snapshot.tree_bytes(entries)
        digest = hashlib.sha256(data).hexdigest()
        self.pack.add(digest, data)
        return digest

    def store(self, spec: dict, previous: Optional[str] = None, at: Optional[float] = None,
              counts: Optional[dict] = None, host: str = "forger") -> Tuple[str, dict]:
        """The snapshot of `spec`: pack and sealed record stored; (its id, the record). counts: override the
        record's counts (a lie about the size of the trees); host: whose run it claims to be."""
        root = self.tree(spec)
        at = time.time() if at is None else at
        snapshot_id = snapshot.new_id(at)
        handle, _, _ = self.pack.finished()
        self.client.put_object(Bucket=self.bucket, Key=snapshot.pack_key(self.prefix, snapshot_id), Body=handle.read())
        self.pack.close()
        record = snapshot.seal({
            "format": snapshot.FORMAT, "id": snapshot_id, "time": snapshot.rfc3339(at), "host": host,
            "source": "/forged", "bucket": self.bucket, "prefix": self.prefix, "root": root, "packs": [snapshot_id],
            **dict(self.counts, **(counts or {})), "exit_code": 0, "previous": previous, "obsbatch": "forged"})
        self.client.put_object(Bucket=self.bucket, Key=snapshot.record_key(self.prefix, snapshot_id),
                               Body=json.dumps(record, sort_keys=True).encode() + b"\n")
        return snapshot_id, record
