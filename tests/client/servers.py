"""Two small real servers for the SDK tests: one that answers with a script of statuses (to
see retries, backoff and ``Retry-After`` from the client's side), and a TCP proxy in front of
the API that drops a connection in the middle of a download."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    at: float
    """time.monotonic() when the request arrived."""


class ScriptedServer:
    """An HTTP server on a free local port answering each request with the next scripted
    :class:`Answer` (the last one repeats), recording every request."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers, self.seen = list(answers), []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                script.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                        time.monotonic()))
                answer = script.answers.pop(0) if len(script.answers) > 1 else script.answers[0]
                body = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_head(connection: socket.socket) -> tuple[bytes, bytes]:
    """(request or response head up to the blank line, bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


class CuttingProxy:
    """A TCP proxy on a free local port in front of ``upstream`` (host, port), one request per
    connection. The response to the first request whose path contains ``cut_path`` is cut off
    after ``cut_after`` bytes of its body: the connection closes as a dropped one would."""

    def __init__(self, upstream: tuple[str, int], cut_path: str, cut_after: int) -> None:
        self.upstream, self.cut_path, self.cut_after = upstream, cut_path, cut_after
        self.requests: list[tuple[str, dict]] = []
        """(request line, headers) of every request, in order."""
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "CuttingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as upstream:
            head, rest = _read_head(client)
            if not head:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            self.requests.append((lines[0], headers))
            body_left = int(headers.get("content-length", 0)) - len(rest)
            while body_left > 0:
                chunk = client.recv(65536)
                rest += chunk
                body_left -= len(chunk)
            kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
            upstream.sendall(("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + rest)

            cut = self.cuts == 0 and self.cut_path in lines[0]
            response_head, body = _read_head(upstream)
            if cut:
                self.cuts += 1
                client.sendall(response_head + body[: self.cut_after])
                sent = min(len(body), self.cut_after)
                while sent < self.cut_after:
                    chunk = upstream.recv(min(65536, self.cut_after - sent))
                    if not chunk:
                        break
                    client.sendall(chunk)
                    sent += len(chunk)
                client.shutdown(socket.SHUT_RDWR)
                return
            client.sendall(response_head + body)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
