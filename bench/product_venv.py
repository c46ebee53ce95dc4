"""A virtual environment holding only what a hub installs (``pip install .``), for the daemon
benchmark's ``edge run``: the development environment also holds rich (schemathesis) and
greenlet (playwright), which structlog imports when they are present — about 4 MB of resident
memory that no hub has. The environment is kept under ``/var/tmp`` and rebuilt only when
``pyproject.toml`` changes; the daemon still runs this checkout's code (``PYTHONPATH``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HUB_VENV = Path("/var/tmp/edge-bench-hub-venv")


def hub_python(where: Path = HUB_VENV) -> Path:
    """The interpreter of the hub-only environment, created (or refreshed) first."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp, python = where / ".pyproject-sha256", where / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    shutil.rmtree(where, ignore_errors=True)
    venv.create(where, with_pip=False)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-input",
         "--disable-pip-version-check", str(ROOT)],
        cwd=ROOT, check=True,
    )
    stamp.write_text(want)
    return python
