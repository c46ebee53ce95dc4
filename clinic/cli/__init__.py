"""The ``clinic`` command."""

from clinic.cli.main import main

__all__ = ["main"]
