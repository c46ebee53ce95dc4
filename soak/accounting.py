"""The soak's arithmetic: pure — what was accepted, delivered and lost, and how RSS and file
descriptors moved. No I/O.

**Readings lost.** The hub's contract is at-least-once delivery of every reading it accepted.
A reading is *accepted* when intake committed it to the vault; the vault holds every accepted
reading (retention is days; the soak is minutes; consent is never revoked during a soak), so
after the daemon has stopped, the vault's rows are the accepted set ``A``. A reading is
*delivered* when an independent observer subscribed on the broker (a development identity that
reads every topic, with a persistent session on a persistent broker, so broker restarts do not
make it miss anything) received a Bundle carrying its Observation identifier: the set ``S``.

    lost = |A - S|  +  max(0, intake_accepted - |A|)

The first term: accepted readings no subscriber ever saw (split into those still pending in
the vault and those the vault marked delivered on a PUBACK yet nobody received). The second:
readings intake counted as committed that are missing from the vault. Readings the hub
refused by design (malformed notifications, implausible values, rate limits) never enter
``A``: they are counted by reason, not lost. Identifiers the observer saw that the vault does
not hold are reported as ``unknown_seen`` and also fail a soak (nothing else publishes under
the hub's topics). Repeats (the same identifier received twice: at-least-once re-sends after
a broker restart) are counted, not an error.

What the soak cannot count: how many notifications the simulator *generated* (the simulator
keeps no such counter); it reports what the hub was *offered* instead — accepted + refused.
A heart-rate notification the device sends while its link is being dropped never reaches the
hub at all; that is the radio's loss, which no hub can see, and it is not in these figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Accounting:
    """Readings at the end of a soak (see the module docstring)."""

    #: distinct readings in the vault (the accepted set A)
    accepted: int
    #: readings intake says it committed (received minus duplicates), since the daemon started
    intake_accepted: int
    #: rows of A the vault marked delivered (the PUBACK of the message that carried them)
    acked: int
    #: distinct identifiers the observer received that are in A
    seen: int
    #: receipts beyond the first of an identifier (at-least-once repeats)
    repeats: int
    #: rows of A not seen, still pending in the vault
    unseen_pending: int
    #: rows of A not seen although the vault marked them delivered
    unseen_acked: int
    #: identifiers the observer received that the vault does not hold
    unknown_seen: int
    #: intake_accepted - accepted, when positive: committed readings missing from the vault
    missing_from_vault: int

    @property
    def lost(self) -> int:
        return self.unseen_pending + self.unseen_acked + self.missing_from_vault

    @property
    def pending(self) -> int:
        """Rows of A the vault had not marked delivered when the daemon stopped."""
        return self.accepted - self.acked


def account(rows: Iterable[tuple[str, bool]], received: Mapping[str, int],
            intake_accepted: int) -> Accounting:
    """``rows``: (reading id, delivered) of every vault row; ``received``: identifier -> times
    the observer received it; ``intake_accepted``: intake's committed count."""
    delivered: dict[str, bool] = {}
    for rid, done in rows:
        delivered[rid] = delivered.get(rid, False) or done
    seen = {i for i, n in received.items() if n > 0}
    unseen = [rid for rid in delivered if rid not in seen]
    return Accounting(
        accepted=len(delivered),
        intake_accepted=intake_accepted,
        acked=sum(1 for d in delivered.values() if d),
        seen=len(seen & delivered.keys()),
        repeats=sum(n - 1 for n in received.values() if n > 1),
        unseen_pending=sum(1 for rid in unseen if not delivered[rid]),
        unseen_acked=sum(1 for rid in unseen if delivered[rid]),
        unknown_seen=len(seen - delivered.keys()),
        missing_from_vault=max(0, intake_accepted - len(delivered)),
    )


def intake_accepted(intake: Mapping[str, object]) -> int:
    """Readings committed according to the daemon's intake counters (``status["intake"]``):
    the sum of ``received`` by kind minus ``duplicates`` (already in the vault)."""
    received = intake.get("received") or {}
    total = sum(int(v) for v in received.values()) if isinstance(received, Mapping) else 0
    dup = intake.get("duplicates") or 0
    return total - int(dup) if isinstance(dup, int | str) else total


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 with fewer than two distinct xs)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError("xs and ys differ in length")
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


@dataclass(frozen=True)
class Resources:
    """RSS (MB) and open file descriptors over the soak."""

    rss_start: float
    rss_max: float
    rss_end: float
    #: MB per hour, least squares over every sample
    rss_slope_mb_h: float
    #: the same over the second half of the samples' time: bounded caches (SQLCipher's page
    #: cache, the allocator's arenas) fill in the first minutes; a leak keeps growing after
    rss_late_slope_mb_h: float
    fds_start: int
    fds_max: int
    fds_end: int

    @property
    def fd_growth(self) -> int:
        return self.fds_end - self.fds_start


def resources(samples: Sequence[tuple[float, float, int]]) -> Resources:
    """From (seconds, rss MB, fds) samples in time order (at least one)."""
    if not samples:
        raise ValueError("no samples")
    ts = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    return Resources(
        rss_start=rss[0], rss_max=max(rss), rss_end=rss[-1],
        rss_slope_mb_h=slope(ts, rss) * 3600,
        rss_late_slope_mb_h=slope(*second_half(ts, rss)) * 3600,
        fds_start=fds[0], fds_max=max(fds), fds_end=fds[-1],
    )


def second_half(ts: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """The points from the middle of the time span on (where bounded caches have filled)."""
    mid = (ts[0] + ts[-1]) / 2
    late = [(t, y) for t, y in zip(ts, ys, strict=True) if t >= mid]
    return [t for t, _ in late], [y for _, y in late]


def verdict(acc: Accounting, res: Resources, *, fd_growth_limit: int,
            daemon_problem: str | None = None) -> list[str]:
    """Why the soak failed (empty: it passed)."""
    problems: list[str] = []
    if daemon_problem:
        problems.append(daemon_problem)
    if acc.lost:
        problems.append(
            f"{acc.lost} readings lost ({acc.unseen_pending} still pending, {acc.unseen_acked} "
            f"acknowledged but never received, {acc.missing_from_vault} missing from the vault)"
        )
    if acc.unknown_seen:
        problems.append(f"{acc.unknown_seen} identifiers received that the vault does not hold")
    if acc.accepted == 0:
        problems.append("no reading was accepted: the soak proved nothing")
    if res.fd_growth > fd_growth_limit:
        problems.append(f"open file descriptors grew by {res.fd_growth} "
                        f"(limit {fd_growth_limit})")
    return problems
