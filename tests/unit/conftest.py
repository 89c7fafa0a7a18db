"""The unit tier starts no process and never sleeps; a test that needs either belongs in tests/functional."""

import multiprocessing.process
import os
import subprocess
import time

import pytest


def _refused(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test must not {what}: move it to tests/functional")
    return refuse


@pytest.fixture(autouse=True)
def no_process_and_no_sleep(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refused("start a process"))
    monkeypatch.setattr(os, "fork", _refused("start a process"))
    monkeypatch.setattr(os, "posix_spawn", _refused("start a process"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refused("start a process"))
    monkeypatch.setattr(time, "sleep", _refused("sleep"))
