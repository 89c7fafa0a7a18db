"""The fleet view at scale (issue #22): `obsbatch snapshots --all` over --hosts hosts (default 1,000) with
--snapshots snapshot records each (default 365), generated, in a local SeaweedFS.

Each host gets its prefix `fleet/<host>/`, --snapshots records under its snapshot area (what a year of
nightly runs leaves; the fleet view must not read them) and its fleet marker, the latest of them. The objects
are written as s5cmd uploads a local tree (many at once), then `obsbatch snapshots --all --json` and
`--all --stale 26h` are timed, each --rounds times (medians), with their peak RSS. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench  # noqa: E402
from obsbatch import snapshot  # noqa: E402
from obsbatch.testing import seaweed  # noqa: E402


def generate(root: Path, hosts: int, snapshots: int, now: float) -> int:
    """The objects as a local tree, relative path = key; how many."""
    count = 0
    for h in range(hosts):
        host, prefix = f"host{h:04d}", f"fleet/host{h:04d}/"
        area = root / snapshot.area(prefix)
        area.mkdir(parents=True)
        previous = None
        for n in range(snapshots):
            taken = now - (snapshots - n) * 86400 + (h % 3600)
            snapshot_id = snapshot.new_id(taken)
            record = snapshot.seal({"format": snapshot.FORMAT, "id": snapshot_id, "time": snapshot.rfc3339(taken),
                                    "host": host, "source": "/srv/data", "bucket": "fleet", "prefix": prefix,
                                    "root": "0" * 64, "packs": [snapshot_id], "files": 1000 + n, "bytes": 10**9 + n,
                                    "exit_code": 0, "previous": previous, "obsbatch": "generated"})
            previous = record["head"]
            (area / f"{snapshot_id}.json").write_bytes(json.dumps(record, sort_keys=True).encode())
            count += 1
        marker = root / snapshot.fleet_key(host, prefix)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(snapshot.fleet_marker(record))
        count += 1
    return count


def timed(cmd: list, env: dict, server_pid: int) -> dict:
    """One run of `cmd` (bench.measure): its wall time, exit code, stdout, and its own peak RSS."""
    wall, _, rss_main, _, _, code, text = bench.measure(cmd, env, {server_pid}, server_pid)
    return {"wall_s": wall, "exit": code, "stdout": text, "peak_rss_mib": round(rss_main, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--snapshots", type=int, default=365)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench.set_subreaper()  # bench.measure reaps what the measured command leaves behind
    work = Path(tempfile.mkdtemp(prefix="obsbatch-fleet-scale-"))
    try:
        with seaweed.running("fleet", str(work / "weed")) as server:
            tree = work / "tree"
            started = time.monotonic()
            objects = generate(tree, args.hosts, args.snapshots, time.time())
            generated = time.monotonic() - started
            env = dict(os.environ, **server.env())
            s5cmd = shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or "s5cmd"
            started = time.monotonic()
            # Into the bucket's root: keys are the tree's relative paths.
            upload = subprocess.run([s5cmd, "--endpoint-url", server.endpoint, "cp", f"{tree}/", "s3://fleet/"],
                                    env=env, capture_output=True, text=True)
            if upload.returncode != 0:
                raise SystemExit(f"s5cmd failed: {upload.stderr[-2000:]}")
            uploaded = time.monotonic() - started
            base = [str(Path(sys.executable).parent / "obsbatch"), "snapshots", "--bucket", "fleet", "--endpoint",
                    server.endpoint, "--region", "us-east-1", "--addressing-style", "path", "--all", "--json",
                    "--log-format", "json"]
            views, stales = [], []
            for _ in range(args.rounds):
                views.append(timed(base, env, server.process.pid))
                stales.append(timed(base + ["--stale", "26h"], env, server.process.pid))
            rows = json.loads(views[-1]["stdout"].splitlines()[0])
            assert views[-1]["exit"] == 0 and len(rows) == args.hosts, views[-1]
            print(json.dumps({
                "hosts": args.hosts, "snapshots_per_host": args.snapshots, "objects": objects,
                "generate_s": round(generated, 1), "upload_s": round(uploaded, 1),
                "all_wall_s_median": round(statistics.median(v["wall_s"] for v in views), 2),
                "all_stale_wall_s_median": round(statistics.median(v["wall_s"] for v in stales), 2),
                "stale_exit": stales[-1]["exit"], "peak_rss_mib": max(v["peak_rss_mib"] for v in views + stales),
                "rows": len(rows)}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
