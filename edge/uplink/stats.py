"""The forwarder's state and counters, as `edge status` shows them (no PHI)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ForwarderState(Enum):
    """Where the forwarder's connection loop is."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    #: the broker or the TLS layer refused us (the reason is in the stats): nothing is sent
    REFUSED = "refused"


@dataclass
class Counters:
    """The forwarder's running counters (mutable; snapshot with :class:`ForwarderStats`)."""

    sessions: int = 0
    messages_sent: int = 0
    messages_acked: int = 0
    readings_sent: int = 0
    readings_delivered: int = 0
    ack_timeouts: int = 0
    publish_refusals: int = 0
    unroutable: int = 0
    unencodable: int = 0
    #: rows read from the outbox whose patient had no consent (not sent)
    consent_dropped: int = 0
    #: Bundles of a patient whose consent was revoked after the rows were read (not sent)
    revoked_not_sent: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class ForwarderStats:
    """A snapshot of the forwarder: state, refusal reason, window and counters."""

    state: ForwarderState
    refusal: str | None
    in_flight: int
    sessions: int
    messages_sent: int
    messages_acked: int
    readings_sent: int
    readings_delivered: int
    ack_timeouts: int
    publish_refusals: int
    unroutable: int
    unencodable: int
    consent_dropped: int
    revoked_not_sent: int
    last_error: str | None

    @property
    def state_label(self) -> str:
        """``connected`` | ``connecting`` | ``backoff`` | ``refused:<reason>``."""
        if self.state is ForwarderState.REFUSED:
            return f"refused:{self.refusal}"
        return str(self.state.value)

    def as_dict(self) -> dict[str, int | str | None]:
        """The `edge status --json` form (these keys, unchanged since before the enum)."""
        return {
            "state": self.state_label,
            "in_flight": self.in_flight,
            "sessions": self.sessions,
            "messages_sent": self.messages_sent,
            "messages_acked": self.messages_acked,
            "readings_sent": self.readings_sent,
            "readings_delivered": self.readings_delivered,
            "ack_timeouts": self.ack_timeouts,
            "publish_refusals": self.publish_refusals,
            "unroutable": self.unroutable,
            "unencodable": self.unencodable,
            "last_error": self.last_error,
        }


def snapshot(
    counters: Counters, state: ForwarderState, refusal: str | None, in_flight: int
) -> ForwarderStats:
    """Freeze the counters with the current state."""
    c = counters
    return ForwarderStats(
        state=state,
        refusal=refusal if state is ForwarderState.REFUSED else None,
        in_flight=in_flight,
        sessions=c.sessions,
        messages_sent=c.messages_sent,
        messages_acked=c.messages_acked,
        readings_sent=c.readings_sent,
        readings_delivered=c.readings_delivered,
        ack_timeouts=c.ack_timeouts,
        publish_refusals=c.publish_refusals,
        unroutable=c.unroutable,
        unencodable=c.unencodable,
        consent_dropped=c.consent_dropped,
        revoked_not_sent=c.revoked_not_sent,
        last_error=c.last_error,
    )
