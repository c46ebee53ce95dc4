"""sd_notify over real AF_UNIX datagram sockets."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.daemon.sdnotify import SdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_sends_datagrams_to_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = SdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.notify("READY=1\nSTATUS=up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = SdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        sock.close()


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.notify("READY=1") is False
