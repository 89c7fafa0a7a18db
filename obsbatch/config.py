"""Configuration from parts (issue #18): one frozen dataclass per concern, composed into one per command.

`StoreConfig` (where the objects are and how to reach them), `TransferConfig` (how much in flight, how fast,
how patient), `OutputConfig` (logs, summary, progress) are shared; `BackupConfig`, `RestoreConfig` and
`VerifyConfig` each hold those three and their own fields, so no command carries another's. A check lives in
the `__post_init__` of the part that holds the values it checks.

The parsers are built from these fields (obsbatch.options, argparse-dataclass), so a flag, its help text, its
type and its OBSBATCH_* variable live in one place. Each value parser raises `argparse.ArgumentTypeError` with
a sentence that names the problem; argparse prefixes it with the flag.
"""

# No `from __future__ import annotations` here: argparse-dataclass reads the real types (bool, Literal).
import argparse
import dataclasses
import functools
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

from obsbatch.errors import UsageError

MiB = 1024 * 1024
GiB = 1024 * MiB

# S3 limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html): a part is 5 MiB..5 GiB
# (the last may be smaller), at most 10,000 parts, and a single PUT at most 5 GiB.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_SINGLE_PUT = 5 * GiB

# aws-cli's units: KB and KiB are both 1024 (awscli.customizations.s3.utils.human_readable_to_int), so a
# value copied from an aws-cli config means the same here.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MiB, "mb": MiB, "mib": MiB,
               "g": GiB, "gb": GiB, "gib": GiB, "t": 1024 * GiB, "tb": 1024 * GiB, "tib": 1024 * GiB}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")

# botocore's own client-side check (botocore.handlers.VALID_BUCKET): the loosest name any S3 flavour
# accepts; stricter DNS rules are the server's to enforce, and it says so clearly.
_BUCKET_RE = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")


def parse_size(text: str) -> int:
    """'64MiB' -> 67108864. Binary units, as aws-cli reads them."""
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 16MiB, 64MB, 1048576)")
    value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero bytes")
    return value


# Every number a flag takes is bounded where it is parsed, with a sentence naming the range (exit 2): an
# unbounded one reaches code that never expected it (a thread per request in flight for 10^11 requests, a
# float overflow in a deadline, a pacing interval of 10^300 seconds).

#: Requests in flight at most (--max-concurrent, --max-concurrent-limit): a thread and a connection each;
#: four times the default limit, and more than any S3 endpoint is known to serve one client well.
MAX_IN_FLIGHT = 1024
#: Seconds any timeout or age may be at most: a day (--http-timeout, --stop-timeout), a year (--min-age).
DAY = 86400.0
YEAR = 365 * DAY
#: A duration (--max-defer, --object-lock-retain, --stale) at most: 100 years, S3's longest retention period.
MAX_DURATION = 100 * YEAR


def whole_number(minimum: int, maximum: int):
    """A parser of whole numbers from minimum to maximum, named for argparse's messages."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be from {minimum} to {maximum}")
        return value

    return parse


in_flight = whole_number(1, MAX_IN_FLIGHT)
#: Retries per request: botocore's own retry modes count attempts in the tens, and 50 retries with backoff is
#: already hours of waiting.
retry_count = whole_number(0, 50)


def concurrency(text: str) -> Optional[int]:
    """'auto' (None: tuned as the run goes) or a whole number of uploads in flight, 1 to MAX_IN_FLIGHT."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a whole number") from None
    if not 1 <= value <= MAX_IN_FLIGHT:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to {MAX_IN_FLIGHT}, or 'auto'")
    return value


def _finite(text: str, noun: str) -> float:
    """A finite float, or one sentence naming what was expected (noun: "number of seconds")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite {noun}")
    return value


def _seconds(text: str, minimum_exclusive: bool, maximum: float) -> float:
    value = _finite(text, "number of seconds")
    if value < 0 or (minimum_exclusive and value == 0) or value > maximum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {'more than' if minimum_exclusive else 'at least'} 0 "
                                         f"and at most {maximum:.0f} seconds")
    return value


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration(text: str) -> float:
    """'24h' -> 86400.0; a plain number is seconds (s, m/min, h, d, w, y: 365 days)."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", str(text).lower())
    if not m or m.group(2) not in _DURATION_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 90s, 30m, 24h, 2d, 4w, 1y)")
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if value > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is more than 100 years ({MAX_DURATION / DAY:.0f}d)")
    return value


#: --max-rps: from one request every 100 s (a throttled store trickled at) to a million a second.
MIN_RPS, MAX_RPS = 0.01, 1e6


def request_rate(text: str) -> float:
    """--max-rps: requests per second, MIN_RPS to MAX_RPS."""
    value = _finite(text, "number")
    if not MIN_RPS <= value <= MAX_RPS:
        raise argparse.ArgumentTypeError(f"{text!r} must be from {MIN_RPS} to {MAX_RPS:.0f} requests per second")
    return value


def timeout_seconds(text: str) -> float:
    """--http-timeout: more than 0, at most a day."""
    return _seconds(text, minimum_exclusive=True, maximum=DAY)


def stop_seconds(text: str) -> float:
    """--stop-timeout: 0 (abort at once) to a day."""
    return _seconds(text, minimum_exclusive=False, maximum=DAY)


def age_seconds(text: str) -> float:
    """--min-age: 0 to a year."""
    return _seconds(text, minimum_exclusive=False, maximum=YEAR)


def _shown(url: str) -> str:
    """A URL as quoted in an error message: any user:password@ part masked, control characters escaped."""
    return repr(re.sub(r"//[^/]*@", "//***@", url))


def _no_controls(text: str) -> None:
    # urlsplit silently drops tabs and newlines (bpo-43882), so "http://a\nb" would pass as host "ab" while
    # the text itself, newline and all, went on to botocore.
    if any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{_shown(text)} must not contain spaces or control characters")


