"""PutObject without botocore, for the parent's own records (issue #20): a run with nothing to upload sends one
request, its snapshot record, and importing botocore and building a client for it cost the parent ~0.4 s,
more than the rest of a no-op run over 20,000 files (its walk, journal and snapshot together).

It is used only where it is known to be botocore's request exactly, and anything it does not know falls back
to botocore:
- the URL: botocore's own, learned by an earlier run or by this run's pre-flight in its worker
  (Remote.learned_base: the presigned URL of a probe key, kept in the journal per endpoint, bucket,
  addressing style and region), so addressing style and endpoint rules stay botocore's decisions;
- the signature: obsbatch.s3.sigv4, held equal to botocore's by tests/unit/test_sigv4.py;
- credentials: only static keys from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and
  AWS_SESSION_TOKEN if set), which botocore's chain would take first too; any other source (a profile, an
  instance role, SSO) goes through botocore;
- transport: http.client with --http-timeout and the same TLS trust (--ca-bundle, AWS_CA_BUNDLE, botocore's
  certifi bundle, or --no-verify-ssl); no proxy (a proxy variable in the environment means botocore);
- retries: up to --retries on a refused or reset connection, a timeout, HTTP 500/502/503/504 and S3's
  throttling and timeout codes, with exponential backoff and jitter, as botocore's standard mode.
Any failure it cannot retry away raises LeanFailed, and the caller sends the request through botocore.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Mapping, Optional

from obsbatch.s3.sigv4 import SigV4, host_header

#: S3 error codes botocore's standard retry mode retries (besides 5xx and transport faults).
_RETRIED_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                            "InternalError", "ServiceUnavailable"})
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class LeanFailed(Exception):
    """The request did not succeed here; send it through botocore (which will say why, if it fails too)."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: Optional[str]

    def __repr__(self) -> str:  # never the secret, should one ever be printed
        return f"Credentials(access_key={self.access_key[:4]}...)"


class LeanPut:
    """PUTs to one bucket's base URL (botocore's, learned: ends with '/', the key follows)."""

    def __init__(self, base: str, region: str, credentials: Credentials, verify, timeout: float, attempts: int):
        parts = urllib.parse.urlsplit(base)
        self._scheme, self._netloc, self._path_base = parts.scheme, parts.netloc, parts.path
        self._host = host_header(base)
        self._signer = SigV4(region)
        self._credentials = credentials
        self._verify = verify
        self._timeout = timeout
        self._attempts = attempts
        #: One connection for every PUT of the run, kept alive (a snapshot's pack, then its record): a second
        #: TCP (and TLS) handshake would cost the far store's round trip once more (issue #21).
        self._connection: Optional[http.client.HTTPConnection] = None

    @classmethod
    def usable(cls, learned: Optional[tuple], region: Optional[str], verify, timeout: float, retries: int,
               environ: Mapping[str, str]) -> Optional["LeanPut"]:
        """A LeanPut where it would send botocore's request exactly, else None.

        learned: (base URL, region) a botocore client resolved for this endpoint, bucket and addressing style
        (journal); region: --region, which must agree; verify: the endpoint's (s3.endpoint.Endpoint.verify).
        """
        if learned is None or any(environ.get(name) for name in _PROXY_VARIABLES):
            return None
        base, learned_region = learned
        if region and region != learned_region:
            return None
        access, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            return None
        if verify is None:
            verify = environ.get("AWS_CA_BUNDLE") or None
        return cls(base, learned_region, Credentials(access, secret, environ.get("AWS_SESSION_TOKEN") or None),
                   verify, timeout, retries + 1)

    def put(self, key: str, body, size: int, md5_b64: str, sha256_hex: str, object_headers: Mapping[str, str]) -> None:
        """Store `body` (bytes, or a seekable file of `size` bytes) at `key`; LeanFailed if it could not."""
        path = self._path_base + urllib.parse.quote(key, safe="/~")  # botocore's quoting of {Key+}
        headers = {"host": self._host, "content-length": str(size), "content-md5": md5_b64,
                   **{name.lower(): value for name, value in object_headers.items()}}
        start = body.tell() if hasattr(body, "seek") else 0
        for attempt in range(1, self._attempts + 1):
            if hasattr(body, "seek"):
                body.seek(start)
            signed = self._signer.sign("PUT", path, headers, sha256_hex, self._credentials)
            try:
                status, code = self._send(path, signed, body)
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS
                status, code = 0, type(exc).__name__
            if 200 <= status < 300:
                return
            if not (status == 0 or status >= 500 or code in _RETRIED_CODES) or attempt == self._attempts:
                raise LeanFailed(f"{code or 'HTTP'} (HTTP {status}) after {attempt} attempts")
            time.sleep(min(20.0, random.random() * 2 ** attempt * 0.05))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _send(self, path: str, signed, body) -> tuple:
        """(status, S3 error code or "") of one request. Any failure closes the connection (the next attempt
        opens a new one), as does a response that asks for it (http.client then reconnects by itself)."""
        if self._connection is None:
            if self._scheme == "https":
                self._connection = http.client.HTTPSConnection(self._netloc, timeout=self._timeout,
                                                               context=_tls(self._verify))
            else:
                self._connection = http.client.HTTPConnection(self._netloc, timeout=self._timeout)
        connection = self._connection
        try:
            connection.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
            for name, value in signed:
                connection.putheader(name, value)
            connection.endheaders()
            if isinstance(body, (bytes, bytearray, memoryview)):
                connection.send(body)
            else:
                for block in iter(lambda: body.read(1 << 20), b""):
                    connection.send(block)
            response = connection.getresponse()
            content = response.read()
        except BaseException:
            self.close()
            raise
        match = re.search(rb"<Code>([^<]{1,100})</Code>", content) if response.status >= 300 else None
        return response.status, match.group(1).decode("ascii", "replace") if match else ""


def _tls(verify) -> ssl.SSLContext:
    """botocore's trust without botocore: None means its default, certifi's bundle where it is installed."""
    if verify is None:
        try:
            import certifi
        except ImportError:
            return ssl.create_default_context()
        verify = certifi.where()
    return trust(verify)


def trust(verify) -> ssl.SSLContext:
    """An SSLContext for a resolved `verify`: False (--no-verify-ssl), or a CA bundle file or directory (also
    http1.tls_context's, once botocore has resolved its default)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)
