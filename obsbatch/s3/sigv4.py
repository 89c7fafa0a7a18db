"""AWS Signature Version 4 for S3, as botocore's S3SigV4Auth computes it, without botocore: the lean PUT's
(obsbatch.s3.put) and the parent's record PUT's (obsbatch.s3.lean), which must not import botocore at all.

`credentials`: anything with access_key, secret_key and token (botocore's frozen credentials, lean.Credentials).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple


#: Headers botocore's SigV4 leaves out of the signature (user-agent among them): botocore.auth's
#: SIGNED_HEADERS_BLACKLIST, written out so that this module needs no botocore (tests/unit/test_sigv4.py holds
#: the two equal).
UNSIGNED = frozenset({"baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
                      "te", "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent",
                      "x-amzn-trace-id"})


def host_header(url: str) -> str:
    """The Host value SigV4 signs for `url`: lower case, the port only when it is not the scheme's default
    (botocore.auth._host_from_url)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class SigV4:
    """AWS Signature Version 4 for S3 requests without a query string, as botocore's S3SigV4Auth signs them."""

    def __init__(self, region: str, service: str = "s3"):
        self.region = region
        self.service = service
        self._keys: Dict[Tuple[str, str], bytes] = {}  # (secret key, day) -> signing key

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 8:  # a long run crosses days, or credentials rotate: keep few
                self._keys.clear()
            self._keys[(secret, day)] = key
        return key

    def sign(self, method: str, path: str, headers: Dict[str, str], payload_sha256: str, credentials,
             timestamp: Optional[str] = None) -> List[Tuple[str, str]]:
        """The headers to send: `headers` (lower-case names, `host` among them) plus x-amz-date,
        x-amz-content-sha256, x-amz-security-token if the credentials have one, and authorization."""
        timestamp = timestamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = dict(headers)
        signed["x-amz-date"] = timestamp
        signed["x-amz-content-sha256"] = payload_sha256
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = sorted(name for name in signed if name not in UNSIGNED)
        canonical = "\n".join([method, path, "", *(f"{name}:{' '.join(signed[name].split())}" for name in names),
                               "", ";".join(names), payload_sha256])
        day = timestamp[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(credentials.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return list(signed.items())
