"""Benchmarks: ``python -m bench [NAME ...]`` runs every ``bench/<name>_bench.py`` module's
``main()`` (or only the named ones). Each prints one JSON object per figure per line:
``{"figure": "<group>.<name>", "value": <number>, "unit": "<unit>", ...context}``.
Benchmarks are kept apart from the tests; nothing asserts on their figures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: a figure's target: (">=" or "<=", value)
Targets = Mapping[str, tuple[str, float]]


def emit(figure: str, value: float, unit: str, targets: Targets, **extra: Any) -> None:
    """Print one figure as one JSON object, with its target and whether it was met."""
    rec: dict[str, Any] = {"figure": figure, "value": round(value, 3), "unit": unit}
    if figure in targets:
        op, target = targets[figure]
        rec["target"] = f"{op} {target:g}"
        rec["met"] = value >= target if op == ">=" else value <= target
    rec.update(extra)
    print(json.dumps(rec), flush=True)