def endpoint_url(text: str) -> str:
    """An http(s) URL with a host and nothing after the authority but an optional '/'."""
    url = urllib.parse.urlsplit(http_url(text))
    if url.username or url.password:
        # Credentials in a URL end up in logs and process listings; the AWS chain is the place for them.
        raise argparse.ArgumentTypeError("the endpoint URL must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise argparse.ArgumentTypeError(f"{_shown(text)} must be just scheme://host[:port]")
    return text.rstrip("/")


def readable_file(text: str) -> str:
    """A path to a file that exists and can be read now (a CA bundle)."""
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not a readable file")
    return os.path.abspath(text)


def http_url(text: str) -> str:
    """An http(s) URL with a host; a path is allowed (OTLP receivers may sit under one)."""
    _no_controls(text)
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # raises ValueError on a bad port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(f"{_shown(text)} must be an http:// or https:// URL with a host")
    return text


def bucket_name(text: str) -> str:
    if not _BUCKET_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid bucket name (letters, digits, '.', '-', '_')")
    return text


# botocore's own check (botocore.utils.validate_region_name), done at parse time rather than in every worker.
_REGION_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$")


def region_name(text: str) -> str:
    if not _REGION_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid region name (letters, digits and '-')")
    return text


# A host name's characters (RFC 1123 labels, dots, and '_' as systemd's %H may give): a --host-id becomes part of
# an object key (the fleet marker, s3.fleet) and a label of every log line and metric.
_HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def host_id(text: str) -> str:
    if not _HOST_ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid host id (at most 253 letters, digits, '.', '-', '_', "
                                         "starting with a letter or digit)")
    return text


def lock_mode(text: str) -> str:
    value = str(text).strip().upper()
    if value not in ("GOVERNANCE", "COMPLIANCE"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an Object Lock mode (GOVERNANCE or COMPLIANCE)")
    return value


def sse_algorithm(text: str) -> str:
    value = {"aes256": "AES256", "aws:kms": "aws:kms"}.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a server-side encryption (AES256 or aws:kms; for "
                                         "customer keys, --sse-c-key-file)")
    return value


def storage_class_name(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_]{1,64}$", str(text)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a storage class name (letters, digits and '_')")
    return str(text)


#: rclone's units for --bwlimit: a plain number is KiB/s; B, K, M, G, T are bytes, KiB, MiB, GiB, TiB per second.
_RATE_UNITS = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def _rate(text: str) -> Optional[float]:
    """'4M' -> 4 MiB/s in bytes; 'off' -> None (no limit)."""
    low = text.strip().lower()
    if low == "off":
        return None
    number, unit = (low[:-1], low[-1]) if low[-1:] in _RATE_UNITS else (low, "k")
    try:
        value = float(number) * _RATE_UNITS[unit]
    except ValueError:
        value = -1.0
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (examples: 512K, 4M, 1.5G, off)")
    # From a byte a second (a fraction of one never completes a request) to 1 PiB/s (no limit at all).
    if not 1 <= value <= 1024 ** 5:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1B to 1024T bytes per second, or off")
    return value


def bandwidth(text: str) -> Tuple[Tuple[int, Optional[float]], ...]:
    """--bwlimit: a rate ('4M', 'off') or an rclone-style timetable ('08:00,4M 19:00,off'), as a tuple of
    (minute of the day it starts, bytes per second or None), sorted. A single rate starts at 00:00."""
    entries = str(text).split()
    if len(entries) == 1 and "," not in entries[0]:
        return ((0, _rate(entries[0])),)
    table = []
    for entry in entries:
        when, sep, rate = entry.partition(",")
        try:
            hours, minutes = (int(x) for x in when.split(":"))
            if not (sep and 0 <= hours < 24 and 0 <= minutes < 60):
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"{entry!r} is not a timetable entry HH:MM,RATE (example: "
                                             "'08:00,4M 19:00,off')") from None
        table.append((hours * 60 + minutes, _rate(rate)))
    if len({start for start, _ in table}) != len(table):
        raise argparse.ArgumentTypeError(f"{text!r} names the same time twice")
    return tuple(sorted(table))



def _opt(help: str, **metadata) -> dict:
    return dict(help=help, **metadata)


# Fields more than one command has, made by a function each: a dataclasses.Field belongs to one class.
def _include_field():
    return field(default=(), metadata=_opt("take only files whose relative path matches GLOB, or lies beneath a "
                                           "directory it matches (repeatable; `*` spans `/`; `docs` is the whole "
                                           "directory)", metavar="GLOB", append=True))


def _exclude_field():
    return field(default=(), metadata=_opt("leave out files whose relative path matches GLOB, or lies beneath a "
                                           "directory it matches (repeatable; beats --include)", metavar="GLOB", append=True))


def _tuples(config, names) -> None:
    # argparse hands None for a repeatable flag never given; keep the field a tuple.
    for name in names:
        object.__setattr__(config, name, tuple(getattr(config, name) or ()))


