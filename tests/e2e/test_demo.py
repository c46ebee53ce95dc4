"""`make demo` as a newcomer runs it: vitals reach the clinician view, then nothing is left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _processes_in(directory: Path) -> list[int]:
    """Pids whose working directory is inside ``directory`` (the demo starts them there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(int(entry.name))
    return found


def test_demo_shows_vitals_of_both_patients_and_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    env = dict(os.environ, DEMO_SECONDS="20", DEMO_DIR=str(workdir))
    done = subprocess.run(
        [sys.executable, "-m", "devtools.demo"], env=env, capture_output=True, text=True,
        timeout=240, check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    final = out[out.rindex("patient  "):]  # the last table the clinician saw
    rows = {line.split()[0]: line for line in final.splitlines()[2:] if line.startswith("patient-")}
    assert set(rows) == {"patient-a", "patient-b"}, final
    assert "bpm" in rows["patient-a"] and "bpm" in rows["patient-b"], final
    assert "mg/dL" in rows["patient-a"], final  # the glucose meter's history arrived
    assert "duplicates absorbed" in final
    assert f"Files (PKI, config, vault, logs): {workdir}" in out
    assert _processes_in(workdir) == []
    # what the gateway logged at INFO carries no pseudonym
    log = (workdir / "gateway.log").read_text()
    assert "patient-a" not in log and "patient-b" not in log
