"""How the process ends (cli.SkippedTeardown), in a real interpreter of its own."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_after_a_backup_the_last_exit_handler_ends_the_process_with_its_code_and_skips_the_teardown():
    """cli.SkippedTeardown: registered first, so it runs after every other exit handler; with a code set it
    flushes the output and ends the process there, so the interpreter never frees its objects (no __del__ at
    teardown); without one the process ends the ordinary way."""
    script = """
import atexit, sys
from obsbatch.cli import SkippedTeardown
teardown = SkippedTeardown()
atexit.register(teardown)
class Freed:
    def __del__(self):
        print("torn down", flush=True)
kept = Freed()
atexit.register(lambda: print("other handler", flush=True))
teardown.code = int(sys.argv[1]) if sys.argv[1] != "none" else None
print("done")
sys.exit(7)
"""
    skipped = subprocess.run([sys.executable, "-c", script, "3"], capture_output=True, text=True, cwd=REPO)
    assert (skipped.returncode, skipped.stdout.split()) == (3, ["done", "other", "handler"]), skipped
    ordinary = subprocess.run([sys.executable, "-c", script, "none"], capture_output=True, text=True, cwd=REPO)
    assert (ordinary.returncode, ordinary.stdout.split()) == (7, ["done", "other", "handler", "torn", "down"]), ordinary
