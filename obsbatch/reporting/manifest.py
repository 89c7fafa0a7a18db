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
from typing import Iterator, List, NamedTuple, Optional

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


class Verified(NamedTuple):
    """An intact manifest: its file records, its head, and the head of the run before it (None if none)."""

    files: int
    head: str
    previous_head: Optional[str]


def verify(path: str) -> Verified:
    """Check one manifest's chain: Verified, or Broken with where and why."""
    chain, files, last_type, previous = GENESIS, 0, None, None
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
            if number == 1:
                if record.get("type") != "header":
                    raise Broken("line 1 is not the header")
                previous = record.get("previous_head")
            last_type = record.get("type")
            files += last_type == "file"
    if last_type != "summary":
        raise Broken("the manifest ends before its summary line (cut short)")
    return Verified(files, chain, previous)


def verify_sequence(paths: list, expect_head: Optional[str] = None) -> List[Verified]:
    """Check several manifests of consecutive runs, oldest first: each chain intact, each header citing the
    head of the one before it, and (given `expect_head`, an anchor kept out of reach of whoever can rewrite
    the files: journald, the trace backend) the last one ending at that head.

    A chain alone proves nothing against a rewrite: whoever edits a record can recompute every link after
    it. The anchor can't be recomputed: it was written elsewhere when the run ended.
    """
    results: List[Verified] = []
    for number, path in enumerate(paths):
        try:
            result = verify(path)
        except Broken as exc:
            raise Broken(f"{path}: {exc}") from None
        if results and result.previous_head != results[-1].head:
            raise Broken(f"{path} does not follow {paths[number - 1]}: its header cites the previous head "
                         f"{result.previous_head}, but that manifest ends at {results[-1].head}")
        results.append(result)
    if expect_head is not None and results[-1].head != expect_head.lower():
        raise Broken(f"{paths[-1]} ends at {results[-1].head}, not at the expected head {expect_head}: it was "
                     "rewritten, or is not the manifest of that run")
    return results


def stored_records(path: str, prefix: str = "") -> Iterator[dict]:
    """The file records of each object the manifest says is in the store under `prefix`: uploaded, or found
    already stored (--verify-remote). Read line by line; check the chain first (verify)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("type") != "file" or not (record.get("key") or "").startswith(prefix):
                continue
            if record.get("outcome") == "uploaded" or record.get("reason") == "already_stored":
                yield record
