"""Another process that holds files open, as the writers (and readers) obsbatch must notice (or ignore) do.

`Holder((path, os.O_WRONLY), (other, os.O_RDONLY))` starts a Python process that opens each path with its
flags, says it is ready, and sleeps until it is killed; `pid` is what obsbatch should name as the holder.
"""

from __future__ import annotations

import os
import subprocess
import sys

_PROGRAM = ("import os,sys,time\n"
            "fds=[os.open(p, int(f)) for p, f in zip(sys.argv[1::2], sys.argv[2::2])]\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")


class Holder:
    """A process holding `path_flags` open from construction (once they are all open) until `stop()`."""

    def __init__(self, *path_flags):
        args = [os.fsdecode(x) if isinstance(x, bytes) else str(x) for pair in path_flags for x in pair]
        self.process = subprocess.Popen([sys.executable, "-c", _PROGRAM, *args], stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"the holder could not open {path_flags}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
