"""A run's scratch sqlite file: tables too big for memory (a manifest's records, a listing, a tree's
directories) that nothing outlives the run."""

from __future__ import annotations

import os
import sqlite3
import tempfile


def database(purpose: str) -> sqlite3.Connection:
    """An sqlite file, unlinked as soon as it is open: a command killed at any moment (even before its signal
    handlers are installed) leaves no copy of the names it held behind. journal_mode=OFF, so sqlite never
    opens the file by name again (no -journal or -wal file); synchronous=OFF, since nothing in it needs to
    survive a crash. purpose: a word for the temporary directory's name (`obsbatch-PURPOSE-...`)."""
    directory = tempfile.mkdtemp(prefix=f"obsbatch-{purpose}-")
    try:
        db = sqlite3.connect(os.path.join(directory, "scratch.db"))
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA temp_store=MEMORY")
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    return db
