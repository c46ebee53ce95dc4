"""The one status document: ``edge status`` from the running daemon (control socket) and from
the vault alone (daemon not running), the one-line STATUS= summary, and the device part of the
status the forwarder publishes on MQTT.

Nothing here holds PHI except the device addresses of the local operator view; the MQTT status
names devices only by their log hash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from edge.ble.state import NEEDS_PAIRING, DeviceState, pairing_fix
from edge.config import UplinkConfig
from edge.daemon.health import one_line
from edge.intake.plausibility import REFUSAL_REASONS
from edge.log import REDACTOR
from edge.vault import Binding, Consent, VaultStats

if TYPE_CHECKING:
    from edge.ble.agent import StandingAgent
    from edge.daemon.ports import BleLike

#: device states that count as connected
CONNECTED_STATES = frozenset({"connected", "syncing"})
#: what ``edge status`` shows for what only a running daemon knows
NOT_RUNNING = "daemon not running"

#: a JSON object as the status document holds it
StatusDocument = dict[str, object]


class StatusVault(Protocol):
    """What the offline status reads from the vault."""

    async def stats(self) -> VaultStats: ...

    async def bindings(self) -> Sequence[Binding]: ...

    async def consents(self) -> Sequence[Consent]: ...


@dataclass(frozen=True)
class DaemonFacts:
    """What only the running daemon knows, for its status document."""

    started_at: datetime
    healthy: bool
    intake: Mapping[str, object]
    devices: Sequence[DeviceState]
    uplink_state: str
    uplink_stats: Mapping[str, object] | None
    parts: Mapping[str, Mapping[str, object]]
    #: the standing pairing agent (``agent``, ``unsolicited_pairing_rejected``); None: no agent
    pairing: Mapping[str, object] | None = None
    #: per configured adapter: ``present``, ``devices``, ``power_cycles`` …; None: unknown
    adapters: Mapping[str, Mapping[str, object]] | None = None


def all_refusals(counts: Mapping[str, int]) -> dict[str, int]:
    """Every known refusal reason (0 when none), plus any other counted reason: the shape of
    ``refusals`` in status output never changes."""
    out = dict.fromkeys(REFUSAL_REASONS, 0)
    out.update({str(k): int(v) for k, v in counts.items()})
    return out


def cert_days_left(uplink: UplinkConfig, now: datetime) -> float | None:
    """Days until the hub's client certificate expires (None if unreadable)."""
    from edge.uplink.tls import client_cert_not_after, days_left

    try:
        return days_left(client_cert_not_after(uplink), now)
    except (OSError, ValueError):
        return None


def vault_json(stats: VaultStats) -> dict[str, object]:
    """The vault's figures as JSON values."""
    return dataclasses.asdict(stats)


def consent_json(consent: Consent) -> dict[str, str | None]:
    """One consent record as ``consent.list`` / ``edge consent list --json`` show it."""
    return {
        "patient": consent.patient,
        "scope": consent.scope,
        "granted_at": _iso(consent.granted_at),
        "granted_by": consent.granted_by,
        "revoked_at": _iso(consent.revoked_at),
        "revoked_by": consent.revoked_by,
    }


def binding_json(binding: Binding) -> dict[str, object]:
    """A bound device as the offline status shows it (its state is unknown)."""
    return {
        "address": binding.address,
        "kind": binding.kind,
        "state": NOT_RUNNING,
        "last_seen": _iso(binding.last_seen),
    }


def status_document(
    *,
    hub: str,
    vault: VaultStats,
    cert_days: float | None,
    daemon: DaemonFacts | None = None,
    bindings: Sequence[Binding] = (),
) -> StatusDocument:
    """``edge status``: from the daemon when ``daemon`` is given, else from the vault alone
    (then ``bindings`` list the devices)."""
    figures = vault_json(vault)
    doc: StatusDocument = {"source": "daemon" if daemon else "vault", "hub": hub}
    if daemon is not None:
        doc["started_at"] = daemon.started_at.isoformat()
        doc["healthy"] = daemon.healthy
    doc["queue_depth"] = vault.pending
    doc["oldest_pending_age_s"] = vault.oldest_pending_age_s
    doc["refusals"] = all_refusals(vault.refusals)
    doc["vault"] = figures
    if daemon is not None:
        doc["intake"] = dict(daemon.intake)
        doc["devices"] = [d.as_dict() for d in daemon.devices]
        doc["uplink"] = {"state": daemon.uplink_state,
                         "stats": dict(daemon.uplink_stats) if daemon.uplink_stats else None}
    else:
        doc["devices"] = [binding_json(b) for b in bindings]
        doc["uplink"] = {"state": NOT_RUNNING}
    doc["cert_days_left"] = cert_days
    if daemon is not None:
        doc["parts"] = {n: dict(p) for n, p in daemon.parts.items()}
        if daemon.pairing is not None:  # the daemon holds a pairing agent
            doc["pairing"] = dict(daemon.pairing)
        if daemon.adapters is not None:
            doc["adapters"] = {n: dict(a) for n, a in daemon.adapters.items()}
        doc = apply_lost_bonds(doc, [d.address for d in daemon.devices
                                     if d.state == NEEDS_PAIRING])
    return doc


