"""A small stand-in for Google Cloud Storage's XML API, enough for obstore's `GCSStore` to
read, create and conditionally update small objects: GET, HEAD and PUT, each object with
a generation (a store-wide counter) and PUT honouring `x-goog-if-generation-match` (0:
only if absent), as GCS does. What it leaves out (listing, deletes, multipart uploads,
authentication) no test of it needs."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GENERATION_MATCH = "x-goog-if-generation-match"


class _Server(ThreadingHTTPServer):
    """The HTTP server and the objects it keeps: path → (bytes, generation)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 0
        self.lock = threading.Lock()

    def put(self, path: str, data: bytes, match: str | None) -> int | None:
        """Store `data` at `path` as a new generation; None when `match` names another
        generation than the current one (0 for none)."""
        with self.lock:
            current = self.objects[path][1] if path in self.objects else 0
            if match is not None and int(match) != current:
                return None
            self.generation += 1
            self.objects[path] = (data, self.generation)
            return self.generation


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: no line on stderr per request."""

    def do_GET(self) -> None:
        self._send_object(body=True)

    def do_HEAD(self) -> None:
        self._send_object(body=False)

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        generation = self.server.put(self.path, data, self.headers.get(GENERATION_MATCH))
        if generation is None:
            self._send_empty(412)  # Precondition Failed
            return
        self.send_response(200)
        self._send_meta(data, generation)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_object(self, *, body: bool) -> None:
        with self.server.lock:
            found = self.server.objects.get(self.path)
        if found is None:
            self._send_empty(404)
            return
        data, generation = found
        self.send_response(200)
        self._send_meta(data, generation)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _send_meta(self, data: bytes, generation: int) -> None:
        """GCS's headers: the ETag is the content's MD5 (the same bytes written again keep
        it), the generation is what tells versions apart."""
        self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        self.send_header("x-goog-generation", str(generation))
        self.send_header("Last-Modified", formatdate(usegmt=True))

    def _send_empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FakeGCS:
    """The fake GCS on 127.0.0.1 (a port the system picks), serving from a thread."""

    def __init__(self) -> None:
        self._server = _Server()
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What obstore's `GCSStore` needs to reach it: a service account key that names
        this endpoint and turns OAuth off, and plain http allowed."""
        key = {
            "gcs_base_url": self.endpoint,
            "disable_oauth": True,
            "client_email": "tests@example.com",
            "private_key": "",
            "private_key_id": "",
        }
        return {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps(key), "GOOGLE_ALLOW_HTTP": "1"}

    def bucket(self) -> str:
        """A fresh bucket name: a test's objects never meet another's."""
        return f"team-{uuid.uuid4().hex[:12]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
