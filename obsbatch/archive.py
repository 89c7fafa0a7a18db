"""Archive controls (issue #13): what a regulated archive sets on each object at upload, as one frozen value.

`ArchiveControls` is built once from the config (`BackupConfig.archive`, which also validates it) and pickled to
every worker inside WorkerSettings. It says which headers go with a PutObject and a CreateMultipartUpload
(`headers` for the lean PUT, `params` for botocore: both from one table), which go with every request on an
SSE-C object (`customer_key_params`: UploadPart and the HEADs), and what the read-back must find
(`lock_held`).

S3 references: PutObject and CreateMultipartUpload request headers
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html), SSE-C
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/ServerSideEncryptionCustomerKeys.html), Object Lock
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import functools
import hashlib
import math
import os
import stat
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from obsbatch.errors import UsageError

#: Metadata names obsbatch writes itself; --metadata may not set them. `sha256` proves the content; the
#: POSIX attributes are what a restore (issue #14) puts back.
OWN_METADATA = frozenset({"sha256", "mtime", "mode", "uid", "gid"})

#: botocore parameter -> HTTP header, for what goes on a PutObject and a CreateMultipartUpload alike.
_HEADERS = {
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "StorageClass": "x-amz-storage-class",
    "Tagging": "x-amz-tagging",
    "ObjectLockMode": "x-amz-object-lock-mode",
    "ObjectLockRetainUntilDate": "x-amz-object-lock-retain-until-date",
    "ObjectLockLegalHoldStatus": "x-amz-object-lock-legal-hold",
}

#: S3's limits on object tags (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html).
MAX_TAGS = 10


@dataclass(frozen=True)
class CustomerKey:
    """An SSE-C key: 32 bytes that never appear in a repr, a log, a trace, a manifest or an error."""

    key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "CustomerKey(***)"

    @classmethod
    def read(cls, path: str) -> "CustomerKey":
        """The key in `path`: 32 raw bytes, or their base64 (surrounding whitespace ignored)."""
        try:
            with open(path, "rb") as f:
                raw = f.read(4096)
        except OSError as exc:
            raise UsageError(f"--sse-c-key-file {path!r} cannot be read: {exc.strerror}") from None
        if len(raw) == 32:
            return cls(raw)
        try:
            decoded = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != 32:
            # The length only, never the content: this sentence lands in logs.
            raise UsageError(f"--sse-c-key-file {path!r} must hold a 256-bit key: 32 raw bytes or their base64 "
                             f"(it holds {len(raw)} bytes)")
        return cls(decoded)

    def headers(self) -> Dict[str, str]:
        return {"x-amz-server-side-encryption-customer-algorithm": "AES256",
                "x-amz-server-side-encryption-customer-key": base64.b64encode(self.key).decode(),
                "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(hashlib.md5(self.key).digest()).decode()}

    def params(self) -> Dict[str, object]:
        # botocore base64-encodes the key and adds its MD5 itself (botocore.handlers.sse_md5).
        return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": self.key}


def key_value(flag: str, text: str) -> Tuple[str, str]:
    """'KEY=VALUE' -> (KEY, VALUE), or one sentence naming the flag."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"{flag} {text!r} must be KEY=VALUE")
    return name.strip(), value


def metadata_pairs(pairs: Tuple[str, ...]) -> Tuple[Tuple[str, str], ...]:
    out = []
    for text in pairs:
        name, value = key_value("--metadata", text)
        name = name.lower()  # S3 stores metadata names in lower case
        if name in OWN_METADATA:
            raise UsageError(f"--metadata {name}: obsbatch writes x-amz-meta-{name} itself; choose another name")
        # HTTP header tokens, and ASCII values: S3 turns other bytes into RFC 2047 words nobody reads back.
        if not all(c.isalnum() or c in "-_." for c in name) or not name.isascii():
            raise UsageError(f"--metadata {name!r}: a name is letters, digits, '-', '_' and '.'")
        if not (value.isascii() and value.isprintable()):
            raise UsageError(f"--metadata {name}: the value must be printable ASCII")
        out.append((name, value))
    return tuple(out)


def tag_pairs(pairs: Tuple[str, ...]) -> Tuple[Tuple[str, str], ...]:
    tags = tuple(key_value("--tag", text) for text in pairs)
    if len(tags) > MAX_TAGS:
        raise UsageError(f"--tag given {len(tags)} times; S3 allows at most {MAX_TAGS} tags per object")
    if len({name for name, _ in tags}) != len(tags):
        raise UsageError("--tag names a key twice; each tag key may appear once")
    for name, value in tags:
        if len(name) > 128 or len(value) > 256:
            raise UsageError(f"--tag {name[:40]!r}: S3 allows keys of 128 and values of 256 characters at most")
    return tags


