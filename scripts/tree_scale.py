"""A large tree end to end (issue #22, README "Scale"): --files files (default 1,000,000) of --size bytes in a
local SeaweedFS on loopback, through the real command line.

Steps, each timed with its peak memory (the parent's own high-water mark and the sum over its process tree):
walk (`--dry-run --no-state`: walk and judge only), the first backup (every file uploaded, the first snapshot),
a no-op rerun, a "nightly" rerun after --changed-dirs of the tree's 1,000 directories were rewritten, and a
restore of the latest snapshot into an empty directory, compared file by file with the tree. Then the
snapshot area is listed: the bytes each snapshot added to the store (record and pack), and the size of
the journal on disk. Prints one JSON object. Reuses scripts/bench.py's tree maker and sampler.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

PREFIX = "scale/"


def step(name: str, cmd: list, env: dict, keep: set, server_pid: int) -> dict:
    wall, cpu, rss_main, rss_tree, server_cpu, code, text = bench.measure(cmd, env, keep, server_pid)
    row = {"step": name, "wall_s": round(wall, 1), "client_cpu_s": round(cpu, 1),
           "server_cpu_s": round(server_cpu, 1), "parent_peak_rss_mib": round(rss_main),
           "tree_peak_rss_mib": round(rss_tree), "exit": code}
    lines = text.strip().splitlines()
    try:
        summary = json.loads(lines[-1])
        row.update({k: summary[k] for k in ("uploaded", "skipped", "failed", "restored") if k in summary})
    except (IndexError, ValueError):
        row["output"] = text[-2000:]
    print(json.dumps(row), flush=True)
    return row


def rewrite(src: Path, dirs: int) -> int:
    """Rewrite every file of the first `dirs` of the tree's 1,000 leaf directories (new bytes, an hour old)."""
    changed = 0
    for d in range(dirs):
        leaf = src / f"d{d % 100:02}" / f"e{d // 100}"
        for path in leaf.iterdir():
            path.write_bytes(os.urandom(path.stat().st_size or 1))
            os.utime(path, (bench.OLD, bench.OLD))
            changed += 1
    time.sleep(2.1)  # past the default --min-age by ctime too
    return changed


def differences(src: Path, target: Path) -> int:
    """How many files of `src` are missing from `target` or differ in content, plus files only in `target`."""
    seen, differ = 0, 0
    for root, _, names in os.walk(src):
        for name in names:
            path = Path(root, name)
            copy = target / path.relative_to(src)
            seen += 1
            differ += not copy.is_file() or copy.read_bytes() != path.read_bytes()
    return differ + max(0, sum(len(names) for _, _, names in os.walk(target)) - seen)


def snapshot_objects(client, bucket: str) -> dict:
    """Every object in the snapshot area (records `<id>.json`, `packs/<pack id>`) and its bytes, by name."""
    area = snapshot.area(PREFIX)
    return {obj["Key"][len(area):]: obj["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=area)
            for obj in page.get("Contents", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--changed-dirs", type=int, default=10, help="of 1,000 (default 10: 1%%)")
    parser.add_argument("--work", help="keep the tree here between runs (default: a temporary directory)")
    args = parser.parse_args()
    bench.set_subreaper()
    work = Path(args.work or tempfile.mkdtemp(prefix="obsbatch-tree-scale-"))
    try:
        with seaweed.running("scale", str(work / "weed")) as server:
            src = work / f"tree-{args.files}x{args.size}"
            started = time.monotonic()
            bench.make_files(src, args.files, args.size)
            print(json.dumps({"files": args.files, "size": args.size,
                              "generate_s": round(time.monotonic() - started, 1)}), flush=True)
            env = dict(os.environ, **server.env())
            journal = work / "scale.db"
            base = [str(Path(sys.executable).parent / "obsbatch"), "--source", str(src), "--bucket", server.bucket,
                    "--prefix", PREFIX, "--endpoint", server.endpoint, "--region", "us-east-1", "--debug", "warning",
                    "--summary", "json"]
            keep = {server.process.pid}
            rows = [step("walk", base + ["--dry-run", "--no-state"], env, keep, server.process.pid)]
            with_state = base + ["--state", str(journal)]
            rows.append(step("first backup", with_state, env, keep, server.process.pid))
            rows.append(step("no-op rerun", with_state, env, keep, server.process.pid))
            changed = rewrite(src, args.changed_dirs)
            rows.append(step(f"nightly ({changed} files rewritten)", with_state, env, keep, server.process.pid))
            target = work / "restored"
            shutil.rmtree(target, ignore_errors=True)
            restore = [base[0], "restore", "--bucket", server.bucket, "--prefix", PREFIX, "--target", str(target),
                       "--endpoint", server.endpoint, "--region", "us-east-1", "--debug", "warning", "--summary",
                       "json"]
            rows.append(step("restore of the latest snapshot", restore, env, keep, server.process.pid))
            rows[-1]["differences"] = differences(src, target)
            print(json.dumps({"steps": rows, "snapshot_objects": snapshot_objects(server.client(), server.bucket),
                              "journal_bytes": sum(p.stat().st_size for p in work.glob("scale.db*"))}, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
