"""Fakes shipped with the package, like httpcore's mock backend and structlog's
``capture_logs``: a manual clock and in-memory stand-ins for the I/O layers, so pure tests need
no files, processes or sockets.
"""

from edge.testing.clock import ManualClock, settle
from edge.testing.eventually import eventually

__all__ = ["ManualClock", "eventually", "settle"]
