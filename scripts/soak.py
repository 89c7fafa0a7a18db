"""The body of scripts/soak: obsbatch on a timer against a faulty server while the tree churns under it.

What runs, for --minutes (default 30):
- a real SeaweedFS on loopback, behind the test fault proxy in chaos mode: each request has --fault-rate
  chance of a 500, a 503 SlowDown, a reset, a reset halfway through the body, or a hold past
  --http-timeout;
- a tree of --files files (default 50,000; a few over the multipart threshold) and a churn process that
  rewrites files in place, appends to them, creates, renames and deletes them, each write session holding the
  file open for up to a few seconds, with pauses shorter than --min-age;
- obsbatch runs back to back, as a timer would start them, each with a manifest; one run in ten gets a
  SIGTERM at a random moment.

Every file version the churn writes is self-checking: lines of data, closed by an `E <sha256>` line over
everything before it. A version caught mid-write has no valid last line. After each run, every object it
reports uploaded is read back from the server and must be a complete version whose SHA-256 matches its
x-amz-meta-sha256 ("torn" counts those that are not). At the end the churn stops, the faults stop, and
obsbatch runs until it exits 0; then every local file must be stored byte-identical ("lost" counts those
that are not), and no multipart upload may be left holding parts. Counts go to stdout and
bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsbatch.testing import seaweed  # noqa: E402
from obsbatch.testing.faultproxy import Chaos, Fault, FaultProxy  # noqa: E402

MiB = 1024 * 1024


# --- self-checking file versions -------------------------------------------------------------------------

def data_line(rng: random.Random, size: int) -> bytes:
    return b"D " + rng.randbytes(size).hex().encode() + b"\n"


def end_line(before: bytes) -> bytes:
    return b"E " + hashlib.sha256(before).hexdigest().encode() + b"\n"


def complete(body: bytes) -> bool:
    """A whole version: it ends with an E line whose hash covers everything before that line."""
    if not body.endswith(b"\n"):
        return False
    start = body.rfind(b"\n", 0, len(body) - 1) + 1
    last = body[start:]
    return last.startswith(b"E ") and last == end_line(body[:start])


def build_tree(root: Path, count: int, rng: random.Random) -> list:
    old = time.time() - 3600
    paths = []
    for i in range(count):
        rel = f"d{i % 500:03d}/s{i % 7}/f{i:06d}.dat"
        big = i % 2500 == 7  # 20 of 50,000: multipart at the soak's 5 MiB threshold
        lines = [data_line(rng, 64 * 1024) for _ in range(rng.randint(45, 90))] if big else \
            [data_line(rng, rng.randint(20, 1500)) for _ in range(rng.randint(1, 4))]
        body = b"".join(lines)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body + end_line(body))
        os.utime(path, (old, old))
        paths.append(rel)
    return paths


# --- churn (its own process: obsbatch must find its open files through /proc) ------------------------------

def churn(root: str, seconds: float, seed: int, threads: int, out: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    base = Path(root)
    rng0 = random.Random(seed)
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*.dat"))
    lock = threading.Lock()
    busy: set = set()  # one writer per file at a time: two would leave a file no version of which is whole
    counts = collections.Counter()
    deadline = time.monotonic() + seconds

    def pick(rng):
        with lock:
            for _ in range(20):
                rel = rng.choice(files) if files else None
                if rel is not None and rel not in busy:
                    busy.add(rel)
                    return rel
            return None

    def session(f, rng, prefix=b""):
        """Write a few lines with pauses (file held open throughout), then the closing E line."""
        written = bytearray(prefix)
        big = len(prefix) > MiB or rng.random() < 0.01
        for _ in range(rng.randint(1, 6)):
            line = data_line(rng, 64 * 1024 if big else rng.randint(20, 1500))
            os.write(f, line)
            written += line
            # Mostly shorter than --min-age; one pause in five longer, so that only the open file (found
            # through /proc) tells obsbatch the writer isn't done.
            time.sleep(rng.uniform(2.5, 5.0) if rng.random() < 0.2 else rng.uniform(0.0, 0.8))
        os.write(f, end_line(bytes(written)))

    def worker(n):
        rng = random.Random(seed * 1000 + n)
        made = 0
        while time.monotonic() < deadline:
            op = rng.choices(["rewrite", "append", "create", "rename", "delete"], [30, 25, 20, 15, 10])[0]
            rel = pick(rng) if op != "create" else None
            try:
                if op == "create" or rel is None:
                    made += 1
                    rel = f"new/t{n}/{made // 200}/n{made:05d}.dat"
                    (base / rel).parent.mkdir(parents=True, exist_ok=True)
                    f = os.open(base / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    try:
                        session(f, rng)
                    finally:
                        os.close(f)
                    with lock:
                        files.append(rel)
                    op = "create"
                elif op == "rewrite":  # in place: O_TRUNC, then slow writes (a torn upload's best chance)
                    f = os.open(base / rel, os.O_WRONLY | os.O_TRUNC)
                    try:
                        session(f, rng)
                    finally:
                        os.close(f)
                elif op == "append":
                    before = (base / rel).read_bytes()
                    f = os.open(base / rel, os.O_WRONLY | os.O_APPEND)
                    try:
                        session(f, rng, before)
                    finally:
                        os.close(f)
                elif op == "rename":
                    made += 1
                    new = f"new/t{n}/r{made:05d}-{os.path.basename(rel)}"
                    (base / new).parent.mkdir(parents=True, exist_ok=True)
                    os.rename(base / rel, base / new)
                    with lock:
                        files.remove(rel)
                        files.append(new)
                elif op == "delete":
                    os.unlink(base / rel)
                    with lock:
                        files.remove(rel)
            except OSError as exc:  # not expected with one writer per file; counted, and the churn goes on
                counts[f"error {type(exc).__name__}"] += 1
                continue
            finally:
                with lock:
                    busy.discard(rel)
            counts[op] += 1
            time.sleep(rng.uniform(0.0, 0.3))

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    counts["files_at_end"] = len(files)
    Path(out).write_text(json.dumps(dict(counts)))
    del rng0


# --- obsbatch runs -----------------------------------------------------------------------------------------

def obsbatch(args: list, env: dict, term_after: float | None, timeout: float = 1800) -> tuple[int, dict, str, bool]:
    """Run obsbatch once; with term_after, SIGTERM it then if it is still running. Returns (exit code,
    summary, stderr, whether the signal was sent)."""
    proc = subprocess.Popen([sys.executable, "-m", "obsbatch", *map(str, args), "--summary", "json",
                             "--log-format", "json"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sent = []

    def terminate():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            sent.append(True)

    timer = threading.Timer(term_after, terminate) if term_after is not None else None
    if timer is not None:
        timer.start()
    out, err = proc.communicate(timeout=timeout)
    if timer is not None:
        timer.cancel()
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {}
    return proc.returncode, summary, err, bool(sent)


def check_uploads(client, bucket: str, manifest: Path, problems: list) -> collections.Counter:
    """Read back every object this run reports uploaded: complete, and matching its sha256 metadata."""
    counts = collections.Counter()
    if not manifest.exists():
        return counts
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    uploaded = [r for r in records if r.get("outcome") == "uploaded"]

    def check(record):
        obj = client.get_object(Bucket=bucket, Key=record["key"])
        body = obj["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        if not complete(body) or obj["Metadata"].get("sha256") != digest:
            return "torn"
        return "checked" if digest == record.get("sha256") else "superseded"

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for record, verdict in zip(uploaded, ex.map(check, uploaded)):
            counts[verdict] += 1
            if verdict != "checked":
                problems.append({"run": manifest.stem, "key": record["key"], "verdict": verdict})
    return counts


def compare_all(client, bucket: str, prefix: str, root: Path, problems: list) -> collections.Counter:
    counts = collections.Counter()
    paths = [p for p in root.rglob("*") if p.is_file()]

    def check(path):
        data = path.read_bytes()
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + str(path.relative_to(root)))["Body"].read()
        except client.exceptions.NoSuchKey:
            return "lost (missing)"
        return "identical" if body == data else "lost (differs)"

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for path, verdict in zip(paths, ex.map(check, paths)):
            counts[verdict] += 1
            if verdict != "identical":
                problems.append({"path": str(path.relative_to(root)), "verdict": verdict})
    incomplete = [str(p.relative_to(root)) for p in paths if not complete(p.read_bytes())]
    counts["incomplete local files"] = len(incomplete)  # the churn's own bug if ever more than 0
    problems.extend({"path": rel, "verdict": "incomplete local file"} for rel in incomplete)
    return counts


def leftover_uploads(client, bucket: str, prefix: str, proxy, problems: list) -> collections.Counter:
    """Multipart uploads neither completed nor aborted, split by cause.

    A CreateMultipartUpload held past --http-timeout is re-sent by the client, which then completes the
    upload under the second upload ID; the held request still reaches the server later and opens an upload
    whose ID no client ever saw. It holds no part (UploadPart needs the ID), so it stores nothing: the
    bucket lifecycle rule AbortIncompleteMultipartUpload clears it (README, contrib/). Anything else left
    over, or any leftover holding parts, is a failure.
    """
    counts = collections.Counter()
    held_creates = collections.Counter(
        urllib.parse.unquote(path.split("?")[0].split(f"/{bucket}/", 1)[-1])
        for method, path, what, _ in proxy.seen if method == "POST" and "?uploads" in path and what == "held")
    for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
        if not parts and held_creates[upload["Key"]]:
            counts["empty, from a held CreateMultipartUpload"] += 1
        else:
            counts["unexplained"] += 1
            problems.append({"key": upload["Key"], "verdict": f"multipart upload left over with {len(parts)} parts"})
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--fault-rate", type=float, default=0.05, help="chance of a fault per request")
    parser.add_argument("--churn-threads", type=int, default=12)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    # The commit measured is the one checked out now, not whatever is checked out 30 minutes later.
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="obsbatch-soak-"))
    src, state, prefix = work / "src", work / "state" / "obsbatch.db", "soak/"
    print(f"soak: seed {opts.seed}, {opts.files} files, {opts.minutes} min, fault rate {opts.fault_rate}, in {work}",
          flush=True)
    t0 = time.monotonic()
    build_tree(src, opts.files, rng)
    print(f"tree built in {time.monotonic() - t0:.1f}s", flush=True)

    server = seaweed.start("soak", str(work / "weed"))
    client = server.client()
    chaos = Chaos(opts.fault_rate, [
        Fault(action="status", status=500, code="InternalError"),
        Fault(action="status", status=503, code="SlowDown"),
        Fault(action="reset"),
        Fault(action="reset_mid_body"),
        Fault(action="hold", delay=3.0),  # past --http-timeout 2: the client times out and retries
    ], random.Random(opts.seed + 1))
    env = dict(os.environ, **server.env(), PYTHONPATH=str(ROOT))
    totals: collections.Counter = collections.Counter()
    exits: collections.Counter = collections.Counter()
    tracebacks = 0
    runs = 0
    problems: list = []  # torn or superseded objects, lost files: kept with the work dir for a post-mortem
    result = {}
    try:
        with FaultProxy(server.endpoint) as proxy:
            proxy.chaos = chaos
            args = ["--source", src, "--bucket", server.bucket, "--prefix", prefix, "--endpoint", proxy.endpoint,
                    "--region", "us-east-1", "--addressing-style", "path", "--state", state, "--min-age", 2,
                    "--http-timeout", 2, "--retries", 3, "--multipart-threshold", "5MiB",
                    "--multipart-chunksize", "5MiB"]
            churn_out = work / "churn.json"
            churner = multiprocessing.get_context("spawn").Process(
                target=churn, args=(str(src), opts.minutes * 60, opts.seed, opts.churn_threads, str(churn_out)))
            churner.start()
            while churner.is_alive():
                runs += 1
                manifest = work / "manifests" / f"run-{runs:04d}.jsonl"
                manifest.parent.mkdir(exist_ok=True)
                term = rng.uniform(0.5, 6.0) if runs > 1 and rng.random() < 0.1 else None
                code, summary, err, termed = obsbatch([*args, "--manifest", manifest], env, term)
                exits[code] += 1
                totals["sigterm_sent"] += termed
                tracebacks += "Traceback" in err
                for k in ("uploaded", "copied", "failed", "retries", "attempts", "errors"):
                    totals[k] += summary.get(k, 0)
                for reason, n in summary.get("deferred", {}).items():
                    totals[f"deferred:{reason}"] += n
                for kind, n in summary.get("failed_by_type", {}).items():
                    totals[f"failed:{kind}"] += n
                checks = check_uploads(client, server.bucket, manifest, problems)
                totals.update({f"readback:{k}": v for k, v in checks.items()})
                print(f"run {runs}: exit {code}{' (SIGTERM)' if termed else ''}, uploaded {summary.get('uploaded')}, "
                      f"deferred {sum(summary.get('deferred', {}).values())}, failed {summary.get('failed')}, "
                      f"retries {summary.get('retries')}, read back {dict(checks)}, "
                      f"t+{(time.monotonic() - t0) / 60:.1f} min", flush=True)
                time.sleep(4)  # a held request (3 s) from this run must land before the next run starts
            churned = json.loads(churn_out.read_text())
            injected = dict(chaos.injected)
            proxy.chaos = None
            time.sleep(3)  # every file now older than --min-age, and no writer left
            final_runs = []
            for _ in range(5):
                code, summary, err, _ = obsbatch(args, env, None)
                final_runs.append(code)
                tracebacks += "Traceback" in err
                if code == 0:
                    break
            final = compare_all(client, server.bucket, prefix, src, problems)
            leftover = leftover_uploads(client, server.bucket, prefix, proxy, problems)
    finally:
        server.stop()
    lost = final.get("lost (missing)", 0) + final.get("lost (differs)", 0)
    result = {
        "seed": opts.seed, "minutes": opts.minutes, "files_at_start": opts.files, "fault_rate": opts.fault_rate,
        "runs": runs, "exit_codes": {str(k): v for k, v in sorted(exits.items())}, "tracebacks": tracebacks,
        "faults_injected": injected, "faults_total": sum(injected.values()), "churn": churned,
        "totals": dict(totals), "final_runs": final_runs, "final_compare": dict(final),
        "files_lost": lost, "torn": totals["readback:torn"], "multipart_left_over": dict(leftover),
        "problems": problems[:50],
        "commit": commit,
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
    }
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    ok = (lost == 0 and result["torn"] == 0 and tracebacks == 0 and final_runs[-1] == 0
          and not leftover["unexplained"] and not final.get("incomplete local files"))
    if ok:
        shutil.rmtree(work, ignore_errors=True)
        print("soak: PASS", flush=True)
    else:  # keep the tree, the server's data, the journal and every manifest for a post-mortem
        print(f"soak: FAIL (kept {work})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
