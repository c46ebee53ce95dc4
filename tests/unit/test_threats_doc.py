"""THREATS.md names, for each control, the tests that prove it: every one of them must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REF = re.compile(r"`((?:unit|integration|e2e|clinic)/[\w/]+\.py)::(\w+)")


def test_every_test_named_in_the_threat_model_exists() -> None:
    text = (ROOT / "THREATS.md").read_text(encoding="utf-8")
    refs = REF.findall(text)
    assert len(refs) >= 50  # the table lost its references if this fails
    missing = []
    for path, name in refs:
        source = ROOT / "tests" / path
        if not source.exists() or not re.search(
                rf"^(?:async )?def {name}\(", source.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing
