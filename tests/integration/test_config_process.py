"""`edge check-config` as an operator runs it: a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_config_cli import Setup

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_check_config_as_a_real_process(setup: Setup) -> None:
    """The installed entry point, as an operator runs it: clean lines on stderr, exit 2."""
    bad = setup.write(setup.text(pins="[]", uplink_extra="bogus = 1\n"))
    invalid = setup.write("[uplink\n", "invalid.toml")
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_CONFIG", "EDGE_DEBUG")}
    for path, expected in ((bad, 2), (invalid, 1)):
        proc = subprocess.run(
            [sys.executable, "-m", "edge", "check-config", "--config", str(path)],
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == expected, proc.stderr
