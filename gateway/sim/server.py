"""Run any WSGI app on a loopback port in a background thread (tests and the demo)."""
from __future__ import annotations

import logging
import threading

from werkzeug.serving import WSGIRequestHandler, make_server

logger = logging.getLogger(__name__)


class QuietHandler(WSGIRequestHandler):
    """Logs the path only: query strings (iframe-mode tokens) never reach a log."""

    def log_request(self, code="-", size="-"):
        path = self.path.split("?", 1)[0][:200]
        logger.debug("%s %s %s", self.command, path, code)

    def log(self, type, message, *args):  # noqa: A002 - werkzeug's signature
        if type == "error":
            logger.warning("%s %s", self.address_string(), message % args)


class ServerThread:
    """A threaded werkzeug server; ``url`` is known once constructed."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)
        self.server.daemon_threads = True
        self.host = host
        self.port = self.server.server_port
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"server-{self.port}",
                                        daemon=True)

    def start(self) -> "ServerThread":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def serve_until_interrupted(self) -> None:
        """Serve in the calling thread until Ctrl+C (for the command line)."""
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
