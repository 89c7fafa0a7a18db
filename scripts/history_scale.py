"""The operator's commands at scale, against a real SeaweedFS on loopback (not part of the test suite):

- diff: two snapshots of --files files (default 1,000,000) in directories of 20, under 100 x 100 parent
  directories, the second with one file changed in 1 % of the directories: `obsbatch diff` of the two, and
  `obsbatch ls` of one directory: seconds, requests, peak RSS of the command's process;
- prune: --prune-keys keys (default 50,000) stored twice each (2 x 50,000 = 100,000 versions), one snapshot
  naming the second version of each: `obsbatch forget --prune --prune-grace 0s` deletes the 50,000 first
  versions: seconds, requests, peak RSS.

The snapshots are written here with obsbatch's own format code (snapshot.PackWriter, seal), as a backup
writes them, without walking a real tree. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from obsbatch import snapshot  # noqa: E402
from obsbatch.testing import seaweed  # noqa: E402

PER_DIRECTORY = 20
MTIME = 1_700_000_000_000_000_000


def entry_file(name: str, content: bytes, version: str = "v") -> list:
    return [name, snapshot.FILE, 0o644, 1000, 1000, MTIME, len(content), hashlib.sha256(content).hexdigest(),
            version, "", 0, "etag"]


class Builder:
    """Trees into a pack, as stages.snapshot.build writes them; the hashes already in an earlier pack are not
    written again (a run's pack holds only its new trees)."""

    def __init__(self, known: set):
        self.pack = snapshot.PackWriter()
        self.known = known

    def tree(self, entries: list) -> str:
        entries.sort(key=lambda entry: entry[0].encode())
        data = snapshot.tree_bytes(entries)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.known:
            self.known.add(digest)
            self.pack.add(digest, data)
        return digest


def directory(name: str, digest: str) -> list:
    return [name, snapshot.DIRECTORY, 0o755, 1000, 1000, MTIME, 0, digest, "", "", 0]


def synthetic(files: int, builder: Builder, changed_every: int = 0) -> tuple:
    """(root hash, directories): --files files in leaves of 20, grouped 100 leaves a parent, 100 parents a
    grandparent; with changed_every, the first file of every changed_every-th leaf has other bytes."""
    leaves = max(1, files // PER_DIRECTORY)
    parents: dict = {}
    for leaf in range(leaves):
        changed = changed_every and leaf % changed_every == 0
        entries = [entry_file(f"file-{leaf:07d}-{n:02d}.dat",
                              f"{leaf}/{n}{'/changed' if changed and n == 0 else ''}".encode())
                   for n in range(PER_DIRECTORY)]
        digest = builder.tree(entries)
        parents.setdefault(leaf // 100, []).append(directory(f"leaf{leaf:07d}", digest))
    grand: dict = {}
    for parent, entries in parents.items():
        grand.setdefault(parent // 100, []).append(directory(f"p{parent:05d}", builder.tree(entries)))
    top = [directory(f"g{g:03d}", builder.tree(entries)) for g, entries in grand.items()]
    return builder.tree(top), leaves + len(parents) + len(grand)


def store_snapshot(client, bucket: str, prefix: str, snapshot_id: str, root: str, packs: list, builder: Builder,
                   files: int, directories: int, size: int) -> dict:
    handle, md5_hex, _ = builder.pack.finished()
    client.put_object(Bucket=bucket, Key=snapshot.pack_key(prefix, snapshot_id), Body=handle.read())
    builder.pack.close()
    record = snapshot.seal({
        "format": snapshot.FORMAT, "id": snapshot_id, "time": snapshot.rfc3339(time.time()), "host": "scale",
        "source": "/synthetic", "bucket": bucket, "prefix": prefix, "root": root, "packs": packs, "files": files,
        "bytes": size, "directories": directories, "symlinks": 0, "special": 0, "stale": 0, "unstored": 0,
        "exit_code": 0, "previous": None, "obsbatch": "scale", "key_format": 2})
    client.put_object(Bucket=bucket, Key=snapshot.record_key(prefix, snapshot_id),
                      Body=json.dumps(record, sort_keys=True).encode())
    return record


def command(server, prefix: str, *args, bucket: str = "") -> dict:
    """Run an obsbatch command; its --summary json, wall seconds and its peak RSS (MiB, sampled every 20 ms:
    RUSAGE_CHILDREN would give the largest of all the children so far)."""
    import psutil

    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "obsbatch", *args, "--bucket", bucket or server.bucket,
                                "--prefix", prefix, "--endpoint", server.endpoint, "--region", "us-east-1",
                                "--addressing-style", "path", "--summary", "json", "--log-format", "json",
                                "--host-id", "scale"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **server.env(), PYTHONPATH=str(REPO)))
    watched, peak = psutil.Process(process.pid), 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        output = pool.submit(process.communicate)
        while not output.done():
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)
        stdout, stderr = output.result()
    seconds = time.time() - started
    summary = json.loads((stderr if args[0] == "dump" else stdout).strip().splitlines()[-1])
    return {"exit_code": process.returncode, "wall_seconds": round(seconds, 2), "requests": summary.get("requests"),
            "peak_rss_mib": round(peak / 2**20, 1), "lines": len(stdout.splitlines()) - 1, "summary": summary}


def measure_diff(server, files: int) -> dict:
    client = server.client()
    prefix = "scale-diff/"
    known: set = set()
    first = Builder(known)
    root1, directories = synthetic(files, first)
    id1, id2 = snapshot.new_id(time.time() - 10), snapshot.new_id(time.time())
    store_snapshot(client, server.bucket, prefix, id1, root1, [id1], first, files, directories, 0)
    second = Builder(known)
    root2, _ = synthetic(files, second, changed_every=100)
    new_trees = second.pack.trees
    store_snapshot(client, server.bucket, prefix, id2, root2, [id1, id2], second, files, directories, 0)
    diff = command(server, prefix, "diff", id1, id2)
    ls = command(server, prefix, "ls", "--snapshot", id2, "g000/p00001/leaf0000100")
    return {"files": files, "directories": directories, "changed_directories": files // PER_DIRECTORY // 100,
            "new_trees_in_second_pack": new_trees, "diff": diff, "ls_one_directory": ls}


def measure_prune(server, keys: int) -> dict:
    client = server.client()
    bucket = "scale-prune"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    prefix = "scale-prune/"
    started = time.time()

    def put_twice(n: int) -> tuple:
        name = f"file-{n:07d}.dat"
        key = f"{prefix}leaf{n // PER_DIRECTORY:06d}/{name}"
        client.put_object(Bucket=bucket, Key=key, Body=b"old")
        version = client.put_object(Bucket=bucket, Key=key, Body=f"{n}".encode())["VersionId"]
        return n, name, version

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        stored = list(pool.map(put_twice, range(keys)))
    upload_seconds = time.time() - started
    builder = Builder(set())
    leaves: dict = {}
    for n, name, version in stored:
        leaves.setdefault(n // PER_DIRECTORY, []).append(entry_file(name, f"{n}".encode(), version))
    top = [directory(f"leaf{leaf:06d}", builder.tree(entries)) for leaf, entries in leaves.items()]
    root = builder.tree(top)
    snapshot_id = snapshot.new_id(time.time())
    time.sleep(1.1)  # the record's time (to the second) after every version's LastModified
    store_snapshot(client, bucket, prefix, snapshot_id, root, [snapshot_id], builder, keys, len(leaves) + 0, 0)
    dry = command(server, prefix, "forget", "--prune", "--prune-grace", "0s", "--dry-run", bucket=bucket)
    real = command(server, prefix, "forget", "--prune", "--prune-grace", "0s", bucket=bucket)
    left = sum(len(page.get("Versions", [])) for page in
               client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix))
    for one in (dry, real):
        one["summary"] = {k: v for k, v in one["summary"].items() if k.startswith("versions_") or k in (
            "requests", "prune_seconds", "seconds", "exit_code", "referenced_files")}
    return {"keys": keys, "versions": 2 * keys, "upload_seconds": round(upload_seconds, 1), "dry_run": dry,
            "prune": real, "versions_left": left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--prune-keys", type=int, default=50_000)
    parser.add_argument("--skip", choices=("diff", "prune"), action="append", default=[])
    options = parser.parse_args()
    results = {}
    with seaweed.running("scale") as server:
        if "diff" not in options.skip:
            results["diff"] = measure_diff(server, options.files)
        if "prune" not in options.skip:
            results["prune"] = measure_prune(server, options.prune_keys)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
