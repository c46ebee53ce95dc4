"""Tests that need root fail loudly without it (CI runs as root); they never skip."""

from __future__ import annotations

import os

import pytest


def require_root(why: str) -> None:
    """Fail the calling test, naming ``why``, unless this process runs as root."""
    if os.geteuid() != 0:
        pytest.fail(f"this test must run as root ({why}); run `make test` as root, as CI does",
                    pytrace=False)
