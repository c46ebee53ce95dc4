"""The forwarder's batching policy, pure: no asyncio, no I/O; time comes in as ``now``.

One :class:`Batcher` per connection holds the read cursor, the rows read ahead of the wire,
the in-flight window and the PUBACK deadlines. A new connection gets a new Batcher, so its
cursor starts again at the oldest pending row: everything not acknowledged is re-sent.

Packing: rows (oldest first) become per-patient groups of at most ``max_readings`` rows whose
estimated encoded size stays under ``max_bytes`` (with headroom for the estimate's error); the
estimate learns from every encoded message. A group that encodes too big anyway is halved; a
group that fails to encode is retried row by row, so one bad row never blocks the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.config import UplinkConfig
from edge.uplink.ports import Encoder, PendingLike
from edge.uplink.topics import TopicRouter

#: read ahead this many full windows, so a vault read queued behind a delivery commit does
#: not leave the window idle
READ_AHEAD_WINDOWS = 2
#: leave this much room under max_bytes for the estimate's error
BYTES_HEADROOM = 0.85
#: encoded size / stored size before anything was encoded (FHIR is ~3x the stored JSON)
INITIAL_BYTES_RATIO = 3.0


@dataclass(frozen=True)
class Limits:
    """The batching limits from ``[uplink]``."""

    max_readings: int
    max_bytes: int
    window: int
    ack_timeout_s: float

    @classmethod
    def from_config(cls, cfg: UplinkConfig) -> Limits:
        return cls(
            max_readings=cfg.batch_max_readings,
            max_bytes=cfg.batch_max_bytes,
            window=cfg.inflight_window,
            ack_timeout_s=float(cfg.ack_timeout_s),
        )

    @property
    def read_chunk(self) -> int:
        """Rows asked of the outbox per read."""
        return self.window * self.max_readings * READ_AHEAD_WINDOWS


class SizeEstimate:
    """How much bigger an encoded message is than its stored rows (a moving average).
    Kept across connections."""

    def __init__(self, ratio: float = INITIAL_BYTES_RATIO) -> None:
        self.ratio = ratio

    def learn(self, raw_bytes: int, encoded_bytes: int) -> None:
        """Fold one encoded message into the estimate."""
        if raw_bytes:
            self.ratio = 0.8 * self.ratio + 0.2 * (encoded_bytes / raw_bytes)


@dataclass(frozen=True)
class Read:
    """Ask the outbox for up to ``limit`` rows after ``after_seq``."""

    limit: int
    after_seq: int


@dataclass(frozen=True)
class Group:
    """Rows of one patient that go into one message (unless encoding splits them)."""

    topic: str
    rows: tuple[PendingLike, ...]

    @property
    def patient(self) -> str:
        return self.rows[0].patient


@dataclass(frozen=True)
class Packing:
    """What :meth:`Batcher.pack` decided: groups to send, and rows that cannot be routed
    (consumed for this connection, still pending in the outbox)."""

    groups: list[Group]
    unroutable: int = 0


@dataclass(frozen=True)
class Message:
    """An encoded group, ready to publish."""

    topic: str
    ids: tuple[str, ...]
    payload: bytes


@dataclass(frozen=True)
class Encoded:
    """A group after encoding: the messages to publish, and the type names of the errors of
    rows that did not encode (they stay pending)."""

    messages: list[Message]
    unencodable: list[str]


@dataclass(frozen=True)
class InFlight:
    """One message awaiting its PUBACK."""

    token: int
    ids: tuple[str, ...]
    topic: str
    sent_at: float


def encode_group(group: Group, encoder: Encoder, estimate: SizeEstimate, max_bytes: int) -> Encoded:
    """Encode ``group`` into one or more messages of at most ``max_bytes`` each (a single row
    that is bigger still goes alone); rows that fail to encode are left out and named."""
    messages: list[Message] = []
    unencodable: list[str] = []

    def encode(rows: Sequence[PendingLike]) -> None:
        try:
            payload = encoder(rows)
        except Exception as exc:  # the encoder is injected: any failure is a bad row
            if len(rows) > 1:
                for row in rows:
                    encode([row])
                return
            unencodable.append(type(exc).__name__)
            return
        estimate.learn(sum(len(r.payload) for r in rows), len(payload))
        if len(payload) > max_bytes and len(rows) > 1:
            half = len(rows) // 2
            encode(rows[:half])
            encode(rows[half:])
            return
        messages.append(Message(group.topic, tuple(r.id for r in rows), payload))

    encode(group.rows)
    return Encoded(messages, unencodable)


class Batcher:
    """One connection's send side: read cursor, read-ahead buffer, window, ack deadlines."""

    def __init__(self, limits: Limits, router: TopicRouter, estimate: SizeEstimate) -> None:
        self.limits = limits
        self._router = router
        self._estimate = estimate
        self._buffer: list[PendingLike] = []
        self._after = 0
        self._drained = False
        self._reading = False
        # A new connection reads at once.
        self._wake = True
        self._draining = False
        self._inflight: dict[int, InFlight] = {}
        self._tokens = itertools.count(1)

    # --- reading -----------------------------------------------------------------------------

    def wake(self) -> None:
        """New rows were appended to the outbox: read again even if it looked drained."""
        self._wake = True

    def drain(self) -> None:
        """Shutting down: read nothing more, pack nothing more; in-flight may still settle."""
        self._draining = True

    @property
    def buffered(self) -> int:
        """Rows read and not yet packed."""
        return len(self._buffer)

    def next_read(self) -> Read | None:
        """The read to start now, if any (at most one at a time)."""
        chunk = self.limits.read_chunk
        if self._draining or self._reading or len(self._buffer) >= chunk:
            return None
        if self._drained and not self._wake:
            return None
        self._wake = False
        self._reading = True
        return Read(chunk, self._after)

    def rows_read(
        self, rows: Sequence[PendingLike], allowed: Callable[[str], bool] | None = None
    ) -> int:
        """Take the outcome of the read; rows whose patient ``allowed`` refuses are dropped.
        Returns how many were dropped. The cursor moves past every row read."""
        self._reading = False
        if rows:
            self._after = rows[-1].seq
        self._drained = len(rows) < self.limits.read_chunk
        kept = list(rows) if allowed is None else [r for r in rows if allowed(r.patient)]
        self._buffer.extend(kept)
        return len(rows) - len(kept)

    def read_failed(self) -> None:
        """The read raised; another may be started."""
        self._reading = False

    # --- packing -----------------------------------------------------------------------------

    def pack(self) -> Packing:
        """Group a prefix of the buffer (oldest first) into at most as many per-patient groups
        as the window has room for, and remove that prefix from the buffer."""
        free = self.limits.window - len(self._inflight)
        if self._draining or free <= 0 or not self._buffer:
            return Packing([])
        limits = self.limits
        budget = limits.max_bytes * BYTES_HEADROOM
        ratio = self._estimate.ratio
        groups: list[tuple[str, list[PendingLike]]] = []
        open_groups: dict[str, tuple[list[PendingLike], float]] = {}
        used = 0
        unroutable = 0
        for row in self._buffer:
            patient = row.patient
            topic = self._router.topic(patient)
            if topic is None:
                # Cannot be routed to a topic: it stays pending and is counted, never dropped.
                unroutable += 1
                used += 1
                continue
            est = len(row.payload) * ratio
            current = open_groups.get(patient)
            if current is not None and (
                len(current[0]) >= limits.max_readings or current[1] + est > budget
            ):
                current = None
            if current is None:
                if len(groups) >= free:
                    break
                rows: list[PendingLike] = []
                groups.append((topic, rows))
                current = (rows, 0.0)
            current[0].append(row)
            open_groups[patient] = (current[0], current[1] + est)
            used += 1
        del self._buffer[:used]
        return Packing([Group(t, tuple(rs)) for t, rs in groups], unroutable)

    def encode(self, group: Group, encoder: Encoder) -> Encoded:
        """:func:`encode_group` with this connection's limits and the shared estimate."""
        return encode_group(group, encoder, self._estimate, self.limits.max_bytes)

    # --- the window --------------------------------------------------------------------------

    def sent(self, message: Message, now: float) -> int:
        """Record a published message; returns the token its PUBACK settles."""
        token = next(self._tokens)
        self._inflight[token] = InFlight(token, message.ids, message.topic, now)
        return token

    def settle(self, token: int) -> InFlight | None:
        """Its PUBACK came (or it failed): it leaves the window. None if unknown."""
        return self._inflight.pop(token, None)

    @property
    def in_flight(self) -> int:
        """Messages awaiting a PUBACK."""
        return len(self._inflight)

    def unacknowledged(self) -> list[str]:
        """Ids of readings sent and not acknowledged: the next connection re-sends them."""
        return [i for m in self._inflight.values() for i in m.ids]

    def ack_deadline(self) -> float | None:
        """When the oldest message in flight times out (None when nothing is in flight)."""
        oldest = next(iter(self._inflight.values()), None)
        return None if oldest is None else oldest.sent_at + self.limits.ack_timeout_s

    def overdue(self, now: float) -> bool:
        """A PUBACK is late: the connection must be dropped and its messages re-sent."""
        deadline = self.ack_deadline()
        return deadline is not None and deadline <= now

    def next_ack_check(self, now: float) -> float:
        """Seconds until the deadlines must be looked at again."""
        deadline = self.ack_deadline()
        return self.limits.ack_timeout_s if deadline is None else max(0.0, deadline - now)
