"""A fleet into one distributed store (issue #22): SeaweedFS as separate processes (obsbatch.testing.cluster:
a master replicating every volume on two servers, three volume servers, a filer, two S3 gateways), several
hosts' runs at once, and storage nodes failing under them."""

from __future__ import annotations

import json
import os
import time

import pytest

from obsbatch.testing import cluster as weed_cluster
from tests.conftest import finish, make_tree, objects, run_obsbatch, start_obsbatch

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = weed_cluster.start("fleet", str(tmp_path_factory.mktemp("cluster")))
    yield started
    started.stop()


def host_args(cluster, index: int, source, state, gateway: int) -> list:
    return ["--source", source, "--bucket", cluster.bucket, "--prefix", f"host{index}/", "--endpoint",
            cluster.gateways[gateway].endpoint, "--region", "us-east-1", "--addressing-style", "path",
            "--state", state, "--host-id", f"host{index}", "--http-timeout", "5", "--retries", "3",
            "--multipart-threshold", "5MiB", "--multipart-chunksize", "5MiB"]


def stored_by_each(client, bucket: str, runs: list, at_least: int, timeout: float = 60) -> None:
    """Return once every host's prefix holds `at_least` objects (its run is that far along), or a run ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [client.list_objects_v2(Bucket=bucket, Prefix=f"host{i}/").get("KeyCount", 0) for i in range(len(runs))]
        if all(count >= at_least for count in counts) or any(run.poll() is not None for run in runs):
            return
        time.sleep(0.1)
    pytest.fail(f"the runs did not get {at_least} objects each stored within {timeout} s: {counts}")


def test_what_one_gateway_stores_every_other_reads(cluster):
    first, second = (gateway.client() for gateway in cluster.gateways)
    first.put_object(Bucket=cluster.bucket, Key="across", Body=b"one store")
    assert second.get_object(Bucket=cluster.bucket, Key="across")["Body"].read() == b"one store"


@pytest.mark.slow
def test_four_hosts_at_once_through_a_dying_volume_server_and_a_restarting_gateway_lose_nothing(tmp_path, cluster):
    """Four runs at once (own sources, prefixes and journals; two through each gateway) into one bucket. A
    volume server is SIGKILLed mid-run, then a gateway is killed mid-run and started again. Every run ends on
    its own, exit 0 or 1, no traceback; a rerun of each exits 0; a read-back through the other gateway finds
    every file whole."""
    hosts = []
    for index in range(4):
        source = tmp_path / f"host{index}"
        files = make_tree(source, {f"d{n % 6}/f{n}.bin": os.urandom(1000 + 37 * n) for n in range(160)})
        if index % 2 == 0:  # multipart uploads too: their parts and aborts meet the faults
            files.update(make_tree(source, {"big.bin": os.urandom(11 * MiB)}))
        hosts.append((source, files, tmp_path / f"state{index}.db", index % 2))
    env = cluster.gateways[0].env()
    runs = [start_obsbatch(*host_args(cluster, i, source, state, gateway), "--max-rps", 30, env=env)
            for i, (source, _, state, gateway) in enumerate(hosts)]
    watcher = cluster.gateways[0].client()
    stored_by_each(watcher, cluster.bucket, runs, at_least=25)  # every run is uploading (~1 s of ~6)
    cluster.volumes[0].kill()  # a storage node dies, and stays dead
    stored_by_each(watcher, cluster.bucket, runs, at_least=70)
    cluster.restart_gateway(1, down_for=1.0)  # the runs through gateway 1 lose it for a while
    during = [finish(run, timeout=240) for run in runs]
    faults_seen = 0
    for result, (_, files, _, _) in zip(during, hosts):
        assert "Traceback" not in result.stderr and result.returncode in (0, 1), result
        summary = result.summary
        assert summary["uploaded"] + summary["failed"] - summary["failed_by_type"].get("SnapshotUpload", 0) \
            == len(files), result
        faults_seen += summary["retries"] + summary["failed"]
    assert faults_seen > 0, [r.summary for r in during]  # the faults landed under the runs

    again = [run_obsbatch(*host_args(cluster, i, source, state, gateway), env=env, timeout=240)
             for i, (source, _, state, gateway) in enumerate(hosts)]
    for result in again:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result
    for i, (_, files, _, gateway) in enumerate(hosts):
        other = cluster.gateways[1 - gateway].client()
        stored = objects(other, cluster.bucket, f"host{i}/")
        assert stored == files, sorted(set(stored) ^ set(files))  # 0 lost, 0 torn
        assert other.list_multipart_uploads(Bucket=cluster.bucket, Prefix=f"host{i}/").get("Uploads", []) == []
    # The fleet view, through either gateway, sees the four hosts' latest snapshots.
    from tests.conftest import run_command

    listed = run_command("snapshots", "--bucket", cluster.bucket, "--endpoint", cluster.gateways[0].endpoint,
                         "--region", "us-east-1", "--addressing-style", "path", "--all", "--json", env=env)
    assert listed.returncode == 0, listed
    rows = json.loads(listed.stdout.strip().splitlines()[0])
    assert [(row["host"], row["exit_code"]) for row in rows] == [(f"host{i}", 0) for i in range(4)]
    print(f"\ncluster fault run: {sum(len(files) for _, files, _, _ in hosts)} files, first runs "
          f"{[r.returncode for r in during]} (retries {[r.summary['retries'] for r in during]}, failed "
          f"{[r.summary['failed'] for r in during]}), reruns {[r.summary['uploaded'] for r in again]} uploaded, "
          "0 lost, 0 torn")
