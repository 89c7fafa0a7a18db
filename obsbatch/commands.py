"""`obsbatch restore` and `obsbatch verify` (issue #14): their options, and their runs from start to exit code.

Their flags for the store and the connection are the backup's own Config fields (the same help, parsers and
OBSBATCH_* variables, so one EnvironmentFile serves a backup, its verification and its restore), plus a few
of their own. Each builds a Config for the store (`source` is the restore's target, or unused) and hands it
to obsbatch.restore / obsbatch.verify.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import field
from typing import NoReturn, Optional, Sequence

import structlog

from obsbatch import logs
from obsbatch.options import ENV_PREFIX, Parser
from obsbatch.config import Config
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError

_STORE = ("bucket", "prefix", "endpoint", "region", "addressing_style", "ca_bundle", "no_verify_ssl", "sse_c_key_file")
_OUTPUT = ("debug", "log_format", "summary")


def percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value


#: The commands' own options, beside the Config fields they share with the backup.
_OWN = {
    "target": (Optional[str], field(default=None, metadata=dict(
        help="directory to restore into (required); created if missing", metavar="DIR"))),
    "overwrite": (bool, field(default=False, metadata=dict(
        help="replace local files whose content differs (default: leave them, report restore.conflict, exit 1)"))),
    "restore_manifest": (Optional[str], field(default=None, metadata=dict(
        args=["--manifest"], help="a run manifest to check every object against (its chain first): the bytes "
        "must have the SHA-256 it records, and every object it lists must be in the store", metavar="FILE"))),
    "verify_manifest": (Optional[str], field(default=None, metadata=dict(
        args=["--manifest"], help="the manifest is the truth: every object it says was uploaded must be there, "
        "in the recorded version, size, ETag, sha256 and retain-until (default: check the listing)",
        metavar="FILE"))),
    "restore_dry_run": (bool, field(default=False, metadata=dict(
        args=["--dry-run"], help="say what would be written, left as identical, and refused as a conflict; "
        "write nothing"))),
    "read_data": (float, field(default=0.0, metadata=dict(
        help="also read this share of the objects back in full and recompute their SHA-256 (a deterministic "
        "sample; 100: all)", metavar="PERCENT", type=percent))),
}

COMMANDS = {
    "restore": dict(
        description="Bring a backup back into a directory: every object checked against its sha256 (and the "
                    "manifest), written under a temporary name and renamed, original names, mtime and mode "
                    "restored. Exit 0 all restored or identical, 1 conflicts, archived or failed objects, 2 usage "
                    "or access errors.",
        groups=(("restore", ("target", "overwrite", "restore_manifest", "include", "exclude", "restore_dry_run")),
                ("store", _STORE),
                ("speed", ("max_concurrent", "max_concurrent_limit", "bwlimit", "max_rps", "http_timeout", "retries",
                           "stop_timeout")),
                ("output", _OUTPUT))),
    "verify": dict(
        description="Check what is stored: every object present, with its size, ETag, version, sha256 "
                    "metadata and retain-until, and a share of them read back in full. Exit 0 all good, 1 any "
                    "missing or different, 2 usage or access errors.",
        groups=(("verify", ("verify_manifest", "read_data")),
                ("store", _STORE),
                ("speed", ("max_concurrent", "http_timeout", "retries")),
                ("output", _OUTPUT))),
}


def environment_names() -> frozenset:
    """Every OBSBATCH_* variable some command reads: one per flag of the backup (Config) and of restore and
    verify (their own options)."""
    return frozenset(ENV_PREFIX + name.upper() for name in [f.name for f in dataclasses.fields(Config)] + list(_OWN))


def options_class(command: str) -> type:
    """A dataclass of the command's options: Config's own fields where shared, _OWN's otherwise."""
    config_fields = {f.name: f for f in dataclasses.fields(Config)}
    specs = []
    for _, names in COMMANDS[command]["groups"]:
        for name in names:
            if name in _OWN:
                specs.append((name, *_OWN[name]))
            else:
                f = config_fields[name]
                specs.append((name, f.type, field(default=f.default, metadata=f.metadata)))
    return dataclasses.make_dataclass(f"{command.capitalize()}Options", specs, frozen=True)


def build_parser(command: str) -> Parser:
    spec = COMMANDS[command]
    return Parser(options_class(command), groups=spec["groups"], prog=f"obsbatch {command}",
                  description=spec["description"])


def parse(command: str, argv: Sequence[str], environ) -> tuple:
    """(Config of the store, the command's own values)."""
    values = build_parser(command).values(argv, environ)
    own = {name: values.pop(name) for name in list(values) if name in _OWN}
    if command == "restore":
        if not own.get("target"):
            raise UsageError("--target is required (or OBSBATCH_TARGET)")
        values["source"] = own["target"]
    else:
        values["source"] = "."  # a Config needs one; verify reads no local tree
    return Config(**values), own


def main(command: str, argv: Sequence[str]) -> NoReturn:
    try:
        config, own = parse(command, argv, os.environ)
    except UsageError as exc:
        print(f"obsbatch {command}: {exc} (see obsbatch {command} --help)", file=sys.stderr)
        raise FatalExit(ExitCode.FATAL, str(exc)) from None
    logs.configure(config.debug, config.log_format)
    log = structlog.get_logger()
    try:
        if command == "restore":
            summary = _restore(config, own)
        else:
            from obsbatch import verify

            summary = verify.run(verify.VerifyJob(config, own.get("verify_manifest"), own.get("read_data", 0.0)))
    except ObsbatchError as exc:
        log.error(f"{command}.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        raise FatalExit(exc.exit_code, str(exc)) from None
    except KeyboardInterrupt:  # verify's thread pool, or a restore before its workers started
        log.warning(f"{command}.interrupted")
        raise FatalExit(ExitCode.INTERRUPTED, "interrupted") from None
    except Exception as exc:  # a bug: one line; the traceback only at debug level
        log.error(f"{command}.crashed", error=f"{type(exc).__name__}: {exc}",
                  exc_info=config.debug in ("debug", "trace"))
        raise FatalExit(ExitCode.FATAL, f"crashed: {type(exc).__name__}: {exc}") from None
    report = summary.as_dict()
    (log.info if summary.exit_code == ExitCode.OK else log.warning)(f"{command}.summary", **report)
    if sys.stderr.isatty():  # every command ends with the human summary on a terminal (issue #18)
        print(summary.human(), file=sys.stderr, flush=True)
    if config.summary == "json":
        print(json.dumps(report, sort_keys=True), flush=True)
    sys.exit(summary.exit_code)


def _restore(config: Config, own: dict):
    from obsbatch import restore
    from obsbatch.progress import ProgressBar

    summary = restore.RestoreSummary()
    job = restore.RestoreJob(config, os.fsencode(os.path.abspath(own["target"])), own.get("overwrite", False),
                             own.get("restore_manifest"), own.get("restore_dry_run", False))
    with ProgressBar.for_terminal(summary):
        return restore.run(job, summary)
