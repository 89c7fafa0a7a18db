"""Command line: route the command word, parse and validate the backup's config, set up logging, run, exit.

Every flag may also come from `OBSBATCH_<FLAG>` (dashes as underscores, upper case), so a systemd
EnvironmentFile can hold a whole job. A flag on the command line beats its environment variable.
Only this module ends the process (`sys.exit`, and `_leave` after a run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Mapping, NoReturn, Optional, Sequence

import structlog

from obsbatch import __version__, logs
from obsbatch.config import BackupConfig, compose, options_class
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError
from obsbatch.options import ENV_PREFIX, Parser, check_environment

DESCRIPTION = """\
Back up a directory tree to S3-compatible storage, never uploading a file that is still being written.

commands (obsbatch COMMAND --help for each; without a command word, obsbatch runs backup):
  obsbatch [backup] --source DIR --bucket B ...
                                  back up a directory tree (the flags below)
  obsbatch verify-manifest FILE... [--expect-head HEX] [--public-key PEM]
                                  check manifests' hash chains, their links and the anchor (0 intact,
                                  1 tampered, 2 unreadable)
  obsbatch verify --bucket B --prefix P [--manifest FILE] [--read-data PERCENT]
                                  check the stored objects (obsbatch verify --help)
  obsbatch restore --bucket B --prefix P --target DIR
                                  bring a backup back (obsbatch restore --help)
"""

EPILOG = """\
environment:
  OBSBATCH_<FLAG>          any flag, e.g. OBSBATCH_MAX_CONCURRENT=6, OBSBATCH_DRY_RUN=1,
                           OBSBATCH_EXCLUDE='*.tmp,*.part' (repeatable flags: comma-separated)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE
                           credentials, through the standard AWS chain; never logged

exit codes:
  0    every eligible file was uploaded (skipped and deferred files are not failures)
  1    some upload failed, or part of the tree could not be read
  2    usage, configuration or fatal error (missing source, no bucket, bad credentials)
  3    all uploaded, but some file has been deferred for longer than --max-defer (stuck writer)
  75   another run holds the lock for the same state file and source (try again later)
  129/130/143  stopped by SIGHUP/SIGINT/SIGTERM (uploads in flight finished first, within --stop-timeout)
