"""Flags and their OBSBATCH_* variables, for every command: the parser (argparse-dataclass, plus repeatable
flags, argument groups, no abbreviations, the nearest flag named), the environment's conversion, and the
strict-environment rule. Below the commands (obsbatch.cli, obsbatch.commands), which build their parsers here.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import MISSING, fields
from typing import Mapping, NoReturn, Optional, Sequence

import argparse_dataclass

from obsbatch.config import COMMAND_CONFIGS, flag_fields, positional
from obsbatch.errors import UsageError

ENV_PREFIX = "OBSBATCH_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Parser(argparse_dataclass.ArgumentParser):
    """argparse-dataclass, plus repeatable flags, argument groups (`groups`: (title, field names) in --help's
    order), and errors raised instead of printed-and-exited.
    `options_class` is the command's flags as one flat dataclass (obsbatch.config.options_class)."""

    def __init__(self, options_class, groups, **kwargs):
        self.option_fields = {f.name: f for f in fields(options_class)}
        self._groups = groups
        self._flag_groups: Optional[dict] = None
        #: Every option string the parser knows (--help's, the flags', -v), for the nearest-flag hint: kept
        #: here as they are added, not read from argparse's private tables.
        self.flag_names: set = set()
        # No abbreviations (issue #18): argparse's prefix matching took `--delete` for --delete-source and
        # `--dry` for --dry-run, so a new flag could silently change what an old command line means.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(options_class, **kwargs)

    def add_argument(self, *args, **kwargs):
        self.flag_names.update(arg for arg in args if isinstance(arg, str) and arg.startswith("-"))
        # argparse-dataclass has no 'append' action; fields marked append=True get one here.
        # A field with its own flag name (metadata `args`) comes with dest= its field name.
        name = kwargs.get("dest") or (args[0].lstrip("-").replace("-", "_") if args else "")
        if name not in self.option_fields:
            return super().add_argument(*args, **kwargs)
        metadata = self.option_fields[name].metadata
        if metadata.get("append"):
            kwargs.update(action="append", type=str, default=None)
        if metadata.get("negatable"):  # --progress / --no-progress; None when neither is given
            kwargs = dict(dest=name, help=kwargs.get("help"), action=argparse.BooleanOptionalAction, default=None)
        return self._group_of(name).add_argument(*args, **kwargs)

    def _group_of(self, name: str):
        if self._flag_groups is None:  # the first flag: make every group, in --help's order
            self._flag_groups = {}
            for title, names in self._groups:
                group = self.add_argument_group(title)
                self._flag_groups.update((field_name, group) for field_name in names)
        return self._flag_groups[name]

    def values(self, argv: Optional[Sequence[str]], environ: Mapping[str, str]) -> dict:
        """The options given, each flag filled from its OBSBATCH_* variable when not on the command line."""
        # Parse to a namespace first: argparse-dataclass marks a flag not given with dataclasses.MISSING,
        # which is how we know the environment may fill it.
        namespace, extra = argparse.ArgumentParser.parse_known_args(self, argv)
        if extra:
            raise UsageError(unrecognized(extra, self.flag_names))
        values = {}
        for name, f in self.option_fields.items():
            value = getattr(namespace, name, MISSING)
            if positional(f):  # an operand (ls's PATH): the command line's alone, no variable
                if value is not MISSING and value is not None:
                    values[name] = tuple(value) if isinstance(value, list) else value
                continue
            # Not given: MISSING (argparse-dataclass), or None for a repeatable flag. A flag whose parser
            # returns None (--max-concurrent auto) was given, and beats its variable.
            if value is MISSING or (value is None and (f.metadata.get("append") or f.metadata.get("negatable"))):
                raw = environ.get(ENV_PREFIX + name.upper())
                if raw is None and f.metadata.get("env_alias"):  # the flag's old name's variable
                    raw = environ.get(ENV_PREFIX + f.metadata["env_alias"])
                if f.metadata.get("negatable") and raw is not None and not raw.strip():
                    raw = None  # OBSBATCH_PROGRESS= : neither on nor off, the default
                if raw is not None:
                    value = _from_env(f, raw)
            if value is not MISSING and value is not None:
                values[name] = value
        return values

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def nearest(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unrecognized(extra: Sequence[str], flags) -> str:
    """One sentence for arguments the parser does not know, naming the nearest valid flag."""
    first = next((arg for arg in extra if arg.startswith("-")), extra[0])
    name = first.split("=", 1)[0]
    hint = nearest(name, [f for f in flags if f.startswith("--")]) if name.startswith("--") else ""
    return (f"unrecognized arguments: {' '.join(extra)}{hint}; flags are never abbreviated")


def environment_names() -> frozenset:
    """Every OBSBATCH_* variable some command reads: one per flag of every command (and a renamed flag's old one)."""
    return frozenset(ENV_PREFIX + name for config_class in COMMAND_CONFIGS.values() for f in flag_fields(config_class)
                     if not positional(f) for name in (f.name.upper(), f.metadata.get("env_alias")) if name)


def check_environment(environ: Mapping[str, str], known: Sequence[str]) -> None:
    """Strict environment (issue #18): an OBSBATCH_* variable that names no flag of any command is an error, so
    a typo in an EnvironmentFile (OBSBATCH_DRYRUN=1) cannot turn a dry run into a real one. A variable of
    another command's flag is fine: one EnvironmentFile serves the backup and a verify timer alike."""
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            raise UsageError(f"the environment variable {name} names no flag of any obsbatch command"
                             f"{nearest(name, known)}; correct or remove it")


def _from_env(f: dataclasses.Field, raw: str):
    """Convert one OBSBATCH_* value with the same rules as its flag (field `f`)."""
    env = ENV_PREFIX + f.name.upper()
    try:
        if f.type in (bool, Optional[bool]):
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise argparse.ArgumentTypeError(f"{raw!r} is not a boolean (1/0, true/false, yes/no)")
            return low in _TRUE
        if f.metadata.get("append"):
            return tuple(p for p in raw.split(",") if p)
        choices = typing.get_args(f.type) if typing.get_origin(f.type) is typing.Literal else f.metadata.get("choices", ())
        if choices:
            if raw not in choices:
                raise argparse.ArgumentTypeError(f"invalid choice {raw!r} (choose from {', '.join(choices)})")
            return raw
        convert = f.metadata.get("type", str)
        return convert(raw)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise UsageError(f"{env}: {exc}") from None
