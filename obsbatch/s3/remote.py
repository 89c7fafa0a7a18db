"""The destination as the parent sees it: the pre-flight's verdict, and a client of its own for the little
only the parent asks.

The pre-flight itself (`preflight`) runs in an upload worker (pool.UploadPool.check_destination), which
has botocore loaded and its S3 model parsed by the fork server already: the parent then needs no client of
its own for a plain run. Importing botocore and building a client cost the parent ~0.3 s of CPU, on the
path to the first upload (issue #12). The parent builds its client only for the --verify-remote listing and
the --upload-manifest upload, and a run with nothing to upload (a timer on a quiet tree) contacts no
server at all (issue #5).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from typing import Callable, Iterator, Optional

import structlog

from obsbatch.s3 import listing
from obsbatch.archive import ArchiveControls
from obsbatch.config import BackupConfig
from obsbatch.errors import EndpointUnavailable, PreflightError

log = structlog.get_logger()

# Error codes that prove the credentials themselves are wrong, whatever the key may do.
_BAD_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                                   "TokenRefreshRequired", "InvalidClientTokenId"})


def manifest_key(prefix: str, run_id: str) -> str:
    """Beside the data, never among it: every data key starts with `prefix`, this one with `prefix` less '/'."""
    return f"{prefix.rstrip('/')}.obsbatch/manifests/{run_id}.jsonl"


def round_trip(client, bucket: str) -> float:
    """Seconds of one HeadBucket on the client's connection (open already: the command has listed or read
    through it), the link's round trip and the server's least work, for a restore's or a verify's start
    (engine.concurrency, The start; a backup's pre-flight measures its own). 0.0 if it fails: the start is
    then the default one, and the failure, if it lasts, is the listing's or the objects' to report."""
    import botocore.exceptions

    started = time.monotonic()
    try:
        client.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return 0.0
    return time.monotonic() - started


def base_url(client, bucket: str) -> Optional[tuple]:
    """(base URL, region) `client` resolved for `bucket`: the URL of a probe key, less the key (no request is
    sent); None where that URL does not end in the key."""
    probe = "obsbatch-url-probe"
    url = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": probe})
    base = url.split("?", 1)[0]
    if not base.endswith("/" + probe):
        return None
    return base[:-len(probe)], client.meta.region_name


class Remote:
    """The destination as the parent sees it.

    check: runs the pre-flight (pool.UploadPool.check_destination) and raises PreflightError or
        EndpointUnavailable, or returns the (base URL, region) the worker's botocore resolved for the bucket
        (`base_url`), or None; `checked()` asks it once per run.
    """

    def __init__(self, config: BackupConfig, check: Callable[[], Optional[tuple]]):
        self.config = config
        self._check = check
        self._client = None
        self._checked = False
        #: (base URL, region) the pre-flight's worker resolved, once it has run (learned_base).
        self._preflight_base: Optional[tuple] = None
        #: The snapshot the pre-flight found this host's fleet marker naming, to seed a journal that knows
        #: nothing of the prefix (WorkerSettings.seed_marker); "" when there is none, or none was asked for.
        self.seed_snapshot = ""
        #: Why the endpoint did not answer the pre-flight, once it has not (it is not asked again this run).
        self.unavailable = ""
        #: The botocore-free PUT for obsbatch's own records (s3.lean), where the run could build one.
        self.lean = None

    def learned_base(self) -> Optional[tuple]:
        """(base URL, region) botocore resolved for this bucket (base_url): by the parent's client once it has
        built one, else by the pre-flight's worker once that has run, else None. An s3.lean.LeanPut sends
        obsbatch's records there: this run's (issue #21: a first run's record no longer waits for the parent
        to import botocore, ~0.4 s) and, through the journal, later runs'."""
        if self._client is None:
            return self._preflight_base
        return base_url(self._client, self.config.store.bucket)

    def client(self):
        """The parent's own client, built on first use (the listing, the manifest upload)."""
        if self._client is None:
            from obsbatch.s3 import client as s3
            from obsbatch.s3.endpoint import Endpoint

            self._client = s3.make_client(Endpoint.from_config(self.config), pool_connections=1)
        return self._client

    def checked(self) -> None:
        """Return once the pre-flight has passed.

        Raises PreflightError (exit 2) for what the operator must fix, and EndpointUnavailable when the
        server did not answer; that is logged here, once, and raised again at once on every later call, so
        a down server costs one round of retries per run, not one per file.
        """
        if self.unavailable:
            raise EndpointUnavailable(self.unavailable)
        if not self._checked:
            try:
                self._preflight_base, self.seed_snapshot = self._check()
            except EndpointUnavailable as exc:
                self.unavailable = str(exc)
                log.error("run.endpoint_unavailable", error=self.unavailable,
                          detail="sending nothing this run: every file to upload is reported failed, and the "
                                 "next run uploads them")
                raise
            self._checked = True

    def listing(self) -> Iterator[dict]:
        """--verify-remote: ListObjectsV2 pages under the prefix, one at a time (the paginator fetches lazily)."""
        store = self.config.store
        self.checked()
        with store_errors(store, f"list s3://{store.bucket}/{store.prefix} (--verify-remote)"):
            yield from listing.pages(self.client(), store.bucket, store.prefix)

    def seed_rows(self) -> Iterator[tuple]:
        """(key, size, etag, version) of every file of this host's latest snapshot of the prefix (the pre-flight
        read its fleet marker: seed_snapshot) whose recorded version the store still holds (one version listing
        confirms them all): what a run with a missing or foreign journal compares its files with instead of
        uploading them again. Nothing when this host has no snapshot there. Each file is still read and hashed
        by a worker and compared with the listed ETag of that version (or its sha256 metadata), so a record
        cannot make a file pass for stored that is not."""
        from obsbatch import keys, snapshot
        from obsbatch.s3 import snapshots

        self.checked()
        if not self.seed_snapshot:
            return
        store = self.config.store
        client = self.client()
        with store_errors(store, f"read this host's latest snapshot of {store.location}"):
            record = snapshots.record(client, store.bucket, store.prefix, self.seed_snapshot,
                                      store.reading.read_params(""))
            loaded = snapshots.trees(client, store.bucket, store.prefix, record, store.reading.read_params(""))
            inventory = listing.Inventory(client, store.bucket, store.prefix)
        encode = keys.encoder(record)
        try:
            for rel_dir, entries in snapshots.walk(loaded, record["root"], limit=snapshots.entry_budget(record)):
                for entry in entries:
                    if entry[snapshot.TYPE] != snapshot.FILE or entry[snapshot.STALE]:
                        continue
                    rel = rel_dir + b"/" + entry[snapshot.NAME] if rel_dir else entry[snapshot.NAME]
                    key = store.prefix + encode(rel)
                    etag = snapshot.etag(entry)
                    if inventory.proves(key, entry[snapshot.SIZE], etag, entry[snapshot.VERSION]):
                        yield key, entry[snapshot.SIZE], etag, entry[snapshot.VERSION]
        finally:
            inventory.close()
            loaded.close()

    def put_beside(self, key: str, body, content_type: str, failed_event: str,
                   controls: Optional[ArchiveControls] = None, digests: Optional[tuple] = None) -> Optional[str]:
        """Store one of obsbatch's own records beside the data (the manifest, a snapshot record or pack, a fleet
        marker): `body` is bytes (hashed here) or a seekable file (streamed, not read into memory) with its
        `digests`, (MD5 hex, SHA-256 hex), which its writer has (a pack is hashed as it is written). Returns None
        when stored, else the S3 error code, logged under `failed_event`. controls: what it is stored with;
        default the data's."""
        md5_hex, sha256_hex = digests or (hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest())
        if self.unavailable:
            log.error(failed_event, key=key, error_type="EndpointUnavailable", error=self.unavailable)
            return "EndpointUnavailable"
        # Stored as the data is (encryption, storage class, tags, lock), and locked the same way: a record
        # that could be deleted or replaced proves nothing about the objects that cannot.
        controls = controls or self.config.archive
        retain_until = controls.retain_until(time.time())
        if self.lean is not None and not controls.locking:  # a lock is held by a second request: botocore's
            from obsbatch.s3.lean import LeanFailed

            start = body.tell() if hasattr(body, "seek") else 0
            size = len(body) if isinstance(body, bytes) else body.seek(0, 2) - start
            if hasattr(body, "seek"):
                body.seek(start)  # measuring it went to its end
            headers = dict(controls.headers({"sha256": sha256_hex}, retain_until), **{"content-type": content_type})
            try:
                self.lean.put(key, body, size, base64.b64encode(bytes.fromhex(md5_hex)).decode(), sha256_hex, headers)
                return None
            except LeanFailed as exc:
                log.debug("lean.fallback", key=key, error=str(exc), detail="sending it through botocore")
                self.lean.close()
                self.lean = None
                if hasattr(body, "seek"):
                    body.seek(start)
        import botocore.exceptions  # here: the lean path above must not pay for botocore

        from obsbatch.s3 import client as s3, lock

        try:
            resp = self.client().put_object(
                Bucket=self.config.store.bucket, Key=key, Body=body, ContentType=content_type,
                ContentMD5=base64.b64encode(bytes.fromhex(md5_hex)).decode(),
                **controls.params({"sha256": sha256_hex}, retain_until))
            if controls.locking:
                lock.hold(controls, self.client(), self.config.store.bucket, key, resp.get("VersionId", ""),
                          retain_until)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, lock.NotLocked) as exc:
            if isinstance(exc, botocore.exceptions.NoCredentialsError) or s3.error_code(exc) in _BAD_CREDENTIAL_CODES:
                # No key, or a rejected one: the pre-flight's fault and exit 2, said the same way (a run with
                # nothing to upload has no pre-flight, and this PUT is its first request).
                raise store_error(exc, self.config.store.bucket, self.config.store.server, f"store {key}") from None
            log.error(failed_event, key=key, error_type=s3.error_code(exc), error=s3.error_message(exc))
            return s3.error_code(exc)
        return None


