#!/usr/bin/env python3
"""Serve the browser demo and a bundle on this machine only (Python's standard library, nothing else).

    npm ci --prefix edge_demo/web                      # onnxruntime-web, once
    python edge_demo/web/serve.py runs/default/bundle  # then open http://127.0.0.1:8000/

The page is served from this folder (onnxruntime-web's files from its node_modules, no CDN) and
the bundle under /bundle/. The headers make the page cross-origin isolated, which gives
WebAssembly threads and finer performance.now() timing.
"""
from __future__ import annotations

import argparse
import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

WEB_DIR = Path(__file__).resolve().parent
RUNTIME_FILE = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs"


class DemoHandler(SimpleHTTPRequestHandler):
    """Static files from the web folder, plus each mounted folder under /<name>/."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
                      ".onnx": "application/octet-stream", ".ort": "application/octet-stream",
                      ".config": "text/plain"}

    def __init__(self, *args, mounts: dict[str, Path], quiet: bool, **kwargs):
        self.mounts, self.quiet = mounts, quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        first, _, rest = urlsplit(path).path.lstrip("/").partition("/")
        if first in self.mounts:
            default, self.directory = self.directory, str(self.mounts[first])
            try:
                return super().translate_path("/" + rest)
            finally:
                self.directory = default
        return super().translate_path(path)

    def send_head(self):
        """Serve a mounted bundle's files only from inside it: a NUL byte is a bad request, and a path that
        leaves the bundle folder (a symlink in it pointing to /etc/passwd, say) is not found."""
        path = self.translate_path(self.path)
        if "\x00" in path:
            self.send_error(400, "bad path")
            return None
        first = urlsplit(self.path).path.lstrip("/").partition("/")[0]
        if first not in self.mounts:  # the page's own folder (node_modules may be a link elsewhere)
            return super().send_head()
        try:
            inside = Path(path).resolve().is_relative_to(self.mounts[first])
        except (OSError, ValueError):
            inside = False
        if not inside:
            self.send_error(404, "not found")
            return None
        return super().send_head()

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(mounts: dict[str, Path], host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server for the page and ``mounts`` (URL folder name -> bundle folder); port 0 picks a free one."""
    if not RUNTIME_FILE.is_file():
        raise FileNotFoundError(f"{RUNTIME_FILE} is missing: run `npm ci --prefix {WEB_DIR}` first")
    handler = functools.partial(DemoHandler, directory=str(WEB_DIR), quiet=quiet,
                                mounts={name: Path(folder).resolve() for name, folder in mounts.items()})
    return ThreadingHTTPServer((host, port), handler)


def serve_in_thread(mounts: dict[str, Path], host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, str]:
    """Start a quiet server on a free port in a daemon thread; returns it and its base URL."""
    server = make_server(mounts, host, 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the onnxruntime-web demo with a compress bundle.")
    parser.add_argument("bundle", help="bundle folder made by `compress ship` (served under /bundle/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle)
    if not (bundle / "model.json").is_file():
        print(f"error: {bundle / 'model.json'} is missing: make a bundle with compress ship RUN_DIR --out {bundle}",
              file=sys.stderr)
        return 2
    try:
        server = make_server({"bundle": bundle}, args.host, args.port)
    except (FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {bundle} at http://{args.host}:{server.server_address[1]}/ (Ctrl+C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
