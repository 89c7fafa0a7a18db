"""systemd notifications through a real NOTIFY_SOCKET: a unix datagram socket bound by the test."""

import socket
import threading
import time

import pytest

from tests.conftest import finish, make_tree, server_args, start_obsbatch
from obsbatch.testing.faultproxy import Fault


class NotifySocket:
    """Binds a datagram socket like systemd's and records (time.monotonic(), message) for each datagram."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def times(self, field: str) -> list[float]:
        return [t for t, m in self.messages if field in m.split("\n")]

    def index(self, prefix: str) -> int:
        return next(i for i, (_, m) in enumerate(self.messages) if any(f.startswith(prefix) for f in m.split("\n")))


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_ready_status_watchdog_and_stopping_in_order(tmp_path, s3server, prefix, proxy, notify):
    src = tmp_path / "src"
    make_tree(src, {f"d{i}/f{j}.txt": b"x" * 100 for i in range(4) for j in range(10)})
    proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=0.15, times=None))
    env = dict(s3server.env(), NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
    proc = start_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--max-concurrent", 2,
                          "--manifest", tmp_path / "run.jsonl", env=env)
    result = finish(proc, timeout=120)
    assert result.returncode == 0, result
    assert result.summary["uploaded"] == 40

    messages = [m for _, m in notify.messages]
    assert messages[0].startswith("EXTEND_TIMEOUT_USEC=")  # before the /proc scan and pre-flight
    assert [m for m in messages if "READY=1" in m.split("\n")] and notify.index("READY=1") == 1
    ready_at = notify.times("READY=1")[0]
    assert ready_at < proxy.first_time("PUT", r"\.txt")  # READY before the first upload
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert len(statuses) >= 2 and "uploaded" in statuses[-1]
    assert "STOPPING=1" in messages[-1].split("\n") and "40 uploaded" in messages[-1]
    assert f"manifest head {result.summary['manifest_head']}" in messages[-1]  # the anchor, in journald (#14)
    assert f"snapshot {result.summary['snapshot']} head {result.summary['snapshot_head']}" in messages[-1]  # #20

    pings = notify.times("WATCHDOG=1")
    assert len(pings) >= 5, f"a run of {pings and pings[-1] - ready_at:.1f}s sent {len(pings)} pings"
    gaps = [b - a for a, b in zip([ready_at] + pings, pings)]
    assert max(gaps) <= 0.5, gaps  # at most half of WATCHDOG_USEC apart


@pytest.mark.slow
def test_stalled_run_stops_pinging(tmp_path, s3server, prefix, proxy, notify):
    src = tmp_path / "src"
    make_tree(src, {"only.txt": b"x"})
    # The only upload hangs for 4 s: no walk progress, no outcome, no request sent or answered.
    proxy.add(Fault(method="PUT", path=r"only\.txt", action="hold", delay=4.0))
    env = dict(s3server.env(), NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
    proc = start_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--http-timeout", 30,
                          env=env)
    result = finish(proc, timeout=60)
    assert result.returncode == 0, result
    held_from = proxy.first_time("PUT", r"only\.txt")
    held_until = held_from + 4.0
    # Progress is noticed on the heartbeat's next tick (a third of the interval), so pings may go on until
    # about 1.33 s after the last request; from then to the end of the hold there must be none.
    during = [t for t in notify.times("WATCHDOG=1") if held_from + 1.5 < t < held_until - 0.1]
    assert during == [], "pinged while nothing moved for longer than WATCHDOG_USEC"
    timeline = [(round(t - held_from, 2), m.replace("\n", " ")) for t, m in notify.messages]
    assert [t for t in notify.times("WATCHDOG=1") if held_from <= t <= held_from + 1.05], timeline


@pytest.mark.serial
def test_a_stop_pushes_timeout_stop_sec_back_while_the_drain_moves(tmp_path, s3server, prefix, proxy, notify):
    """After SIGTERM the heartbeat, the one sender, extends the stop timeout while uploads in flight finish."""
    import signal

    src = tmp_path / "src"
    make_tree(src, {f"f{i}.txt": b"x" for i in range(20)})
    hold = proxy.add(Fault(method="PUT", path=r"\.txt", action="hold", delay=3.0, times=None))
    env = dict(s3server.env(), NOTIFY_SOCKET=notify.path)
    proc = start_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--max-concurrent", 2,
                          env=env)
    assert hold.arrived.wait(60)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=60)
    assert result.returncode == 143, result
    extends = [(t, m) for t, m in notify.messages if t > signalled and "EXTEND_TIMEOUT_USEC=60000000" in m]
    assert extends and "STATUS=stopping: " in extends[0][1], notify.messages
    assert extends[0][0] - signalled < 3.0  # within a heartbeat tick or so, not at the end
    assert "STOPPING=1" in notify.messages[-1][1].split("\n")
