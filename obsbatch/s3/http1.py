"""A kept-alive HTTP/1.1 connection per upload thread, for the lean PutObject (obsbatch.s3.put).

Why (issue #12): through urllib3 and http.client a 4 KiB PUT cost ~0.55 ms of client CPU (http.client
parses every response's headers with the email package; urllib3 wraps each request and response in objects
of its own), most of obsbatch's CPU per small file, where this costs ~0.05 ms. On a host of small files that
CPU, not the network, sets the speed once the latency is hidden.

What it keeps of the client's own transport (botocore's URLLib3Session), so that retries and error names do
not change:
- TLS: the same trust (the client's resolved `verify`: botocore's CA bundle, --ca-bundle, AWS_CA_BUNDLE, or
  --no-verify-ssl), server name indication and host name checking;
- timeouts: --http-timeout for the connect and for every read;
- faults raised as the exception classes botocore raises for them (EndpointConnectionError,
  ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, SSLError), which the standard retry policy
  retries and `s3.error_code` names;
- a kept-alive connection found closed by the server is replaced before a request is sent on it (urllib3's
  is_connection_dropped), never by sending the request twice.
It speaks only what the one PUT needs: no proxies (put.make leaves the request to botocore when one is
configured), no client certificates, no 100-continue.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import urllib.parse
from typing import List, Optional, Tuple

import botocore.awsrequest
import botocore.exceptions

_MAX_LINE = 65536
#: Bodies up to this size go out in one write with the request head: one segment for a small file.
_COALESCE = 256 * 1024


class Response:
    """What botocore's retry policy and response parser read of an HTTP response."""

    def __init__(self, status_code: int, headers: botocore.awsrequest.HeadersDict, content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content


def tls_context(verify) -> ssl.SSLContext:
    """An SSLContext for `verify` as botocore resolves it: False, True (its default bundle) or a path."""
    from obsbatch.s3.lean import trust

    if verify is True:
        from botocore.httpsession import get_cert_path

        verify = get_cert_path(True)
    return trust(verify)


class Connection:
    """One HTTP/1.1 connection, opened on first use and kept alive between requests."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float, tls: Optional[ssl.SSLContext],
                 url: str):
        self.scheme, self.host, self.port, self.timeout, self.tls = scheme, host, port, timeout, tls
        self.url = url  # for error messages, as botocore words them
        self.sock = None
        self.reader = None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.reader = None

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.timeout as exc:
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=self.url, error=exc) from None
        except OSError as exc:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.url, error=exc) from None
        # The request head and a small body go out in one write; without this, Nagle's algorithm and the
        # server's delayed ACK would hold a two-write request for up to 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except socket.timeout as exc:
                sock.close()
                raise botocore.exceptions.ConnectTimeoutError(endpoint_url=self.url, error=exc) from None
            except (ssl.SSLError, ssl.CertificateError) as exc:
                sock.close()
                raise botocore.exceptions.SSLError(endpoint_url=self.url, error=exc) from None
            except OSError as exc:
                sock.close()
                raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.url, error=exc) from None
        self.sock = sock
        self.reader = sock.makefile("rb")

    def _dropped(self) -> bool:
        """Has the server closed this idle kept-alive connection (or sent something unasked)?"""
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        if self.tls is None:
            return True
        # A TLS socket is also readable for records the server sends after the handshake (TLS 1.3 session
        # tickets): read without blocking; nothing for the application means the connection is alive.
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)  # the end of the stream, or bytes nobody asked for: not a connection to reuse
            return True
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)

    def request(self, head: bytes, body: bytes) -> Response:
        """Send `head` (request line and headers, CRLFs included) and `body`; read the whole response."""
        if self.sock is not None and self._dropped():
            self.close()
        if self.sock is None:
            self._connect()
        try:
            if len(body) <= _COALESCE:
                self.sock.sendall(head + body)
            else:
                self.sock.sendall(head)
                self.sock.sendall(body)
            response, keep = self._read_response()
        except socket.timeout as exc:
            self.close()
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=self.url, error=exc) from None
        except ssl.SSLError as exc:
            self.close()
            raise botocore.exceptions.SSLError(endpoint_url=self.url, error=exc) from None
        except (OSError, ValueError) as exc:  # reset, broken pipe, EOF mid-response, a malformed response
            self.close()
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=self.url, error=exc) from None
        except BaseException:
            # Anything else cut the exchange short (SIGTERM's SystemExit in a worker, issue #18): the rest of
            # this response may still be on its way. Kept, the connection would hand it to the next request
            # as that request's answer, another object's headers and bytes, whose own sha256 metadata
            # would then "verify" them under the wrong name. A half-used connection is never reused.
            self.close()
            raise
        if not keep:
            self.close()
        return response

    def _read_response(self) -> Tuple[Response, bool]:
        reader = self.reader
        status_line = reader.readline(_MAX_LINE)
        if not status_line:
            raise ConnectionResetError("the server closed the connection without a response")
        version, status, _ = (status_line.decode("latin-1").rstrip("\r\n").split(" ", 2) + [""])[:3]
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x response: {status_line[:80]!r}")
        headers = botocore.awsrequest.HeadersDict()
        while True:
            line = reader.readline(_MAX_LINE)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionResetError("the server closed the connection in the response headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip()] = value.strip()
        keep = headers.get("Connection", "").lower() != "close" and version != "HTTP/1.0"
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            content = self._read_chunked()
        elif headers.get("Content-Length") is not None:
            length = int(headers["Content-Length"])
            content = reader.read(length) if length else b""
            if len(content) != length:
                raise ConnectionResetError("the server closed the connection in the response body")
        elif int(status) in (204, 304) or 100 <= int(status) < 200:
            content = b""
        else:  # no length: the body ends with the connection
            content, keep = reader.read(), False
        return Response(int(status), headers, content), keep

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self.reader.readline(_MAX_LINE)
            if not size_line:
                raise ConnectionResetError("the server closed the connection in a chunked body")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.reader.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.reader.read(size))
            self.reader.readline(_MAX_LINE)  # the CRLF after the chunk


class Transport:
    """One kept-alive Connection per thread, to the host of `base_url` (http or https)."""

    def __init__(self, base_url: str, timeout: float, verify):
        parts = urllib.parse.urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.timeout = timeout
        self.tls = tls_context(verify) if parts.scheme == "https" else None
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._local = threading.local()

    def _connection(self) -> Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = Connection(self.scheme, self.host, self.port, self.timeout, self.tls, self.url)
            self._local.connection = connection
        return connection

    def send(self, method: str, target: str, headers: List[Tuple[str, str]], body: bytes) -> Response:
        """One request on this thread's connection; botocore's exception classes for faults."""
        head = "".join([f"{method} {target} HTTP/1.1\r\n", *(f"{n}: {v}\r\n" for n, v in headers), "\r\n"])
        return self._connection().request(head.encode("latin-1"), body)
