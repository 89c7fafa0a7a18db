"""The functions the upload pool hands its worker processes, importable without botocore.

A task crosses the process boundary by name: the parent must import the module that defines it. These
names import the worker module (and with it botocore) only when called, in the worker, where the fork
server has imported it already; the parent, which submits them, never pays for it (issue #12).
"""

from __future__ import annotations

from typing import List, Optional, Tuple


def init_worker(settings, shared) -> None:
    """The pool's initializer (worker.init_worker)."""
    from obsbatch.engine import worker

    worker.init_worker(settings, shared)


def upload_batch(items: list) -> List:
    """Upload a batch (worker.WorkerContext.upload_batch): one Outcome per WorkItem, in order."""
    from obsbatch.engine import worker

    return worker.upload_batch(items)


def restore_batch(items: list) -> List:
    """Restore a batch (worker.WorkerContext.restore_batch): one Outcome per RestoreItem, in order."""
    from obsbatch.engine import worker

    return worker.restore_batch(items)


def verify_batch(items: list) -> List:
    """Check a batch (worker.WorkerContext.verify_batch): one Outcome per VerifyItem, in order."""
    from obsbatch.engine import worker

    return worker.verify_batch(items)


#: What a pool's workers do with each batch, by the name UploadPool is given.
BATCH_TASKS = {"upload": upload_batch, "restore": restore_batch, "verify": verify_batch}


def check_destination() -> Tuple[str, str, float, Optional[tuple], str]:
    """The pre-flight (worker.WorkerContext.check_destination)."""
    from obsbatch.engine import worker

    return worker.check_destination()
