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


def test_a_misspelt_variable_in_an_environment_file_stops_the_run():
    # OBSBATCH_DRYRUN=1 meant a dry run; ignored, it would have been a real one (issue #18).
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSBATCH_")}
    proc = subprocess.run([sys.executable, "-m", "obsbatch", "--source", "/s", "--bucket", "b"],
                          capture_output=True, text=True, env=dict(env, OBSBATCH_DRYRUN="1"))
    assert proc.returncode == 2 and "OBSBATCH_DRYRUN" in proc.stderr and "OBSBATCH_DRY_RUN" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_delete_is_refused_not_taken_for_delete_source(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_bytes(b"must stay")
    proc = subprocess.run([sys.executable, "-m", "obsbatch", "backup", "--source", str(tmp_path), "--bucket", "b",
                           "--delete"], capture_output=True, text=True)
    assert proc.returncode == 2 and "did you mean --delete-source?" in proc.stderr, proc.stderr
    assert kept.read_bytes() == b"must stay"