"""


def build_parser() -> Parser:
    parser = Parser(options_class(BackupConfig), BackupConfig.GROUPS, prog="obsbatch", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                     usage="obsbatch [COMMAND] [FLAGS]", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"obsbatch {__version__}")
    return parser


def parse(argv: Optional[Sequence[str]], environ: Mapping[str, str]) -> BackupConfig:
    """Parse flags, fill the gaps from OBSBATCH_* variables, validate, return the frozen BackupConfig."""
    config = compose(BackupConfig, build_parser().values(argv, environ))
    if config.state is None and not config.no_state:
        # The default location depends on the environment (systemd's StateDirectory=, XDG); resolve it here,
        # once, so nothing later reads the environment.
        from obsbatch.journal import default_path

        config = dataclasses.replace(config, state=default_path(environ))
    return config


def verify_manifest(argv: Sequence[str]) -> NoReturn:
    """`obsbatch verify-manifest FILE... [--expect-head HEX]`: 0 if every chain holds, each file follows the
    one before it and the last ends at the expected head; 1 if not; 2 if unreadable or misused."""
    from obsbatch import manifest

    parser = argparse.ArgumentParser(prog="obsbatch verify-manifest", allow_abbrev=False, description=(
        "Check run manifests' hash chains. Several files: consecutive runs, oldest first; each header must cite "
        "the head of the one before. --expect-head: the head logged when the last run ended (run.summary's "
        "manifest_head, journald, the trace), which whoever rewrites the file cannot recompute."))
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--expect-head", metavar="HEX", type=_hex_digest)
    parser.add_argument("--public-key", metavar="PEM", help="each FILE's head must carry a valid Ed25519 "
                        "signature by this key, in FILE.sig (written by --manifest-signing-key)")
    parser.error = lambda message: _usage_exit(f"verify-manifest: {message}")
    options = parser.parse_args(argv)
    try:
        verified = manifest.verify_sequence(options.files, options.expect_head)
        if options.public_key:
            from obsbatch import signing

            for path, result in zip(options.files, verified):
                why = signing.check(path, result.head, options.public_key)
                if why:
                    raise manifest.Broken(f"{path}: {why}")
    except manifest.Broken as exc:
        print(f"obsbatch: the manifest does not verify: {exc}", file=sys.stderr)
        sys.exit(ExitCode.PARTIAL)
    except UsageError as exc:
        _usage_exit(f"verify-manifest: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"obsbatch: cannot read a manifest: {getattr(exc, 'filename', None) or ''} "
              f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        sys.exit(ExitCode.FATAL)
    print(json.dumps({"manifest": options.files[-1], "manifests": len(verified), "verified": True,
                      "anchored": options.expect_head is not None, "signed": bool(options.public_key),
                      "files": sum(v.files for v in verified),
                      "chain_head": verified[-1].head}))
    sys.exit(ExitCode.OK)


def _hex_digest(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SHA-256 head (64 hex digits)")
    return text.lower()


def _usage_exit(message: str) -> NoReturn:
    print(f"obsbatch: {message}", file=sys.stderr)
    raise FatalExit(ExitCode.FATAL, message)


#: The commands besides the bare backup, routed by their word.
COMMAND_WORDS = ("backup", "restore", "verify", "verify-manifest")
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
    command, argv = split_command(sys.argv[1:] if argv is None else argv)
    try:
        _run(command, argv, started)
    except FatalExit as stop:
        # --summary json always prints one JSON object, a fatal error at start included (issue #18).
        if wants_json(argv, os.environ):
            with contextlib.suppress(OSError):
                print(json.dumps({"command": command, "exit_code": stop.code, "error": stop.error}), flush=True)
        sys.exit(stop.code)


def _run(command: str, argv: Sequence[str], started: float) -> NoReturn:
    from obsbatch import commands

    try:
        check_environment(os.environ, commands.environment_names())
    except UsageError as exc:
        _usage_exit(str(exc))
    if command == "verify-manifest":
        verify_manifest(argv)
    if command in ("restore", "verify"):
        commands.main(command, argv)
    try:
        config = parse(argv, os.environ)
    except UsageError as exc:
        print(f"obsbatch: {exc} (see obsbatch --help)", file=sys.stderr)
        raise FatalExit(ExitCode.FATAL, str(exc)) from None

    # Everything obsbatch creates (the state journal and its -wal/-shm files, the lock, the manifest, and any
    # directory for them) is for its own user only: 0600 files in 0700 directories. The journal names every
    # backed-up path; the manifest too. Existing files and directories keep their modes.
    os.umask(0o077)
    if not config.dry_run and (config.no_state or not os.path.exists(config.state)):
        # No journal yet (or none kept): this run will upload, so the upload workers' fork server starts
        # now, on another core, while this process imports the pipeline and scans /proc (issue #12). Runs
        # with a journal start it when they meet their first file to upload: most of them have none.
        from obsbatch import pool

        pool.start_fork_server()
    logs.configure(config.output.level, config.output.log_format)
    log = structlog.get_logger()
    # Imported here so that `--help` and usage errors do not pay for the pipeline's imports.
    from obsbatch import pipeline, systemd, telemetry

    if config.store.no_verify_ssl:
        log.warning("tls.unverified", endpoint=config.store.server,
                    detail="--no-verify-ssl: the endpoint's certificate is not checked; anyone on the network path "
                           "can read and alter what is backed up")
    # systemd's and OpenTelemetry's own variables, read once here like everything else from the environment.
    notifier = systemd.Notifier.from_environ(os.environ, os.getpid())
    tel = telemetry.Telemetry.from_config(config, os.environ)
    try:
        summary = pipeline.run(config, notifier, tel, started)
    except KeyboardInterrupt as exc:  # Ctrl-C before the upload loop took over the signal
        log.warning("run.interrupted", detail="stopped before any upload")
        _fail(notifier, tel, exc, "interrupted before any upload")
        raise FatalExit(ExitCode.INTERRUPTED, "interrupted before any upload") from None
    except ObsbatchError as exc:
        log.error("run.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        _fail(notifier, tel, exc, f"failed: {exc}")
        raise FatalExit(exc.exit_code, str(exc)) from None
    except Exception as exc:  # a bug: say so in one line; the traceback only at debug level
        log.error("run.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=config.output.traceback)
        _fail(notifier, tel, exc, f"crashed: {type(exc).__name__}")
        raise FatalExit(ExitCode.FATAL, f"crashed: {type(exc).__name__}: {exc}") from None
    tel.shutdown()
    if config.output.human_summary(sys.stderr.isatty()):
        print(summary.human(config.manifest or ""), file=sys.stderr, flush=True)
    if config.output.summary == "json":
        try:
            print(json.dumps(summary.as_dict(), sort_keys=True), flush=True)
        except BrokenPipeError:
            # The reader of stdout left (`obsbatch ... | head -c 100`). The run's outcome and exit code stand;
            # pointing stdout at /dev/null keeps the interpreter's final flush from raising again (the
            # recipe in Python's signal module documentation).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    _leave(summary.exit_code)


def _leave(code: int) -> NoReturn:
    """End a run that has written everything it writes: the exit handlers run, the output is flushed, and
    the interpreter's own teardown is skipped.

    That teardown (freeing every module object botocore, structlog and the rest made) took ~0.13 s after
    the last exit handler, a third of a no-op run over 20,000 files (issue #12). The journal is closed, the
    manifest fsynced and telemetry flushed before this; the exit handlers are multiprocessing's (the pool
    is already shut down) and concurrent.futures'.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left (`| head`), or a stream already closed
            pass
    os._exit(code)


def _fail(notifier, tel, exc: BaseException, status: str) -> None:
    tel.end_run(error=exc)
    tel.shutdown()
    notifier.stopping(status)
