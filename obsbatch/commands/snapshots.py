"""`obsbatch snapshots`: the snapshots stored for a prefix, oldest first (issue #20).

One line each on stdout: id, time (UTC, RFC 3339), host, source, files, bytes, the run's exit code, head;
`--json`: one JSON array of objects with those keys. Each record is checked against its head as it is read;
one that was altered is listed with `"damaged": true` and makes the exit code 1.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import structlog

from obsbatch import logs
from obsbatch.commands import runner
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError

log = structlog.get_logger()

DESCRIPTION = ("List the snapshots stored for a prefix, oldest first: id, time, host, source, files, bytes, exit "
               "code, head. Exit 0 listed, 1 a record was altered in the store, 2 usage or access errors.")
#: The keys of each snapshot, in the order of the table's columns.
COLUMNS = ("id", "time", "host", "source", "files", "bytes", "exit_code", "head")


def main(argv: Sequence[str], started: float) -> int:
    try:
        config = runner.parse("snapshots", argv, os.environ, description=DESCRIPTION)
    except UsageError as exc:
        runner.usage_exit(str(exc), "snapshots")
    logs.configure(config.output.level, config.output.log_format)
    try:
        listed = list(_records(config))
    except ObsbatchError as exc:
        log.error("snapshots.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        raise FatalExit(exc.exit_code, str(exc)) from None
    damaged = sum(1 for one in listed if one.get("damaged"))
    if config.json:
        print(json.dumps(listed, sort_keys=True), flush=True)
    else:
        for one in listed:
            print("  ".join(str(one.get(column, "")) for column in COLUMNS) + ("  DAMAGED" if one.get("damaged") else ""))
    code = ExitCode.PARTIAL if damaged else ExitCode.OK
    report = {"snapshots": len(listed), "damaged": damaged, "seconds": round(time.time() - started, 3),
              "exit_code": int(code)}
    (log.info if code == ExitCode.OK else log.warning)("snapshots.summary", **report)
    if config.output.summary == "json":
        print(json.dumps(report, sort_keys=True), flush=True)
    return code


def _records(config):
    """Each snapshot's listed keys (COLUMNS), oldest first; a record that does not verify is named, damaged."""

    from obsbatch.s3 import client as s3, remote, snapshots
    from obsbatch.s3.endpoint import Endpoint

    client = s3.make_client(Endpoint.from_config(config), pool_connections=1)
    store = config.store
    reading = store.reading.read_params("")
    with remote.store_errors(store, f"list the snapshots under s3://{store.bucket}/{store.prefix}"):
        for snapshot_id in snapshots.ids(client, store.bucket, store.prefix):
            try:
                found = snapshots.record(client, store.bucket, store.prefix, snapshot_id, reading)
            except snapshots.SnapshotError as exc:
                log.error("snapshots.damaged", id=snapshot_id, error=str(exc))
                yield {"id": snapshot_id, "damaged": True}
                continue
            yield {column: found.get(column) for column in COLUMNS}
