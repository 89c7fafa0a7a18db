"""`obsbatch [backup] --source DIR --bucket B ...`: its parser (also `obsbatch --help`, the bare form being a
backup: the original's command line, verbatim), and its run from flags to exit code (obsbatch.commands.pipeline
wires the run itself)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Mapping, Optional, Sequence

import structlog

from obsbatch import __version__, logs
from obsbatch.commands import runner
from obsbatch.config import BackupConfig, compose
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError
from obsbatch.options import Parser

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
  obsbatch restore --bucket B --prefix P --target DIR [--snapshot ID | --as-of TIME | --listing]
                                  bring a backup back: the latest snapshot by default (obsbatch restore --help)
  obsbatch snapshots --bucket B --prefix P [--json]
                                  list the snapshots, oldest first (obsbatch snapshots --help)
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
    parser = runner.build_parser("backup", prog="obsbatch", epilog=EPILOG, usage="obsbatch [COMMAND] [FLAGS]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"obsbatch {__version__}")
    return parser


def parse(argv: Optional[Sequence[str]], environ: Mapping[str, str]) -> BackupConfig:
    """Parse flags, fill the gaps from OBSBATCH_* variables, validate, return the frozen BackupConfig."""
    config = compose(BackupConfig, build_parser().values(argv, environ))
    if config.state is None and not config.no_state:
        # The default location depends on the environment (systemd's StateDirectory=, XDG); resolve it here,
        # once, so nothing later reads the environment.
        from obsbatch.stages.journal import default_path

        config = dataclasses.replace(config, state=default_path(environ))
    return config


def main(argv: Sequence[str], started: float) -> int:
    """`obsbatch [backup] FLAGS`: one backup pass, from its flags to its exit code."""
    try:
        config = parse(argv, os.environ)
    except UsageError as exc:
        runner.usage_exit(str(exc), "backup")

    # Everything obsbatch creates (the state journal and its -wal/-shm files, the lock, the manifest, and any
    # directory for them) is for its own user only: 0600 files in 0700 directories. The journal names every
    # backed-up path; the manifest too. Existing files and directories keep their modes.
    os.umask(0o077)
    if not config.dry_run and (config.no_state or not os.path.exists(config.state)):
        # No journal yet (or none kept): this run will upload, so the upload workers' fork server starts
        # now, on another core, while this process imports the pipeline and scans /proc (issue #12). Runs
        # with a journal start it when they meet their first file to upload: most of them have none.
        from obsbatch.engine import pool

        pool.start_fork_server()
    logs.configure(config.output.level, config.output.log_format, host=config.output.host_id)
    log = structlog.get_logger()
    # Imported here so that `--help` and usage errors do not pay for the pipeline's imports.
    from obsbatch.commands import pipeline
    from obsbatch.reporting import systemd, telemetry

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
        _fail(notifier, tel, exc, "interrupted before any upload", ExitCode.INTERRUPTED)
        raise FatalExit(ExitCode.INTERRUPTED, "interrupted before any upload") from None
    except ObsbatchError as exc:
        log.error("run.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        _fail(notifier, tel, exc, f"failed: {exc}", exc.exit_code)
        raise FatalExit(exc.exit_code, str(exc)) from None
    except Exception as exc:  # a bug: say so in one line; the traceback only at debug level
        log.error("run.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=config.output.traceback)
        _fail(notifier, tel, exc, f"crashed: {type(exc).__name__}", ExitCode.FATAL)
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
    return summary.exit_code


def _fail(notifier, tel, exc: BaseException, status: str, exit_code: int) -> None:
    tel.abort_run(exc, exit_code)
    tel.shutdown()
    notifier.stopping(status)
