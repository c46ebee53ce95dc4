"""The plain message encoding: each batch of readings as one FHIR R4 transaction Bundle.

It is what the forwarder sends when none is given, and what :mod:`edge.uplink.sealing` wraps
(or picks, when ``[e2e]`` does not seal).
"""

from __future__ import annotations

from collections.abc import Sequence

from edge import fhir
from edge.uplink.ports import Encoder, PendingLike

FHIR_CONTENT_TYPE = "application/fhir+json"


def fhir_encoder(hub_id: str) -> Encoder:
    """The default encoder: a FHIR R4 transaction Bundle."""

    def encode(rows: Sequence[PendingLike]) -> bytes:
        return fhir.bundle_bytes([r.reading() for r in rows], hub_id=hub_id)

    return encode
