"""Shared fixtures: a clean environment for every test, one real SeaweedFS per session, a fault proxy,
and helpers to build trees and run obsbatch as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from obsbatch.testing import faultproxy, motoserver, otlp, seaweed
from obsbatch.testing.holders import Holder

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """scripts/test's two phases: TEST_PHASE=parallel leaves out the tests marked serial (they time a signal
    against requests held for seconds, and three test processes on two cores delayed a signal past the hold
    now and then), TEST_PHASE=serial runs only them; unset, every test runs (plain pytest)."""
    phase = os.environ.get("TEST_PHASE", "")
    if phase not in ("parallel", "serial"):
        return
    wanted = [item for item in items if (item.get_closest_marker("serial") is not None) == (phase == "serial")]
    config.hook.pytest_deselected(items=[item for item in items if item not in wanted])
    items[:] = wanted


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """No test sees the developer's or CI's AWS, obsbatch or OpenTelemetry settings, nor their state."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "OBSBATCH_", "OTEL_")) or name in ("STATE_DIRECTORY", "NOTIFY_SOCKET",
                                                                      "WATCHDOG_USEC", "WATCHDOG_PID"):
            monkeypatch.delenv(name)
    # The default state journal lives under XDG_STATE_HOME: a fresh one per test, never ~/.local/state.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    # boto3 must not find ~/.aws of whoever runs the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # The gate judges a file by its ctime too (issue #19), which the kernel sets to now on every change and
    # which nothing can set back: every file a test makes is "changed a moment ago". So the backups a test
    # runs take files at once; a test of the age rule gives --min-age itself (the command line beats this),
    # and makes its old files that much earlier (settled()).
    monkeypatch.setenv("OBSBATCH_MIN_AGE", "0")


@pytest.fixture(scope="session")
def s3server(tmp_path_factory):
    server = seaweed.start("backups", str(tmp_path_factory.mktemp("weed")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """moto's standalone S3 server: a second implementation, with other quirks (obsbatch.testing.motoserver)."""
    server = motoserver.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def versioned(s3server):
    """A bucket with versioning on, beside the session's unversioned one (issue #20): its name."""
    client = s3server.client()
    client.create_bucket(Bucket="backups-versioned")
    client.put_bucket_versioning(Bucket="backups-versioned", VersioningConfiguration={"Status": "Enabled"})
    return "backups-versioned"


@pytest.fixture
def s3(s3server):
    return s3server.client()


@pytest.fixture
def receiver():
    """A real OTLP/HTTP receiver on a free loopback port (obsbatch.testing.otlp)."""
    r = otlp.Receiver()
    yield r
    r.close()


@pytest.fixture
def prefix():
    """A fresh key prefix per test, so tests share the server but never each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def holder():
    """holder((path, flags), ...) -> a started Holder; every one is stopped after the test."""
    started = []

    def start(*path_flags) -> Holder:
        started.append(Holder(*path_flags))
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.fixture
def proxy(s3server):
    with faultproxy.FaultProxy(s3server.endpoint) as p:
        yield p


def age(path, seconds: float = 3600) -> None:
    """Backdate a file's mtime (its ctime stays now: see clean_env, and settled())."""
    old = time.time() - seconds
    os.utime(path, (old, old))


def write_tree(root, files: dict) -> None:
    """Create files {relative path (bytes, any name the kernel takes): bytes} under `root`, as they are."""
    root_b = os.fsencode(root)
    for rel, data in files.items():
        path = os.path.join(root_b, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


#: --min-age of the tests of the age rule: their old files are made this long before the run (settled), their
#: new one just before it, and the run must judge it within this time of its writing. Five seconds, not three:
#: with the suite's workers in parallel on two cores, a run's start took more than three now and then.
AGE_RULE = 5


def settled(min_age: float = 1.0) -> None:
    """Wait until every file made so far is older than `min_age` by its ctime too, which no call can set back:
    a test of the age rule makes its old files, calls this, makes its new ones, and runs with --min-age."""
    time.sleep(min_age + 0.1)


def backdated(st: os.stat_result, seconds: float = 3600) -> os.stat_result:
    """`st` as if its file had last changed `seconds` ago, mtime and ctime: for tests that call the gate
    directly (the kernel's ctime itself cannot be set back)."""
    ns = time.time_ns() - int(seconds * 1e9)
    whole = list(st[:10])
    whole[8] = whole[9] = ns // 10 ** 9  # st_mtime, st_ctime (int)
    return os.stat_result(whole + [st.st_atime, ns / 1e9, ns / 1e9, st.st_atime_ns, ns, ns,
                                   st.st_blksize, st.st_blocks, st.st_rdev])


def make_tree(root: Path, files: dict, old: bool = True) -> dict:
    """Create files {relative path: bytes}; return the same mapping."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if old:
            age(path)
    return files


def objects(s3, bucket: str, prefix: str) -> dict:
    """{key without prefix: bytes} of everything under prefix."""
    out = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix):]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


class Result:
    """A finished obsbatch run: exit code, --summary json from stdout, JSON log events from stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.events = []
        for line in stderr.splitlines():
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    @property
    def summary(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])

    def find(self, event: str, **match) -> list:
        return [e for e in self.events if e.get("event") == event and all(e.get(k) == v for k, v in match.items())]

    def __repr__(self):
        return f"<exit {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr[-4000:]}>"


def obsbatch_cmd(*args) -> list:
    return [sys.executable, "-m", "obsbatch", *map(str, args)]


# Root without these capabilities meets the kernel's ordinary permission checks: a mode-000 directory is
# unreadable and another user's /proc/<pid>/fd is hidden. (Dropping to another uid is not possible here:
# the interpreter may live under a 0700 home, and the pool's fork server must exec it.)
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-sys_ptrace"]


def _command(args, env: dict | None, unprivileged: bool) -> tuple[list, dict]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO)
    cmd = obsbatch_cmd(*args, "--summary", "json", "--log-format", "json")
    return (UNPRIVILEGED + cmd if unprivileged else cmd), full_env


def start_obsbatch(*args, env: dict | None = None, new_session: bool = False) -> subprocess.Popen:
    """Start obsbatch and return at once, for tests that act while it runs (signals, writers, kill -9).

    new_session: its own process group, so a test can kill it with its workers and fork server at once.
    """
    cmd, full_env = _command(args, env, unprivileged=False)
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO), start_new_session=new_session)


def finish(proc: subprocess.Popen, timeout: float = 60) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return Result(proc.returncode, out, err)


def run_obsbatch(*args, env: dict | None = None, timeout: float = 120, unprivileged: bool = False) -> Result:
    """Run obsbatch as a real process (JSON logs on stderr, --summary json on stdout)."""
    cmd, full_env = _command(args, env, unprivileged)
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_command(command: str, *args, env: dict | None = None, timeout: float = 120) -> Result:
    """Run `obsbatch restore|verify ...` as a real process (JSON logs on stderr, --summary json on stdout)."""
    full_env = dict(os.environ, **(env or {}), PYTHONPATH=str(REPO))
    proc = subprocess.run(obsbatch_cmd(command, *args, "--summary", "json", "--log-format", "json"), env=full_env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    return Result(proc.returncode, proc.stdout, proc.stderr)


def server_args(server, prefix: str, endpoint: str | None = None, bucket: str | None = None) -> list:
    return ["--bucket", bucket or server.bucket, "--prefix", prefix, "--endpoint", endpoint or server.endpoint,
            "--region", "us-east-1", "--addressing-style", "path"]