@dataclass(frozen=True)
class StoreConfig:
    """Where the objects are and how to reach them: the same for every command."""

    bucket: Optional[str] = field(default=None, metadata=_opt("the bucket (required)", metavar="NAME", type=bucket_name))
    prefix: str = field(default="", metadata=_opt("key prefix; a missing trailing '/' is added, as `aws s3 sync` does", metavar="PREFIX"))
    endpoint: Optional[str] = field(default=None, metadata=_opt("S3 endpoint URL (default: AWS)", metavar="URL", type=endpoint_url))
    region: Optional[str] = field(default=None, metadata=_opt("signing region (default: the AWS chain, else us-east-1)", metavar="R", type=region_name))
    addressing_style: Literal["auto", "path", "virtual"] = field(default="auto", metadata=_opt("S3 addressing style (default auto)"))
    checksum_mode: Literal["when_required", "when_supported"] = field(default="when_required", metadata=_opt(
        "botocore's extra flexible checksums; when_required (default) works with Huawei OBS and Ceph (boto/boto3#4392). "
        "Content-MD5 is sent either way"))
    ca_bundle: Optional[str] = field(default=None, metadata=_opt(
        "PEM file of the CA certificates to trust for an https endpoint; default: botocore's (AWS_CA_BUNDLE)",
        metavar="PATH", type=readable_file))
    no_verify_ssl: bool = field(default=False, metadata=_opt(
        "do not verify the endpoint's TLS certificate (insecure: anyone on the path can read and alter the data)"))
    sse_c_key_file: Optional[str] = field(default=None, metadata=_opt(
        "SSE-C: the objects are encrypted with the 256-bit key in this file (32 raw bytes or their base64), sent "
        "on every request that writes or reads them; never over plain http except to loopback", metavar="PATH",
        type=readable_file))

    def __post_init__(self) -> None:
        if not self.bucket:
            raise UsageError("--bucket is required (or OBSBATCH_BUCKET)")
        prefix = self.prefix
        if prefix.startswith("/"):
            raise UsageError(f"--prefix {prefix!r} must not start with '/'")
        if ".." in prefix.split("/"):
            raise UsageError(f"--prefix {prefix!r} must not contain a '..' segment")
        parts = prefix.split("/")
        reserved = next((n for n, part in enumerate(parts) if part.endswith(".obsbatch")), None)
        if reserved is not None:
            # `p1.obsbatch/` is where the prefix `p1/` keeps its snapshots, manifests and fleet markers (and
            # `.obsbatch/` the prefix ""'s): data there would be read as records, and overwritten by them.
            owner = "/".join(parts[:reserved] + [parts[reserved][:-len(".obsbatch")]])
            raise UsageError(f"--prefix {prefix!r} lies in {'/'.join(parts[:reserved + 1]) + '/'!r}, obsbatch's own "
                             f"area beside the prefix {(owner + '/') if owner else ''!r} (snapshots, manifests, "
                             "fleet markers); choose another prefix")
        if prefix and not prefix.endswith("/"):
            object.__setattr__(self, "prefix", prefix + "/")
        if self.ca_bundle and self.no_verify_ssl:
            raise UsageError("--ca-bundle and --no-verify-ssl contradict each other; give one")
        if self.sse_c_key_file:
            from obsbatch.archive import plain_http_to_remote_host

            if plain_http_to_remote_host(self.endpoint):
                raise UsageError(f"--sse-c-key-file would send the key in clear text to {_shown(self.endpoint)}; "
                                 "use an https:// endpoint (plain http is allowed to loopback only)")
        self.customer_key  # reads and checks the SSE-C key now: a usage error, exit 2

    @property
    def server(self) -> str:
        """The endpoint as messages name it."""
        return self.endpoint or "AWS"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @functools.cached_property
    def customer_key(self):
        """The SSE-C key (obsbatch.archive.CustomerKey), or None."""
        from obsbatch.archive import CustomerKey

        return CustomerKey.read(self.sse_c_key_file) if self.sse_c_key_file else None

    @functools.cached_property
    def reading(self):
        """The archive controls a command that reads objects needs (the SSE-C key, if any)."""
        from obsbatch.archive import ArchiveControls

        return ArchiveControls(customer_key=self.customer_key)


