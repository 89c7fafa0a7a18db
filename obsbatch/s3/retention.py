"""Keeping and pruning snapshots (`obsbatch forget [--prune]`): which records a policy keeps, forgetting the
others, and deleting the object versions no remaining snapshot needs.

**The policy** is restic's (`restic forget`), applied to one host's snapshots, newest first: `--keep-last N`
keeps the N newest; `--keep-hourly/daily/weekly/monthly/yearly N` keep, for each of the last N hours (days,
ISO weeks, months, years) that have a snapshot, the newest snapshot of it; `--keep-within D` keeps every
snapshot taken within D of the host's newest. A snapshot any rule keeps is kept; the host's newest is always
kept. Periods are counted in UTC (a fleet's hosts agree on them whatever their time zones).

**Forgetting** a snapshot removes its record and signature (every version of both keys), after leaving a
tombstone, `<area>forgotten/<host>/<id>.<head>.<previous>`: an empty object whose name carries the chain
links, so that `snapshots` still checks each host's chain of heads across the gap (a record removed without
a tombstone is CHAIN BROKEN, as before). Nothing of the data is touched.

**Pruning** deletes, under the prefix, every object version that no remaining snapshot (of any host) names,
and every pack no remaining record names, except:
- a version younger than the grace period (`--prune-grace`, default 24 h), and one created after the
  *oldest* of the hosts' latest snapshots: a backup running now uploads before it writes its record, and its
  versions are newer than its host's latest snapshot, so they are never taken for orphans;
- a version the store refuses to delete (Object Lock retention or legal hold: `prune.locked`, named and
  counted, not an error);
- anything when a record cannot be read whole (a damaged record or pack could name versions no one can
  see): prune refuses, exit 1.
The names the remaining snapshots hold are gathered into a scratch sqlite table (one row per (key, version)
of a distinct (directory, tree) pair: a tree shared by a hundred snapshots is walked once), so memory does not
grow with the tree; ListObjectVersions is read a page (1,000) at a time and DeleteObjects sent in batches of
1,000.
"""

from __future__ import annotations

import datetime
import hashlib
import base64
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from obsbatch import keys, snapshot
from obsbatch.s3 import snapshots

#: The rules with periods, in restic's order: (flag's field, what a snapshot's period is, reason's word).
_PERIODS = (("hourly", "%Y-%m-%d %H", "hourly"), ("daily", "%Y-%m-%d", "daily"), ("weekly", "%G-W%V", "weekly"),
            ("monthly", "%Y-%m", "monthly"), ("yearly", "%Y", "yearly"))


class Policy(NamedTuple):
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Optional[float] = None

    @property
    def empty(self) -> bool:
        return not any(self[:6]) and self.within is None


class Decision(NamedTuple):
    record: dict
    keep: bool
    reasons: Tuple[str, ...]


def decide(records: List[dict], policy: Policy, tagged: Optional[Dict[str, List[str]]] = None,
           keep_tags: Tuple[str, ...] = ()) -> List[Decision]:
    """Each of one host's records (any order) kept or not, with why; newest first. `tagged` ({id: [tags]}):
    a snapshot with one of `keep_tags` is kept."""
    timed = sorted(((snapshot.parse_time(str(one["time"])), one) for one in records), key=lambda pair: pair[1]["id"],
                   reverse=True)
    if not timed:
        return []
    newest = timed[0][0]
    left = {name: getattr(policy, name) for name, _, _ in _PERIODS}
    last_period: Dict[str, Optional[str]] = {name: None for name, _, _ in _PERIODS}
    decided = []
    for index, (moment, record) in enumerate(timed):
        reasons = []
        if index == 0:
            reasons.append("latest")
        if index < policy.last:
            reasons.append("last")
        when = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
        for name, form, word in _PERIODS:
            period = when.strftime(form)
            if left[name] > 0 and period != last_period[name]:
                last_period[name] = period
                left[name] -= 1
                reasons.append(f"{word} {period}")
        if policy.within is not None and newest - moment <= policy.within:
            reasons.append("within")
        reasons += [f"tag {tag}" for tag in (tagged or {}).get(record["id"], ()) if tag in keep_tags]
        decided.append(Decision(record, bool(reasons), tuple(reasons)))
    return decided


# --- tags ------------------------------------------------------------------------------------------------

def tag_area(prefix: str) -> str:
    return f"{snapshot.area(prefix)}tags/"


