"""systemd's variables, read once (the notifications themselves: tests/integration/test_systemd.py)."""


def test_watchdog_of_another_pid_is_ignored_and_no_socket_means_silence():
    from obsbatch.reporting.systemd import Notifier

    assert Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"}, 42).watchdog_seconds == 2.0
    assert Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"},
                                 42).watchdog_seconds is None
    silent = Notifier.from_environ({"WATCHDOG_USEC": "2000000"}, 42)
    assert not silent.enabled and silent.watchdog_seconds is None
    silent.ready("x")  # no socket: must not raise