def apply_lost_bonds(doc: StatusDocument, addresses: Sequence[str]) -> StatusDocument:
    """``doc`` with a problem line (and the fix) per device that lost its bond; a daemon's
    document is then no longer ``healthy`` (those devices send nothing until paired again)."""
    if not addresses:
        return doc
    out = dict(doc)
    if "healthy" in out:
        out["healthy"] = False
    problems = out.get("problems")
    out["problems"] = [*(problems if isinstance(problems, list) else []), *(
        f"{a} lost its bond (reset or battery change?) and is no longer reconnected — fix: "
        f"{pairing_fix(a)}" for a in addresses
    )]
    return out


async def offline_status(vault: StatusVault, hub: str, uplink: UplinkConfig,
                         now: datetime) -> StatusDocument:
    """What the vault alone can tell: queue, refusals, bindings (state unknown), and bound
    devices whose patient has no consent."""
    bindings = await vault.bindings()
    active = {c.patient for c in await vault.consents() if c.active}
    doc = status_document(hub=hub, vault=await vault.stats(),
                          cert_days=cert_days_left(uplink, now), bindings=bindings)
    return apply_consent_gaps(doc, consent_gaps(bindings, active.__contains__))


def consent_gaps(bindings: Sequence[Binding], allows: Callable[[str], bool]) -> list[str]:
    """Addresses of bound devices whose patient has no active consent: intake refuses every
    reading they send (``no_consent``)."""
    return sorted(b.address for b in bindings if not allows(b.patient))


def apply_consent_gaps(doc: StatusDocument, gaps: Sequence[str]) -> StatusDocument:
    """``doc`` with ``devices_without_consent``; when there are any, a problem line with the
    fix, and a daemon's document is no longer ``healthy``."""
    out = dict(doc)
    out["devices_without_consent"] = list(gaps)
    if gaps:
        if "healthy" in out:
            out["healthy"] = False
        problems = out.get("problems")
        out["problems"] = [*(problems if isinstance(problems, list) else []), (
            f"{len(gaps)} bound device(s) belong to a patient without consent, so every "
            "reading they send is refused — fix: `edge consent grant PSEUDONYM` (the patient "
            "`edge devices` shows), or `edge unpair ADDRESS`"
        )]
    return out


def connected(devices: Sequence[DeviceState]) -> int:
    """How many of ``devices`` are connected."""
    return sum(1 for d in devices if d.state in CONNECTED_STATES)


def status_line(pending: int | None, devices: Sequence[DeviceState], uplink_state: str) -> str:
    """The one-line STATUS= summary: queue depth, devices connected, uplink state."""
    queue = "?" if pending is None else str(pending)
    return one_line(
        f"queue {queue}; devices {connected(devices)}/{len(devices)} connected; "
        f"uplink {uplink_state}"
    )


def mqtt_devices(devices: Sequence[DeviceState], healthy: bool,
                 without_consent: int = 0) -> dict[str, object]:
    """The device part of the status the forwarder publishes on MQTT: no PHI (devices named
    by their log hash, never their address or patient). ``without_consent``: how many bound
    devices belong to a patient without consent (every reading they send is refused)."""
    return {
        "without_consent": without_consent,
        "bound": len(devices),
        "connected": connected(devices),
        "states": [
            {"device": REDACTOR.device_hash(d.address), "kind": d.kind, "state": d.state,
             "last_seen": _iso(d.last_seen)}
            for d in devices
        ],
        "healthy": healthy,
    }


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


# --- what the running parts report (a part mid-restart shows nothing rather than failing) -----


def devices_of(ble: BleLike | None) -> list[DeviceState]:
    """Every bound device's state, as the BLE manager reports it."""
    if ble is None:
        return []
    try:
        return list(ble.device_states().values())
    except Exception:
        return []


def pairing_of(agent: StandingAgent | None, *, wants_agent: bool) -> dict[str, object] | None:
    """The standing pairing agent and its counter (None: this daemon holds none)."""
    if agent is not None:
        return agent.stats()
    return {"agent": "starting", "unsolicited_pairing_rejected": 0} if wants_agent else None


def adapters_of(ble: BleLike | None) -> dict[str, dict[str, object]] | None:
    """Per configured adapter (present, devices, power-cycles); None: not known."""
    stats = getattr(ble, "adapter_stats", None)
    if stats is None:
        return None
    try:
        return dict(stats())
    except Exception:
        return None
