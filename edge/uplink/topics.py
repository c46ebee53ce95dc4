"""Topic names and the hub's status documents (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.uplink.ports import OutboxStats

#: the router forgets its cache past this many patients (a bound, not a policy)
_ROUTE_CACHE_MAX = 10_000


def obs_topic(prefix: str, hub_id: str, patient: str) -> str:
    """Topic of a patient's Bundles."""
    return f"{prefix}/{hub_id}/obs/{patient}"


def status_topic(prefix: str, hub_id: str) -> str:
    """Topic of the hub's retained status document and Last Will."""
    return f"{prefix}/{hub_id}/status"


def offline_document(hub_id: str) -> bytes:
    """The Last Will / clean-shutdown status."""
    return json.dumps({"hub": hub_id, "state": "offline"}, separators=(",", ":")).encode()


def topic_safe(patient: str) -> bool:
    """Whether a pseudonym can be one topic level (no separators, wildcards or NUL)."""
    return bool(patient) and not any(c in patient for c in "/+#\0")


class TopicRouter:
    """Patient -> observation topic, or None when the pseudonym cannot be routed."""

    def __init__(self, prefix: str, hub_id: str) -> None:
        self._prefix = prefix
        self._hub = hub_id
        self._cache: dict[str, str | None] = {}

    def topic(self, patient: str) -> str | None:
        """The patient's topic; None for a pseudonym that is not :func:`topic_safe`."""
        if patient in self._cache:
            return self._cache[patient]
        topic = obs_topic(self._prefix, self._hub, patient) if topic_safe(patient) else None
        if len(self._cache) > _ROUTE_CACHE_MAX:
            self._cache.clear()
        self._cache[patient] = topic
        return topic


#: refusal reasons that say the hub itself cannot do its job (not a device's bad input)
DEGRADING_REFUSALS = frozenset({"disk_full", "vault_full_count", "vault_full_bytes",
                                "no_consent"})
#: a refusal reason counts as current this long after its count last rose
DEGRADED_WINDOW_S = 900.0


class DegradedWatch:
    """Which degrading refusal reasons rose recently: the ``degraded`` part of the status
    document (pure: counts and monotonic seconds in). The first counts seen are the
    baseline, so what was refused before a restart does not count as current."""

    def __init__(self, window_s: float = DEGRADED_WINDOW_S) -> None:
        self._window = window_s
        self._last: dict[str, int] | None = None
        self._rose: dict[str, float] = {}

    def observe(self, counts: dict[str, int], now: float) -> list[str]:
        """The reasons whose count rose within the window, sorted."""
        if self._last is not None:
            for reason, n in counts.items():
                if n > self._last.get(reason, 0):
                    self._rose[reason] = now
        self._last = dict(counts)
        return sorted(r for r, t in self._rose.items()
                      if r in DEGRADING_REFUSALS and now - t <= self._window)


def online_document(
    hub_id: str,
    at: datetime,
    queue: OutboxStats | None,
    *,
    delivered: int,
    degraded: list[str],
    cert_days_left: float | None = None,
    devices: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The retained online status (no PHI). ``queue`` is the outbox's stats (None when the
    vault failed: ``degraded`` then says so); ``degraded`` grows by ``no_consent`` /
    ``unhealthy`` when ``devices`` says so."""
    doc: dict[str, object] = {
        "hub": hub_id,
        "state": "online",
        "at": at.isoformat().replace("+00:00", "Z"),
        "queue_depth": None if queue is None else queue.pending,
        "oldest_pending_age_s": None if queue is None else queue.oldest_pending_age_s,
        "delivered": delivered,
        "refusals": refusal_counts(queue),
    }
    if cert_days_left is not None:
        doc["cert_days_left"] = cert_days_left
    degraded = list(degraded)
    if devices is not None:
        doc["devices"] = devices
        if devices.get("without_consent") and "no_consent" not in degraded:
            degraded.append("no_consent")
        if devices.get("healthy") is False:
            degraded.append("unhealthy")
    doc["degraded"] = degraded
    return doc


def refusal_counts(queue: object | None) -> dict[str, int]:
    """The outbox stats' refusal counts by reason ({} when there are none)."""
    return {str(k): int(v) for k, v in (getattr(queue, "refusals", None) or {}).items()}
