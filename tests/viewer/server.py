"""A single-origin web server for the viewer test: OHIF's files plus a DICOMweb proxy.

OHIF fetches DICOMweb from the page's origin because Orthanc 1.10 sends no CORS
headers. Requests under ``/dicom-web/`` and ``/wado`` go to Orthanc unchanged, every
other path is a file of the OHIF build, and unknown paths get ``index.html`` so that
OHIF's client-side routes (``/viewer?StudyInstanceUIDs=...``) load.
"""

from __future__ import annotations

import http.client
import logging
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)

PROXIED_PREFIXES = ("/dicom-web/", "/dicom-web?", "/wado")
HOP_BY_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
LOOPBACK = "127.0.0.1"


class ViewerRequestHandler(SimpleHTTPRequestHandler):
    """Serve the OHIF build from ``directory`` and forward DICOMweb paths to Orthanc."""

    protocol_version = "HTTP/1.1"
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def __init__(self, *args, orthanc_port: int, **kwargs) -> None:
        self.orthanc_port = orthanc_port
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith(PROXIED_PREFIXES):
            self.forward_to_orthanc()
            return

        if not Path(self.translate_path(self.path)).exists():
            self.path = "/index.html"
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        if self.path.startswith(PROXIED_PREFIXES):
            self.forward_to_orthanc()
            return
        self.send_error(405, "POST is accepted only under /dicom-web/")

    def forward_to_orthanc(self) -> None:
        """Send this request to Orthanc and copy its status, headers and body back."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in HOP_BY_HOP_HEADERS and name.lower() != "host"
        }

        connection = http.client.HTTPConnection(LOOPBACK, self.orthanc_port, timeout=60)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as error:
            logger.error("DICOMweb proxy: %s %s failed: %s", self.command, self.path, error)
            self.send_error(502, f"Orthanc on {LOOPBACK}:{self.orthanc_port} failed: {error}")
            return
        finally:
            connection.close()

        # The body is sent whole with its length, so chunked encoding is dropped.
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (base class signature)
        logger.debug("%s %s", self.address_string(), format % args)


class ViewerHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that logs request errors instead of printing them."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 (base signature)
        error = sys.exc_info()[1]
        # A browser that closes a connection early, for a request it no longer needs, is no error.
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            logger.debug("client %s closed the connection: %s", client_address, error)
            return
        logger.exception("request from %s failed", client_address)


def start_viewer_server(root: Path, port: int, orthanc_port: int) -> ThreadingHTTPServer:
    """Start the server on ``127.0.0.1:port`` in a daemon thread and return it.

    Parameters
    ----------
    root
        The OHIF ``dist`` folder.
    port
        Port to listen on.
    orthanc_port
        HTTP port of Orthanc on 127.0.0.1.

    Returns
    -------
    ThreadingHTTPServer
        The running server; call ``shutdown()`` and ``server_close()`` to stop it.
    """
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{root} has no index.html; run tests/viewer/setup.sh first")

    handler = partial(ViewerRequestHandler, directory=str(root), orthanc_port=orthanc_port)
    server = ViewerHTTPServer((LOOPBACK, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="viewer-server", daemon=True)
    thread.start()
    logger.info("viewer server on http://%s:%d serves %s", LOOPBACK, port, root)
    return server