def tag_key(prefix: str, snapshot_id: str, tag: str) -> str:
    """A tag is an empty object `<area>tags/<id>/<tag>`: beside the record, not in it, since the record is
    sealed (and signed) when it is written. Whoever can write the bucket can add or remove one: a tag keeps a
    snapshot from `forget`, it is no lock (an S3 Object Lock legal hold is)."""
    return f"{tag_area(prefix)}{snapshot_id}/{tag}"


def tags(client, bucket: str, prefix: str) -> Dict[str, List[str]]:
    """{snapshot id: [tags]} of every tagged snapshot of the prefix: one listing request per 1,000 tags."""
    found: Dict[str, List[str]] = {}
    area = tag_area(prefix)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=area):
        for obj in page.get("Contents", ()):
            snapshot_id, _, tag = obj["Key"][len(area):].partition("/")
            if snapshot.valid_id(snapshot_id) and tag and "/" not in tag:
                found.setdefault(snapshot_id, []).append(tag)
    return found


def set_tags(client, bucket: str, prefix: str, snapshot_id: str, add: tuple, remove: tuple) -> None:
    """Add and remove a snapshot's tags (every version of a removed one: on a versioned bucket a plain DELETE
    only hides it behind a delete marker, which the listing skips, but the version would stay billed)."""
    empty_md5 = base64.b64encode(hashlib.md5(b"").digest()).decode()
    for tag in add:
        client.put_object(Bucket=bucket, Key=tag_key(prefix, snapshot_id, tag), Body=b"", ContentMD5=empty_md5)
    doomed = [one for tag in remove for one in _versions(client, bucket, tag_key(prefix, snapshot_id, tag))
              if one["Key"] == tag_key(prefix, snapshot_id, tag)]
    refused = delete(client, bucket, doomed)
    if refused:
        raise TagRefused(", ".join(f"{one.get('Key')}: {one.get('Code')}" for one in refused))


class TagRefused(Exception):
    """The store refused to delete a tag (Object Lock on the bucket's defaults)."""


# --- tombstones -------------------------------------------------------------------------------------------

def tombstone_area(prefix: str) -> str:
    return f"{snapshot.area(prefix)}forgotten/"


def tombstone_key(prefix: str, record: dict) -> str:
    """Where a forgotten record's links are kept: its host, id, head and the head it cited, all in the name."""
    return (f"{tombstone_area(prefix)}{record['host']}/{record['id']}.{record['head']}."
            f"{record.get('previous') or 'none'}")


def tombstones(client, bucket: str, prefix: str) -> Iterator[dict]:
    """The links of every forgotten record ({"id", "host", "head", "previous", "forgotten": True}), from one
    listing request per 1,000; a name that is not a tombstone's is passed over."""
    area = tombstone_area(prefix)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=area):
        for obj in page.get("Contents", ()):
            host, _, name = obj["Key"][len(area):].partition("/")
            parts = name.split(".")
            if len(parts) != 4:
                continue
            snapshot_id = ".".join(parts[:2])
            head, previous = parts[2], parts[3]
            if snapshot.valid_id(snapshot_id) and len(head) == 64:
                yield {"id": snapshot_id, "host": host, "head": head,
                       "previous": None if previous == "none" else previous, "forgotten": True, "key": obj["Key"]}


def tombstone_problem(client, bucket: str, found: dict, public_key) -> Optional[str]:
    """Why a tombstone (from `tombstones`) holds no valid signature of its links by `public_key`, or None."""
    from obsbatch import signing

    try:
        body = snapshots.bounded(client.get_object(Bucket=bucket, Key=found["key"]), snapshots.SMALL_LIMIT)
    except snapshots.TooLarge as exc:
        return f"its signature is {exc}"
    if not body:
        return "it is not signed"
    return signing.checked(body, tombstone_text(found), public_key)


def tombstone_text(found: dict) -> str:
    """What a tombstone's signature signs (signing.signature): the links its name carries."""
    return f"forgotten:{found['host']}:{found['id']}:{found['head']}:{found.get('previous') or 'none'}"


def forget(client, bucket: str, prefix: str, record: dict, signing_key: Optional[str] = None) -> List[dict]:
    """Leave the record's tombstone, then delete every version of its record and signature keys, and its tags.
    The versions the store would not delete (an Object Lock): [{"Key", "VersionId", "Code", "Message"}]."""
    from obsbatch import signing

    import json

    # With a signing key the tombstone holds the signature of its links (snapshots --public-key checks it).
    body = b"" if not signing_key else json.dumps(signing.signature(tombstone_text(record), signing_key),
                                                  sort_keys=True).encode()
    client.put_object(Bucket=bucket, Key=tombstone_key(prefix, record), Body=body,
                      ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())
    key = snapshot.record_key(prefix, record["id"])
    doomed = [one for one in _versions(client, bucket, key) if one["Key"] in (key, key + signing.SUFFIX)]
    doomed += list(_versions(client, bucket, f"{tag_area(prefix)}{record['id']}/"))
    return delete(client, bucket, doomed)


