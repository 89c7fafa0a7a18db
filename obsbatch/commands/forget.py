"""`obsbatch forget`: keep this host's snapshots a policy names, forget the rest, and with --prune delete the
object versions no remaining snapshot needs (s3.retention says how, and what is never deleted).

It works on the snapshots of --host-id (default: this host), as every flag of that name means "this host":
a host never forgets another's history by accident; a fleet's admin gives each host's name in turn. --prune
works on the whole prefix, for every host: a version is deleted only when no remaining snapshot of any host
names it.

Prints one line per snapshot of the host, newest first: `keep` or `forget`, id, time, and the rules that keep
it; with --dry-run nothing is changed and a prune prints each version it would delete. Then the totals.
Exit 0 done; 1 a record or version the store would not delete for another reason than Object Lock, a damaged
record (a prune then refuses: it could not know what that snapshot needs), an untrusted one named; 2 usage
or access; 130 interrupted (what was deleted stays deleted; nothing is half done: each snapshot's tombstone
is written before its record is removed, and each version is deleted whole or not at all).
"""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import structlog

from obsbatch import snapshot
from obsbatch.commands import history
from obsbatch.errors import ExitCode, ObsbatchError
from obsbatch.models import printable

log = structlog.get_logger()

DESCRIPTION = ("Forget this host's snapshots that a policy does not keep (restic's --keep-* rules; the newest is "
               "always kept) and with --prune delete the object versions no remaining snapshot needs. Exit 0 "
               "done, 1 something could not be deleted (not Object Lock) or a record is damaged, 2 usage or access.")


class PruneRefused(ObsbatchError):
    """A prune that cannot know every version the remaining snapshots need: nothing is deleted, exit 1."""

    exit_code = ExitCode.PARTIAL


def main(argv: Sequence[str], started: float) -> int:
    return history.main("forget", argv, started, DESCRIPTION, _forget)


def _forget(config, reader: history.History) -> dict:
    from obsbatch.s3 import retention

    sealed, damaged = _read(reader)
    host = config.output.host_id
    mine = [one for one in sealed if one.get("host") == host and _trusted(reader, one)]
    policy = retention.Policy(*config.keep_counts, config.keep_within)
    tagged = {}
    if config.keep_tag:
        with reader.errors(f"list the snapshots' tags under {reader.store.location}"):
            tagged = retention.tags(reader.client, reader.store.bucket, reader.store.prefix)
    if policy.empty and not config.keep_tag:  # --prune alone: every snapshot stays
        decided = [retention.Decision(one, True, ("no policy",))
                   for one in sorted(mine, key=lambda one: one["id"], reverse=True)]
    else:
        decided = retention.decide(mine, policy, tagged, config.keep_tag)
    dry = config.forget_dry_run
    report = {"host": host, "snapshots": len(mine), "kept": 0, "forgotten": 0, "records_locked": 0, "failed": 0,
              "dry_run": dry}
    staying = {one["id"] for one in sealed}
    for decision in decided:
        record = decision.record
        word = "keep" if decision.keep else "forget"
        report["kept" if decision.keep else "forgotten"] += 1
        _say(config, {"action": word, "id": record["id"], "time": record.get("time"), "host": record.get("host"),
                      "reasons": list(decision.reasons)},
             f"{word:<6}  {record['id']}  {record.get('time')}  {', '.join(decision.reasons)}")
        if decision.keep:
            continue
        staying.discard(record["id"])
        if dry:
            continue
        with reader.errors(f"forget the snapshot {record['id']}"):
            refused = retention.forget(reader.client, reader.store.bucket, reader.store.prefix, record,
                                       config.signing_key)
        for error in refused:
            staying.add(record["id"])  # its record is still there: a prune must still keep what it names
            report["records_locked" if retention.locked(error) else "failed"] += 1
            (log.warning if retention.locked(error) else log.error)(
                "forget.not_deleted", id=record["id"], key=error.get("Key"), version_id=error.get("VersionId"),
                code=error.get("Code"), error=error.get("Message"))
        if not refused:
            log.info("forget.forgotten", id=record["id"], time=record.get("time"), snapshot_host=record.get("host"))
    if config.prune:
        remaining = [one for one in sealed if one["id"] in staying]
        report.update(_prune(config, reader, remaining, damaged))
    return report


