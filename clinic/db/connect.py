"""Opening PostgreSQL connections, with psycopg's errors translated."""

from __future__ import annotations

from typing import Any

import psycopg

from clinic.errors import StoreUnavailable

#: rows are plain tuples; columns are typed where they are read
Conn = psycopg.Connection[tuple[Any, ...]]


def connect(dsn: str, *, timeout_s: float = 10.0) -> Conn:
    """A connection in autocommit mode (callers open explicit transactions)."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout_s)))
    except psycopg.Error as exc:
        raise StoreUnavailable(
            "PostgreSQL is unreachable or refused the connection — fix: check db.dsn and "
            "that the server is running"
        ) from exc
