"""The body of scripts/bench: obsbatch against s5cmd, rclone and aws-cli on one local SeaweedFS (issues #5, #12).

Honest by construction:
- one server for every tool and run, started here on loopback (the same launcher as the tests);
- runs alternate: every round runs each tool once, in an order rotated per round, on a fresh prefix;
  medians over rounds, so drift (the server filling up, page cache, a noisy neighbour) hits every tool alike;
- each tool runs as its users run it, with its defaults, except where a flag is needed to say "this tree to
  that bucket" or, for no-op runs, the comparison mode the tool documents as its fast one;
- client CPU counts every process of the tool's tree: this process is a child subreaper, so the tool's
  orphaned descendants (obsbatch's fork server and workers) are reaped here and their CPU lands in
  RUSAGE_CHILDREN; the server's CPU is not the client's and is reported apart;
- the `wan*` workloads put a relay of the project's own (obsbatch/testing/relay.py: a fixed one-way delay, one
  more round trip for a new connection) between every tool and the same server: a store in another city.
  The relay runs in its own process and its CPU is reported per run, so that it is seen not to be the
  bottleneck.

Results: a table on stdout, JSON and a PNG chart under --out (bench/results by default).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsbatch.testing import seaweed  # noqa: E402  (the same launcher the test fixture uses)
from obsbatch.testing.relay import Relay  # noqa: E402

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
PEERS = ("s5cmd", "rclone", "aws")
TOOLS = ("obsbatch",) + PEERS
OLD = time.time() - 3600  # every generated file is an hour old: past obsbatch's --min-age and any peer's

# name: (files, size, directories fan-out) at full scale; --tiny divides the counts. rtt_ms: through the relay.
WORKLOADS = {
    "small": dict(files=5000, size=4096, what="5,000 x 4 KiB, nested"),
    "medium": dict(files=200, size=MiB, what="200 x 1 MiB"),
    "large": dict(files=3, size=96 * MiB, what="3 x 96 MiB"),
    "wan20-small": dict(files=5000, size=4096, rtt_ms=20, what="5,000 x 4 KiB at RTT 20 ms"),
    "wan80-small": dict(files=5000, size=4096, rtt_ms=80, what="5,000 x 4 KiB at RTT 80 ms"),
    "wan20-large": dict(files=3, size=96 * MiB, rtt_ms=20, what="3 x 96 MiB at RTT 20 ms"),
    # Issue #21: a nightly incremental run is short; its first seconds are most of it.
    "wan20-2k": dict(files=2000, size=4096, rtt_ms=20, what="2,000 x 4 KiB at RTT 20 ms"),
    "wan80-2k": dict(files=2000, size=4096, rtt_ms=80, what="2,000 x 4 KiB at RTT 80 ms"),
    # Issue #12's memory bound: 256 in flight over files just under the 64 MiB multipart threshold.
    "memory": dict(files=24, size=64 * MiB - 1024, obsbatch_args=["--max-concurrent", "256"],
                   what="24 x (64 MiB - 1 KiB), obsbatch at --max-concurrent 256"),
    "noop": dict(files=20000, size=1024, what="20,000 files already uploaded, rerun"),
    # Not empty files: aws-cli sends `Expect: 100-continue` even for an empty body, and SeaweedFS 4.x then
    # leaves the *next* request on that connection unanswered until aws-cli's 60 s read timeout.
    "noop-200k": dict(files=200000, size=16, what="200,000 files already uploaded, rerun"),
    "scale": dict(files=200000, size=0, what="200,000 files, --dry-run walk+gate"),
    # Issue #14: the download direction. obsbatch restore against each peer's copy from the store.
    "restore-small": dict(files=5000, size=4096, what="restore 5,000 x 4 KiB from the store"),
    "restore-large": dict(files=3, size=96 * MiB, what="restore 3 x 96 MiB from the store"),
    "wan20-restore-small": dict(files=5000, size=4096, rtt_ms=20, what="restore 5,000 x 4 KiB at RTT 20 ms"),
    "wan20-restore-large": dict(files=3, size=96 * MiB, rtt_ms=20, what="restore 3 x 96 MiB at RTT 20 ms"),
    # A long fat pipe, where one TCP stream gets what its window allows (window / RTT: 4 MiB / 80 ms ~ 50 MB/s)
    # and no more: the relay paces each connection to 40 MB/s each way. Parallel streams are what pay here.
    "wan80-restore-large": dict(files=3, size=96 * MiB, rtt_ms=80, stream_rate=40e6,
                                what="restore 3 x 96 MiB at RTT 80 ms, 40 MB/s per connection"),
    # Issue #21: obsbatch against itself. Per round, on one fresh prefix: the backup, a verify of it (no
    # --read-data), a fresh restore, and a restore over the tree that restore wrote. Rows NAME:STEP; the
    # ratios are verify / backup and restore-over / restore (targets <= 0.5 each).
    "self": dict(files=5000, size=4096, what="5,000 x 4 KiB: backup, verify, restore, restore over it"),
    "wan20-self": dict(files=5000, size=4096, rtt_ms=20,
                       what="5,000 x 4 KiB at RTT 20 ms: backup, verify, restore, restore over it"),
}
#: The self workloads' steps, and what each is measured against (their ratio's denominator).
SELF_STEPS = {"backup": None, "verify": "backup", "restore": None, "restore-over": "restore"}
DEFAULT_WORKLOADS = ("small", "medium", "large", "wan20-small", "wan80-small", "wan20-large", "wan20-2k", "wan80-2k",
                     "memory", "noop", "scale", "restore-small", "restore-large", "wan20-restore-small",
                     "wan20-restore-large", "wan80-restore-large", "self", "wan20-self")


@dataclass
class Run:
    tool: str
    workload: str
    round: int
    wall_s: float
    cpu_s: float
    rss_main_mib: float
    rss_tree_mib: float
    server_cpu_s: float
    files: int
    bytes: int
    ok: bool
    note: str = ""
    extra: dict = field(default_factory=dict)


def set_subreaper() -> None:
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeRss:
    """Peak RSS of a process (its VmHWM) and of the sum over it and its descendants, sampled every 50 ms.

    Not wait4's ru_maxrss: Linux carries the pre-exec high-water mark across execve, so a child forked
    from this (large) Python process would report this process's size.
    """

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.main_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.05):
            try:
                with open(f"/proc/{self.root.pid}/status") as f:
                    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
                self.main_peak = max(self.main_peak, hwm * 1024)
            except (OSError, StopIteration):
                pass
            try:
                procs = [self.root] + self.root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return

    def stop(self) -> tuple:
        self._stop.set()
        self._thread.join()
        return self.main_peak / MiB, self.peak / MiB


def reap_orphans(keep: set, timeout: float = 30.0) -> None:
    """Wait for the tool's orphaned descendants (re-parented to us, the subreaper), so their CPU is counted."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        orphans = [p for p in psutil.Process().children() if p.pid not in keep]
        if not orphans:
            return
        for p in orphans:
            try:
                pid, _ = os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                continue
        time.sleep(0.02)
    raise RuntimeError(f"descendants still alive after {timeout}s: {[p.pid for p in orphans]}")


