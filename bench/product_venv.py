"""Virtual environments holding only what a product installs, for the benchmarks' daemons:
``pip install .`` for a hub (the daemon benchmark's and the soak's ``edge run``) and
``pip install '.[clinic]'`` for a clinic (the clinic benchmark's ``clinic ingest`` workers).
The development environment also holds rich (schemathesis) and greenlet (playwright), which
structlog imports when they are present: about 4 MB of resident memory and ~0.15 s of CPU at
each start of a process (measured for ``clinic --help``) that no installed hub or clinic has.
Each environment is kept under ``/var/tmp`` and rebuilt only when ``pyproject.toml`` changes;
the processes still run this checkout's code (``PYTHONPATH``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HUB_VENV = Path("/var/tmp/edge-bench-hub-venv")
CLINIC_VENV = Path("/var/tmp/edge-bench-clinic-venv")


def hub_python(where: Path = HUB_VENV) -> Path:
    """The interpreter of the hub-only environment, created (or refreshed) first."""
    return _product_python(where, str(ROOT))


def clinic_python(where: Path = CLINIC_VENV) -> Path:
    """The interpreter of an environment holding what a clinic installs."""
    return _product_python(where, f"{ROOT}[clinic]")


def _product_python(where: Path, requirement: str) -> Path:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp, python = where / ".pyproject-sha256", where / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    shutil.rmtree(where, ignore_errors=True)
    venv.create(where, with_pip=False)
    # pip's output (index warnings included) only when it fails: the figures stay readable
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-input",
         "--disable-pip-version-check", requirement],
        cwd=ROOT, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {requirement} failed:\n{done.stdout}{done.stderr}")
    stamp.write_text(want)
    return python
