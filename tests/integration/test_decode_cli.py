"""``edge decode`` through the installed console script (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GLUCOSE_MOL = "0E 3412 EA07 01 02 03 04 05 26B2 24 2000"  # 5.50 mmol/L, venous plasma, HI


def test_installed_console_script() -> None:
    exe = Path(sys.executable).with_name("edge")
    proc = subprocess.run(
        [str(exe), "decode", "0x2A18", GLUCOSE_MOL], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout, parse_float=Decimal)["mmol_l"] == Decimal("5.50")
    bad = subprocess.run(
        [str(exe), "decode", "glucose_measurement", "0E34"], capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().startswith("edge: malformed glucose_measurement: truncated")
    assert bad.stderr.count("\n") == 1
