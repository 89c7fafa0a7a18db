"""Start and stop moto's standalone S3 server (`moto_server`, from the PyPI package moto[server]) on loopback.

A second S3 implementation with other quirks than SeaweedFS: it accepts Object Lock headers on
CreateMultipartUpload and ignores them (the quirk obsbatch's lock read-back exists for), while honouring
PutObjectRetention and PutObjectLegalHold. Never moto's in-process `mock_aws`: obsbatch's workers are
other processes and talk HTTP, as they would to any store.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from obsbatch.testing.seaweed import ACCESS_KEY, SECRET_KEY, LocalS3, _die_with_parent, free_ports, installed_binary


@dataclass
class MotoServer(LocalS3):
    endpoint: str
    process: subprocess.Popen
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY


def start(log_path: Path, timeout: float = 60.0) -> MotoServer:
    """moto_server on a free loopback port, its output in `log_path`; returns once it answers."""
    (port,) = free_ports(1)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([installed_binary("moto_server", "moto[server]"), "-H", "127.0.0.1", "-p", str(port)], stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    server = MotoServer(f"http://127.0.0.1:{port}", process)
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}; see {log_path}")
        try:
            client.list_buckets()
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not answer within {timeout}s; see {log_path}") from None
            time.sleep(0.2)
