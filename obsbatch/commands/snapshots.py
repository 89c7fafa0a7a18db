"""`obsbatch snapshots`: the snapshots stored for a prefix, oldest first (issue #20); with --all, the latest
of every host and prefix in the bucket (issue #22, the fleet view).

A header, then one line each on stdout: id, time (UTC, RFC 3339), host, source, files, bytes, unstored (the
tree's files in no snapshot yet: deferred or failed on every run so far), the run's exit code, head;
`--json`: one JSON array of objects with those keys. Each record is checked against its head as it is read;
one that was altered is listed with `"damaged": true` and makes the exit code 1. With --public-key, one
without a valid signature by that key is listed `UNTRUSTED` (`"untrusted": true`), exit 1. The `previous`
links are followed along each host's records: where one does not cite the head of the record before it,
`CHAIN BROKEN` (`"chain_broken": true`, snapshots.chain_broken says what), exit 1.

--all reads the fleet markers (snapshot.fleet_key: one per host and prefix, a copy of its latest record's
summary, overwritten by each run): host, prefix, id, time, files, bytes, exit code, head. --stale DURATION
marks (`STALE`, `"stale": true`) and logs (snapshots.stale) every host and prefix whose latest snapshot is
older, and makes the exit code 1: the check a monitoring system runs.
"""

from __future__ import annotations

import json
import os
import time
from typing import List, Optional, Sequence

import structlog

from obsbatch import logs, snapshot
from obsbatch.commands import runner
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError
from obsbatch.models import display

log = structlog.get_logger()

DESCRIPTION = ("List the snapshots stored for a prefix, oldest first: id, time, host, source, files, bytes, "
               "unstored, exit code, head; or with --all the latest of every host and prefix in the bucket. Exit 0 "
               "listed, 1 none under the prefix, a record was altered in the store, is not signed by --public-key, "
               "breaks the chain of previous heads, or a snapshot is older than --stale, 2 usage or access errors.")
#: The keys of each snapshot, in the order of the table's columns.
COLUMNS = ("id", "time", "host", "source", "files", "bytes", "unstored", "exit_code", "head")
#: --all's columns: one (host, prefix) a line.
FLEET_COLUMNS = ("host", "prefix", "id", "time", "files", "bytes", "unstored", "exit_code")
#: GETs of snapshot records or fleet markers in flight at once: a thousand of them in a few dozen round trips'
#: time (a year of a 15-minute timer is 35,040 records of one prefix).
READ_THREADS = 32