def marked_snapshot(client, bucket: str, marker_key: str) -> str:
    """The snapshot id a fleet marker names (snapshot.fleet_key), or "" when there is no such marker, it
    cannot be read, or it names no valid id: a seed is an optimisation, never a reason to fail a run."""
    import json

    import botocore.exceptions

    from obsbatch import snapshot
    from obsbatch.s3 import snapshots

    if not marker_key:
        return ""
    try:
        found = json.loads(snapshots.bounded(client.get_object(Bucket=bucket, Key=marker_key), snapshots.SMALL_LIMIT))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError) as exc:
        log.debug("preflight.no_seed", key=marker_key, error=str(exc))
        return ""
    snapshot_id = str(found.get("id", "")) if isinstance(found, dict) else ""
    return snapshot_id if snapshot.valid_id(snapshot_id) else ""


def preflight(client, bucket: str, prefix: str, where: str, retries: int, lock: bool = False) -> float:
    """Fail before uploading if the bucket is missing, the credentials are wrong or the endpoint is down.
    Returns the seconds its last request took: one round trip to the store on a connection already open (the
    first request paid for the connection), which `auto` concurrency starts from (issue #21).

    `where` names the endpoint in messages; `retries` is --retries, for the message. `lock`: objects are to
    be locked (--object-lock-mode, --legal-hold), so the bucket must have Object Lock enabled.

    HeadBucket needs s3:ListBucket, which write-only backup keys rightly lack. HEAD responses have no body,
    so a 403 cannot say whether the key is bad or merely not allowed to list; a ranged GET of a key that is
    not expected to exist then tells: bad credentials are fatal, AccessDenied/NoSuchKey mean "may write".
    """
    _check_access(client, bucket, prefix, where, retries)
    if lock:
        _check_object_lock(client, bucket, where)
    started = time.monotonic()
    _check_versioning(client, bucket)
    return time.monotonic() - started


