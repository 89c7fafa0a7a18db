"""A small HTTP/1.1 reverse proxy on loopback that injects faults in front of a real S3 server.

Requests pass through unchanged (the Host header too, so SigV4 signatures still verify upstream) unless a
`Fault` matches: then the proxy answers with an S3-style error, resets the connection (before or halfway
through the body), or holds the request for a while before forwarding it.

botocore sends `Expect: 100-continue` on uploads with file-like bodies and waits up to a second for the
interim response; BaseHTTPRequestHandler answers it (handle_expect_100) because protocol_version is 1.1.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}


@dataclass
class Fault:
    """What to do to matching requests.

    method: HTTP method to match, or None for any. path: regex searched in path+query.
    action: "status" (answer `status` with S3 error `code`), "reset" (RST after reading the request),
        "reset_mid_body" (RST after half the body), "hold" (set `arrived`, wait `delay` s, then forward),
        "etag" (forward, then replace the response's ETag with `code`: a server that stored something else).
    times: how many matching requests to fault; None for all of them.
    """

    path: str = ""
    method: Optional[str] = None
    action: str = "status"
    status: int = 503
    code: str = "SlowDown"
    times: Optional[int] = 1
    delay: float = 0.0
    hits: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method) and re.search(self.path, path) is not None
                and (self.times is None or self.hits < self.times))


class Throttle:
    """A server's request-rate limit, as S3 enforces one: a token bucket holding `burst` requests, refilled at
    `rate` per second. A request that finds it empty is answered 503 SlowDown."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.refused = 0

    def admit(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False


class Chaos:
    """Random faults for the soak: each request, with `probability`, gets a copy of one of `faults` picked
    by `rng` (a random.Random, so a seed replays a soak). `injected` counts them by action/status."""

    def __init__(self, probability: float, faults: list, rng):
        self.probability, self.faults, self.rng = probability, faults, rng
        self.injected: collections.Counter = collections.Counter()

    def pick(self) -> Optional["Fault"]:
        if self.rng.random() >= self.probability:
            return None
        template = self.rng.choice(self.faults)
        self.injected[template.action if template.action != "status" else f"{template.status} {template.code}"] += 1
        return dataclasses.replace(template, arrived=threading.Event())


class FaultProxy:
    def __init__(self, upstream: str):
        url = urllib.parse.urlsplit(upstream)
        self.upstream = (url.hostname, url.port)
        self.faults: list[Fault] = []
        self.throttle: Optional[Throttle] = None
        self.chaos: Optional[Chaos] = None
        self.seen: list[tuple[str, str, str, float]] = []  # (method, path, what happened, time.monotonic())
        #: (method, path, the client's port) of every request: requests with one port came on one connection.
        self.clients: list[tuple[str, str, int]] = []
        #: The path of every server-side copy (a PUT with x-amz-copy-source), and (path, body length) of every
        #: other PUT: what a test of renames and attribute changes counts.
        self.copies: list[str] = []
        self.puts: list[tuple[str, int]] = []
        #: The access key id each request was signed with (its Authorization header's Credential=), in order.
        self.signed_by: list[str] = []
        #: Answer 400 to any request whose body is aws-chunked or announces a trailing checksum
        #: (x-amz-trailer), as some S3-compatible stores do (Huawei OBS, older Ceph RGW); counted here.
        self.refuse_trailers = False
        self.trailers_refused = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Optional[Fault]:
        with self._lock:
            if self.throttle is not None and not self.throttle.admit():
                return _THROTTLED
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
            if self.chaos is not None:
                return self.chaos.pick()
        return None

    def record(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.seen.append((method, path, what, time.monotonic()))

    def note_signer(self, access_key: str) -> None:
        with self._lock:
            self.signed_by.append(access_key)

    def note_put(self, path: str, copy: bool, length: int) -> None:
        with self._lock:
            if copy:
                self.copies.append(path)
            else:
                self.puts.append((path, length))

    def relabel(self, method: str, path: str, what: str) -> None:
        """Change what happened to this request, recorded when it arrived (its latest record)."""
        with self._lock:
            for i in range(len(self.seen) - 1, -1, -1):
                m, p, _, t = self.seen[i]
                if (m, p) == (method, path):
                    self.seen[i] = (m, p, what, t)
                    return

    def count(self, method: str, path_regex: str, what: Optional[str] = None) -> int:
        with self._lock:
            return len(self._matching(method, path_regex, what))

    def first_time(self, method: str, path_regex: str) -> Optional[float]:
        """time.monotonic() when the first matching request arrived, or None."""
        with self._lock:
            times = self._matching(method, path_regex, None)
        return min(times) if times else None

    def _matching(self, method: str, path_regex: str, what: Optional[str]) -> list:
        """Arrival times of matching requests (one record per request)."""
        return [t for m, p, w, t in self.seen
                if m == method and re.search(path_regex, p) and (what is None or w == what)]


_THROTTLED = Fault(action="status", status=503, code="SlowDown", times=None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, *args):  # quiet: the test's own assertions say what matters
        pass

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN: a "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (its timeout); fine
            pass

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):  # the socket was reset on purpose
            pass

    def _any(self):
        method, path = self.command, self.path
        self.owner.clients.append((method, path, self.client_address[1]))
        length = int(self.headers.get("Content-Length") or 0)
        if self.owner.refuse_trailers and (self.headers.get("x-amz-trailer")
                                           or "aws-chunked" in self.headers.get("Content-Encoding", "")):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.owner.trailers_refused += 1
            self.owner.record(method, path, "trailer refused")
            self._error(400, "InvalidArgument")
            return
        signer = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        if signer:
            self.owner.note_signer(signer.group(1))
        if method == "PUT":
            self.owner.note_put(path, bool(self.headers.get("x-amz-copy-source")), length)
        fault = self.owner.take(method, path)
        if fault is not None and fault.action == "reset_mid_body":
            self.rfile.read(length // 2)
            self.owner.record(method, path, "reset_mid_body")
            self._reset()
            return
        body = self.rfile.read(length) if length else b""
        if fault is not None:
            if fault.action == "reset":
                self.owner.record(method, path, "reset")
                self._reset()
                return
            if fault.action == "status":
                self.owner.record(method, path, "throttled" if fault is _THROTTLED else f"status {fault.status}")
                self._error(fault.status, fault.code)
                return
            if fault.action == "etag":
                self.owner.record(method, path, "etag")
                self._forward(body, etag=fault.code)
                return
            if fault.action == "hold":
                self.owner.record(method, path, "held")  # one record per request, at its arrival
                fault.arrived.set()
                time.sleep(fault.delay)
                self._forward(body)
                return
        # Recorded before the answer goes back, so a test that has its response also sees the record.
        self.owner.record(method, path, "forwarded")
        self._forward(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    def _error(self, status: int, code: str) -> None:
        payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>injected by the test fault proxy</Message></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes, etag: Optional[str] = None) -> bool:
        """Pass the request on; False if the server is down (refused, or gone mid-request): then answer
        502 Bad Gateway, as a load balancer in front of a restarting server would."""
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.owner.relabel(self.command, self.path, "upstream down")
                self._error(502, "BadGateway")
                return False
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() in _HOP_BY_HOP or (name.lower() == "content-length" and self.command != "HEAD"):
                    continue
                if etag is not None and name.lower() == "etag":
                    value = f'"{etag}"'
                self.send_header(name, value)
            if etag is not None:
                data = re.sub(rb"<ETag>[^<]*</ETag>", f"<ETag>&quot;{etag}&quot;</ETag>".encode(), data)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return True
        finally:
            conn.close()
