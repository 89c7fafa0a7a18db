"""The body of scripts/demo (run with the project's .venv)."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsbatch.testing import seaweed  # noqa: E402  (the same launcher the test fixture uses)


def build_tree(src: Path) -> subprocess.Popen:
    old = time.time() - 3600
    files = {
        "reports/2026/q3.csv": b"quarter,revenue\nq3,42\n",
        "reports/2026/q4.csv": b"quarter,revenue\nq4,43\n",
        "db/dump.sql": b"-- a finished dump\n" * 1000,
        "logs/app.log": b"a log that a running service is still writing\n",
        "incoming/upload.part": b"a file written a moment ago\n",
    }
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == "incoming/upload.part":
            # obsbatch judges a file by its ctime too, which no call can set back: the finished files settle
            # past --min-age (2 s) first, as on a real host; this one is written a moment before the run.
            time.sleep(2.1)
        path.write_bytes(data)
        if rel != "incoming/upload.part":
            os.utime(path, (old, old))
    os.mkfifo(src / "logs" / "control.fifo")
    os.symlink("reports/2026", src / "latest")
    # A real second process holds logs/app.log open for appending, as a logging service would.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; f=open(sys.argv[1],'ab'); print('ready',flush=True); time.sleep(600)",
         str(src / "logs" / "app.log")], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    return holder


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="obsbatch-demo-") as tmp:
        src = Path(tmp) / "export"
        print(f"== starting SeaweedFS on loopback (data in {tmp})", flush=True)
        with seaweed.running("my-backups", str(Path(tmp) / "weed")) as server:
            holder = build_tree(src)
            try:
                print(f"== sample tree in {src}; logs/app.log held open for writing by pid {holder.pid}", flush=True)
                cmd = [str(ROOT / ".venv" / "bin" / "obsbatch"), "--source", str(src), "--bucket", server.bucket,
                       "--prefix", "daily/", "--endpoint", server.endpoint, "--region", "us-east-1",
                       "--http-timeout", "15", "--max-concurrent", "2", "--debug", "info",
                       "--log-format", "console", "--summary", "json"]
                print("== " + " ".join(cmd[1:]), flush=True)
                env = dict(os.environ, **server.env())
                run = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
            finally:
                holder.kill()
                holder.wait()
            print(f"== obsbatch exited {run.returncode}; summary on stdout:")
            summary = json.loads(run.stdout)
            print(json.dumps(summary, indent=2, sort_keys=True))
            print(f"== objects now in s3://{server.bucket}/daily/:")
            client = server.client()
            for obj in client.list_objects_v2(Bucket=server.bucket, Prefix="daily/").get("Contents", []):
                print(f"   {obj['Size']:>8}  {obj['Key']}")
            print("== not uploaded, and why: see the file.skipped / file.deferred lines above")
            # A backup is only as good as its restore: read everything back, then bring the tree back.
            store = ["--bucket", server.bucket, "--prefix", "daily/", "--endpoint", server.endpoint, "--region",
                     "us-east-1", "--log-format", "console", "--summary", "json"]
            checks = [("verify", ["--read-data", "100"]), ("restore", ["--target", str(Path(tmp) / "restored")])]
            for command, extra in checks:
                print(f"== obsbatch {command} {' '.join(extra)}", flush=True)
                done = subprocess.run([cmd[0], command, *store, *extra], env=env, stdout=subprocess.PIPE, text=True)
                print(f"   exit {done.returncode}: {done.stdout.strip()}", flush=True)
                if done.returncode:
                    return done.returncode
        return run.returncode


if __name__ == "__main__":
    sys.exit(main())
