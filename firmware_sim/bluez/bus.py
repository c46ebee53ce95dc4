"""A private ``dbus-daemon`` for the fake BlueZ.

The daemon runs as a child process of the simulator with a configuration written into a private
temporary directory: it listens on a unix socket there, authenticates with EXTERNAL, lets any
connection own any name and passes unix file descriptors (``AcquireNotify`` needs them).
:meth:`PrivateBus.stop` kills it and removes the directory, socket included.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO
from xml.sax.saxutils import escape

from firmware_sim.errors import SimError

log = logging.getLogger(__name__)

#: What to install when the daemon is missing (Debian/Ubuntu).
APT_HINT = "sudo apt-get update && sudo apt-get install -y dbus-daemon"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_incoming_unix_fds">1024</limit>
  <limit name="max_outgoing_unix_fds">1024</limit>
  <limit name="max_connections_per_user">1024</limit>
  <limit name="max_match_rules_per_connection">4096</limit>
</busconfig>
"""

_PR_SET_PDEATHSIG = 1


class BusStartError(SimError, RuntimeError):
    """The private bus could not be started."""


def find_dbus_daemon(daemon: str | None = None) -> str:
    """The ``dbus-daemon`` to run (``daemon`` if given, else from PATH or /usr/bin); raises
    :class:`BusStartError` naming the package to install when there is none."""
    if daemon is not None:
        if os.access(daemon, os.X_OK):
            return daemon
        raise BusStartError(f"dbus-daemon not found at {daemon}; install it with: {APT_HINT}")
    found = shutil.which("dbus-daemon")
    if found is not None:
        return found
    for candidate in ("/usr/bin/dbus-daemon", "/bin/dbus-daemon"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BusStartError(f"dbus-daemon not found; install it with: {APT_HINT}")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the simulator is killed outright, the kernel still takes the daemon down with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _forward_stderr(stream: IO[bytes] | None) -> None:
    """Log what the daemon says; its complaint about not raising the fd limit (it always tries,
    and an unprivileged user cannot) is noise."""
    if stream is None:
        return
    with stream:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            level = logging.DEBUG if "fd limit" in line else logging.WARNING
            log.log(level, "sim.bus_daemon_says %s", line)


class PrivateBus:
    """A ``dbus-daemon`` of our own. Use as a context manager or call start()/stop().

    ``address`` is the D-Bus address to export as ``DBUS_SYSTEM_BUS_ADDRESS``.
    """

    def __init__(self, *, start_timeout: float = 10.0, daemon: str | None = None) -> None:
        self._start_timeout = start_timeout
        self._daemon = daemon
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._stderr_reader: threading.Thread | None = None
        self.address: str = ""

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def directory(self) -> Path | None:
        """The private temporary directory (config and socket) while the bus runs."""
        return self._dir

    @property
    def socket_path(self) -> Path | None:
        """The listening socket's path while the bus runs."""
        return self._dir / "bus" if self._dir is not None else None

    def start(self) -> str:
        """Start the daemon and return its address once it accepts connections."""
        if self._proc is not None:
            raise BusStartError("bus already started")
        daemon = find_dbus_daemon(self._daemon)
        self._dir = Path(tempfile.mkdtemp(prefix="fsim-dbus-"))
        try:
            socket_path = self._dir / "bus"
            config = self._dir / "bus.conf"
            config.write_text(_CONFIG.format(socket=escape(str(socket_path))), encoding="utf-8")
            self._proc = subprocess.Popen(
                [
                    daemon,
                    f"--config-file={config}",
                    "--nofork",
                    "--nopidfile",
                    "--print-address=1",
                    "--nosyslog",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # The kernel's parent-death signal follows the *thread* that forks; from a
                # worker thread it would kill the daemon when that thread ends.
                preexec_fn=(
                    _die_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
                close_fds=True,
                # Its own session: a terminal's Ctrl-C reaches the simulator, which then stops
                # the daemon in order, instead of killing both at once.
                start_new_session=True,
            )
            self._stderr_reader = threading.Thread(
                target=_forward_stderr,
                args=(self._proc.stderr,),
                daemon=True,
                name="dbus-daemon-stderr",
            )
            self._stderr_reader.start()
            self.address = self._read_address()
        except BaseException:
            self.stop()
            raise
        log.info("sim.bus_started")
        return self.address

    def _read_address(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self._start_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusStartError("dbus-daemon did not print its address in time")
                if not sel.select(remaining):
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    code = self._proc.wait()
                    raise BusStartError(f"dbus-daemon exited with status {code} at start")
                buf += chunk
        address = buf.split(b"\n", 1)[0].decode().strip()
        if not address.startswith("unix:"):
            raise BusStartError("dbus-daemon printed an unexpected address")
        return address

    def stop(self) -> None:
        """Kill the daemon and remove the temporary directory. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            if self._stderr_reader is not None:
                self._stderr_reader.join(timeout=5)
                self._stderr_reader = None
            log.info("sim.bus_stopped")
        directory, self._dir = self._dir, None
        if directory is not None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(directory)
        self.address = ""

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
