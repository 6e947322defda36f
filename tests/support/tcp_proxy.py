"""A TCP forwarder on 127.0.0.1 that a test can cut and restore, to simulate a server outage.

A process given the proxy's port instead of the server's gets connection refused
while the proxy is closed, and loses its open connections when it closes::

    proxy = TcpProxy(target_port=5432)
    proxy.open()
    ...
    proxy.close()   # the "database restart" begins
    proxy.open()    # and ends
"""

from __future__ import annotations

import socket
import threading

from tests.support.receiver import free_port

LOOPBACK = "127.0.0.1"
BUFFER_SIZE = 65536


class TcpProxy:
    """Forward connections from ``127.0.0.1:port`` to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        """Listen on ``port`` (the same port every time) and forward what arrives."""
        if self._listener is not None:
            return
        self._listener = socket.create_server((LOOPBACK, self.port))
        threading.Thread(target=self._accept, args=(self._listener,), name="tcp-proxy", daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _shut(listener)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            _shut(connection)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((LOOPBACK, self.target_port))
            except OSError:
                _shut(client)
                continue
            with self._lock:
                self._connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(BUFFER_SIZE):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(source)
        _shut(sink)


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
