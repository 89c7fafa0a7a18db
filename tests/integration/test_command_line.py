"""`obsbatch` itself as a command: what a person sees for a bad flag and for --help."""

import subprocess
import sys


def test_usage_error_is_one_line_exit_2_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "obsbatch", "--source", "/s", "--bucket", "b", "--retries", "-2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "--retries: '-2' must be from 0 to 50" in proc.stderr


def test_help_lists_exit_codes_and_environment():
    proc = subprocess.run([sys.executable, "-m", "obsbatch", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "OBSBATCH_<FLAG>" in proc.stdout and "143" in proc.stdout and "--fd-check" in proc.stdout
    # It opens with the commands, one line each, before any flag (issue #18).
    opening = proc.stdout[:proc.stdout.index("--source DIR  ")]
    assert all(f"obsbatch {word}" in opening for word in ("[backup]", "restore", "verify ", "verify-manifest"))


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


def _obsbatch(*args, env=None):
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("OBSBATCH_", "AWS_"))}
    base.update(AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="not-a-real-secret",
                AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "obsbatch", *map(str, args)], capture_output=True, text=True,
                          env=base, timeout=120)


def test_summary_json_prints_one_object_even_for_a_fatal_error_at_start(tmp_path):
    import json

    for args in (["--source", tmp_path / "absent", "--bucket", "b", "--no-state", "--summary", "json"],
                 ["restore", "--bucket", "b", "--summary=json"],
                 ["--summary", "json", "verify", "--bucket", "b", "--no-such-flag"]):
        proc = _obsbatch(*args)
        [line] = proc.stdout.splitlines()
        report = json.loads(line)
        assert proc.returncode == 2 and report["exit_code"] == 2 and report["error"], (args, proc)
        assert "Traceback" not in proc.stderr


def test_an_unreachable_endpoint_is_the_same_exit_in_every_command(tmp_path):
    import json

    (tmp_path / "src").mkdir()
    old = tmp_path / "src" / "a.txt"
    old.write_bytes(b"a")
    os_utime_past(old)
    store = ["--bucket", "b", "--endpoint", "http://127.0.0.1:9", "--region", "us-east-1", "--retries", "0",
             "--summary", "json"]
    codes = {}
    # --min-age 0: a file made a moment ago is too new by its ctime, and a run with nothing to upload never
    # contacts the endpoint.
    for name, args in (("backup", ["--source", tmp_path / "src", "--no-state", "--min-age", "0"]),
                       ("restore", ["restore", "--target", tmp_path / "t"]), ("verify", ["verify"])):
        proc = _obsbatch(*args, *store)
        codes[name] = (proc.returncode, json.loads(proc.stdout.splitlines()[-1])["exit_code"])
        assert "An error occurred" not in proc.stderr and "Traceback" not in proc.stderr
    assert codes == {"backup": (1, 1), "restore": (1, 1), "verify": (1, 1)}, codes


def os_utime_past(path):
    import os
    import time

    os.utime(path, (time.time() - 3600, time.time() - 3600))


def test_the_same_store_fault_is_the_same_sentence_and_exit_in_every_command(tmp_path, s3server, prefix):
    """A missing bucket, rejected credentials, a host name that does not resolve (issue #18): backup, restore,
    verify and verify --manifest each give one sentence, no botocore text, and the same exit code."""
    import json

    from tests.conftest import make_tree, run_obsbatch, server_args

    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"a"})
    manifest = tmp_path / "m.jsonl"
    assert run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", "--manifest", manifest,
                        env=s3server.env()).returncode == 0
    good = s3server.env()
    faults = {
        "absent bucket": (["--bucket", "no-such-bucket-here", "--endpoint", s3server.endpoint], good, 2),
        "rejected credentials": (["--bucket", s3server.bucket, "--endpoint", s3server.endpoint],
                                 dict(good, AWS_SECRET_ACCESS_KEY="wrong-secret"), 2),
        "unresolvable host": (["--bucket", s3server.bucket, "--endpoint", "http://no-such-host.invalid:8333"], good, 1),
    }
    for fault, (store, env, expected) in faults.items():
        common = [*store, "--prefix", prefix, "--region", "us-east-1", "--retries", "0", "--summary", "json"]
        for command, args in (("backup", ["--source", src, "--no-state"]),
                              ("restore", ["restore", "--target", tmp_path / "t"]), ("verify", ["verify"]),
                              ("verify --manifest", ["verify", "--manifest", manifest])):
            proc = _obsbatch(*args, *common, env=env)
            report = json.loads(proc.stdout.splitlines()[-1])
            assert (proc.returncode, report["exit_code"]) == (expected, expected), (fault, command, proc)
            assert "An error occurred" not in proc.stderr and "Traceback" not in proc.stderr, (fault, command, proc)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
