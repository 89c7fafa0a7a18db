"""Stage 2: --include / --exclude, on the path relative to the source.

Globs are `fnmatch` patterns matched against the whole relative path, so `*` spans `/` (`*.tmp` matches
`a/b/c.tmp`), as in aws-cli. A glob that matches a directory matches everything beneath it too, with or
without a trailing '/': `--include docs` and `--include docs/` take the directory `docs` whole, as tar, rsync
and restic read them (`docs` alone once matched only a file named docs, and a restore of it was silently
empty). With any --include, only matching files are kept; --exclude then removes matches. argparse keeps the
two lists apart, so order between them cannot matter: exclude always wins.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from obsbatch.models import Candidate, Kind, Outcome, Reason, display


def _compile(globs: Sequence[str]) -> Optional[re.Pattern]:
    if not globs:
        return None
    # Each glob as itself and as "glob/*" (fnmatch's `*` spans '/'): the path, or anything beneath it.
    whole = [g.rstrip("/") or g for g in globs]
    return re.compile("|".join(f"(?:{fnmatch.translate(one)})" for g in whole for one in (g, g + "/*")))


def excluder(include: Sequence[str], exclude: Sequence[str]) -> Optional[Callable[[bytes], bool]]:
    """excluded(rel) -> whether --include/--exclude leave the relative path out; None when there are no globs
    (the backup's walk and the restore's listing use the same rule)."""
    inc, exc = _compile(include), _compile(exclude)
    if inc is None and exc is None:
        return None

    def excluded(rel: bytes) -> bool:
        # fsdecode keeps undecodable bytes as surrogates, so a glob still matches the rest of the name.
        text = os.fsdecode(rel)
        return (inc is not None and not inc.match(text)) or (exc is not None and exc.match(text) is not None)

    return excluded


def select(items: Iterable[Union[Candidate, Outcome]], include: Sequence[str],
           exclude: Sequence[str]) -> Iterator[Union[Candidate, Outcome]]:
    """Pass Outcomes through; turn excluded Candidates into SKIPPED/excluded Outcomes."""
    excluded = excluder(include, exclude)
    if excluded is None:
        yield from items
        return
    for item in items:
        if isinstance(item, Candidate):
            if excluded(item.rel):
                yield Outcome(Kind.SKIPPED, display(item.path), key=item.key, reason=Reason.EXCLUDED,
                              size=item.stat.st_size)
                continue
        yield item
