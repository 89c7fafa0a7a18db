"""Exit codes and the typed errors that carry them (borg's pattern: the class knows its exit code).

Only `cli.main` turns these into `sys.exit`; everything else raises or returns data.
"""

import enum


class ExitCode(enum.IntEnum):
    """Documented process exit codes (README "Exit codes")."""

    OK = 0
    #: At least one eligible file failed to upload, or part of the tree could not be read.
    PARTIAL = 1
    #: Usage, configuration or fatal pre-flight error: nothing was uploaded.
    FATAL = 2
    #: Everything eligible was uploaded, but some file has been deferred for longer than --max-defer
    #: (a stuck writer keeps it out of the backup). 1 wins over this when both apply.
    STUCK = 3
    #: --max-changed: more of the previous snapshot's files changed or vanished than it allows (ransomware, a
    #: wrong mount); nothing was uploaded and no snapshot written.
    MASS_CHANGE = 4
    #: Another run holds the lock for the same state file and source (EX_TEMPFAIL: try again later).
    ALREADY_RUNNING = 75
    #: Stopped by SIGHUP (128 + 1), after draining the uploads in flight (the terminal went away).
    HANGUP = 129
    #: Stopped by SIGINT (128 + 2), after draining the uploads in flight.
    INTERRUPTED = 130
    #: Stopped by SIGTERM (128 + 15), after draining the uploads in flight.
    TERMINATED = 143


class ObsbatchError(Exception):
    """An error that ends the run with one clear sentence (its str) and its exit code."""

    exit_code = ExitCode.FATAL


class UsageError(ObsbatchError):
    """A flag or environment value is invalid."""


class ConfigError(ObsbatchError):
    """The configuration is valid on its own but cannot work here (missing source, ...)."""


class PreflightError(ObsbatchError):
    """The destination is unusable: no bucket, bad credentials, untrusted TLS (EndpointUnavailable: not answering)."""


class EndpointUnavailable(PreflightError):
    """The endpoint did not answer the pre-flight (refused, timed out, reset, or a 5xx after retries).

    Not fatal: the server may be down for maintenance or restarting, which the operator cannot fix by
    changing a flag. The run goes on walking and judging, reports every file it would have uploaded as
    failed without sending it, and exits 1; the next run uploads them.
    """

    exit_code = ExitCode.PARTIAL


class JournalError(ObsbatchError):
    """The state journal cannot be read or written (a full disk, another program holding its lock)."""


class FdCheckError(ObsbatchError):
    """`--fd-check strict` and some processes' open files could not be inspected."""


class AlreadyRunning(ObsbatchError):
    """Another obsbatch run holds the lock for this state file and source."""

    exit_code = ExitCode.ALREADY_RUNNING


class FatalExit(SystemExit):
    """The process ends here with `code` because of `error` (one sentence, already said on stderr or in the
    log); cli.main adds the one JSON object `--summary json` promises (issue #18), then exits."""

    def __init__(self, code: int, error: str):
        super().__init__(int(code))
        self.error = error
