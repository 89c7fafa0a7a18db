"""The one listing of a prefix (ListObjectsV2), for every command: the backup's --verify-remote, restore, verify.

botocore's paginator asks for the next page only when the one before has been consumed, so memory holds one
page (at most 1,000 keys) whatever the prefix holds. Errors are botocore's; each caller turns them into its
sentence with obsbatch.s3.remote.store_error.
"""

from __future__ import annotations

from typing import Iterator


def pages(client, bucket: str, prefix: str) -> Iterator[dict]:
    """ListObjectsV2 pages under `prefix`, in key order, one request at a time; without obsbatch's own records.

    Manifests and snapshots sit at `<prefix less '/'>.obsbatch/`, beside the data. With a prefix ending in '/'
    that is outside the listing; with an empty prefix (or one without '/') it falls inside, and is left out
    here, so no command takes a record for a backed-up file.
    """
    beside = prefix.rstrip("/") + ".obsbatch/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        if beside.startswith(prefix) and any(o["Key"].startswith(beside) for o in page.get("Contents", ())):
            page = dict(page, Contents=[o for o in page["Contents"] if not o["Key"].startswith(beside)])
        yield page


def objects(client, bucket: str, prefix: str) -> Iterator[dict]:
    """Each listed object (Key, Size, ETag, ...) under `prefix`, in key order."""
    for page in pages(client, bucket, prefix):
        yield from page.get("Contents", ())


def _ever_versioned(client, bucket: str) -> bool:
    """Whether the bucket has (or had: Suspended) versioning; True when the key may not ask, so that the
    listing of versions is tried (and proves more)."""
    import botocore.exceptions

    try:
        return bool(client.get_bucket_versioning(Bucket=bucket).get("Status"))
    except botocore.exceptions.ClientError:
        return True


class Inventory:
    """What the listing proves of a prefix: every stored version (ListObjectVersions: key, version id, size,
    ETag, whether it is the current one), one page at a time into a scratch sqlite file, not into memory.

    A listing returns 1,000 objects per request where a HEAD returns one (issue #21), and it proves as much
    as a HEAD does of an object whose version id or ETag the backup recorded:
    - a version id names bytes and metadata that never change (S3 has no call that modifies a version: new
      metadata is a new version), so a listed version with the recorded id and size is the stored object,
      the sha256 metadata it was stored with included. The "null" version is not such a name: an unversioned
      (or suspended) bucket overwrites it in place;
    - without one, the current object with the recorded size and ETag (an MD5 of the bytes, or of the parts'
      MD5s) holds the bytes that were uploaded; a HEAD proves no more, since its sha256 metadata is whatever
      the object's writer set.
    A bucket that never had versioning (GetBucketVersioning without a Status) holds one version per key, and
    ListObjectsV2 lists it for less (SeaweedFS: 0.3 s per 5,000 keys, against 1.0 s for ListObjectVersions);
    so does a store without ListObjectVersions (NotImplemented) or a key not allowed to list versions: only
    ETags prove there.
    """

    def __init__(self, client, bucket: str, prefix: str):
        from obsbatch import scratch

        self.db = scratch.database("listing")
        self.db.execute("CREATE TABLE listed (key TEXT, version TEXT, size INTEGER, etag TEXT, latest INTEGER, "
                        "PRIMARY KEY (key, version)) WITHOUT ROWID")
        self.db.execute("CREATE INDEX current ON listed (key) WHERE latest")
        try:
            if not (_ever_versioned(client, bucket) and self._load_versions(client, bucket, prefix)):
                self._load(pages(client, bucket, prefix), "Contents", prefix)
        except BaseException:
            self.db.close()
            raise

    def _load_versions(self, client, bucket: str, prefix: str) -> bool:
        """ListObjectVersions into the table; False when the store has no such call (NotImplemented) or the key
        may not use it (AccessDenied), which answer the first page."""
        import botocore.exceptions

        try:
            self._load(client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix),
                       "Versions", prefix)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "AccessDenied"):
                raise
            return False
        return True

    def _load(self, listed_pages, field: str, prefix: str) -> None:
        beside = prefix.rstrip("/") + ".obsbatch/"
        for page in listed_pages:
            rows = [(o["Key"], o.get("VersionId") or "null", o.get("Size", 0), o.get("ETag", "").strip('"'),
                     int(o.get("IsLatest", True))) for o in page.get(field, ()) if not o["Key"].startswith(beside)]
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO listed VALUES (?,?,?,?,?)", rows)

    def proves(self, key: str, size: int, etag: str = "", version_id: str = "") -> bool:
        """Whether the listing alone shows `key` stored as recorded (the class docstring says when it can)."""
        if version_id and version_id != "null":
            row = self.db.execute("SELECT size, etag FROM listed WHERE key=? AND version=?",
                                  (key, version_id)).fetchone()
        elif etag:
            row = self.db.execute("SELECT size, etag FROM listed WHERE key=? AND latest", (key,)).fetchone()
        else:
            return False
        return row is not None and row[0] == size and (not etag or row[1] == etag)

    def close(self) -> None:
        self.db.close()
