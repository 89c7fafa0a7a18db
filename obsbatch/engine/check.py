"""In a worker: one stored object against what it must be (`obsbatch verify`), the mirror of download.py.

A HEAD of the object (its version, with the SSE-C key if any) says whether it is there with the size, ETag,
sha256 metadata, version and retain-until it must have; for the --read-data sample, a GET reads its bytes in
full and their SHA-256 is recomputed as they stream. What it finds is returned as Outcome fields: VERIFIED,
or FAILED with error_type "Missing" or "Different" and one sentence naming every difference. Any other S3
error is raised for the worker to report (the parent has already proved the bucket readable).
"""

from __future__ import annotations

import datetime
from typing import List

import botocore.exceptions

from obsbatch.archive import ArchiveControls
from obsbatch.engine import download
from obsbatch.models import Kind, VerifyItem
from obsbatch.s3 import client as s3


def problems(head: dict, item: VerifyItem) -> List[str]:
    """What is wrong with the object whose HEAD is `head`, [] if nothing."""
    found = []
    if head.get("ContentLength") != item.object_size:
        found.append(f"size {head.get('ContentLength')}, expected {item.object_size}")
    etag = head.get("ETag", "").strip('"')
    if item.etag and etag != item.etag:
        found.append(f"ETag {etag}, expected {item.etag}")
    stored_sha = head.get("Metadata", {}).get("sha256", "")
    if not stored_sha:
        found.append("no sha256 metadata (not stored by obsbatch?)")
    elif item.sha256 and stored_sha != item.sha256:
        found.append(f"sha256 metadata {stored_sha}, the manifest says {item.sha256}")
    if item.version_id and item.version_id != "null" and head.get("VersionId") != item.version_id:
        found.append(f"version {head.get('VersionId')}, expected {item.version_id}")
    if item.retain_until:
        until = head.get("ObjectLockRetainUntilDate")
        # botocore gives the date in the local zone (tzlocal); the manifest's is UTC.
        until = until.astimezone(datetime.timezone.utc) if until is not None else None
        if until is None or until.strftime("%Y-%m-%dT%H:%M:%SZ") < item.retain_until:
            found.append((f"retained until {until:%Y-%m-%dT%H:%M:%SZ}" if until else "no retention")
                         + f", the manifest says until {item.retain_until}")
    return found


def check(client, bucket: str, controls: ArchiveControls, item: VerifyItem, received=None) -> dict:
    """The Outcome fields of one object's check (module docstring). received(n): as download.read_body's."""
    try:
        head = client.head_object(Bucket=bucket, Key=item.key, **controls.read_params(item.version_id))
    except botocore.exceptions.ClientError as exc:
        if s3.http_status(exc) == 404:
            return dict(kind=Kind.FAILED, error_type="Missing", message="not in the store")
        raise
    found = problems(head, item)
    digest, read = "", 0
    if not found and item.read:
        response = client.get_object(Bucket=bucket, Key=item.key, **controls.read_params(item.version_id))
        digest, read = download.read_body(response["Body"], received=received)
        reference = item.sha256 or head.get("Metadata", {}).get("sha256", "")
        if digest != reference:
            found.append(f"its bytes have SHA-256 {digest}, expected {reference}")
    if found:
        return dict(kind=Kind.FAILED, error_type="Different", message="; ".join(found), size=read)
    return dict(kind=Kind.VERIFIED, size=read, sha256=digest, version_id=head.get("VersionId") or "")
