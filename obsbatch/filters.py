"""Stage 2: --include / --exclude, on the path relative to the source.

Globs are `fnmatch` patterns matched against the whole relative path, so `*` spans `/` (`*.tmp` matches
`a/b/c.tmp`), as in aws-cli. With any --include, only matching files are kept; --exclude then removes
matches. argparse keeps the two lists apart, so order between them cannot matter: exclude always wins.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Iterable, Iterator, Optional, Sequence, Union

from obsbatch.models import Candidate, Kind, Outcome, Reason, display


def _compile(globs: Sequence[str]) -> Optional[re.Pattern]:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def select(items: Iterable[Union[Candidate, Outcome]], include: Sequence[str],
           exclude: Sequence[str]) -> Iterator[Union[Candidate, Outcome]]:
    """Pass Outcomes through; turn excluded Candidates into SKIPPED/excluded Outcomes."""
    inc, exc = _compile(include), _compile(exclude)
    if inc is None and exc is None:
        yield from items
        return
    for item in items:
        if isinstance(item, Candidate):
            # fsdecode keeps undecodable bytes as surrogates, so a glob still matches the rest of the name.
            rel = os.fsdecode(item.rel)
            if (inc is not None and not inc.match(rel)) or (exc is not None and exc.match(rel)):
                yield Outcome(Kind.SKIPPED, display(item.path), key=item.key, reason=Reason.EXCLUDED,
                              size=item.stat.st_size)
                continue
        yield item
