"""A lean PutObject for small files: the request botocore would send, without its per-call machinery; and,
the same way, GetObject of small objects for `obsbatch restore` (DirectPut.get, issue #14: botocore's
get_object cost a small object's restore ~2 ms of CPU, as put_object did an upload).

Why (issues #5, #12): `client.put_object` costs about 2 ms of CPU per 4 KiB PUT on the bench machine, the
same request through botocore's signer and urllib3 ~0.7 ms, and through this module ~0.15 ms. The rest is
per-call generality that a fixed PutObject does not need: parameter validation and serialization,
endpoint-ruleset evaluation, a dozen event-hook chains, the user-agent builder, botocore's generic
canonicalisation, the `Expect: 100-continue` round trip botocore adds to every PUT, and http.client's and
urllib3's request and response objects. On a host of many small files that overhead, not the network,
sets the speed.

What is kept, so the request and its failure modes are botocore's own:
- signing: AWS Signature Version 4 exactly as `botocore.auth.S3SigV4Auth` computes it for this request
  (the same canonical headers, content-length included and user-agent not; S3's unnormalised path; a test
  compares both signers' Authorization headers), with the client's credential chain (refreshable
  credentials are frozen per request, as botocore does). Only the signing key, a function of the secret,
  the day and the region, is derived once per day rather than per request;
- the URL: resolved once by botocore itself (a presigned URL for a probe key), so addressing style,
  region endpoints and custom endpoints are botocore's decision;
- transport: a kept-alive connection per upload thread (obsbatch.s3.http1) with the client's TLS trust and
  timeouts and botocore's exception classes for faults; where the client would go through a proxy or
  present a client certificate, no DirectPut at all (put_object), so those stay botocore's;
- errors: the response is parsed by botocore's rest-xml parser and raised as the client's modelled
  `ClientError`, so `s3.error_code` names it exactly as for any other call;
- retries: botocore's *standard* retry conditions and client-wide retry quota applied to each attempt,
  with the standard mode's backoff (s3.client.backoff: the same formula and throttling scale); a body the
  server received corrupted (BadDigest), which botocore does not retry, is re-sent under the same budget,
  backoff and quota. This is the one place that retries a single PUT.

The payload is always SHA-256 signed (`X-Amz-Content-SHA256` is the digest obsbatch computes anyway for
the object's metadata), so the server verifies the SHA-256 of every body as well as its Content-MD5.
botocore skips that over https when Content-MD5 is present; here it costs nothing.

Only used for single-part uploads with `--checksum-mode when_required` (the default); anything else goes
through botocore's `put_object`. `make` returns None when this botocore lacks a part relied on here (with a
warning), and the worker then uses `put_object` for everything. Only public names of botocore are used.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import time
import urllib.parse
from typing import Optional

import botocore.auth
import botocore.exceptions
import botocore.utils
import botocore.parsers
import structlog
from botocore.retries import quota, standard

from obsbatch import __version__
from obsbatch.s3 import http1
from obsbatch.s3.sigv4 import SigV4, host_header  # noqa: F401 (host_header: the tests' too)
from obsbatch.s3.client import BODY_CORRUPTED_CODES, backoff

log = structlog.get_logger()

_PROBE_KEY = "obsbatch-url-probe"
#: The SigV4 payload hash of a request without a body (a GET), as botocore signs it over http.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

class DirectPut:
    """PutObject for one bucket through a given client's credentials, parser and retry policy. `transport`
    (http1.Transport, with the client's TLS trust and timeout: `make`) carries the requests."""

    def __init__(self, client, credentials, bucket: str, max_attempts: int, on_send=None, on_answer=None,
                 transport: Optional[http1.Transport] = None):
        self._credentials = credentials
        self._signer = SigV4(client.meta.region_name)
        self.transport = transport
        self._exceptions = client.exceptions
        self._operation = client.meta.service_model.operation_model("PutObject")
        self._get_operation = client.meta.service_model.operation_model("GetObject")
        self._parser = botocore.parsers.create_parser("rest-xml")
        probe = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": _PROBE_KEY})
        parts = urllib.parse.urlsplit(probe)
        if not parts.path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"unexpected presigned URL shape: {parts.path}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path_base = parts.path[:-len(_PROBE_KEY)]
        self._host = host_header(probe)
        self._user_agent = f"obsbatch/{__version__} Botocore/{botocore.__version__}"
        # botocore's retry conditions and retry quota (_quota_checker), as the client's own (the backoff is
        # obsbatch's own: s3.client.backoff); tests/functional/test_worker.py
        # checks that a DirectPut is built with the installed botocore, so a change would fail there, not
        # silently send every small file through put_object.
        self._max_attempts = max_attempts
        self._conditions = standard.StandardRetryConditions(max_attempts=max_attempts)
        self._throttled = standard.ThrottledRetryableChecker()
        self._quota = _quota_checker()
        self._on_send = on_send or (lambda **kwargs: None)
        self._on_answer = on_answer or (lambda: None)

    @property
    def origin(self) -> str:
        return self._origin

    def path(self, key: str) -> str:
        # The serializer's quoting of the greedy {Key+} label (botocore.serialize, percent_encode safe='/~').
        return self._path_base + urllib.parse.quote(key, safe="/~")

    def url(self, key: str) -> str:
        return self._origin + self.path(key)

    def put(self, key: str, body: bytes, md5_b64: str, sha256_hex: str, object_headers: dict) -> dict:
        """One PutObject with retries; returns {"ETag", "VersionId"} or raises what client.put_object would.

        object_headers: lower-case header names and values the object is stored with (x-amz-meta-*, and the
        archive controls: archive.ArchiveControls.headers); all of them are signed.
        """
        headers = {"host": self._host, "content-length": str(len(body)), "content-md5": md5_b64,
                   "user-agent": self._user_agent, **object_headers}
        response = self._call("PUT", key, headers, body, sha256_hex, self._operation)
        return {"ETag": response.headers.get("ETag", ""), "VersionId": response.headers.get("x-amz-version-id", "")}

    def get(self, key: str, request_headers: dict) -> dict:
        """One GetObject with retries, its body read whole (for small objects: `obsbatch restore`, issue #14).

        Returns what client.get_object returns and download.restore reads (Body, ContentLength, ETag,
        VersionId, Metadata), or raises what it would raise (NoSuchKey, InvalidObjectState...).
        request_headers: the SSE-C headers, if any (signed).
        """
        headers = {"host": self._host, "user-agent": self._user_agent, **request_headers}
        response = self._call("GET", key, headers, b"", _EMPTY_SHA256, self._get_operation)
        metadata = {name[11:].lower(): value for name, value in response.headers.items()
                    if name.lower().startswith("x-amz-meta-")}
        return {"Body": io.BytesIO(response.content), "ContentLength": len(response.content),
                "ETag": response.headers.get("ETag", ""), "VersionId": response.headers.get("x-amz-version-id", ""),
                "Metadata": metadata}

    def _call(self, method: str, key: str, headers: dict, body: bytes, sha256_hex: str, operation):
        """Send one request with botocore's retry policy; the response (status < 300), or raise what the
        client would for `operation`."""
        path = self.path(key)
        request_context: dict = {}
        attempt = 0
        while True:
            attempt += 1
            response = parsed = error = None
            try:
                response = self._send(method, path, headers, body, sha256_hex, attempt)
                parsed = self._parse(response, operation)
            except (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError) as exc:
                error = exc
            context = standard.RetryContext(attempt_number=attempt, operation_model=operation,
                                            parsed_response=parsed, http_response=response,
                                            caught_exception=error, request_context=request_context)
            if error is None and response.status_code < 300:
                self._quota.release_retry_quota(request_context, response)
                return response
            code = (parsed or {}).get("Error", {}).get("Code", "")
            if self._retryable(context, code) and self._quota.acquire_retry_quota(context):
                if code in BODY_CORRUPTED_CODES:
                    log.warning("upload.retry", key=key, error_type=code, attempt=attempt)
                time.sleep(backoff(attempt, self._throttled.is_retryable(context)))
                continue
            if error is not None:
                raise error
            raise self._exceptions.from_code(code)(parsed, operation.name)

    def _retryable(self, context: standard.RetryContext, code: str) -> bool:
        """botocore's standard conditions, or a body that reached the server corrupted (Content-MD5 mismatch)."""
        if code in BODY_CORRUPTED_CODES:
            return context.attempt_number < self._max_attempts
        return self._conditions.is_retryable(context)

    def _send(self, method: str, path: str, headers: dict, body: bytes, sha256_hex: str, attempt: int):
        # Signed per attempt, as botocore does: a new date, and refreshable credentials (instance roles,
        # assumed roles) renewed here.
        signed = self._signer.sign(method, path, headers, sha256_hex, self._credentials.get_frozen_credentials())
        self._on_send(attempt=attempt, size=len(body))
        try:
            return self.transport.send(method, path, signed, body)
        finally:
            self._on_answer()

    def _parse(self, response, operation) -> dict:
        if response.status_code < 300:
            return {}
        # A HEAD-like error (no body) still gets its code from the status: the parser does that too.
        return self._parser.parse({"headers": response.headers, "status_code": response.status_code,
                                   "body": response.content, "context": {"operation_name": operation.name}},
                                  operation.output_shape)


def _quota_checker():
    """A retry-quota checker that charges what the client's own charges: botocore from 1.37 or so costs a
    throttled retry 5 and any other 14, given a throttling detector (without one every retry costs 14, and a
    throttling server drained the quota three times faster than botocore's put_object: fewer retries, more
    failed files); 1.36's constructor takes no detector and costs every retry 5. Chosen by the constructor's
    own signature, not by catching an error."""
    if "throttling_detector" in inspect.signature(standard.RetryQuotaChecker).parameters:
        detector = standard.ThrottlingErrorDetector(standard.RetryEventAdapter())
        return standard.RetryQuotaChecker(quota.RetryQuota(), throttling_detector=detector)
    return standard.RetryQuotaChecker(quota.RetryQuota())


def make(client, session, bucket: str, max_attempts: int, verify, on_send=None, on_answer=None):
    """A DirectPut for `client`, or None and the reason where botocore must carry the requests itself: a
    proxy for this endpoint, a client certificate, no credentials, or (a warning) a botocore this module does
    not fit. verify: the endpoint's --ca-bundle / --no-verify-ssl (s3.endpoint.Endpoint.verify), or None."""
    try:
        credentials = session.get_credentials()
        if credentials is None:
            return None, "no credentials"
        direct = DirectPut(client, credentials, bucket, max_attempts, on_send, on_answer)
    except Exception as exc:  # an internal botocore layout we do not know: put_object, and say so
        log.warning("upload.direct_put_unavailable", error=f"{type(exc).__name__}: {exc}",
                    detail="every PUT goes through botocore's put_object (slower per small file)")
        return None, f"{type(exc).__name__}: {exc}"
    config = client.meta.config
    if config.proxies or botocore.utils.get_environ_proxies(direct.origin + "/"):
        return None, "a proxy"  # botocore's own choice of proxy (HTTPS_PROXY, NO_PROXY), from the environment
    if config.client_cert:
        return None, "a client certificate"
    direct.transport = http1.Transport(direct.origin, timeout=config.read_timeout,
                                       verify=resolved_verify(verify, session))
    return direct, ""


def resolved_verify(verify, session):
    """The TLS trust botocore resolves for a client made with `verify` (botocore.session.create_client, then
    botocore.endpoint.EndpointCreator): the given value, else the session's ca_bundle (AWS_CA_BUNDLE, the
    profile), else REQUESTS_CA_BUNDLE, else True (its bundled certificates)."""
    if verify is None:
        verify = session.get_config_variable("ca_bundle")
    if verify is None:
        verify = os.environ.get("REQUESTS_CA_BUNDLE", True)
    return verify