def measure(cmd: list, env: dict, keep: set, server_pid: int) -> tuple:
    """Run `cmd`; return (wall, client cpu, main peak RSS MiB, tree peak RSS MiB, server cpu, returncode, output).

    `server_pid` may be a list of pids (the server and the relay): their CPU is summed in the fifth value.
    """
    servers = server_pid if isinstance(server_pid, list) else [server_pid]
    cpu0, srv0 = children_cpu(), sum(map(proc_cpu, servers))
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    tree = TreeRss(proc.pid)
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_main, rss_tree = tree.stop()
    reap_orphans(keep | {proc.pid})
    cpu = children_cpu() - cpu0
    out.seek(0)
    err.seek(0)
    text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        text += err.read().decode(errors="replace")
    return wall, cpu, rss_main, rss_tree, sum(map(proc_cpu, servers)) - srv0, proc.returncode, text


def make_files(root: Path, count: int, size: int, settle: bool = True) -> int:
    """`count` files of `size` random bytes in a 3-level tree, all an hour old; returns the total bytes.
    settle: wait until the tree is older than obsbatch's default --min-age by its ctime too."""
    done = root.with_name(root.name + ".complete")  # beside the tree, not in it: no tool may see it
    if done.exists():
        return count * size
    shutil.rmtree(root, ignore_errors=True)
    block = os.urandom(max(size, 1))
    for i in range(count):
        d = root / f"d{i % 100:02}" / f"e{(i // 100) % 10}"
        if i < 1000 or i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        path = d / f"f{i:06}.bin"
        # Distinct content per file (its number in the first bytes), without the cost of urandom per file.
        data = (i.to_bytes(8, "little") + block[8:])[:size] if size else b""
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (OLD, OLD))
    # obsbatch judges a file by its ctime too (issue #19), which utime cannot set back: let the new tree settle
    # past the default --min-age, as a real one has, so that every tool is measured at its defaults.
    if settle:
        time.sleep(2.1)
    done.touch()
    return count * size


