"""The live progress line, on a real pseudo-terminal, and its absence anywhere else."""

import fcntl
import os
import pty
import struct
import termios
import re
import subprocess

from tests.conftest import AGE_RULE, REPO, make_tree, obsbatch_cmd, run_obsbatch, server_args, settled

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(args, env) -> tuple[int, str]:
    master, slave = pty.openpty()
    # A fresh pty is 0x0; a terminal emulator sets its size, and tqdm sizes the bar from it.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    full_env = dict(os.environ, **env, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(obsbatch_cmd(*args), stdin=slave, stdout=slave, stderr=slave, env=full_env, cwd=str(REPO))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_progress_bar_on_a_terminal_keeps_log_lines_whole(tmp_path, s3server, prefix):
    src = tmp_path / "src"
    make_tree(src, {f"d{i}/f{j}.txt": b"x" * 1000 for i in range(3) for j in range(10)})
    settled(AGE_RULE)
    (src / "fresh.txt").write_bytes(b"just written")  # deferred: one log line while the bar is up
    code, screen = run_on_terminal(["--source", src, *server_args(s3server, prefix), "--min-age", str(AGE_RULE)],
                                   s3server.env())
    assert code == 0, screen
    # The total became known when the walk ended, in bytes (issue #18: the ETA from bytes, not file counts):
    # 30 files of 1000 bytes and the deferred one of 12.
    assert re.search(r"100%\|[^|]*\| 29\.3k/29\.3k \[", screen), screen
    assert "B/s" in screen
    lines = [line.rstrip("\r").split("\r")[-1] for line in screen.split("\n")]
    [deferred] = [line for line in lines if "file.deferred" in line]
    assert re.match(r"^\d{4}-\d\d-\d\dT", deferred), repr(deferred)  # whole: not glued to a bar fragment
    assert "30 up" in screen


def test_no_progress_output_when_not_a_terminal(tmp_path, s3server, prefix):
    make_tree(tmp_path, {"a.txt": b"a"})
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 0, result
    assert "[00:" not in result.stderr  # the bar's timer (stderr is read as text: a "\r" would read as "\n")
    assert all(line.startswith("{") for line in result.stderr.splitlines())
    # --progress draws it anyway (a person watching a pipe, or a pty-less terminal multiplexer).
    forced = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix + "forced/"), "--progress",
                          env=s3server.env())
    assert forced.returncode == 0 and "obsbatch: 100%" in forced.stderr and "[00:" in forced.stderr, forced


def test_no_progress_and_quiet_on_a_terminal(tmp_path, s3server, versioned, prefix):
    make_tree(tmp_path / "src", {f"f{j}.txt": b"x" * 100 for j in range(3)})
    code, screen = run_on_terminal(["--source", tmp_path / "src", *server_args(s3server, prefix), "--no-progress",
                                    "--no-state"], s3server.env())
    assert code == 0 and "[00:" not in screen and "obsbatch: 3 files uploaded" in screen, screen  # no bar timer
    code, screen = run_on_terminal(["-q", "--source", tmp_path / "src", *server_args(s3server, prefix + "q/",
                                                                                     bucket=versioned),
                                    "--no-state"], s3server.env())
    # -q: warnings and errors only; a clean run prints nothing at all (to a versioned bucket: to one without,
    # the pre-flight warns once what a snapshot cannot bring back, issue #20).
    assert code == 0 and screen.strip() == "", screen


def test_a_terminal_run_ends_with_a_human_summary(tmp_path, s3server, prefix):
    src = tmp_path / "src"
    make_tree(src, {f"f{j}.txt": b"x" * 1000 for j in range(5)})
    settled(AGE_RULE)
    (src / "fresh.txt").write_bytes(b"just written")
    os.symlink("f0.txt", src / "link")
    manifest = tmp_path / "run.jsonl"
    code, screen = run_on_terminal(["--source", src, *server_args(s3server, prefix), "--manifest", manifest,
                                    "--min-age", str(AGE_RULE)], s3server.env())
    assert code == 0, screen
    tail = screen[screen.index("obsbatch: "):]
    assert re.search(r"obsbatch: 5 files uploaded \(4\.9 KiB\) in [\d.]+ s, .*/s, \d+ in flight \(auto\); 7 scanned", tail), tail
    assert "recorded: 1 symlinks and special files, in the snapshot" in tail and "deferred: 1 too_new" in tail
    assert "skipped:" not in tail
    assert f"manifest: {manifest}" in tail and "exit 0" in tail


def test_restore_and_verify_on_a_terminal_show_progress_and_end_with_a_human_summary(tmp_path, s3server, prefix):
    src = tmp_path / "src"
    make_tree(src, {f"f{j}.txt": b"x" * 100 for j in range(12)})
    assert run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", env=s3server.env()).returncode == 0
    code, screen = run_on_terminal(["restore", "--target", tmp_path / "back", *server_args(s3server, prefix)],
                                   s3server.env())
    assert code == 0, screen
    assert "12 restored, 0 identical, 0 conflicts, 0 failed" in screen and "B/s" in screen, screen
    tail = screen[screen.index("obsbatch restore: "):]
    assert re.search(r"obsbatch restore: 12 objects restored \(1\.2 KiB\) in [\d.]+ s, .*/s; 12 listed", tail), tail
    assert "exit 0" in tail
    code, screen = run_on_terminal(["verify", *server_args(s3server, prefix), "--read-data", "100"], s3server.env())
    assert code == 0, screen
    assert re.search(r"obsbatch verify: 12 of 12 objects as stored, 12 read back in full \(1\.2 KiB\)", screen), screen
    # HEADs only: nothing moves but objects, so the bar counts objects.
    code, screen = run_on_terminal(["verify", *server_args(s3server, prefix)], s3server.env())
    assert code == 0 and "12/12" in screen and "object/s" in screen, screen
