"""`obsbatch` itself as a command: what a person sees for a bad flag and for --help."""

import subprocess
import sys


def test_usage_error_is_one_line_exit_2_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "obsbatch", "--source", "/s", "--bucket", "b", "--retries", "-2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "--retries: '-2' must be 0 or more" in proc.stderr


def test_help_lists_exit_codes_and_environment():
    proc = subprocess.run([sys.executable, "-m", "obsbatch", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "OBSBATCH_<FLAG>" in proc.stdout and "143" in proc.stdout and "--fd-check" in proc.stdout
