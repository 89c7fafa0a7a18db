"""restore and verify on the backup's engine (issue #18): the same pool, pace and stop.

--bwlimit and --max-rps govern them as they govern a backup (a floor on the time, never a ceiling; a
throttling server that refuses a burst is kept under its limit), and a verify stopped by SIGTERM drains the
checks in flight and exits 143 with every object counted once, checked or not (of what it took from the listing).
"""

import os
import signal
import subprocess
import time

import pytest

from obsbatch.testing.faultproxy import Fault, Throttle
from tests.conftest import REPO, finish, make_tree, obsbatch_cmd, run_command, run_obsbatch, server_args


@pytest.fixture
def backed_up(tmp_path, s3server, prefix):
    """12 objects of 256 KiB, backed up under `prefix`."""
    src = tmp_path / "src"
    files = make_tree(src, {f"f{i:02d}.bin": os.urandom(256 * 1024) for i in range(12)})
    assert run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state",
                        env=s3server.env()).returncode == 0
    return files


@pytest.mark.slow
@pytest.mark.parametrize("command", ["restore", "verify"])
def test_bwlimit_holds_restore_and_verify_to_their_rate(tmp_path, s3server, prefix, backed_up, command):
    """1 MiB/s over 3 MiB of response bodies: at least ~3 s, whatever the concurrency."""
    args = (["--target", tmp_path / "restored"] if command == "restore" else ["--read-data", "100"])
    started = time.monotonic()
    result = run_command(command, *args, *server_args(s3server, prefix), "--bwlimit", "1M", "--max-concurrent", "16",
                         env=s3server.env())
    took = time.monotonic() - started
    assert result.returncode == 0, result
    moved = result.summary["bytes_restored"] if command == "restore" else result.summary["bytes_read"]
    assert moved == 12 * 256 * 1024, result.summary
    assert took >= 3.0 * 0.95, took


@pytest.mark.slow
@pytest.mark.parametrize("command", ["restore", "verify"])
def test_max_rps_keeps_restore_and_verify_under_a_throttling_servers_limit(tmp_path, s3server, prefix, backed_up,
                                                                          proxy, command):
    proxy.throttle = Throttle(rate=20, burst=5)  # S3's "reduce your request rate": 503 SlowDown beyond it
    args = [*server_args(s3server, prefix, proxy.endpoint), "--retries", "0", "--max-concurrent", "16"]

    def run(name, *extra):
        # verify --listing: one HEAD per object (a snapshot's verify proves these by one listing request).
        own = ["--target", tmp_path / name] if command == "restore" else ["--listing"]
        return run_command(command, *own, *args, *extra, env=s3server.env())

    burst = run("burst")
    assert burst.returncode == 1 and burst.summary["failed"] > 0, burst
    refused = proxy.throttle.refused
    paced = run("paced", "--max-rps", "8")
    assert paced.returncode == 0, paced
    assert proxy.throttle.refused == refused, "throttled although paced"


@pytest.mark.serial
@pytest.mark.slow
def test_a_verify_stopped_by_sigterm_drains_and_counts_what_it_took(tmp_path, s3server, prefix, proxy):
    src = tmp_path / "src"
    total = 150
    make_tree(src, {f"f{i:03d}": b"x" * 100 for i in range(total)})
    assert run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state",
                        env=s3server.env()).returncode == 0
    proxy.add(Fault(method="HEAD", action="hold", delay=0.05, times=None))  # a far store: 50 ms per check
    env = dict(os.environ, **s3server.env(), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(obsbatch_cmd("verify", "--listing", *server_args(s3server, prefix, proxy.endpoint),
                                         "--max-concurrent", "2", "--summary", "json", "--log-format", "json"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    deadline = time.monotonic() + 60
    while proxy.count("HEAD", ".", "held") < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=60)
    assert result.returncode == 143, result
    assert "Traceback" not in result.stderr
    summary = result.summary
    # The checks in flight finished (drained), the rest of what was taken was counted as not checked; objects
    # the listing had not reached yet are for the next verify.
    assert summary["checked"] >= 10 and summary["interrupted"] > 0, summary
    assert summary["checked"] == summary["ok"], summary
    assert summary["checked"] + summary["interrupted"] <= total, summary
    assert summary["checked"] <= proxy.count("HEAD", ".", "held"), summary