def versions(client, bucket: str, prefix: str) -> Iterator[dict]:
    """Every version under `prefix` as ListObjectVersions gives it (Key, VersionId, Size, LastModified,
    IsLatest), and every delete marker with "DeleteMarker": True; on a store without ListObjectVersions
    (NotImplemented), every object as the current one with VersionId None. The one listing of versions that
    forget, prune, tag and stats read."""
    import botocore.exceptions

    try:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Versions", [])
            for marker in page.get("DeleteMarkers", []):
                yield dict(marker, DeleteMarker=True)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NotImplemented":
            raise
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for one in page.get("Contents", ()):
                yield dict(one, VersionId=None, IsLatest=True)


def _versions(client, bucket: str, prefix: str) -> Iterator[dict]:
    """{"Key", "VersionId"} of every version and delete marker under `prefix` (what DeleteObjects takes)."""
    for one in versions(client, bucket, prefix):
        yield {"Key": one["Key"], "VersionId": one.get("VersionId")}


#: DeleteObjects takes at most 1,000 keys a request (S3's limit).
BATCH = 1000


def delete(client, bucket: str, doomed: List[dict]) -> List[dict]:
    """DeleteObjects of {"Key", "VersionId"} (VersionId None: the key's only object), 1,000 a request;
    the ones the store refused, with its Code and Message."""
    refused = []
    for start in range(0, len(doomed), BATCH):
        # "null" is the version of an object stored before versioning was on, and must be named to be deleted
        # (without a VersionId, a versioned bucket would only add a delete marker); None: a listing without
        # versions, where the key's one object is what is deleted.
        objects = [{"Key": one["Key"], **({"VersionId": one["VersionId"]} if one.get("VersionId") else {})}
                   for one in doomed[start:start + BATCH]]
        answer = client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        refused += answer.get("Errors", [])
    return refused


# --- prune ------------------------------------------------------------------------------------------------

def locked(error: dict) -> bool:
    """Whether a refused delete is the store keeping a version under Object Lock (retention or legal hold):
    AWS answers AccessDenied for it, as SeaweedFS and moto do."""
    return error.get("Code") in ("AccessDenied", "ObjectLocked", "InvalidRequest") or "lock" in str(
        error.get("Message", "")).lower() or "retention" in str(error.get("Message", "")).lower()


class Referenced:
    """The (key, version) of every file the remaining snapshots hold, in a scratch sqlite table."""

    def __init__(self):
        from obsbatch import scratch

        self.db = scratch.database("prune")
        self.db.execute("CREATE TABLE refs (key TEXT, version TEXT, PRIMARY KEY (key, version)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE walked (dir BLOB, tree TEXT, format INTEGER, PRIMARY KEY (dir, tree, format)) "
                        "WITHOUT ROWID")
        self.files = 0

    def add_snapshot(self, loaded: snapshot.Trees, record: dict, prefix: str) -> None:
        """Every file of the snapshot; a (directory, tree) pair already walked for another is not walked again
        (its files have the same keys and versions). SnapshotDamaged for an entry that fails its check: a
        prune must know every version a snapshot names."""
        encode = keys.encoder(record)
        key_format = 1 if encode is keys.encode_v1 else 2
        budget = snapshots.Budget(snapshots.entry_budget(record))
        stack = [(b"", record["root"])]
        while stack:
            rel_dir, digest = stack.pop()
            with self.db:
                if self.db.execute("INSERT OR IGNORE INTO walked VALUES (?,?,?)",
                                   (rel_dir, digest, key_format)).rowcount == 0:
                    continue
                found = snapshots.entries(loaded, digest, rel_dir)
                budget.spend(len(found))
                rows = []
                for entry in found:
                    rel = rel_dir + b"/" + entry[snapshot.NAME] if rel_dir else entry[snapshot.NAME]
                    if entry[snapshot.TYPE] == snapshot.DIRECTORY:
                        stack.append((rel, entry[snapshot.CONTENT]))
                    elif entry[snapshot.TYPE] == snapshot.FILE:
                        rows.append((prefix + encode(rel), entry[snapshot.VERSION]))
                self.files += len(rows)
                self.db.executemany("INSERT OR IGNORE INTO refs VALUES (?,?)", rows)

    def holds(self, key: str, version: Optional[str]) -> bool:
        """Whether a remaining snapshot names this version of `key`. An entry recorded without a version (a
        bucket without versioning then) names whatever the key holds: every version of it is kept. A version
        not known (None: a store without ListObjectVersions lists only current objects, whose version it does
        not say) is held when any snapshot names the key: it may be the very version one records."""
        if version is None:
            return self.db.execute("SELECT 1 FROM refs WHERE key=? LIMIT 1", (key,)).fetchone() is not None
        return self.db.execute("SELECT 1 FROM refs WHERE key=? AND version IN (?, '')",
                               (key, version)).fetchone() is not None

    def close(self) -> None:
        self.db.close()


