"""What every command does the same way: its parser from its config class, one sentence and exit 2 for a usage
error, and (for restore and verify) the run from flags to exit code: logging, the progress bar, one sentence
per fatal error, the summary in the log, on a terminal and as JSON.

The configs (obsbatch.config) share the parts for the store, the transfer and the output (the same help,
parsers and OBSBATCH_* variables, so one EnvironmentFile serves a backup, its verification and its restore).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Mapping, NoReturn, Sequence

import structlog

from obsbatch import logs
from obsbatch.config import COMMAND_CONFIGS, compose, options_class
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError
from obsbatch.options import Parser

def build_parser(command: str, **kwargs) -> Parser:
    """The parser of `command`'s flags, built from its config class (obsbatch.config.COMMAND_CONFIGS)."""
    config_class = COMMAND_CONFIGS[command]
    kwargs.setdefault("prog", f"obsbatch {command}")
    return Parser(options_class(config_class), groups=config_class.GROUPS, **kwargs)


def parse(command: str, argv: Sequence[str], environ: Mapping[str, str], **parser_kwargs):
    """The command's config, from its flags and their OBSBATCH_* variables; UsageError if they do not make one."""
    return compose(COMMAND_CONFIGS[command], build_parser(command, **parser_kwargs).values(argv, environ))


def usage_exit(message: str, command: str = "") -> NoReturn:
    """One sentence on stderr, exit 2 (with a pointer to the command's --help when there is a command)."""
    print(f"obsbatch: {message}" + (f" (see obsbatch {command} --help)" if command else ""), file=sys.stderr)
    raise FatalExit(ExitCode.FATAL, message)


def main(command: str, argv: Sequence[str], started: float, description: str, new_summary: Callable,
         run: Callable, by_bytes: Callable[[object], bool] = lambda config: True) -> int:
    """restore's and verify's run, from their flags to their exit code.

    new_summary(started=...) makes the command's summary; run(config, summary, counted) fills it, passing the
    items it lists through `counted` (the progress bar's total). by_bytes(config): whether the bar counts bytes
    (else objects). Any fatal error is one sentence in the log and a FatalExit with its exit code.
    """
    from obsbatch.reporting.progress import ProgressBar

    try:
        config = parse(command, argv, os.environ, description=description)
    except UsageError as exc:
        usage_exit(str(exc), command)
    logs.configure(config.output.level, config.output.log_format, host=config.output.host_id)
    log = structlog.get_logger()
    summary = new_summary(started=started)
    try:
        with ProgressBar.for_terminal(summary, config.output, by_bytes(config)) as bar:
            run(config, summary, bar.counted)
    except ObsbatchError as exc:
        log.error(f"{command}.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        raise FatalExit(exc.exit_code, str(exc)) from None
    except KeyboardInterrupt:  # a Ctrl-C before the workers started (then Shutdown owns the signal)
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
    return summary.exit_code