def main(argv: Sequence[str], started: float) -> int:
    try:
        config = runner.parse("snapshots", argv, os.environ, description=DESCRIPTION)
    except UsageError as exc:
        runner.usage_exit(str(exc), "snapshots")
    logs.configure(config.output.level, config.output.log_format, host=config.output.host_id)
    try:
        listed, forgotten = (_fleet(config), []) if config.all else _records(config)
        partial = _check(config, listed) if config.check else 0
    except ObsbatchError as exc:
        log.error("snapshots.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        raise FatalExit(exc.exit_code, str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C: it only reads, so there is nothing to finish; the same line as restore's
        log.warning("snapshots.interrupted")
        raise FatalExit(ExitCode.INTERRUPTED, "interrupted") from None
    except Exception as exc:  # a bug: one line; the traceback only at debug level (as restore and verify)
        log.error("snapshots.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=config.output.traceback)
        raise FatalExit(ExitCode.FATAL, f"crashed: {type(exc).__name__}: {exc}") from None
    damaged = sum(1 for one in listed if one.get("damaged"))
    untrusted = sum(1 for one in listed if one.get("untrusted"))
    broken = 0 if config.all else _mark_chain(listed, forgotten)
    stale = _mark_stale(listed, config.stale, time.time(), latest_only=not config.all,
                        where=f"s3://{config.store.bucket}/{config.store.prefix}")
    columns = FLEET_COLUMNS if config.all else COLUMNS
    if config.json:
        print(json.dumps([{key: value for key, value in one.items() if key != "record"} for one in listed],
                         sort_keys=True), flush=True)
    elif listed:
        print("  ".join(column.upper() for column in columns))
        for one in listed:
            print("  ".join(str(one.get(column, "")) for column in columns)
                  + "".join(f"  {mark}" for key, mark in _MARKS if one.get(key))
                  + (f"  PARTIAL: {one['missing']} files' versions gone" if one.get("missing") else ""))
    if not listed and not config.all and config.stale is None:
        # Most often a mistyped --prefix: said, and exit 1, as a restore of an empty listing is.
        log.warning("snapshots.none", where=f"s3://{config.store.bucket}/{config.store.prefix}",
                    detail="no snapshot under this prefix (check --bucket and --prefix); exit 1")
    code = (ExitCode.PARTIAL if damaged or stale or untrusted or broken or partial or not (listed or config.all)
            else ExitCode.OK)
    report = {"snapshots": len(listed), "damaged": damaged, "seconds": round(time.time() - started, 3),
              "exit_code": int(code)}
    if config.public_key:
        report["untrusted"] = untrusted
    if not config.all:
        report["chain_broken"] = broken
    if config.stale is not None:
        report["stale"] = stale
    if config.check:
        report["partial"] = partial
    (log.info if code == ExitCode.OK else log.warning)("snapshots.summary", **report)
    if config.output.summary == "json":
        print(json.dumps(report, sort_keys=True), flush=True)
    return code


#: What a line of the table says of a snapshot, after its columns, by the key its dict has.
_MARKS = (("damaged", "DAMAGED"), ("untrusted", "UNTRUSTED"), ("chain_broken", "CHAIN BROKEN"), ("stale", "STALE"))


def _mark_chain(listed: List[dict], forgotten: List[dict]) -> int:
    """Mark (`"chain_broken": true`) and log each record whose `previous` is not the head of its host's record
    before it (s3.snapshots.chain_breaks); how many. Damaged and untrusted records are not links (they are
    named already): a forged record in between must not make the genuine one after it look broken. The
    tombstones `forget` leaves are links too (never listed): a forgotten snapshot is a gap the chain crosses."""
    from obsbatch.s3 import snapshots

    broken = 0
    links = [one for one in listed if not (one.get("damaged") or one.get("untrusted"))]
    present = {one.get("id") for one in listed}
    links = sorted(links + [one for one in forgotten if one["id"] not in present], key=lambda one: str(one["id"]))
    for one, why in snapshots.chain_breaks(links):
        if one.get("forgotten"):
            continue  # a tombstone is not listed; the record after it is what is named
        one["chain_broken"] = True
        broken += 1
        log.warning("snapshots.chain_broken", id=one.get("id"), snapshot_host=one.get("host"), error=why)
    return broken


def _mark_stale(listed: List[dict], older_than: Optional[float], now: float, latest_only: bool, where: str) -> int:
    """--stale: mark each listed snapshot that is the latest of its (host, prefix) and older than `older_than`
    seconds (`"stale": true`), log each (snapshots.stale); how many. latest_only: `listed` is one prefix's
    snapshots, oldest first, and only the last is its latest; a prefix with none at all is stale too."""
    from obsbatch import snapshot

    if older_than is None:
        return 0
    if latest_only and not listed:
        log.warning("snapshots.stale", where=where, latest=None, detail="no snapshot at all")
        return 1
    stale = 0
    for one in listed[-1:] if latest_only else listed:
        try:
            age = now - snapshot.parse_time(str(one.get("time")))
        except ValueError:  # a damaged record or marker has no time to trust: it is no proof of a recent run
            age = float("inf")
        if age > older_than:
            one["stale"] = True
            stale += 1
            log.warning("snapshots.stale", snapshot_host=one.get("host"), prefix=one.get("prefix"),
                        latest=one.get("time"), age_s=None if age == float("inf") else round(age),
                        older_than_s=round(older_than))
    return stale


def _fleet(config) -> List[dict]:
    """--all: every (host, prefix)'s latest snapshot, from the fleet markers (s3.snapshots.fleet)."""
    from obsbatch.s3 import remote, snapshots

    store = config.store
    with remote.store_errors(store, f"list the fleet markers in s3://{store.bucket}/"):
        return snapshots.fleet(_client(config), store.bucket, READ_THREADS, store.prefix)


def _check(config, listed: List[dict]) -> int:
    """--check: mark each snapshot `"whole": true`, or `"whole": false, "missing": N` when N of its files'
    recorded versions are gone from the store (expired by a lifecycle rule, deleted by hand), from one version
    listing of the prefix and the snapshots' trees (no data read); log each partial one (snapshots.partial,
    naming up to ten of its files). With --all, the latest snapshot of each host and prefix, one listing per
    prefix. How many are partial."""
    from obsbatch.s3 import remote, snapshots

    store = config.store
    client = _client(config)
    if not config.all:
        records = [one.pop("record") for one in listed if "record" in one]
        return _check_prefix(client, store, store.prefix, records, listed) if records else 0
    partial = 0
    for prefix in sorted({str(one.get("prefix")) for one in listed if not one.get("damaged")}):
        shown = [one for one in listed if one.get("prefix") == prefix and not one.get("damaged")]
        records = []
        for one in shown:
            try:
                with remote.store_errors(store, f"read the latest snapshot of s3://{store.bucket}/{prefix}"):
                    records.append(snapshots.record(client, store.bucket, prefix, str(one.get("id")),
                                                    store.reading.read_params("")))
            except snapshots.SnapshotError as exc:  # a marker naming a record that is gone or altered
                log.error("snapshots.damaged", snapshot_host=one.get("host"), prefix=prefix, error=str(exc))
                one["damaged"] = True
        if records:
            partial += _check_prefix(client, store, prefix, records, shown)
    return partial


def _check_prefix(client, store, prefix: str, records: List[dict], listed: List[dict]) -> int:
    """_check of `records`, all of `prefix`, marking their lines in `listed` (by id)."""
    from obsbatch.s3 import history, listing, remote, snapshots

    with remote.store_errors(store, f"list the versions under s3://{store.bucket}/{prefix}"):
        stored = listing.Inventory(client, store.bucket, prefix)
        loaded = snapshots.trees_of(client, store.bucket, prefix, records, store.reading.read_params(""))
    by_id = {one["id"]: one for one in listed}
    partial, memo = 0, {}

    def present(key: str, entry: list) -> bool:
        return stored.proves(key, entry[snapshot.SIZE], snapshot.etag(entry), entry[snapshot.VERSION])

    try:
        for record in records:
            try:
                gone = history.missing(loaded, record, prefix, present, memo,
                                       snapshots.Budget(snapshots.entry_budget(record)))
            except snapshots.SnapshotDamaged as exc:
                log.error("snapshots.damaged", id=record["id"], error=str(exc))
                by_id[record["id"]]["damaged"] = True
                continue
            shown = by_id[record["id"]]
            shown["whole"] = not gone
            if gone:
                partial += 1
                shown["missing"] = len(gone)
                log.warning("snapshots.partial", id=record["id"], prefix=prefix, missing=len(gone),
                            files=[display(rel) for rel in gone[:10]],
                            detail="these files' recorded versions are gone from the store: the snapshot no longer "
                                   "restores whole")
    finally:
        stored.close()
        loaded.close()
    return partial


def _records(config) -> tuple:
    """(each snapshot's listed keys (COLUMNS), oldest first; the links of forgotten ones (s3.retention
    tombstones)); a record that does not verify is named, damaged.
    The records are read READ_THREADS at once: one after another, a year of a 15-minute timer's records took a
    quarter of an hour at a 20 ms round trip."""
    import functools

    from obsbatch import signing
    from obsbatch.s3 import remote, retention, snapshots

    client = _client(config)
    store = config.store
    public_key = signing.load_public_key(config.public_key) if config.public_key else None
    read_one = functools.partial(_record, client, store, store.reading.read_params(""), public_key, config.check)
    with remote.store_errors(store, f"list the snapshots under s3://{store.bucket}/{store.prefix}"):
        listed_ids = list(snapshots.ids(client, store.bucket, store.prefix))
        forgotten = list(retention.tombstones(client, store.bucket, store.prefix))
        if public_key is not None:  # an unsigned gap is no link: the record after it is CHAIN BROKEN
            problems = snapshots.read_all(
                lambda one: retention.tombstone_problem(client, store.bucket, one, public_key), forgotten,
                READ_THREADS)
            for one, why in zip(forgotten, problems):
                if why is not None:
                    log.error("snapshots.untrusted_tombstone", id=one["id"], snapshot_host=one["host"], error=why,
                              detail="not signed by --public-key: the gap it claims is not trusted")
            forgotten = [one for one, why in zip(forgotten, problems) if why is None]
        # In the listing's order: oldest first.
        return snapshots.read_all(read_one, listed_ids, READ_THREADS), forgotten


def _client(config):
    """A client with a connection for each of the READ_THREADS reads at once."""
    from obsbatch.s3 import client as s3
    from obsbatch.s3.endpoint import Endpoint

    return s3.make_client(Endpoint.from_config(config), pool_connections=READ_THREADS)


def _record(client, store, reading: dict, public_key, keep_record: bool, snapshot_id: str) -> dict:
    """One snapshot's COLUMNS and its `previous` head, or {"id", "damaged": True} (logged) for a record that does
    not verify; with `public_key`, `"untrusted": True` (logged) for one it did not sign."""
    from obsbatch.s3 import snapshots

    try:
        found = snapshots.record(client, store.bucket, store.prefix, snapshot_id, reading)
    except snapshots.SnapshotError as exc:
        log.error("snapshots.damaged", id=snapshot_id, error=str(exc))
        return {"id": snapshot_id, "damaged": True}
    listed = {column: found.get(column) for column in COLUMNS + ("previous",)}
    if keep_record:  # --check walks its trees (_check takes it out again)
        listed["record"] = found
    if public_key is not None:
        why = snapshots.signature_problem(client, store.bucket, store.prefix, found, public_key, reading)
        if why is not None:
            log.error("snapshots.untrusted", id=snapshot_id, error=why,
                      detail="not signed by --public-key: never chosen as the latest, never restored from")
            listed["untrusted"] = True
    return listed
