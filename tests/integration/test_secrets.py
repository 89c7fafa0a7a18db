"""Credentials never leave obsbatch through its outputs: logs, summary, manifest, telemetry (issue #6).

Each case runs obsbatch at the most verbose log level, with a manifest and telemetry on, and searches every
byte it wrote for the secret: stdout, stderr, the manifest file, and the raw OTLP requests.
"""

import base64
import hashlib
import os

import pytest

from tests.conftest import make_tree, run_obsbatch, server_args
from obsbatch.testing import otlp, seaweed
from obsbatch.testing.faultproxy import Fault

TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE-session-token-7f3a9c"
WRONG_SECRET = "wrong-secret-that-must-not-leak-4d2b"


@pytest.mark.parametrize("case", ["ok-with-a-failure", "rejected-secret", "session-token", "sse-c-key"])
def test_no_output_carries_a_secret(tmp_path, s3server, prefix, proxy, case):
    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"a", "denied.txt": b"d"})
    proxy.add(Fault(method="PUT", path=r"denied\.txt", action="status", status=403, code="AccessDenied", times=None))
    env = dict(s3server.env())
    secrets = [seaweed.SECRET_KEY]
    if case == "rejected-secret":
        env["AWS_SECRET_ACCESS_KEY"] = WRONG_SECRET
        secrets = [WRONG_SECRET]
    if case == "session-token":
        env["AWS_SESSION_TOKEN"] = TOKEN
        secrets.append(TOKEN)
    extra = []
    if case == "sse-c-key":  # issue #13: the SSE-C key, in every form it travels in
        key = os.urandom(32)
        (tmp_path / "sse-c.key").write_bytes(key)
        extra = ["--sse-c-key-file", tmp_path / "sse-c.key", "--verify-after-upload"]
        secrets += [base64.b64encode(key).decode(), key.hex(), base64.b64encode(hashlib.md5(key).digest()).decode()]
    receiver = otlp.Receiver()
    manifest = tmp_path / "run.jsonl"
    try:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        result = run_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--debug", "trace",
                              "--manifest", manifest, "--state", tmp_path / "state.db", *extra, env=env)
        requests = [r.SerializeToString() for r in receiver.traces + receiver.metrics]
    finally:
        receiver.close()
    expected = {"ok-with-a-failure": 1, "rejected-secret": 2, "sse-c-key": 1}.get(case)
    if expected is not None:
        assert result.returncode == expected, result
    else:
        assert result.returncode in (0, 1, 2), result  # whatever the server makes of the token
    assert result.stderr and (case == "rejected-secret" or requests)  # there was output to search
    outputs = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode(),
               "manifest": manifest.read_bytes() if manifest.exists() else b"",
               **{f"otlp[{i}]": body for i, body in enumerate(requests)}}
    for secret in secrets:
        leaks = [name for name, data in outputs.items() if secret.encode() in data]
        assert not leaks, f"{secret[:6]}... found in {leaks}"
