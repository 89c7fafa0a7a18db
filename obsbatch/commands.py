"""`obsbatch restore` and `obsbatch verify` (issue #14): their parsers, and their runs from start to exit code.

Their configs (obsbatch.config.RestoreConfig, VerifyConfig) share the backup's parts for the store, the
transfer and the output (the same help, parsers and OBSBATCH_* variables, so one EnvironmentFile serves a
backup, its verification and its restore), plus a few fields of their own.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn, Sequence

import structlog

from obsbatch import logs
from obsbatch.config import COMMAND_CONFIGS, RestoreConfig, compose, flag_fields, options_class
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError
from obsbatch.options import ENV_PREFIX, Parser

DESCRIPTIONS = {
    "restore": "Bring a backup back into a directory: every object checked against its sha256 (and the manifest), "
               "written under a temporary name and renamed, original names, mtime and mode restored. Exit 0 all "
               "restored or identical, 1 conflicts, archived or failed objects, 2 usage or access errors.",
    "verify": "Check what is stored: every object present, with its size, ETag, version, sha256 metadata and "
              "retain-until, and a share of them read back in full. Exit 0 all good, 1 any missing or different, "
              "2 usage or access errors.",
}


def environment_names() -> frozenset:
    """Every OBSBATCH_* variable some command reads: one per flag of backup, restore and verify."""
    return frozenset(ENV_PREFIX + f.name.upper() for config_class in COMMAND_CONFIGS.values()
                     for f in flag_fields(config_class))


def build_parser(command: str) -> Parser:
    config_class = COMMAND_CONFIGS[command]
    return Parser(options_class(config_class), groups=config_class.GROUPS, prog=f"obsbatch {command}",
                  description=DESCRIPTIONS[command])


def parse(command: str, argv: Sequence[str], environ):
    """The command's config (RestoreConfig or VerifyConfig), from its flags and their OBSBATCH_* variables."""
    return compose(COMMAND_CONFIGS[command], build_parser(command).values(argv, environ))


def main(command: str, argv: Sequence[str]) -> NoReturn:
    try:
        config = parse(command, argv, os.environ)
    except UsageError as exc:
        print(f"obsbatch {command}: {exc} (see obsbatch {command} --help)", file=sys.stderr)
        raise FatalExit(ExitCode.FATAL, str(exc)) from None
    logs.configure(config.output.level, config.output.log_format)
    log = structlog.get_logger()
    try:
        if command == "restore":
            summary = _restore(config)
        else:
            from obsbatch import verify

            summary = verify.run(config)
    except ObsbatchError as exc:
        log.error(f"{command}.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        raise FatalExit(exc.exit_code, str(exc)) from None
    except KeyboardInterrupt:  # verify's thread pool, or a restore before its workers started
        log.warning(f"{command}.interrupted")
        raise FatalExit(ExitCode.INTERRUPTED, "interrupted") from None
    except Exception as exc:  # a bug: one line; the traceback only at debug level
        log.error(f"{command}.crashed", error=f"{type(exc).__name__}: {exc}",
                  exc_info=config.output.traceback)
        raise FatalExit(ExitCode.FATAL, f"crashed: {type(exc).__name__}: {exc}") from None
    report = summary.as_dict()
    (log.info if summary.exit_code == ExitCode.OK else log.warning)(f"{command}.summary", **report)
    if config.output.human_summary(sys.stderr.isatty()):  # every command ends with it on a terminal (issue #18)
        print(summary.human(), file=sys.stderr, flush=True)
    if config.output.summary == "json":
        print(json.dumps(report, sort_keys=True), flush=True)
    sys.exit(summary.exit_code)


def _restore(config: RestoreConfig):
    from obsbatch import restore
    from obsbatch.progress import ProgressBar

    summary = restore.RestoreSummary()
    with ProgressBar.for_terminal(summary, config.output):
        return restore.run(config, summary)