class Verdicts:
    """What a prune found, by verdict: counts and bytes."""

    WORDS = ("deleted", "referenced", "young", "after_latest", "foreign", "locked", "failed")

    def __init__(self):
        self.count = {word: 0 for word in self.WORDS}
        self.bytes = {word: 0 for word in self.WORDS}

    def add(self, word: str, size: int) -> None:
        self.count[word] += 1
        self.bytes[word] += size

    def as_dict(self) -> dict:
        return {**{f"versions_{word}": count for word, count in self.count.items()},
                **{f"bytes_{word}": size for word, size in self.bytes.items()}}


class Span(NamedTuple):
    """Which versions a prune may delete by their age: those created at or before both times."""

    grace_start: float  # now less --prune-grace
    latest: float  # the oldest of the hosts' latest snapshots: a backup after it may be running now


def prune(client, bucket: str, prefix: str, referenced: Referenced, kept_packs: set, span: Span,
          foreign: List[str], dry_run: bool, verdicts: Verdicts, told: Callable[[str, dict], None]) -> None:
    """Delete every version under `prefix` (the data) and under its snapshot area's packs/ that the remaining
    snapshots do not need and that `span` allows; told(verdict, version) hears of each version deleted (or,
    dry_run, to be), locked or failed. `foreign`: other prefixes nested under this one (their fleet markers
    name them): never touched, nor the area of any prefix found inside (a name segment ending in .obsbatch,
    which no key of this prefix has: keys.encode escapes it)."""
    doomed: List[Tuple[dict, int]] = []
    nested = sorted(foreign)

    def flush() -> None:
        refused = {} if dry_run else {(error.get("Key"), error.get("VersionId")): error
                                      for error in delete(client, bucket, [one for one, _ in doomed])}
        for one, size in doomed:
            error = refused.get((one["Key"], one.get("VersionId"))) or refused.get((one["Key"], None))
            if error is None:
                verdicts.add("deleted", size)
                told("deleted", one)
                continue
            word = "locked" if locked(error) else "failed"
            verdicts.add(word, size)
            told(word, dict(one, Code=error.get("Code"), Message=error.get("Message")))
        doomed.clear()

    packs_area = snapshot.area(prefix) + "packs/"
    for area, needed in ((prefix, referenced.holds),
                         (packs_area, lambda key, version: key[len(packs_area):] in kept_packs)):
        for version in versions(client, bucket, area):
            if version.get("DeleteMarker"):
                continue
            key, version_id, size = version["Key"], version.get("VersionId"), version.get("Size", 0)
            modified = version["LastModified"].timestamp()
            owner = _nested_owner(key, area) if area == prefix else None
            if owner is not None and owner not in nested:
                nested.append(owner)
            if owner is not None or (area == prefix and any(key.startswith(other) for other in nested)):
                verdicts.add("foreign", size)
            elif needed(key, version_id):
                verdicts.add("referenced", size)
            elif modified > span.grace_start:
                verdicts.add("young", size)
            elif modified > span.latest:
                verdicts.add("after_latest", size)
            else:
                doomed.append(({"Key": key, "VersionId": version_id}, size))
                if len(doomed) >= BATCH:
                    flush()
        flush()


def _nested_owner(key: str, prefix: str) -> Optional[str]:
    """The prefix whose area a key lies in (`p/sub.obsbatch/...` -> `p/sub/`), when one is nested under `prefix`."""
    parts = key[len(prefix):].split("/")
    for index, part in enumerate(parts[:-1]):
        if part.endswith(".obsbatch"):
            return prefix + "/".join(parts[:index] + [part[:-len(".obsbatch")]]) + "/"
    return None
