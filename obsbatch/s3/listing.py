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
