"""The body of scripts/crt-probe: what AWS's Common Runtime (awscrt's S3Client) would give obsbatch's bytes,
measured the way obsbatch would have to use it, against s5cmd on one local SeaweedFS, runs alternating.

Not obsbatch's engine (yet): a measurement for the decision to move the bytes onto the CRT. The ways it is
used here are the ones obsbatch's promises allow:
- upload from a Python stream, not a file path: the stream checks the file's fstat when its last byte is read
  and raises if it changed, which makes the CRT abort the multipart upload before Complete (nothing stored,
  nothing left in progress); a path would let a write during the upload store a torn object;
- checksums in headers (x-amz-checksum-crc32 per part), not aws-chunked trailers, which some stores refuse;
- credentials through a delegate provider (botocore's chain would sit behind it, refreshable);
- download through on_body into a file the restore opened itself (by directory fd, never by path), hashed
  with SHA-256 as it arrives, as obsbatch verifies every restored byte (and once without the hash, to show its
  share).
Prints medians per variant and the ratio to s5cmd. --part-mib sets the CRT's part size.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from awscrt.auth import AwsCredentials, AwsCredentialsProvider  # noqa: E402
from awscrt.http import HttpHeaders, HttpRequest  # noqa: E402
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup  # noqa: E402
from awscrt.s3 import (S3ChecksumAlgorithm, S3ChecksumConfig, S3ChecksumLocation, S3Client,  # noqa: E402
                       S3RequestTlsMode, S3RequestType)

from obsbatch.testing import seaweed  # noqa: E402

MiB = 1024 * 1024
S5CMD = Path(sys.executable).parent / "s5cmd"


class CheckedFile(io.RawIOBase):
    """A file read by the CRT; when its last judged byte is read, its fstat must be the one it was opened
    with, else the read raises and the CRT abandons the upload."""

    def __init__(self, path: str):
        self.file = open(path, "rb", buffering=0)
        self.judged = os.fstat(self.file.fileno())
        self.left = self.judged.st_size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.file.readinto(buffer)
        self.left -= count
        if self.left <= 0:
            now = os.fstat(self.file.fileno())
            if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (self.judged.st_size, self.judged.st_mtime_ns,
                                                                   self.judged.st_ctime_ns):
                raise OSError("the file changed while it was read")
        return count


class Probe:
    def __init__(self, server, work: Path, part_mib: int, files: int, size_mib: int):
        self.server, self.work = server, work
        self.host = server.endpoint.split("//", 1)[1]
        self.files = []
        for n in range(files):
            path = work / f"big{n}"
            path.write_bytes(os.urandom(size_mib * MiB))
            self.files.append(path)
        loop = EventLoopGroup(0)
        provider = AwsCredentialsProvider.new_delegate(lambda: AwsCredentials(server.access_key, server.secret_key))
        self.client = S3Client(bootstrap=ClientBootstrap(loop, DefaultHostResolver(loop)), region="us-east-1",
                               credential_provider=provider, part_size=part_mib * MiB,
                               tls_mode=S3RequestTlsMode.DISABLED, throughput_target_gbps=10.0,
                               memory_limit=256 * MiB)

    def put(self, prefix: str, location) -> None:
        requests = []
        for path in self.files:
            headers = HttpHeaders([("Host", self.host), ("Content-Length", str(path.stat().st_size))])
            request = HttpRequest("PUT", f"/{self.server.bucket}/{prefix}{path.name}", headers, CheckedFile(str(path)))
            checksum = S3ChecksumConfig(algorithm=S3ChecksumAlgorithm.CRC32, location=location) if location else None
            requests.append(self.client.make_request(type=S3RequestType.PUT_OBJECT, request=request,
                                                     checksum_config=checksum))
        for request in requests:
            request.finished_future.result()

    def get(self, prefix: str, dest: Path, hashed: bool) -> None:
        dest.mkdir()
        directory = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        requests, sinks = [], []
        for path in self.files:
            sink = {"fd": os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=directory),
                    "sha": hashlib.sha256() if hashed else None}

            def on_body(chunk, offset, sink=sink, **_):
                os.pwrite(sink["fd"], chunk, offset)
                if sink["sha"] is not None:
                    sink["sha"].update(chunk)  # in order: the CRT delivers a GET's body parts in sequence

            request = HttpRequest("GET", f"/{self.server.bucket}/{prefix}{path.name}", HttpHeaders([("Host", self.host)]))
            requests.append(self.client.make_request(type=S3RequestType.GET_OBJECT, request=request, on_body=on_body))
            sinks.append(sink)
        for request in requests:
            request.finished_future.result()
        for sink in sinks:
            os.fsync(sink["fd"])
            os.close(sink["fd"])
        os.close(directory)

    def s5cmd(self, *args: str) -> None:
        subprocess.run([str(S5CMD), "--endpoint-url", self.server.endpoint, *args],
                       env=dict(os.environ, **self.server.env()), check=True, capture_output=True)


def measure(variants: list, rounds: int) -> dict:
    """name -> [(wall, cpu)], each round running every variant once, the order rotated per round."""
    runs: dict = {}
    numbered = list(enumerate(variants))
    for round_ in range(rounds):
        for number, (name, run) in numbered[round_ % len(variants):] + numbered[:round_ % len(variants)]:
            before, started = os.times(), time.monotonic()
            run(f"r{round_}-v{number}")  # a key prefix, or a directory name
            after = os.times()
            cpu = sum(after[:4]) - sum(before[:4])
            runs.setdefault(name, []).append((time.monotonic() - started, cpu))
    return runs


def report(title: str, runs: dict) -> None:
    base = statistics.median(wall for wall, _ in runs["s5cmd"])
    print(title)
    for name, values in runs.items():
        wall = statistics.median(w for w, _ in values)
        print(f"  {name:22s} wall {wall:6.2f} s  cpu {statistics.median(c for _, c in values):6.2f} s  "
              f"ratio {wall / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="obsbatch-crt-probe-"))
    server = seaweed.start("backups", str(work / "weed"))
    try:
        probe = Probe(server, work, args.part_mib, args.files, args.size_mib)
        uploads = measure([
            ("s5cmd", lambda prefix: probe.s5cmd("cp", f"{work}/big*", f"s3://{server.bucket}/{prefix}/")),
            ("crt stream, crc header", lambda prefix: probe.put(prefix + "/", S3ChecksumLocation.HEADER)),
            ("crt stream, crc trailer", lambda prefix: probe.put(prefix + "/", S3ChecksumLocation.TRAILER)),
        ], args.rounds)
        report(f"upload {args.files} x {args.size_mib} MiB, CRT part {args.part_mib} MiB", uploads)
        probe.put("source/", S3ChecksumLocation.HEADER)
        downloads = measure([
            ("s5cmd", lambda name: probe.s5cmd("cp", f"s3://{server.bucket}/source/*", f"{work / name}/")),
            ("crt on_body + sha256", lambda name: probe.get("source/", work / name, hashed=True)),
            ("crt on_body, no hash", lambda name: probe.get("source/", work / name, hashed=False)),
        ], args.rounds)
        report("download the same", downloads)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