def _check_versioning(client, bucket: str) -> None:
    """Versioning told, not assumed (issue #20): without it, the store keeps only the latest object of each key,
    so a snapshot can bring back a file only as long as its object has not changed since. One warning; a key
    not allowed to read the setting (s3:GetBucketVersioning) is let through quietly."""
    import botocore.exceptions

    try:
        status = client.get_bucket_versioning(Bucket=bucket).get("Status", "")
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.debug("preflight.versioning_unknown", bucket=bucket, error=str(exc))
        return
    if status != "Enabled":
        log.warning("preflight.unversioned", bucket=bucket, versioning=status or "never enabled",
                    detail="the bucket keeps only the latest object of each key: a snapshot restores a file only "
                           "while its object is unchanged since (a changed one is named and left out); turn "
                           "versioning on for point-in-time restores (README: Snapshots)")


def _check_access(client, bucket: str, prefix: str, where: str, retries: int) -> None:
    import botocore.exceptions

    from obsbatch.s3 import client as s3

    try:
        client.head_bucket(Bucket=bucket)
        return
    except botocore.exceptions.NoCredentialsError:
        raise PreflightError("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                             "or AWS_PROFILE") from None
    except botocore.exceptions.ClientError as exc:
        status = s3.http_status(exc)
        if status == 404:
            raise PreflightError(f"bucket '{bucket}' does not exist at {where}") from None
        if status == 301:
            raise PreflightError(f"bucket '{bucket}' is in another region than '{client.meta.region_name}'; "
                                 "set --region") from None
        if status >= 500:
            raise EndpointUnavailable(f"the S3 endpoint {where} is failing (HTTP {status} after "
                                      f"{retries} retries): {s3.error_message(exc)}") from None
        if status != 403:
            raise PreflightError(f"bucket '{bucket}' at {where} cannot be used: "
                                 f"{s3.error_message(exc)}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise _unreachable(where, exc) from None
    try:
        client.get_object(Bucket=bucket, Key=prefix + ".obsbatch-preflight-probe", Range="bytes=0-0")
    except botocore.exceptions.ClientError as exc:
        code = s3.error_code(exc)
        if code in _BAD_CREDENTIAL_CODES:
            raise PreflightError(f"the S3 credentials were rejected by {where} ({code}): check AWS_ACCESS_KEY_ID "
                                 "and AWS_SECRET_ACCESS_KEY") from None
        if code == "NoSuchBucket":
            raise PreflightError(f"bucket '{bucket}' does not exist at {where}") from None
        if s3.http_status(exc) >= 500:
            raise EndpointUnavailable(f"the S3 endpoint {where} is failing: {s3.error_message(exc)}") from None
        log.warning("preflight.unverified", bucket=bucket, error_type=code,
                    detail="cannot list the bucket (write-only credentials?); uploads will tell")
    except botocore.exceptions.BotoCoreError as exc:
        raise _unreachable(where, exc) from None


def _check_object_lock(client, bucket: str, where: str) -> None:
    """GetObjectLockConfiguration: a bucket without Object Lock enabled cannot lock anything (S3 refuses
    lock headers there, and some servers silently drop them), so nothing is sent (exit 2). A key not
    allowed to read the configuration is let through: every upload's read-back still proves its lock."""
    import botocore.exceptions

    from obsbatch.s3 import client as s3

    missing = (f"bucket '{bucket}' at {where} does not have Object Lock enabled, so --object-lock-mode and "
               "--legal-hold cannot hold; create the bucket with Object Lock (it cannot be added to most "
               "servers' existing buckets)")
    try:
        enabled = client.get_object_lock_configuration(Bucket=bucket).get(
            "ObjectLockConfiguration", {}).get("ObjectLockEnabled")
    except botocore.exceptions.ClientError as exc:
        code = s3.error_code(exc)
        if code == "ObjectLockConfigurationNotFoundError":
            raise PreflightError(missing) from None
        if s3.http_status(exc) == 403:
            log.warning("preflight.lock_unverified", bucket=bucket, error_type=code,
                        detail="cannot read the bucket's Object Lock configuration; each upload's read-back "
                               "proves its lock")
            return
        if s3.http_status(exc) >= 500:
            raise EndpointUnavailable(f"the S3 endpoint {where} is failing: {s3.error_message(exc)}") from None
        raise PreflightError(f"cannot read the Object Lock configuration of bucket '{bucket}' at {where}: "
                             f"{s3.error_message(exc)}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise _unreachable(where, exc) from None
    if enabled != "Enabled":
        raise PreflightError(missing)


def _unreachable(where: str, exc: Exception) -> PreflightError:
    """A transport failure: a refused, reset or timed-out connection is the server being down (exit 1, try
    again); a TLS failure is configuration (exit 2: --ca-bundle), as is anything botocore raises before
    sending (no region, a bad parameter)."""
    import botocore.exceptions

    from obsbatch.s3 import client as s3

    message = f"cannot reach the S3 endpoint {where}: {s3.error_message(exc)}"
    if isinstance(exc, botocore.exceptions.SSLError):
        return PreflightError(message)
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return EndpointUnavailable(message)
    return PreflightError(message)


def chosen_snapshot(client, store, snapshot_id: str, as_of: Optional[float], public_key_path: Optional[str],
                    command: str) -> Optional[dict]:
    """The record of the snapshot `snapshot_id` names, or the latest at or before `as_of`, or the latest
    (snapshots.choose): what restore and verify read; a store that cannot be read is store_error's sentence.

    With a public key (--public-key), only a record signed by it (snapshots.choose); each newer one passed over
    is logged (`<command>.untrusted_snapshot`)."""
    from obsbatch import signing
    from obsbatch.s3 import snapshots

    public_key = signing.load_public_key(public_key_path) if public_key_path else None

    def passed_over(snapshot_id: str, why: str) -> None:
        log.warning(f"{command}.untrusted_snapshot", id=snapshot_id, error=why,
                    detail="passed over: a newer record that is not signed by --public-key is never the latest")

    with store_errors(store, f"read the snapshots under s3://{store.bucket}/{store.prefix}"):
        chosen = snapshots.choose(client, store.bucket, store.prefix, snapshot_id, as_of,
                                  store.reading.read_params(""), public_key, passed_over)
    return chosen


@contextlib.contextmanager
def store_errors(store, doing: str) -> Iterator[None]:
    """An S3 call inside that fails raises store_error's sentence for `store` (config.StoreConfig) instead."""
    import botocore.exceptions

    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise store_error(exc, store.bucket, store.server, doing) from None


def store_error(exc: BaseException, bucket: str, where: str, doing: str) -> PreflightError:
    """One sentence, and the exit code every command gives for it (issue #18), for an S3 call that failed
    while `doing` ("list s3://b/p/"): the same fault is the same exit in backup, restore and verify.

    Never botocore's own text for the faults it names ("An error occurred (X) when calling ..."): the user is
    told what is wrong and what to check. EndpointUnavailable (exit 1: try again later) for a server that is
    down or failing, PreflightError (exit 2: fix the configuration) for the rest.
    """
    import botocore.exceptions

    from obsbatch.s3 import client as s3

    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return PreflightError("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                              "or AWS_PROFILE")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return _unreachable(where, exc)
    code, status = s3.error_code(exc), s3.http_status(exc)
    if code in _BAD_CREDENTIAL_CODES:
        return PreflightError(f"the S3 credentials were rejected by {where} ({code}): check AWS_ACCESS_KEY_ID "
                              "and AWS_SECRET_ACCESS_KEY")
    if code == "NoSuchBucket" or (status == 404 and code in ("404", "NotFound")):
        return PreflightError(f"bucket '{bucket}' does not exist at {where}")
    if status == 301 or code == "PermanentRedirect":
        return PreflightError(f"bucket '{bucket}' is in another region; set --region")
    if code == "AccessDenied" or status == 403:
        return PreflightError(f"access denied by {where}: these credentials may not {doing}")
    if status >= 500:
        return EndpointUnavailable(f"the S3 endpoint {where} is failing (HTTP {status}, {code}) and did not "
                                   f"recover within the retries: cannot {doing}")
    return PreflightError(f"cannot {doing}: {where} answered {code} (HTTP {status})")
