"""trainers/data/amazon_files.py: the resumable downloader, against a Range-serving HTTP server on localhost."""
from __future__ import annotations

import http.server
import threading

from trainers.data.amazon_files import download


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 400

    def do_GET(self):  # noqa: N802
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_download_resumes(tmp_path, monkeypatch):
    for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    srv = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/f.csv.gz"
        dest = tmp_path / "f.csv.gz"
        (tmp_path / "f.csv.gz.part").write_bytes(_RangeHandler.payload[:1000])
        assert download(url, dest, chunk=4096) == dest
        assert dest.read_bytes() == _RangeHandler.payload
        assert not (tmp_path / "f.csv.gz.part").exists()
        dest.write_bytes(b"kept")  # present -> skipped
        download(url, dest)
        assert dest.read_bytes() == b"kept"
    finally:
        srv.shutdown()
