"""What one MQTT message means (pure): open and verify the envelope, check the hub and patient
against the enrolment, check the Bundle. Lookups and the clock are injected; no I/O here.

Every failure is a :class:`~clinic.errors.Rejected` with one of the stable reasons below.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from clinic.errors import Rejected
from clinic.ingest.bundle import Obs, check_bundle
from clinic.ingest.signers import SignerCache
from clinic.keys import KeyRing
from edge.uplink.envelope import EnvelopeError, open_envelope

REASONS = (
    "oversize", "bad_topic", "bad_envelope", "bad_signature", "hub_mismatch", "unknown_hub",
    "hub_revoked", "patient_not_enrolled", "invalid_fhir", "subject_mismatch",
)

#: hub id -> "active" | "revoked" | None (not enrolled)
HubLookup = Callable[[str], str | None]
#: pseudonym -> the hub it is enrolled to, or None
PatientLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class Topic:
    """A parsed topic: ``<prefix>/<hub>/obs/<patient>`` or ``<prefix>/<hub>/status``."""

    hub: str
    kind: str
    patient: str | None = None


def parse_topic(topic: str, prefix: str) -> Topic:
    """Split a topic; Rejected ``bad_topic`` when it is not one of ours."""
    rest = topic.removeprefix(prefix + "/") if topic.startswith(prefix + "/") else None
    parts = rest.split("/") if rest is not None else []
    if len(parts) == 3 and parts[1] == "obs" and parts[0] and parts[2]:
        return Topic(parts[0], "obs", parts[2])
    if len(parts) == 2 and parts[1] == "status" and parts[0]:
        return Topic(parts[0], "status")
    raise Rejected("bad_topic", "topic is not <prefix>/<hub>/obs/<patient> or .../status")


@dataclass(frozen=True)
class Accepted:
    """A verified message: its Observations, all about ``topic.patient`` from ``topic.hub``."""

    topic: Topic
    observations: list[Obs]


@dataclass(frozen=True)
class Verifier:
    """Everything needed to judge a message, fixed for the worker's life (lookups aside)."""

    prefix: str
    ring: KeyRing
    hub_cas: Sequence[x509.Certificate]
    max_bytes: int
    #: the x5c chains that verified against ``hub_cas`` (by exact x5c)
    _signers: SignerCache = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_signers", SignerCache(self.hub_cas))  # frozen: set once

    def observations(self, topic: str, payload: bytes, *, now: dt.datetime,
                     hub_state: HubLookup, patient_hub: PatientLookup) -> Accepted:
        """Judge one observation message; Rejected with a reason from :data:`REASONS`."""
        if len(payload) > self.max_bytes:
            raise Rejected("oversize", "message larger than ingest.max_message_bytes")
        t = parse_topic(topic, self.prefix)
        if t.kind != "obs" or t.patient is None:
            raise Rejected("bad_topic", "not an observation topic")
        try:
            opened = open_envelope(payload, self.ring.e2e)
            signer = self._signers.hub_of(opened, now)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, str(exc)) from exc
        if signer != t.hub:
            raise Rejected("hub_mismatch", "signer certificate CN is not the topic's hub")
        state = hub_state(t.hub)
        if state is None:
            raise Rejected("unknown_hub", "hub is not enrolled")
        if state != "active":
            raise Rejected("hub_revoked", "hub is revoked")
        if patient_hub(t.patient) != t.hub:
            raise Rejected("patient_not_enrolled", "patient is not enrolled to this hub")
        return Accepted(t, check_bundle(opened.payload, t.patient))


@dataclass(frozen=True)
class HubStatus:
    """What a hub's retained status document says (no PHI in it)."""

    hub: str
    online: bool
    at: dt.datetime
    queue_depth: int | None
    cert_days_left: float | None


def parse_status(topic: Topic, payload: bytes, received_at: dt.datetime) -> HubStatus:
    """A status document (or Last Will); Rejected ``invalid_status`` when unreadable."""
    try:
        doc: Any = json.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        state = doc.get("state")
        if state not in ("online", "offline"):
            raise ValueError("state")
        at = received_at
        if isinstance(doc.get("at"), str):
            at = dt.datetime.fromisoformat(doc["at"].replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise ValueError("naive time")
        qd = doc.get("queue_depth")
        days = doc.get("cert_days_left")
        return HubStatus(
            topic.hub, state == "online", at,
            int(qd) if isinstance(qd, int) and not isinstance(qd, bool) else None,
            float(days) if isinstance(days, int | float) and not isinstance(days, bool) else None,
        )
    except (ValueError, UnicodeDecodeError, OverflowError, RecursionError) as exc:
        # OverflowError: a 400-digit number as a float; RecursionError: nesting thousands deep
        raise Rejected("invalid_status", "unreadable hub status document") from exc
