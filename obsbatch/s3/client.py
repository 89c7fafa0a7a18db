"""The S3 client every process builds for itself, and how S3 errors are named.

How retries combine (README "Retries"): botocore's *standard* retry mode owns transient per-request
faults: HTTP 500/502/503/504, throttling codes (SlowDown, Throttling, 429), RequestTimeout, connection
errors and resets, read/connect timeouts. It retries each request up to `--retries` more times with
truncated exponential backoff and full jitter (t = rand(0,1) * min(base * 2**i, 20 s); base 50 ms, or 1 s
when throttled), under its client-wide retry quota. A body that reached the server corrupted (BadDigest:
Content-MD5 mismatch), which botocore does not retry, is re-sent within the same budget: by the lean PUT's
own policy (obsbatch.s3.put), and around botocore's calls by `upload.Uploader.call`. Permanent errors
(403, NoSuchBucket, NoSuchKey, SignatureDoesNotMatch) are not retried. So a request is sent at most
retries + 1 times, whatever the faults.
"""

from __future__ import annotations

import datetime
import random

import botocore.config
import botocore.exceptions
import botocore.session
import botocore.utils

from obsbatch import __version__
from obsbatch.s3.endpoint import Endpoint

#: Error codes retried by obsbatch itself, on top of botocore (see module docstring).
BODY_CORRUPTED_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})


def backoff(attempt: int, throttled: bool) -> float:
    """Seconds to wait before re-sending a request that failed `attempt` times (1-based): botocore's standard
    mode, t = rand(0,1) * min(base * 2**(attempt-1), 20 s), base 1 s when throttled, else 50 ms.

    Written here rather than taken from botocore.retries.standard.ExponentialBackoff, whose constructor and
    formula changed within the botocore versions obsbatch allows (1.36 had no throttling scale): the policy is
    obsbatch's own decision, and must not change silently with the library under it.
    """
    return random.random() * min((1.0 if throttled else 0.05) * 2 ** (attempt - 1), 20.0)


def make_client(endpoint: Endpoint, pool_connections: int = 2, session=None):
    """A fresh S3 client from plain settings; credentials come from the standard AWS chain.

    `session` is a botocore Session. boto3's client *is* a botocore client; boto3.session adds the
    resource layer and s3transfer, whose import alone cost ~0.12 s in every process that builds a client
    (issue #5), and which obsbatch does not use. Credential chain, config and behaviour are botocore's
    either way.
    """
    # A session of its own: a default session is module state and clients are not fork/pickle safe.
    session = session or botocore.session.Session()
    # botocore's own timestamp parser is ResponseParserFactory's to replace (aws-cli replaces it too).
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=timestamp)
    botocore_config = botocore.config.Config(
        region_name=endpoint.region,
        connect_timeout=endpoint.http_timeout,
        read_timeout=endpoint.http_timeout,
        retries={"mode": "standard", "total_max_attempts": endpoint.max_attempts},
        s3={"addressing_style": endpoint.addressing_style},
        # botocore >= 1.36 adds CRC checksums (and aws-chunked bodies) to every upload by default; Huawei
        # OBS and Ceph RGW reject them (boto/boto3#4392). when_required turns that off; integrity still
        # comes from the Content-MD5 obsbatch sends on every PUT and part.
        request_checksum_calculation=endpoint.checksum_mode,
        response_checksum_validation=endpoint.checksum_mode,
        max_pool_connections=pool_connections,
        user_agent_extra=f"obsbatch/{__version__}",
    )
    # TLS verification is on unless --no-verify-ssl; --ca-bundle replaces botocore's trust store (None keeps
    # botocore's default: AWS_CA_BUNDLE, the profile's ca_bundle, else its bundled certificates).
    if endpoint.verify is False:
        # The CLI warns once, loudly; urllib3 would otherwise print a non-JSON warning for every request.
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return session.create_client("s3", endpoint_url=endpoint.url, config=botocore_config, verify=endpoint.verify)


def timestamp(text: str) -> datetime.datetime:
    """A response's time as botocore gives it (an aware datetime), ~250 times faster for listings.

    botocore parses every time with dateutil, ~56 µs each: a listing's LastModified cost a verify 0.3 s per
    5,000 objects, most of its CPU (issue #21). S3 bodies write times in ISO 8601 UTC
    ('2026-12-03T06:04:28.000Z'), which datetime.fromisoformat reads in ~0.2 µs (Python >= 3.11; older ones
    refuse the 'Z' and take the fallback); anything else, or a time without a zone, goes to botocore's
    parser, so the values are the same either way."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return botocore.utils.parse_timestamp(text)
    return value if value.tzinfo is not None else botocore.utils.parse_timestamp(text)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ("AccessDenied", "SlowDown"), else the exception class name."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "ClientError"))
    return type(exc).__name__


def http_status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def error_message(exc: BaseException, limit: int = 500) -> str:
    """One sentence for logs and summaries, never credentials. A store's refusal reads "GetObject refused:
    AccessDenied (HTTP 403): Access Denied", not botocore's "An error occurred (AccessDenied) when calling the
    GetObject operation: ..." (issue #18: the same words in every command); other errors are botocore's own
    sentences, which name the endpoint ("Could not connect to the endpoint URL: ...")."""
    if isinstance(exc, botocore.exceptions.ClientError):
        said = " ".join(str(exc.response.get("Error", {}).get("Message") or "").split())
        code, status = error_code(exc), http_status(exc)
        text = (f"{getattr(exc, 'operation_name', None) or 'the request'} refused: {code}"
                + (f" (HTTP {status})" if status and str(status) != code else "")
                + (f": {said}" if said and said != code else ""))
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]
