"""The run manifest: one JSON line per file decision, hash-chained, closed by the summary.

Each line is a JSON object with a `chain` field: chain_i = SHA-256(chain_{i-1} bytes + the line's canonical
JSON without `chain`), starting from SHA-256 of "obsbatch-manifest-v1". The first line is a header (run id,
source, destination), the last the summary, whose chain is the head. Changing, removing, inserting or
reordering any line, or cutting the file short, is detected by `obsbatch verify-manifest FILE`.
Canonical JSON: sorted keys, no spaces, UTF-8 (json.dumps(sort_keys=True, separators=(",", ":"))).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from typing import Optional

from obsbatch.errors import ConfigError
from obsbatch.models import Outcome

GENESIS = hashlib.sha256(b"obsbatch-manifest-v1").hexdigest()


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _link(previous: str, record: dict) -> str:
    return hashlib.sha256(bytes.fromhex(previous) + _canonical(record)).hexdigest()


def _iso(ns: int) -> Optional[str]:
    if not ns:
        return None
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).isoformat()


class Manifest:
    """Writes the manifest as the run goes (a Summary observer), so memory stays flat."""

    def __init__(self, path: str, header: dict):
        self.path = path
        self.run_id = uuid.uuid4().hex
        self.chain = GENESIS
        try:
            self._file = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the manifest {path}: {exc.strerror}") from None
        self._write({"type": "header", "run_id": self.run_id, "format": "obsbatch-manifest-v1", **header})

    def _write(self, record: dict) -> None:
        self.chain = _link(self.chain, record)
        self._file.write(_canonical({**record, "chain": self.chain}).decode() + "\n")

    def record(self, outcome: Outcome) -> None:
        self._write({
            "type": "file", "path": outcome.path, "key": outcome.key or None, "size": outcome.size,
            "mtime": _iso(outcome.mtime_ns), "sha256": outcome.sha256 or None, "etag": outcome.etag or None,
            "version_id": outcome.version_id or None, "retain_until": outcome.retain_until or None, "outcome": outcome.kind.value,
            "reason": outcome.reason.value if outcome.reason else None,
            "error_type": outcome.error_type or None,
            "holder_pids": [pid for pid, _, _ in outcome.holders], "deleted": outcome.deleted})

    def close(self, summary: dict) -> str:
        """Write the summary line, flush it to disk, and return the chain head."""
        self._write({"type": "summary", **summary})
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.chain


class Broken(Exception):
    """The manifest does not verify; the message says where and why."""


def verify(path: str) -> tuple[int, str]:
    """(number of file records, chain head) of an intact manifest; Broken otherwise."""
    chain, files, last_type = GENESIS, 0, None
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                claimed = record.pop("chain")
            except (ValueError, KeyError, AttributeError):
                raise Broken(f"line {number} is not a manifest record") from None
            chain = _link(chain, record)
            if claimed != chain:
                raise Broken(f"line {number} was changed, or a line before it was added, removed or moved")
            if number == 1 and record.get("type") != "header":
                raise Broken("line 1 is not the header")
            last_type = record.get("type")
            files += last_type == "file"
    if last_type != "summary":
        raise Broken("the manifest ends before its summary line (cut short)")
    return files, chain
