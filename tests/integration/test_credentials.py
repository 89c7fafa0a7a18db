"""Credentials that expire mid-run (an instance role, SSO, an assumed role on a 12-hour backup) are renewed as
botocore renews them, by every process of the run: here a credential_process whose first key's expiration
enters botocore's refresh window three seconds into the run, after which it hands out a second key."""

from __future__ import annotations

import sys
import time

from obsbatch.testing import seaweed
from tests.conftest import run_obsbatch, server_args

PROCESS = """
import datetime, json, sys, time
start, calls = float(sys.argv[1]), sys.argv[2]
now = time.time()
# botocore refreshes credentials whose expiration is less than 15 minutes away (its advisory window): the
# first key enters that window 3 s after `start`; the key handed out after that lasts an hour.
first = now < start + 3
expires = start + 3 + 15 * 60 if first else now + 3600
with open(calls, "a") as log:
    log.write("first\\n" if first else "second\\n")
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[3] if first else sys.argv[5],
                  "SecretAccessKey": sys.argv[4] if first else sys.argv[6],
                  "Expiration": datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).isoformat()}))
"""


def test_a_credential_that_expires_mid_run_is_renewed_and_every_file_lands(tmp_path, s3server, prefix, proxy):
    source = tmp_path / "src"
    source.mkdir()
    for n in range(60):
        (source / f"f{n:02d}").write_bytes(b"x" * (100 + n))
    script, calls, config = tmp_path / "credentials.py", tmp_path / "calls", tmp_path / "aws-config"
    script.write_text(PROCESS)
    start = time.time()
    config.write_text("[default]\ncredential_process = " + " ".join(map(str, [
        sys.executable, script, start, calls, seaweed.ACCESS_KEY, seaweed.SECRET_KEY, seaweed.ROTATED_KEY,
        seaweed.ROTATED_SECRET])) + "\n")
    # No key in the environment (tests.conftest.clean_env): the profile's credential_process is the only source. --max-rps spreads the
    # 60 files over about 6 s, so requests go out on both sides of the refresh.
    env = {"AWS_CONFIG_FILE": str(config)}
    result = run_obsbatch("--source", source, *server_args(s3server, prefix, endpoint=proxy.endpoint),
                          "--max-rps", "10", env=env)
    assert result.returncode == 0 and result.summary["uploaded"] == 60, result
    assert time.time() - start > 4, "the run ended before the first key's refresh window"
    signers = proxy.signed_by
    assert signers[0] == seaweed.ACCESS_KEY and signers[-1] == seaweed.ROTATED_KEY, signers
    assert set(signers) == {seaweed.ACCESS_KEY, seaweed.ROTATED_KEY}
    handed = calls.read_text().split()
    assert "first" in handed and "second" in handed, handed
    assert seaweed.SECRET_KEY not in result.stderr + result.stdout
    assert seaweed.ROTATED_SECRET not in result.stderr + result.stdout
