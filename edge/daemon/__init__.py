"""The daemon: wiring under one TaskGroup, supervision and health, status, the control socket
and sd_notify."""

from edge.daemon.wiring import Daemon

__all__ = ["Daemon"]
