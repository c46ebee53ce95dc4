"""FHIR JSON text (pure): compact writing, parsing with ``Decimal`` numbers, and writing dicts
back with every digit of those numbers kept.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

#: a FHIR resource as parsed JSON (``Decimal`` numbers). ``Any`` because it is what
#: ``json.loads`` gives and callers walk it by key; the typed, validated form is
#: ``fhir.resources``' models, which the hub does not load.
Resource = dict[str, Any]


def compact(obj: object) -> str:
    """Compact JSON text, non-ASCII kept as is (for the pre-encoded fragments)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Resource:
    """Parse JSON text of a resource; non-integer numbers become ``Decimal``."""
    result: Resource = json.loads(text, parse_float=Decimal)
    return result


def to_json(obj: object) -> bytes:
    """Compact UTF-8 JSON of a dict from this package; Decimal values become JSON numbers with
    every digit kept (``5.50`` stays ``5.50``)."""
    # Decimals are first written as marked strings, then the quotes and markers are cut
    # away. The marker holds a per-call random UUID, so no input string can forge one.
    mark = uuid.uuid4().hex
    opened = False

    def default(o: object) -> str:
        nonlocal opened
        if isinstance(o, Decimal) and o.is_finite():
            opened = True
            return f"{mark}<{o:f}>{mark}"
        raise TypeError(f"{type(o).__name__} value cannot be written as FHIR JSON")

    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=default)
    if opened:
        text = text.replace(f'"{mark}<', "").replace(f'>{mark}"', "")
    return text.encode()