def _read(reader: history.History):
    """(every record that is sealed, the ids of those that are not): checked against their heads only, so a
    prune sees every record that names versions, signed or not."""
    from obsbatch.s3 import snapshots

    damaged: List[str] = []

    def read(snapshot_id: str) -> Optional[dict]:
        try:
            return snapshots.record(reader.client, reader.store.bucket, reader.store.prefix, snapshot_id,
                                    reader.store.reading.read_params(""))
        except snapshots.SnapshotDamaged as exc:
            log.error("forget.damaged_snapshot", id=snapshot_id, error=str(exc),
                      detail="never forgotten here; a prune refuses while it is there (remove it by hand)")
            damaged.append(snapshot_id)
            reader.damaged += 1
            return None

    with reader.errors(f"read the snapshots under {reader.store.location}"):
        listed = list(snapshots.ids(reader.client, reader.store.bucket, reader.store.prefix))
        found = snapshots.read_all(read, listed, history.READ_THREADS)
    return [one for one in found if one is not None], damaged


def _trusted(reader: history.History, record: dict) -> bool:
    """With --public-key, whether the record is signed by it: an unsigned one takes no part in the policy
    (a forged newer record must not push genuine ones out of --keep-last), and is named."""
    from obsbatch.s3 import snapshots

    if reader.public_key is None:
        return True
    with reader.errors(f"read the signature of {record['id']}"):
        why = snapshots.signature_problem(reader.client, reader.store.bucket, reader.store.prefix, record,
                                          reader.public_key, reader.store.reading.read_params(""))
    if why is not None:
        log.error("forget.untrusted_snapshot", id=record["id"], error=why,
                  detail="not signed by --public-key: neither kept by the policy nor forgotten")
        reader.damaged += 1
    return why is None


def _prune(config, reader: history.History, remaining: List[dict], damaged: List[str]) -> dict:
    from obsbatch.s3 import retention, snapshots

    if damaged:
        raise PruneRefused(f"the prune is refused: the snapshot record(s) {', '.join(damaged[:5])} cannot be read, "
                           "so the versions they need are unknown; nothing was deleted")
    if not remaining:
        # Nothing would name any object: every version under the prefix would go (data another tool wrote, or
        # obsbatch before it kept snapshots). Never on a guess.
        raise PruneRefused(f"the prune is refused: no snapshot under {reader.store.location} names any object, so "
                           "it would delete everything there; nothing was deleted")
    store, client = reader.store, reader.client
    started = time.time()
    loaded = reader.trees(remaining)
    referenced = retention.Referenced()
    try:
        for record in remaining:
            referenced.add_snapshot(loaded, record, store.prefix)
        kept_packs = {pack for one in remaining for pack in one.get("packs", [])}
        latest_by_host: dict = {}
        for one in remaining:
            moment = snapshot.parse_time(str(one["time"]))
            latest_by_host[one["host"]] = max(moment, latest_by_host.get(one["host"], moment))
        now = time.time()
        span = retention.Span(grace_start=now - config.prune_grace,
                              latest=min(latest_by_host.values()) if latest_by_host else now)
        with reader.errors(f"list the fleet markers of s3://{store.bucket}/"):
            foreign = [other for other in snapshots.fleet_prefixes(client, store.bucket)
                       if other != store.prefix and other.startswith(store.prefix)]
        verdicts = retention.Verdicts()
        dry = config.forget_dry_run
        with reader.errors(f"prune s3://{store.bucket}/{store.prefix}"):
            retention.prune(client, store.bucket, store.prefix, referenced, kept_packs, span, foreign, dry,
                            verdicts, lambda word, one: _told(config, word, one, dry))
    finally:
        referenced.close()
    counted = verdicts.as_dict()
    line = (f"prune: {counted['versions_deleted']} versions ({counted['bytes_deleted']} bytes) "
            f"{'would be ' if dry else ''}deleted; kept {counted['versions_referenced']} a snapshot names, "
            f"{counted['versions_young']} younger than --prune-grace, {counted['versions_after_latest']} newer than a "
            f"host's latest snapshot, {counted['versions_foreign']} of nested prefixes; {counted['versions_locked']} "
            f"under Object Lock, {counted['versions_failed']} failed")
    _say(config, {"prune": counted}, line)
    return {"remaining_snapshots": len(remaining), "referenced_files": referenced.files,
            "prune_seconds": round(time.time() - started, 3), **counted,
            "failed": counted["versions_failed"]}


def _told(config, word: str, one: dict, dry: bool) -> None:
    """One version's verdict: a line of its own in a dry run (what would be deleted), the log otherwise."""
    key, version = one.get("Key", ""), one.get("VersionId") or "null"
    if dry and word == "deleted":
        _say(config, {"would_delete": key, "version_id": version},
             f"would delete  {printable(key.encode('utf-8', 'surrogateescape'))}  {version}")
    elif word == "deleted":
        log.debug("prune.deleted", key=key, version_id=version)
    else:
        (log.warning if word == "locked" else log.error)(f"prune.{word}", key=key, version_id=version,
                                                          code=one.get("Code"), error=one.get("Message"))


def _say(config, found: dict, line: str) -> None:
    if config.json:
        history.emit_json(found)
    else:
        history.emit(line)
