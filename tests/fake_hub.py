"""A loopback stand-in for the parts of the Hugging Face hub's HTTP API that ``huggingface_hub``'s
``HfFileSystem`` uses to list and read a dataset repo, reached through ``HF_ENDPOINT``, with
faults to inject. 127.0.0.1 only; files come from a local folder.

Endpoints: ``GET /api/datasets/ORG/NAME/revision/REV`` (repo info),
``GET /api/datasets/ORG/NAME/tree/REV[/PATH]`` (listing), ``POST /api/datasets/ORG/NAME/paths-info/REV``
(file info), ``GET|HEAD /datasets/ORG/NAME/resolve/REV/PATH`` (file bytes, with ``Range``).
Anything else answers 404 and is recorded in ``unknown``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Faults:
    """What to break. Each rule: (request kind, how many times, what). Kinds: info, tree,
    paths, file. What: an HTTP status (429 with Retry-After: 1), "reset" (close the connection
    after half the body), "slow" (wait 1.5 s before answering)."""

    rules: list[list] = field(default_factory=list)  # [kind, remaining, what]
    down: bool = False  # every request answers 503
    gone: set[str] = field(default_factory=set)  # files still listed that answer 404 (deleted since)
    seen: list[str] = field(default_factory=list)

    def take(self, kind: str) -> str | int | None:
        for rule in self.rules:
            if rule[0] == kind and rule[1] > 0:
                rule[1] -= 1
                return rule[2]
        return None


class Hub:
    def __init__(self, root: Path, repo: str) -> None:
        self.root, self.repo = root, repo
        self.faults = Faults()
        self.unknown: list[str] = []
        self.requests: list[str] = []

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def entry(self, p: Path) -> dict:
        rel = p.relative_to(self.root).as_posix()
        return {"type": "file", "path": rel, "size": p.stat().st_size,
                "oid": hashlib.sha1(rel.encode()).hexdigest()}


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    repo = re.escape(hub.repo)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: object) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _fault(self, kind: str) -> bool:
            hub.requests.append(f"{kind} {self.command} {self.path}")
            if hub.faults.down:
                self._send(503, b'{"error": "down"}')
                return True
            what = hub.faults.take(kind)
            if what is None:
                return False
            hub.faults.seen.append(f"{kind}:{what}")
            if what == "slow":
                time.sleep(1.5)
                return False
            if what == "reset":
                return False  # handled by the file sender
            status = int(what)
            self._send(status, b'{"error": "injected"}',
                       {"Retry-After": "1"} if status == 429 else None)
            return True

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            m = re.fullmatch(rf"/api/datasets/{repo}/paths-info/[^/]+", urlparse(self.path).path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            if not m:
                hub.unknown.append(f"POST {self.path}")
                return self._send(404, b"{}")
            if self._fault("paths"):
                return None
            form = parse_qs(body)
            paths = form.get("paths", [])
            if not paths and body.startswith("{"):
                paths = json.loads(body).get("paths", [])
            out = [hub.entry(hub.root / p) for p in paths if (hub.root / p).is_file()]
            return self._json(out)

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            if re.fullmatch(rf"/api/datasets/{repo}(/revision/[^/]+)?", path):
                if self._fault("info"):
                    return None
                return self._json({"id": hub.repo, "sha": SHA, "private": False,
                                   "siblings": [{"rfilename": e["path"]} for e in map(hub.entry, hub.files())]})
            if re.fullmatch(r"/api/datasets/[^/]+/[^/]+(/revision/[^/]+)?", path):
                hub.requests.append(f"info {path}")
                return self._send(404, b'{"error": "Repository not found"}',
                                  {"X-Error-Code": "RepoNotFound"})
            if m := re.fullmatch(rf"/api/datasets/{repo}/tree/[^/]+/?(.*)", path):
                if self._fault("tree"):
                    return None
                sub = m.group(1).strip("/")
                base = hub.root / sub if sub else hub.root
                if not base.is_dir():
                    return self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"})
                recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0] == "true"
                entries = []
                for p in sorted(base.rglob("*") if recursive else base.iterdir()):
                    rel = p.relative_to(hub.root).as_posix()
                    entries.append(hub.entry(p) if p.is_file() else
                                   {"type": "directory", "path": rel, "oid": hashlib.sha1(rel.encode()).hexdigest()})
                return self._json(entries)
            if m := re.fullmatch(rf"/datasets/{repo}/resolve/[^/]+/(.+)", path):
                file = hub.root / m.group(1)
                if not file.is_file() or m.group(1) in hub.faults.gone:
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                reset = hub.faults.rules and any(r[0] == "file" and r[1] > 0 and r[2] == "reset"
                                                 for r in hub.faults.rules)
                if self._fault("file"):
                    return None
                data = file.read_bytes()
                start, end = 0, len(data) - 1
                if rng := self.headers.get("Range"):
                    a, _, b = rng.removeprefix("bytes=").partition("-")
                    start, end = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
                chunk = data[start:end + 1]
                headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": SHA,
                           "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
                if rng:
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                status = 206 if rng else 200
                if reset and self.command == "GET" and len(chunk) > 1:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(chunk)))
                    self.end_headers()
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                return self._send(status, chunk, headers)
            hub.unknown.append(f"GET {self.path}")
            return self._send(404, b"{}")

    return Handler


@contextmanager
def serve(root: Path, repo: str) -> Iterator[tuple[str, Hub]]:
    """Serve ``root`` as dataset ``repo``; yields (endpoint URL, hub)."""
    hub = Hub(root, repo)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hub
    finally:
        server.shutdown()
        server.server_close()
