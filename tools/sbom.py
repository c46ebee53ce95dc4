"""``make sbom``: CycloneDX SBOMs of what the hub and the clinic install.

For each of the two installs — the hub (``pip install .``, what ``systemd/install.sh`` does in
``/opt/edge/venv``) and the clinic (``pip install '.[clinic]'``) — a fresh virtual environment
without pip is made in a temporary directory, this checkout is installed into it by the
calling interpreter's pip (so pip and its own dependencies are not counted), and
``cyclonedx-py environment`` (PyPI ``cyclonedx-bom``) describes it: every installed
distribution with its exact version, PURL, hashes where known, licence and dependency graph,
``edge`` as the root component (from ``pyproject.toml``). Output is reproducible
(``--output-reproducible``; the timestamp is the last commit's, ``SOURCE_DATE_EPOCH``).

The versions are those pip resolves from PyPI within the ranges in ``pyproject.toml`` at the
time of the run — the same resolution an installation made then would get; each SBOM records
them exactly. Written to ``build/sbom/`` (not committed).

    python tools/sbom.py [--out DIR] [--only hub|clinic]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILES = {"hub": ".", "clinic": ".[clinic]"}


def _cyclonedx() -> list[str]:
    exe = shutil.which("cyclonedx-py", path=str(Path(sys.executable).parent))
    if exe is None:
        sys.exit("cyclonedx-py not found: pip install 'cyclonedx-bom>=7,<8'")
    return [exe]


def _source_date_epoch() -> str:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return os.environ["SOURCE_DATE_EPOCH"]
    proc = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "0"


def build(profile: str, out: Path) -> Path:
    target = out / f"{profile}.cdx.json"
    with tempfile.TemporaryDirectory(prefix=f"sbom-{profile}-") as tmp:
        env_dir = Path(tmp) / "venv"
        venv.create(env_dir, with_pip=False)
        python = env_dir / "bin" / "python"
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
             "--no-input", "--disable-pip-version-check", PROFILES[profile]],
            cwd=ROOT, check=True,
        )
        subprocess.run(
            [*_cyclonedx(), "environment", "--pyproject", str(ROOT / "pyproject.toml"),
             "--mc-type", "application", "--output-reproducible", "--of", "JSON",
             "--sv", "1.6", "-o", str(target), str(python)],
            cwd=ROOT, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": _source_date_epoch()},
        )
    return target


def summary(path: Path) -> str:
    doc = json.loads(path.read_text())
    comps = sorted(f"{c['name']}=={c.get('version', '?')}" for c in doc.get("components", []))
    return f"{len(comps)} components: {', '.join(comps)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/sbom.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "sbom")
    p.add_argument("--only", choices=sorted(PROFILES))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for profile in [args.only] if args.only else list(PROFILES):
        path = build(profile, args.out.resolve())
        print(f"{profile}: {path}\n  {summary(path)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