@dataclass(frozen=True)
class TransferConfig:
    """How much is in flight, how fast, and how patient: uploads, downloads and checks alike."""

    max_concurrent: Optional[int] = field(default=None, metadata=_opt(
        "requests in flight at once: auto (default) starts from the pre-flight's round trip (at least 8) and tunes "
        "it from the completion rate and the server's throttling, up to --max-concurrent-limit; a number fixes it. "
        "Worker processes up to the number of CPUs, each with threads for the rest", metavar="N|auto", type=concurrency))
    max_concurrent_limit: int = field(default=256, metadata=_opt(
        "with --max-concurrent auto: the most requests in flight it may reach (default 256)", metavar="N",
        type=in_flight))
    bwlimit: Optional[tuple] = field(default=None, metadata=_opt(
        "bytes sent or received at most RATE bytes/s, all workers together (rclone's units: 512K, 4M, 1.5G, off; "
        "a plain number is KiB/s), or a timetable in local time: '08:00,4M 19:00,off'", metavar="RATE",
        type=bandwidth))
    max_rps: Optional[float] = field(default=None, metadata=_opt(
        "at most N HTTP requests per second to the endpoint, summed over all workers and retries included "
        "(default: no limit); keeps a server that throttles bursts (503 SlowDown) from being pushed into it",
        metavar="N", type=request_rate))
    http_timeout: float = field(default=15.0, metadata=_opt("connect and read timeout per HTTP request, seconds (default 15; at most 86400)", metavar="S", type=timeout_seconds))
    retries: int = field(default=5, metadata=_opt("retries per request after the first attempt (default 5; at most 50)", metavar="N", type=retry_count))
    stop_timeout: float = field(default=60.0, metadata=_opt(
        "after SIGTERM/SIGINT/SIGHUP, let the transfers in flight finish for at most S seconds, then abort them "
        "(default 60; at most 86400)", metavar="S", type=stop_seconds))

    # cached_property (it writes the instance __dict__, which a frozen dataclass allows): these are read for
    # every file and batch, and os.cpu_count() is a system call's worth of work each time.
    @functools.cached_property
    def most_in_flight(self) -> int:
        """The most requests that may ever be in flight: --max-concurrent N, or auto's --max-concurrent-limit."""
        return self.max_concurrent or self.max_concurrent_limit

    @functools.cached_property
    def processes(self) -> int:
        """Worker processes: one per CPU at most. Python code is bound to one core per process."""
        return max(1, min(self.most_in_flight, os.cpu_count() or 1))

    @functools.cached_property
    def threads(self) -> int:
        """Threads per worker process at most, so that processes x threads >= most_in_flight; a worker starts
        them as the level it must follow needs them.

        A small PUT spends most of its time waiting on the server, during which a thread gives up the GIL;
        and an S3 server does less work per request with more of them in flight (SeaweedFS: ~1.1 ms of
        CPU per PUT with 4 in flight, ~0.85 ms with 8; issue #5).
        """
        return -(-self.most_in_flight // self.processes)

    @property
    def grace(self) -> float:
        """How long past the stop a worker may take to answer: one request's timeout, and some."""
        return self.http_timeout + 5


_LEVELS = ("error", "warn", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class OutputConfig:
    """What a person or a log collector sees: the log, the progress bar, the summary."""

    # Not a Literal: None (not given) is how -v and -q are told apart from an explicit --debug.
    debug: Optional[str] = field(default=None, metadata=_opt(
        "log level: error, warn, info (default), debug, trace", metavar="LEVEL", choices=_LEVELS))
    verbose: bool = field(default=False, metadata=_opt("log level debug (--debug debug)", args=["-v", "--verbose"]))
    quiet: bool = field(default=False, metadata=_opt(
        "warnings and errors only: log level warn, no progress bar, no summary on the terminal",
        args=["-q", "--quiet"]))
    log_format: Literal["auto", "json", "console"] = field(default="auto", metadata=_opt("auto: console on a TTY, else JSON lines (default)"))
    progress: Optional[bool] = field(default=None, metadata=_opt(
        "draw a progress bar on stderr (default: when stdout and stderr are both terminals)", negatable=True))
    summary: Literal["none", "json"] = field(default="none", metadata=_opt("json: print the final summary as one JSON object on stdout"))
    host_id: Optional[str] = field(default=None, metadata=_opt(
        "this host's name in every log line, snapshot, manifest and metric (OTEL host.name), so that a fleet "
        "writing into one bucket can be told apart (default: the host name)", metavar="NAME", type=host_id))

    def __post_init__(self) -> None:
        given = [flag for flag, on in (("--debug", self.debug), ("--verbose", self.verbose), ("--quiet", self.quiet)) if on]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(given)} each set the log level; give one")
        if self.host_id is None:
            import socket

            name = socket.gethostname()
            if not _HOST_ID_RE.match(name):
                raise UsageError(f"the host name {name!r} cannot name this host in the store; set --host-id "
                                 "(or OBSBATCH_HOST_ID)")
            object.__setattr__(self, "host_id", name)

    @property
    def level(self) -> str:
        """The log level: --debug, or -v (debug), or -q (warn), else info."""
        return self.debug or ("debug" if self.verbose else "warn" if self.quiet else "info")

    @property
    def traceback(self) -> bool:
        """Whether a crash logs its traceback (debug level and below)."""
        return self.level in ("debug", "trace")

    def bar(self, terminal: bool) -> bool:
        """Whether to draw the progress bar, given whether stdout and stderr are both terminals."""
        return not self.quiet and (terminal if self.progress is None else self.progress)

    def human_summary(self, terminal: bool) -> bool:
        """Whether to print the human summary, given whether stderr is a terminal."""
        return terminal and not self.quiet


def percent(text: str) -> float:
    """A share from 0 to 100."""
    value = _finite(text, "percentage from 0 to 100")
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value


#: The parts every command's config holds, by field name.
PARTS = {"store": StoreConfig, "transfer": TransferConfig, "output": OutputConfig}


@dataclass(frozen=True)
class BackupConfig:
    """Everything a backup run needs, validated once. Field names are the flags (`--max-concurrent`) and,
    upper-cased with an `OBSBATCH_` prefix, the environment fallbacks (`OBSBATCH_MAX_CONCURRENT`)."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    source: Optional[str] = field(default=None, metadata=_opt("directory tree to back up (required)", metavar="DIR"))
    min_age: float = field(default=2.0, metadata=_opt("a file modified less than S seconds ago is deferred (default 2; at most a year)", metavar="S", type=age_seconds))
    include: tuple = _include_field()
    exclude: tuple = _exclude_field()
    follow_symlinks: bool = field(default=False, metadata=_opt("follow symbolic links (loop-safe); default: skip them"))
    allow_outside_source: bool = field(default=False, metadata=_opt(
        "with --follow-symlinks, also follow links that lead outside --source; default: skip them"))
    dry_run: bool = field(default=False, metadata=_opt("walk and judge, upload nothing, contact no server"))
    multipart_threshold: int = field(default=64 * MiB, metadata=_opt("files at least this big go multipart (default 64MiB)", metavar="SIZE", type=parse_size))
    multipart_chunksize: int = field(default=16 * MiB, metadata=_opt("multipart part size (default 16MiB; min 5MiB; raised to fit 10,000 parts)", metavar="SIZE", type=parse_size))
    fd_check: Literal["best-effort", "strict"] = field(default="best-effort", metadata=_opt(
        "strict: exit 2 if any process's open files cannot be inspected (default best-effort: warn once)"))
    verify_after_upload: bool = field(default=False, metadata=_opt(
        "read each object back (HEAD) after uploading it and compare length, ETag and sha256 metadata"))
    verify_remote: bool = field(default=False, metadata=_opt(
        "list the destination once and reconcile it with the journal: re-upload what is missing or differs, "
        "record identical objects without uploading them (recovers a lost journal cheaply)"))
    max_defer: float = field(default=86400.0, metadata=_opt(
        "a file deferred for longer than this (across runs, with a journal) is reported as stuck: warning "
        "file.stuck and exit 3 (default 24h)", metavar="DURATION", type=duration))
    state: Optional[str] = field(default=None, metadata=_opt(
        "state journal (sqlite); default $STATE_DIRECTORY/obsbatch.db under systemd, else "
        "$XDG_STATE_HOME/obsbatch/obsbatch.db", metavar="PATH"))
    no_state: bool = field(default=False, metadata=_opt("keep no journal: compare nothing, upload every stable file"))
    max_changed: float = field(default=50.0, metadata=_opt(
        "mass-change guard: when more than this share of the previous snapshot's files changed (size or mtime) "
        "or vanished in one run, upload nothing, write no snapshot, exit 4 (default 50; 100: off; applies from "
        "100 files)", metavar="PERCENT", type=percent))
    delete_source: bool = field(default=False, metadata=_opt(
        "move mode: remove each local file once its upload is verified, if it is still exactly what was uploaded "
        "and nobody holds it open for writing; skipped/deferred/failed files and directories stay"))
    manifest: Optional[str] = field(default=None, metadata=_opt(
        "write a hash-chained JSON Lines record of every file decision here (check: obsbatch verify-manifest PATH)",
        metavar="PATH"))
    upload_manifest: bool = field(default=False, metadata=_opt(
        "also store the manifest at <prefix without '/'>.obsbatch/manifests/<run-id>.jsonl, beside the data"))
    # Once --manifest-signing-key (and OBSBATCH_MANIFEST_SIGNING_KEY), when it signed only a manifest: both
    # names still work, so an older unit or EnvironmentFile keeps signing.
    signing_key: Optional[str] = field(default=None, metadata=_opt(
        "sign every snapshot record (<id>.json.sig beside it) and, with --manifest, the manifest's chain head "
        "(<manifest>.sig) with this Ed25519 private key (PEM); restore, verify and snapshots check them with "
        "--public-key (needs the 'signing' extra; old name --manifest-signing-key)", metavar="PATH",
        type=readable_file, args=["--signing-key", "--manifest-signing-key"], env_alias="MANIFEST_SIGNING_KEY"))
    otel_endpoint: Optional[str] = field(default=None, metadata=_opt(
        "OTLP/HTTP receiver base URL (traces to /v1/traces, metrics to /v1/metrics); default: the OTEL_EXPORTER_OTLP_* "
        "variables, else no telemetry", metavar="URL", type=http_url))
    no_telemetry: bool = field(default=False, metadata=_opt("export no traces or metrics, whatever OTEL_* says"))
    # --- archive controls (issue #13; obsbatch.archive) ---
    object_lock_mode: Optional[Literal["GOVERNANCE", "COMPLIANCE"]] = field(default=None, metadata=_opt(
        "Object Lock retention mode of every object (needs --object-lock-retain and a bucket with Object Lock); "
        "verified on the stored version and applied after upload where the server ignored it", metavar="MODE",
        type=lock_mode))
    object_lock_retain: Optional[float] = field(default=None, metadata=_opt(
        "with --object-lock-mode: keep each object locked this long after its upload (90s, 30m, 24h, 2555d)",
        metavar="DURATION", type=duration))
    legal_hold: bool = field(default=False, metadata=_opt(
        "put every object under an Object Lock legal hold (verified, like the retention)"))
    sse: Optional[Literal["AES256", "aws:kms"]] = field(default=None, metadata=_opt(
        "server-side encryption: AES256 (keys kept by the store) or aws:kms", metavar="ALG", type=sse_algorithm))
    sse_kms_key_id: Optional[str] = field(default=None, metadata=_opt(
        "with --sse aws:kms: the KMS key (default: the store's own)", metavar="ID"))
    storage_class: Optional[str] = field(default=None, metadata=_opt(
        "storage class of every object (STANDARD, STANDARD_IA, GLACIER_IR, ...; passed through)", metavar="CLASS",
        type=storage_class_name))
    tag: tuple = field(default=(), metadata=_opt("object tag KEY=VALUE (repeatable, at most 10)", metavar="KEY=VALUE",
                                                   append=True))
    metadata: tuple = field(default=(), metadata=_opt(
        "user metadata x-amz-meta-KEY: VALUE (repeatable; not sha256, mtime, mode, uid or gid, which obsbatch "
        "writes)", metavar="KEY=VALUE", append=True))
    no_preserve_attrs: bool = field(default=False, metadata=_opt(
        "do not store mtime, mode, uid and gid as x-amz-meta-* (default: stored, for a restore)"))

    #: --help's argument groups, in order, and the flags in each (every flag in exactly one; a unit test holds that).
    GROUPS = (
        ("source", ("source", "include", "exclude", "follow_symlinks", "allow_outside_source", "dry_run")),
        ("destination", ("bucket", "prefix", "endpoint", "region", "addressing_style", "ca_bundle", "no_verify_ssl")),
        ("stability", ("min_age", "fd_check", "max_defer")),
        ("integrity", ("checksum_mode", "verify_after_upload", "verify_remote")),
        ("archive controls", ("object_lock_mode", "object_lock_retain", "legal_hold", "sse", "sse_kms_key_id",
                              "sse_c_key_file", "storage_class", "tag", "metadata", "no_preserve_attrs")),
        ("speed", ("max_concurrent", "max_concurrent_limit", "bwlimit", "max_rps", "http_timeout", "retries",
                   "multipart_threshold", "multipart_chunksize", "stop_timeout")),
        ("state", ("state", "no_state", "delete_source", "max_changed")),
        ("output", ("debug", "verbose", "quiet", "log_format", "progress", "summary", "host_id", "manifest",
                    "upload_manifest", "signing_key", "otel_endpoint", "no_telemetry")),
    )

    def __post_init__(self) -> None:
        _tuples(self, ("include", "exclude", "tag", "metadata"))
        if not self.source:
            raise UsageError("--source is required (or OBSBATCH_SOURCE)")
        if self.multipart_chunksize < MIN_PART_SIZE or self.multipart_chunksize > MAX_PART_SIZE:
            raise UsageError("--multipart-chunksize must be between 5MiB and 5GiB (S3's part size limits)")
        if self.multipart_threshold > MAX_SINGLE_PUT:
            raise UsageError("--multipart-threshold must be at most 5GiB (S3's single PUT limit)")
        if self.verify_remote and self.no_state:
            raise UsageError("--verify-remote reconciles the destination with the journal; it cannot go with --no-state")
        if self.upload_manifest and not self.manifest:
            raise UsageError("--upload-manifest needs --manifest PATH")
        if self.signing_key:
            from obsbatch.signing import load_private_key

            load_private_key(self.signing_key)  # a bad key is a usage error now, not after the run
        if self.upload_manifest and not self.store.prefix:
            raise UsageError("--upload-manifest needs a --prefix, so that manifests sit beside the data, never among it")
        if bool(self.object_lock_mode) != (self.object_lock_retain is not None):
            # S3 takes a retention as a mode and a date together (x-amz-object-lock-mode and -retain-until-date).
            raise UsageError("--object-lock-mode and --object-lock-retain go together; give both")
        if self.object_lock_retain is not None and self.object_lock_retain <= 0:
            raise UsageError("--object-lock-retain must be more than zero")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise UsageError("--sse-kms-key-id needs --sse aws:kms")
        if self.sse and self.store.sse_c_key_file:
            raise UsageError("--sse and --sse-c-key-file are two kinds of encryption; give one")
        self.archive  # checks the tags and the metadata now: a usage error, exit 2

    @functools.cached_property
    def archive(self):
        """The archive controls (obsbatch.archive.ArchiveControls) every object is stored with."""
        from obsbatch.archive import ArchiveControls, metadata_pairs, tag_pairs

        return ArchiveControls(lock_mode=self.object_lock_mode, lock_retain=self.object_lock_retain,
                               legal_hold=self.legal_hold, sse=self.sse, sse_kms_key_id=self.sse_kms_key_id,
                               customer_key=self.store.customer_key, storage_class=self.storage_class,
                               tags=tag_pairs(self.tag), metadata=metadata_pairs(self.metadata),
                               preserve_attrs=not self.no_preserve_attrs)


def point_in_time(text: str) -> float:
    """--as-of: an RFC 3339 time or a date (obsbatch.snapshot.parse_time), as a Unix time."""
    from obsbatch.snapshot import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def snapshot_id(text: str) -> str:
    """--snapshot: an id as `obsbatch snapshots` lists them (it becomes part of a key: nothing else may)."""
    from obsbatch.snapshot import valid_id

    if not valid_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a snapshot id (20261201T230000.123Z-0a1b2c3d, as "
                                         "obsbatch snapshots lists them)")
    return text


def _snapshot_field():
    return field(default=None, metadata=_opt(
        "the snapshot to use, by id (obsbatch snapshots lists them); default: the latest", metavar="ID",
        type=snapshot_id))


def _as_of_field():
    return field(default=None, metadata=_opt(
        "the latest snapshot taken at or before this time: RFC 3339 (2026-12-01T23:00:00Z) or a date (2026-12-01: "
        "its end, UTC)", metavar="TIME", type=point_in_time))


def _public_key_field():
    return field(default=None, metadata=_opt(
        "trust only snapshot records signed by this Ed25519 public key (PEM, of backup's --signing-key): any other "
        "is UNTRUSTED, listed as such, never chosen as the latest, never restored from", metavar="PATH",
        type=readable_file))


def _check_public_key(config) -> None:
    if config.public_key:
        from obsbatch.signing import load_public_key

        load_public_key(config.public_key)  # a bad key is a usage error now, before the store is asked


def _check_snapshot_choice(config) -> None:
    if config.snapshot and config.as_of is not None:
        raise UsageError("--snapshot and --as-of both choose a snapshot; give one")


#: --help's groups of the parts restore and verify share with a backup (which groups them its own way).
_STORE_GROUP = ("store", ("bucket", "prefix", "endpoint", "region", "addressing_style", "checksum_mode", "ca_bundle",
                          "no_verify_ssl", "sse_c_key_file"))
_SPEED_GROUP = ("speed", ("max_concurrent", "max_concurrent_limit", "bwlimit", "max_rps", "http_timeout", "retries",
                          "stop_timeout"))
_OUTPUT_GROUP = ("output", ("debug", "verbose", "quiet", "log_format", "progress", "summary", "host_id"))


@dataclass(frozen=True)
class RestoreConfig:
    """Everything a restore needs: the store, the transfer, the output, and where the tree goes."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    target: Optional[str] = field(default=None, metadata=_opt(
        "directory to restore into (required); created if missing", metavar="DIR"))
    overwrite: bool = field(default=False, metadata=_opt(
        "replace local files whose content differs (default: leave them, report restore.conflict, exit 1)"))
    # Its own variable (OBSBATCH_RESTORE_MANIFEST), not the backup's OBSBATCH_MANIFEST: there the manifest is
    # written, here it is the truth to check against; one EnvironmentFile serves both.
    restore_manifest: Optional[str] = field(default=None, metadata=_opt(
        "a run manifest to check every object against (its chain first): the bytes must have the SHA-256 it "
        "records, and every object it lists must be in the store", args=["--manifest"], metavar="FILE"))
    include: tuple = _include_field()
    exclude: tuple = _exclude_field()
    restore_dry_run: bool = field(default=False, metadata=_opt(
        "say what would be written, left as identical, and refused as a conflict; write nothing",
        args=["--dry-run"]))
    snapshot: Optional[str] = _snapshot_field()
    as_of: Optional[float] = _as_of_field()
    public_key: Optional[str] = _public_key_field()
    listing: bool = field(default=False, metadata=_opt(
        "restore every object the listing shows under the prefix, as it is now, instead of a snapshot (for "
        "prefixes other tools wrote; implied by --manifest and where no snapshot exists)"))

    GROUPS = (("restore", ("target", "overwrite", "restore_manifest", "include", "exclude", "restore_dry_run")),
              ("snapshot", ("snapshot", "as_of", "public_key", "listing")), _STORE_GROUP, _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _tuples(self, ("include", "exclude"))
        if not self.target:
            raise UsageError("--target is required (or OBSBATCH_TARGET)")
        _check_snapshot_choice(self)
        _check_public_key(self)
        if self.public_key and (self.listing or self.restore_manifest):
            raise UsageError("--public-key trusts signed snapshots; --listing and --manifest restore the listing, "
                             "which no snapshot signature covers; give one kind")
        if (self.snapshot or self.as_of is not None) and (self.listing or self.restore_manifest):
            raise UsageError("--snapshot and --as-of restore a snapshot; --listing and --manifest restore the "
                             "listing; give one kind")


@dataclass(frozen=True)
class VerifyConfig:
    """Everything a verify needs: the store, the transfer, the output, and what to hold the store against."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    verify_manifest: Optional[str] = field(default=None, metadata=_opt(
        "the manifest is the truth: every object it says was uploaded must be there, in the recorded version, "
        "size, ETag, sha256 and retain-until (default: the latest snapshot)", args=["--manifest"], metavar="FILE"))
    read_data: float = field(default=0.0, metadata=_opt(
        "also read this share of the objects back in full and recompute their SHA-256 (a deterministic sample; "
        "100: all)", metavar="PERCENT", type=percent))

    snapshot: Optional[str] = _snapshot_field()
    as_of: Optional[float] = _as_of_field()
    public_key: Optional[str] = _public_key_field()
    listing: bool = field(default=False, metadata=_opt(
        "check every object the listing shows under the prefix (each must carry obsbatch's sha256 metadata: one "
        "HEAD per object) instead of a snapshot's files (implied where no snapshot exists)"))

    GROUPS = (("verify", ("verify_manifest", "read_data", "snapshot", "as_of", "public_key", "listing")), _STORE_GROUP,
              _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _check_snapshot_choice(self)
        _check_public_key(self)
        if (self.snapshot or self.as_of is not None) and (self.verify_manifest or self.listing):
            raise UsageError("--snapshot and --as-of check a snapshot, --manifest a manifest, --listing the "
                             "listing; give one")
        if self.public_key and not self.by_snapshot:
            raise UsageError("--public-key trusts signed snapshots; --manifest and --listing check against "
                             "something else (verify-manifest --public-key checks a manifest's signature)")
        if self.verify_manifest and self.listing:
            raise UsageError("--manifest and --listing are two references to check against; give one")

    @property
    def by_snapshot(self) -> bool:
        """A snapshot is the reference: the one asked for, or by default the latest (issue #21: as a restore)."""
        return not (self.listing or self.verify_manifest)


@dataclass(frozen=True)
class SnapshotsConfig:
    """`obsbatch snapshots`: where they are, and how to print them."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    json: bool = field(default=False, metadata=_opt("print one JSON array of objects instead of a table"))
    all: bool = field(default=False, metadata=_opt(
        "the fleet view: the latest snapshot of every host and prefix in the bucket (host, prefix, id, time, files, "
        "bytes, exit code), from the markers each run leaves (with --prefix: of the prefixes that begin with it); "
        "reads no data listing and no snapshot record"))
    stale: Optional[float] = field(default=None, metadata=_opt(
        "exit 1 and name every host and prefix whose latest snapshot is older than DURATION (with --all: of the "
        "whole fleet; else of --prefix, which then must have one); exit 0 when none is", metavar="DURATION",
        type=duration))
    public_key: Optional[str] = _public_key_field()
    check: bool = field(default=False, metadata=_opt(
        "also find which snapshots can no longer be restored whole (a version expired or deleted): PARTIAL and "
        "how many files, exit 1; from one version listing of the prefix and the snapshots' trees, no data read "
        "(with --all: each host's latest snapshot, one listing per prefix)"))

    GROUPS = (("snapshots", ("json", "all", "stale", "public_key", "check")), _STORE_GROUP, _SPEED_GROUP,
              _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _check_public_key(self)


def positional(f: dataclasses.Field) -> bool:
    """Whether a field is an operand (ls's PATH, diff's two ids) rather than a flag: given only on the command
    line, so it has no OBSBATCH_* variable (one EnvironmentFile serves every command; a PATH there would be
    every command's)."""
    names = f.metadata.get("args") or ("--",)
    return not names[0].startswith("-")


def snapshot_path(text: str) -> str:
    """A path inside a snapshot, as ls prints it (the display spelling; a leading '/' is the snapshot's root)."""
    parts = [part for part in text.strip("/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise argparse.ArgumentTypeError(f"{text!r} has a '..' component; paths are inside the snapshot")
    _printable(text)
    return "/".join(parts)


def _printable(text: str) -> None:
    # ls prints a control character of a name as \xNN (models.printable), which is how it is given back.
    if not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r} has a control character; write it as ls prints it (\\xNN)")


def _json_field():
    return field(default=False, metadata=_opt("print JSON instead of a table (one object per line, then the totals)"))


def _path_operand(help: str, required: bool = False):
    return field(default="" if not required else None, metadata=_opt(
        help, args=["path"], metavar="PATH", type=snapshot_path, **({} if required else {"nargs": "?"})))


#: --help's group of the flags that choose one snapshot.
_CHOICE_GROUP = ("snapshot", ("snapshot", "as_of", "public_key"))


@dataclass(frozen=True)
class LsConfig:
    """`obsbatch ls`: the entries of one snapshot under a path."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    path: str = _path_operand("the directory or file inside the snapshot (default: its root)")
    snapshot: Optional[str] = _snapshot_field()
    as_of: Optional[float] = _as_of_field()
    public_key: Optional[str] = _public_key_field()
    long: bool = field(default=False, metadata=_opt("also each file's sha256 and the object version it was stored as"))
    recursive: bool = field(default=False, metadata=_opt("everything beneath PATH, not only its own entries"))
    json: bool = _json_field()

    GROUPS = (("ls", ("path", "long", "recursive", "json")), _CHOICE_GROUP, _STORE_GROUP, _SPEED_GROUP,
              _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _check_snapshot_choice(self)
        _check_public_key(self)


@dataclass(frozen=True)
class DiffConfig:
    """`obsbatch diff`: what changed between two snapshots."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    first: Optional[str] = field(default=None, metadata=_opt("the older snapshot's id", args=["first"], metavar="ID1",
                                                              type=snapshot_id))
    second: Optional[str] = field(default=None, metadata=_opt("the newer snapshot's id", args=["second"],
                                                               metavar="ID2", type=snapshot_id))
    path: str = _path_operand("compare only beneath this path (default: the whole tree)")
    public_key: Optional[str] = _public_key_field()
    json: bool = _json_field()

    GROUPS = (("diff", ("first", "second", "path", "public_key", "json")), _STORE_GROUP, _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _check_public_key(self)


@dataclass(frozen=True)
class FindConfig:
    """`obsbatch find`: which snapshots hold paths that match a glob."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    patterns: tuple = field(default=(), metadata=_opt(
        "a glob: `*` and `?` within one name, `**` across directories; without a '/' it matches a name at any "
        "depth, with one the path from the snapshot's root", args=["patterns"], metavar="PATTERN", nargs="+",
        type=str))
    snapshot: Optional[str] = _snapshot_field()
    newest: Optional[int] = field(default=None, metadata=_opt("search only the N newest snapshots", metavar="N",
                                                              type=whole_number(1, 10 ** 9)))
    oldest: Optional[int] = field(default=None, metadata=_opt("search only the N oldest snapshots", metavar="N",
                                                              type=whole_number(1, 10 ** 9)))
    public_key: Optional[str] = _public_key_field()
    json: bool = _json_field()

    GROUPS = (("find", ("patterns", "snapshot", "newest", "oldest", "public_key", "json")), _STORE_GROUP,
              _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _tuples(self, ("patterns",))
        _check_public_key(self)
        given = [flag for flag, on in (("--snapshot", self.snapshot), ("--newest", self.newest),
                                       ("--oldest", self.oldest)) if on]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(given)} each choose the snapshots to search; give one")
        for pattern in self.patterns:
            _printable(pattern)


@dataclass(frozen=True)
class DumpConfig:
    """`obsbatch dump`: one file's bytes, or a directory as a tar stream, on stdout."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    path: str = _path_operand("the file (its bytes) or directory (a tar stream; '/' the whole snapshot) to print",
                              required=True)
    snapshot: Optional[str] = _snapshot_field()
    as_of: Optional[float] = _as_of_field()
    public_key: Optional[str] = _public_key_field()

    GROUPS = (("dump", ("path",)), _CHOICE_GROUP, _STORE_GROUP, _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _check_snapshot_choice(self)
        _check_public_key(self)


def tag_name(text: str) -> str:
    """A snapshot tag (obsbatch tag, forget --keep-tag): it becomes part of a key, so 1-128 characters of
    letters, digits and . _ - : @ + = (an audit date, a ticket, "legal-hold")."""
    if not re.fullmatch(r"[A-Za-z0-9._:@+=-]{1,128}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a tag (1 to 128 letters, digits and . _ - : @ + =)")
    return text


def _check_tags(tags: tuple) -> None:
    # Repeatable flags reach the config as text (options.Parser's append), so the check is here.
    for tag in tags:
        try:
            tag_name(tag)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(str(exc)) from None


def _keep_field(period: str):
    return field(default=0, metadata=_opt(f"keep the newest snapshot of each of the last N {period} that have one",
                                          metavar="N", type=whole_number(0, 10 ** 6)))


@dataclass(frozen=True)
class ForgetConfig:
    """`obsbatch forget`: which of this host's snapshots a policy keeps; the rest forgotten, and with --prune
    the object versions no remaining snapshot needs deleted."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    keep_last: int = field(default=0, metadata=_opt("keep the N newest snapshots", metavar="N",
                                                    type=whole_number(0, 10 ** 6)))
    keep_hourly: int = _keep_field("hours")
    keep_daily: int = _keep_field("days")
    keep_weekly: int = _keep_field("ISO weeks")
    keep_monthly: int = _keep_field("months")
    keep_yearly: int = _keep_field("years")
    keep_within: Optional[float] = field(default=None, metadata=_opt(
        "keep every snapshot taken within DURATION of the host's newest (2d, 4w, 1y)", metavar="DURATION",
        type=duration))
    keep_tag: tuple = field(default=(), metadata=_opt(
        "keep every snapshot with this tag (obsbatch tag; repeatable)", metavar="TAG", append=True))
    forget_dry_run: bool = field(default=False, metadata=_opt(
        "say what would be forgotten and (with --prune) deleted, with counts and bytes; change nothing",
        args=["--dry-run"]))
    prune: bool = field(default=False, metadata=_opt(
        "also delete every object version under the prefix that no remaining snapshot (of any host) names, and "
        "the packs only forgotten snapshots needed; never one younger than --prune-grace or newer than a host's "
        "latest snapshot, never one under Object Lock"))
    signing_key: Optional[str] = field(default=None, metadata=_opt(
        "sign each forgotten snapshot's tombstone with this Ed25519 private key (PEM, backup's --signing-key), so "
        "that snapshots --public-key trusts the gap it leaves in the chain", metavar="PATH", type=readable_file,
        env_alias="MANIFEST_SIGNING_KEY"))
    prune_grace: float = field(default=86400.0, metadata=_opt(
        "with --prune, never delete a version younger than this (default 24h; 0s for a prefix nothing else "
        "writes to)", metavar="DURATION", type=duration))
    public_key: Optional[str] = _public_key_field()
    json: bool = _json_field()

    GROUPS = (("forget", ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
                          "keep_within", "keep_tag", "forget_dry_run", "prune", "prune_grace", "signing_key",
                          "public_key", "json")),
              _STORE_GROUP, _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _tuples(self, ("keep_tag",))
        _check_tags(self.keep_tag)
        _check_public_key(self)
        if self.signing_key:
            from obsbatch.signing import load_private_key

            load_private_key(self.signing_key)  # a bad key is a usage error now, not after the first forget
        if not (any(self.keep_counts) or self.keep_within is not None or self.keep_tag or self.prune):
            raise UsageError("give a policy (--keep-last, --keep-daily, ... --keep-within) or --prune; with neither, "
                             "nothing would be forgotten")
        if self.prune and not self.store.prefix:
            raise UsageError("--prune needs a --prefix: under the empty prefix lies every other prefix's data, "
                             "which it must never delete")

    @property
    def keep_counts(self) -> tuple:
        """(last, hourly, daily, weekly, monthly, yearly): s3.retention.Policy's counts."""
        return (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly,
                self.keep_yearly)


@dataclass(frozen=True)
class TagConfig:
    """`obsbatch tag`: add or remove a snapshot's tags, which forget --keep-tag keeps."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    snapshot: Optional[str] = _snapshot_field()
    add_tag: tuple = field(default=(), metadata=_opt("add this tag to the snapshot (repeatable)", args=["--add"],
                                                     metavar="TAG", append=True))
    remove_tag: tuple = field(default=(), metadata=_opt("remove this tag from the snapshot (repeatable)",
                                                        args=["--remove"], metavar="TAG", append=True))
    public_key: Optional[str] = _public_key_field()
    json: bool = _json_field()

    GROUPS = (("tag", ("snapshot", "add_tag", "remove_tag", "public_key", "json")), _STORE_GROUP, _SPEED_GROUP,
              _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _tuples(self, ("add_tag", "remove_tag"))
        _check_public_key(self)
        if not self.snapshot:
            raise UsageError("--snapshot ID is required: the snapshot to tag (obsbatch snapshots lists them)")
        _check_tags(self.add_tag + self.remove_tag)
        if set(self.add_tag) & set(self.remove_tag):
            raise UsageError("a tag is both added and removed; give it once")


@dataclass(frozen=True)
class StatsConfig:
    """`obsbatch stats`: one snapshot's size and what the store holds for the prefix."""

    store: StoreConfig
    transfer: TransferConfig
    output: OutputConfig
    snapshot: Optional[str] = _snapshot_field()
    as_of: Optional[float] = _as_of_field()
    public_key: Optional[str] = _public_key_field()
    json: bool = _json_field()

    GROUPS = (("stats", ("json",)), _CHOICE_GROUP, _STORE_GROUP, _SPEED_GROUP, _OUTPUT_GROUP)

    def __post_init__(self) -> None:
        _check_snapshot_choice(self)
        _check_public_key(self)


#: The commands whose flags come from a config class.
COMMAND_CONFIGS = {"backup": BackupConfig, "restore": RestoreConfig, "verify": VerifyConfig,
                   "snapshots": SnapshotsConfig, "ls": LsConfig, "diff": DiffConfig, "find": FindConfig,
                   "dump": DumpConfig, "forget": ForgetConfig, "stats": StatsConfig,
                   "tag": TagConfig}


def flag_fields(config_class) -> list:
    """Every flag of a command as a dataclass field: its parts' fields, then its own (GROUPS aside)."""
    own = [f for f in dataclasses.fields(config_class) if f.name not in PARTS]
    return [f for part in PARTS.values() for f in dataclasses.fields(part)] + own


def options_class(config_class) -> type:
    """One flat dataclass of every flag of the command, which its parser is built from (argparse-dataclass
    knows no nesting)."""
    specs = [(f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in flag_fields(config_class)]
    return dataclasses.make_dataclass(config_class.__name__.replace("Config", "Options"), specs, frozen=True)


def compose(config_class, values: dict):
    """The command's config from the flat values its parser gave: each part from its own fields, then the
    whole (each checks its own fields as it is made)."""
    values = dict(values)
    parts = {name: part(**{f.name: values.pop(f.name) for f in dataclasses.fields(part) if f.name in values})
             for name, part in PARTS.items()}
    return config_class(**parts, **values)