class Busy:
    """`count` processes each holding `fds` files open (half of them for writing) while a scale run walks."""

    def __init__(self, count: int, fds: int, where: Path):
        self.procs = []
        where.mkdir(parents=True, exist_ok=True)
        code = ("import os,sys,time\n"
                "d,n,k=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])\n"
                "r,w=os.pipe()\n"
                "for c in range(n):\n"
                "    if os.fork()==0:\n"
                "        fds=[os.open(os.path.join(d,f'p{c}-{j}'),os.O_CREAT|(os.O_WRONLY|os.O_APPEND if j%2 else os.O_RDONLY),0o600) for j in range(k)]\n"
                "        os.write(w,b'x'); time.sleep(3600); os._exit(0)\n"
                "got=0\n"
                "while got<n: got+=len(os.read(r,n-got))\n"
                "print('ok',flush=True); time.sleep(3600)\n")
        # One small parent forks them all (1,000 Python interpreters would need ~10 GB; forks share pages).
        # Half of each one's files are open for writing, half for reading, none inside the source tree.
        self.parent = subprocess.Popen([sys.executable, "-c", code, str(where), str(count), str(fds)],
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        if self.parent.stdout.readline().strip() != "ok":
            raise RuntimeError("the busy processes did not start")

    def stop(self):
        with contextlib.suppress(OSError):
            os.killpg(self.parent.pid, signal.SIGKILL)
        self.parent.wait()


class Bench:
    def __init__(self, args, server, work: Path):
        self.args = args
        self.server = server
        self.work = work
        self.runs: list[Run] = []
        self.env = dict(os.environ, **server.env())
        for name in list(self.env):
            if name.startswith(("OBSBATCH_", "OTEL_", "NOTIFY_SOCKET", "WATCHDOG_")):
                del self.env[name]
        # rclone's remote "bench", configured entirely by environment variables (no config file).
        self.env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="SeaweedFS",
                        RCLONE_CONFIG_BENCH_ENDPOINT=server.endpoint, RCLONE_CONFIG_BENCH_REGION="us-east-1",
                        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=server.access_key,
                        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=server.secret_key,
                        RCLONE_CONFIG=str(work / "rclone.conf"), AWS_CONFIG_FILE=str(work / "aws-config"),
                        AWS_SHARED_CREDENTIALS_FILE=str(work / "aws-credentials"))
        self.keep = {server.process.pid}

    # -- command lines -------------------------------------------------------------------------------
    def command(self, tool: str, src: Path, prefix: str, noop: bool = False, dry_run: bool = False,
                endpoint: str = None, extra: tuple = ()) -> list:
        bucket, ep = self.server.bucket, endpoint or self.server.endpoint
        if tool == "obsbatch":
            cmd = [str(BIN / "obsbatch"), "--source", str(src), "--bucket", bucket, "--prefix", prefix,
                   "--endpoint", ep, "--region", "us-east-1", "--debug", "warning", "--summary", "json"]
            # A journal per prefix, as a real job has one per destination; walk+gate runs measure without.
            cmd += (["--dry-run", "--no-state"] if dry_run else
                    ["--state", str(self.work / "state" / (prefix.strip("/").replace("/", "_") + ".db"))])
            if self.args.workers:
                cmd += ["--max-concurrent", str(self.args.workers)]
            if self.args.tiny:  # checks the harness, measures nothing: its trees are not left to settle
                cmd += ["--min-age", "0"]
            return cmd + list(extra)
        if tool == "s5cmd":
            verb = "sync" if noop else "cp"
            return [str(BIN / "s5cmd"), "--endpoint-url", ep, verb, f"{src}/*", f"s3://{bucket}/{prefix}"]
        if tool == "rclone":
            extra = ["--fast-list", "--size-only"] if noop else []
            # rclone's endpoint is in the environment (RCLONE_CONFIG_BENCH_ENDPOINT, see env_for).
            return [str(BIN / "rclone"), "copy", *extra, str(src), f"bench:{bucket}/{prefix}"]
        if tool == "aws":
            verb = ["sync"] if noop else ["cp", "--recursive"]
            return [str(BIN / "aws"), "s3", *verb, str(src), f"s3://{bucket}/{prefix}", "--endpoint-url", ep,
                    "--only-show-errors"]
        raise ValueError(tool)

    def restore_command(self, tool: str, prefix: str, dest: Path, endpoint: str = None) -> list:
        """Bring s3://bucket/prefix back into dest, each tool at its defaults."""
        bucket, ep = self.server.bucket, endpoint or self.server.endpoint
        if tool == "obsbatch":
            return [str(BIN / "obsbatch"), "restore", "--target", str(dest), "--bucket", bucket, "--prefix", prefix,
                    "--endpoint", ep, "--region", "us-east-1", "--debug", "warning", "--summary", "json"]
        if tool == "s5cmd":
            return [str(BIN / "s5cmd"), "--endpoint-url", ep, "cp", f"s3://{bucket}/{prefix}*", f"{dest}/"]
        if tool == "rclone":
            return [str(BIN / "rclone"), "copy", f"bench:{bucket}/{prefix}", str(dest)]
        if tool == "aws":
            return [str(BIN / "aws"), "s3", "cp", "--recursive", f"s3://{bucket}/{prefix}", str(dest),
                    "--endpoint-url", ep, "--only-show-errors"]
        raise ValueError(tool)

    def tools(self) -> list:
        return [t for t in self.args.tools if t == "obsbatch" or shutil.which(str(BIN / t))]

    def scaled(self, name: str) -> dict:
        spec = dict(WORKLOADS[name])
        if self.args.tiny:
            spec["files"] = max(2, spec["files"] // 100)
            spec["size"] = min(spec["size"], 2 * MiB)
        return spec

    def record(self, tool, workload, rnd, result, files, nbytes, note="", extra=None) -> Run:
        wall, cpu, rss_main, rss_tree, srv, code, out = result
        ok = code == 0
        if not ok:
            note = (note + f" exit {code}: " + " ".join(out.split())[-300:]).strip()
        run = Run(tool, workload, rnd, round(wall, 3), round(cpu, 3), round(rss_main, 1), round(rss_tree, 1),
                  round(srv, 3), files, nbytes, ok, note, extra or {})
        self.runs.append(run)
        relay = f" relay {extra['relay_cpu_s']:5.2f}s" if extra and "relay_cpu_s" in extra else ""
        print(f"  {workload:11} round {rnd} {tool:8} wall {wall:7.2f}s cpu {cpu:6.2f}s rss {rss_main:6.1f}/"
              f"{rss_tree:6.1f} MiB server {srv:5.2f}s{relay} {'' if ok else 'FAILED ' + note}", flush=True)
        return run

    # -- workloads -----------------------------------------------------------------------------------
    def upload_workload(self, name: str) -> None:
        spec = self.scaled(name)
        src = self.work / "data" / f"{spec['files']}x{spec['size']}"
        nbytes = make_files(src, spec["files"], spec["size"], settle=not self.args.tiny)
        tools = self.tools()
        relay = Relay(self.server.endpoint, spec["rtt_ms"], spec.get("stream_rate")) if spec.get("rtt_ms") else None
        try:
            endpoint = relay.endpoint if relay else self.server.endpoint
            env = dict(self.env, RCLONE_CONFIG_BENCH_ENDPOINT=endpoint)
            for rnd in range(self.args.rounds):
                order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
                for tool in order:
                    prefix = f"{name}/{tool}/{rnd}/"
                    relay_cpu = proc_cpu(relay.pid) if relay else 0.0
                    command = self.command(tool, src, prefix, endpoint=endpoint,
                                           extra=spec.get("obsbatch_args", ()) if tool == "obsbatch" else ())
                    result = measure(command, env,
                                     self.keep | ({relay.pid} if relay else set()), self.server.process.pid)
                    extra = {}
                    if relay:
                        extra = {"rtt_ms": spec["rtt_ms"], "relay_cpu_s": round(proc_cpu(relay.pid) - relay_cpu, 3)}
                    run = self.record(tool, name, rnd, result, spec["files"], nbytes, extra=extra)
                    if tool == "obsbatch" and run.ok:
                        summary = json.loads(result[6].strip().splitlines()[-1])
                        run.extra["concurrency"] = summary.get("concurrency")
        finally:
            if relay:
                relay.stop()

    def noop_workload(self, name: str) -> None:
        spec = self.scaled(name)
        src = self.work / "data" / f"{name}-{spec['files']}x{spec['size']}"
        make_files(src, spec["files"], spec["size"], settle=not self.args.tiny)
        tools = self.tools()
        # Seed: every tool uploads the tree once into its own prefix (not timed); then the timed reruns.
        for tool in tools:
            prefix = f"{name}/{tool}/"
            result = measure(self.command(tool, src, prefix), self.env, self.keep, self.server.process.pid)
            print(f"  {name:9} seed     {tool:8} wall {result[0]:7.2f}s", flush=True)
            if result[5] != 0:
                raise RuntimeError(f"{tool} could not seed {name}: {result[6][-500:]}")
        for rnd in range(self.args.rounds):
            order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
            for tool in order:
                result = measure(self.command(tool, src, f"{name}/{tool}/", noop=True), self.env, self.keep,
                                 self.server.process.pid)
                run = self.record(tool, name, rnd, result, spec["files"], 0)
                if tool == "obsbatch" and run.ok:
                    summary = json.loads(result[6].strip().splitlines()[-1])
                    if summary.get("uploaded"):
                        run.ok, run.note = False, f"uploaded {summary['uploaded']} files on a no-op rerun"

    def restore_workload(self, name: str) -> None:
        spec = self.scaled(name)
        src = self.work / "data" / f"{spec['files']}x{spec['size']}"
        nbytes = make_files(src, spec["files"], spec["size"], settle=not self.args.tiny)
        prefix = f"{name}/seed/"
        result = measure(self.command("obsbatch", src, prefix), self.env, self.keep, self.server.process.pid)
        print(f"  {name:11} seed     obsbatch wall {result[0]:7.2f}s", flush=True)
        if result[5] != 0:
            raise RuntimeError(f"obsbatch could not seed {name}: {result[6][-500:]}")
        tools = self.tools()
        relay = Relay(self.server.endpoint, spec["rtt_ms"], spec.get("stream_rate")) if spec.get("rtt_ms") else None
        try:
            endpoint = relay.endpoint if relay else self.server.endpoint
            env = dict(self.env, RCLONE_CONFIG_BENCH_ENDPOINT=endpoint)
            keep = self.keep | ({relay.pid} if relay else set())
            for rnd in range(self.args.rounds):
                order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
                for tool in order:
                    dest = self.work / "restored" / f"{name}-{tool}-{rnd}"
                    relay_cpu = proc_cpu(relay.pid) if relay else 0.0
                    result = measure(self.restore_command(tool, prefix, dest, endpoint), env, keep,
                                     self.server.process.pid)
                    extra = {}
                    if relay:
                        extra = {"rtt_ms": spec["rtt_ms"], "relay_cpu_s": round(proc_cpu(relay.pid) - relay_cpu, 3)}
                    run = self.record(tool, name, rnd, result, spec["files"], nbytes, extra=extra)
                    got = sum(len(names) for _, _, names in os.walk(dest))
                    if run.ok and got != spec["files"]:
                        run.ok, run.note = False, f"restored {got} of {spec['files']} files"
                    shutil.rmtree(dest, ignore_errors=True)
        finally:
            if relay:
                relay.stop()

    def self_workload(self, name: str) -> None:
        spec = self.scaled(name)
        src = self.work / "data" / f"{spec['files']}x{spec['size']}"
        nbytes = make_files(src, spec["files"], spec["size"], settle=not self.args.tiny)
        relay = Relay(self.server.endpoint, spec["rtt_ms"], spec.get("stream_rate")) if spec.get("rtt_ms") else None
        try:
            endpoint = relay.endpoint if relay else self.server.endpoint
            keep = self.keep | ({relay.pid} if relay else set())
            for rnd in range(self.args.rounds):
                prefix, dest = f"{name}/obsbatch/{rnd}/", self.work / "restored" / f"{name}-{rnd}"
                restore = self.restore_command("obsbatch", prefix, dest, endpoint)
                commands = {"backup": self.command("obsbatch", src, prefix, endpoint=endpoint),
                            "verify": [str(BIN / "obsbatch"), "verify"] + restore[restore.index("--bucket"):],
                            "restore": restore, "restore-over": restore}
                for step in SELF_STEPS:
                    result = measure(commands[step], self.env, keep, self.server.process.pid)
                    run = self.record("obsbatch", f"{name}:{step}", rnd, result, spec["files"], nbytes)
                    got = sum(len(names) for _, _, names in os.walk(dest))
                    if step.startswith("restore") and run.ok and got != spec["files"]:
                        run.ok, run.note = False, f"restored {got} of {spec['files']} files"
                shutil.rmtree(dest, ignore_errors=True)
        finally:
            if relay:
                relay.stop()

    def scale_workload(self, name: str) -> None:
        spec = self.scaled(name)
        busy_count = 10 if self.args.tiny else 1000
        for files in sorted({spec["files"], max(2, spec["files"] // 10)}):
            src = self.work / "data" / f"scale-{files}"
            make_files(src, files, 0, settle=not self.args.tiny)
            for busy in (False, True):
                holders = Busy(busy_count, 20, self.work / "busy") if busy else None
                try:
                    for rnd in range(self.args.rounds):
                        cmd = self.command("obsbatch", src, f"{name}/", dry_run=True)
                        result = measure(cmd, self.env, self.keep | ({holders.parent.pid} if holders else set()),
                                         self.server.process.pid)
                        label = f"{name}-{files}" + ("-busy" if busy else "")
                        self.record("obsbatch", label, rnd, result, files, 0,
                                    extra={"busy_processes": busy_count if busy else 0, "fds_each": 20})
                finally:
                    if holders:
                        holders.stop()

    def run(self) -> None:
        for name in self.args.workloads:
            print(f"== {name}: {WORKLOADS[name]['what']}" + (" (tiny)" if self.args.tiny else ""), flush=True)
            if name.startswith("noop"):
                self.noop_workload(name)
            elif name == "scale":
                self.scale_workload(name)
            elif name.endswith("self"):
                self.self_workload(name)
            elif "restore" in name:
                self.restore_workload(name)
            else:
                self.upload_workload(name)


def summarize(runs: list) -> list:
    """Medians per (workload, tool), and each tool's ratio to the best peer on that workload."""
    rows = []
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.workload, r.tool), []).append(r)
    for (workload, tool), group in groups.items():
        good = [r for r in group if r.ok]
        med = (lambda attr: round(statistics.median(getattr(r, attr) for r in good), 3)) if good else (lambda a: None)
        wall = med("wall_s")
        files, nbytes = group[0].files, group[0].bytes
        rows.append(dict(workload=workload, tool=tool, runs=len(group), failed=len(group) - len(good),
                         wall_s=wall, cpu_s=med("cpu_s"), rss_main_mib=med("rss_main_mib"),
                         rss_tree_mib=med("rss_tree_mib"), server_cpu_s=med("server_cpu_s"),
                         relay_cpu_s=(round(statistics.median(r.extra["relay_cpu_s"] for r in good), 3)
                                      if good and "relay_cpu_s" in good[0].extra else None),
                         concurrency=[r.extra.get("concurrency") for r in good if r.extra.get("concurrency")] or None,
                         files_per_s=round(files / wall) if wall else None,
                         mb_per_s=round(nbytes / MiB / wall, 1) if wall and nbytes else None,
                         cpu_ms_per_file=round(1000 * med("cpu_s") / files, 3) if good and files else None))
    for row in rows:
        peers = [r["wall_s"] for r in rows if r["workload"] == row["workload"] and r["tool"] != "obsbatch"
                 and r["wall_s"]]
        row["ratio_to_best_peer"] = round(row["wall_s"] / min(peers), 2) if peers and row["wall_s"] else None
        workload, _, step = row["workload"].partition(":")
        if SELF_STEPS.get(step):  # a self workload's step: its ratio is to obsbatch's own other step
            base = next((r["wall_s"] for r in rows if r["workload"] == f"{workload}:{SELF_STEPS[step]}"), None)
            row["ratio_to_best_peer"] = round(row["wall_s"] / base, 2) if base and row["wall_s"] else None
    return sorted(rows, key=lambda r: (r["workload"], TOOLS.index(r["tool"]) if r["tool"] in TOOLS else 9))


def print_table(rows: list) -> str:
    head = ("workload", "tool", "wall s", "cpu s", "cpu ms/file", "rss MiB", "tree MiB", "files/s", "MB/s",
            "relay cpu s", "ratio")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r["workload"], r["tool"], r["wall_s"], r["cpu_s"], r["cpu_ms_per_file"], r["rss_main_mib"],
                 r["rss_tree_mib"], r["files_per_s"], r["mb_per_s"], r["relay_cpu_s"], r["ratio_to_best_peer"])
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def chart(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in dict.fromkeys(r["workload"] for r in rows) if not w.startswith("scale")]
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    if not workloads:
        return
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.2 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        values = [next((r["wall_s"] or 0 for r in rows if r["workload"] == workload and r["tool"] == t), 0)
                  for t in tools]
        bars = ax.bar(tools, values, color=["#d62728" if t == "obsbatch" else "#7f7f7f" for t in tools])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_title(workload, fontsize=9)
        ax.set_ylabel("wall seconds (median)", fontsize=8)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle("obsbatch vs peers, one local SeaweedFS (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated (default: all installed)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool and workload, alternating (default 3)")
    parser.add_argument("--workers", type=int, default=0, help="obsbatch --max-concurrent (default: obsbatch's own)")
    parser.add_argument("--tiny", action="store_true", help="1/100 of every workload: checks the harness, measures nothing")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the JSON and PNG go")
    parser.add_argument("--work", default=None, help="where data and server live (default: a temporary directory)")
    args = parser.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.tools = [t for t in args.tools.split(",") if t]
    unknown = [w for w in args.workloads if w not in WORKLOADS] + [t for t in args.tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown workload or tool: {', '.join(unknown)}")

    set_subreaper()
    work = Path(args.work or tempfile.mkdtemp(prefix="obsbatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        with seaweed.running("bench", str(work / f"weed-{os.getpid()}")) as server:
            bench = Bench(args, server, work)
            print(f"== SeaweedFS at {server.endpoint}; tools: {', '.join(bench.tools())}; rounds: {args.rounds}",
                  flush=True)
            bench.run()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarize(bench.runs)
    table = print_table(rows)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    meta = dict(date=started.isoformat(timespec="seconds"), machine=dict(
        cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
        memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)),
        versions=tool_versions(), commit=_commit(), args=dict(vars(args)), tiny=args.tiny)
    result = dict(meta=meta, summary=rows, runs=[asdict(r) for r in bench.runs], table=table)
    for name in (f"bench-{stamp}", "latest"):
        (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        chart(rows, out / "latest.png")
        shutil.copy(out / "latest.png", out / f"bench-{stamp}.png")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
    print(f"== results in {out}/latest.json and latest.png")
    return 0 if all(r.ok for r in bench.runs) else 1


def _commit() -> str | None:
    """The obsbatch commit measured (with "-dirty" if the work tree had changes)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def tool_versions() -> dict:
    versions = {}
    for tool, cmd in (("obsbatch", ["obsbatch", "--version"]), ("s5cmd", ["s5cmd", "version"]),
                      ("rclone", ["rclone", "version"]), ("aws", ["aws", "--version"]), ("weed", ["weed", "version"])):
        try:
            text = subprocess.run([str(BIN / cmd[0])] + cmd[1:], capture_output=True, text=True, timeout=30)
            versions[tool] = (text.stdout or text.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions[tool] = None
    return versions


if __name__ == "__main__":
    sys.exit(main())
