"""The lean PUT's SigV4 signer against botocore's own S3SigV4Auth: the same Authorization, header for header."""

import datetime
import hashlib
import types
import urllib.parse

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from obsbatch.s3.sigv4 import UNSIGNED, SigV4, host_header


@pytest.mark.parametrize("url", ["http://127.0.0.1:8333/bucket/", "https://bucket.s3.eu-central-1.amazonaws.com/",
                                 "https://obs.ru-moscow-1.hc.sbercloud.ru:443/bucket/", "http://[::1]:9000/b/",
                                 "https://MinIO.Example:9000/b/"])
@pytest.mark.parametrize("token", [None, "session-token/with+odd=chars"])
@pytest.mark.parametrize("key", ["a.txt", "dir/sub dir/naïve + 100%25.bin", "~tilde/(x)'y'*z"])
def test_signature_is_botocores(monkeypatch, url, token, key):
    credentials = botocore.credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b"payload bytes"
    sha = hashlib.sha256(body).hexdigest()
    path = urllib.parse.urlsplit(url).path + urllib.parse.quote(key, safe="/~")
    headers = {"host": host_header(url), "content-length": str(len(body)), "content-md5": "XrY7u+Ae7tCTyyK7j1rNww==",
               "user-agent": "obsbatch/0 Botocore/1", "x-amz-meta-sha256": sha, "x-amz-meta-note": "  two   spaces "}

    ours = dict(SigV4("eu-central-1").sign("PUT", path, headers, sha, credentials, timestamp="20261201T120000Z"))

    _freeze_botocores_clock(monkeypatch, datetime.datetime(2026, 12, 1, 12, 0, 0))
    origin = url[:url.index("/", 8)]
    request = botocore.awsrequest.AWSRequest("PUT", origin + path, data=body,
                                             headers={k: v for k, v in headers.items() if k != "host"})
    request.context["payload_signing_enabled"] = True
    auth = botocore.auth.S3SigV4Auth(credentials, "s3", "eu-central-1")
    auth.payload = lambda request: sha
    auth.add_auth(request)
    theirs = {k.lower(): v for k, v in request.headers.items()}

    assert ours["authorization"] == theirs["authorization"]
    for name in ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token"):
        assert ours.get(name) == theirs.get(name), name


def test_the_signing_key_is_derived_once_a_day():
    signer = SigV4("us-east-1")
    creds = botocore.credentials.Credentials("AK", "SECRET", None)
    headers = {"host": "h", "content-length": "0"}
    first = dict(signer.sign("PUT", "/b/k", headers, "e3b0", creds, timestamp="20261201T000001Z"))
    signer.sign("PUT", "/b/k", headers, "e3b0", creds, timestamp="20261201T235959Z")
    assert len(signer._keys) == 1
    again = dict(signer.sign("PUT", "/b/k", headers, "e3b0", creds, timestamp="20261201T000001Z"))
    assert again["authorization"] == first["authorization"]
    signer.sign("PUT", "/b/k", headers, "e3b0", creds, timestamp="20261202T000000Z")
    assert len(signer._keys) == 2


def test_the_headers_left_unsigned_are_botocores():
    """obsbatch.s3.sigv4 writes botocore's list out (it must not import botocore): the two must agree on
    every header; an older botocore (1.36) knew fewer, all of them hop-by-hop or tracing headers that
    obsbatch never sends."""
    theirs = frozenset(botocore.auth.SIGNED_HEADERS_BLACKLIST)
    assert theirs <= UNSIGNED
    assert UNSIGNED - theirs <= {"baggage", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                                 "te", "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade"}


def _freeze_botocores_clock(monkeypatch, now: datetime.datetime) -> None:
    """botocore's signer reads the time through auth.get_current_datetime (newer botocore) or
    auth.datetime.datetime.utcnow (1.36, the oldest obsbatch allows)."""
    if hasattr(botocore.auth, "get_current_datetime"):
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
        return

    class Frozen(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return now

    monkeypatch.setattr(botocore.auth, "datetime", types.SimpleNamespace(datetime=Frozen))
