"""structlog set-up, done once in the CLI and once in each worker's initializer.

Logs go to stderr (stdout is for results: `--summary json`). On a TTY they are rendered for people; anywhere
else (journald, a pipe, a file) as one JSON object per line, which journald and log shippers keep intact.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import structlog

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}

# Field names whose values are never logged, whatever a caller passes. Credentials are never put into
# events in the first place; this is the second lock on the door.
_SECRET_FIELDS = frozenset({"aws_secret_access_key", "secret_key", "aws_session_token", "session_token",
                            "password", "authorization", "token"})


def _redact(_logger, _method, event_dict):
    for name in _SECRET_FIELDS.intersection(event_dict):
        event_dict[name] = "<redacted>"
    return event_dict


class _Host:
    """Names the host (--host-id) in every event: a fleet's logs, gathered in one place, say whose each line is."""

    def __init__(self, host: str):
        self.host = host

    def __call__(self, _logger, _method, event_dict):
        event_dict["host"] = self.host
        return event_dict


class _LineSink:
    """The stream structlog prints to. Normally it writes straight through; while a progress bar is on the
    terminal (progress.ProgressBar), whole lines go to `route` instead (tqdm.write), which prints them above
    the bar rather than through it."""

    def __init__(self, stream):
        self.stream = stream
        self.route = None
        self._partial = ""

    def write(self, text: str) -> int:
        if self.route is None:
            return self.stream.write(text)
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.route(line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


_sink: _LineSink | None = None


def route_lines(route) -> None:
    """Send each finished log line to `route(line)` from now on; None restores direct writes."""
    if _sink is not None:
        _sink.route = route


def configure(level: str = "info", fmt: str = "auto", stream=None, host: Optional[str] = None) -> None:
    """Configure structlog for this process. `fmt` is auto|json|console; `host`: named in every event."""
    global _sink
    stream = stream or sys.stderr
    _sink = _LineSink(stream)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer(ensure_ascii=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *([_Host(host)] if host else []),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(_sink),
        cache_logger_on_first_use=True,
    )
