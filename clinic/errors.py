"""The clinic's one exception root, grouped by what the caller should do.

Messages are safe to show: no reading value, pseudonym, name or key goes into one. Library
errors are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations


class ClinicError(Exception):
    """Base of every error the clinic raises on purpose."""

    exit_code: int = 1


class ConfigError(ClinicError):
    """The configuration is invalid or insecure; ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class UsageError(ClinicError):
    """A command was given something it cannot use (unknown hub, bad pseudonym …)."""

    exit_code = 2


class KeyUnavailable(ClinicError):
    """A key provider could not produce a key (missing, unreadable, insecure)."""

    exit_code = 2


class StoreUnavailable(ClinicError):
    """PostgreSQL cannot be reached or refused the operation; retry later."""

    exit_code = 3


class Rejected(ClinicError):
    """A message refused with a stable, countable ``reason``; it is quarantined, not stored."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
