"""Command line: the command word, the strict environment, and the process's end.

`obsbatch [OUTPUT FLAGS] [COMMAND] FLAGS`: the commands are modules of obsbatch.commands (backup, restore,
verify, verify_manifest), each a `main(argv, started)` that returns its exit code or raises FatalExit. Every
flag may also come from `OBSBATCH_<FLAG>` (dashes as underscores, upper case), so a systemd EnvironmentFile
can hold a whole job; a flag on the command line beats its variable. Only this module ends the process
(`sys.exit`, whose last exit handler skips the interpreter's teardown after a backup: SkippedTeardown).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import time
from typing import Mapping, NoReturn, Optional, Sequence

from obsbatch.errors import FatalExit, UsageError
from obsbatch.options import ENV_PREFIX, check_environment, environment_names

#: The commands besides the bare backup, routed by their word.
COMMAND_WORDS = ("backup", "restore", "verify", "verify-manifest", "snapshots", "ls", "diff", "find", "dump", "forget", "stats", "tag")
#: Output flags every command has, which may come before the command word (`obsbatch --debug info restore`):
#: those that take a value, and those that do not.
OUTPUT_FLAGS = ("--debug", "--log-format", "--summary")
OUTPUT_SWITCHES = ("-v", "--verbose", "-q", "--quiet", "--progress", "--no-progress")


def split_command(argv: Sequence[str]) -> tuple:
    """(command word, its arguments): `obsbatch [OUTPUT FLAGS] [COMMAND] FLAGS...`; no word is `backup` (the
    original's command line, verbatim). Output flags before the word are handed to the command after it."""
    argv = list(argv)
    leading = []
    while argv and (argv[0] in OUTPUT_SWITCHES or argv[0].split("=", 1)[0] in OUTPUT_FLAGS):
        take = 1 if "=" in argv[0] or argv[0] in OUTPUT_SWITCHES else 2
        leading, argv = leading + argv[:take], argv[take:]
    if argv and argv[0] in COMMAND_WORDS:
        return argv[0], leading + argv[1:]
    return "backup", leading + argv


def wants_json(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """--summary json (or OBSBATCH_SUMMARY=json), read before anything else can fail."""
    given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--summary"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--summary=")]
    return (given[-1] if given else environ.get(ENV_PREFIX + "SUMMARY", "")) == "json"


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    started = time.time()
    teardown = SkippedTeardown()
    # Registered before any module registers its own exit handler: they run last-registered first
    # (https://docs.python.org/3/library/atexit.html), so this one runs after all of them.
    atexit.register(teardown)
    command, argv = split_command(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(command, argv, started)
    except FatalExit as stop:
        # --summary json always prints one JSON object, a fatal error at start included (issue #18).
        if wants_json(argv, os.environ):
            with contextlib.suppress(OSError):
                print(json.dumps({"command": command, "exit_code": stop.code, "error": stop.error}), flush=True)
        sys.exit(stop.code)
    if command == "backup":
        teardown.code = code
    sys.exit(code)


def _run(command: str, argv: Sequence[str], started: float) -> int:
    # Imported by name so that `--help` and usage errors pay only for the command they concern.
    import importlib

    from obsbatch.commands.runner import usage_exit

    try:
        check_environment(os.environ, environment_names())
    except UsageError as exc:
        usage_exit(str(exc))
    module = importlib.import_module("obsbatch.commands." + command.replace("-", "_"))
    return module.main(argv, started)


class SkippedTeardown:
    """The last exit handler: after a backup, which has written everything it writes, the interpreter's own
    teardown is skipped.

    That teardown (freeing every module object botocore, structlog and the rest made) took ~0.13 s after
    the last exit handler, a third of a no-op run over 20,000 files. By the time this runs, the journal is
    closed, the manifest fsynced, telemetry flushed, and the other exit handlers (multiprocessing's,
    concurrent.futures', logging's) have run; the output is flushed here, and os._exit ends the process
    with the run's code. Any other command (code None) ends the ordinary way.
    """

    def __init__(self) -> None:
        self.code: Optional[int] = None

    def __call__(self) -> None:
        if self.code is None:
            return
        if "logging" in sys.modules:  # its handler may have been registered before this one
            sys.modules["logging"].shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that left (`| head`), or a stream already closed
                pass
        os._exit(self.code)
