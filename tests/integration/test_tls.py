"""TLS verification against a real handshake: a TLS front with a self-signed certificate before SeaweedFS."""

import os
import shutil

import pytest

from tests.conftest import make_tree, objects, run_obsbatch
from obsbatch.testing.tlsfront import TLSFront, make_certificate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")


@pytest.fixture
def front(tmp_path, s3server):
    cert, key = make_certificate(tmp_path)
    server = TLSFront(s3server.endpoint, cert, key)
    server.cert = cert
    yield server
    server.close()


def _args(src, s3server, prefix, endpoint):
    return ("--source", src, "--bucket", s3server.bucket, "--prefix", prefix, "--endpoint", endpoint,
            "--region", "us-east-1", "--addressing-style", "path", "--retries", "1", "--http-timeout", "5")


def test_an_untrusted_certificate_is_refused_by_default(tmp_path, s3, s3server, prefix, front):
    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"a"})
    result = run_obsbatch(*_args(src, s3server, prefix, front.endpoint), env=s3server.env())
    assert result.returncode == 2, result
    [fatal] = result.find("run.fatal")
    assert "certificate verify failed" in fatal["error"] and "Traceback" not in result.stderr
    assert objects(s3, s3server.bucket, prefix) == {}


def test_ca_bundle_trusts_it_and_every_upload_path_uses_it(tmp_path, s3, s3server, prefix, front):
    src = tmp_path / "src"
    files = make_tree(src, {"a.txt": b"a", "big.bin": b"b" * (6 * 1024 * 1024)})  # single PUT and multipart
    result = run_obsbatch(*_args(src, s3server, prefix, front.endpoint), "--ca-bundle", front.cert,
                          "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB", env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == files
    assert not result.find("tls.unverified")


def test_no_verify_ssl_works_and_warns_loudly_once(tmp_path, s3, s3server, prefix, front):
    src = tmp_path / "src"
    files = make_tree(src, {f"f{i}.txt": b"x" for i in range(5)})
    result = run_obsbatch(*_args(src, s3server, prefix, front.endpoint), "--no-verify-ssl", env=s3server.env())
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == files
    assert len(result.find("tls.unverified")) == 1
    assert all(line.startswith("{") for line in result.stderr.splitlines()), result.stderr  # no urllib3 noise


def test_ca_bundle_and_no_verify_ssl_together_are_a_usage_error(tmp_path, front):
    result = run_obsbatch("--source", tmp_path, "--bucket", "b", "--ca-bundle", front.cert, "--no-verify-ssl")
    assert result.returncode == 2 and "contradict" in result.stderr, result


def test_a_store_that_refuses_trailing_checksums_gets_none_by_default(tmp_path, s3, s3server, prefix, proxy):
    """Over https botocore >= 1.36 sends PutObject and UploadPart bodies aws-chunked with a trailing CRC, which
    some stores (Huawei OBS, older Ceph RGW) refuse with 400. obsbatch's default --checksum-mode when_required
    sends none (every PUT and part carries its Content-MD5 instead), through the lean PUT and the multipart
    parts alike. Behind TLS here sits the fault proxy refusing any aws-chunked or x-amz-trailer request; it
    proves it can: --checksum-mode when_supported meets the refusal."""
    cert, key = make_certificate(tmp_path)
    tls = TLSFront(proxy.endpoint, cert, key)
    try:
        files = make_tree(tmp_path / "src", {"small.txt": b"small", "big.bin": os.urandom(6 * 1024 * 1024)})
        proxy.refuse_trailers = True
        env = dict(s3server.env(), AWS_CA_BUNDLE=str(cert))
        args = ("--no-state", "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB")
        plain = run_obsbatch(*_args(tmp_path / "src", s3server, prefix + "default/", tls.endpoint), *args, env=env)
        assert plain.returncode == 0 and plain.summary["uploaded"] == 2, plain
        assert proxy.trailers_refused == 0 and objects(s3, s3server.bucket, prefix + "default/") == files
        trailing = run_obsbatch(*_args(tmp_path / "src", s3server, prefix + "crc/", tls.endpoint), *args,
                                "--checksum-mode", "when_supported", env=env)
        assert proxy.trailers_refused > 0 and trailing.returncode == 1, trailing
    finally:
        tls.close()