@dataclass(frozen=True)
class ArchiveControls:
    """What every object of a run is stored with. All optional; the default sends only the POSIX attributes.

    lock_mode, lock_retain: --object-lock-mode (GOVERNANCE/COMPLIANCE) and --object-lock-retain in seconds,
        counted from each upload. legal_hold: --legal-hold.
    sse, sse_kms_key_id: --sse (AES256 or aws:kms) and --sse-kms-key-id. customer_key: --sse-c-key-file.
    storage_class, tags, metadata: as the flags. preserve_attrs: not --no-preserve-attrs.
    """

    lock_mode: Optional[str] = None
    lock_retain: Optional[float] = None
    legal_hold: bool = False
    sse: Optional[str] = None
    sse_kms_key_id: Optional[str] = None
    customer_key: Optional[CustomerKey] = None
    storage_class: Optional[str] = None
    tags: Tuple[Tuple[str, str], ...] = ()
    metadata: Tuple[Tuple[str, str], ...] = ()
    preserve_attrs: bool = True

    @property
    def locking(self) -> bool:
        """Whether objects must be locked (a retention, a legal hold, or both)."""
        return bool(self.lock_mode) or self.legal_hold

    def for_marker(self) -> "ArchiveControls":
        """What a fleet marker (snapshot.fleet_key) is stored with: encrypted as the data is (a bucket policy may
        demand --sse), but readable by any monitor the bucket lets read it, and replaceable: no SSE-C key, no
        archive storage class (a GLACIER marker could not be read), no lock or legal hold (a pointer that the
        next run overwrites, evidence of nothing), no tags or metadata of the data's."""
        return dataclasses.replace(self, lock_mode=None, lock_retain=None, legal_hold=False, customer_key=None,
                                   storage_class=None, tags=(), metadata=())

    @property
    def etag_is_md5(self) -> bool:
        """Whether a single-part object's ETag is the MD5 of its bytes. Not under SSE-KMS or SSE-C
        (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html, ETag): then verification rests on
        Content-MD5, which the server checks on every request, and the `sha256` metadata."""
        return self.sse != "aws:kms" and self.customer_key is None

    def retain_until(self, now: float) -> Optional[datetime.datetime]:
        """The retain-until date for an upload made at `now`, rounded up to the whole second (S3 keeps
        seconds, and a date a fraction early would read back as too short)."""
        if self.lock_retain is None:
            return None
        return datetime.datetime.fromtimestamp(math.ceil(now + self.lock_retain), datetime.timezone.utc)

    def object_metadata(self, sha256: str, mtime_ns: int, st: Optional[os.stat_result]) -> Dict[str, str]:
        """x-amz-meta-* names and values: sha256, the POSIX attributes of `st` (as rclone writes them:
        mtime in seconds with their fraction, mode in octal), then --metadata."""
        meta = {"sha256": sha256}
        if self.preserve_attrs and st is not None:
            seconds, fraction = divmod(mtime_ns, 1_000_000_000)
            meta["mtime"] = f"{seconds}.{fraction:09d}"
            meta["mode"] = format(stat.S_IMODE(st.st_mode), "o")
            meta["uid"] = str(st.st_uid)
            meta["gid"] = str(st.st_gid)
        meta.update(self.metadata)
        return meta

    # The headers that are the same for every object of a run are built once, not per file: the lean PUT's
    # path is per file (cached_property writes the instance __dict__, which a frozen dataclass allows).
    @functools.cached_property
    def _constant(self) -> Dict[str, str]:
        """botocore parameter -> value, for everything but the retention date (which runs from each upload)."""
        values = {}
        if self.sse:
            values["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            values["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            values["StorageClass"] = self.storage_class
        if self.tags:
            values["Tagging"] = urllib.parse.urlencode(self.tags, quote_via=urllib.parse.quote)
        if self.lock_mode:
            values["ObjectLockMode"] = self.lock_mode
        if self.legal_hold:
            values["ObjectLockLegalHoldStatus"] = "ON"
        return values

    @functools.cached_property
    def _constant_headers(self) -> Dict[str, str]:
        headers = {_HEADERS[name]: value for name, value in self._constant.items()}
        headers.update(self.customer_key_headers())
        return headers

    @staticmethod
    def _date(retain_until: Optional[datetime.datetime]) -> Dict[str, str]:
        return {"ObjectLockRetainUntilDate": retain_until.strftime("%Y-%m-%dT%H:%M:%SZ")} if retain_until else {}

    def params(self, metadata: Dict[str, str], retain_until: Optional[datetime.datetime]) -> Dict[str, object]:
        """Parameters for botocore's put_object / create_multipart_upload."""
        return {"Metadata": metadata, **self._constant, **self._date(retain_until), **self.customer_key_params()}

    def copy_source_params(self, bucket: str, source_key: str, source_version: str,
                           source_etag: str) -> Dict[str, object]:
        """What a CopyObject or UploadPartCopy names its source with: exactly one stored version, which must
        still have `source_etag` (a precondition the server checks: a source overwritten since is refused
        with 412, never copied); an SSE-C source is read with the same key."""
        copy = {"CopySource": {"Bucket": bucket, "Key": source_key, **version_param(source_version)},
                "CopySourceIfMatch": f'"{source_etag}"'}
        if self.customer_key is not None:
            copy["CopySourceSSECustomerAlgorithm"] = "AES256"
            copy["CopySourceSSECustomerKey"] = self.customer_key.key
        return copy

    def copy_params(self, bucket: str, source_key: str, source_version: str, source_etag: str,
                    metadata: Dict[str, str], retain_until: Optional[datetime.datetime]) -> Dict[str, object]:
        """Parameters for botocore's copy_object: the object stored as an upload would be (params), its bytes
        those of the source (copy_source_params). REPLACE: the metadata and tags are this file's, not the
        source's."""
        copy = {**self.copy_source_params(bucket, source_key, source_version, source_etag),
                "MetadataDirective": "REPLACE"}
        if self.tags:
            copy["TaggingDirective"] = "REPLACE"
        return {**copy, **self.params(metadata, retain_until)}

    def headers(self, metadata: Dict[str, str], retain_until: Optional[datetime.datetime]) -> Dict[str, str]:
        """The same as HTTP headers, for the lean PUT (put.DirectPut)."""
        headers = dict(self._constant_headers)
        for name, value in self._date(retain_until).items():
            headers[_HEADERS[name]] = value
        headers.update((f"x-amz-meta-{name}", value) for name, value in metadata.items())
        return headers

    @functools.cached_property
    def _customer_key_headers(self) -> Dict[str, str]:
        return self.customer_key.headers() if self.customer_key is not None else {}

    def customer_key_headers(self) -> Dict[str, str]:
        """The SSE-C request headers for the lean GET (put.DirectPut.get); empty without SSE-C."""
        return self._customer_key_headers

    def customer_key_params(self) -> Dict[str, object]:
        """What every request on an SSE-C object carries (UploadPart, HeadObject); empty without SSE-C."""
        return self.customer_key.params() if self.customer_key is not None else {}

    def read_params(self, version_id: str = "") -> Dict[str, object]:
        """What a HeadObject or GetObject of one stored version carries: its version (version_param) and the
        SSE-C key, if any."""
        return {**version_param(version_id), **self.customer_key_params()}

    def lock_held(self, head: dict, retain_until: Optional[datetime.datetime]) -> str:
        """'' if the HEAD of the stored version shows the lock asked for, else what is missing."""
        missing = []
        if self.lock_mode and retain_until is not None:
            stored = head.get("ObjectLockRetainUntilDate")
            if head.get("ObjectLockMode") != self.lock_mode or stored is None or stored < retain_until:
                shown = stored.astimezone(datetime.timezone.utc).strftime(" until %Y-%m-%dT%H:%M:%SZ") if stored else ""
                missing.append(f"retention {self.lock_mode} until {retain_until:%Y-%m-%dT%H:%M:%SZ} "
                               f"(stored: {head.get('ObjectLockMode') or 'none'}{shown})")
        if self.legal_hold and head.get("ObjectLockLegalHoldStatus") != "ON":
            missing.append("legal hold ON")
        return ", ".join(missing)


def version_param(version_id: str) -> Dict[str, str]:
    """{"VersionId": ...} to address the stored version, or {} for the current object.

    "null" is the version id S3 reports for an object in a bucket that never had versioning; moto's server
    reports it for a multipart upload and then refuses it as a VersionId (400), so it is left out: in such
    a bucket the current object is that version anyway.
    """
    return {"VersionId": version_id} if version_id and version_id != "null" else {}


def plain_http_to_remote_host(endpoint: Optional[str]) -> bool:
    """Whether `endpoint` is plain http to a host other than a loopback address, where an SSE-C key would
    cross the network in clear text (S3 itself refuses SSE-C over http)."""
    import ipaddress

    if not endpoint:
        return False  # AWS: https
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme != "http":
        return False
    host = url.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
