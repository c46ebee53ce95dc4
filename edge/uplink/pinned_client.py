"""The paho client of the uplink, bound to a TLS socket that already passed the pin check.

paho opens its own socket on ``connect``; this subclass hands it the verified one instead (and
refuses a second), and remembers the socket error paho swallows, so that a lost connection can
be reported by its real cause (a TLS alert, a refused client certificate).
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as paho

from edge.errors import TlsVerificationError
from edge.uplink.tls import classify_ssl_error


class PinnedClient(paho.Client):
    """A paho client that uses the already verified TLS socket instead of opening its own."""

    def __init__(self, sock: ssl.SSLSocket, **kwargs: Any) -> None:  # paho.Client's kwargs
        super().__init__(**kwargs)
        self._edge_sock: ssl.SSLSocket | None = sock
        #: the last socket error paho swallowed (it only reports "connection lost")
        self.edge_last_error: OSError | None = None

    def _create_socket(self) -> Any:  # overrides paho's private method, typed Any there
        sock, self._edge_sock = self._edge_sock, None
        if sock is None:
            # A second connect on this client would open an unverified socket: refuse.
            raise ConnectionError("pinned socket already used")
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        try:
            return super()._sock_recv(bufsize)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.edge_last_error = exc
            raise

    def _sock_send(self, buf: bytes | bytearray) -> int:
        try:
            return super()._sock_send(buf)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.edge_last_error = self._pending_alert() or exc
            raise

    def _pending_alert(self) -> ssl.SSLError | None:
        """After a failed write, the broker's TLS alert may be waiting unread (TLS 1.3 rejects
        a client certificate after the client's handshake is done); it names the real cause."""
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            sock.recv(1)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLError as alert:
            return alert if isinstance(classify_ssl_error(alert), TlsVerificationError) else None
        except OSError:
            return None
        return None
