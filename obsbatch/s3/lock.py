"""Object Lock after an upload: make the lock asked for hold on the stored version, or say it does not.

Some servers accept the lock headers and ignore them; the HEAD decides (issue #13). What the lock must be is
obsbatch.archive.ArchiveControls (pure values); the requests are here.
"""

from __future__ import annotations

import datetime
from typing import Optional

import botocore.exceptions
import structlog

from obsbatch.archive import ArchiveControls, version_param
from obsbatch.s3 import client as s3


class NotLocked(Exception):
    """The stored version does not hold the Object Lock asked for, even after applying it."""


def hold(controls: ArchiveControls, client, bucket: str, key: str, version_id: str,
         retain_until: Optional[datetime.datetime], head: Optional[dict] = None) -> None:
    """Make the Object Lock asked for hold on the stored version (whose HEAD is `head`, or is read here), or
    raise NotLocked.

    Some servers accept the lock headers and ignore them (moto's server on CreateMultipartUpload; rclone
    documents the same for several providers), so the HEAD decides. What is missing is applied to that
    version (PutObjectRetention, PutObjectLegalHold, as rclone's --s3-object-lock-set-after-upload does) and
    read back once more. A file whose lock cannot be made to hold is never counted uploaded.
    """
    if head is None:
        head = client.head_object(Bucket=bucket, Key=key, **controls.read_params(version_id))
    missing = controls.lock_held(head, retain_until)
    if not missing:
        return
    structlog.get_logger().info("upload.lock_applied", key=key, version_id=version_id, missing=missing,
                                detail="the server did not lock the object on upload; applied after it")
    version = version_param(version_id)
    try:
        if controls.lock_mode and retain_until is not None:
            client.put_object_retention(Bucket=bucket, Key=key, **version,
                                        Retention={"Mode": controls.lock_mode, "RetainUntilDate": retain_until})
        if controls.legal_hold:
            client.put_object_legal_hold(Bucket=bucket, Key=key, **version, LegalHold={"Status": "ON"})
        head = client.head_object(Bucket=bucket, Key=key, **controls.read_params(version_id))
    except botocore.exceptions.ClientError as exc:
        raise NotLocked(f"{key} is stored without its lock ({missing}), and applying it failed: "
                        f"{s3.error_message(exc)}") from None
    missing = controls.lock_held(head, retain_until)
    if missing:
        raise NotLocked(f"{key} is stored, but its lock does not hold ({missing}) even after applying it")
